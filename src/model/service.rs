//! The compact form of a core/v1 Service: only what the proxy programs.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use smallvec::SmallVec;

use super::error::{ModelError, ObjectKind, ObjectRef, Problem};
use super::field;
use crate::desired::{Protocol, ServiceName};

/// Annotation that overrides the IPVS scheduler of one Service, e.g.
/// `kube-ipvs-proxy.io/scheduler: "lc"`. The value must be a scheduler the
/// kernel offers; otherwise the proxy reports it and uses its default.
pub const SCHEDULER_ANNOTATION: &str = "kube-ipvs-proxy.io/scheduler";

/// Label that hands a Service to another proxy (upstream kube-proxy skips
/// such services, whatever the value).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// The annotation upstream reads for source ranges when the field is empty.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// The session affinity timeout the API defaults to (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10800;

/// The largest timeout the API accepts for ClientIP affinity (one day).
const MAX_AFFINITY_TIMEOUT_SECONDS: i32 = 86400;

/// An object's `metadata.uid` in 16 bytes rather than a 36-byte string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Uid(u128);

impl Uid {
    /// A UUID in the API server's form (lowercase, hyphenated); `None` for
    /// anything else, which then goes unnamed rather than misspelt.
    pub fn parse(value: &str) -> Option<Uid> {
        let hyphens = [8, 13, 18, 23];
        let well_formed = value.len() == 36
            && value.char_indices().all(|(i, c)| {
                if hyphens.contains(&i) {
                    c == '-'
                } else {
                    c.is_ascii_digit() || ('a'..='f').contains(&c)
                }
            });
        if !well_formed {
            return None;
        }
        let hex: String = value.chars().filter(|c| *c != '-').collect();
        u128::from_str_radix(&hex, 16).ok().map(Uid)
    }
}

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = format!("{:032x}", self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }
}

/// `spec.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

impl ServiceType {
    /// NodePort and LoadBalancer services are reachable on node addresses.
    pub fn has_node_ports(self) -> bool {
        matches!(self, ServiceType::NodePort | ServiceType::LoadBalancer)
    }
}

/// Why the proxy programs nothing for a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// `type: ExternalName` is a DNS alias, not a virtual IP.
    ExternalName,
    /// `clusterIP: None`: DNS returns the endpoints directly.
    Headless,
    /// No cluster IP allocated (yet), as upstream's `ShouldSkipService`.
    NoClusterIp,
    /// Labelled `service.kubernetes.io/service-proxy-name`: another proxy's.
    OtherProxy,
}

/// `spec.ports[].targetPort`, kept for display; real server ports come from
/// the EndpointSlices.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TargetPort {
    Number(u16),
    Name(Arc<str>),
}

/// One entry of `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServicePortInfo {
    /// Matches the EndpointSlice port of the same name ("" when unnamed).
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    pub target_port: Option<TargetPort>,
}

/// A Service as the proxy needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: ServiceName,
    /// `metadata.uid`, when it is a UUID (as the API server makes them).
    pub uid: Option<Uid>,
    /// `metadata.creationTimestamp` in seconds since the Unix epoch: of two
    /// services wanting one virtual server, the older keeps it.
    pub created: Option<i64>,
    pub type_: ServiceType,
    /// `spec.clusterIPs`, falling back to `spec.clusterIP`.
    pub cluster_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` of LoadBalancer services, except
    /// entries with `ipMode: Proxy` (the load balancer delivers to nodes).
    pub load_balancer_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePortInfo>,
    /// `spec.loadBalancerSourceRanges` of LoadBalancer services (or, when
    /// empty, upstream's annotation
    /// `service.beta.kubernetes.io/load-balancer-source-ranges`): who may
    /// reach the LoadBalancer IPs. Empty: everyone.
    pub load_balancer_source_ranges: Vec<ipnet::IpNet>,
    /// `Some(timeout seconds)` for sessionAffinity ClientIP.
    pub session_affinity: Option<u32>,
    /// externalTrafficPolicy Local.
    pub external_traffic_local: bool,
    /// `spec.healthCheckNodePort`, read only for a LoadBalancer with
    /// externalTrafficPolicy Local (the one kind it means anything for):
    /// where every node answers load balancers' health checks.
    pub health_check_node_port: Option<u16>,
    /// internalTrafficPolicy Local.
    pub internal_traffic_local: bool,
    /// The raw value of [`SCHEDULER_ANNOTATION`]; translate validates it.
    pub scheduler: Option<Arc<str>>,
    /// Whether `spec.selector` is non-empty: Endpoints are mirrored only for
    /// services without one, as the EndpointSlice mirroring controller does.
    pub has_selector: bool,
    pub skip: Option<SkipReason>,
}

impl ServiceInfo {
    /// Converts a Service; never panics, and names the offending field.
    ///
    /// A skipped service keeps only its name, type and skip reason: nothing
    /// else of it is read, so nothing else of it can be wrong.
    pub fn from_service(svc: &Service) -> Result<ServiceInfo, ModelError> {
        let obj = field::namespaced(ObjectKind::Service, &svc.metadata)?;
        let name = ServiceName::new(obj.namespace.unwrap_or_default(), obj.name);
        let spec = svc.spec.as_ref();

        let type_ = match spec.and_then(|s| s.type_.as_deref()) {
            None | Some("ClusterIP") => ServiceType::ClusterIp,
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => ServiceType::ExternalName,
            Some(other) => {
                return Err(obj.error("spec.type", Problem::Unsupported(other.to_owned())));
            }
        };
        let has_selector = spec
            .and_then(|s| s.selector.as_ref())
            .is_some_and(|sel| !sel.is_empty());
        let mut info = ServiceInfo {
            name,
            uid: svc.metadata.uid.as_deref().and_then(Uid::parse),
            created: svc
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            type_,
            cluster_ips: Vec::new(),
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            ports: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            session_affinity: None,
            external_traffic_local: false,
            health_check_node_port: None,
            internal_traffic_local: false,
            scheduler: None,
            has_selector,
            skip: None,
        };

        let other_proxy = svc
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL));
        // One or two (dual-stack): kept inline, as this runs for every
        // Service of every list.
        let cluster_ip_strings: SmallVec<[&str; 2]> = match spec {
            Some(s) => match s.cluster_ips.as_deref() {
                Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
                _ => s.cluster_ip.as_deref().into_iter().collect(),
            },
            None => SmallVec::new(),
        };
        info.skip = if type_ == ServiceType::ExternalName {
            Some(SkipReason::ExternalName)
        } else if other_proxy {
            Some(SkipReason::OtherProxy)
        } else if cluster_ip_strings.first() == Some(&"None") {
            Some(SkipReason::Headless)
        } else if cluster_ip_strings.iter().all(|ip| ip.is_empty()) {
            Some(SkipReason::NoClusterIp)
        } else {
            None
        };
        let Some(spec) = spec.filter(|_| info.skip.is_none()) else {
            return Ok(info);
        };

        let ips_field = if spec.cluster_ips.as_ref().is_some_and(|v| !v.is_empty()) {
            "spec.clusterIPs"
        } else {
            "spec.clusterIP"
        };
        // Sized up front: a vector that grows by pushes allocates room for
        // four, and the shrink below would allocate again.
        info.cluster_ips = Vec::with_capacity(cluster_ip_strings.len());
        for (i, value) in cluster_ip_strings.iter().enumerate() {
            let ip = field::ip(&obj, || format!("{ips_field}[{i}]"), value)?;
            push_unique(&mut info.cluster_ips, ip);
        }
        info.external_ips = Vec::with_capacity(spec.external_ips.as_ref().map_or(0, Vec::len));
        for (i, value) in spec.external_ips.iter().flatten().enumerate() {
            let ip = field::ip(&obj, || format!("spec.externalIPs[{i}]"), value)?;
            push_unique(&mut info.external_ips, ip);
        }
        if type_ == ServiceType::LoadBalancer {
            let ingress = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref());
            for (i, ing) in ingress.into_iter().flatten().enumerate() {
                if ing.ip_mode.as_deref() == Some("Proxy") {
                    continue;
                }
                // Hostname-only ingress (some cloud LBs) has no IP to hold.
                let Some(value) = ing.ip.as_deref().filter(|v| !v.is_empty()) else {
                    continue;
                };
                let ip = field::ip(
                    &obj,
                    || format!("status.loadBalancer.ingress[{i}].ip"),
                    value,
                )?;
                push_unique(&mut info.load_balancer_ips, ip);
            }
        }

        if type_ == ServiceType::LoadBalancer {
            info.load_balancer_source_ranges = source_ranges(&obj, svc)?;
        }

        info.ports = Vec::with_capacity(spec.ports.as_ref().map_or(0, Vec::len));
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let protocol = field::protocol(
                &obj,
                || format!("spec.ports[{i}].protocol"),
                p.protocol.as_deref(),
            )?;
            let port = field::port(&obj, || format!("spec.ports[{i}].port"), p.port)?;
            let node_port = match p.node_port {
                None => None,
                Some(np) => Some(field::port(
                    &obj,
                    || format!("spec.ports[{i}].nodePort"),
                    np,
                )?),
            };
            let target_port = match &p.target_port {
                None => None,
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                    Some(TargetPort::Number(field::port(
                        &obj,
                        || format!("spec.ports[{i}].targetPort"),
                        *n,
                    )?))
                }
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => {
                    Some(TargetPort::Name(s.as_str().into()))
                }
            };
            info.ports.push(ServicePortInfo {
                name: p.name.as_deref().unwrap_or_default().into(),
                protocol,
                port,
                node_port,
                target_port,
            });
        }

        info.session_affinity = match spec.session_affinity.as_deref() {
            None | Some("None") => None,
            Some("ClientIP") => {
                let timeout = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds);
                match timeout {
                    None => Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS),
                    Some(t) if (1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(&t) => {
                        Some(t.unsigned_abs())
                    }
                    Some(t) => {
                        return Err(obj.error(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            Problem::OutOfRange(t.into()),
                        ));
                    }
                }
            }
            Some(other) => {
                return Err(obj.error(
                    "spec.sessionAffinity",
                    Problem::Unsupported(other.to_owned()),
                ));
            }
        };
        info.external_traffic_local = traffic_policy_local(
            &obj,
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        )?;
        if type_ == ServiceType::LoadBalancer && info.external_traffic_local {
            info.health_check_node_port = spec
                .health_check_node_port
                .map(|p| field::port(&obj, || "spec.healthCheckNodePort".to_owned(), p))
                .transpose()?;
        }
        info.internal_traffic_local = traffic_policy_local(
            &obj,
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        )?;
        info.scheduler = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SCHEDULER_ANNOTATION))
            .map(|s| s.as_str().into());
        // The model holds every Service for as long as it lives: no spare
        // capacity (a vector that grew by pushes holds room for four).
        info.cluster_ips.shrink_to_fit();
        info.external_ips.shrink_to_fit();
        info.load_balancer_ips.shrink_to_fit();
        info.ports.shrink_to_fit();
        info.load_balancer_source_ranges.shrink_to_fit();
        Ok(info)
    }
}

/// `spec.loadBalancerSourceRanges`, else the comma-separated annotation.
fn source_ranges(obj: &ObjectRef<'_>, svc: &Service) -> Result<Vec<ipnet::IpNet>, ModelError> {
    let mut ranges = Vec::new();
    let field = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_source_ranges.as_ref())
        .filter(|v| !v.is_empty());
    if let Some(values) = field {
        for (i, value) in values.iter().enumerate() {
            let net = field::cidr(obj, || format!("spec.loadBalancerSourceRanges[{i}]"), value)?;
            if !ranges.contains(&net) {
                ranges.push(net);
            }
        }
        return Ok(ranges);
    }
    let annotation = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION));
    for value in annotation.into_iter().flat_map(|a| a.split(',')) {
        if value.trim().is_empty() {
            continue;
        }
        let net = field::cidr(
            obj,
            || format!("metadata.annotations[{SOURCE_RANGES_ANNOTATION}]"),
            value,
        )?;
        if !ranges.contains(&net) {
            ranges.push(net);
        }
    }
    Ok(ranges)
}

/// Whether a traffic policy is Local; "Cluster" (or absent) is not.
fn traffic_policy_local(
    obj: &ObjectRef<'_>,
    field: &str,
    value: Option<&str>,
) -> Result<bool, ModelError> {
    match value {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err(obj.error(field, Problem::Unsupported(other.to_owned()))),
    }
}

fn push_unique(ips: &mut Vec<IpAddr>, ip: IpAddr) {
    if !ips.contains(&ip) {
        ips.push(ip);
    }
}
