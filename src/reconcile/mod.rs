//! Reconciliation: the desired state of every service, diffed against a
//! mirror of the kernel state the proxy owns, applied as the difference.
//!
//! [`Reconciler::set_service`] records what one service wants and marks it
//! dirty; [`Reconciler::sync_dirty`] diffs only dirty services against the
//! mirror (no kernel reads), and [`Reconciler::full_sync`] re-reads the kernel
//! to adopt what the proxy owns and repair drift: every virtual server, and
//! real servers in a rolling window (see [`Reconciler::set_verify_rounds`]).
//! Every sync sends its IPVS operations in [`IpvsKernel::apply`] batches of
//! at most about [`APPLY_CHUNK`] (one batch unless it has more than
//! [`FIRST_CHUNK`]), with kube-ipvs0 addresses added alongside them and
//! removed after them.

use std::collections::hash_map::Entry;
use std::fmt;
use std::net::IpAddr;
use std::pin::pin;
use std::time::Instant;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use futures::future;

use crate::desired::{
    ClaimRank, DesiredVirtualServer, FlowFilter, NftChange, NftElement, NftRuleset, Op, Protocol,
    ServiceDesired, ServiceName, VirtualServerKey,
};
use crate::kernel::{
    AddressKernel, ConntrackKernel, IpvsKernel, KernelError, ListedVirtualServer, NftKernel,
    TrafficCounters,
};

mod backoff;
mod claims;
mod diff;
mod mirror;
mod nft;
mod ownership;
#[cfg(test)]
mod packet_tests;
#[cfg(test)]
mod tests;

pub use nft::{batches_before, pod_cidr_elements, NftBatch, SPLIT_ABOVE as NFT_SPLIT_ABOVE};
pub use ownership::Ownership;

pub(crate) use backoff::Backoff;
use claims::{Claimed, Claims, Orphans, Released};
use mirror::Mirror;
use nft::NftState;

/// How many IPVS operations a sync hands to [`IpvsKernel::apply`] at a
/// time (a virtual server's own operations are never split): the window of
/// requests netlink-ipvs keeps in flight. A cold sync at 10,000 services
/// has over 100,000 operations; in chunks, its operations, their answers
/// and their serialized messages stay a few hundred KiB.
pub const APPLY_CHUNK: usize = 4096;

/// The operations of a sync's first chunk: the chunks after it double up
/// to [`APPLY_CHUNK`] (see `Reconciler::apply_diff`).
pub const FIRST_CHUNK: usize = 256;

/// For every chunk of IPVS operations a sync sends while a [`Feed`] has
/// services left, the feed hands over services worth at least this many
/// times its operations, so that each sync of a streamed cold sync is at
/// least twice the one before; then more, for as long as the kernel is
/// still taking the chunk.
pub const FEED_PER_OP: usize = 2;

/// Services whose desired state is still to be handed to the reconciler,
/// handed over by a sync while the kernel takes its writes: a cold sync
/// translates the services after its first few while the kernel creates
/// the virtual servers of those before them (see
/// `proxy::Kernel::sync_feeding`). Only safe while the kernel holds
/// nothing the services not yet handed over could want: otherwise the
/// sync would delete it.
pub trait Feed {
    /// Hands services over to `reconciler` ([`Reconciler::set_service`]),
    /// in order, until they are worth `ops` IPVS operations (a virtual
    /// server and each of its real servers one each) or none are left;
    /// `usize::MAX` hands over every one left.
    fn feed(&mut self, reconciler: &mut Reconciler, ops: usize);

    /// How many services are left to hand over.
    fn remaining(&self) -> usize;

    /// A little of the work that may wait until the kernel is busy (freeing
    /// the lists' API objects: see [`crate::model::Spent`]), done while a
    /// chunk of IPVS writes is in the kernel and no service is left to hand
    /// over. Returns whether any is left.
    fn spare(&mut self) -> bool {
        false
    }
}

/// The feed of a sync with nothing more to hand over.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFeed;

impl Feed for NoFeed {
    fn feed(&mut self, _: &mut Reconciler, _: usize) {}

    fn remaining(&self) -> usize {
        0
    }
}

/// The IPVS operations one service's desired state is worth: one per
/// virtual server and one per real server, as a cold sync creates them.
pub fn operations_worth(desired: &ServiceDesired) -> usize {
    let servers = desired.virtual_servers.iter();
    servers.map(|dvs| 1 + dvs.real_servers.len()).sum()
}

/// One chunk of a sync's IPVS operations: those of `keys[start..end]`.
#[derive(Debug)]
struct Chunk {
    start: usize,
    end: usize,
    ops: Vec<Op>,
    /// The service answerable for each op.
    answerable: Vec<Option<ServiceName>>,
}

/// Where the reconciler reads the time, for retry backoff.
pub type Clock = Box<dyn Fn() -> Instant + Send + Sync>;

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Kernel writes sent: IPVS operations, address additions and removals,
    /// nftables set elements added or deleted, and conntrack flows deleted.
    pub writes: usize,
    /// nftables set elements added or deleted (counted in `writes` too).
    pub nft_elements: usize,
    /// nftables transactions sent: at most one per sync, unless it adds more
    /// than [`NFT_SPLIT_ABOVE`] elements (see [`Reconciler::nft_batches`]).
    pub nft_batches: usize,
    /// Conntrack flows deleted (counted in `writes` too).
    pub conntrack_deleted: usize,
    /// Writes that failed. "Already exists" on an add and "not found" on a
    /// delete are successes.
    pub failed: usize,
    /// Services whose desired state this sync diffed.
    pub services_synced: usize,
    /// Every failure, naming its service, operation or address.
    pub errors: Vec<SyncError>,
    /// A full sync's reading of the kernel's traffic counters: each owned
    /// virtual server's, as the services listing (or the dump at start)
    /// found them; `None` when this sync listed nothing (an incremental
    /// one, or a full one whose read failed). Handed on, not kept: see
    /// [`Reconciler::traffic`].
    pub traffic: Option<Vec<(VirtualServerKey, TrafficCounters)>>,
}

impl SyncReport {
    /// Whether everything this sync attempted succeeded.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    /// Adds what another part of the same sync did.
    pub fn absorb(&mut self, other: SyncReport) {
        self.writes += other.writes;
        self.failed += other.failed;
        self.nft_elements += other.nft_elements;
        self.nft_batches += other.nft_batches;
        self.conntrack_deleted += other.conntrack_deleted;
        self.services_synced = self.services_synced.max(other.services_synced);
        self.errors.extend(other.errors);
        match (&mut self.traffic, other.traffic) {
            (Some(read), Some(more)) => read.extend(more),
            (traffic @ None, more) => *traffic = more,
            (Some(_), None) => {}
        }
    }
}

/// A change in who holds a virtual server that two services want.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimNotice {
    /// `service` wants `key`, but `owner` outranks it and holds it.
    Lost {
        service: ServiceName,
        key: VirtualServerKey,
        owner: ServiceName,
    },
    /// `service` now holds `key`, which `from`, ranked above it, let go.
    HandedOver {
        service: ServiceName,
        key: VirtualServerKey,
        from: ServiceName,
    },
}

impl ClaimNotice {
    /// The Service the notice is for.
    pub fn service(&self) -> &ServiceName {
        match self {
            ClaimNotice::Lost { service, .. } | ClaimNotice::HandedOver { service, .. } => service,
        }
    }
}

/// A kernel read that a full sync or cleanup needs before it can act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelRead {
    /// The IPVS table dump.
    IpvsDump,
    /// kube-ipvs0 and the VIPs bound, as addresses on it or as local routes.
    Link,
    /// The proxy's nftables table and its sets.
    Nftables,
}

/// Adding or removing an address on kube-ipvs0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressAction {
    Add,
    Remove,
}

impl SyncError {
    /// The kernel error behind this failure.
    pub fn kernel_error(&self) -> &KernelError {
        match self {
            SyncError::Read { error, .. }
            | SyncError::Operation { error, .. }
            | SyncError::Address { error, .. }
            | SyncError::Nftables { error, .. }
            | SyncError::Conntrack { error, .. } => error,
        }
    }
}

/// One failure during a sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncError {
    /// Reading the kernel failed, so the sync wrote nothing.
    Read {
        what: KernelRead,
        error: KernelError,
    },
    /// An IPVS operation failed. `service` is the service it was for; `None`
    /// for an owned virtual server that no service wants.
    Operation {
        service: Option<ServiceName>,
        op: Op,
        error: KernelError,
    },
    /// Adding or removing an address on kube-ipvs0 failed.
    Address {
        addr: IpAddr,
        action: AddressAction,
        error: KernelError,
    },
    /// The nftables transaction of this sync failed as a whole.
    Nftables { changes: usize, error: KernelError },
    /// Deleting the conntrack flows of removed endpoints failed.
    Conntrack { flows: usize, error: KernelError },
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncError::Read {
                what: KernelRead::IpvsDump,
                error,
            } => write!(f, "dumping the IPVS table: {error}"),
            SyncError::Read {
                what: KernelRead::Link,
                error,
            } => write!(f, "reading kube-ipvs0 and the VIPs bound: {error}"),
            SyncError::Read {
                what: KernelRead::Nftables,
                error,
            } => write!(f, "reading the proxy's nftables table: {error}"),
            SyncError::Nftables { changes, error } => {
                write!(
                    f,
                    "nftables transaction of {changes} set element changes: {error}"
                )
            }
            SyncError::Conntrack { flows, error } => {
                write!(
                    f,
                    "deleting the conntrack flows of {flows} removed endpoints: {error}"
                )
            }
            SyncError::Operation {
                service: Some(service),
                op,
                error,
            } => write!(f, "service {service}: {}: {error}", OpDescription(op)),
            SyncError::Operation {
                service: None,
                op,
                error,
            } => write!(f, "stale (no service): {}: {error}", OpDescription(op)),
            SyncError::Address {
                addr,
                action: AddressAction::Add,
                error,
            } => write!(f, "adding address {addr} to kube-ipvs0: {error}"),
            SyncError::Address {
                addr,
                action: AddressAction::Remove,
                error,
            } => write!(f, "removing address {addr} from kube-ipvs0: {error}"),
        }
    }
}

impl std::error::Error for SyncError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SyncError::Read { error, .. }
            | SyncError::Operation { error, .. }
            | SyncError::Address { error, .. }
            | SyncError::Nftables { error, .. }
            | SyncError::Conntrack { error, .. } => Some(error),
        }
    }
}

/// An [`Op`] in words, for logs and errors:
/// `add real server 10.244.1.5:8080 weight 1 to TCP/10.96.0.10:80`.
#[derive(Debug)]
pub struct OpDescription<'a>(pub &'a Op);

impl fmt::Display for OpDescription<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = |f: &mut fmt::Formatter<'_>, vs: &crate::desired::VirtualServer| {
            write!(f, "{} (scheduler {}", vs.key, vs.scheduler)?;
            if let Some(timeout) = vs.persistence {
                write!(f, ", persistent {timeout}s")?;
            }
            f.write_str(")")
        };
        match self.0 {
            Op::AddVirtualServer(vs) => {
                f.write_str("add virtual server ")?;
                settings(f, vs)
            }
            Op::UpdateVirtualServer(vs) => {
                f.write_str("update virtual server ")?;
                settings(f, vs)
            }
            Op::DeleteVirtualServer(key) => write!(f, "delete virtual server {key}"),
            Op::AddRealServer(key, rs) => {
                write!(
                    f,
                    "add real server {} weight {} to {key}",
                    rs.key, rs.weight
                )
            }
            Op::UpdateRealServer(key, rs) => {
                write!(
                    f,
                    "set weight {} of real server {} on {key}",
                    rs.weight, rs.key
                )
            }
            Op::DeleteRealServer(key, rs) => write!(f, "delete real server {rs} from {key}"),
        }
    }
}

/// One service's desired state, indexed. The reconciler holds one per
/// service for as long as the service lives, so the indexes are sorted
/// boxed slices, a fraction of the size of maps for a service's few keys.
#[derive(Debug)]
struct ServiceEntry {
    desired: ServiceDesired,
    /// Virtual server keys, sorted, each with its index in
    /// `desired.virtual_servers`. Excluded keys are left out; of duplicates
    /// the first wins.
    virtual_servers: Box<[(VirtualServerKey, usize)]>,
    /// `desired.bind_addrs`, sorted, without duplicates and excluded addresses.
    bind_addrs: Box<[IpAddr]>,
    /// Whether any virtual server is on a NodePort, so that node address
    /// changes (which change what the proxy may own) revisit it.
    uses_node_ports: bool,
}

impl ServiceEntry {
    fn new(name: &ServiceName, mut desired: ServiceDesired, ownership: &Ownership) -> Self {
        shrink_desired(&mut desired);
        let mut virtual_servers = Vec::with_capacity(desired.virtual_servers.len());
        for (index, dvs) in desired.virtual_servers.iter().enumerate() {
            let key = dvs.server.key;
            if ownership.is_excluded(key.addr) {
                tracing::warn!(service = %name, virtual_server = %key,
                    "virtual server inside --ipvs-exclude-cidrs; not programming it");
                continue;
            }
            virtual_servers.push((key, index));
        }
        // A stable sort keeps the first of duplicates first, as the diff
        // does for real servers.
        virtual_servers.sort_by_key(|(key, _)| *key);
        virtual_servers.dedup_by(|(later, _), (first, _)| {
            let duplicate = later == first;
            if duplicate {
                tracing::warn!(service = %name, virtual_server = %later,
                    "virtual server listed twice; using the first");
            }
            duplicate
        });
        let uses_node_ports = virtual_servers
            .iter()
            .any(|(key, _)| ownership.is_node_port(key.port));
        let mut bind_addrs = Vec::with_capacity(desired.bind_addrs.len());
        for &addr in &desired.bind_addrs {
            if ownership.is_excluded(addr) {
                tracing::warn!(service = %name, address = %addr,
                    "address inside --ipvs-exclude-cidrs; not binding it on kube-ipvs0");
            } else {
                bind_addrs.push(addr);
            }
        }
        bind_addrs.sort_unstable();
        bind_addrs.dedup();
        ServiceEntry {
            desired,
            virtual_servers: virtual_servers.into_boxed_slice(),
            bind_addrs: bind_addrs.into_boxed_slice(),
            uses_node_ports,
        }
    }

    /// The virtual server keys this service wants, in key order.
    fn keys(&self) -> impl Iterator<Item = &VirtualServerKey> {
        self.virtual_servers.iter().map(|(key, _)| key)
    }

    fn get(&self, key: &VirtualServerKey) -> Option<&DesiredVirtualServer> {
        let position = self
            .virtual_servers
            .binary_search_by_key(key, |(key, _)| *key)
            .ok()?;
        self.desired
            .virtual_servers
            .get(self.virtual_servers[position].1)
    }
}

/// Drops the spare capacity of what translate built: the reconciler keeps
/// every service's desired state.
fn shrink_desired(desired: &mut ServiceDesired) {
    desired.virtual_servers.shrink_to_fit();
    for dvs in &mut desired.virtual_servers {
        dvs.real_servers.shrink_to_fit();
    }
    desired.bind_addrs.shrink_to_fit();
    desired.served_node_addrs.shrink_to_fit();
    desired.nft_elements.shrink_to_fit();
}

/// Whether the sorted `items` hold `item`.
fn holds<T: Ord>(items: &[T], item: &T) -> bool {
    items.binary_search(item).is_ok()
}

/// What one sync looks at.
#[derive(Debug, Default)]
struct Work {
    /// Virtual server keys with the service answerable for them; a key may
    /// come twice (see [`Reconciler::run`]). A list, not a map: the keys
    /// are sorted before the diff anyway, and a map only added a hash of
    /// every key of a cold sync before its first write.
    keys: Vec<(VirtualServerKey, Option<ServiceName>)>,
    /// Every service the reconciler holds is synced (a full sync), besides
    /// those in `services`.
    all_services: bool,
    /// The services synced by name: the dirty and due ones of an
    /// incremental sync; on a full sync, only the failed and orphaned ones,
    /// which the reconciler may no longer hold.
    services: HashSet<ServiceName>,
    addresses: HashSet<IpAddr>,
}

impl Work {
    /// The services synced: `services`, and with `all_services` every one
    /// `held` has.
    fn services_synced(&self, held: &HashMap<ServiceName, Box<ServiceEntry>>) -> usize {
        if self.all_services {
            let others = self.services.iter().filter(|n| !held.contains_key(*n));
            held.len() + others.count()
        } else {
            self.services.len()
        }
    }

    /// Whether the sync covered `name`.
    fn covers(&self, name: &ServiceName) -> bool {
        self.all_services || self.services.contains(name)
    }
}

/// The desired state of every service, the mirror of what the proxy owns in
/// the kernel, and the bookkeeping between them (see the module docs).
pub struct Reconciler {
    ownership: Ownership,
    clock: Clock,
    /// Boxed: a map keeps a third of its slots empty, and an empty slot of
    /// a [`ServiceEntry`]'s size would cost more than the box.
    services: HashMap<ServiceName, Box<ServiceEntry>>,
    /// Who owns each desired key; conflicts resolve by [`ClaimRank`].
    claims: Claims,
    /// Keys no service claims any more that may still be in the kernel.
    orphans: Orphans,
    /// Address → how many services bind it on kube-ipvs0.
    wanted_addrs: HashMap<IpAddr, usize>,
    /// Node address → how many services serve an ExternalIP or LoadBalancer
    /// IP on it: virtual servers there are the proxy's.
    served_node_addrs: HashMap<IpAddr, usize>,
    /// The packet path's set elements.
    nft: NftState,
    nft_failed: Option<Backoff>,
    /// Flows of UDP and SCTP real servers deleted since the last cleanup.
    stale_flows: Vec<FlowFilter>,
    node_addrs: HashSet<IpAddr>,
    node_port_services: HashSet<ServiceName>,
    mirror: Mirror,
    /// Whether a full sync has filled the mirror; until then there is
    /// nothing to diff against.
    adopted: bool,
    /// Consecutive failed reads of the kernel (kube-ipvs0's addresses or the
    /// IPVS dump) and when to read again; None after a good read.
    read_failed: Option<Backoff>,
    /// Every owned virtual server's real servers are read at least once
    /// every this many full syncs (see [`Reconciler::set_verify_rounds`]).
    verify_rounds: u64,
    dirty: HashSet<ServiceName>,
    failed: HashMap<ServiceName, Backoff>,
    dirty_addrs: HashSet<IpAddr>,
    failed_addrs: HashMap<IpAddr, Backoff>,
}

impl fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconciler")
            .field("ownership", &self.ownership)
            .field("services", &self.services.len())
            .field("mirrored_virtual_servers", &self.mirror.keys().count())
            .field("adopted", &self.adopted)
            .field("dirty", &self.dirty.len())
            .field("failed", &self.failed.len())
            .finish_non_exhaustive()
    }
}

impl Reconciler {
    /// A reconciler with no desired state and an empty mirror, on the system clock.
    pub fn new(ownership: Ownership) -> Self {
        Self::with_clock(ownership, Box::new(Instant::now))
    }

    /// As [`Reconciler::new`], reading the time from `clock` (tests drive
    /// retry backoff with a manual clock).
    pub fn with_clock(ownership: Ownership, clock: Clock) -> Self {
        Reconciler {
            ownership,
            clock,
            services: HashMap::new(),
            claims: Claims::default(),
            orphans: Orphans::default(),
            wanted_addrs: HashMap::new(),
            served_node_addrs: HashMap::new(),
            nft: NftState::default(),
            nft_failed: None,
            stale_flows: Vec::new(),
            node_addrs: HashSet::new(),
            node_port_services: HashSet::new(),
            mirror: Mirror::default(),
            adopted: false,
            read_failed: None,
            verify_rounds: 1,
            dirty: HashSet::new(),
            failed: HashMap::new(),
            dirty_addrs: HashSet::new(),
            failed_addrs: HashMap::new(),
        }
    }

    /// Records what one service wants now (`None`: the service is gone) and
    /// marks it dirty, unless nothing changed. O(size of that service).
    /// Returns the changes in who holds a virtual server that two services
    /// want (see [`ClaimRank`]).
    pub fn set_service(
        &mut self,
        name: ServiceName,
        desired: Option<ServiceDesired>,
    ) -> Vec<ClaimNotice> {
        // A change tracker's first duty: drop no-op updates.
        if let (Some(entry), Some(new)) = (self.services.get(&name), &desired) {
            if entry.desired == *new {
                return Vec::new();
            }
        }
        let old = self.services.remove(&name);
        let new = desired.map(|d| ServiceEntry::new(&name, d, &self.ownership));
        let no_keys = Box::default();
        let no_addrs = Box::default();
        let (old_keys, old_addrs) = old.as_ref().map_or((&no_keys, &no_addrs), |e| {
            (&e.virtual_servers, &e.bind_addrs)
        });
        let (new_keys, new_addrs) = new.as_ref().map_or((&no_keys, &no_addrs), |e| {
            (&e.virtual_servers, &e.bind_addrs)
        });
        let wants = |keys: &[(VirtualServerKey, usize)], key: &VirtualServerKey| {
            keys.binary_search_by_key(key, |(key, _)| *key).is_ok()
        };

        let mut notices = Vec::new();
        let released = old_keys.iter().map(|(key, _)| key);
        for key in released.filter(|k| !wants(new_keys, k)) {
            match self.claims.release(key, &name) {
                Released::NotOwner => {}
                Released::HandedOver(next) => {
                    tracing::info!(virtual_server = %key, from = %name, to = %next,
                        "virtual server passes to the next service claiming it");
                    self.dirty.insert(next.clone());
                    notices.push(ClaimNotice::HandedOver {
                        service: next.clone(),
                        key: *key,
                        from: name.clone(),
                    });
                }
                Released::Unclaimed => self.orphans.insert(*key, &name),
            }
        }
        // A recreated service (a new creation time) claims its keys again.
        let old_created = old.as_ref().map(|e| e.desired.created);
        let new_created = new.as_ref().map(|e| e.desired.created);
        let reranked = old_created.is_some() && old_created != new_created;
        let claimed = new_keys
            .iter()
            .map(|(key, _)| key)
            .filter(|k| reranked || !wants(old_keys, k));
        let rank = ClaimRank::new(&name, new_created.flatten());
        for key in claimed {
            match self.claims.claim(*key, rank.clone()) {
                Claimed::Owner => self.orphans.remove(key),
                Claimed::TookOver(previous) => {
                    tracing::warn!(virtual_server = %key, owner = %name, previous = %previous,
                        "two services claim one virtual server; it passes to the older");
                    notices.push(ClaimNotice::Lost {
                        service: previous.clone(),
                        key: *key,
                        owner: name.clone(),
                    });
                }
                Claimed::Conflict(owner) => {
                    tracing::warn!(virtual_server = %key, owner = %owner, service = %name,
                        "two services claim one virtual server; the older keeps it");
                    notices.push(ClaimNotice::Lost {
                        service: name.clone(),
                        key: *key,
                        owner: owner.clone(),
                    });
                }
                Claimed::Yielded(owner) => {
                    tracing::warn!(virtual_server = %key, owner = %owner, service = %name,
                        "a recreated service yields a virtual server to an older one");
                    self.dirty.insert(owner.clone());
                    notices.push(ClaimNotice::Lost {
                        service: name.clone(),
                        key: *key,
                        owner: owner.clone(),
                    });
                }
            }
        }
        for addr in old_addrs.iter().filter(|a| !holds(new_addrs, a)) {
            if let Some(count) = self.wanted_addrs.get_mut(addr) {
                *count -= 1;
                if *count == 0 {
                    self.wanted_addrs.remove(addr);
                    self.dirty_addrs.insert(*addr);
                }
            }
        }
        for addr in new_addrs.iter().filter(|a| !holds(old_addrs, a)) {
            let count = self.wanted_addrs.entry(*addr).or_default();
            *count += 1;
            if *count == 1 {
                self.dirty_addrs.insert(*addr);
            }
        }
        let (old_elements, old_served) = old.as_ref().map_or((&[][..], &[][..]), |e| {
            (
                &e.desired.nft_elements[..],
                &e.desired.served_node_addrs[..],
            )
        });
        let (new_elements, new_served) = new.as_ref().map_or((&[][..], &[][..]), |e| {
            (
                &e.desired.nft_elements[..],
                &e.desired.served_node_addrs[..],
            )
        });
        self.nft.replace(old_elements, new_elements);
        for addr in old_served {
            if let Entry::Occupied(mut count) = self.served_node_addrs.entry(*addr) {
                *count.get_mut() -= 1;
                if *count.get() == 0 {
                    count.remove();
                }
            }
        }
        for addr in new_served {
            *self.served_node_addrs.entry(*addr).or_default() += 1;
        }

        match new {
            Some(entry) => {
                if entry.uses_node_ports {
                    self.node_port_services.insert(name.clone());
                } else {
                    self.node_port_services.remove(&name);
                }
                self.services.insert(name.clone(), Box::new(entry));
            }
            None => {
                self.node_port_services.remove(&name);
            }
        }
        self.dirty.insert(name);
        notices
    }

    /// Records the node's addresses. Virtual servers on them with a NodePort
    /// are the proxy's, so a change marks NodePort services dirty.
    pub fn set_node_addresses(&mut self, addrs: Vec<IpAddr>) {
        let addrs: HashSet<IpAddr> = addrs.into_iter().collect();
        if addrs != self.node_addrs {
            self.node_addrs = addrs;
            self.dirty.extend(self.node_port_services.iter().cloned());
        }
    }

    /// Records the CIDRs of this cluster's (or node's) pods, for
    /// `--detect-local-mode` ClusterCIDR and NodeCIDR.
    pub fn set_local_pod_cidrs(&mut self, cidrs: &[ipnet::IpNet]) {
        self.nft.set_node_elements(nft::pod_cidr_elements(cidrs));
    }

    /// Spreads the reading of real servers over `rounds` full syncs
    /// (`--ipvs-verify-period` over `--ipvs-sync-period`); 1, the default,
    /// reads every virtual server's real servers at every full sync.
    ///
    /// The kernel lists virtual servers in one request but real servers in
    /// one request per virtual server, so at 10,000 services reading them
    /// all was nearly the whole cost of an idle full sync. With `rounds`
    /// above 1, a full sync after the first still lists every virtual
    /// server (repairing deleted or changed ones and refreshing the traffic
    /// counters) and kube-ipvs0's addresses, and reads the nftables sets
    /// unless nothing was committed since it last read them fewer than
    /// `rounds` full syncs ago (see [`Reconciler::sync_nft`]), but reads
    /// real servers only for:
    /// - a rolling window of about 1/`rounds` of the owned virtual servers,
    ///   the longest unread first, so that each is read at least once every
    ///   `rounds` full syncs: real-server drift is repaired within that;
    /// - those with a real server at weight 0, whose connection counts
    ///   decide when it is deleted;
    /// - those the listing shows new or changed, and those the mirror marks
    ///   suspect (a write refused, or answered "exists" or "not found"),
    ///   including every virtual server of a failed service.
    ///
    /// The first full sync, and the one after [`Reconciler::require_full_sync`],
    /// read everything.
    pub fn set_verify_rounds(&mut self, rounds: u64) {
        self.verify_rounds = rounds.max(1);
    }

    /// Forgets that the mirror matches the kernel: the next sync, whether
    /// full or incremental, reads the kernel first. For when replies were
    /// lost with a failed socket and what was applied is unknown.
    pub fn require_full_sync(&mut self) {
        self.adopted = false;
    }

    /// Whether [`Reconciler::sync_dirty`] has work now: dirty services,
    /// addresses or set elements, or a retry that is due.
    pub fn has_dirty(&self) -> bool {
        if let Some(read) = &self.read_failed {
            if read.is_due((self.clock)()) {
                return true;
            }
            if !self.adopted {
                // Nothing can be synced before the kernel is read: dirty
                // work waits for the read's backoff, not the min period.
                return false;
            }
        }
        !self.dirty.is_empty()
            || !self.dirty_addrs.is_empty()
            || self.nft.has_dirty()
            || self.next_retry().is_some_and(|at| at <= (self.clock)())
    }

    /// When the next retry of a failed service, address or nftables
    /// transaction is due, if any.
    pub fn next_retry(&self) -> Option<Instant> {
        let services = self.failed.values().map(|b| b.retry_at);
        let addrs = self.failed_addrs.values().map(|b| b.retry_at);
        let nft = self.nft_failed.iter().map(|b| b.retry_at);
        let read = self.read_failed.iter().map(|b| b.retry_at);
        services.chain(addrs).chain(nft).chain(read).min()
    }

    /// Brings the proxy's nftables sets to what is desired, in at most one
    /// transaction. `full` (and the first sync, and the one after a failed
    /// transaction) first makes sure the table's rules are `ruleset`'s and
    /// reads the sets, repairing drift; otherwise only the elements that
    /// changed since the last sync are sent, without reading the kernel.
    /// A full sync reads the kernel's nf_tables generation first, and takes
    /// the mirror as it is when nothing but the proxy's own transactions
    /// was committed since the sets were last read, unless that read is
    /// [`Reconciler::set_verify_rounds`] full syncs old.
    pub async fn sync_nft<N: NftKernel>(
        &mut self,
        nft: &mut N,
        ruleset: &NftRuleset,
        full: bool,
        report: &mut SyncReport,
    ) {
        let changes = self.nft_changes(nft, ruleset, full, report).await;
        if !changes.is_empty() {
            let result = nft.apply(&changes).await;
            self.nft_applied(&changes, result, report);
        }
    }

    /// The first half of [`Reconciler::sync_nft`]: makes sure of the table
    /// and reads it when the sync needs that, and returns the changes to
    /// send (none: nothing to send, or not due yet): in one transaction, or
    /// in the few of [`Reconciler::nft_batches`]. Each transaction's answer
    /// goes to [`Reconciler::nft_applied`]; nothing else may touch the
    /// nftables state in between, apart from IPVS syncs.
    pub async fn nft_changes<N: NftKernel>(
        &mut self,
        nft: &mut N,
        ruleset: &NftRuleset,
        full: bool,
        report: &mut SyncReport,
    ) -> Vec<NftChange> {
        let now = (self.clock)();
        if !full && self.nft.adopted && !self.nft.has_dirty() {
            return Vec::new();
        }
        if !full && self.nft_failed.is_some_and(|b| !b.is_due(now)) {
            return Vec::new();
        }
        let mut all = full || !self.nft.adopted;
        if all {
            let generation = nft.generation().await;
            if full
                && self
                    .nft
                    .unchanged_since_read(generation, ruleset, self.verify_rounds)
            {
                // Nothing was committed in this namespace but the proxy's
                // own transactions: the mirror is exact, and the sets (a
                // dump the kernel walks from the start of the set again for
                // every reply, quadratic in the elements) are not read.
                tracing::debug!(generation, "nftables unchanged since the sets were read");
                all = false;
            } else {
                match nft.ensure_ruleset(ruleset).await {
                    Ok(held) => self.nft.adopt(held, ruleset, generation),
                    Err(error) => {
                        tracing::warn!(%error, "cannot read or create the proxy's nftables table");
                        let what = KernelRead::Nftables;
                        report.errors.push(SyncError::Read { what, error });
                        self.nft_failed = Some(Backoff::after_failure(self.nft_failed, now));
                        return Vec::new();
                    }
                }
            }
        }
        let changes = self.nft.changes(all);
        if changes.is_empty() {
            self.nft_failed = None;
        }
        changes
    }

    /// The transactions to send `changes` (from [`Reconciler::nft_changes`])
    /// in, in order, each with the IPVS writes that wait for it: one
    /// transaction, unless the changes add more than [`NFT_SPLIT_ABOVE`]
    /// elements; then a few, split in the key order of the services this
    /// sync diffs, that the IPVS writes can follow (see [`batches_before`]):
    /// every service on a `full` sync, the dirty ones otherwise.
    /// Each transaction's answer goes to [`Reconciler::nft_applied`].
    /// O(services diffed) for a large sync, O(1) otherwise.
    pub fn nft_batches(&self, changes: Vec<NftChange>, full: bool) -> Vec<NftBatch> {
        let adds = changes
            .iter()
            .filter(|change| matches!(change, NftChange::Add(_)))
            .count();
        if adds <= nft::SPLIT_ABOVE {
            if changes.is_empty() {
                return Vec::new();
            }
            return vec![NftBatch {
                from: None,
                changes,
            }];
        }
        fn owner(entry: &ServiceEntry) -> Option<(VirtualServerKey, usize, &[NftElement])> {
            let first = *entry.keys().next()?;
            let ops = operations_worth(&entry.desired);
            Some((first, ops, &entry.desired.nft_elements[..]))
        }
        // A full sync diffs every service: walked in place rather than
        // looked up by name.
        let mut owners: Vec<(VirtualServerKey, usize, &[NftElement])> = if full {
            self.services.values().filter_map(|e| owner(e)).collect()
        } else {
            let dirty = self.dirty.iter().filter_map(|name| self.services.get(name));
            dirty.filter_map(|e| owner(e)).collect()
        };
        owners.sort_unstable_by_key(|(first, ..)| *first);
        nft::split(changes, owners)
    }

    /// The second half of [`Reconciler::sync_nft`]: records the kernel's
    /// answer to the transaction of `changes`.
    pub fn nft_applied(
        &mut self,
        changes: &[NftChange],
        result: Result<(), KernelError>,
        report: &mut SyncReport,
    ) {
        report.writes += changes.len();
        report.nft_elements += changes.len();
        report.nft_batches += 1;
        if tracing::enabled!(tracing::Level::DEBUG) {
            for change in changes {
                tracing::debug!(?change, "nftables write");
            }
        }
        match result {
            Ok(()) => {
                self.nft.applied(changes);
                // After a failed transaction of the same sync, the sets are
                // read again, after its backoff.
                if self.nft.adopted {
                    self.nft_failed = None;
                }
            }
            Err(error) => {
                tracing::warn!(%error, changes = changes.len(),
                    "nftables transaction failed; retrying with backoff after reading the sets again");
                report.failed += changes.len();
                self.nft.failed(changes);
                let now = (self.clock)();
                self.nft_failed = Some(Backoff::after_failure(self.nft_failed, now));
                report.errors.push(SyncError::Nftables {
                    changes: changes.len(),
                    error,
                });
            }
        }
    }

    /// Deletes the conntrack flows that still send traffic to UDP and SCTP
    /// real servers deleted since the last call, as upstream does. Flows
    /// that could not be deleted are tried again next time.
    pub async fn clear_stale_flows<C: ConntrackKernel>(
        &mut self,
        conntrack: &mut C,
        report: &mut SyncReport,
    ) {
        if self.stale_flows.is_empty() {
            return;
        }
        let mut filters = std::mem::take(&mut self.stale_flows);
        filters.sort_unstable();
        filters.dedup();
        match conntrack.delete_flows(&filters).await {
            Ok(deleted) => {
                report.writes += deleted;
                report.conntrack_deleted += deleted;
            }
            Err(error) => {
                tracing::warn!(%error, endpoints = filters.len(),
                    "deleting conntrack flows of removed endpoints failed; trying again at the next sync");
                report.failed += 1;
                report.errors.push(SyncError::Conntrack {
                    flows: filters.len(),
                    error,
                });
                self.stale_flows = filters;
            }
        }
    }

    /// Drops the flows waiting for [`Reconciler::clear_stale_flows`]
    /// (`--conntrack-cleanup=false`), so that they do not pile up.
    pub fn forget_stale_flows(&mut self) {
        self.stale_flows.clear();
    }

    /// Flows waiting for [`Reconciler::clear_stale_flows`].
    pub fn stale_flows(&self) -> &[FlowFilter] {
        &self.stale_flows
    }

    /// Everything desired, per service, as given to [`Reconciler::set_service`].
    pub fn desired(&self) -> impl Iterator<Item = (&ServiceName, &ServiceDesired)> {
        self.services
            .iter()
            .map(|(name, entry)| (name, &entry.desired))
    }

    /// Of the counters a full sync read (its [`SyncReport::traffic`]),
    /// those of virtual servers a service claims and the mirror still
    /// holds, with that service. The reconciler keeps no counters of its
    /// own: at 10,000 virtual servers a map of them took 1 MB beside the
    /// metrics' copy.
    pub fn traffic<'a>(
        &'a self,
        read: &'a [(VirtualServerKey, TrafficCounters)],
    ) -> impl Iterator<Item = (&'a ServiceName, &'a VirtualServerKey, &'a TrafficCounters)> + 'a
    {
        read.iter().filter_map(|(key, counters)| {
            self.mirror.get(key)?;
            Some((self.claims.owner(key)?, key, counters))
        })
    }

    /// Full sync: reads kube-ipvs0's addresses and the IPVS table, adopts
    /// what the proxy owns into the mirror, diffs everything desired against
    /// it and applies only the difference. Repairs drift; never flushes and
    /// never touches what the proxy does not own. With verify rounds above
    /// 1, a full sync after the first reads only some real servers and
    /// diffs only what may differ (see [`Reconciler::set_verify_rounds`]).
    pub async fn full_sync<K: IpvsKernel, A: AddressKernel>(
        &mut self,
        ipvs: &mut K,
        addrs: &mut A,
    ) -> SyncReport {
        self.full_sync_feeding(ipvs, addrs, &mut NoFeed).await
    }

    /// [`Reconciler::full_sync`], with `feed` handing over more services
    /// while the kernel takes the writes; they are synced by the next sync.
    pub async fn full_sync_feeding<K: IpvsKernel, A: AddressKernel>(
        &mut self,
        ipvs: &mut K,
        addrs: &mut A,
        feed: &mut (dyn Feed + Send),
    ) -> SyncReport {
        let mut report = SyncReport::default();
        let mut work = Work::default();
        if self.adopted && self.verify_rounds > 1 {
            let Some(read) = self.refresh(ipvs, addrs, &mut report).await else {
                return report;
            };
            // What the reads changed, and everything else the mirror may
            // hold differently from what is desired: it matches for every
            // key whose service is neither dirty nor failed.
            let mut keys: HashSet<VirtualServerKey> = read.into_iter().collect();
            let missing = self.claims.keys().filter(|k| !self.mirror.contains(k));
            keys.extend(missing);
            let unclaimed = self
                .mirror
                .keys()
                .filter(|k| self.claims.owner(k).is_none());
            keys.extend(unclaimed);
            for name in self.dirty.iter().chain(self.failed.keys()) {
                keys.extend(self.owned_keys(name));
            }
            for name in self.orphans.services() {
                keys.extend(self.orphans.of(name));
            }
            work.keys = keys
                .into_iter()
                .map(|key| (key, self.answerable_for(&key)))
                .collect();
        } else {
            if !self.adopt(ipvs, addrs, &mut report).await {
                return report;
            }
            let keys = self.mirror.keys().chain(self.claims.keys());
            work.keys = keys.map(|key| (*key, self.answerable_for(key))).collect();
        }
        work.all_services = true;
        work.services.extend(self.failed.keys().cloned());
        work.services.extend(self.orphans.services().cloned());
        work.addresses.extend(self.wanted_addrs.keys());
        work.addresses.extend(self.mirror.addresses());
        work.addresses.extend(self.failed_addrs.keys());
        // Replaced, not cleared: a cold sync's sets would keep their capacity.
        self.dirty = HashSet::new();
        self.dirty_addrs = HashSet::new();
        self.run(work, ipvs, addrs, &mut report, feed).await;
        report
    }

    /// Whether a sync of IPVS and kube-ipvs0 (`full`, or not) is a
    /// [`Reconciler::full_sync`]: not yet adopted, or a failed read due
    /// again, makes any sync full. A full sync begins with two reads that
    /// depend on nothing the reconciler holds, [`AddressKernel::ensure_link`]
    /// and then [`IpvsKernel::list_virtual_servers`] (on its own, or as the
    /// start of [`IpvsKernel::dump`]): a caller may make them ahead, beside
    /// other work, and hand their answers over.
    pub fn syncs_in_full(&self, full: bool) -> bool {
        let now = (self.clock)();
        full || !self.adopted || self.read_failed.is_some_and(|b| b.is_due(now))
    }

    /// Whether these reads of the kernel (kube-ipvs0's VIPs, the IPVS
    /// virtual servers and the nftables set elements) show nothing the
    /// proxy could own, whatever services it is handed later: no VIP and
    /// no virtual server outside `--ipvs-exclude-cidrs`, and no element.
    /// Then no sync can delete anything, and one may start before every
    /// service is handed over (see [`Feed`]).
    pub fn holds_nothing_ownable(
        &self,
        vips: &[IpAddr],
        virtual_servers: &[ListedVirtualServer],
        elements: &[NftElement],
    ) -> bool {
        let ownership = &self.ownership;
        vips.iter().all(|addr| ownership.is_excluded(*addr))
            && virtual_servers
                .iter()
                .all(|vs| ownership.is_excluded(vs.server.key.addr))
            && elements.is_empty()
    }

    /// The keys `name` wants and holds the claim to.
    fn owned_keys<'a>(
        &'a self,
        name: &'a ServiceName,
    ) -> impl Iterator<Item = VirtualServerKey> + 'a {
        self.services
            .get(name)
            .into_iter()
            .flat_map(|entry| entry.keys())
            .filter(move |key| self.claims.owner(key) == Some(name))
            .copied()
    }

    /// A full sync's reads when the mirror is already filled: kube-ipvs0's
    /// addresses and the listing of the virtual servers in full, then the
    /// real servers of those due this round (see
    /// [`Reconciler::set_verify_rounds`]). Returns the keys whose mirror
    /// entry the reads may have changed, or `None` (with the error
    /// reported) if a read failed.
    async fn refresh<K: IpvsKernel, A: AddressKernel>(
        &mut self,
        ipvs: &mut K,
        addrs: &mut A,
        report: &mut SyncReport,
    ) -> Option<Vec<VirtualServerKey>> {
        let held = match addrs.ensure_link().await {
            Ok(held) => held,
            Err(error) => {
                self.read_skipped(
                    KernelRead::Link,
                    "cannot read kube-ipvs0 and the VIPs bound (its addresses, or the local routes)",
                    error,
                    report,
                );
                return None;
            }
        };
        let listed = match ipvs.list_virtual_servers().await {
            Ok(listed) => listed,
            Err(error) => {
                self.read_skipped(
                    KernelRead::IpvsDump,
                    "cannot list the IPVS virtual servers",
                    error,
                    report,
                );
                return None;
            }
        };
        let ownership = &self.ownership;
        let held = held.into_iter().filter(|a| !ownership.is_excluded(*a));
        self.mirror.set_addresses(held);

        // New or changed virtual servers have their real servers read.
        let mut to_read: HashSet<VirtualServerKey> = HashSet::new();
        let mut listed_keys = HashSet::with_capacity(listed.len());
        let mut traffic = Vec::with_capacity(listed.len());
        for ListedVirtualServer { server, counters } in listed {
            let key = server.key;
            if !self.owns_or_released(&key) {
                continue;
            }
            listed_keys.insert(key);
            match self.mirror.get(&key) {
                Some(vs) if vs.server == server => {}
                Some(_) => {
                    self.mirror.update_virtual_server(server);
                    to_read.insert(key);
                }
                None => {
                    self.mirror.add_virtual_server(server);
                    to_read.insert(key);
                }
            }
            traffic.push((key, counters));
        }
        report.traffic = Some(traffic);
        // Deleted behind the proxy's back, or no longer the proxy's.
        let gone: Vec<VirtualServerKey> = self
            .mirror
            .keys()
            .filter(|key| !listed_keys.contains(key))
            .copied()
            .collect();
        for key in &gone {
            self.mirror.remove_virtual_server(key);
        }

        let due = self.mirror.next_round(self.verify_rounds);
        let window = due.len();
        to_read.extend(due);
        to_read.extend(self.mirror.draining().copied());
        to_read.extend(self.mirror.suspects().copied());
        for name in self.failed.keys() {
            let held = self.owned_keys(name).filter(|k| self.mirror.contains(k));
            to_read.extend(held);
        }
        let mut to_read: Vec<VirtualServerKey> = to_read.into_iter().collect();
        to_read.sort_unstable();
        let listed = match ipvs.list_real_servers(&to_read).await {
            Ok(listed) if listed.len() == to_read.len() => Ok(listed),
            Ok(listed) => Err(KernelError::Other(format!(
                "the kernel layer listed the real servers of {} virtual servers, {} asked for",
                listed.len(),
                to_read.len()
            ))),
            Err(error) => Err(error),
        };
        let listed = match listed {
            Ok(listed) => listed,
            Err(error) => {
                tracing::warn!(%error, "cannot list the real servers of the IPVS virtual servers; sync skipped, and the next reads everything");
                let what = KernelRead::IpvsDump;
                report.errors.push(SyncError::Read { what, error });
                // The rotation has moved on without these reads.
                self.adopted = false;
                self.read_failed();
                return None;
            }
        };
        for (key, real_servers) in to_read.iter().zip(listed) {
            self.mirror.set_real_servers(key, real_servers);
        }
        self.read_failed = None;
        tracing::debug!(
            owned = listed_keys.len(),
            window,
            read = to_read.len(),
            gone = gone.len(),
            "listed the IPVS virtual servers and read the real servers due"
        );
        to_read.extend(gone);
        Some(to_read)
    }

    /// Incremental sync: dirty services, and failed ones whose backoff has
    /// expired, diffed against the mirror without reading the kernel.
    /// O(changes). Before the first successful full sync there is no mirror,
    /// so this runs a full sync instead.
    pub async fn sync_dirty<K: IpvsKernel, A: AddressKernel>(
        &mut self,
        ipvs: &mut K,
        addrs: &mut A,
    ) -> SyncReport {
        self.sync_dirty_feeding(ipvs, addrs, &mut NoFeed).await
    }

    /// [`Reconciler::sync_dirty`], with `feed` handing over more services
    /// while the kernel takes the writes; they are synced by the next sync.
    pub async fn sync_dirty_feeding<K: IpvsKernel, A: AddressKernel>(
        &mut self,
        ipvs: &mut K,
        addrs: &mut A,
        feed: &mut (dyn Feed + Send),
    ) -> SyncReport {
        if self.syncs_in_full(false) {
            return self.full_sync_feeding(ipvs, addrs, feed).await;
        }
        let now = (self.clock)();
        let mut work = Work::default();
        work.services.extend(self.dirty.drain());
        let due = self.failed.iter().filter(|(_, b)| b.is_due(now));
        work.services.extend(due.map(|(name, _)| name.clone()));
        work.addresses.extend(self.dirty_addrs.drain());
        let due = self.failed_addrs.iter().filter(|(_, b)| b.is_due(now));
        work.addresses.extend(due.map(|(addr, _)| *addr));
        for name in &work.services {
            if let Some(entry) = self.services.get(name) {
                let owned = entry
                    .keys()
                    .filter(|key| self.claims.owner(key) == Some(name));
                work.keys
                    .extend(owned.map(|key| (*key, Some(name.clone()))));
            }
            let orphans = self.orphans.of(name);
            work.keys
                .extend(orphans.map(|key| (*key, Some(name.clone()))));
        }
        let mut report = SyncReport::default();
        self.run(work, ipvs, addrs, &mut report, feed).await;
        report
    }

    /// Removes every virtual server and kube-ipvs0 address the proxy owns, as
    /// found by reading the kernel, whatever is desired. Foreign virtual
    /// servers and excluded addresses stay. An address stays while a virtual
    /// server on it failed to go, so a later cleanup still owns that one.
    pub async fn cleanup<K: IpvsKernel, A: AddressKernel>(
        &mut self,
        ipvs: &mut K,
        addrs: &mut A,
    ) -> SyncReport {
        let mut report = SyncReport::default();
        if !self.adopt(ipvs, addrs, &mut report).await {
            return report;
        }
        let mut keys: Vec<VirtualServerKey> = self.mirror.keys().copied().collect();
        keys.sort_unstable();
        let ops: Vec<Op> = keys.into_iter().map(Op::DeleteVirtualServer).collect();
        for ops in ops.chunks(APPLY_CHUNK) {
            let services = vec![None; ops.len()];
            report.writes += ops.len();
            let results = ipvs.apply(ops).await;
            self.record_all(ops, results, &services, &mut report, &mut HashSet::new());
        }
        let mut held: Vec<IpAddr> = self.mirror.addresses().copied().collect();
        held.sort_unstable();
        for addr in held {
            if self.mirror.users_of(addr) == 0 {
                self.remove_address(addr, addrs, &mut report).await;
            }
        }
        // The desired state was not applied: the next sync must be full.
        self.adopted = false;
        report
    }

    /// Reads the kernel into a fresh mirror of what the proxy owns. Returns
    /// false (with the error reported) if a read failed.
    async fn adopt<K: IpvsKernel, A: AddressKernel>(
        &mut self,
        ipvs: &mut K,
        addrs: &mut A,
        report: &mut SyncReport,
    ) -> bool {
        let held = match addrs.ensure_link().await {
            Ok(held) => held,
            Err(error) => {
                self.read_skipped(
                    KernelRead::Link,
                    "cannot read kube-ipvs0 and the VIPs bound (its addresses, or the local routes)",
                    error,
                    report,
                );
                return false;
            }
        };
        let dumped = match ipvs.dump().await {
            Ok(dumped) => dumped,
            Err(error) => {
                self.read_skipped(
                    KernelRead::IpvsDump,
                    "cannot dump the IPVS table",
                    error,
                    report,
                );
                return false;
            }
        };
        self.mirror = Mirror::default();
        for addr in held {
            if !self.ownership.is_excluded(addr) {
                self.mirror.insert_address(addr);
            }
        }
        let mut foreign = 0;
        let mut traffic = Vec::with_capacity(dumped.len());
        for vs in dumped {
            if self.owns_or_released(&vs.server.key) {
                traffic.push((vs.server.key, vs.counters));
                self.mirror.adopt(vs);
            } else {
                foreign += 1;
            }
        }
        report.traffic = Some(traffic);
        tracing::debug!(
            foreign,
            owned = self.mirror.keys().count(),
            "read the IPVS table"
        );
        self.adopted = true;
        self.read_failed = None;
        true
    }

    /// A read of the kernel failed, so this sync is skipped: says so in the
    /// log (`failure` says what could not be read), reports it, and
    /// schedules the next read after the backoff.
    fn read_skipped(
        &mut self,
        what: KernelRead,
        failure: &str,
        error: KernelError,
        report: &mut SyncReport,
    ) {
        tracing::warn!(%error, "{failure}; sync skipped, reading again with backoff");
        self.read_failed();
        report.errors.push(SyncError::Read { what, error });
    }

    /// Schedules the next read of the kernel after one more failed read.
    fn read_failed(&mut self) {
        self.read_failed = Some(Backoff::after_failure(self.read_failed, (self.clock)()));
    }

    /// Whether the proxy owns (or, for a missing one, would own) the virtual
    /// server `key`: see [`Ownership`].
    fn owns(&self, key: &VirtualServerKey) -> bool {
        !self.ownership.is_excluded(key.addr)
            && (self.mirror.holds_address(key.addr)
                || self.wanted_addrs.contains_key(&key.addr)
                || self.served_node_addrs.contains_key(&key.addr)
                || (self.node_addrs.contains(&key.addr) && self.ownership.is_node_port(key.port)))
    }

    /// Whether `key` is the proxy's to keep in the mirror: owned, or released
    /// by a service and not yet deleted. A virtual server on a node address
    /// that an ExternalIP served stops being owned with the service that
    /// released it; read as foreign, it was dropped from the mirror before
    /// the sync could delete it, and stayed in the kernel.
    fn owns_or_released(&self, key: &VirtualServerKey) -> bool {
        self.owns(key) || self.orphans.released_by(key).is_some()
    }

    /// The service answerable for `key`: its owner, else whoever released it.
    fn answerable_for(&self, key: &VirtualServerKey) -> Option<ServiceName> {
        self.claims
            .owner(key)
            .or_else(|| self.orphans.released_by(key))
            .cloned()
    }

    fn desired_for(&self, key: &VirtualServerKey) -> Option<&DesiredVirtualServer> {
        let owner = self.claims.owner(key)?;
        self.services.get(owner)?.get(key)
    }

    /// One sync over `work`: addresses in, IPVS ops in chunked batches
    /// (see [`Reconciler::apply_diff`]), addresses out, then retry bookkeeping.
    async fn run<K: IpvsKernel, A: AddressKernel>(
        &mut self,
        mut work: Work,
        ipvs: &mut K,
        addrs: &mut A,
        report: &mut SyncReport,
        feed: &mut (dyn Feed + Send),
    ) {
        let now = (self.clock)();
        report.services_synced = work.services_synced(&self.services);

        // New addresses and the IPVS batch go to the kernel together: they
        // travel on different sockets (kube-ipvs0's from a blocking thread),
        // and a virtual server needs no local address to be created. Which
        // virtual servers are the proxy's counts wanted addresses as held.
        // The additions start first and the IPVS diff is worked out while
        // they run: on a cold sync they are the longer leg, since the kernel
        // walks the interface's whole address list on every IPv4 insert.
        let mut addresses: Vec<IpAddr> = work.addresses.iter().copied().collect();
        addresses.sort_unstable();
        let to_add: Vec<IpAddr> = addresses
            .into_iter()
            .filter(|addr| {
                self.wanted_addrs.contains_key(addr) && !self.mirror.holds_address(*addr)
            })
            .collect();
        let mut keys = std::mem::take(&mut work.keys);
        let (added, failed_services) = {
            let mut additions = pin!(future::maybe_done(async {
                if to_add.is_empty() {
                    Vec::new()
                } else {
                    addrs.add_addresses(&to_add).await
                }
            }));
            // Polled once here so that the batch is under way during the diff.
            let _ = futures::poll!(additions.as_mut());

            keys.sort_unstable_by_key(|(key, _)| *key);
            // A key that came twice is diffed once, for either service.
            keys.dedup_by_key(|(key, _)| *key);
            report.writes += to_add.len();
            if tracing::enabled!(tracing::Level::DEBUG) {
                for addr in &to_add {
                    tracing::debug!(%addr, "address write: add");
                }
            }
            // The IPVS answers are recorded while the additions may still run.
            let ((), failed_services) = futures::join!(
                additions.as_mut(),
                self.apply_diff(&keys, ipvs, report, &mut work.addresses, feed)
            );
            (additions.take_output().unwrap_or_default(), failed_services)
        };
        let mut added = added.into_iter();
        for addr in to_add {
            let result = added.next().unwrap_or_else(|| {
                Err(KernelError::Other(
                    "the kernel layer returned no result for this address".into(),
                ))
            });
            match result.or_else(exists_is_ok) {
                Ok(()) => self.mirror.insert_address(addr),
                Err(error) => self.address_failed(addr, AddressAction::Add, error, now, report),
            }
        }

        // Addresses after the virtual servers that used them are gone.
        let mut addresses: Vec<IpAddr> = work.addresses.iter().copied().collect();
        addresses.sort_unstable();
        for addr in addresses {
            let wanted = self.wanted_addrs.contains_key(&addr);
            let held = self.mirror.holds_address(addr);
            if !wanted && held && self.mirror.users_of(addr) == 0 {
                self.remove_address(addr, addrs, report).await;
            } else if wanted == held {
                self.failed_addrs.remove(&addr);
            }
            // Unwanted but still used: requeued when its last virtual server goes.
        }

        self.failed
            .retain(|name, _| !work.covers(name) || failed_services.contains(name));
        for name in failed_services {
            let previous = self.failed.get(&name).copied();
            self.failed
                .insert(name, Backoff::after_failure(previous, now));
        }
        for (key, _) in &keys {
            if !self.mirror.contains(key) || self.claims.owner(key).is_some() {
                self.orphans.remove(key);
            }
        }
    }

    /// Diffs the virtual servers `keys` (sorted, each with the service
    /// answerable for it) against the mirror and applies the difference, in
    /// chunks of at most about [`APPLY_CHUNK`] operations, so that a cold
    /// sync never holds all of its operations, their answers and the kernel
    /// layer's messages at once. The chunks overlap the kernel's work: while
    /// one chunk is in the kernel, the answers to the one before are
    /// recorded and the next is worked out. The first chunk is
    /// [`FIRST_CHUNK`] operations and each is twice the one before, so that
    /// the first write goes out early and each chunk's diff fits in the
    /// kernel's time for the one before. A virtual server's operations stay
    /// in one chunk and in order (its add before its real servers), and the
    /// diff of a key reads only that key's mirror entry, which only that
    /// key's answers change: the overlap changes nothing but the time.
    /// While a chunk is in the kernel, `feed` also hands over services worth
    /// [`FEED_PER_OP`] times its operations, and more until the kernel has
    /// answered, for the next sync: translation fills the time the run loop
    /// would otherwise wait, and the kernel waits for it only as long as the
    /// minimum takes.
    /// Addresses left unused are added to `freed`. Returns the services with
    /// a failed op.
    async fn apply_diff<K: IpvsKernel>(
        &mut self,
        keys: &[(VirtualServerKey, Option<ServiceName>)],
        ipvs: &mut K,
        report: &mut SyncReport,
        freed: &mut HashSet<IpAddr>,
        feed: &mut (dyn Feed + Send),
    ) -> HashSet<ServiceName> {
        let mut failed_services = HashSet::new();
        let mut limit = FIRST_CHUNK;
        let mut current = self.diff_chunk(keys, 0, limit);
        let mut prepared = K::prepare(&current.ops);
        // The chunk whose answers are in but not yet recorded.
        let mut answered: Option<(Chunk, Vec<Result<(), KernelError>>)> = None;
        while !current.ops.is_empty() {
            report.writes += current.ops.len();
            if tracing::enabled!(tracing::Level::DEBUG) {
                for op in &current.ops {
                    tracing::debug!(?op, "IPVS write");
                }
            }
            limit = (limit * 2).min(APPLY_CHUNK);
            let (results, next, next_prepared) = {
                let mut applying = pin!(future::maybe_done(
                    ipvs.apply_prepared(&current.ops, prepared)
                ));
                // Polled once, so that the chunk is on its way to the kernel
                // (the netlink layer sends a large batch from a thread of
                // its own) while the answers before it are recorded and the
                // next chunk is worked out and prepared: the kernel does not
                // wait for the next chunk's requests to be built.
                let _ = futures::poll!(applying.as_mut());
                if let Some((chunk, results)) = answered.take() {
                    let failed = self.record_chunk(keys, &chunk, results, report, freed);
                    failed_services.extend(failed);
                }
                let next = self.diff_chunk(keys, current.end, limit);
                let next_prepared = K::prepare(&next.ops);
                if feed.remaining() > 0 {
                    feed.feed(self, FEED_PER_OP * current.ops.len());
                    // Yielding between batches lets the sync's other legs
                    // (nftables transactions the chunk may wait for, VIP
                    // writes) run and see their answers.
                    while feed.remaining() > 0 {
                        tokio::task::yield_now().await;
                        if futures::poll!(applying.as_mut()).is_ready() {
                            break;
                        }
                        feed.feed(self, 1);
                    }
                }
                while feed.remaining() == 0
                    && futures::poll!(applying.as_mut()).is_pending()
                    && feed.spare()
                {
                    tokio::task::yield_now().await;
                }
                applying.as_mut().await;
                (
                    applying.take_output().unwrap_or_default(),
                    next,
                    next_prepared,
                )
            };
            answered = Some((std::mem::replace(&mut current, next), results));
            prepared = next_prepared;
        }
        if let Some((chunk, results)) = answered {
            failed_services.extend(self.record_chunk(keys, &chunk, results, report, freed));
        }
        failed_services
    }

    /// The operations of `keys[start..]` up to the first key that brings
    /// them to `limit` or more.
    fn diff_chunk(
        &self,
        keys: &[(VirtualServerKey, Option<ServiceName>)],
        start: usize,
        limit: usize,
    ) -> Chunk {
        let mut chunk = Chunk {
            start,
            end: start,
            ops: Vec::new(),
            answerable: Vec::new(),
        };
        for (key, service) in &keys[start..] {
            chunk.end += 1;
            let desired = self.desired_for(key);
            let current = self.mirror.get(key);
            if desired.is_some() && current.is_none() && !self.owns(key) {
                tracing::warn!(service = ?service.as_ref().map(ToString::to_string),
                    virtual_server = %key,
                    "not the proxy's to program (its address is neither wanted on kube-ipvs0 nor a node address with a NodePort); leaving it alone");
                continue;
            }
            diff::diff_virtual_server(*key, desired, current, &mut chunk.ops);
            chunk.answerable.resize(chunk.ops.len(), service.clone());
            if chunk.ops.len() >= limit {
                break;
            }
        }
        chunk
    }

    /// Records the answers to `chunk` and gives back the room its keys'
    /// mirror entries kept for them.
    fn record_chunk(
        &mut self,
        keys: &[(VirtualServerKey, Option<ServiceName>)],
        chunk: &Chunk,
        results: Vec<Result<(), KernelError>>,
        report: &mut SyncReport,
        freed: &mut HashSet<IpAddr>,
    ) -> HashSet<ServiceName> {
        let failed = self.record_all(&chunk.ops, results, &chunk.answerable, report, freed);
        for (key, _) in &keys[chunk.start..chunk.end] {
            self.mirror.shrink(key);
        }
        failed
    }

    /// Records the kernel's answers to one batch of `ops` in the mirror.
    /// `answerable[i]` is the service `ops[i]` is for. Addresses left unused
    /// are added to `freed`. Returns the services with a failed op.
    fn record_all(
        &mut self,
        ops: &[Op],
        results: Vec<Result<(), KernelError>>,
        answerable: &[Option<ServiceName>],
        report: &mut SyncReport,
        freed: &mut HashSet<IpAddr>,
    ) -> HashSet<ServiceName> {
        let mut failed_services = HashSet::new();
        let mut results = results.into_iter();
        for (op, service) in ops.iter().zip(answerable) {
            let result = results.next().unwrap_or_else(|| {
                Err(KernelError::Other(
                    "the kernel layer returned no result for this operation".into(),
                ))
            });
            let (outcome, freed_addr) = self.record(op, result);
            freed.extend(freed_addr);
            let Err(error) = outcome else { continue };
            report.failed += 1;
            match service {
                Some(name) => tracing::warn!(service = %name, op = %OpDescription(op), %error,
                    "IPVS operation failed; retrying the service with backoff"),
                None => tracing::warn!(op = %OpDescription(op), %error,
                    "IPVS operation on a stale virtual server failed; retrying at the next full sync"),
            }
            if let Some(name) = service {
                failed_services.insert(name.clone());
            }
            report.errors.push(SyncError::Operation {
                service: service.clone(),
                op: op.clone(),
                error,
            });
        }
        failed_services
    }

    /// Records the kernel's answer to `op` in the mirror, so that it only
    /// ever holds what the kernel confirmed. Returns the outcome (idempotent
    /// answers turned into success) and an address the op left unused.
    ///
    /// "Exists" on an add leaves settings the proxy did not choose (a
    /// scheduler, extra real servers) unknown to the mirror until the next
    /// full sync reads and repairs them.
    fn record(
        &mut self,
        op: &Op,
        result: Result<(), KernelError>,
    ) -> (Result<(), KernelError>, Option<IpAddr>) {
        if result.is_ok() || result == Err(KernelError::NotFound) {
            self.note_stale_flows(op);
        }
        // Any answer but a plain success means the kernel was not as the
        // mirror said: the next full sync reads this virtual server.
        let suspect = result.is_err().then(|| op.virtual_server());
        let outcome = self.record_in_mirror(op, result);
        if let Some(key) = suspect {
            self.mirror.mark_suspect(key);
        }
        outcome
    }

    fn record_in_mirror(
        &mut self,
        op: &Op,
        result: Result<(), KernelError>,
    ) -> (Result<(), KernelError>, Option<IpAddr>) {
        use KernelError::{Exists, NotFound};
        let mirror = &mut self.mirror;
        match (op, result) {
            (Op::AddVirtualServer(vs), Ok(()) | Err(Exists)) => {
                mirror.add_virtual_server(vs.clone());
                (Ok(()), None)
            }
            (Op::UpdateVirtualServer(vs), Ok(())) => {
                mirror.update_virtual_server(vs.clone());
                (Ok(()), None)
            }
            (Op::DeleteVirtualServer(key), Ok(()) | Err(NotFound)) => {
                (Ok(()), mirror.remove_virtual_server(key))
            }
            (Op::AddRealServer(key, rs) | Op::UpdateRealServer(key, rs), Ok(()))
            | (Op::AddRealServer(key, rs), Err(Exists)) => {
                mirror.set_real_server(key, *rs);
                (Ok(()), None)
            }
            (Op::DeleteRealServer(key, rs), Ok(()) | Err(NotFound)) => {
                mirror.remove_real_server(key, rs);
                (Ok(()), None)
            }
            // The virtual server vanished behind the proxy's back.
            (Op::UpdateVirtualServer(vs), Err(NotFound)) => {
                (Err(NotFound), mirror.remove_virtual_server(&vs.key))
            }
            (Op::AddRealServer(key, _), Err(NotFound)) => {
                (Err(NotFound), mirror.remove_virtual_server(key))
            }
            // The real server (or its virtual server) vanished.
            (Op::UpdateRealServer(key, rs), Err(NotFound)) => {
                mirror.remove_real_server(key, &rs.key);
                (Err(NotFound), None)
            }
            (_, Err(error)) => (Err(error), None),
        }
    }

    /// Before a delete of a UDP or SCTP real server (or of a virtual server
    /// with some) is recorded: remembers the flows it leaves behind.
    fn note_stale_flows(&mut self, op: &Op) {
        let key = op.virtual_server();
        if !matches!(key.protocol, Protocol::Udp | Protocol::Sctp) {
            return;
        }
        let flow = |endpoint| FlowFilter {
            protocol: key.protocol,
            addr: key.addr,
            port: key.port,
            endpoint,
        };
        match op {
            Op::DeleteRealServer(_, rs) => self.stale_flows.push(flow(rs.addr)),
            Op::DeleteVirtualServer(_) => {
                if let Some(vs) = self.mirror.get(&key) {
                    let endpoints: Vec<IpAddr> =
                        vs.real_servers().iter().map(|rs| rs.key.addr).collect();
                    self.stale_flows.extend(endpoints.into_iter().map(flow));
                }
            }
            _ => {}
        }
    }

    async fn remove_address<A: AddressKernel>(
        &mut self,
        addr: IpAddr,
        addrs: &mut A,
        report: &mut SyncReport,
    ) {
        report.writes += 1;
        tracing::debug!(%addr, "address write: remove");
        match addrs.del_address(addr).await {
            Ok(()) | Err(KernelError::NotFound) => {
                self.mirror.remove_address(addr);
                self.failed_addrs.remove(&addr);
            }
            Err(error) => {
                let now = (self.clock)();
                self.address_failed(addr, AddressAction::Remove, error, now, report);
            }
        }
    }

    fn address_failed(
        &mut self,
        addr: IpAddr,
        action: AddressAction,
        error: KernelError,
        now: Instant,
        report: &mut SyncReport,
    ) {
        tracing::warn!(address = %addr, ?action, %error,
            "kube-ipvs0 address change failed; retrying with backoff");
        report.failed += 1;
        report.errors.push(SyncError::Address {
            addr,
            action,
            error,
        });
        let previous = self.failed_addrs.get(&addr).copied();
        self.failed_addrs
            .insert(addr, Backoff::after_failure(previous, now));
    }
}

/// An address add answered "exists" is what was wanted.
fn exists_is_ok(error: KernelError) -> Result<(), KernelError> {
    match error {
        KernelError::Exists => Ok(()),
        other => Err(other),
    }
}
