//! Stale-flow cleanup against the real conntrack table: flows are created
//! with `conntrack -I` and read back with `conntrack -L`. Run by the VM
//! harness (`--include-ignored --test-threads=1`, as root, with
//! nf_conntrack_netlink loaded). Every flow a test makes is sent to an
//! address in 10.96.77.0/24 or fd00:96:77::/64, and those flows are deleted
//! before and after each test.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Output};

use kube_ipvs_proxy::desired::{FlowFilter, Protocol};
use kube_ipvs_proxy::kernel::conntrack::NetlinkConntrack;
use kube_ipvs_proxy::kernel::ConntrackKernel;

/// The destinations the tests' flows are sent to, as `conntrack -d` takes them.
const TEST_DESTINATIONS: [(&str, &str); 2] =
    [("ipv4", "10.96.77.0/24"), ("ipv6", "fd00:96:77::/64")];

fn run_conntrack(args: &[&str]) -> Output {
    Command::new("conntrack")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("conntrack {args:?}: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A flow from a client to a service address that an endpoint answered, as
/// IPVS leaves it with `net.ipv4.vs.conntrack=1`: the reply comes from the
/// endpoint to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Flow {
    protocol: Protocol,
    client: IpAddr,
    client_port: u16,
    service: IpAddr,
    port: u16,
    endpoint: IpAddr,
}

impl Flow {
    /// A UDP flow from 192.0.2.2:40000 to `service:53`, answered by `endpoint`.
    fn udp(service: &str, endpoint: &str) -> Self {
        Flow {
            protocol: Protocol::Udp,
            client: ip(if service.contains(':') {
                "2001:db8::2"
            } else {
                "192.0.2.2"
            }),
            client_port: 40000,
            service: ip(service),
            port: 53,
            endpoint: ip(endpoint),
        }
    }

    fn protocol(self, protocol: Protocol) -> Self {
        Flow { protocol, ..self }
    }

    fn port(self, port: u16) -> Self {
        Flow { port, ..self }
    }

    fn client_port(self, client_port: u16) -> Self {
        Flow {
            client_port,
            ..self
        }
    }

    /// The filter that selects this flow.
    fn filter(&self) -> FlowFilter {
        FlowFilter {
            protocol: self.protocol,
            addr: self.service,
            port: self.port,
            endpoint: self.endpoint,
        }
    }

    /// The `conntrack -I` options that create it.
    fn insert_line(&self) -> String {
        let (name, state) = match self.protocol {
            Protocol::Udp => ("udp", ""),
            Protocol::Tcp => ("tcp", " --state ESTABLISHED"),
            Protocol::Sctp => ("sctp", " --state ESTABLISHED --orig-vtag 1 --reply-vtag 2"),
        };
        format!(
            "-I -p {name} -s {client} -d {service} --sport {client_port} --dport {port} \
             -r {endpoint} -q {client} --reply-port-src {port} --reply-port-dst {client_port} \
             -t 300 -u SEEN_REPLY{state}",
            client = self.client,
            service = self.service,
            client_port = self.client_port,
            port = self.port,
            endpoint = self.endpoint,
        )
    }
}

/// Creates `flows` with one `conntrack -R` (a file of `-I` lines), which
/// fails if any of them cannot be created.
fn insert(flows: &[Flow]) {
    let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
    for flow in flows {
        writeln!(file, "{}", flow.insert_line()).expect("writing the flow file");
    }
    file.flush().expect("writing the flow file");
    let path = file.path().to_str().expect("a UTF-8 path");
    let output = run_conntrack(&["-R", path]);
    assert!(
        output.status.success(),
        "conntrack -R of {} flows failed: {}",
        flows.len(),
        String::from_utf8_lossy(&output.stderr)
    );
    let listed = listed();
    let missing: Vec<&Flow> = flows.iter().filter(|f| !listed.contains(f)).collect();
    assert!(missing.is_empty(), "created but not listed: {missing:?}");
}

/// One line of `conntrack -L`: `udp 17 119 src=A dst=B sport=P dport=Q
/// src=C dst=D sport=R dport=S ...`, the original tuple then the reply's.
fn parse_line(line: &str) -> Option<Flow> {
    let mut words = line.split_whitespace();
    let protocol = match words.next()? {
        "udp" => Protocol::Udp,
        "tcp" => Protocol::Tcp,
        "sctp" => Protocol::Sctp,
        _ => return None,
    };
    let fields: Vec<(&str, &str)> = words.filter_map(|w| w.split_once('=')).collect();
    let value = |key: &str, nth: usize| {
        fields
            .iter()
            .filter(|(k, _)| *k == key)
            .nth(nth)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {key} #{nth} in `{line}`"))
    };
    Some(Flow {
        protocol,
        client: value("src", 0).parse().ok()?,
        client_port: value("sport", 0).parse().ok()?,
        service: value("dst", 0).parse().ok()?,
        port: value("dport", 0).parse().ok()?,
        endpoint: value("src", 1).parse().ok()?,
    })
}

/// The flows `conntrack -L` shows to the tests' destinations, sorted.
fn listed() -> Vec<Flow> {
    let mut flows = Vec::new();
    for (family, destinations) in TEST_DESTINATIONS {
        let output = run_conntrack(&["-L", "-f", family, "-d", destinations]);
        assert!(
            output.status.success(),
            "conntrack -L -f {family} -d {destinations} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        flows.extend(
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(parse_line),
        );
    }
    flows.sort();
    flows
}

fn sorted(mut flows: Vec<Flow>) -> Vec<Flow> {
    flows.sort();
    flows
}

/// Deletes the tests' flows on creation and however the test ends.
struct Clean;

impl Clean {
    fn start() -> Self {
        Clean.sweep();
        assert_eq!(listed(), vec![], "the test starts with none of its flows");
        Clean
    }

    fn sweep(&self) {
        for (family, destinations) in TEST_DESTINATIONS {
            // Exits 1 when there was nothing to delete.
            let _ = run_conntrack(&["-D", "-f", family, "-d", destinations]);
        }
    }
}

impl Drop for Clean {
    fn drop(&mut self) {
        self.sweep();
    }
}

#[tokio::test]
#[ignore = "needs root and nf_conntrack_netlink: run by tests/run.sh in the VM"]
async fn a_flow_to_a_removed_endpoint_is_deleted_and_counted() {
    let _clean = Clean::start();
    let stale = Flow::udp("10.96.77.53", "10.244.2.5");
    insert(&[stale]);
    let mut conntrack = NetlinkConntrack::new().expect("ctnetlink socket");
    assert_eq!(
        conntrack.delete_flows(&[stale.filter()]).await,
        Ok(1),
        "one flow deleted"
    );
    assert_eq!(listed(), vec![], "conntrack -L no longer shows it");
}

#[tokio::test]
#[ignore = "needs root and nf_conntrack_netlink: run by tests/run.sh in the VM"]
async fn flows_that_differ_in_protocol_port_destination_or_endpoint_stay() {
    let _clean = Clean::start();
    let stale = Flow::udp("10.96.77.53", "10.244.2.5");
    // Each with a client port of its own: conntrack holds one flow per tuple.
    let others = [
        ("another protocol", stale.protocol(Protocol::Tcp)),
        ("another protocol", stale.protocol(Protocol::Sctp)),
        ("another port", stale.port(5353).client_port(40001)),
        (
            "another original destination",
            Flow::udp("10.96.77.54", "10.244.2.5").client_port(40002),
        ),
        (
            "another reply source",
            Flow::udp("10.96.77.53", "10.244.2.6").client_port(40003),
        ),
    ];
    let mut all = vec![stale];
    all.extend(others.iter().map(|(_, flow)| *flow));
    insert(&all);

    let mut conntrack = NetlinkConntrack::new().expect("ctnetlink socket");
    assert_eq!(
        conntrack.delete_flows(&[stale.filter()]).await,
        Ok(1),
        "only the matching flow is deleted"
    );
    let left = listed();
    for (why, flow) in &others {
        assert!(left.contains(flow), "a flow with {why} stays: {flow:?}");
    }
    assert_eq!(
        left,
        sorted(others.iter().map(|(_, flow)| *flow).collect()),
        "exactly the others stay"
    );
}

#[tokio::test]
#[ignore = "needs root and nf_conntrack_netlink: run by tests/run.sh in the VM"]
async fn several_filters_delete_each_their_flows_in_one_call() {
    let _clean = Clean::start();
    let udp = Flow::udp("10.96.77.53", "10.244.2.5");
    let tcp = Flow::udp("10.96.77.80", "10.244.3.8")
        .protocol(Protocol::Tcp)
        .port(80);
    let sctp = Flow::udp("10.96.77.90", "10.244.4.9")
        .protocol(Protocol::Sctp)
        .port(9);
    let v6 = Flow::udp("fd00:96:77::53", "fd00:244::5");
    let stale = [udp, udp.client_port(40001), tcp, sctp, v6];
    let kept = [
        Flow::udp("10.96.77.53", "10.244.2.6").client_port(40002),
        tcp.protocol(Protocol::Udp),
        Flow::udp("fd00:96:77::53", "fd00:244::6").client_port(40001),
    ];
    let mut all = stale.to_vec();
    all.extend(kept);
    insert(&all);

    let filters = [udp.filter(), tcp.filter(), sctp.filter(), v6.filter()];
    let mut conntrack = NetlinkConntrack::new().expect("ctnetlink socket");
    assert_eq!(
        conntrack.delete_flows(&filters).await,
        Ok(stale.len()),
        "every flow of each filter, IPv4 and IPv6, is deleted and counted"
    );
    assert_eq!(listed(), sorted(kept.to_vec()), "the others stay");
}

#[tokio::test]
#[ignore = "needs root and nf_conntrack_netlink: run by tests/run.sh in the VM"]
async fn an_ipv6_flow_is_deleted_and_its_ipv4_twin_stays() {
    let _clean = Clean::start();
    let v6 = Flow::udp("fd00:96:77::53", "fd00:244::5");
    let v4 = Flow::udp("10.96.77.53", "10.244.2.5");
    insert(&[v6, v4]);
    let mut conntrack = NetlinkConntrack::new().expect("ctnetlink socket");
    assert_eq!(conntrack.delete_flows(&[v6.filter()]).await, Ok(1));
    assert_eq!(listed(), vec![v4], "only the IPv6 flow went");
}

#[tokio::test]
#[ignore = "needs root and nf_conntrack_netlink: run by tests/run.sh in the VM"]
async fn a_flow_deleted_already_is_no_error_and_not_counted() {
    let _clean = Clean::start();
    let stale = Flow::udp("10.96.77.53", "10.244.2.5");
    insert(&[stale]);
    let mut conntrack = NetlinkConntrack::new().expect("ctnetlink socket");
    assert_eq!(conntrack.delete_flows(&[stale.filter()]).await, Ok(1));
    assert_eq!(
        conntrack.delete_flows(&[stale.filter()]).await,
        Ok(0),
        "the second delete finds nothing"
    );

    // Gone behind the proxy's back: the same answer.
    insert(&[stale]);
    let output = run_conntrack(&["-D", "-d", "10.96.77.53"]);
    assert!(output.status.success(), "conntrack -D of the flow");
    assert_eq!(conntrack.delete_flows(&[stale.filter()]).await, Ok(0));
}

#[tokio::test]
#[ignore = "needs root and nf_conntrack_netlink: run by tests/run.sh in the VM"]
async fn no_filters_delete_nothing() {
    let _clean = Clean::start();
    let flow = Flow::udp("10.96.77.53", "10.244.2.5");
    insert(&[flow]);
    let mut conntrack = NetlinkConntrack::new().expect("ctnetlink socket");
    assert_eq!(conntrack.delete_flows(&[]).await, Ok(0));
    assert_eq!(listed(), vec![flow]);
}

#[tokio::test]
#[ignore = "needs root and nf_conntrack_netlink: run by tests/run.sh in the VM"]
async fn two_thousand_matching_flows_go_and_two_thousand_others_stay() {
    let _clean = Clean::start();
    let stale = Flow::udp("10.96.77.53", "10.244.2.5");
    // Clients on distinct ports; the others differ from the matching ones
    // only in the reply source or only in the service port (and, as
    // conntrack holds one flow per tuple, in the client port).
    let matching: Vec<Flow> = (0..2000).map(|i| stale.client_port(20000 + i)).collect();
    let others: Vec<Flow> = (0..2000)
        .map(|i| {
            let flow = stale.client_port(30000 + i);
            if i % 2 == 0 {
                Flow {
                    endpoint: ip("10.244.2.6"),
                    ..flow
                }
            } else {
                flow.port(5353)
            }
        })
        .collect();
    let mut all = matching.clone();
    all.extend(&others);
    insert(&all);

    let mut conntrack = NetlinkConntrack::new().expect("ctnetlink socket");
    assert_eq!(
        conntrack.delete_flows(&[stale.filter()]).await,
        Ok(2000),
        "every matching flow is deleted and counted"
    );
    assert_eq!(listed(), sorted(others), "exactly the 2,000 others stay");
}
