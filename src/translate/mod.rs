//! Service + endpoints + node → the virtual servers and addresses one node
//! wants: a pure function, with upstream kube-proxy's IPVS mode as the
//! reference for its rules.
//!
//! - One virtual server per service port and address: every cluster IP, every
//!   external IP, every LoadBalancer ingress IP, and for NodePort and
//!   LoadBalancer services every node address at the node port.
//! - Real servers are the ready endpoints, or, when none is ready, the
//!   serving-and-terminating ones; matched to a service port by port name and
//!   protocol, one per address and port however many slices list it.
//! - internalTrafficPolicy Local narrows cluster-IP virtual servers, and
//!   externalTrafficPolicy Local narrows the others, to this node's endpoints.
//! - A service lives in the families of its cluster IPs; families the node
//!   does not run are left out, and a virtual server only ever gets
//!   addresses and endpoints of its own family.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};
use ipnet::IpNet;

use crate::desired::{
    DesiredVirtualServer, Protocol, RealServer, RealServerKey, ServiceDesired, ServiceName,
    VirtualServer, VirtualServerKey,
};
use crate::model::{
    AddressType, EndpointHints, EndpointSliceInfo, Model, NodeInfo, ServiceInfo, ServicePortInfo,
    SCHEDULER_ANNOTATION,
};
use crate::parallel;

mod packet;
#[cfg(test)]
mod tests;

/// The scheduler kube-proxy's IPVS mode uses unless told otherwise.
pub const DEFAULT_SCHEDULER: &str = "rr";

/// The kernel's IP_VS_SCHEDNAME_MAXLEN (16) less its terminating NUL.
const MAX_SCHEDULER_NAME_LEN: usize = 15;

/// What translate needs to know about this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// Matched against endpoints' `nodeName` for the Local traffic policies.
    pub name: Arc<str>,
    /// Where NodePorts listen, already narrowed by `--nodeport-addresses`.
    pub node_addresses: Vec<IpAddr>,
    /// Every address the node holds outside kube-ipvs0, loopback and
    /// link-local apart: an ExternalIP or LoadBalancer IP among them is
    /// served but never bound again on kube-ipvs0.
    pub local_addresses: Vec<IpAddr>,
    /// The node runs IPv4.
    pub ipv4: bool,
    /// The node runs IPv6.
    pub ipv6: bool,
}

impl NodeFacts {
    /// Whether the node runs the family of `addr`.
    pub fn runs_family_of(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(_) => self.ipv4,
            IpAddr::V6(_) => self.ipv6,
        }
    }
}

/// Proxy-wide settings translate applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslateConfig {
    /// `--ipvs-scheduler`: the scheduler of every service without the annotation.
    pub scheduler: Arc<str>,
    /// The schedulers the kernel offers; `None` accepts any well-formed name.
    pub available_schedulers: Option<BTreeSet<Arc<str>>>,
    /// `--allowed-external-ip-cidrs`: ExternalIPs outside these are refused.
    /// Empty allows every usable unicast address.
    pub allowed_external_ips: Vec<IpNet>,
    /// Whether SCTP ports can be served (the kernel's `sctp` module).
    pub sctp: SctpSupport,
}

/// Whether this node can serve SCTP: the proxy loads the `sctp` module the
/// first time a service asks for it, and records the outcome here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SctpSupport {
    /// Not needed yet; translate serves SCTP ports (as `plan` does).
    #[default]
    Unchecked,
    /// The module is loaded (or built in).
    Available,
    /// The module cannot be loaded, for this reason: SCTP ports are not
    /// served, each with a warning naming its service.
    Unavailable(Arc<str>),
}

impl Default for TranslateConfig {
    fn default() -> Self {
        TranslateConfig {
            scheduler: DEFAULT_SCHEDULER.into(),
            available_schedulers: None,
            allowed_external_ips: Vec::new(),
            sctp: SctpSupport::default(),
        }
    }
}

impl TranslateConfig {
    /// Settings with `scheduler` as the default and, if known, the list of
    /// schedulers the kernel offers.
    pub fn new<S: AsRef<str>>(
        scheduler: &str,
        available_schedulers: Option<impl IntoIterator<Item = S>>,
    ) -> Self {
        TranslateConfig {
            scheduler: scheduler.into(),
            available_schedulers: available_schedulers
                .map(|list| list.into_iter().map(|s| Arc::from(s.as_ref())).collect()),
            allowed_external_ips: Vec::new(),
            sctp: SctpSupport::default(),
        }
    }

    /// Whether `name` is a scheduler this kernel can use. Call it on
    /// [`TranslateConfig::scheduler`] at startup: translate trusts the default.
    pub fn check_scheduler(&self, name: &str) -> Result<(), SchedulerProblem> {
        let well_formed = !name.is_empty()
            && name.len() <= MAX_SCHEDULER_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !well_formed {
            return Err(SchedulerProblem::InvalidName);
        }
        match &self.available_schedulers {
            Some(available) if !available.contains(name) => Err(SchedulerProblem::NotOffered(
                available.iter().cloned().collect(),
            )),
            _ => Ok(()),
        }
    }
}

/// Why a scheduler name cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchedulerProblem {
    /// Not 1 to 15 characters of `a-z`, `0-9` and `_`.
    InvalidName,
    /// Well formed, but not among the schedulers the kernel offers (listed).
    NotOffered(Vec<Arc<str>>),
}

impl fmt::Display for SchedulerProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchedulerProblem::InvalidName => f.write_str("not a valid scheduler name"),
            SchedulerProblem::NotOffered(available) => {
                f.write_str("not offered by the kernel (available: ")?;
                for (i, name) in available.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(name)?;
                }
                f.write_str(")")
            }
        }
    }
}

/// Something translate worked around; the service is still programmed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error(
        "Service {service}: annotation {SCHEDULER_ANNOTATION}: {value:?} is {problem}; \
         using the default scheduler {fallback:?}"
    )]
    Scheduler {
        service: ServiceName,
        value: Arc<str>,
        problem: SchedulerProblem,
        fallback: Arc<str>,
    },
    #[error("Service {service}: {field}: {value} is {reason}; not serving it (the service's other addresses are)")]
    RefusedAddress {
        service: ServiceName,
        /// `spec.externalIPs` or `status.loadBalancer.ingress[].ip`.
        field: &'static str,
        value: IpAddr,
        reason: RefusedAddress,
    },
    #[error("Service {service}: spec.ports: {port}/SCTP cannot be served: {reason}; not serving this port (the service's other ports are)")]
    SctpUnavailable {
        service: ServiceName,
        /// The service port (`spec.ports[].port`).
        port: u16,
        /// Why the kernel's `sctp` module could not be loaded.
        reason: Arc<str>,
    },
}

/// Why an ExternalIP or LoadBalancer IP is not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedAddress {
    /// 0.0.0.0 or `::`.
    Unspecified,
    Loopback,
    LinkLocal,
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// Outside `--allowed-external-ip-cidrs`.
    NotAllowed,
}

impl fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefusedAddress::Unspecified => "the unspecified address",
            RefusedAddress::Loopback => "a loopback address",
            RefusedAddress::LinkLocal => "a link-local address",
            RefusedAddress::Multicast => "a multicast address",
            RefusedAddress::Broadcast => "the broadcast address",
            RefusedAddress::NotAllowed => "outside --allowed-external-ip-cidrs",
        })
    }
}

impl RefusedAddress {
    /// Why `ip` can never be a service address on a node, if it cannot.
    pub fn unusable(ip: IpAddr) -> Option<RefusedAddress> {
        match ip {
            _ if ip.is_unspecified() => Some(RefusedAddress::Unspecified),
            _ if ip.is_loopback() => Some(RefusedAddress::Loopback),
            _ if ip.is_multicast() => Some(RefusedAddress::Multicast),
            IpAddr::V4(v4) if v4.is_broadcast() => Some(RefusedAddress::Broadcast),
            IpAddr::V4(v4) if v4.is_link_local() => Some(RefusedAddress::LinkLocal),
            IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => {
                Some(RefusedAddress::LinkLocal)
            }
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .and_then(|v4| RefusedAddress::unusable(IpAddr::V4(v4))),
            IpAddr::V4(_) => None,
        }
    }
}

/// A service's desired state and what was worked around to get it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Translation {
    pub desired: ServiceDesired,
    pub warnings: Vec<TranslateError>,
    /// The `healthCheckNodePort` server this node runs for the service.
    pub health_check: Option<HealthCheck>,
    /// Ports whose Local traffic policy leaves them no endpoint here.
    pub no_local_endpoints: NoLocalEndpoints,
}

/// Service ports (per address family) that have endpoints, but none on this
/// node for a Local traffic policy: upstream's
/// `kubeproxy_sync_proxy_rules_no_local_endpoints_total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoLocalEndpoints {
    /// internalTrafficPolicy Local: the cluster IP drops traffic.
    pub internal: usize,
    /// externalTrafficPolicy Local on an externally reachable port: node
    /// ports, ExternalIPs and LoadBalancer IPs drop outside traffic.
    pub external: usize,
}

/// What a LoadBalancer with externalTrafficPolicy Local asks of every node:
/// an HTTP server on `port` that says how many of its endpoints run here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// `spec.healthCheckNodePort`.
    pub port: u16,
    /// This node's ready endpoints, counted once per address however many
    /// ports list it (upstream's `LocalReadyEndpoints`).
    pub local_endpoints: usize,
}

/// Translates one service given the slices that feed it, as on a node with
/// no zone: [`translate_service_in_zone`] with `None`.
pub fn translate_service<'a>(
    svc: &ServiceInfo,
    slices: impl IntoIterator<Item = &'a EndpointSliceInfo>,
    node: &NodeFacts,
    cfg: &TranslateConfig,
) -> Translation {
    translate_service_in_zone(svc, slices, node, None, cfg)
}

/// Translates one service given the slices that feed it, on a node in
/// `zone` (its `topology.kubernetes.io/zone` label, `None` if it has none).
///
/// The output is sorted (virtual servers by key, real servers by key, bind
/// addresses by value). Where two of the service's addresses coincide (a
/// cluster IP also listed as an external IP), the first rule above wins:
/// cluster IP, then external IP, then LoadBalancer IP, then node address.
pub fn translate_service_in_zone<'a>(
    svc: &ServiceInfo,
    slices: impl IntoIterator<Item = &'a EndpointSliceInfo>,
    node: &NodeFacts,
    zone: Option<&str>,
    cfg: &TranslateConfig,
) -> Translation {
    let mut translation = Translation::default();
    if svc.skip.is_some() || svc.ports.is_empty() {
        return translation;
    }
    let scheduler = match svc.scheduler.as_ref() {
        None => cfg.scheduler.clone(),
        Some(wanted) => match cfg.check_scheduler(wanted) {
            Ok(()) => wanted.clone(),
            Err(problem) => {
                translation.warnings.push(TranslateError::Scheduler {
                    service: svc.name.clone(),
                    value: wanted.clone(),
                    problem,
                    fallback: cfg.scheduler.clone(),
                });
                cfg.scheduler.clone()
            }
        },
    };
    let slices: Vec<&EndpointSliceInfo> = slices.into_iter().collect();
    let external = external_addresses(svc, node, cfg, &mut translation.warnings);

    let mut servers: BTreeMap<VirtualServerKey, DesiredVirtualServer> = BTreeMap::new();
    let mut bind_addrs = BTreeSet::new();
    let mut served_node_addrs = BTreeSet::new();
    let mut nft = packet::Elements::default();
    for port in &svc.ports {
        if let (Protocol::Sctp, SctpSupport::Unavailable(reason)) = (port.protocol, &cfg.sctp) {
            translation.warnings.push(TranslateError::SctpUnavailable {
                service: svc.name.clone(),
                port: port.port,
                reason: reason.clone(),
            });
            continue;
        }
        for family in [AddressType::Ipv4, AddressType::Ipv6] {
            let node_runs_family = match family {
                AddressType::Ipv4 => node.ipv4,
                _ => node.ipv6,
            };
            // A service lives in the families of its cluster IPs (upstream's
            // per-family proxiers skip a service without one of theirs).
            let service_has_family = svc.cluster_ips.iter().any(|ip| family.matches(*ip));
            if !node_runs_family || !service_has_family {
                continue;
            }
            let in_family = |ip: &&IpAddr| family.matches(**ip);
            let endpoints = PortEndpoints::select(&slices, port, family, &node.name, zone);
            let internal = endpoints.for_policy(svc.internal_traffic_local);
            let external_endpoints = endpoints.for_policy(svc.external_traffic_local);
            // Counted as upstream's proxiers count them, per port and family.
            let has_endpoints = !endpoints.for_policy(false).is_empty();
            let externally_reachable =
                !external.is_empty() || (svc.type_.has_node_ports() && port.node_port.is_some());
            let no_local = &mut translation.no_local_endpoints;
            if has_endpoints && svc.internal_traffic_local && internal.is_empty() {
                no_local.internal += 1;
            }
            if has_endpoints
                && svc.external_traffic_local
                && externally_reachable
                && external_endpoints.is_empty()
            {
                no_local.external += 1;
            }

            let mut add = |addr: IpAddr, port_number: u16, real_servers: &[RealServerKey]| {
                let key = VirtualServerKey {
                    addr,
                    protocol: port.protocol,
                    port: port_number,
                };
                servers.entry(key).or_insert_with(|| DesiredVirtualServer {
                    server: VirtualServer {
                        key,
                        scheduler: scheduler.clone(),
                        persistence: svc.session_affinity,
                    },
                    real_servers: real_servers
                        .iter()
                        .map(|&key| RealServer { key, weight: 1 })
                        .collect(),
                });
            };
            for &ip in svc.cluster_ips.iter().filter(in_family) {
                add(ip, port.port, internal);
                bind_addrs.insert(ip);
                nft.cluster_ip(ip, port);
            }
            for ext in external.iter().filter(|e| family.matches(e.ip)) {
                add(ext.ip, port.port, external_endpoints);
                if ext.node_owned {
                    served_node_addrs.insert(ext.ip);
                } else {
                    bind_addrs.insert(ext.ip);
                }
                nft.external_ip(
                    ext,
                    port,
                    svc,
                    &node.local_addresses,
                    external_endpoints.is_empty(),
                );
            }
            if let (true, Some(node_port)) = (svc.type_.has_node_ports(), port.node_port) {
                for &ip in node.node_addresses.iter().filter(in_family) {
                    add(ip, node_port, external_endpoints);
                }
                let no_endpoints = external_endpoints.is_empty();
                nft.node_port(family, port.protocol, node_port, svc, no_endpoints);
            }
            nft.hairpin(&endpoints.local, port.protocol);
        }
    }
    translation.desired = ServiceDesired {
        virtual_servers: servers.into_values().collect(),
        bind_addrs: bind_addrs.into_iter().collect(),
        served_node_addrs: served_node_addrs.into_iter().collect(),
        nft_elements: nft.finish(),
        created: svc.created,
    };
    translation.health_check = health_check(svc, &slices, node);
    translation
}

/// The service's health check on this node, if it asks for one: it is
/// served wherever the service is (a cluster IP of a family the node runs),
/// and counts the node's ready endpoints of those families. Endpoints of a
/// slice without ports serve nothing, as upstream's endpoints map leaves
/// them out.
fn health_check(
    svc: &ServiceInfo,
    slices: &[&EndpointSliceInfo],
    node: &NodeFacts,
) -> Option<HealthCheck> {
    let port = svc.health_check_node_port?;
    let serves_family = |ip: IpAddr| {
        node.runs_family_of(ip) && svc.cluster_ips.iter().any(|c| c.is_ipv4() == ip.is_ipv4())
    };
    if !svc.cluster_ips.iter().any(|ip| serves_family(*ip)) {
        return None;
    }
    let local: BTreeSet<IpAddr> = slices
        .iter()
        .filter(|s| !s.ports.is_empty())
        .flat_map(|s| {
            s.endpoints
                .iter()
                .filter(|ep| s.address_type.matches(ep.address))
        })
        .filter(|ep| ep.ready && ep.node_name.as_deref() == Some(&*node.name))
        .map(|ep| ep.address)
        .filter(|ip| serves_family(*ip))
        .collect();
    Some(HealthCheck {
        port,
        local_endpoints: local.len(),
    })
}

/// One ExternalIP or LoadBalancer IP that the service may use on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ExternalAddress {
    ip: IpAddr,
    /// A LoadBalancer ingress IP (source ranges apply) rather than an ExternalIP.
    load_balancer: bool,
    /// Already one of the node's own addresses: served, never bound.
    node_owned: bool,
}

/// The service's ExternalIPs and LoadBalancer IPs that are safe to serve,
/// each refused one reported with its field and value. A cluster IP listed
/// again is left to the cluster IP.
fn external_addresses(
    svc: &ServiceInfo,
    node: &NodeFacts,
    cfg: &TranslateConfig,
    warnings: &mut Vec<TranslateError>,
) -> Vec<ExternalAddress> {
    // The model keeps each list deduplicated and without the ingress
    // entries it skips, so an index here need not be the API's: the field
    // is named without one, and the value says which entry it is.
    let external = svc.external_ips.iter().map(|ip| (*ip, false));
    let load_balancer = svc.load_balancer_ips.iter().map(|ip| (*ip, true));
    let mut accepted: Vec<ExternalAddress> = Vec::new();
    for (ip, is_lb) in external.chain(load_balancer) {
        let refused = RefusedAddress::unusable(ip).or_else(|| {
            let allowed = is_lb
                || cfg.allowed_external_ips.is_empty()
                || cfg.allowed_external_ips.iter().any(|net| net.contains(&ip));
            (!allowed).then_some(RefusedAddress::NotAllowed)
        });
        if let Some(reason) = refused {
            let field = if is_lb {
                "status.loadBalancer.ingress[].ip"
            } else {
                "spec.externalIPs"
            };
            warnings.push(TranslateError::RefusedAddress {
                service: svc.name.clone(),
                field,
                value: ip,
                reason,
            });
            continue;
        }
        if svc.cluster_ips.contains(&ip) {
            continue;
        }
        // Listed both ways: a LoadBalancer IP still, for its source ranges.
        if let Some(seen) = accepted.iter_mut().find(|a| a.ip == ip) {
            seen.load_balancer |= is_lb;
            continue;
        }
        accepted.push(ExternalAddress {
            ip,
            load_balancer: is_lb,
            node_owned: node.local_addresses.contains(&ip),
        });
    }
    accepted
}

/// Translates the service called `name` as the model holds it now; an empty
/// translation if the model has no such service.
pub fn translate_named(
    model: &Model,
    name: &ServiceName,
    node: &NodeFacts,
    cfg: &TranslateConfig,
) -> Translation {
    match model.service(name) {
        Some(svc) => translate_service_in_zone(
            svc,
            model.endpoint_slices(name),
            node,
            model.node().and_then(NodeInfo::zone),
            cfg,
        ),
        None => Translation::default(),
    }
}

/// Translates each of `names` as [`translate_named`] does, in order. A large
/// batch (the first list, a relist, a node change) is split over the
/// machine's cores: translation is pure.
pub fn translate_each(
    model: &Model,
    names: &[ServiceName],
    node: &NodeFacts,
    cfg: &TranslateConfig,
) -> Vec<Translation> {
    parallel::map_in_order(names.iter().collect(), |name| {
        translate_named(model, name, node, cfg)
    })
}

/// Translates every service of the model. Services that want nothing of
/// this node (skipped, no ports, no address of the node's families) are
/// left out of the map.
pub fn translate_model(
    model: &Model,
    node: &NodeFacts,
    cfg: &TranslateConfig,
) -> (HashMap<ServiceName, ServiceDesired>, Vec<TranslateError>) {
    let mut desired = HashMap::with_capacity(model.service_count());
    let mut warnings = Vec::new();
    let zone = model.node().and_then(NodeInfo::zone);
    for svc in model.services() {
        let t = translate_service_in_zone(svc, model.endpoint_slices(&svc.name), node, zone, cfg);
        warnings.extend(t.warnings);
        if !t.desired.virtual_servers.is_empty() || !t.desired.bind_addrs.is_empty() {
            desired.insert(svc.name.clone(), t.desired);
        }
    }
    (desired, warnings)
}

/// The usable endpoints of one service port in one address family.
#[derive(Debug, Default)]
struct PortEndpoints {
    /// For Cluster traffic policy.
    cluster: Vec<RealServerKey>,
    /// For Local traffic policy: this node's endpoints only.
    local: Vec<RealServerKey>,
}

/// What is known of one endpoint address and port, merged across slices.
#[derive(Clone, Copy, Debug, Default)]
struct Candidate<'a> {
    ready: bool,
    serving_terminating: bool,
    local: bool,
    /// The first hints a slice gives it.
    hints: Option<&'a EndpointHints>,
}

/// Which ready endpoints Cluster traffic policy uses on this node, chosen
/// from the endpoints' hints as upstream's `topologyModeFromHints` does
/// with its feature gates at their defaults (PreferSameTrafficDistribution
/// is GA). The Service's `trafficDistribution` and
/// `service.kubernetes.io/topology-mode` are not read: they tell the
/// EndpointSlice controller whether to write hints, and the hints are the
/// proxy's only input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology<'a> {
    /// Every ready endpoint.
    Any,
    /// Those hinted for this node (`hints.forNodes`).
    SameNode(&'a str),
    /// Those hinted for this node's zone (`hints.forZones`).
    SameZone(&'a str),
}

impl<'a> Topology<'a> {
    /// Same node if every ready endpoint has node hints and one names this
    /// node; else same zone if every ready endpoint has zone hints and one
    /// names this node's zone; else any. Falling back to any endpoint when
    /// hints are partial (a rollout to or from hints) or miss this node or
    /// zone keeps the service reachable.
    fn from_hints<'h>(
        ready: impl Iterator<Item = Option<&'h EndpointHints>>,
        node_name: &'a str,
        zone: Option<&'a str>,
    ) -> Topology<'a> {
        let (mut all_node_hints, mut for_node) = (true, false);
        let (mut all_zone_hints, mut for_zone) = (true, false);
        for hints in ready {
            let (nodes, zones) = hints.map_or((&[][..], &[][..]), |h| (&*h.nodes, &*h.zones));
            if nodes.is_empty() {
                all_node_hints = false;
            } else if nodes.iter().any(|n| **n == *node_name) {
                for_node = true;
            }
            if zones.is_empty() {
                all_zone_hints = false;
            } else if zone.is_some_and(|z| zones.iter().any(|h| **h == *z)) {
                for_zone = true;
            }
        }
        // No ready endpoint leaves every flag false: any endpoint.
        match zone {
            _ if all_node_hints && for_node => Topology::SameNode(node_name),
            Some(zone) if all_zone_hints && for_zone => Topology::SameZone(zone),
            _ => Topology::Any,
        }
    }

    /// Whether an endpoint with `hints` may take this node's traffic.
    fn admits(self, hints: Option<&EndpointHints>) -> bool {
        match self {
            Topology::Any => true,
            Topology::SameNode(node) => hints.is_some_and(|h| h.for_node(node)),
            Topology::SameZone(zone) => hints.is_some_and(|h| h.for_zone(zone)),
        }
    }
}

impl PortEndpoints {
    fn select(
        slices: &[&EndpointSliceInfo],
        port: &ServicePortInfo,
        family: AddressType,
        node_name: &str,
        zone: Option<&str>,
    ) -> PortEndpoints {
        // An endpoint listed by two slices (mid-update) counts once, with the
        // best conditions either gives it.
        let mut candidates: BTreeMap<RealServerKey, Candidate> = BTreeMap::new();
        for slice in slices.iter().filter(|s| s.address_type == family) {
            let Some(slice_port) = slice
                .ports
                .iter()
                .find(|p| p.name == port.name && p.protocol == port.protocol)
            else {
                continue;
            };
            for ep in &slice.endpoints {
                if !family.matches(ep.address) {
                    continue;
                }
                let key = RealServerKey {
                    addr: ep.address,
                    port: slice_port.port,
                };
                let c = candidates.entry(key).or_default();
                c.ready |= ep.ready;
                c.serving_terminating |= ep.serving && ep.terminating;
                c.local |= ep.node_name.as_deref() == Some(node_name);
                c.hints = c.hints.or(slice.hints_of(ep));
            }
        }
        // Hints narrow the ready endpoints of Cluster policy only; Local
        // policy and the serving-and-terminating fallback ignore them.
        let topology = Topology::from_hints(
            candidates.values().filter(|c| c.ready).map(|c| c.hints),
            node_name,
            zone,
        );
        // Ready endpoints, else serving-and-terminating ones, decided apart for
        // Cluster and Local (upstream's CategorizeEndpoints).
        let pick = |local_only: bool, topology: Topology<'_>| {
            let eligible = || {
                candidates
                    .iter()
                    .filter(move |(_, c)| !local_only || c.local)
            };
            let ready: Vec<RealServerKey> = eligible()
                .filter(|(_, c)| c.ready && topology.admits(c.hints))
                .map(|(k, _)| *k)
                .collect();
            if !ready.is_empty() {
                return ready;
            }
            eligible()
                .filter(|(_, c)| c.serving_terminating)
                .map(|(k, _)| *k)
                .collect()
        };
        PortEndpoints {
            cluster: pick(false, topology),
            local: pick(true, Topology::Any),
        }
    }

    fn for_policy(&self, local: bool) -> &[RealServerKey] {
        if local {
            &self.local
        } else {
            &self.cluster
        }
    }
}
