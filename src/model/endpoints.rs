//! The compact form of discovery/v1 EndpointSlices, and core/v1 Endpoints
//! mirrored into the same form.

use std::net::IpAddr;
use std::num::NonZeroU16;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints};

use super::error::{ModelError, ObjectKind, ObjectRef, Problem};
use super::field;
use crate::desired::{Protocol, ServiceName};
use crate::source::slice::{Address, EndpointSlice};

/// Label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Label with which an Endpoints object opts out of mirroring.
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";

/// `addressType` of a slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressType {
    Ipv4,
    Ipv6,
    /// Deprecated and ignored by proxies: such a slice keeps no endpoints.
    Fqdn,
}

impl AddressType {
    /// Whether `ip` belongs to this address type.
    pub fn matches(self, ip: IpAddr) -> bool {
        matches!(
            (self, ip),
            (AddressType::Ipv4, IpAddr::V4(_)) | (AddressType::Ipv6, IpAddr::V6(_))
        )
    }
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointInfo {
    /// The first of `addresses`: the API calls them fungible and upstream
    /// kube-proxy uses only the first.
    pub address: IpAddr,
    /// `conditions.ready`; absent means ready.
    pub ready: bool,
    /// `conditions.serving`; absent means the value of `ready`.
    pub serving: bool,
    /// `conditions.terminating`; absent means false.
    pub terminating: bool,
    pub node_name: Option<Arc<str>>,
    /// `hints`, when they name at least one zone or node: which of the
    /// slice's [`EndpointSliceInfo::hints`] (read with
    /// [`EndpointSliceInfo::hints_of`]). Two bytes, where a pointer per
    /// endpoint would take eight.
    pub hints: Option<HintsId>,
}

/// Which entry of its slice's [`EndpointSliceInfo::hints`] an endpoint has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HintsId(NonZeroU16);

impl HintsId {
    /// The id of entry `index`, if a slice can hold that many.
    fn new(index: usize) -> Option<HintsId> {
        u16::try_from(index + 1)
            .ok()
            .and_then(NonZeroU16::new)
            .map(HintsId)
    }

    /// The entry this id names.
    fn index(self) -> usize {
        usize::from(self.0.get()) - 1
    }
}

/// `hints` of one endpoint: where the EndpointSlice controller wants its
/// traffic to come from (topology-aware routing).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointHints {
    /// `hints.forZones[].name`, sorted and deduplicated; empty when absent.
    pub zones: Box<[Arc<str>]>,
    /// `hints.forNodes[].name`, sorted and deduplicated; empty when absent.
    pub nodes: Box<[Arc<str>]>,
}

impl EndpointHints {
    /// Whether this endpoint is hinted for the zone `zone`.
    pub fn for_zone(&self, zone: &str) -> bool {
        self.zones.iter().any(|z| &**z == zone)
    }

    /// Whether this endpoint is hinted for the node `node`.
    pub fn for_node(&self, node: &str) -> bool {
        self.nodes.iter().any(|n| &**n == node)
    }
}

/// One entry of a slice's `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointPortInfo {
    /// Matches the service port of the same name ("" when unnamed).
    pub name: Arc<str>,
    pub port: u16,
    pub protocol: Protocol,
}

/// An EndpointSlice as the proxy needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSliceInfo {
    /// From the `kubernetes.io/service-name` label, in the slice's namespace.
    pub service: ServiceName,
    /// The slice's own name (for mirrored Endpoints, a name derived from it).
    pub name: Arc<str>,
    pub address_type: AddressType,
    /// Sorted, so that a reordering by the API is not a change.
    pub endpoints: Vec<EndpointInfo>,
    pub ports: Vec<EndpointPortInfo>,
    /// The distinct `hints` of the endpoints, sorted: endpoints in one zone
    /// share one entry.
    pub hints: Box<[EndpointHints]>,
}

impl EndpointSliceInfo {
    /// The hints of `ep`, one of this slice's endpoints.
    pub fn hints_of(&self, ep: &EndpointInfo) -> Option<&EndpointHints> {
        ep.hints.and_then(|id| self.hints.get(id.index()))
    }

    /// Converts a slice. `Ok(None)` for a slice that belongs to no Service
    /// (no `kubernetes.io/service-name` label), which proxies ignore.
    pub fn from_slice(slice: &EndpointSlice) -> Result<Option<EndpointSliceInfo>, ModelError> {
        let mut obj = field::namespaced(ObjectKind::EndpointSlice, &slice.metadata)?;
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .filter(|s| !s.is_empty())
        else {
            return Ok(None);
        };
        obj.service = Some(service);
        let address_type = match slice.address_type.as_str() {
            "IPv4" => AddressType::Ipv4,
            "IPv6" => AddressType::Ipv6,
            "FQDN" => AddressType::Fqdn,
            other => {
                return Err(obj.error("addressType", Problem::Unsupported(other.to_owned())));
            }
        };
        let mut info = EndpointSliceInfo {
            service: ServiceName::new(obj.namespace.unwrap_or_default(), service),
            name: obj.name.into(),
            address_type,
            endpoints: Vec::new(),
            ports: Vec::new(),
            hints: Box::default(),
        };
        if address_type == AddressType::Fqdn {
            return Ok(Some(info));
        }

        info.ports
            .reserve_exact(slice.ports.as_ref().map_or(0, Vec::len));
        for (i, p) in slice.ports.iter().flatten().enumerate() {
            // A port without a number means "all ports"; proxies cannot use it.
            let Some(number) = p.port else { continue };
            info.ports.push(EndpointPortInfo {
                name: p.name.as_deref().unwrap_or_default().into(),
                port: field::port(&obj, || format!("ports[{i}].port"), number)?,
                protocol: field::protocol(
                    &obj,
                    || format!("ports[{i}].protocol"),
                    p.protocol.as_deref(),
                )?,
            });
        }

        info.endpoints.reserve_exact(slice.endpoints.len());
        // Endpoints of a slice share few hint sets and few names in them:
        // one allocation per distinct value.
        let mut names: Vec<Arc<str>> = Vec::new();
        let mut hint_sets: Vec<EndpointHints> = Vec::new();
        for (i, ep) in slice.endpoints.iter().enumerate() {
            let mut address = None;
            for (j, value) in ep.addresses.iter().enumerate() {
                let field = || format!("endpoints[{i}].addresses[{j}]");
                let ip = match value {
                    Address::Ip(ip) => *ip,
                    // Not an IP, so this fails, with the error every field gets.
                    Address::Other(text) => field::ip(&obj, field, text)?,
                };
                if !address_type.matches(ip) {
                    return Err(obj.error(field(), Problem::WrongFamily(value.to_string())));
                }
                address.get_or_insert(ip);
            }
            let Some(address) = address else {
                return Err(obj.error(format!("endpoints[{i}].addresses"), Problem::Missing));
            };
            let conditions = ep.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            info.endpoints.push(EndpointInfo {
                address,
                ready,
                serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
                terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                // One allocation per endpoint from the decoder; the model
                // then shares one per node across all slices.
                node_name: ep.node_name.clone(),
                hints: match ep.hints.as_ref() {
                    Some(h) => shared_hints(&mut hint_sets, &mut names, h).ok_or_else(|| {
                        obj.error(
                            format!("endpoints[{i}].hints"),
                            Problem::OutOfRange(i64::from(u16::MAX)),
                        )
                    })?,
                    None => None,
                },
            });
        }
        info.hints = sorted_hints(hint_sets, &mut info.endpoints);
        info.endpoints.sort_unstable();
        Ok(Some(info))
    }

    /// Mirrors a core/v1 Endpoints object as the EndpointSlice mirroring
    /// controller does: one slice per subset and address family, `addresses`
    /// ready and `notReadyAddresses` not ready, ports by name.
    ///
    /// An Endpoints labelled `endpointslice.kubernetes.io/skip-mirror: "true"`
    /// mirrors to nothing. Whether the Service has a selector (then nothing is
    /// mirrored either) is decided by the model, which knows the Service.
    pub fn mirror_endpoints(endpoints: &Endpoints) -> Result<Vec<EndpointSliceInfo>, ModelError> {
        let obj = field::namespaced(ObjectKind::Endpoints, &endpoints.metadata)?;
        let skip = endpoints
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SKIP_MIRROR_LABEL))
            .is_some_and(|v| v == "true");
        if skip {
            return Ok(Vec::new());
        }
        let service = ServiceName::new(obj.namespace.unwrap_or_default(), obj.name);
        let mut slices = Vec::new();
        for (s, subset) in endpoints.subsets.iter().flatten().enumerate() {
            let mut ports = Vec::new();
            for (i, p) in subset.ports.iter().flatten().enumerate() {
                ports.push(EndpointPortInfo {
                    name: p.name.as_deref().unwrap_or_default().into(),
                    port: field::port(&obj, || format!("subsets[{s}].ports[{i}].port"), p.port)?,
                    protocol: field::protocol(
                        &obj,
                        || format!("subsets[{s}].ports[{i}].protocol"),
                        p.protocol.as_deref(),
                    )?,
                });
            }
            let mut v4 = Vec::new();
            let mut v6 = Vec::new();
            let groups = [
                ("addresses", subset.addresses.as_deref(), true),
                (
                    "notReadyAddresses",
                    subset.not_ready_addresses.as_deref(),
                    false,
                ),
            ];
            for (list, addresses, ready) in groups {
                for (i, address) in addresses.unwrap_or_default().iter().enumerate() {
                    let ep = mirror_address(
                        &obj,
                        || format!("subsets[{s}].{list}[{i}].ip"),
                        address,
                        ready,
                    )?;
                    match ep.address {
                        IpAddr::V4(_) => v4.push(ep),
                        IpAddr::V6(_) => v6.push(ep),
                    }
                }
            }
            for (address_type, mut endpoints) in [(AddressType::Ipv4, v4), (AddressType::Ipv6, v6)]
            {
                if endpoints.is_empty() {
                    continue;
                }
                endpoints.sort_unstable();
                let family = if address_type == AddressType::Ipv4 {
                    "ipv4"
                } else {
                    "ipv6"
                };
                slices.push(EndpointSliceInfo {
                    service: service.clone(),
                    name: format!("{}-mirror-{s}-{family}", obj.name).into(),
                    address_type,
                    endpoints,
                    ports: ports.clone(),
                    // core/v1 Endpoints carry no hints.
                    hints: Box::default(),
                });
            }
        }
        Ok(slices)
    }
}

/// `name` as an Arc already in `names`, or a new one added there.
fn shared_name(names: &mut Vec<Arc<str>>, name: &str) -> Arc<str> {
    if let Some(existing) = names.iter().find(|n| &***n == name) {
        return existing.clone();
    }
    let new: Arc<str> = name.into();
    names.push(new.clone());
    new
}

/// The id of `hints` in `sets`, added there if new: `Ok(None)` when they
/// name no zone and no node (upstream treats that as no hint), `None` when
/// `sets` is full. Zone and node names are shared through `names`.
fn shared_hints(
    sets: &mut Vec<EndpointHints>,
    names: &mut Vec<Arc<str>>,
    hints: &k8s_openapi::api::discovery::v1::EndpointHints,
) -> Option<Option<HintsId>> {
    let mut collect = |list: &mut dyn Iterator<Item = &str>| -> Box<[Arc<str>]> {
        let mut out: Vec<Arc<str>> = list.map(|n| shared_name(names, n)).collect();
        out.sort_unstable();
        out.dedup();
        out.into_boxed_slice()
    };
    let zones = collect(&mut hints.for_zones.iter().flatten().map(|z| z.name.as_str()));
    let nodes = collect(&mut hints.for_nodes.iter().flatten().map(|n| n.name.as_str()));
    if zones.is_empty() && nodes.is_empty() {
        return Some(None);
    }
    let wanted = EndpointHints { zones, nodes };
    let index = match sets.iter().position(|h| *h == wanted) {
        Some(index) => index,
        None => {
            sets.push(wanted);
            sets.len() - 1
        }
    };
    HintsId::new(index).map(Some)
}

/// `sets` sorted, with the ids of `endpoints` renumbered to match, so that
/// the API's order of endpoints is no change.
fn sorted_hints(sets: Vec<EndpointHints>, endpoints: &mut [EndpointInfo]) -> Box<[EndpointHints]> {
    let mut order: Vec<usize> = (0..sets.len()).collect();
    order.sort_unstable_by(|a, b| sets[*a].cmp(&sets[*b]));
    // `renumbered[old]` is the new id of entry `old`.
    let mut renumbered = vec![None; sets.len()];
    for (new, old) in order.iter().enumerate() {
        renumbered[*old] = HintsId::new(new);
    }
    for ep in endpoints.iter_mut() {
        ep.hints = ep
            .hints
            .and_then(|id| renumbered.get(id.index()).copied().flatten());
    }
    let mut sets: Vec<Option<EndpointHints>> = sets.into_iter().map(Some).collect();
    order.iter().filter_map(|old| sets[*old].take()).collect()
}

fn mirror_address(
    obj: &ObjectRef<'_>,
    field: impl FnOnce() -> String,
    address: &EndpointAddress,
    ready: bool,
) -> Result<EndpointInfo, ModelError> {
    Ok(EndpointInfo {
        address: field::ip(obj, field, &address.ip)?,
        // The mirroring controller sets only `ready`; serving follows it.
        ready,
        serving: ready,
        terminating: false,
        node_name: address.node_name.as_deref().map(Arc::from),
        // core/v1 Endpoints carry no hints.
        hints: None,
    })
}
