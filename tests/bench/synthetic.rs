//! Synthetic clusters: N ClusterIP Services with E ready endpoints each, the
//! same state as `ipvsadm -R` lines, as raw netlink-ipvs operations and as
//! the nftables set elements the proxy adds for it, so that every method in
//! a benchmark programs exactly the same kernel state.
//!
//! Service `i` (0-based) is `bench/svc-i` on cluster IP 10.96.0.0 + i + 1,
//! TCP port 80 → target port 8080; its endpoint `j` is 10.128.0.0 + i·E + j + 1.
//! The extra endpoint the single-change trials add to service `i` is
//! 172.16.0.0 + i + 1, outside every other range.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use k8s_openapi::api::core::v1::{Node, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_ipvs_proxy::desired::{NftElement, NftKey, NftSet, Protocol as NftProtocol};
use netlink_ipvs::{Destination, ForwardingMethod, Operation, Protocol, Scheduler};

/// The namespace of every synthetic object.
pub const NAMESPACE: &str = "bench";
/// The node the proxy runs as; endpoints are spread over other nodes.
pub const NODE_NAME: &str = "bench-node";
/// The port every service listens on.
pub const SERVICE_PORT: u16 = 80;
/// The port every endpoint listens on.
pub const TARGET_PORT: u16 = 8080;

const CLUSTER_IP_BASE: u32 = u32::from_be_bytes([10, 96, 0, 0]);
/// 10.96.0.0/12, as kube-apiserver's default service range.
const MAX_SERVICES: usize = (1 << 20) - 2;
const POD_IP_BASE: u32 = u32::from_be_bytes([10, 128, 0, 0]);
/// 10.128.0.0/9.
const MAX_ENDPOINTS: usize = (1 << 23) - 2;
const EXTRA_IP_BASE: u32 = u32::from_be_bytes([172, 16, 0, 0]);

/// N services × E endpoints each.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Scale {
    pub services: usize,
    pub endpoints: usize,
}

impl Scale {
    /// IPVS objects the scale programs: one virtual server per service and
    /// one real server per endpoint.
    pub fn ipvs_objects(self) -> usize {
        self.services + self.services * self.endpoints
    }

    /// The short form used on the command line: `1000x10`.
    pub fn arg(self) -> String {
        format!("{}x{}", self.services, self.endpoints)
    }
}

impl fmt::Display for Scale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} × {}", thousands(self.services), self.endpoints)
    }
}

/// `12345` → `12,345`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Why a scale argument was refused; names the argument.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("scale {value:?}: {problem}")]
pub struct ScaleError {
    pub value: String,
    pub problem: String,
}

impl FromStr for Scale {
    type Err = ScaleError;

    /// `N×E` or `NxE`; N and E may carry `_` between digits (commas
    /// separate scales on the command line).
    fn from_str(value: &str) -> Result<Self, ScaleError> {
        let error = |problem: String| ScaleError {
            value: value.to_owned(),
            problem,
        };
        let (services, endpoints) = value
            .split_once(['x', 'X', '×'])
            .ok_or_else(|| error("expected SERVICESxENDPOINTS, e.g. 1000x10".into()))?;
        let number = |what: &str, text: &str| -> Result<usize, ScaleError> {
            let digits: String = text.trim().chars().filter(|&c| c != '_').collect();
            digits
                .parse::<usize>()
                .map_err(|_| error(format!("{what} {text:?} is not a whole number")))
        };
        let scale = Scale {
            services: number("services", services)?,
            endpoints: number("endpoints per service", endpoints)?,
        };
        if scale.services == 0 {
            return Err(error("needs at least one service".into()));
        }
        if scale.services > MAX_SERVICES {
            return Err(error(format!(
                "at most {MAX_SERVICES} services fit the synthetic service range 10.96.0.0/12"
            )));
        }
        if scale.services.saturating_mul(scale.endpoints) > MAX_ENDPOINTS {
            return Err(error(format!(
                "at most {MAX_ENDPOINTS} endpoints in all fit the synthetic pod range 10.128.0.0/9"
            )));
        }
        Ok(scale)
    }
}

fn ipv4(base: u32, offset: usize) -> Ipv4Addr {
    // Scale::from_str bounds every offset below the range size.
    Ipv4Addr::from(base + offset as u32)
}

/// The cluster IP of service `i`.
pub fn cluster_ip(i: usize) -> IpAddr {
    IpAddr::V4(ipv4(CLUSTER_IP_BASE, i + 1))
}

/// The address of endpoint `j` of service `i`.
pub fn endpoint_ip(scale: Scale, i: usize, j: usize) -> IpAddr {
    IpAddr::V4(ipv4(POD_IP_BASE, i * scale.endpoints + j + 1))
}

/// The endpoint the single-change trials add to service `i`.
pub fn extra_endpoint_ip(i: usize) -> IpAddr {
    IpAddr::V4(ipv4(EXTRA_IP_BASE, i + 1))
}

/// The name of service `i`.
pub fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

fn meta(name: String, labels: Option<(&str, String)>) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(NAMESPACE.to_owned()),
        name: Some(name),
        labels: labels.map(|(k, v)| [(k.to_owned(), v)].into_iter().collect()),
        ..ObjectMeta::default()
    }
}

/// Service `i`: ClusterIP, one TCP port.
pub fn service(i: usize) -> Service {
    Service {
        metadata: meta(service_name(i), None),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            cluster_ip: Some(cluster_ip(i).to_string()),
            cluster_ips: Some(vec![cluster_ip(i).to_string()]),
            selector: Some([("app".to_owned(), service_name(i))].into_iter().collect()),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                protocol: Some("TCP".to_owned()),
                port: i32::from(SERVICE_PORT),
                target_port: Some(IntOrString::Int(i32::from(TARGET_PORT))),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The one EndpointSlice of service `i`: its E ready endpoints, plus the
/// extra one when `with_extra`.
pub fn endpoint_slice(scale: Scale, i: usize, with_extra: bool) -> EndpointSlice {
    let endpoint = |addr: IpAddr, n: usize| Endpoint {
        addresses: vec![addr.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        node_name: Some(format!("node-{}", n % 50)),
        ..Endpoint::default()
    };
    let mut endpoints: Vec<Endpoint> = (0..scale.endpoints)
        .map(|j| endpoint(endpoint_ip(scale, i, j), i + j))
        .collect();
    if with_extra {
        endpoints.push(endpoint(extra_endpoint_ip(i), i));
    }
    EndpointSlice {
        metadata: meta(
            format!("{}-bench", service_name(i)),
            Some(("kubernetes.io/service-name", service_name(i))),
        ),
        address_type: "IPv4".to_owned(),
        endpoints,
        ports: Some(vec![EndpointPort {
            name: Some("http".to_owned()),
            protocol: Some("TCP".to_owned()),
            port: Some(i32::from(TARGET_PORT)),
            ..EndpointPort::default()
        }]),
    }
}

/// The node the proxy runs as.
pub fn node() -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(NODE_NAME.to_owned()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    }
}

/// Every Service of the scale.
pub fn services(scale: Scale) -> Vec<Service> {
    (0..scale.services).map(service).collect()
}

/// Every EndpointSlice of the scale.
pub fn endpoint_slices(scale: Scale) -> Vec<EndpointSlice> {
    (0..scale.services)
        .map(|i| endpoint_slice(scale, i, false))
        .collect()
}

/// The state as `ipvsadm -R` input: `-A` per service, `-a` per endpoint,
/// masquerade and weight 1 as the proxy programs them.
pub fn ipvsadm_rules(scale: Scale) -> String {
    let mut rules = String::with_capacity(scale.ipvs_objects() * 48);
    for i in 0..scale.services {
        let vip = cluster_ip(i);
        rules.push_str(&format!("-A -t {vip}:{SERVICE_PORT} -s rr\n"));
        for j in 0..scale.endpoints {
            let rip = endpoint_ip(scale, i, j);
            rules.push_str(&format!(
                "-a -t {vip}:{SERVICE_PORT} -r {rip}:{TARGET_PORT} -m -w 1\n"
            ));
        }
    }
    rules
}

/// The same state as netlink-ipvs operations, in the proxy's order (a
/// virtual server, then its real servers).
pub fn operations(scale: Scale) -> Vec<Operation> {
    let mut ops = Vec::with_capacity(scale.ipvs_objects());
    for i in 0..scale.services {
        let service = netlink_ipvs::Service::new(
            cluster_ip(i),
            Protocol::Tcp,
            SERVICE_PORT,
            Scheduler::from_str("rr").unwrap_or_else(|never| match never {}),
        );
        let address = service.address.clone();
        ops.push(Operation::AddService(service));
        for j in 0..scale.endpoints {
            let destination = Destination::new(endpoint_ip(scale, i, j), TARGET_PORT)
                .forwarding(ForwardingMethod::Masquerade)
                .weight(1);
            ops.push(Operation::AddDestination(address.clone(), destination));
        }
    }
    ops
}

/// The same state's nftables set elements, sorted as the proxy sends them:
/// each service's `cluster-ips ADDR . tcp . 80` and `service-ips ADDR`
/// (its endpoints are on other nodes, so nothing in `hairpin`).
pub fn nft_elements(scale: Scale) -> Vec<NftElement> {
    let mut elements: Vec<NftElement> = (0..scale.services)
        .flat_map(|i| {
            let ip = cluster_ip(i);
            [
                NftElement {
                    set: NftSet::ClusterIps,
                    key: NftKey::AddrProtoPort(ip, NftProtocol::Tcp, SERVICE_PORT),
                },
                NftElement {
                    set: NftSet::ServiceIps,
                    key: NftKey::Addr(ip),
                },
            ]
        })
        .collect();
    elements.sort_unstable();
    elements
}

/// The state as a manifests directory: one JSON `List` per kind, and the Node.
pub fn manifest_files(scale: Scale) -> Vec<(&'static str, serde_json::Value)> {
    let list = |items: Vec<serde_json::Value>| serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let services = (0..scale.services)
        .map(|i| typed_json(&service(i), "v1", "Service"))
        .collect();
    let slices = (0..scale.services)
        .map(|i| {
            let slice = endpoint_slice(scale, i, false);
            typed_json(&slice, "discovery.k8s.io/v1", "EndpointSlice")
        })
        .collect();
    vec![
        ("node.json", typed_json(&node(), "v1", "Node")),
        ("services.json", list(services)),
        ("endpointslices.json", list(slices)),
    ]
}

/// An object as JSON with its apiVersion and kind, as a manifest carries them.
fn typed_json<T: serde::Serialize>(object: &T, api_version: &str, kind: &str) -> serde_json::Value {
    // k8s-openapi objects always serialize; a Null would be refused by the
    // proxy, which the benchmark then reports as a failed sync.
    let mut value = serde_json::to_value(object).unwrap_or(serde_json::Value::Null);
    value["apiVersion"] = api_version.into();
    value["kind"] = kind.into();
    value
}
