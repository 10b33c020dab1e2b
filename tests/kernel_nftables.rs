//! The proxy's nftables tables against the real kernel, read back with `nft`.
//! Run by the VM harness (`--include-ignored --test-threads=1`, as root, with
//! nf_tables loaded), or on a host under `unshare -n`; each test deletes
//! `ip kube-ipvs-proxy` and `ip6 kube-ipvs-proxy` before and after itself,
//! since the tests share one ruleset.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use kube_ipvs_proxy::desired::{
    LocalDetect, NftChange, NftElement, NftFamily, NftKey, NftRuleset, NftSet, Protocol, NFT_TABLE,
};
use kube_ipvs_proxy::kernel::nftables::{render_element, render_ruleset, NetlinkNft};
use kube_ipvs_proxy::kernel::NftKernel;

const FOREIGN: &str = "kip-foreign";

fn run_nft(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("nft {args:?}: {e}"));
    let mut input = child.stdin.take().expect("nft's stdin");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("writing nft's stdin");
    drop(input);
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("nft {args:?}: {e}"))
}

/// `nft ARGS`, which must succeed; its stdout.
fn nft(args: &[&str]) -> String {
    let output = run_nft(args, None);
    assert!(
        output.status.success(),
        "nft {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `nft -f -` reading `script`, which must succeed.
fn nft_script(extra: &[&str], script: &str) {
    let mut args = extra.to_vec();
    args.extend(["-f", "-"]);
    let output = run_nft(&args, Some(script));
    assert!(
        output.status.success(),
        "nft {args:?} refused:\n{script}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The objects of `nft -j ARGS` (metainfo left out).
fn nft_json(args: &[&str]) -> Vec<Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let text = nft(&full);
    let parsed: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("nft {full:?}: {e}: {text}"));
    parsed["nftables"]
        .as_array()
        .unwrap_or_else(|| panic!("nft {full:?}: no nftables array: {text}"))
        .iter()
        .filter(|o| o.get("metainfo").is_none())
        .cloned()
        .collect()
}

/// The handle of table `family name`, if the kernel has it.
fn table_handle(family: &str, name: &str) -> Option<u64> {
    nft_json(&["list", "tables"]).iter().find_map(|o| {
        let table = o.get("table")?;
        (table["family"] == family && table["name"] == name)
            .then(|| table["handle"].as_u64().expect("a table handle"))
    })
}

fn delete_table_by_hand(family: &str, name: &str) {
    if table_handle(family, name).is_some() {
        nft(&["delete", "table", family, name]);
    }
}

/// A clean slate and the proxy's table made anew for the ClusterCIDR ruleset.
async fn fresh_table() -> (Clean, NetlinkNft) {
    let clean = Clean::start();
    let mut kernel = NetlinkNft::new().expect("netfilter socket");
    kernel
        .ensure_ruleset(&ruleset(LocalDetect::Cidrs, false))
        .await
        .expect("table created");
    (clean, kernel)
}

/// Deletes the proxy's table and the foreign ones on creation and however
/// the test ends, so that every test starts and leaves the ruleset clean.
struct Clean;

impl Clean {
    fn start() -> Self {
        Clean.sweep();
        assert_eq!(table_handle("ip", NFT_TABLE), None, "the test starts clean");
        assert_eq!(
            table_handle("ip6", NFT_TABLE),
            None,
            "the test starts clean"
        );
        Clean
    }

    fn sweep(&self) {
        for (family, name) in [
            ("ip", NFT_TABLE),
            ("ip6", NFT_TABLE),
            ("inet", FOREIGN),
            ("ip", FOREIGN),
            ("ip6", FOREIGN),
            ("inet", NFT_TABLE),
        ] {
            let _ = run_nft(&["delete", "table", family, name], None);
        }
    }
}

impl Drop for Clean {
    fn drop(&mut self) {
        self.sweep();
    }
}

fn ruleset(local_detect: LocalDetect, masquerade_all: bool) -> NftRuleset {
    NftRuleset {
        masquerade_all,
        local_detect,
        ipv6: false,
    }
}

/// The same ruleset on a node with IPv6: both tables.
fn ruleset6(local_detect: LocalDetect, masquerade_all: bool) -> NftRuleset {
    NftRuleset {
        ipv6: true,
        ..ruleset(local_detect, masquerade_all)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

fn elem(set: NftSet, key: NftKey) -> NftElement {
    NftElement { set, key }
}

fn adds(elements: &[NftElement]) -> Vec<NftChange> {
    elements.iter().copied().map(NftChange::Add).collect()
}

fn deletes(elements: &[NftElement]) -> Vec<NftChange> {
    elements.iter().copied().map(NftChange::Delete).collect()
}

fn sorted(mut elements: Vec<NftElement>) -> Vec<NftElement> {
    elements.sort();
    elements
}

/// The set's declared type in the `family` table as `nft -j` shows it, and
/// whether it holds intervals.
fn expected_type(family: NftFamily, set: NftSet) -> (Value, bool) {
    let addr = match family {
        NftFamily::Ip => "ipv4_addr",
        NftFamily::Ip6 => "ipv6_addr",
    };
    let addr_proto_port = serde_json::json!([addr, "inet_proto", "inet_service"]);
    let with_source = serde_json::json!([addr, "inet_proto", "inet_service", addr]);
    match set {
        NftSet::ClusterIps
        | NftSet::ExternalIps
        | NftSet::ExternalIpsLocal
        | NftSet::NoLocalEndpoints
        | NftSet::FirewallIps => (addr_proto_port, false),
        NftSet::NodePorts | NftSet::NodePortsNoLocalEndpoints => {
            (serde_json::json!(["inet_proto", "inet_service"]), false)
        }
        NftSet::ServiceIps => (serde_json::json!(addr), false),
        NftSet::FirewallAllow => (with_source, true),
        NftSet::Hairpin => (with_source, false),
        NftSet::LocalPodCidrs => (serde_json::json!(addr), true),
    }
}

fn json_addr(v: &Value) -> IpAddr {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an address: {v}"))
}

fn json_proto(v: &Value) -> Protocol {
    match v.as_str() {
        Some("tcp") => Protocol::Tcp,
        Some("udp") => Protocol::Udp,
        Some("sctp") => Protocol::Sctp,
        _ => panic!("not a protocol: {v}"),
    }
}

fn json_port(v: &Value) -> u16 {
    v.as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("not a port: {v}"))
}

/// A prefix (`{"prefix": {"addr", "len"}}`) or a lone address, a /32.
fn json_net(v: &Value) -> ipnet::IpNet {
    match v.get("prefix") {
        Some(prefix) => {
            let len = prefix["len"].as_u64().expect("a prefix length") as u8;
            ipnet::IpNet::new(json_addr(&prefix["addr"]), len)
                .unwrap_or_else(|e| panic!("{v}: {e}"))
        }
        None => ipnet::IpNet::from(json_addr(v)),
    }
}

/// One element of `nft -j list set` of the `family` table, read as the key
/// of `set`'s shape.
fn key_from_json(family: NftFamily, set: NftSet, value: &Value) -> NftKey {
    let fields: Vec<&Value> = match value.get("concat") {
        Some(Value::Array(fields)) => fields.iter().collect(),
        _ => vec![value],
    };
    match (set, fields.as_slice()) {
        (
            NftSet::ClusterIps
            | NftSet::ExternalIps
            | NftSet::ExternalIpsLocal
            | NftSet::NoLocalEndpoints
            | NftSet::FirewallIps,
            [a, p, port],
        ) => NftKey::AddrProtoPort(json_addr(a), json_proto(p), json_port(port)),
        (NftSet::NodePorts | NftSet::NodePortsNoLocalEndpoints, [p, port]) => {
            NftKey::ProtoPort(family, json_proto(p), json_port(port))
        }
        (NftSet::ServiceIps, [a]) => NftKey::Addr(json_addr(a)),
        (NftSet::FirewallAllow, [a, p, port, source]) => NftKey::AddrProtoPortSource(
            json_addr(a),
            json_proto(p),
            json_port(port),
            json_net(source),
        ),
        (NftSet::Hairpin, [a, p, port, b]) => {
            NftKey::AddrProtoPortAddr(json_addr(a), json_proto(p), json_port(port), json_addr(b))
        }
        (NftSet::LocalPodCidrs, [cidr]) => NftKey::Cidr(json_net(cidr)),
        _ => panic!("set {}: an element of the wrong shape: {value}", set.name()),
    }
}

/// The JSON elements of `nft -j list set FAMILY kube-ipvs-proxy SET`.
fn nft_set_json(family: NftFamily, set: NftSet) -> Vec<Value> {
    let listed = nft_json(&["list", "set", family.name(), NFT_TABLE, set.name()]);
    let declared = listed
        .iter()
        .find_map(|o| o.get("set"))
        .unwrap_or_else(|| panic!("nft lists no set {}", set.name()));
    match declared.get("elem") {
        Some(Value::Array(elements)) => elements.clone(),
        _ => Vec::new(),
    }
}

/// What `nft` shows in every one of the proxy's sets, in both tables
/// (where there is one), parsed, sorted.
fn nft_elements() -> Vec<NftElement> {
    let mut found: Vec<NftElement> = NftFamily::ALL
        .into_iter()
        .filter(|family| table_handle(family.name(), NFT_TABLE).is_some())
        .flat_map(|family| NftSet::ALL.into_iter().map(move |set| (family, set)))
        .flat_map(|(family, set)| {
            nft_set_json(family, set)
                .iter()
                .map(|v| elem(set, key_from_json(family, set, v)))
                .collect::<Vec<_>>()
        })
        .collect();
    found.sort();
    found
}

async fn dumped(kernel: &mut NetlinkNft) -> Vec<NftElement> {
    sorted(kernel.dump_elements().await.expect("dump_elements"))
}

/// One element of every key shape, in sets of each shape.
fn every_shape() -> Vec<NftElement> {
    use NftKey::*;
    use Protocol::*;
    vec![
        elem(NftSet::ClusterIps, AddrProtoPort(ip("10.96.0.10"), Tcp, 53)),
        elem(NftSet::ClusterIps, AddrProtoPort(ip("10.96.0.10"), Udp, 53)),
        elem(
            NftSet::ExternalIps,
            AddrProtoPort(ip("203.0.113.7"), Sctp, 9),
        ),
        elem(
            NftSet::ExternalIpsLocal,
            AddrProtoPort(ip("203.0.113.8"), Tcp, 443),
        ),
        elem(
            NftSet::NoLocalEndpoints,
            AddrProtoPort(ip("203.0.113.8"), Tcp, 443),
        ),
        elem(
            NftSet::FirewallIps,
            AddrProtoPort(ip("203.0.113.9"), Tcp, 80),
        ),
        elem(NftSet::NodePorts, ProtoPort(NftFamily::Ip, Tcp, 30080)),
        elem(NftSet::NodePorts, ProtoPort(NftFamily::Ip, Sctp, 30000)),
        elem(
            NftSet::NodePortsNoLocalEndpoints,
            ProtoPort(NftFamily::Ip, Udp, 30053),
        ),
        elem(NftSet::ServiceIps, Addr(ip("10.96.0.10"))),
        elem(NftSet::ServiceIps, Addr(ip("203.0.113.7"))),
        elem(
            NftSet::FirewallAllow,
            AddrProtoPortSource(ip("203.0.113.9"), Tcp, 80, net("192.0.2.0/24")),
        ),
        elem(
            NftSet::FirewallAllow,
            AddrProtoPortSource(ip("203.0.113.9"), Tcp, 80, net("198.51.100.9/32")),
        ),
        elem(
            NftSet::Hairpin,
            AddrProtoPortAddr(ip("10.244.1.5"), Tcp, 8080, ip("10.244.1.5")),
        ),
        elem(NftSet::LocalPodCidrs, Cidr(net("10.244.0.0/16"))),
        elem(NftSet::LocalPodCidrs, Cidr(net("240.0.0.0/4"))),
    ]
}

/// The chains of a rendered table: name and, for a base chain, its
/// `type`, `hook` and `priority`.
fn rendered_chains(text: &str) -> BTreeMap<String, Option<(String, String, i64)>> {
    let mut chains = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("chain ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            chains.insert(name.to_owned(), None);
            current = Some(name.to_owned());
        } else if let (Some(name), Some(rest)) = (&current, line.strip_prefix("type ")) {
            let words: Vec<&str> = rest.split([' ', ';']).collect();
            assert_eq!(
                (words[1], words[3]),
                ("hook", "priority"),
                "a base chain line: {line}"
            );
            let priority = words[4].parse().expect("a numeric priority");
            chains.insert(
                name.clone(),
                Some((words[0].to_owned(), words[2].to_owned(), priority)),
            );
        } else if line == "}" {
            current = None;
        }
    }
    chains
}

/// The chains `nft -j list table` shows, in the same form.
fn listed_chains(table: &[Value]) -> BTreeMap<String, Option<(String, String, i64)>> {
    table
        .iter()
        .filter_map(|o| o.get("chain"))
        .map(|c| {
            let name = c["name"].as_str().expect("a chain name").to_owned();
            let base = c.get("hook").map(|hook| {
                (
                    c["type"].as_str().expect("a chain type").to_owned(),
                    hook.as_str().expect("a hook").to_owned(),
                    c["prio"].as_i64().expect("a numeric priority"),
                )
            });
            (name, base)
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs root and nf_tables: run by tests/run.sh in the VM"]
async fn a_missing_table_is_created_with_every_set_and_the_rendered_chains() {
    let _clean = Clean::start();
    let rulesets = [
        ruleset(LocalDetect::None, false),
        ruleset(LocalDetect::Cidrs, false),
        ruleset(LocalDetect::Cidrs, true),
        ruleset(LocalDetect::BridgeInterface("cni0".into()), false),
        ruleset(LocalDetect::InterfaceNamePrefix("veth".into()), false),
    ];
    let mut kernel = NetlinkNft::new().expect("netfilter socket");
    for rs in &rulesets {
        delete_table_by_hand("ip", NFT_TABLE);
        let rendered = render_ruleset(rs);
        // nft's check mode accepts the rendered table on a kernel without it.
        nft_script(&["-c"], &rendered);
        assert_eq!(
            kernel.ensure_ruleset(rs).await,
            Ok(vec![]),
            "{rs:?}: a new table is empty"
        );

        let table = nft_json(&["list", "table", "ip", NFT_TABLE]);
        let sets: Vec<&Value> = table.iter().filter_map(|o| o.get("set")).collect();
        let names: Vec<&str> = sets.iter().map(|s| s["name"].as_str().unwrap()).collect();
        let expected_names: Vec<&str> = NftSet::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names, expected_names, "{rs:?}: every set, in order");
        for (set, listed) in NftSet::ALL.iter().zip(&sets) {
            let (ty, interval) = expected_type(NftFamily::Ip, *set);
            assert_eq!(listed["type"], ty, "{rs:?}: type of set {}", set.name());
            let flags = listed.get("flags").cloned().unwrap_or(Value::Null);
            assert_eq!(
                flags
                    .as_array()
                    .is_some_and(|f| f.contains(&"interval".into())),
                interval,
                "{rs:?}: interval flag of set {}: {flags}",
                set.name()
            );
        }
        assert_eq!(
            listed_chains(&table),
            rendered_chains(&rendered),
            "{rs:?}: the chains, hooks and priorities of the rendered table"
        );

        // What the proxy wrote lists exactly as what nft makes of the
        // rendered text: same chains, rules and sets.
        let written = nft(&["list", "table", "ip", NFT_TABLE]);
        nft(&["delete", "table", "ip", NFT_TABLE]);
        nft_script(&[], &rendered);
        let from_nft = nft(&["list", "table", "ip", NFT_TABLE]);
        assert_eq!(
            written, from_nft,
            "{rs:?}: the proxy's table (left) against `nft -f` of render_ruleset (right)"
        );
    }
}

#[tokio::test]
#[ignore = "needs root and nf_tables: run by tests/run.sh in the VM"]
async fn a_matching_table_is_adopted_with_its_elements_and_another_ruleset_recreates_it() {
    let _clean = Clean::start();
    let rs = ruleset(LocalDetect::Cidrs, false);
    let mut kernel = NetlinkNft::new().expect("netfilter socket");
    assert_eq!(kernel.ensure_ruleset(&rs).await, Ok(vec![]));
    let created = table_handle("ip", NFT_TABLE).expect("the table exists");

    // Elements added meanwhile by someone else (an earlier run of the proxy).
    let meanwhile = every_shape();
    let script: String = meanwhile.iter().map(|e| render_element(e) + "\n").collect();
    nft_script(&[], &script);

    let adopted = kernel.ensure_ruleset(&rs).await.expect("adopted");
    assert_eq!(
        table_handle("ip", NFT_TABLE),
        Some(created),
        "the same ruleset adopts the table rather than re-creating it"
    );
    assert_eq!(
        sorted(adopted),
        sorted(meanwhile.clone()),
        "adoption returns the elements the sets hold"
    );
    assert_eq!(nft_elements(), sorted(meanwhile), "adoption wrote nothing");

    let other = ruleset(LocalDetect::Cidrs, true);
    assert_eq!(
        kernel.ensure_ruleset(&other).await,
        Ok(vec![]),
        "a table made for another ruleset is re-created empty"
    );
    let recreated = table_handle("ip", NFT_TABLE).expect("the table exists");
    assert_ne!(recreated, created, "masquerade_all re-creates the table");
    assert_eq!(nft_elements(), vec![], "the re-created sets are empty");
    assert_eq!(
        listed_chains(&nft_json(&["list", "table", "ip", NFT_TABLE])),
        rendered_chains(&render_ruleset(&other)),
        "the re-created table has the other ruleset's chains"
    );
    assert_eq!(
        kernel.ensure_ruleset(&other).await,
        Ok(vec![]),
        "and is adopted in turn"
    );
    assert_eq!(table_handle("ip", NFT_TABLE), Some(recreated));
}

#[tokio::test]
#[ignore = "needs root and nf_tables: run by tests/run.sh in the VM"]
async fn other_tables_of_the_same_family_do_not_stop_adoption() {
    let _clean = Clean::start();
    // As iptables-nft leaves them on most nodes (kubelet's canary chains),
    // in both families, with a chain, a rule and a set named as ours.
    for family in ["ip", "ip6"] {
        nft_script(
            &[],
            &format!(
                "table {family} {FOREIGN} {{\n\
                 \tset cluster-ips {{ type inet_proto . inet_service; }}\n\
                 \tchain PREROUTING {{\n\
                 \t\ttype nat hook prerouting priority -100; policy accept;\n\
                 \t\tjump services\n\
                 \t}}\n\
                 \tchain services {{\n\
                 \t\tcounter\n\
                 \t}}\n\
                 \tchain KUBE-KUBELET-CANARY {{\n\
                 \t}}\n\
                 }}\n"
            ),
        );
    }
    let rs = ruleset6(LocalDetect::Cidrs, false);
    let mut kernel = NetlinkNft::new().expect("netfilter socket");
    assert_eq!(kernel.ensure_ruleset(&rs).await, Ok(vec![]));
    let created = (
        table_handle("ip", NFT_TABLE).expect("the ip table exists"),
        table_handle("ip6", NFT_TABLE).expect("the ip6 table exists"),
    );
    kernel.apply(&adds(&every_shape())).await.expect("adds");

    let adopted = kernel.ensure_ruleset(&rs).await.expect("adopted");
    assert_eq!(
        (
            table_handle("ip", NFT_TABLE),
            table_handle("ip6", NFT_TABLE)
        ),
        (Some(created.0), Some(created.1)),
        "both tables are adopted, not re-created, beside the foreign ones"
    );
    assert_eq!(
        sorted(adopted),
        sorted(every_shape()),
        "with their elements"
    );
}

#[tokio::test]
#[ignore = "needs root and nf_tables: run by tests/run.sh in the VM"]
async fn elements_of_every_key_shape_are_added_listed_and_deleted_exactly() {
    let (_clean, mut kernel) = fresh_table().await;
    let elements = every_shape();
    kernel.apply(&adds(&elements)).await.expect("adds applied");
    for set in NftSet::ALL {
        let listed: Vec<NftKey> = {
            let mut keys: Vec<NftKey> = nft_set_json(NftFamily::Ip, set)
                .iter()
                .map(|v| key_from_json(NftFamily::Ip, set, v))
                .collect();
            keys.sort();
            keys
        };
        let wanted: Vec<NftKey> = sorted(elements.clone())
            .iter()
            .filter(|e| e.set == set)
            .map(|e| e.key)
            .collect();
        assert_eq!(listed, wanted, "`nft list set {}`", set.name());
    }
    assert_eq!(dumped(&mut kernel).await, sorted(elements.clone()));

    // Every other element goes, across shapes and sets.
    let gone: Vec<NftElement> = elements.iter().copied().step_by(2).collect();
    let kept: Vec<NftElement> = elements.iter().copied().skip(1).step_by(2).collect();
    kernel
        .apply(&deletes(&gone))
        .await
        .expect("deletes applied");
    assert_eq!(
        nft_elements(),
        sorted(kept.clone()),
        "nft shows exactly the elements not deleted"
    );
    assert_eq!(dumped(&mut kernel).await, sorted(kept));
}

#[tokio::test]
#[ignore = "needs root and nf_tables: run by tests/run.sh in the VM"]
async fn adding_an_element_that_exists_succeeds_and_changes_nothing() {
    let (_clean, mut kernel) = fresh_table().await;
    let elements = every_shape();
    kernel.apply(&adds(&elements)).await.expect("first add");
    assert_eq!(
        kernel.apply(&adds(&elements)).await,
        Ok(()),
        "adding every element again"
    );
    assert_eq!(nft_elements(), sorted(elements));
}

#[tokio::test]
#[ignore = "needs root and nf_tables: run by tests/run.sh in the VM"]
async fn deleting_a_missing_element_fails_the_whole_transaction_naming_it() {
    use NftKey::*;
    use Protocol::*;
    let (_clean, mut kernel) = fresh_table().await;
    let held = elem(NftSet::ServiceIps, Addr(ip("10.96.0.10")));
    kernel.apply(&[NftChange::Add(held)]).await.expect("held");

    let missing = elem(NftSet::ClusterIps, AddrProtoPort(ip("10.1.2.3"), Tcp, 1));
    let result = kernel
        .apply(&[
            NftChange::Add(elem(NftSet::ServiceIps, Addr(ip("10.96.0.11")))),
            NftChange::Add(elem(
                NftSet::NodePorts,
                ProtoPort(NftFamily::Ip, Udp, 30053),
            )),
            NftChange::Delete(held),
            NftChange::Delete(missing),
        ])
        .await;
    let error = result
        .expect_err("a delete of a missing element fails")
        .to_string();
    assert!(
        error.contains("set cluster-ips") && error.contains(&missing.key.to_string()),
        "the error names the set and the element: {error}"
    );
    assert_eq!(
        nft_elements(),
        vec![held],
        "nothing of the failed transaction was applied"
    );
    assert_eq!(dumped(&mut kernel).await, vec![held]);
}

#[tokio::test]
#[ignore = "needs root and nf_tables: run by tests/run.sh in the VM"]
async fn an_element_deleted_by_hand_is_missing_from_the_dump() {
    let (_clean, mut kernel) = fresh_table().await;
    let elements = every_shape();
    kernel.apply(&adds(&elements)).await.expect("adds applied");

    let mut drifted = Vec::new();
    for set in [
        NftSet::ClusterIps,
        NftSet::FirewallAllow,
        NftSet::LocalPodCidrs,
    ] {
        let victim = *elements.iter().find(|e| e.set == set).unwrap();
        let by_hand = render_element(&victim).replacen("add ", "delete ", 1);
        nft_script(&[], &by_hand);
        drifted.push(victim);
    }
    let left: Vec<NftElement> = elements
        .iter()
        .filter(|e| !drifted.contains(e))
        .copied()
        .collect();
    assert_eq!(
        dumped(&mut kernel).await,
        sorted(left.clone()),
        "the dump misses exactly the elements deleted by hand"
    );
    assert_eq!(nft_elements(), sorted(left));
}

fn many_cluster_ips(count: u32) -> Vec<NftElement> {
    (0..count)
        .map(|i| {
            let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i);
            elem(
                NftSet::ClusterIps,
                NftKey::AddrProtoPort(IpAddr::V4(addr), Protocol::Udp, 53),
            )
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs root and nf_tables: run by tests/run.sh in the VM"]
async fn ten_thousand_elements_land_in_one_transaction() {
    let _clean = Clean::start();
    let mut kernel = NetlinkNft::new().expect("netfilter socket");
    kernel
        .ensure_ruleset(&ruleset(LocalDetect::None, false))
        .await
        .expect("table created");
    let many = many_cluster_ips(10_000);

    // The set the last message adds to is gone: the transaction spans many
    // messages, and a refusal at its end undoes all of them.
    nft(&[
        "delete",
        "set",
        "ip",
        NFT_TABLE,
        NftSet::LocalPodCidrs.name(),
    ]);
    let mut doomed = adds(&many);
    doomed.push(NftChange::Add(elem(
        NftSet::LocalPodCidrs,
        NftKey::Cidr(net("10.244.0.0/16")),
    )));
    let error = kernel
        .apply(&doomed)
        .await
        .expect_err("an add to a missing set fails")
        .to_string();
    assert!(
        error.starts_with("set local-pod-cidrs: add 10.244.0.0/16: "),
        "the error names the set and its one element (an interval counts once): {error}"
    );
    assert_eq!(
        nft_set_json(NftFamily::Ip, NftSet::ClusterIps).len(),
        0,
        "none of the 10,000 adds before the refusal landed"
    );

    nft(&["delete", "table", "ip", NFT_TABLE]);
    kernel
        .ensure_ruleset(&ruleset(LocalDetect::None, false))
        .await
        .expect("table re-created");
    kernel.apply(&adds(&many)).await.expect("10,000 adds");
    let listed = nft_set_json(NftFamily::Ip, NftSet::ClusterIps);
    assert_eq!(listed.len(), 10_000, "nft counts every element");
    let mut keys: Vec<NftKey> = listed
        .iter()
        .map(|v| key_from_json(NftFamily::Ip, NftSet::ClusterIps, v))
        .collect();
    keys.sort();
    let wanted: Vec<NftKey> = many.iter().map(|e| e.key).collect();
    assert_eq!(keys, wanted, "nft shows exactly the 10,000 elements");
    assert_eq!(dumped(&mut kernel).await, many);

    kernel.apply(&deletes(&many)).await.expect("10,000 deletes");
    assert_eq!(nft_set_json(NftFamily::Ip, NftSet::ClusterIps).len(), 0);
}

#[tokio::test]
#[ignore = "needs root and nf_tables: run by tests/run.sh in the VM"]
async fn delete_table_reports_whether_there_was_one_and_leaves_foreign_tables_alone() {
    let _clean = Clean::start();
    // A foreign table, and one with the proxy's name in another family.
    nft_script(
        &[],
        &format!(
            "table inet {FOREIGN} {{\n\
             \tset cluster-ips {{ type ipv4_addr . inet_proto . inet_service; elements = {{ 10.96.0.10 . tcp . 53 }} }}\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority 0; policy accept;\n\
             \t\tip saddr 198.51.100.1 tcp dport 22 counter accept\n\
             \t}}\n\
             }}\n\
             table inet {NFT_TABLE} {{\n\
             \tset service-ips {{ type ipv4_addr; elements = {{ 10.96.0.10 }} }}\n\
             \tchain output {{\n\
             \t\ttype filter hook output priority 0; policy accept;\n\
             \t\tip daddr @service-ips counter\n\
             \t}}\n\
             }}\n"
        ),
    );
    let foreign = || {
        (
            nft_json(&["list", "table", "inet", FOREIGN]),
            nft_json(&["list", "table", "inet", NFT_TABLE]),
        )
    };
    let before = foreign();

    let mut kernel = NetlinkNft::new().expect("netfilter socket");
    assert_eq!(
        kernel.delete_table().await,
        Ok(false),
        "no table of the proxy's: nothing to delete"
    );
    assert_eq!(
        kernel
            .ensure_ruleset(&ruleset(LocalDetect::Cidrs, false))
            .await,
        Ok(vec![]),
        "the proxy's table is created beside the foreign ones"
    );
    kernel.apply(&adds(&every_shape())).await.expect("adds");
    assert_eq!(dumped(&mut kernel).await, sorted(every_shape()));
    kernel
        .ensure_ruleset(&ruleset(LocalDetect::None, true))
        .await
        .expect("re-created for another ruleset");
    assert_eq!(kernel.delete_table().await, Ok(true), "the table was there");
    assert_eq!(table_handle("ip", NFT_TABLE), None, "and is gone");
    assert_eq!(kernel.delete_table().await, Ok(false), "deleting it again");

    assert_eq!(
        foreign(),
        before,
        "the foreign tables are as they were, handles and elements included"
    );
}

/// One element of every key shape for the ip6 table.
fn every_shape6() -> Vec<NftElement> {
    use NftKey::*;
    use Protocol::*;
    vec![
        elem(
            NftSet::ClusterIps,
            AddrProtoPort(ip("fd00:10:96::a"), Tcp, 53),
        ),
        elem(
            NftSet::ExternalIps,
            AddrProtoPort(ip("2001:db8:1::7"), Sctp, 9),
        ),
        elem(
            NftSet::ExternalIpsLocal,
            AddrProtoPort(ip("2001:db8:1::8"), Tcp, 443),
        ),
        elem(
            NftSet::NoLocalEndpoints,
            AddrProtoPort(ip("2001:db8:1::8"), Tcp, 443),
        ),
        elem(
            NftSet::FirewallIps,
            AddrProtoPort(ip("2001:db8:1::9"), Tcp, 80),
        ),
        elem(NftSet::NodePorts, ProtoPort(NftFamily::Ip6, Tcp, 30080)),
        elem(
            NftSet::NodePortsNoLocalEndpoints,
            ProtoPort(NftFamily::Ip6, Udp, 30053),
        ),
        elem(NftSet::ServiceIps, Addr(ip("fd00:10:96::a"))),
        elem(
            NftSet::FirewallAllow,
            AddrProtoPortSource(ip("2001:db8:1::9"), Tcp, 80, net("2001:db8:2::/64")),
        ),
        elem(
            NftSet::FirewallAllow,
            AddrProtoPortSource(ip("2001:db8:1::9"), Tcp, 80, net("2001:db8:3::9/128")),
        ),
        elem(
            NftSet::Hairpin,
            AddrProtoPortAddr(ip("fd00:10:244:1::5"), Tcp, 8080, ip("fd00:10:244:1::5")),
        ),
        elem(NftSet::LocalPodCidrs, Cidr(net("fd00:10:244::/56"))),
        elem(NftSet::LocalPodCidrs, Cidr(net("ffff::/16"))),
    ]
}

/// The `ip6` table's part of a rendered ruleset.
fn rendered_ip6(rendered: &str) -> &str {
    let at = rendered
        .find("table ip6 ")
        .expect("the rendered ruleset has an ip6 table");
    &rendered[at..]
}

#[tokio::test]
#[ignore = "needs root and nf_tables: run by tests/run.sh in the VM"]
async fn the_ip6_table_is_made_only_with_ipv6_beside_the_ip_one_as_rendered() {
    let _clean = Clean::start();
    let mut kernel = NetlinkNft::new().expect("netfilter socket");
    let v4_only = ruleset(LocalDetect::Cidrs, false);
    assert_eq!(kernel.ensure_ruleset(&v4_only).await, Ok(vec![]));
    assert_eq!(
        table_handle("ip6", NFT_TABLE),
        None,
        "no ip6 table without IPv6"
    );
    assert!(!render_ruleset(&v4_only).contains("table ip6 "));
    let ip_table = table_handle("ip", NFT_TABLE).expect("the ip table");

    for rs in [
        ruleset6(LocalDetect::Cidrs, false),
        ruleset6(LocalDetect::None, false),
        ruleset6(LocalDetect::Cidrs, true),
        ruleset6(LocalDetect::BridgeInterface("cni0".into()), false),
        ruleset6(LocalDetect::InterfaceNamePrefix("veth".into()), false),
    ] {
        delete_table_by_hand("ip6", NFT_TABLE);
        let rendered = render_ruleset(&rs);
        let rendered6 = rendered_ip6(&rendered);
        nft_script(&["-c"], rendered6);
        assert_eq!(kernel.ensure_ruleset(&rs).await, Ok(vec![]), "{rs:?}");
        let table = nft_json(&["list", "table", "ip6", NFT_TABLE]);
        let sets: Vec<&Value> = table.iter().filter_map(|o| o.get("set")).collect();
        assert_eq!(sets.len(), NftSet::ALL.len(), "{rs:?}: every set");
        for (set, listed) in NftSet::ALL.iter().zip(&sets) {
            assert_eq!(listed["name"], set.name(), "{rs:?}: sets in order");
            let (ty, _) = expected_type(NftFamily::Ip6, *set);
            assert_eq!(listed["type"], ty, "{rs:?}: type of set {}", set.name());
        }
        let written = nft(&["list", "table", "ip6", NFT_TABLE]);
        nft(&["delete", "table", "ip6", NFT_TABLE]);
        nft_script(&[], rendered6);
        assert_eq!(
            written,
            nft(&["list", "table", "ip6", NFT_TABLE]),
            "{rs:?}: the proxy's ip6 table (left) against `nft -f` of its rendering (right)"
        );
    }
    // Back to the first ruleset: its ip table is adopted again as it was
    // made, whatever the ip6 table went through meanwhile.
    let rs = ruleset6(LocalDetect::Cidrs, false);
    kernel.ensure_ruleset(&rs).await.expect("adopted");
    kernel.ensure_ruleset(&v4_only).await.expect("adopted");
    assert_ne!(
        table_handle("ip", NFT_TABLE),
        Some(ip_table),
        "re-created for the other rulesets"
    );
    let again = table_handle("ip", NFT_TABLE);
    kernel.ensure_ruleset(&rs).await.expect("adopted");
    assert_eq!(
        table_handle("ip", NFT_TABLE),
        again,
        "ipv6 alone does not touch the ip table"
    );
}

#[tokio::test]
#[ignore = "needs root and nf_tables: run by tests/run.sh in the VM"]
async fn ip6_elements_go_in_one_transaction_with_ip_ones_and_are_adopted_with_zero_writes() {
    let _clean = Clean::start();
    let rs = ruleset6(LocalDetect::Cidrs, false);
    let mut kernel = NetlinkNft::new().expect("netfilter socket");
    assert_eq!(kernel.ensure_ruleset(&rs).await, Ok(vec![]));
    let handles = || {
        (
            table_handle("ip", NFT_TABLE).expect("the ip table"),
            table_handle("ip6", NFT_TABLE).expect("the ip6 table"),
        )
    };
    let created = handles();

    let both: Vec<NftElement> = every_shape().into_iter().chain(every_shape6()).collect();
    kernel.apply(&adds(&both)).await.expect("one transaction");
    assert_eq!(
        nft_elements(),
        sorted(both.clone()),
        "nft shows every element"
    );
    for family in NftFamily::ALL {
        for set in NftSet::ALL {
            let mut listed: Vec<NftKey> = nft_set_json(family, set)
                .iter()
                .map(|v| key_from_json(family, set, v))
                .collect();
            listed.sort();
            let wanted: Vec<NftKey> = sorted(both.clone())
                .iter()
                .filter(|e| e.set == set && e.family() == family)
                .map(|e| e.key)
                .collect();
            assert_eq!(listed, wanted, "`nft list set {family} {}`", set.name());
        }
    }
    assert_eq!(dumped(&mut kernel).await, sorted(both.clone()));

    // A restart: a new socket adopts both tables as they are.
    let before = nft(&["list", "ruleset"]);
    let mut restarted = NetlinkNft::new().expect("netfilter socket");
    let adopted = restarted.ensure_ruleset(&rs).await.expect("adopted");
    assert_eq!(sorted(adopted), sorted(both.clone()), "adoption reads both");
    assert_eq!(handles(), created, "neither table was re-created");
    assert_eq!(nft(&["list", "ruleset"]), before, "adoption wrote nothing");

    // Deletes across both tables, in one transaction.
    let gone: Vec<NftElement> = both.iter().copied().step_by(2).collect();
    let kept: Vec<NftElement> = both.iter().copied().skip(1).step_by(2).collect();
    restarted
        .apply(&deletes(&gone))
        .await
        .expect("deletes applied");
    assert_eq!(nft_elements(), sorted(kept.clone()));
    assert_eq!(dumped(&mut restarted).await, sorted(kept));

    // A missing ip6 element fails the whole transaction, named with its table.
    let missing = elem(NftSet::ServiceIps, NftKey::Addr(ip("fd00:10:96::ff")));
    let added = elem(NftSet::ServiceIps, NftKey::Addr(ip("10.96.0.99")));
    let error = restarted
        .apply(&[NftChange::Add(added), NftChange::Delete(missing)])
        .await
        .expect_err("a delete of a missing element fails")
        .to_string();
    assert!(
        error.starts_with("set ip6 service-ips: delete fd00:10:96::ff: "),
        "{error}"
    );
    assert!(!nft_elements().contains(&added), "nothing was applied");
}

#[tokio::test]
#[ignore = "needs root and nf_tables: run by tests/run.sh in the VM"]
async fn delete_table_deletes_both_tables_and_nothing_else() {
    let _clean = Clean::start();
    nft_script(
        &[],
        &format!(
            "table ip6 {FOREIGN} {{\n\tset s {{ type ipv6_addr; elements = {{ fd00::1 }} }}\n}}\n"
        ),
    );
    let foreign = nft_json(&["list", "table", "ip6", FOREIGN]);
    let mut kernel = NetlinkNft::new().expect("netfilter socket");
    kernel
        .ensure_ruleset(&ruleset6(LocalDetect::Cidrs, false))
        .await
        .expect("both tables");
    kernel.apply(&adds(&every_shape6())).await.expect("adds");
    assert_eq!(kernel.delete_table().await, Ok(true));
    assert_eq!(table_handle("ip", NFT_TABLE), None);
    assert_eq!(table_handle("ip6", NFT_TABLE), None);
    assert_eq!(kernel.delete_table().await, Ok(false), "nothing left");
    assert_eq!(
        nft_json(&["list", "table", "ip6", FOREIGN]),
        foreign,
        "the foreign ip6 table is as it was"
    );
    nft(&["delete", "table", "ip6", FOREIGN]);

    // Only the ip6 table there (the ip one deleted by hand): still found.
    kernel
        .ensure_ruleset(&ruleset6(LocalDetect::None, false))
        .await
        .expect("both tables");
    nft(&["delete", "table", "ip", NFT_TABLE]);
    assert_eq!(kernel.delete_table().await, Ok(true));
    assert_eq!(table_handle("ip6", NFT_TABLE), None);
}

#[tokio::test]
#[ignore = "needs root and nf_tables: run by tests/run.sh in the VM"]
async fn the_generation_moves_on_by_one_per_committed_transaction_whoever_commits_it() {
    use NftKey::*;
    use Protocol::*;
    let (_clean, mut kernel) = fresh_table().await;
    let first = kernel.generation().await.expect("GETGEN is answered");
    dumped(&mut kernel).await;
    assert_eq!(
        kernel.generation().await,
        Some(first),
        "reads commit nothing"
    );

    let held = elem(NftSet::ServiceIps, Addr(ip("10.96.0.10")));
    kernel.apply(&[NftChange::Add(held)]).await.expect("added");
    let after_add = first.wrapping_add(1);
    assert_eq!(
        kernel.generation().await,
        Some(after_add),
        "one transaction, one step"
    );

    let missing = elem(NftSet::ClusterIps, AddrProtoPort(ip("10.1.2.3"), Tcp, 1));
    kernel
        .apply(&[NftChange::Delete(missing)])
        .await
        .expect_err("a delete of a missing element fails");
    assert_eq!(
        kernel.generation().await,
        Some(after_add),
        "an aborted transaction commits nothing"
    );

    // Another program's transaction, in a table of its own.
    nft(&["add", "table", "inet", FOREIGN]);
    assert_eq!(kernel.generation().await, Some(after_add.wrapping_add(1)));
    // And one that deletes an element of the proxy's behind its back.
    let delete_by_hand = format!("delete element ip {NFT_TABLE} service-ips {{ 10.96.0.10 }}");
    nft_script(&[], &delete_by_hand);
    assert_eq!(kernel.generation().await, Some(after_add.wrapping_add(2)));

    kernel
        .apply(&[NftChange::Add(held)])
        .await
        .expect("added again");
    let repaired = after_add.wrapping_add(3);
    assert_eq!(kernel.generation().await, Some(repaired));
    // A transaction that changes nothing (the element is there) commits
    // nothing: the reconciler, which counts on a step per transaction, then
    // finds the generation short of its count and reads the sets.
    kernel
        .apply(&[NftChange::Add(held)])
        .await
        .expect("an add of a held element succeeds");
    assert_eq!(kernel.generation().await, Some(repaired));
}
