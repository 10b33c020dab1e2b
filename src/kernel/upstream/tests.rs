use super::nfnl::{push_attr, push_nested, split, Reply};
use super::*;

/// A rule as iptables-nft 1.8.9 sends `-A OUTPUT -m comment --comment
/// "kubernetes service portals" -j KUBE-SERVICES` (the comment lives in the
/// rule's userdata, not an expression): a counter, then an immediate whose
/// verdict jumps to the chain.
pub(super) fn rule_attributes(table: &str, chain: &str, handle: u64, jump: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    push_attr(&mut bytes, NFTA_RULE_TABLE, &nul(table));
    push_attr(&mut bytes, NFTA_RULE_CHAIN, &nul(chain));
    push_attr(&mut bytes, NFTA_RULE_HANDLE, &handle.to_be_bytes());
    let mut counter = Vec::new();
    push_attr(&mut counter, NFTA_EXPR_NAME, b"counter\0");
    let mut verdict = Vec::new();
    push_attr(&mut verdict, NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
    push_attr(&mut verdict, NFTA_VERDICT_CHAIN, &nul(jump));
    let mut data = Vec::new();
    push_nested(&mut data, NFTA_DATA_VERDICT, &verdict);
    let mut immediate_data = Vec::new();
    push_attr(&mut immediate_data, 1, &0u32.to_be_bytes()); // NFTA_IMMEDIATE_DREG: NFT_REG_VERDICT
    push_nested(&mut immediate_data, NFTA_IMMEDIATE_DATA, &data);
    let mut immediate = Vec::new();
    push_attr(&mut immediate, NFTA_EXPR_NAME, b"immediate\0");
    push_nested(&mut immediate, NFTA_EXPR_DATA, &immediate_data);
    let mut list = Vec::new();
    push_nested(&mut list, NFTA_LIST_ELEM, &counter);
    push_nested(&mut list, NFTA_LIST_ELEM, &immediate);
    push_nested(&mut bytes, NFTA_RULE_EXPRESSIONS, &list);
    push_attr(&mut bytes, 7, b"\x00\x1bkubernetes service portals\0"); // NFTA_RULE_USERDATA
    bytes
}

pub(super) fn chain_attributes(table: &str, chain: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    push_attr(&mut bytes, NFTA_CHAIN_TABLE, &nul(table));
    push_attr(&mut bytes, 2, &7u64.to_be_bytes()); // NFTA_CHAIN_HANDLE
    push_attr(&mut bytes, NFTA_CHAIN_NAME, &nul(chain));
    bytes
}

pub(super) fn ipset_attributes(name: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    push_attr(&mut bytes, IPSET_ATTR_PROTOCOL, &[7]);
    push_attr(&mut bytes, IPSET_ATTR_SETNAME, &nul(name));
    push_attr(&mut bytes, 3, b"hash:ip,port\0"); // IPSET_ATTR_TYPENAME
    bytes
}

fn nul(s: &str) -> Vec<u8> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

#[test]
fn only_upstreams_names_are_upstreams() {
    let cases = [
        ("KUBE-CLUSTER-IP", true),
        ("KUBE-IPVS-IPS", true),
        ("KUBE-6-CLUSTER-IP", true),
        ("KUBE-6-IPVS-IPS", true),
        // 32 characters: longer than ipset allows, so upstream never has it.
        ("KUBE-6-NODE-PORT-LOCAL-SCTP-HASH", false),
        ("KUBE-6-KUBE-CLUSTER-IP", false),
        ("KUBE-CLUSTER-IPS", false),
        ("my-allowlist", false),
        ("KUBE-", false),
    ];
    for (name, want) in cases {
        assert_eq!(is_upstream_ipset(name), want, "ipset {name}");
    }
    let chains = [
        ("nat", "KUBE-SERVICES", true),
        ("filter", "KUBE-IPVS-FILTER", true),
        ("filter", "KUBE-NODE-PORT", true),
        ("nat", "KUBE-NODE-PORT", true),
        // kubelet's, and a chain upstream has only in the other table.
        ("nat", "KUBE-KUBELET-CANARY", false),
        ("filter", "KUBE-KUBELET-CANARY", false),
        ("filter", "KUBE-SERVICES", false),
        ("mangle", "KUBE-SERVICES", false),
        ("kube-ipvs-proxy", "KUBE-SERVICES", false),
    ];
    for (table, chain, want) in chains {
        assert_eq!(is_upstream_chain(table, chain), want, "{table} {chain}");
    }
}

#[test]
fn a_rule_names_the_chain_it_jumps_to() {
    let bytes = rule_attributes("nat", "OUTPUT", 12, "KUBE-SERVICES");
    assert_eq!(
        parse_rule(&bytes),
        Some(DumpedRule {
            table: "nat",
            chain: "OUTPUT",
            handle: 12,
            targets: vec!["KUBE-SERVICES"],
        })
    );
}

#[test]
fn a_rule_without_a_jump_has_no_target() {
    let mut bytes = Vec::new();
    push_attr(&mut bytes, NFTA_RULE_TABLE, b"filter\0");
    push_attr(&mut bytes, NFTA_RULE_CHAIN, b"INPUT\0");
    push_attr(&mut bytes, NFTA_RULE_HANDLE, &3u64.to_be_bytes());
    let rule = parse_rule(&bytes).expect("a rule");
    assert!(rule.targets.is_empty());
    // Without a handle there is nothing to delete it by.
    let mut no_handle = Vec::new();
    push_attr(&mut no_handle, NFTA_RULE_TABLE, b"filter\0");
    push_attr(&mut no_handle, NFTA_RULE_CHAIN, b"INPUT\0");
    assert_eq!(parse_rule(&no_handle), None);
}

#[test]
fn chain_and_ipset_answers_are_read() {
    assert_eq!(
        parse_chain(&chain_attributes("filter", "KUBE-FORWARD")),
        Some(("filter", "KUBE-FORWARD"))
    );
    assert_eq!(
        parse_ipset_name(&ipset_attributes("KUBE-LOOP-BACK")),
        Some("KUBE-LOOP-BACK")
    );
}

fn leftovers() -> Leftovers {
    Leftovers {
        jumps: vec![JumpRule {
            family: Family::Ip,
            table: "nat".into(),
            chain: "OUTPUT".into(),
            handle: 12,
            target: "KUBE-SERVICES".into(),
        }],
        chains: vec![
            FoundChain {
                family: Family::Ip,
                table: "nat".into(),
                chain: "KUBE-SERVICES".into(),
            },
            FoundChain {
                family: Family::Ip,
                table: "nat".into(),
                chain: "KUBE-MARK-MASQ".into(),
            },
        ],
        ipsets: vec!["KUBE-CLUSTER-IP".into()],
        legacy_tables: vec![],
    }
}

#[test]
fn removal_deletes_jumps_then_flushes_then_deletes_chains() {
    let (requests, what) = removal_batch(&leftovers(), Family::Ip);
    assert_eq!(
        what,
        [
            "rule ip nat OUTPUT handle 12 (jump KUBE-SERVICES)",
            "the rules of chain ip nat KUBE-SERVICES",
            "the rules of chain ip nat KUBE-MARK-MASQ",
            "chain ip nat KUBE-SERVICES",
            "chain ip nat KUBE-MARK-MASQ",
        ]
    );
    // What `nft delete rule ip nat OUTPUT handle 12` sends after its header.
    let mut want = Vec::new();
    push_attr(&mut want, NFTA_RULE_TABLE, b"nat\0");
    push_attr(&mut want, NFTA_RULE_CHAIN, b"OUTPUT\0");
    push_attr(&mut want, NFTA_RULE_HANDLE, &12u64.to_be_bytes());
    assert_eq!(requests[0].kind, 0x0a08, "NFT_MSG_DELRULE of nf_tables");
    assert_eq!(requests[0].family, 2, "NFPROTO_IPV4");
    assert_eq!(requests[0].attributes, want);
    // A flush is a DELRULE without a handle.
    let mut flush = Vec::new();
    push_attr(&mut flush, NFTA_RULE_TABLE, b"nat\0");
    push_attr(&mut flush, NFTA_RULE_CHAIN, b"KUBE-SERVICES\0");
    assert_eq!(requests[1].attributes, flush);
    assert_eq!(requests[3].kind, 0x0a05, "NFT_MSG_DELCHAIN of nf_tables");
    assert!(
        removal_batch(&leftovers(), Family::Ip6).0.is_empty(),
        "nothing of ip6 was found"
    );
}

#[test]
fn the_warning_says_what_why_and_how() {
    let warning = leftovers().warning();
    for part in [
        "ip nat KUBE-SERVICES",
        "ip nat KUBE-MARK-MASQ",
        "1 jump rule(s)",
        "KUBE-CLUSTER-IP",
        "KUBE-IPVS-FILTER rejects new connections",
        "0x4000",
        "`kube-ipvs-proxy cleanup-upstream`",
    ] {
        assert!(warning.contains(part), "{part:?} missing from {warning}");
    }
    assert!(!warning.contains("legacy"));
    let mut legacy = leftovers();
    legacy.legacy_tables = vec!["ip_tables: nat filter".into()];
    assert!(legacy.warning().contains("iptables-legacy-save"));
    assert!(Leftovers::default().is_empty());
}

#[test]
fn a_dump_datagram_splits_into_answers_then_done() {
    let answer = Request {
        kind: 0x0a04,
        family: 2,
        attributes: chain_attributes("nat", "KUBE-SERVICES"),
    };
    let mut datagram = answer.encode(2, 5);
    let mut done = Request::new(0, 0, 0);
    done.kind = 3;
    datagram.extend(done.encode(2, 5));
    let replies = split(&datagram).unwrap();
    assert_eq!(replies.len(), 2);
    match &replies[0].1 {
        Reply::Message { kind, attributes } => {
            assert_eq!(*kind, 0x0a04);
            assert_eq!(parse_chain(attributes), Some(("nat", "KUBE-SERVICES")));
        }
        other => panic!("expected an answer, got {other:?}"),
    }
    assert_eq!(replies[1], (5, Reply::Done));
}
