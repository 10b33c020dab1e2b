//! The proxy's main loop: sources -> model -> translate -> reconcile -> kernel.
//!
//! One task owns everything, so no state is shared or locked. Events are
//! folded into the model as they arrive; the services they touched are
//! translated again at once (pure and per service) and handed to the
//! reconciler, which syncs them no sooner than `--ipvs-min-sync-period` after
//! the previous sync, so bursts coalesce. The services of the initial lists
//! are translated by the first full sync instead, as it asks for them (see
//! [`Kernel::sync_feeding`]). Every `--ipvs-sync-period` a full
//! sync reads the kernel and repairs drift: every virtual server, and the
//! real servers of each at least once per `--ipvs-verify-period`.

use foldhash::{HashMap, HashMapExt, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::time::{Instant, SystemTime};

use futures::{Stream, StreamExt};

use crate::cli::Options;
use crate::desired::{
    NftElement, NftRuleset, Op, Protocol, ServiceDesired, ServiceName, VirtualServerKey,
};
use crate::events::{EventSink, Problem};
use crate::healthcheck::{self, ServiceHealthServers};
use crate::kernel::conntrack::NetlinkConntrack;
use crate::kernel::link::{local_addresses, DummyLink, VipMode};
use crate::kernel::netlink::NetlinkIpvs;
use crate::kernel::nftables::NetlinkNft;
use crate::kernel::{
    modules, sysctl, AddressKernel, ConntrackKernel, IpvsKernel, KernelError, KernelVirtualServer,
    ListedRealServers, ListedVirtualServer, NftKernel, Prepared,
};
use crate::metrics::{last_change_trigger_time, Metrics, SyncOutcome, VirtualServerSample};
use crate::model::{Changes, Model, NodeInfo, Spent, Uid};
use crate::reconcile::{
    batches_before, operations_worth, Backoff, ClaimNotice, Feed, NoFeed, Ownership, Reconciler,
    SyncError, SyncReport, FIRST_CHUNK,
};
use crate::source::{self, SourceEvent, Update};
use crate::translate::{
    translate_each, NoLocalEndpoints, NodeFacts, SctpSupport, TranslateConfig, Translation,
};

/// Why the proxy stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Module(#[from] modules::ModuleError),
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    #[error("kernel: {0}")]
    Kernel(#[from] KernelError),
    #[error("{0}")]
    Flags(String),
    #[error("nftables: {0}")]
    Nftables(KernelError),
    #[error("--ipvs-scheduler {value:?}: {problem}")]
    Scheduler { value: String, problem: String },
    #[error("connecting to the Kubernetes API: {0}")]
    Kube(String),
    #[error("the {0} source ended")]
    SourceEnded(&'static str),
    #[error("{0}")]
    NotConverged(String),
    #[error("serving /healthz and /metrics: {0}")]
    Http(String),
    #[error("listening for signals: {0}")]
    Signal(std::io::Error),
    #[error("kube-proxy's leftovers: {0}")]
    Upstream(#[from] crate::kernel::upstream::UpstreamError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A source's events, boxed so that either source fits.
pub type Events = Pin<Box<dyn Stream<Item = SourceEvent> + Send>>;

/// Opens the source the flags name: a manifests directory, or the API server
/// (whose client is returned too, for Events).
async fn open_source(
    opts: &Options,
    node_name: &str,
    metrics: &Metrics,
) -> Result<(Events, &'static str, Option<kube::Client>)> {
    if let Some(dir) = &opts.manifests {
        return Ok((
            Box::pin(source::manifests::watch_dir(dir.clone())),
            "manifests",
            None,
        ));
    }
    let client = source::kube::client(opts.kubeconfig.as_deref(), opts.master.as_deref(), metrics)
        .await
        .map_err(|e| Error::Kube(source::kube::error_chain(&e)))?;
    let events = Box::pin(source::kube::watch(client.clone(), node_name));
    Ok((events, "kube", Some(client)))
}

/// The most events one turn of the run loop folds in before it looks at its
/// timers and at shutdown again.
const EVENTS_PER_TURN: usize = 1024;

/// Folds in `first` and then whatever else `events` has ready, up to
/// [`EVENTS_PER_TURN`] in all, with `apply`; whether one of them completed
/// the initial lists, or `None` when the source ended.
///
/// A page of a list is hundreds of objects, all ready at once. Taken one
/// per turn of the loop, each cost a `select!` and two clock reads for the
/// start-up breakdown: under TCG, whose clock source (the HPET) has no
/// vDSO, those reads alone were a seventh of the run loop's time while the
/// lists came in.
fn apply_ready(
    first: SourceEvent,
    events: &mut Events,
    mut apply: impl FnMut(SourceEvent) -> bool,
) -> Option<bool> {
    use futures::FutureExt;
    let mut synced = apply(first);
    for _ in 1..EVENTS_PER_TURN {
        // Polled without the loop's waker: the `select!` polls the stream
        // again, with it, before the loop waits.
        match events.next().now_or_never() {
            None => break,
            Some(None) => return None,
            Some(Some(event)) => synced |= apply(event),
        }
    }
    Some(synced)
}

/// Drives `events` on a task of its own and hands them on in order, so that
/// the source reads and decodes whenever the run loop's task is waiting,
/// before the loop starts as after.
fn read_ahead(events: Events) -> Events {
    let (send, receive) = futures::channel::mpsc::unbounded();
    // Ends when the source does (the receiver then ends too, and the loop
    // says so) or when the receiver is gone.
    tokio::spawn(events.map(Ok).forward(send));
    Box::pin(receive)
}

/// The translate settings: the default scheduler, checked against what the
/// kernel offers.
fn translate_config(opts: &Options) -> Result<TranslateConfig> {
    let mut cfg = TranslateConfig::new(&opts.ipvs_scheduler, modules::available_schedulers());
    cfg.allowed_external_ips = opts.allowed_external_ip_cidrs.clone();
    cfg.check_scheduler(&opts.ipvs_scheduler)
        .map_err(|problem| Error::Scheduler {
            value: opts.ipvs_scheduler.clone(),
            problem: problem.to_string(),
        })?;
    Ok(cfg)
}

/// This node's facts: its NodePort addresses and the families it runs.
async fn node_facts(opts: &Options, node_name: &str) -> Result<NodeFacts> {
    let local = local_addresses(&opts.ipvs_interface).await?;
    if local.is_empty() {
        tracing::warn!(
            "this node has no usable IPv4 or IPv6 address (only loopback or link-local): no family is enabled, so nothing will be programmed"
        );
    }
    Ok(NodeFacts {
        name: node_name.into(),
        ipv4: local.iter().any(IpAddr::is_ipv4),
        ipv6: local.iter().any(IpAddr::is_ipv6),
        node_addresses: local
            .iter()
            .copied()
            .filter(|a| opts.allows_node_port_address(*a))
            .collect(),
        local_addresses: local,
    })
}

fn ownership(opts: &Options) -> Ownership {
    Ownership {
        exclude_cidrs: opts.ipvs_exclude_cidrs.clone(),
        node_port_range: opts.service_node_port_range.clone(),
    }
}

/// The nftables rules the flags ask for, with the `ip6` table only on a
/// node that runs IPv6.
fn nft_ruleset(opts: &Options, node: &NodeFacts) -> Result<NftRuleset> {
    let ruleset = opts.nft_ruleset().map_err(Error::Flags)?;
    Ok(NftRuleset {
        ipv6: node.ipv6,
        ..ruleset
    })
}

/// Loads the modules the `ip6` table's rules need; the names of those it
/// loaded.
fn load_ipv6_packet_path_modules() -> Result<Vec<String>, modules::ModuleError> {
    let loaded = modules::ensure_modules(PACKET_PATH_MODULES_IPV6)?;
    if !loaded.is_empty() {
        tracing::info!(?loaded, "loaded kernel modules for the ip6 table");
    }
    Ok(loaded)
}

/// The kernel modules of the packet path: nf_tables and the expressions the
/// proxy's rules use (see `kernel::nftables`), and ctnetlink for conntrack
/// cleanup. Loaded up front so that a missing one is named at start.
const PACKET_PATH_MODULES: &[&str] = &[
    "nf_tables",
    "nft_chain_nat",
    "nft_ct",
    "nft_fib_ipv4",
    "nft_masq",
    "nft_reject_ipv4",
    "nf_conntrack_netlink",
];

/// The modules the `ip6` table's rules add, loaded only on a node with
/// IPv6 (a kernel with IPv6 disabled may lack them).
const PACKET_PATH_MODULES_IPV6: &[&str] = &["nft_fib_ipv6", "nft_reject_ipv6"];

/// Modules and sysctls, before the first netlink request.
fn prepare_kernel(opts: &Options) -> Result<()> {
    let scheduler_module = format!("ip_vs_{}", opts.ipvs_scheduler);
    let mut wanted = vec!["ip_vs", &scheduler_module, "nf_conntrack", "dummy"];
    wanted.extend_from_slice(PACKET_PATH_MODULES);
    let loaded = modules::ensure_modules(&wanted)?;
    if !loaded.is_empty() {
        tracing::info!(?loaded, "loaded kernel modules");
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let wanted = sysctl::wanted(release.trim(), opts.ipvs_strict_arp);
    sysctl::apply(Path::new("/proc/sys"), &wanted)?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let conntrack = opts.conntrack_settings();
    for failure in conntrack.apply(Path::new("/proc/sys"), Path::new("/sys"), cpus) {
        tracing::warn!("{failure}");
    }
    if let Some(warning) =
        sysctl::bridge_netfilter_warning(Path::new("/sys"), Path::new("/proc/sys"))
    {
        tracing::warn!("{warning}");
    }
    Ok(())
}

/// `kube-ipvs-proxy prepare`: the modules and sysctls of `run`, alone.
/// `run` does the same at its start, and then writes nothing that is
/// already as it wants it.
pub fn prepare(opts: &Options) -> Result<()> {
    prepare_kernel(opts)?;
    tracing::info!("kernel modules and sysctls are ready");
    Ok(())
}

/// The model, the translation settings and the reconciler, and how changes
/// flow between them.
struct State {
    model: Model,
    node: NodeFacts,
    translate: TranslateConfig,
    reconciler: Reconciler,
    metrics: Metrics,
    /// Whether the local pod CIDRs are the Node's (`--detect-local-mode NodeCIDR`).
    pod_cidrs_from_node: bool,
    /// `--nodeport-addresses primary`: NodePorts only on the Node's primary
    /// addresses, narrowed at each refresh of the node's facts.
    node_port_primary: bool,
    /// What handing a translation to the reconciler keeps track of.
    handover: Handover,
    /// Where problems with a Service go to become Events on it.
    events: EventSink,
    /// The services the initial lists brought, translated and handed over
    /// by the first full sync (with VIPs as local routes, while the kernel
    /// takes its first writes: see [`Kernel::sync_feeding`]); empty after
    /// it.
    pending: Vec<ServiceName>,
    /// Whether the first full sync has begun: from then on, every change
    /// is translated as it comes.
    first_sync_begun: bool,
    /// The API objects of the lists before the first full sync, which
    /// frees them while it waits for the kernel.
    spent: Spent,
}

/// What handing one service's translation to the reconciler updates besides
/// it: the Events of its warnings, its health check server and the gauges.
struct Handover {
    metrics: Metrics,
    events: EventSink,
    /// Desired virtual servers per service, so the gauge stays O(changes).
    virtual_servers: HashMap<ServiceName, usize>,
    virtual_servers_total: usize,
    /// Ports left without a local endpoint, per service that has any, and
    /// their sum, so the gauge stays O(changes).
    no_local_endpoints: HashMap<ServiceName, NoLocalEndpoints>,
    no_local_endpoints_total: NoLocalEndpoints,
    /// The `healthCheckNodePort` servers of the services that ask for one.
    health: ServiceHealthServers,
    /// Translations handed over since start, counted for tests.
    #[cfg(test)]
    translated: usize,
}

impl Handover {
    fn new(metrics: Metrics, events: EventSink, health: ServiceHealthServers) -> Self {
        Handover {
            metrics,
            events,
            virtual_servers: HashMap::new(),
            virtual_servers_total: 0,
            no_local_endpoints: HashMap::new(),
            no_local_endpoints_total: NoLocalEndpoints::default(),
            health,
            #[cfg(test)]
            translated: 0,
        }
    }

    /// Passes one service's fresh translation to `reconciler`. Returns the
    /// IPVS operations its desired state is worth.
    fn hand_over(
        &mut self,
        reconciler: &mut Reconciler,
        model: &Model,
        name: ServiceName,
        translation: Translation,
    ) -> usize {
        #[cfg(test)]
        {
            self.translated += 1;
        }
        for warning in &translation.warnings {
            tracing::warn!(service = %name, %warning, "translating service");
            let uid = uid_of(model, &name);
            self.events.report(Problem::from_translate(warning, uid));
        }
        if let Err(error) = self.health.set(&name, translation.health_check.as_ref()) {
            tracing::error!(%error, "opening a health check port");
        }
        let desired = translation.desired;
        let count = desired.virtual_servers.len();
        let previous = if count == 0 {
            self.virtual_servers.remove(&name)
        } else {
            self.virtual_servers.insert(name.clone(), count)
        };
        self.virtual_servers_total = self.virtual_servers_total + count - previous.unwrap_or(0);
        self.metrics.set_virtual_servers(self.virtual_servers_total);
        self.set_no_local_endpoints(&name, translation.no_local_endpoints);
        let (worth, notices) = set_service(reconciler, name, desired);
        for notice in notices {
            let uid = uid_of(model, notice.service());
            self.events.report(Problem::from_claim(&notice, uid));
        }
        worth
    }

    /// Records one service's ports without a local endpoint and updates the
    /// gauge with the new sum: O(1).
    fn set_no_local_endpoints(&mut self, name: &ServiceName, counts: NoLocalEndpoints) {
        let previous = if counts == NoLocalEndpoints::default() {
            self.no_local_endpoints.remove(name)
        } else {
            self.no_local_endpoints.insert(name.clone(), counts)
        }
        .unwrap_or_default();
        if previous == counts {
            return;
        }
        let total = &mut self.no_local_endpoints_total;
        total.internal = total.internal + counts.internal - previous.internal;
        total.external = total.external + counts.external - previous.external;
        self.metrics
            .set_no_local_endpoints(total.internal, total.external);
    }
}

/// The `metadata.uid` of a Service the model holds, for its Events.
fn uid_of(model: &Model, name: &ServiceName) -> Option<Uid> {
    model.service(name).and_then(|s| s.uid)
}

/// Services translated and handed to the reconciler a few at a time, as a
/// sync asks for them (see [`Feed`]): the first full sync's feed of the
/// services the initial lists brought. `hand_over` passes each translation
/// on and returns the IPVS operations it is worth.
pub struct TranslationFeed<'a, H> {
    model: &'a Model,
    node: &'a NodeFacts,
    translate: &'a TranslateConfig,
    names: std::vec::IntoIter<ServiceName>,
    hand_over: H,
    /// The lists' API objects, freed while the kernel takes the writes.
    spent: Spent,
}

/// Hands a service's desired state to `reconciler` and nothing else, for
/// a [`TranslationFeed`] outside the run loop (the benchmark's, the
/// tools'): returns the IPVS operations it is worth.
pub fn set_desired(
    reconciler: &mut Reconciler,
    name: ServiceName,
    translation: Translation,
) -> usize {
    set_service(reconciler, name, translation.desired).0
}

/// Gives `reconciler` what the service `name` wants (nothing, if it wants
/// neither a virtual server nor an address). Returns the IPVS operations
/// that is worth and the reconciler's notices of claims changing hands.
fn set_service(
    reconciler: &mut Reconciler,
    name: ServiceName,
    desired: ServiceDesired,
) -> (usize, Vec<ClaimNotice>) {
    let worth = operations_worth(&desired);
    let wanted = !desired.virtual_servers.is_empty() || !desired.bind_addrs.is_empty();
    (
        worth,
        reconciler.set_service(name, wanted.then_some(desired)),
    )
}

impl<H> std::fmt::Debug for TranslationFeed<'_, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranslationFeed")
            .field("remaining", &self.names.len())
            .finish_non_exhaustive()
    }
}

/// How many services a feed translates at a time while a sync writes:
/// small enough that it stops close to the operations it was asked for.
/// Asked for everything, it translates all that is left at once, on every
/// core (see [`translate_each`]).
const FEED_BATCH: usize = 16;

impl<'a, H> TranslationFeed<'a, H>
where
    H: FnMut(&mut Reconciler, ServiceName, Translation) -> usize,
{
    pub fn new(
        model: &'a Model,
        node: &'a NodeFacts,
        translate: &'a TranslateConfig,
        names: Vec<ServiceName>,
        hand_over: H,
    ) -> Self {
        TranslationFeed {
            model,
            node,
            translate,
            names: names.into_iter(),
            hand_over,
            spent: Spent::default(),
        }
    }

    /// The feed frees `spent` while the kernel takes its sync's writes and
    /// no service is left to hand over; whatever is left when it is dropped.
    #[must_use]
    pub fn with_spent(mut self, spent: Spent) -> Self {
        self.spent = spent;
        self
    }
}

impl<H> Feed for TranslationFeed<'_, H>
where
    H: FnMut(&mut Reconciler, ServiceName, Translation) -> usize,
{
    fn feed(&mut self, reconciler: &mut Reconciler, ops: usize) {
        let batch = if ops == usize::MAX {
            usize::MAX
        } else {
            FEED_BATCH
        };
        let mut worth = 0;
        while worth < ops && self.names.len() > 0 {
            let names: Vec<ServiceName> = self.names.by_ref().take(batch).collect();
            let translations = translate_each(self.model, &names, self.node, self.translate);
            for (name, translation) in names.into_iter().zip(translations) {
                worth += (self.hand_over)(reconciler, name, translation);
            }
        }
    }

    fn remaining(&self) -> usize {
        self.names.len()
    }

    fn spare(&mut self) -> bool {
        self.spent.free_some(SPARE_BATCH)
    }
}

/// How many API objects a feed frees at a time while the kernel takes a
/// chunk: a few milliseconds of work under TCG, so that the answer is
/// seen soon after it comes.
const SPARE_BATCH: usize = 256;

impl State {
    /// Folds one event into the model and passes on what it changed.
    /// Returns whether the sources have now listed everything.
    fn apply(&mut self, event: SourceEvent) -> bool {
        let endpoints = matches!(
            event,
            SourceEvent::EndpointSlice(_) | SourceEvent::Endpoints(_)
        );
        let trigger = last_change_trigger(&event);
        // For a Node event: whether this node still exists (upstream's
        // eligibility is false from the delete of its Node on).
        let node_event = match &event {
            SourceEvent::Node(Update::Delete(node)) => {
                Some(node.metadata.name.as_deref() != Some(&*self.node.name))
            }
            SourceEvent::Node(_) => Some(true),
            _ => None,
        };
        // Before the first sync, whole lists are freed during it (see Spent).
        let changes = if self.first_sync_begun {
            self.model.apply(event)
        } else {
            self.model.apply_keeping(event, &mut self.spent)
        };
        let synced = changes.synced;
        if !changes.is_empty() {
            if endpoints {
                self.metrics.record_endpoint_changes(&changes.services);
                if let Some(trigger) = trigger {
                    self.metrics.record_trigger_time(trigger);
                }
            } else {
                self.metrics.record_service_changes(&changes.services);
            }
            self.metrics.mark_pending();
        }
        if let Some(exists) = node_event {
            let eligible = exists && self.model.node().is_none_or(NodeInfo::eligible);
            self.metrics.set_node_eligible(eligible);
        }
        self.absorb(changes);
        synced
    }

    /// Translates again what `changes` touched and hands it to the reconciler.
    /// Until the sources' initial lists are in, nothing is translated: no
    /// sync runs before them, and each list's end would translate every
    /// service again. The event that completes them translates every
    /// service once.
    fn absorb(&mut self, mut changes: Changes) {
        for error in &changes.errors {
            tracing::error!(%error, "rejected object; its last good version stays in force");
            if let Some(problem) = Problem::from_model_error(error, |name| self.uid_of(name)) {
                self.events.report(problem);
            }
        }
        if !self.model.is_synced() {
            return;
        }
        changes.all |= changes.synced;
        if changes.all && self.pod_cidrs_from_node {
            let cidrs = self
                .model
                .node()
                .map(|n| n.pod_cidrs.clone())
                .unwrap_or_default();
            self.reconciler.set_local_pod_cidrs(&cidrs);
        }
        let names: Vec<ServiceName> = if changes.all {
            // Every service the model holds, and every one the reconciler
            // still programs (it may be gone from the model), once each.
            let names: HashSet<ServiceName> = self
                .model
                .services()
                .map(|s| s.name.clone())
                .chain(self.reconciler.desired().map(|(n, _)| n.clone()))
                .collect();
            names.into_iter().collect()
        } else {
            changes.services.into_iter().collect()
        };
        self.ensure_sctp(&names);
        if changes.all && !self.first_sync_begun {
            // Translated by the first full sync, as it asks for them.
            self.pending = names;
            return;
        }
        let translations = translate_each(&self.model, &names, &self.node, &self.translate);
        for (name, translation) in names.into_iter().zip(translations) {
            self.hand_over(name, translation);
        }
    }

    /// The first full sync. The services the initial lists brought are
    /// translated and handed over as it asks for them, so that their
    /// translation overlaps the kernel's first writes where that is safe
    /// (see [`Kernel::sync_feeding`]).
    async fn first_full_sync<K, A, N, C>(
        &mut self,
        kernel: &mut Kernel<'_, K, A, N, C>,
        ruleset: &NftRuleset,
        conntrack_cleanup: bool,
        vips: VipMode,
    ) -> SyncReport
    where
        K: IpvsKernel,
        A: AddressKernel,
        N: NftKernel,
        C: ConntrackKernel,
    {
        self.first_sync_begun = true;
        let State {
            model,
            node,
            translate,
            reconciler,
            handover,
            pending,
            spent,
            ..
        } = self;
        let hand_over = |reconciler: &mut Reconciler, name, translation| {
            handover.hand_over(reconciler, model, name, translation)
        };
        let names = std::mem::take(pending);
        let mut feed = TranslationFeed::new(model, node, translate, names, hand_over)
            .with_spent(std::mem::take(spent));
        kernel
            .sync_feeding(reconciler, ruleset, conntrack_cleanup, vips, &mut feed)
            .await
    }

    /// Loads the kernel's `sctp` module the first time one of `names` has an
    /// SCTP port, and records whether SCTP can be served. Where it cannot,
    /// translate leaves out each SCTP port with a warning naming its service;
    /// every other port and service is served.
    fn ensure_sctp(&mut self, names: &[ServiceName]) {
        if self.translate.sctp != SctpSupport::Unchecked {
            return;
        }
        let wanted = names
            .iter()
            .filter_map(|name| self.model.service(name))
            .any(|svc| svc.ports.iter().any(|p| p.protocol == Protocol::Sctp));
        if !wanted {
            return;
        }
        self.translate.sctp = match modules::ensure_modules(&["sctp"]) {
            Ok(loaded) => {
                if !loaded.is_empty() {
                    tracing::info!(?loaded, "loaded kernel modules for SCTP services");
                }
                SctpSupport::Available
            }
            Err(error) => {
                tracing::error!(%error, "SCTP ports cannot be served on this node");
                SctpSupport::Unavailable(error.to_string().into())
            }
        };
    }

    /// Passes one service's fresh translation to the reconciler.
    fn hand_over(&mut self, name: ServiceName, translation: Translation) {
        let State {
            model,
            reconciler,
            handover,
            ..
        } = self;
        handover.hand_over(reconciler, model, name, translation);
    }

    /// The `metadata.uid` of a Service the model holds, for its Events.
    fn uid_of(&self, name: &ServiceName) -> Option<Uid> {
        uid_of(&self.model, name)
    }

    /// Reports the kernel's refusals of a Service's virtual servers.
    fn report_sync_errors(&self, report: &SyncReport) {
        for error in &report.errors {
            let SyncError::Operation {
                service: Some(name),
                ..
            } = error
            else {
                continue;
            };
            if let Some(problem) = Problem::from_sync_error(error, self.uid_of(name)) {
                self.events.report(problem);
            }
        }
    }

    /// Tries again the health-check ports that could not be bound.
    fn retry_health_checks(&mut self) {
        for error in self.handover.health.retry_failed() {
            tracing::error!(%error, "opening a health check port");
        }
    }

    /// Takes in fresh node addresses; every service is translated again if
    /// they changed.
    fn set_node(&mut self, mut node: NodeFacts) {
        if self.node_port_primary {
            let primary = self.model.node().map(primary_addresses).unwrap_or_default();
            node.node_addresses.retain(|a| primary.contains(a));
        }
        if node != self.node {
            tracing::info!(addresses = ?node.node_addresses, "node addresses changed");
            self.reconciler
                .set_node_addresses(node.node_addresses.clone());
            self.node = node;
            self.absorb(Changes {
                all: true,
                ..Changes::default()
            });
        }
    }
}

/// A Node's primary addresses, as upstream picks them for
/// `--nodeport-addresses primary`: the first of each family among its
/// InternalIPs, else among its ExternalIPs.
fn primary_addresses(node: &crate::model::NodeInfo) -> Vec<IpAddr> {
    let first = |v4: bool| {
        node.internal_ips
            .iter()
            .chain(&node.external_ips)
            .find(|a| a.is_ipv4() == v4)
            .copied()
    };
    first(true).into_iter().chain(first(false)).collect()
}

/// The last-change trigger time an EndpointSlice or Endpoints update carries.
fn last_change_trigger(event: &SourceEvent) -> Option<SystemTime> {
    let annotations = match event {
        SourceEvent::EndpointSlice(Update::Apply(slice)) => slice.metadata.annotations.as_ref(),
        SourceEvent::Endpoints(Update::Apply(endpoints)) => endpoints.metadata.annotations.as_ref(),
        _ => return None,
    };
    last_change_trigger_time(annotations)
}

fn log_sync(kind: &'static str, report: &SyncReport, started: Instant, metrics: &Metrics) {
    let failed_reads = report
        .errors
        .iter()
        .filter(|e| matches!(e, SyncError::Read { .. }))
        .count();
    let outcome = SyncOutcome {
        writes: report.writes,
        failed_writes: report.failed,
        failed_reads,
    };
    metrics.record_sync(kind, started.elapsed(), outcome);
    metrics.record_packet_path(
        report.nft_elements,
        report.nft_batches,
        report.conntrack_deleted,
    );
    for error in &report.errors {
        tracing::warn!(%error, "sync error; retrying with backoff");
    }
    tracing::info!(
        kind,
        writes = report.writes,
        nft_elements = report.nft_elements,
        conntrack_deleted = report.conntrack_deleted,
        failed = report.failed,
        services = report.services_synced,
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        "sync done"
    );
}

/// `kube-ipvs-proxy run`.
pub async fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    adjust_oom_score(opts.oom_score_adj);
    let node_name = opts.node_name();
    // The source opens first and reads ahead: its initial lists (the API's
    // answers, or the manifests, and their decoding) are the longest wait
    // at start, and they come in while the kernel is prepared.
    let metrics = Metrics::new();
    let (events, source_name, client) = open_source(opts, &node_name, &metrics).await?;
    let events = read_ahead(events);
    let prepared = {
        let opts = opts.clone();
        tokio::task::spawn_blocking(move || prepare_kernel(&opts))
    };
    match prepared.await {
        Ok(prepared) => prepared?,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => {
            let error = format!("preparing the kernel: {e}");
            return Err(Error::Kernel(KernelError::Other(error)));
        }
    }
    crate::kernel::upstream::warn_if_present();
    let mut ipvs = NetlinkIpvs::connect().await?;
    ipvs.set_timeouts(
        opts.ipvs_tcp_timeout,
        opts.ipvs_tcpfin_timeout,
        opts.ipvs_udp_timeout,
    )
    .await?;
    let mut link = DummyLink::new(&opts.ipvs_interface)?
        .with_mode(opts.ipvs_vip_mode, &opts.ipvs_exclude_cidrs);
    // Made now, as the nftables table is below, while the lists come in:
    // the first sync then only reads it.
    link.create().await?;
    // The node's families decide the nftables tables: `ip6` only with IPv6.
    let node = node_facts(opts, &node_name).await?;
    if node.ipv6 {
        load_ipv6_packet_path_modules()?;
    }
    let ruleset = nft_ruleset(opts, &node)?;
    let mut nft = NetlinkNft::new().map_err(Error::Nftables)?;
    // Fails at start, naming what the kernel lacks, rather than at every sync.
    nft.ensure_ruleset(&ruleset)
        .await
        .map_err(Error::Nftables)?;
    let mut conntrack = NetlinkConntrack::new()?;
    tracing::info!(node = %node_name, interface = %opts.ipvs_interface,
        sync_period = ?opts.ipvs_sync_period, verify_period = ?opts.verify_period(),
        "starting");

    let translate = translate_config(opts)?;

    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    metrics.set_configz(crate::config::configz(opts).to_string());
    // Only in-cluster: standalone, the log is the only report.
    let event_sink = match client {
        Some(client) => crate::events::spawn(client, &node_name, metrics.clone()),
        None => EventSink::disabled(),
    };
    let http = crate::metrics::serve(
        opts.healthz_bind_address.0,
        opts.metrics_bind_address.0,
        metrics.clone(),
        opts.ipvs_sync_period,
    );
    let loop_ = Loop {
        opts,
        node,
        translate,
        ruleset,
        source_name,
        metrics,
        events: event_sink,
    };
    let kernel = Kernel {
        ipvs: &mut ipvs,
        link: &mut link,
        nft: &mut nft,
        conntrack: &mut conntrack,
    };
    // The first part of the start-up breakdown; the loop logs the rest.
    tracing::info!(
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        "kernel prepared and sources opened"
    );
    let serve = loop_.serve(events, kernel, || node_facts(opts, &node_name), shutdown);
    tokio::select! {
        result = serve => result?,
        result = http => return Err(Error::Http(result.err().map_or_else(|| "stopped".to_owned(), |e| e.to_string()))),
    }
    tracing::info!("stopping; IPVS state is left in place for the next start to adopt");
    Ok(())
}

/// `--oom-score-adj`, as kube-proxy applies it: a failure is reported and
/// the proxy runs on with the value it has (in a pod, the one kubelet
/// chose: -997 for a system-node-critical pod).
fn adjust_oom_score(value: i32) {
    use crate::kernel::oom;
    match oom::set(std::path::Path::new(oom::SELF), value) {
        Ok(oom::Adjusted::Unchanged) => {}
        Ok(oom::Adjusted::Set { from }) => {
            tracing::info!(oom_score_adj = value, from, "oom_score_adj set");
        }
        Err(error) => tracing::info!(
            oom_score_adj = value,
            %error,
            "oom_score_adj not set (lowering it needs CAP_SYS_RESOURCE); running with the value the process has"
        ),
    }
}

/// The run loop's inputs, apart from the kernel: what `run` prepares and a
/// test can build with fakes.
#[derive(Debug)]
pub struct Loop<'a> {
    pub opts: &'a Options,
    /// The node's facts at start; refreshed at every full sync.
    pub node: NodeFacts,
    pub translate: TranslateConfig,
    /// The fixed part of the nftables table.
    pub ruleset: NftRuleset,
    /// Named in the error when the source ends.
    pub source_name: &'static str,
    /// Where syncs and changes are counted (served on /metrics and /healthz).
    pub metrics: Metrics,
    /// Where problems with a Service go to become Events on it
    /// ([`EventSink::disabled`] posts none).
    pub events: EventSink,
}

/// The kernel subsystems the run loop programs, each behind its trait.
#[derive(Debug)]
pub struct Kernel<'k, K, A, N, C> {
    pub ipvs: &'k mut K,
    pub link: &'k mut A,
    pub nft: &'k mut N,
    pub conntrack: &'k mut C,
}

impl<K: IpvsKernel, A: AddressKernel, N: NftKernel, C: ConntrackKernel> Kernel<'_, K, A, N, C> {
    /// One sync of every subsystem: the nftables sets first (so that a new
    /// service's masquerade and filters are in place before its virtual
    /// servers take traffic), then IPVS and kube-ipvs0, then the conntrack
    /// flows of the real servers that went. Only the writes wait for the
    /// nftables transaction: the IPVS and kube-ipvs0 reads, and the diff of
    /// the first chunk of IPVS operations, run beside it (see `AfterNft`).
    /// A large sync sends its set elements in a few transactions, and each
    /// chunk of IPVS writes waits only for those that hold its services'
    /// elements (see [`Reconciler::nft_batches`]), so that on a cold sync
    /// the kernel takes the sets while it takes the IPVS writes.
    /// `full` re-reads every subsystem and repairs drift; otherwise only
    /// what changed is sent. `conntrack_cleanup` is `--conntrack-cleanup`.
    ///
    /// A full sync of IPVS begins with reads of kube-ipvs0 and of the
    /// virtual servers that depend on nothing the reconciler holds: they are
    /// made while the nftables table is read and its changes worked out,
    /// rather than after (see `ReadAhead`).
    pub async fn sync(
        &mut self,
        reconciler: &mut Reconciler,
        ruleset: &NftRuleset,
        conntrack_cleanup: bool,
        full: bool,
    ) -> SyncReport {
        self.sync_with(reconciler, ruleset, conntrack_cleanup, full, &mut NoFeed)
            .await
    }

    /// A full sync of every subsystem while `feed` still has services to
    /// hand over: the first full sync after start, when the initial lists
    /// are in the model but not yet translated. `vips` is how VIPs are
    /// bound (`--ipvs-vip-mode`). The report sums every sync's.
    ///
    /// If the VIPs are local routes and the kernel holds nothing the proxy
    /// could own (no VIP, no virtual server outside `--ipvs-exclude-cidrs`,
    /// no set element: a node just booted), no sync can delete anything,
    /// so the writes need not wait for every service. The first full sync
    /// then starts with the services worth its first chunk of IPVS writes;
    /// while the kernel takes each chunk, the feed translates and hands
    /// over services worth [`crate::reconcile::FEED_PER_OP`] times as many
    /// operations, and more until the kernel answers the chunk; each
    /// incremental sync after it syncs those handed over
    /// during the one before, until none are left. Translation, which came
    /// before the first write, runs beside the kernel's work. A failed read
    /// or a lost connection on the way hands over the rest at once and ends
    /// the streaming: the run loop's next syncs, as after any failure, take
    /// it from there.
    ///
    /// Otherwise (a restart, a node whose state another tool holds, a
    /// failed read) every service is handed over first, and the sync is
    /// the one [`Kernel::sync`] makes. So it is with VIPs as addresses too:
    /// there, binding the VIPs is a cold sync's longest leg (the kernel
    /// walks the interface's whole address list on every insert), and it
    /// must start at once with every VIP. Spread over the streamed syncs,
    /// each sync's VIPs started with it and the last ones outlasted its
    /// IPVS writes: at 10,000 × 10 the cold sync took 4.06 s instead of
    /// 3.81 s.
    pub async fn sync_feeding(
        &mut self,
        reconciler: &mut Reconciler,
        ruleset: &NftRuleset,
        conntrack_cleanup: bool,
        vips: VipMode,
        feed: &mut (dyn Feed + Send),
    ) -> SyncReport {
        let Kernel {
            ipvs,
            link,
            nft,
            conntrack,
        } = self;
        let reads = async {
            let held = link.ensure_link().await;
            let listed = match held {
                Ok(_) => Some(ipvs.list_virtual_servers().await),
                Err(_) => None,
            };
            (held, listed)
        };
        // The generation first, so that the sets read are tied to it.
        let sets = async {
            let generation = nft.generation().await;
            let held = nft.ensure_ruleset(ruleset).await;
            held.map(|held| (generation, held))
        };
        let ((held, listed), elements) = futures::join!(reads, sets);
        let streaming = match (vips, &held, &listed, &elements) {
            (VipMode::Route, Ok(held), Some(Ok(listed)), Ok((_, elements))) => {
                reconciler.holds_nothing_ownable(held, listed, elements)
            }
            _ => false,
        };
        tracing::debug!(streaming, services = feed.remaining(), "first full sync");
        feed.feed(reconciler, if streaming { FIRST_CHUNK } else { usize::MAX });
        let mut remaining = feed.remaining();
        let mut report = Kernel {
            ipvs: &mut ReadAhead::new(&mut **ipvs, listed),
            link: &mut ReadAhead::new(&mut **link, Some(held)),
            nft: &mut ReadAhead::new(&mut **nft, Some(elements)),
            conntrack: &mut **conntrack,
        }
        .sync_with(reconciler, ruleset, conntrack_cleanup, true, feed)
        .await;
        let mut services_synced = report.services_synced;
        let mut broken = stops_streaming(&report);
        while feed.remaining() > 0 && !broken {
            if feed.remaining() == remaining {
                // The last sync wrote nothing to hand over more beside.
                feed.feed(reconciler, FIRST_CHUNK);
            }
            remaining = feed.remaining();
            let next = self
                .sync_with(reconciler, ruleset, conntrack_cleanup, false, feed)
                .await;
            services_synced += next.services_synced;
            broken = stops_streaming(&next);
            report.absorb(next);
        }
        if broken {
            feed.feed(reconciler, usize::MAX);
        } else if streaming && reconciler.has_dirty() {
            // The services handed over during the last sync.
            let last = self
                .sync(reconciler, ruleset, conntrack_cleanup, false)
                .await;
            services_synced += last.services_synced;
            report.absorb(last);
        }
        report.services_synced = services_synced;
        report
    }

    /// [`Kernel::sync`], with `feed` handing over services while the
    /// kernel takes the IPVS writes.
    async fn sync_with(
        &mut self,
        reconciler: &mut Reconciler,
        ruleset: &NftRuleset,
        conntrack_cleanup: bool,
        full: bool,
        feed: &mut (dyn Feed + Send),
    ) -> SyncReport {
        let mut report = SyncReport::default();
        let reads_ahead = reconciler.syncs_in_full(full);
        let Kernel {
            ipvs,
            link,
            nft,
            conntrack,
        } = self;
        let nft_changes = async {
            let changes = reconciler
                .nft_changes(*nft, ruleset, full, &mut report)
                .await;
            reconciler.nft_batches(changes, full)
        };
        let reads = async {
            if !reads_ahead {
                return (None, None);
            }
            let held = link.ensure_link().await;
            // The reconciler stops at a failed link read and lists nothing.
            let listed = match held {
                Ok(_) => Some(ipvs.list_virtual_servers().await),
                Err(_) => None,
            };
            (Some(held), listed)
        };
        let (batches, (held, listed)) = futures::join!(nft_changes, reads);
        let mut link = ReadAhead::new(&mut **link, held);
        let mut ipvs = ReadAhead::new(&mut **ipvs, listed);
        let starts: Vec<Option<VirtualServerKey>> = batches.iter().map(|b| b.from).collect();
        let (answered, nft_answered) = tokio::sync::watch::channel(0);
        let nft = &mut **nft;
        let transactions = async {
            let mut results = Vec::with_capacity(batches.len());
            for batch in &batches {
                results.push(nft.apply(&batch.changes).await);
                // Nobody waiting is fine: the IPVS leg may be done already.
                let _ = answered.send(results.len());
            }
            results
        };
        let mut ipvs = AfterNft::new(&mut ipvs, nft_answered.clone(), &starts);
        let mut link = AfterNft::new(&mut link, nft_answered, &starts);
        let ipvs_sync = async {
            if full {
                reconciler
                    .full_sync_feeding(&mut ipvs, &mut link, feed)
                    .await
            } else {
                reconciler
                    .sync_dirty_feeding(&mut ipvs, &mut link, feed)
                    .await
            }
        };
        let (results, ipvs) = futures::join!(transactions, ipvs_sync);
        for (batch, result) in batches.iter().zip(results) {
            reconciler.nft_applied(&batch.changes, result, &mut report);
        }
        if ipvs
            .errors
            .iter()
            .any(|e| matches!(e.kernel_error(), KernelError::ConnectionLost(_)))
        {
            // The socket is rebuilt; what it was doing is unknown.
            reconciler.require_full_sync();
        }
        report.absorb(ipvs);
        if conntrack_cleanup {
            reconciler.clear_stale_flows(*conntrack, &mut report).await;
        } else {
            reconciler.forget_stale_flows();
        }
        report
    }
}

/// An IPVS or kube-ipvs0 kernel whose first read of a full sync was made
/// ahead (see [`Kernel::sync`]): the first call of that read gets its
/// answer, however it came out; every other call, and that read's next
/// ones, go to the kernel. The read is [`AddressKernel::ensure_link`] for
/// kube-ipvs0 and [`IpvsKernel::list_virtual_servers`] for IPVS (which
/// [`IpvsKernel::dump`] calls first).
struct ReadAhead<'k, T, R> {
    kernel: &'k mut T,
    answer: Option<Result<R, KernelError>>,
}

impl<'k, T, R> ReadAhead<'k, T, R> {
    fn new(kernel: &'k mut T, answer: Option<Result<R, KernelError>>) -> Self {
        ReadAhead { kernel, answer }
    }
}

impl<K: IpvsKernel> IpvsKernel for ReadAhead<'_, K, Vec<ListedVirtualServer>> {
    async fn list_virtual_servers(&mut self) -> Result<Vec<ListedVirtualServer>, KernelError> {
        match self.answer.take() {
            Some(answer) => answer,
            None => self.kernel.list_virtual_servers().await,
        }
    }

    async fn list_real_servers(
        &mut self,
        keys: &[VirtualServerKey],
    ) -> Result<Vec<ListedRealServers>, KernelError> {
        self.kernel.list_real_servers(keys).await
    }

    async fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), KernelError>> {
        self.kernel.apply(ops).await
    }

    fn prepare(ops: &[Op]) -> Prepared {
        K::prepare(ops)
    }

    async fn apply_prepared(
        &mut self,
        ops: &[Op],
        prepared: Prepared,
    ) -> Vec<Result<(), KernelError>> {
        self.kernel.apply_prepared(ops, prepared).await
    }
}

impl<A: AddressKernel> AddressKernel for ReadAhead<'_, A, Vec<IpAddr>> {
    async fn ensure_link(&mut self) -> Result<Vec<IpAddr>, KernelError> {
        match self.answer.take() {
            Some(answer) => answer,
            None => self.kernel.ensure_link().await,
        }
    }

    async fn add_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        self.kernel.add_address(addr).await
    }

    async fn add_addresses(&mut self, addrs: &[IpAddr]) -> Vec<Result<(), KernelError>> {
        self.kernel.add_addresses(addrs).await
    }

    async fn del_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        self.kernel.del_address(addr).await
    }
}

/// Whether a sync of a streamed cold sync failed in a way that ends the
/// streaming: a read of the kernel, or a connection lost with its answers.
fn stops_streaming(report: &SyncReport) -> bool {
    report.errors.iter().any(|error| {
        matches!(error, SyncError::Read { .. })
            || matches!(error.kernel_error(), KernelError::ConnectionLost(_))
    })
}

/// The nftables sets read ahead, with the generation read just before them.
impl<N: NftKernel> NftKernel for ReadAhead<'_, N, (Option<u32>, Vec<NftElement>)> {
    async fn ensure_ruleset(
        &mut self,
        ruleset: &NftRuleset,
    ) -> Result<Vec<NftElement>, KernelError> {
        match self.answer.take() {
            Some(answer) => answer.map(|(_, held)| held),
            None => self.kernel.ensure_ruleset(ruleset).await,
        }
    }

    async fn dump_elements(&mut self) -> Result<Vec<NftElement>, KernelError> {
        self.kernel.dump_elements().await
    }

    /// While the read made ahead is held, the generation read before it,
    /// which is the one that read is tied to.
    async fn generation(&mut self) -> Option<u32> {
        match &self.answer {
            Some(Ok((generation, _))) => *generation,
            Some(Err(_)) => None,
            None => self.kernel.generation().await,
        }
    }

    async fn apply(&mut self, changes: &[crate::desired::NftChange]) -> Result<(), KernelError> {
        self.kernel.apply(changes).await
    }

    async fn delete_table(&mut self) -> Result<bool, KernelError> {
        self.kernel.delete_table().await
    }
}

/// An IPVS or kube-ipvs0 kernel whose writes wait until the sync's
/// nftables transactions they depend on have been answered, and whose reads
/// do not: a sync reads the kernel and works out its first chunk of IPVS
/// operations while a transaction runs on its blocking thread, and still
/// writes nothing before the sets it depends on are in place. IPVS writes
/// wait for the transactions that begin at or before the last virtual
/// server they touch; kube-ipvs0 writes wait for every transaction.
struct AfterNft<'k, T> {
    kernel: &'k mut T,
    /// How many of the sync's transactions have been answered.
    answered: tokio::sync::watch::Receiver<usize>,
    /// Where in key order each transaction's writes begin (see
    /// [`crate::reconcile::NftBatch`]).
    starts: &'k [Option<VirtualServerKey>],
}

impl<'k, T> AfterNft<'k, T> {
    fn new(
        kernel: &'k mut T,
        answered: tokio::sync::watch::Receiver<usize>,
        starts: &'k [Option<VirtualServerKey>],
    ) -> Self {
        AfterNft {
            kernel,
            answered,
            starts,
        }
    }

    /// Returns once the first `count` transactions have been answered.
    async fn answered(&mut self, count: usize) {
        // An error means the sender is gone: nothing is left to wait for.
        let _ = self.answered.wait_for(|answered| *answered >= count).await;
    }

    /// Returns once every transaction has been answered.
    async fn all_answered(&mut self) {
        self.answered(self.starts.len()).await;
    }
}

impl<K: IpvsKernel> IpvsKernel for AfterNft<'_, K> {
    async fn list_virtual_servers(&mut self) -> Result<Vec<ListedVirtualServer>, KernelError> {
        self.kernel.list_virtual_servers().await
    }

    async fn list_real_servers(
        &mut self,
        keys: &[VirtualServerKey],
    ) -> Result<Vec<ListedRealServers>, KernelError> {
        self.kernel.list_real_servers(keys).await
    }

    async fn dump(&mut self) -> Result<Vec<KernelVirtualServer>, KernelError> {
        self.kernel.dump().await
    }

    async fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), KernelError>> {
        self.apply_prepared(ops, Self::prepare(ops)).await
    }

    fn prepare(ops: &[Op]) -> Prepared {
        K::prepare(ops)
    }

    async fn apply_prepared(
        &mut self,
        ops: &[Op],
        prepared: Prepared,
    ) -> Vec<Result<(), KernelError>> {
        match ops.iter().map(Op::virtual_server).max() {
            Some(last) => self.answered(batches_before(self.starts, last)).await,
            None => self.all_answered().await,
        }
        self.kernel.apply_prepared(ops, prepared).await
    }
}

impl<A: AddressKernel> AddressKernel for AfterNft<'_, A> {
    async fn ensure_link(&mut self) -> Result<Vec<IpAddr>, KernelError> {
        self.kernel.ensure_link().await
    }

    async fn add_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        self.all_answered().await;
        self.kernel.add_address(addr).await
    }

    async fn add_addresses(&mut self, addrs: &[IpAddr]) -> Vec<Result<(), KernelError>> {
        self.all_answered().await;
        self.kernel.add_addresses(addrs).await
    }

    async fn del_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        self.all_answered().await;
        self.kernel.del_address(addr).await
    }
}

impl Loop<'_> {
    /// Folds `events` into the model and keeps the kernel in sync until
    /// `shutdown` completes (or, with `--once`, after one verified sync).
    pub async fn serve<K, A, N, C, F, Fut>(
        self,
        mut events: Events,
        mut kernel: Kernel<'_, K, A, N, C>,
        mut refresh_node: F,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()>
    where
        K: IpvsKernel,
        A: AddressKernel,
        N: NftKernel,
        C: ConntrackKernel,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<NodeFacts>>,
    {
        let opts = self.opts;
        let mut ruleset = self.ruleset;
        let mut reconciler = Reconciler::new(ownership(opts));
        reconciler.set_verify_rounds(opts.verify_rounds());
        reconciler.set_node_addresses(self.node.node_addresses.clone());
        if !opts.pod_cidrs_from_node() {
            reconciler.set_local_pod_cidrs(&opts.cluster_cidr);
        }
        let health = ServiceHealthServers::new(
            healthcheck::listen_addresses(!opts.nodeport_addresses.is_empty(), &self.node),
            self.metrics.clone(),
            opts.ipvs_sync_period,
        );
        let mut state = State {
            model: Model::new(self.node.name.clone()),
            node: self.node,
            translate: self.translate,
            reconciler,
            pod_cidrs_from_node: opts.pod_cidrs_from_node(),
            node_port_primary: opts.node_port_primary(),
            handover: Handover::new(self.metrics.clone(), self.events.clone(), health),
            metrics: self.metrics,
            events: self.events,
            pending: Vec::new(),
            first_sync_begun: false,
            spent: Spent::default(),
        };
        let mut synced = false;
        let mut startup = Startup::new();
        let mut last_sync: Option<Instant> = None;
        let mut next_full: Option<Instant> = None;
        // Consecutive failed reads of the node's addresses.
        let mut node_read: Option<Backoff> = None;
        let mut shutdown = std::pin::pin!(shutdown);

        loop {
            let wake = synced
                .then(|| next_wake(&state.reconciler, last_sync, next_full, opts))
                .flatten();
            tokio::select! {
                event = events.next() => {
                    let Some(event) = event else { return Err(Error::SourceEnded(self.source_name)) };
                    let applying = Instant::now();
                    let Some(now_synced) = apply_ready(event, &mut events, |event| state.apply(event)) else {
                        return Err(Error::SourceEnded(self.source_name));
                    };
                    startup.applied(applying, now_synced && !synced);
                    synced |= now_synced;
                }
                () = sleep_until(wake) => {
                    let started = Instant::now();
                    if next_full.is_none_or(|t| t <= started) {
                        // A failed read keeps the last known facts: the
                        // sync goes on, and the next full sync, brought
                        // forward by the read's backoff, reads again.
                        match refresh_node().await {
                            Ok(node) => {
                                node_read = None;
                                state.set_node(node);
                            }
                            Err(error) => {
                                tracing::warn!(%error, "cannot read this node's addresses; keeping the last known ones and reading again with backoff");
                                state.metrics.record_node_address_read_failure();
                                // Counted from the failure, not from the
                                // sync's start: a slow failed read must not
                                // eat into the wait before the next one.
                                node_read = Some(Backoff::after_failure(node_read, Instant::now()));
                            }
                        }
                        if state.node.ipv6 && !ruleset.ipv6 {
                            // IPv6 came up after start: this full sync makes
                            // the ip6 table, with the modules its rules need.
                            if let Err(error) = load_ipv6_packet_path_modules() {
                                tracing::warn!(%error, "the ip6 table's rules may not load");
                            }
                            ruleset.ipv6 = true;
                        }
                        state.retry_health_checks();
                        let report = if state.first_sync_begun {
                            kernel.sync(&mut state.reconciler, &ruleset, opts.conntrack_cleanup, true).await
                        } else {
                            state.first_full_sync(&mut kernel, &ruleset, opts.conntrack_cleanup, opts.ipvs_vip_mode).await
                        };
                        startup.first_sync_done(started);
                        log_sync("full", &report, started, &state.metrics);
                        state.report_sync_errors(&report);
                        // A sync that could not list keeps the last counters.
                        if let Some(read) = &report.traffic {
                            state.metrics.set_virtual_server_traffic(state.reconciler.traffic(read).map(
                                |(service, key, counters)| VirtualServerSample {
                                    service: service.clone(),
                                    key: *key,
                                    counters: *counters,
                                },
                            ));
                        }
                        // The first sync and relists free far more than they keep.
                        crate::heap::release_free_memory();
                        next_full = Some(next_full_sync(Instant::now(), opts.ipvs_sync_period, node_read));
                        if opts.once {
                            return verify(&mut state.reconciler, &mut kernel, opts, &ruleset, report, &state.metrics).await;
                        }
                    } else {
                        let report = kernel.sync(&mut state.reconciler, &ruleset, opts.conntrack_cleanup, false).await;
                        log_sync("incremental", &report, started, &state.metrics);
                        state.report_sync_errors(&report);
                    }
                    last_sync = Some(Instant::now());
                }
                () = &mut shutdown => return Ok(()),
            }
        }
    }
}

/// Where the run loop's start-up went, logged once at the end of the first
/// full sync: the time waiting for the sources' initial lists (the API's
/// answers and their decoding), the time in the model and translation, and
/// the first sync itself. `run` logs the time before the loop.
#[derive(Debug)]
struct Startup {
    serving: Instant,
    /// Time spent applying events to the model, until the lists were in.
    applying: std::time::Duration,
    /// When the last initial list was in, after `serving`.
    lists_in: Option<std::time::Duration>,
    logged: bool,
}

impl Startup {
    fn new() -> Self {
        Startup {
            serving: Instant::now(),
            applying: std::time::Duration::ZERO,
            lists_in: None,
            logged: false,
        }
    }

    /// One event applied since `since`; `lists_in` when it completed the
    /// initial lists.
    fn applied(&mut self, since: Instant, lists_in: bool) {
        if self.lists_in.is_none() {
            self.applying += since.elapsed();
            if lists_in {
                self.lists_in = Some(self.serving.elapsed());
            }
        }
    }

    /// A full sync that began at `sync_started` is done: the first after
    /// the lists logs the breakdown.
    fn first_sync_done(&mut self, sync_started: Instant) {
        let Some(lists_in) = self.lists_in.filter(|_| !self.logged) else {
            return;
        };
        self.logged = true;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        tracing::info!(
            waiting_for_lists_ms = ms(lists_in.saturating_sub(self.applying)),
            model_ms = ms(self.applying),
            first_sync_ms = ms(sync_started.elapsed()),
            elapsed_ms = ms(self.serving.elapsed()),
            "first sync after start"
        );
    }
}

/// `--once`: the kernel matches when a second full sync has nothing to write.
async fn verify<K: IpvsKernel, A: AddressKernel, N: NftKernel, C: ConntrackKernel>(
    reconciler: &mut Reconciler,
    kernel: &mut Kernel<'_, K, A, N, C>,
    opts: &Options,
    ruleset: &NftRuleset,
    first: SyncReport,
    metrics: &Metrics,
) -> Result<()> {
    let started = Instant::now();
    // Every real server, not a window of them.
    reconciler.require_full_sync();
    let second = kernel
        .sync(reconciler, ruleset, opts.conntrack_cleanup, true)
        .await;
    log_sync("verify", &second, started, metrics);
    if first.is_clean() && second.is_clean() && second.writes == 0 {
        return Ok(());
    }
    let errors: Vec<String> = first
        .errors
        .iter()
        .chain(&second.errors)
        .map(ToString::to_string)
        .collect();
    Err(Error::NotConverged(format!(
        "the kernel does not match the desired state after one sync ({} writes on verification; errors: {})",
        second.writes,
        if errors.is_empty() { "none".to_owned() } else { errors.join("; ") }
    )))
}

/// When the loop must next sync: the full-sync deadline, a due retry, or
/// pending changes once the minimum period since the last sync has passed.
fn next_wake(
    reconciler: &Reconciler,
    last_sync: Option<Instant>,
    next_full: Option<Instant>,
    opts: &Options,
) -> Option<Instant> {
    let now = Instant::now();
    let Some(next_full) = next_full else {
        return Some(now);
    };
    let earliest = last_sync.map_or(now, |t| t + opts.ipvs_min_sync_period);
    let dirty = reconciler.has_dirty().then_some(earliest);
    let retry = reconciler.next_retry().map(|t| t.max(earliest));
    [Some(next_full), dirty, retry].into_iter().flatten().min()
}

/// When the next full sync is due: a sync period from `now`, or sooner when
/// the node's addresses could not be read (the full sync reads them again).
fn next_full_sync(
    now: Instant,
    period: std::time::Duration,
    node_read: Option<Backoff>,
) -> Instant {
    let due = now + period;
    node_read.map_or(due, |b| b.retry_at.min(due))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => futures::future::pending().await,
    }
}

/// Reads the sources until their initial lists are complete.
async fn load_model(opts: &Options, node_name: &str) -> Result<Model> {
    let mut model = Model::new(node_name);
    if let Some(dir) = &opts.manifests {
        let errors = source::manifests::read_events(dir, |event| {
            log_rejected(&model.apply(event));
        });
        for error in &errors {
            tracing::error!(%error, "skipping document");
        }
        return Ok(model);
    }
    // `plan` serves no metrics: its requests are counted unseen.
    let (mut events, name, _) = open_source(opts, node_name, &Metrics::new()).await?;
    while let Some(event) = events.next().await {
        let changes = model.apply(event);
        log_rejected(&changes);
        if changes.synced {
            return Ok(model);
        }
    }
    Err(Error::SourceEnded(name))
}

fn log_rejected(changes: &Changes) {
    for error in &changes.errors {
        tracing::error!(%error, "rejected object");
    }
}

/// `kube-ipvs-proxy plan`: the desired state in `ipvsadm -Sn` syntax.
pub async fn plan(opts: &Options) -> Result<String> {
    let node_name = opts.node_name();
    let model = load_model(opts, &node_name).await?;
    let node = node_facts(opts, &node_name).await?;
    let cfg = translate_config(opts)?;
    let (desired, warnings) = crate::translate::translate_model(&model, &node, &cfg);
    for warning in &warnings {
        tracing::warn!(%warning, "translating service");
    }
    let vips = match opts.ipvs_vip_mode {
        VipMode::Address => crate::plan::Vips::OnInterface(&opts.ipvs_interface),
        VipMode::Route => crate::plan::Vips::LocalRoutes,
    };
    let mut out = crate::plan::render(desired.iter(), vips);
    let pod_cidrs = if opts.pod_cidrs_from_node() {
        model
            .node()
            .map(|n| n.pod_cidrs.clone())
            .unwrap_or_default()
    } else {
        opts.cluster_cidr.clone()
    };
    let pod_cidr_elements = crate::reconcile::pod_cidr_elements(&pod_cidrs);
    let elements = desired
        .values()
        .flat_map(|d| &d.nft_elements)
        .chain(&pod_cidr_elements);
    // Writing into a String cannot fail.
    let table = crate::kernel::nftables::render_ruleset(&nft_ruleset(opts, &node)?);
    let _ = crate::plan::render_packet_path(&table, elements, &warnings, &mut out);
    Ok(out)
}

/// `kube-ipvs-proxy cleanup`: removes what the proxy owns, then kube-ipvs0
/// unless addresses it does not own (inside `--ipvs-exclude-cidrs`) remain.
pub async fn cleanup(opts: &Options) -> Result<()> {
    let mut ipvs = NetlinkIpvs::connect().await?;
    let mut link = DummyLink::new(&opts.ipvs_interface)?
        .with_mode(opts.ipvs_vip_mode, &opts.ipvs_exclude_cidrs);
    let node = node_facts(opts, &opts.node_name()).await?;
    let mut reconciler = Reconciler::new(ownership(opts));
    reconciler.set_node_addresses(node.node_addresses);
    let started = Instant::now();
    let report = reconciler.cleanup(&mut ipvs, &mut link).await;
    log_sync("cleanup", &report, started, &Metrics::new());
    // kube-ipvs0 goes only when nothing is left on it: addresses inside
    // --ipvs-exclude-cidrs are not the proxy's, and keep their interface.
    let left = link.ensure_link().await?;
    let deleted = if left.is_empty() {
        link.delete().await?
    } else {
        tracing::info!(interface = %opts.ipvs_interface, kept = ?left, "the interface keeps addresses the proxy does not own, so it stays");
        false
    };
    let mut nft = NetlinkNft::new().map_err(Error::Nftables)?;
    let table_deleted = nft.delete_table().await.map_err(Error::Nftables)?;
    tracing::info!(interface = %opts.ipvs_interface, deleted, table_deleted, "cleanup done");
    if report.is_clean() {
        Ok(())
    } else {
        Err(Error::NotConverged(format!(
            "cleanup left {} errors",
            report.errors.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::{FailOn, FakeConntrack, FakeKernel, FakeNft};
    use crate::model::TO_BE_DELETED_TAINT as TO_BE_DELETED;
    use clap::Parser;
    use std::sync::Arc;
    use std::time::Duration;

    fn opts(args: &[&str]) -> Options {
        crate::cli::Cli::parse_from(std::iter::once("kube-ipvs-proxy").chain(args.iter().copied()))
            .options
    }

    /// `n` events ready at once (a page of a list), then `then`.
    fn ready_events(n: usize, then: impl Stream<Item = SourceEvent> + Send + 'static) -> Events {
        let page = (0..n).map(|_| SourceEvent::Service(Update::ListStart));
        Box::pin(futures::stream::iter(page).chain(then))
    }

    #[test]
    fn a_turn_of_the_loop_folds_in_every_event_the_source_has_ready() {
        use futures::FutureExt;
        let then = futures::stream::iter([SourceEvent::Synced]).chain(futures::stream::pending());
        let mut events = ready_events(EVENTS_PER_TURN + 10, then);
        let applied = std::cell::Cell::new(0);
        let apply = |event: SourceEvent| {
            applied.set(applied.get() + 1);
            matches!(event, SourceEvent::Synced)
        };
        let mut turn = || {
            let first = events
                .next()
                .now_or_never()
                .flatten()
                .expect("an event is ready");
            apply_ready(first, &mut events, apply)
        };
        // At most EVENTS_PER_TURN in one turn; the next takes the rest up
        // to where the source has nothing ready, the end of the lists
        // included.
        assert_eq!(turn(), Some(false));
        assert_eq!(applied.get(), EVENTS_PER_TURN);
        assert_eq!(turn(), Some(true));
        assert_eq!(applied.get(), EVENTS_PER_TURN + 11);
    }

    #[test]
    fn a_source_that_ends_among_ready_events_is_reported_once_they_are_in() {
        use futures::FutureExt;
        let mut events = ready_events(3, futures::stream::empty());
        let mut applied = 0;
        let first = events
            .next()
            .now_or_never()
            .flatten()
            .expect("an event is ready");
        let result = apply_ready(first, &mut events, |_| {
            applied += 1;
            false
        });
        assert_eq!(result, None);
        assert_eq!(applied, 3);
    }

    #[test]
    fn primary_addresses_are_the_first_of_each_family() {
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [
                {"type": "ExternalIP", "address": "203.0.113.7"},
                {"type": "InternalIP", "address": "192.0.2.7"},
                {"type": "InternalIP", "address": "192.0.2.8"},
                {"type": "ExternalIP", "address": "2001:db8::7"},
            ]},
        }))
        .unwrap();
        let node = crate::model::NodeInfo::from_node(&node).unwrap();
        let want: Vec<IpAddr> = vec!["192.0.2.7".parse().unwrap(), "2001:db8::7".parse().unwrap()];
        assert_eq!(
            primary_addresses(&node),
            want,
            "InternalIPs first; an ExternalIP where a family has no InternalIP"
        );
    }

    #[test]
    fn first_wake_is_immediate_then_min_sync_period_coalesces() {
        let opts = opts(&["--ipvs-min-sync-period", "2s", "--ipvs-sync-period", "60s"]);
        let reconciler = Reconciler::new(Ownership::default());
        let before = Instant::now();
        let wake = next_wake(&reconciler, None, None, &opts).unwrap();
        assert!(
            wake >= before && wake <= Instant::now(),
            "first sync is due at once"
        );

        // Nothing dirty: only the full-sync deadline remains.
        let last = Instant::now();
        let full = last + Duration::from_secs(60);
        assert_eq!(
            next_wake(&reconciler, Some(last), Some(full), &opts),
            Some(full)
        );
    }

    #[test]
    fn dirty_services_wait_for_the_min_sync_period() {
        use crate::desired::*;
        let opts = opts(&["--ipvs-min-sync-period", "2s"]);
        let mut reconciler = Reconciler::new(Ownership::default());
        let key = VirtualServerKey {
            addr: "10.96.0.10".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        };
        reconciler.set_service(
            ServiceName::new("default", "web"),
            Some(ServiceDesired {
                virtual_servers: vec![DesiredVirtualServer {
                    server: VirtualServer {
                        key,
                        scheduler: "rr".into(),
                        persistence: None,
                    },
                    real_servers: vec![],
                }],
                bind_addrs: vec![key.addr],
                ..Default::default()
            }),
        );
        assert!(reconciler.has_dirty());
        let last = Instant::now();
        let full = last + Duration::from_secs(60);
        assert_eq!(
            next_wake(&reconciler, Some(last), Some(full), &opts),
            Some(last + Duration::from_secs(2))
        );
    }

    /// One GET to 127.0.0.1:`port`: the status and the body, or why not.
    async fn health_check_get(port: u16) -> std::io::Result<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
            .await?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await?;
        let status = raw.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Ok((status, body.to_owned()))
    }

    /// Asks until the answer is `status` (the loop runs beside the test).
    async fn health_check_answer(port: u16, status: u16) -> String {
        for _ in 0..1000 {
            if let Ok((got, body)) = health_check_get(port).await {
                if got == status {
                    return body;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("127.0.0.1:{port} never answered {status}");
    }

    #[tokio::test]
    async fn the_loop_opens_updates_and_closes_health_check_ports() {
        use crate::kernel::fake::{FakeConntrack, FakeKernel, FakeNft};
        use crate::source::EndpointSlice;
        use crate::source::Update;
        use k8s_openapi::api::core::v1::Service;
        use serde_json::json;

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        // --nodeport-addresses: the servers listen on the node's addresses.
        let opts = opts(&[
            "--nodeport-addresses",
            "127.0.0.1/32",
            "--ipvs-sync-period",
            "1h",
        ]);
        let node = NodeFacts {
            name: "n1".into(),
            node_addresses: vec!["127.0.0.1".parse().unwrap()],
            local_addresses: vec![],
            ipv4: true,
            ipv6: false,
        };
        let service: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10",
                     "externalTrafficPolicy": "Local", "healthCheckNodePort": port,
                     "ports": [{"port": 80, "nodePort": 30080}]},
        }))
        .unwrap();
        let slice = |node_name: &str| -> EndpointSlice {
            serde_json::from_value(json!({
                "metadata": {"namespace": "default", "name": "web-1",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"port": 8080}],
                "endpoints": [{"addresses": ["10.244.0.5"], "nodeName": node_name}],
            }))
            .unwrap()
        };
        let (send, events) = futures::channel::mpsc::unbounded();
        let send = |event| send.unbounded_send(event).unwrap();
        send(SourceEvent::service(Update::Apply(service.clone())));
        send(SourceEvent::slice(Update::Apply(slice("n1"))));
        send(SourceEvent::Synced);

        let (mut ipvs, mut link) = (FakeKernel::new(), FakeKernel::new());
        let (mut nft, mut conntrack) = (FakeNft::default(), FakeConntrack::default());
        let refresh = {
            let node = node.clone();
            move || std::future::ready(Ok(node.clone()))
        };
        let (stop, stopped) = futures::channel::oneshot::channel::<()>();
        let serve = Loop {
            opts: &opts,
            node,
            translate: TranslateConfig::default(),
            ruleset: NftRuleset::default(),
            source_name: "test",
            metrics: Metrics::new(),
            events: EventSink::disabled(),
        }
        .serve(
            Box::pin(events),
            Kernel {
                ipvs: &mut ipvs,
                link: &mut link,
                nft: &mut nft,
                conntrack: &mut conntrack,
            },
            refresh,
            async {
                let _ = stopped.await;
            },
        );
        let client = async {
            let body = health_check_answer(port, 200).await;
            assert!(body.contains("\"localEndpoints\": 1"), "{body}");

            // The endpoint moves to another node: the same server says 503.
            send(SourceEvent::slice(Update::Apply(slice("n2"))));
            let body = health_check_answer(port, 503).await;
            assert!(body.contains("\"localEndpoints\": 0"), "{body}");

            // The service goes, and its port with it.
            send(SourceEvent::service(Update::Delete(service)));
            // (A connection accepted just before the close is reset instead.)
            let mut refused = false;
            for _ in 0..1000 {
                let answer = health_check_get(port).await;
                if answer.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused) {
                    refused = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(refused, "the port closes with its service");
            let _ = stop.send(());
        };
        let (result, ()) = tokio::join!(serve, client);
        assert!(result.is_ok(), "{result:?}");
    }

    /// The loop on fake kernels, with a clock for health that the test moves.
    struct FakeRun {
        clock: Arc<std::sync::Mutex<SystemTime>>,
        metrics: Metrics,
        opts: Options,
        node: NodeFacts,
    }

    impl FakeRun {
        fn new() -> FakeRun {
            let clock = Arc::new(std::sync::Mutex::new(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            ));
            let metrics = {
                let clock = clock.clone();
                Metrics::with_clock(move || *clock.lock().unwrap())
            };
            FakeRun {
                clock,
                metrics,
                opts: opts(&["--ipvs-sync-period", "30s", "--ipvs-min-sync-period", "0s"]),
                node: NodeFacts {
                    name: "node-1".into(),
                    node_addresses: vec![],
                    local_addresses: vec![],
                    ipv4: true,
                    ipv6: false,
                },
            }
        }

        /// Moves the health clock on.
        fn advance(&self, by: Duration) {
            *self.clock.lock().unwrap() += by;
        }

        /// Runs the loop on `ipvs` with the events of `events` until `test` ends.
        async fn run(
            &self,
            ipvs: &mut FakeKernel,
            events: futures::channel::mpsc::UnboundedReceiver<SourceEvent>,
            test: impl std::future::Future<Output = ()>,
        ) {
            let (mut link, mut nft, mut conntrack) =
                (FakeKernel::new(), FakeNft::new(), FakeConntrack::default());
            let kernel = Kernel {
                ipvs,
                link: &mut link,
                nft: &mut nft,
                conntrack: &mut conntrack,
            };
            let loop_ = Loop {
                opts: &self.opts,
                node: self.node.clone(),
                translate: TranslateConfig::default(),
                ruleset: NftRuleset::default(),
                source_name: "test",
                metrics: self.metrics.clone(),
                events: EventSink::disabled(),
            };
            let facts = self.node.clone();
            let refresh = move || std::future::ready(Ok(facts.clone()));
            let (stop, stopped) = futures::channel::oneshot::channel::<()>();
            let serve = loop_.serve(Box::pin(events), kernel, refresh, async {
                let _ = stopped.await;
            });
            let test = async {
                test.await;
                let _ = stop.send(());
            };
            let (result, ()) = tokio::join!(serve, test);
            result.unwrap();
        }
    }

    /// Waits until the loop has recorded `series` at least `at_least` times.
    /// The bound only turns a regression into a failure instead of a hang.
    async fn wait_for(metrics: &Metrics, series: &str, at_least: f64) {
        for _ in 0..1000 {
            let text = metrics.encode();
            let value = text
                .lines()
                .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok());
            if value.is_some_and(|v: f64| v >= at_least) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{series} never reached {at_least}:\n{}", metrics.encode());
    }

    /// Waits until `/healthz` answers `healthy`.
    async fn wait_for_healthz(metrics: &Metrics, period: Duration, healthy: bool) {
        for _ in 0..1000 {
            if metrics.health(period).healthy == healthy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("/healthz never became healthy={healthy}");
    }

    fn node(name: &str, taint: Option<&str>) -> k8s_openapi::api::core::v1::Node {
        use k8s_openapi::api::core::v1::{Node, NodeSpec, Taint};
        let mut node = Node::default();
        node.metadata.name = Some(name.into());
        node.spec = Some(NodeSpec {
            taints: taint.map(|key| {
                vec![Taint {
                    key: key.into(),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                }]
            }),
            ..NodeSpec::default()
        });
        node
    }

    #[tokio::test]
    async fn a_full_sync_exposes_the_dumped_counters_of_each_owned_virtual_server() {
        use crate::desired::{Protocol, VirtualServer, VirtualServerKey};
        use crate::kernel::{KernelVirtualServer, TrafficCounters};
        let run = FakeRun::new();
        let key = VirtualServerKey {
            addr: "10.96.0.10".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        };
        // Left by a previous run, with traffic: the first full sync adopts it.
        let mut ipvs = FakeKernel::new();
        ipvs.insert_virtual_server(KernelVirtualServer {
            server: VirtualServer {
                key,
                scheduler: "rr".into(),
                persistence: None,
            },
            real_servers: vec![],
            connections: Default::default(),
            counters: TrafficCounters {
                connections: 7,
                packets_in: 70,
                packets_out: 50,
                bytes_in: 7000,
                bytes_out: 5000,
            },
        });
        let service = serde_json::json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]},
        });
        let (events, source) = futures::channel::mpsc::unbounded();
        for event in [
            SourceEvent::service(Update::Replace(vec![
                serde_json::from_value(service).unwrap()
            ])),
            SourceEvent::Synced,
        ] {
            events.unbounded_send(event).unwrap();
        }
        run.run(&mut ipvs, source, async {
            let labels = r#"namespace="default",service="web",protocol="TCP",address="10.96.0.10",port="80""#;
            #[rustfmt::skip]
            let expected = [
                (format!("kube_ipvs_proxy_virtual_server_connections_total{{{labels}}}"), 7.0),
                (format!(r#"kube_ipvs_proxy_virtual_server_packets_total{{{labels},direction="in"}}"#), 70.0),
                (format!(r#"kube_ipvs_proxy_virtual_server_bytes_total{{{labels},direction="out"}}"#), 5000.0),
            ];
            for (series, value) in expected {
                wait_for(&run.metrics, &series, value).await;
            }
        })
        .await;
    }

    #[tokio::test]
    async fn a_kernel_that_cannot_be_read_fails_healthz_and_livez_after_two_sync_periods() {
        let run = FakeRun::new();
        let period = run.opts.ipvs_sync_period;
        let mut ipvs = FakeKernel::new();
        ipvs.fail_always(FailOn::IpvsDump, KernelError::Other("EPERM".into()));
        let (events, source) = futures::channel::mpsc::unbounded();
        events.unbounded_send(SourceEvent::Synced).unwrap();
        run.run(&mut ipvs, source, async {
            let failures = "kube_ipvs_proxy_kernel_read_failures_total{kind=\"full\"}";
            wait_for(&run.metrics, failures, 1.0).await;
            let text = run.metrics.encode();
            assert!(
                text.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds 0.0"),
                "a failed read is no successful sync:\n{text}"
            );
            run.advance(period * 2 - Duration::from_secs(1));
            assert!(run.metrics.health(period).healthy, "not late yet");
            run.advance(Duration::from_secs(1));
            assert!(!run.metrics.health(period).healthy, "/healthz");
            assert!(!run.metrics.liveness(period).healthy, "/livez, as upstream");
        })
        .await;
        assert!(ipvs.dumps() >= 1);
    }

    #[tokio::test]
    async fn a_node_being_deleted_fails_healthz_but_not_livez() {
        let run = FakeRun::new();
        let period = run.opts.ipvs_sync_period;
        let mut ipvs = FakeKernel::new();
        let (events, source) = futures::channel::mpsc::unbounded();
        events.unbounded_send(SourceEvent::Synced).unwrap();
        run.run(&mut ipvs, source, async {
            wait_for(
                &run.metrics,
                "kube_ipvs_proxy_sync_duration_seconds_count{kind=\"full\"}",
                1.0,
            )
            .await;
            run.advance(period * 3);
            assert!(
                run.metrics.health(period).healthy,
                "a kernel that reads is healthy"
            );

            let cases = [
                (
                    "tainted by the autoscaler",
                    Update::Apply(node("node-1", Some(TO_BE_DELETED))),
                    false,
                ),
                ("untainted", Update::Apply(node("node-1", None)), true),
                (
                    "another node deleted",
                    Update::Delete(node("node-2", None)),
                    true,
                ),
                ("deleted", Update::Delete(node("node-1", None)), false),
            ];
            for (name, update, eligible) in cases {
                events.unbounded_send(SourceEvent::node(update)).unwrap();
                // A Node event changes no service, so nothing else marks it
                // taken in: wait for the answer it must give.
                wait_for_healthz(&run.metrics, period, eligible).await;
                assert!(run.metrics.liveness(period).healthy, "{name}: /livez");
                let body: serde_json::Value =
                    serde_json::from_str(&run.metrics.health(period).body).unwrap();
                assert_eq!(body["nodeEligible"], eligible, "{name}");
            }
        })
        .await;
    }
}

#[cfg(test)]
mod trigger_tests {
    use super::*;

    /// The network programming latency metric starts from the annotation
    /// the EndpointSlice controller writes: the slim slice must keep it.
    #[test]
    fn a_decoded_slice_carries_its_last_change_trigger_time() {
        let slice: crate::source::EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-abc",
                "annotations": {
                    "endpoints.kubernetes.io/last-change-trigger-time": "2026-12-05T10:00:00Z",
                    "other": "x"
                }
            },
            "addressType": "IPv4",
            "endpoints": []
        }))
        .expect("a slice");
        let expected = humantime::parse_rfc3339("2026-12-05T10:00:00Z").unwrap();
        let applied = SourceEvent::slice(Update::Apply(slice));
        assert_eq!(last_change_trigger(&applied), Some(expected));
    }
}

#[cfg(test)]
mod verify_tests {
    use super::*;
    use crate::desired::{DesiredVirtualServer, ServiceDesired, VirtualServer, VirtualServerKey};
    use crate::kernel::fake::{FailOn, FakeConntrack, FakeKernel, FakeNft};
    use crate::source::Update;
    use clap::Parser;

    fn key(i: u8) -> VirtualServerKey {
        VirtualServerKey {
            addr: IpAddr::from([10, 96, 0, i]),
            protocol: Protocol::Tcp,
            port: 80,
        }
    }

    fn web(i: u8) -> ServiceDesired {
        ServiceDesired {
            virtual_servers: vec![DesiredVirtualServer {
                server: VirtualServer {
                    key: key(i),
                    scheduler: "rr".into(),
                    persistence: None,
                },
                real_servers: vec![],
            }],
            bind_addrs: vec![key(i).addr],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn after_a_lost_connection_the_next_sync_reads_every_real_server() {
        let (mut ipvs, mut link) = (FakeKernel::new(), FakeKernel::new());
        let (mut nft, mut conntrack) = (FakeNft::default(), FakeConntrack::default());
        let mut kernel = Kernel {
            ipvs: &mut ipvs,
            link: &mut link,
            nft: &mut nft,
            conntrack: &mut conntrack,
        };
        let mut reconciler = Reconciler::new(Ownership::default());
        reconciler.set_verify_rounds(10);
        let ruleset = NftRuleset::default();
        for i in 1..=20 {
            reconciler.set_service(ServiceName::new("default", &format!("s{i}")), Some(web(i)));
        }
        kernel.sync(&mut reconciler, &ruleset, true, true).await;
        let idle = kernel.ipvs.dump_requests();
        let report = kernel.sync(&mut reconciler, &ruleset, true, true).await;
        assert!(report.is_clean(), "{:?}", report.errors);
        assert_eq!(
            kernel.ipvs.dump_requests() - idle,
            1 + 2,
            "a window of 20 / 10"
        );

        kernel.ipvs.fail_next(
            FailOn::VirtualServer(key(21)),
            KernelError::ConnectionLost("netlink socket: EPIPE".into()),
        );
        reconciler.set_service(ServiceName::new("default", "s21"), Some(web(21)));
        kernel.sync(&mut reconciler, &ruleset, true, false).await;
        let before = kernel.ipvs.dump_requests();
        let report = kernel.sync(&mut reconciler, &ruleset, true, false).await;
        assert!(report.is_clean(), "{:?}", report.errors);
        assert_eq!(
            kernel.ipvs.dump_requests() - before,
            1 + 20,
            "every virtual server's real servers (the lost add never reached the kernel)"
        );
    }

    #[tokio::test]
    async fn once_verifies_every_real_server() {
        let opts = crate::cli::Cli::parse_from(["kube-ipvs-proxy", "--once"]).options;
        assert_eq!(opts.verify_rounds(), 20, "the default window");
        let (send, events) = futures::channel::mpsc::unbounded();
        let services = (1..=30).map(|i| {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "default", "name": format!("s{i}")},
                "spec": {"clusterIP": format!("10.96.0.{i}"), "ports": [{"port": 80}]},
            }))
            .unwrap()
        });
        send.unbounded_send(SourceEvent::service(Update::Replace(services.collect())))
            .unwrap();
        send.unbounded_send(SourceEvent::Synced).unwrap();
        let node = NodeFacts {
            name: "n1".into(),
            node_addresses: vec![],
            local_addresses: vec![],
            ipv4: true,
            ipv6: false,
        };
        let (mut ipvs, mut link) = (FakeKernel::new(), FakeKernel::new());
        let (mut nft, mut conntrack) = (FakeNft::default(), FakeConntrack::default());
        let refresh = {
            let node = node.clone();
            move || std::future::ready(Ok(node.clone()))
        };
        let result = Loop {
            opts: &opts,
            node,
            translate: TranslateConfig::default(),
            ruleset: NftRuleset::default(),
            source_name: "test",
            metrics: Metrics::new(),
            events: EventSink::disabled(),
        }
        .serve(
            Box::pin(events),
            Kernel {
                ipvs: &mut ipvs,
                link: &mut link,
                nft: &mut nft,
                conntrack: &mut conntrack,
            },
            refresh,
            futures::future::pending(),
        )
        .await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(
            ipvs.dump_requests(),
            1 + (1 + 30),
            "the first sync lists the empty table; the verification reads all 30"
        );
    }
}

#[cfg(test)]
mod fault_tests {
    use super::*;
    use crate::kernel::fake::{FakeConntrack, FakeKernel, FakeNft};
    use crate::source::Update;
    use clap::Parser;
    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;

    fn web(key: crate::desired::VirtualServerKey) -> crate::desired::ServiceDesired {
        use crate::desired::*;
        ServiceDesired {
            virtual_servers: vec![DesiredVirtualServer {
                server: VirtualServer {
                    key,
                    scheduler: "rr".into(),
                    persistence: None,
                },
                real_servers: vec![],
            }],
            bind_addrs: vec![key.addr],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_lost_netlink_connection_makes_the_next_sync_a_full_one() {
        use crate::desired::{Protocol, ServiceName, VirtualServerKey};
        use crate::kernel::fake::FailOn;
        let key = |last: u8| VirtualServerKey {
            addr: std::net::IpAddr::from([10, 96, 0, last]),
            protocol: Protocol::Tcp,
            port: 80,
        };
        let (mut ipvs, mut link) = (FakeKernel::new(), FakeKernel::new());
        let (mut nft, mut conntrack) = (FakeNft::default(), FakeConntrack::default());
        let mut kernel = Kernel {
            ipvs: &mut ipvs,
            link: &mut link,
            nft: &mut nft,
            conntrack: &mut conntrack,
        };
        let mut reconciler = Reconciler::new(Ownership::default());
        let ruleset = NftRuleset::default();
        reconciler.set_service(ServiceName::new("default", "a"), Some(web(key(1))));
        let first = kernel.sync(&mut reconciler, &ruleset, true, true).await;
        assert!(first.is_clean(), "{:?}", first.errors);
        assert_eq!(kernel.ipvs.dumps(), 1);

        // An incremental sync whose socket fails mid-batch.
        kernel.ipvs.fail_next(
            FailOn::VirtualServer(key(2)),
            KernelError::ConnectionLost("netlink socket: EPIPE".into()),
        );
        reconciler.set_service(ServiceName::new("default", "b"), Some(web(key(2))));
        let lost = kernel.sync(&mut reconciler, &ruleset, true, false).await;
        assert!(!lost.is_clean());
        assert_eq!(kernel.ipvs.dumps(), 1, "an incremental sync reads nothing");

        // The next sync, though incremental, reads the kernel again first.
        let next = kernel.sync(&mut reconciler, &ruleset, true, false).await;
        assert!(next.is_clean(), "{:?}", next.errors);
        assert_eq!(
            kernel.ipvs.dumps(),
            2,
            "the sync after a lost connection is a full one"
        );
        assert_eq!(kernel.ipvs.dump().await.unwrap().len(), 2);
    }

    #[test]
    fn a_failed_read_of_the_node_addresses_brings_the_next_full_sync_forward() {
        let now = Instant::now();
        let period = std::time::Duration::from_secs(30);
        assert_eq!(next_full_sync(now, period, None), now + period);
        let mut backoff = None;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let next = Backoff::after_failure(backoff, now);
            waits.push((next_full_sync(now, period, Some(next)) - now).as_secs());
            backoff = Some(next);
        }
        assert_eq!(
            waits,
            [1, 2, 4, 8, 16, 30, 30],
            "backoff, capped by the period"
        );
    }

    #[tokio::test]
    async fn a_failed_read_of_the_node_addresses_does_not_end_the_loop() {
        let opts = crate::cli::Cli::parse_from(["kube-ipvs-proxy", "--once"]).options;
        let node = NodeFacts {
            name: "n1".into(),
            node_addresses: vec!["192.0.2.1".parse().unwrap()],
            local_addresses: vec!["192.0.2.1".parse().unwrap()],
            ipv4: true,
            ipv6: false,
        };
        let service: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
        }))
        .unwrap();
        let (send, events) = futures::channel::mpsc::unbounded();
        send.unbounded_send(SourceEvent::service(Update::Apply(service)))
            .unwrap();
        send.unbounded_send(SourceEvent::Synced).unwrap();

        let (mut ipvs, mut link) = (FakeKernel::new(), FakeKernel::new());
        let (mut nft, mut conntrack) = (FakeNft::default(), FakeConntrack::default());
        // Every read of the node's addresses fails.
        let reads = std::cell::Cell::new(0);
        let refresh = || {
            reads.set(reads.get() + 1);
            std::future::ready(Err(Error::Kernel(KernelError::Other(
                "reading addresses: EINTR".into(),
            ))))
        };
        let metrics = Metrics::new();
        let result = Loop {
            opts: &opts,
            node,
            translate: TranslateConfig::default(),
            ruleset: NftRuleset::default(),
            source_name: "test",
            metrics: metrics.clone(),
            events: EventSink::disabled(),
        }
        .serve(
            Box::pin(events),
            Kernel {
                ipvs: &mut ipvs,
                link: &mut link,
                nft: &mut nft,
                conntrack: &mut conntrack,
            },
            refresh,
            futures::future::pending(),
        )
        .await;
        // --once: the sync ran on the last known facts and verified.
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(reads.get(), 1);
        let text = metrics.encode();
        assert!(
            text.contains("kube_ipvs_proxy_kernel_read_failures_total{kind=\"full\"} 1"),
            "the failed read is counted:\n{text}"
        );
        assert_eq!(
            ipvs.dump().await.unwrap().len(),
            1,
            "the service was programmed"
        );
    }
}

#[cfg(test)]
mod initial_list_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::kernel::fake::{FakeConntrack, FakeKernel, FakeNft};
    use crate::source::Update;

    fn state() -> State {
        let metrics = Metrics::new();
        State {
            model: Model::new("n1"),
            node: NodeFacts {
                name: "n1".into(),
                node_addresses: vec![],
                local_addresses: vec![],
                ipv4: true,
                ipv6: false,
            },
            translate: TranslateConfig::default(),
            reconciler: Reconciler::new(Ownership::default()),
            pod_cidrs_from_node: false,
            node_port_primary: false,
            handover: Handover::new(
                metrics.clone(),
                EventSink::disabled(),
                ServiceHealthServers::new(vec![], metrics.clone(), Duration::from_secs(30)),
            ),
            metrics,
            events: EventSink::disabled(),
            pending: Vec::new(),
            first_sync_begun: false,
            spent: Spent::default(),
        }
    }

    fn service(i: usize) -> k8s_openapi::api::core::v1::Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": format!("s{i}")},
            "spec": {"clusterIP": format!("10.96.0.{i}"), "ports": [{"port": 80}]},
        }))
        .unwrap()
    }

    fn slice(i: usize) -> crate::source::EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": format!("s{i}-x"),
                "labels": {"kubernetes.io/service-name": format!("s{i}")}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [format!("10.128.0.{i}")], "conditions": {"ready": true}}],
            "ports": [{"port": 8080}],
        }))
        .unwrap()
    }

    #[test]
    fn a_translation_feed_stops_at_the_operations_asked_for() {
        let mut model = Model::new("n1");
        let services = (1..=50).map(service).collect();
        model.apply(SourceEvent::service(Update::Replace(services)));
        let slices = (1..=50).map(slice).collect();
        model.apply(SourceEvent::slice(Update::Replace(slices)));
        let names: Vec<ServiceName> = model.services().map(|s| s.name.clone()).collect();
        let node = state().node;
        let translate = TranslateConfig::default();
        let mut reconciler = Reconciler::new(Ownership::default());
        let mut handed = Vec::new();
        let mut feed = TranslationFeed::new(&model, &node, &translate, names, |r, name, t| {
            handed.push(name.clone());
            set_desired(r, name, t)
        });

        // Each service is worth 2 operations (a virtual server and its one
        // real server): a feed of 40 stops after the batch that reaches it.
        feed.feed(&mut reconciler, 40);
        assert_eq!(feed.remaining(), 50 - 2 * FEED_BATCH);
        feed.feed(&mut reconciler, 1);
        assert_eq!(feed.remaining(), 50 - 3 * FEED_BATCH);
        feed.feed(&mut reconciler, usize::MAX);
        assert_eq!(feed.remaining(), 0);
        feed.feed(&mut reconciler, usize::MAX);
        drop(feed);
        assert_eq!(handed.len(), 50, "each service once");
        assert_eq!(reconciler.desired().count(), 50);
    }

    #[tokio::test]
    async fn the_first_full_sync_translates_each_listed_service_once() {
        let mut state = state();
        let node: k8s_openapi::api::core::v1::Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n1"}})).unwrap();
        let mut events = vec![SourceEvent::service(Update::ListStart)];
        events.extend((1..=5).map(|i| SourceEvent::service(Update::Listed(service(i)))));
        events.push(SourceEvent::service(Update::ListDone));
        events.push(SourceEvent::EndpointSlice(Update::ListStart));
        events.extend((1..=5).map(|i| SourceEvent::slice(Update::Listed(slice(i)))));
        events.push(SourceEvent::EndpointSlice(Update::ListDone));
        events.push(SourceEvent::node(Update::ListStart));
        events.push(SourceEvent::node(Update::Listed(node)));
        events.push(SourceEvent::node(Update::ListDone));
        for event in events {
            assert!(!state.apply(event), "not synced before the lists are in");
        }
        assert_eq!(
            state.handover.translated, 0,
            "nothing translated before the lists are in"
        );

        assert!(state.apply(SourceEvent::Synced));
        assert_eq!(
            (state.handover.translated, state.pending.len()),
            (0, 5),
            "left for the first full sync"
        );
        let (mut ipvs, mut link) = (FakeKernel::new(), FakeKernel::new());
        let (mut nft, mut conntrack) = (FakeNft::new(), FakeConntrack::default());
        let mut kernel = Kernel {
            ipvs: &mut ipvs,
            link: &mut link,
            nft: &mut nft,
            conntrack: &mut conntrack,
        };
        let report = state
            .first_full_sync(&mut kernel, &NftRuleset::default(), true, VipMode::Route)
            .await;
        assert!(report.is_clean(), "{:?}", report.errors);
        assert_eq!(report.services_synced, 5);
        assert_eq!(state.handover.translated, 5, "each service once");
        assert!(state.pending.is_empty());
        assert_eq!(ipvs.virtual_servers().len(), 5, "each service synced");
        let desired: Vec<_> = state.reconciler.desired().collect();
        assert_eq!(desired.len(), 5);
        assert!(
            desired
                .iter()
                .all(|(_, d)| d.virtual_servers[0].real_servers.len() == 1),
            "translated with their endpoints"
        );

        // After the lists, a change translates what it touched.
        state.apply(SourceEvent::slice(Update::Delete(slice(3))));
        assert_eq!(state.handover.translated, 6);
    }

    #[tokio::test]
    async fn the_source_reads_ahead_while_the_loop_is_busy_and_keeps_its_order() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let read = Arc::new(AtomicUsize::new(0));
        let counted = read.clone();
        let source = futures::stream::iter(
            (1..=5).map(|i| SourceEvent::service(Update::Delete(service(i)))),
        )
        .chain(futures::stream::iter([SourceEvent::Synced]))
        .inspect(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let mut events = read_ahead(Box::pin(source));
        // The loop's task is busy elsewhere: the source is read meanwhile.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(read.load(Ordering::SeqCst), 6, "read before anyone asked");

        let mut names = Vec::new();
        while let Some(event) = events.next().await {
            match event {
                SourceEvent::Service(Update::Delete(svc)) => {
                    names.push(svc.metadata.name.unwrap_or_default());
                }
                SourceEvent::Synced => names.push("synced".to_owned()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(names, ["s1", "s2", "s3", "s4", "s5", "synced"]);
    }
}

#[cfg(test)]
mod after_nft_tests {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::sync::{Arc, Mutex};

    use foldhash::HashSet;

    use super::*;
    use crate::desired::{
        DesiredVirtualServer, NftChange, NftElement, NftKey, NftSet, RealServer, RealServerKey,
        ServiceDesired, VirtualServer,
    };
    use crate::kernel::fake::{FailOn, FakeConntrack, FakeKernel, FakeNft};
    use crate::reconcile::{KernelRead, SyncError};

    type Journal = Arc<Mutex<Vec<&'static str>>>;

    /// A kernel that notes every call in a journal shared by all three.
    struct Noted<T> {
        inner: T,
        journal: Journal,
    }

    impl<T> Noted<T> {
        fn note(&self, what: &'static str) {
            self.journal.lock().unwrap().push(what);
        }
    }

    impl IpvsKernel for Noted<FakeKernel> {
        async fn list_virtual_servers(&mut self) -> Result<Vec<ListedVirtualServer>, KernelError> {
            self.note("IPVS read");
            self.inner.list_virtual_servers().await
        }

        async fn list_real_servers(
            &mut self,
            keys: &[VirtualServerKey],
        ) -> Result<Vec<ListedRealServers>, KernelError> {
            self.note("IPVS read");
            self.inner.list_real_servers(keys).await
        }

        async fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), KernelError>> {
            self.note("IPVS write");
            self.inner.apply(ops).await
        }
    }

    impl AddressKernel for Noted<FakeKernel> {
        async fn ensure_link(&mut self) -> Result<Vec<IpAddr>, KernelError> {
            self.note("link read");
            self.inner.ensure_link().await
        }

        async fn add_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
            self.note("address add");
            self.inner.add_address(addr).await
        }

        async fn add_addresses(&mut self, addrs: &[IpAddr]) -> Vec<Result<(), KernelError>> {
            self.note("address add");
            self.inner.add_addresses(addrs).await
        }

        async fn del_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
            self.note("address delete");
            self.inner.del_address(addr).await
        }
    }

    /// Applies `changes` after a few turns of the executor, as the real
    /// kernel answers from its blocking thread.
    async fn answer_later(nft: &mut FakeNft, changes: &[NftChange]) -> Result<(), KernelError> {
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        nft.apply(changes).await
    }

    /// Its reads of the table and its transactions are answered after a
    /// few turns of the executor (see [`answer_later`]), as the real kernel
    /// answers from its blocking thread, and noted when answered.
    impl NftKernel for Noted<FakeNft> {
        async fn ensure_ruleset(
            &mut self,
            ruleset: &NftRuleset,
        ) -> Result<Vec<NftElement>, KernelError> {
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
            let result = self.inner.ensure_ruleset(ruleset).await;
            self.note("nft read");
            result
        }

        async fn dump_elements(&mut self) -> Result<Vec<NftElement>, KernelError> {
            self.inner.dump_elements().await
        }

        async fn generation(&mut self) -> Option<u32> {
            self.inner.generation().await
        }

        async fn apply(&mut self, changes: &[NftChange]) -> Result<(), KernelError> {
            let result = answer_later(&mut self.inner, changes).await;
            self.note("nft answered");
            result
        }

        async fn delete_table(&mut self) -> Result<bool, KernelError> {
            self.inner.delete_table().await
        }
    }

    fn web(last: u8) -> ServiceDesired {
        let key = VirtualServerKey {
            addr: IpAddr::from([10, 96, 0, last]),
            protocol: Protocol::Tcp,
            port: 80,
        };
        ServiceDesired {
            virtual_servers: vec![DesiredVirtualServer {
                server: VirtualServer {
                    key,
                    scheduler: "rr".into(),
                    persistence: None,
                },
                real_servers: vec![RealServer {
                    key: RealServerKey {
                        addr: IpAddr::from([10, 128, 0, last]),
                        port: 8080,
                    },
                    weight: 1,
                }],
            }],
            bind_addrs: vec![key.addr],
            nft_elements: vec![NftElement {
                set: NftSet::ClusterIps,
                key: NftKey::AddrProtoPort(key.addr, Protocol::Tcp, 80),
            }],
            ..Default::default()
        }
    }

    /// The journal from the first note of the transaction's answer on.
    fn split(journal: &Journal) -> (Vec<&'static str>, Vec<&'static str>) {
        let notes = journal.lock().unwrap().split_off(0);
        let answered = notes
            .iter()
            .position(|n| *n == "nft answered")
            .expect("the sync sent a transaction");
        let (before, after) = notes.split_at(answered);
        (before.to_vec(), after[1..].to_vec())
    }

    /// IPVS, kube-ipvs0 and nftables kernels wrapped alike (I for the first
    /// two, N for nftables), and conntrack.
    struct Kernels<I, N> {
        ipvs: I,
        link: I,
        nft: N,
        conntrack: FakeConntrack,
    }

    impl<I, N> Kernels<I, N> {
        fn kernel(&mut self) -> Kernel<'_, I, I, N, FakeConntrack> {
            Kernel {
                ipvs: &mut self.ipvs,
                link: &mut self.link,
                nft: &mut self.nft,
                conntrack: &mut self.conntrack,
            }
        }
    }

    impl Kernels<Noted<FakeKernel>, Noted<FakeNft>> {
        /// Kernels that note every call in `journal`.
        fn noted(journal: &Journal) -> Self {
            let noted = |inner| Noted {
                inner,
                journal: journal.clone(),
            };
            Kernels {
                ipvs: noted(FakeKernel::new()),
                link: noted(FakeKernel::new()),
                nft: Noted {
                    inner: FakeNft::default(),
                    journal: journal.clone(),
                },
                conntrack: FakeConntrack::default(),
            }
        }
    }

    #[tokio::test]
    async fn writes_wait_for_the_nft_transaction_and_reads_do_not() {
        let journal = Journal::default();
        let mut kernels = Kernels::noted(&journal);
        let mut kernel = kernels.kernel();
        let mut reconciler = Reconciler::new(Ownership::default());
        let ruleset = NftRuleset::default();
        reconciler.set_service(ServiceName::new("default", "a"), Some(web(1)));

        let report = kernel.sync(&mut reconciler, &ruleset, true, true).await;
        assert!(report.is_clean(), "{:?}", report.errors);
        assert_eq!((report.nft_batches, report.nft_elements), (1, 1));
        let (before, after) = split(&journal);
        assert!(
            before.contains(&"IPVS read") && before.contains(&"link read"),
            "the reads run beside the transaction: {before:?}"
        );
        assert!(
            !before
                .iter()
                .any(|n| n.ends_with("write") || n.ends_with("add")),
            "no write before the transaction is answered: {before:?}"
        );
        assert!(after.contains(&"IPVS write") && after.contains(&"address add"));

        // An incremental sync: one service goes, another comes.
        reconciler.set_service(ServiceName::new("default", "a"), None);
        reconciler.set_service(ServiceName::new("default", "b"), Some(web(2)));
        let report = kernel.sync(&mut reconciler, &ruleset, true, false).await;
        assert!(report.is_clean(), "{:?}", report.errors);
        assert_eq!((report.nft_batches, report.nft_elements), (1, 2));
        let (before, after) = split(&journal);
        assert!(before.is_empty(), "nothing before the answer: {before:?}");
        for write in ["IPVS write", "address add", "address delete"] {
            assert!(after.contains(&write), "{write} in {after:?}");
        }
        assert_eq!(
            kernel.nft.inner.elements(),
            web(2).nft_elements,
            "the answer was recorded"
        );
        assert_eq!(kernel.link.inner.addresses(), web(2).bind_addrs);
        let held: Vec<_> = kernel.ipvs.inner.virtual_servers();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].server.key.addr, IpAddr::from([10, 96, 0, 2]));
    }

    #[tokio::test]
    async fn a_full_sync_reads_ipvs_and_the_link_while_the_table_is_read() {
        let journal = Journal::default();
        let mut kernels = Kernels::noted(&journal);
        let mut kernel = kernels.kernel();
        let mut reconciler = Reconciler::new(Ownership::default());
        let ruleset = NftRuleset::default();
        reconciler.set_service(ServiceName::new("default", "a"), Some(web(1)));

        // The first sync after start (not adopted yet) and a periodic one.
        for full in [false, true] {
            let report = kernel.sync(&mut reconciler, &ruleset, true, full).await;
            assert!(report.is_clean(), "{:?}", report.errors);
            let notes = journal.lock().unwrap().split_off(0);
            let table_read = notes.iter().position(|n| *n == "nft read");
            let table_read = table_read.expect("a full sync reads the table");
            assert_eq!(
                notes[..table_read],
                ["link read", "IPVS read"],
                "kube-ipvs0 and the virtual servers are read while the table is"
            );
            let reads = |what| notes.iter().filter(|n| **n == what).count();
            // The listing read ahead is the dump's first half; the real
            // servers of what it listed are its second.
            assert_eq!(
                (reads("link read"), reads("IPVS read")),
                (1, 2),
                "each read is made once, ahead or not: {notes:?}"
            );
        }
        assert_eq!(kernel.ipvs.inner.virtual_servers().len(), 1);
        assert_eq!(kernel.link.inner.addresses(), web(1).bind_addrs);

        // An incremental sync reads nothing ahead.
        reconciler.set_service(ServiceName::new("default", "b"), Some(web(2)));
        let report = kernel.sync(&mut reconciler, &ruleset, true, false).await;
        assert!(report.is_clean(), "{:?}", report.errors);
        let notes = journal.lock().unwrap().split_off(0);
        assert!(
            !notes.iter().any(|n| n.ends_with("read")),
            "an incremental sync reads nothing: {notes:?}"
        );
        assert_eq!(kernel.ipvs.inner.virtual_servers().len(), 2);
    }

    #[tokio::test]
    async fn a_failed_link_read_made_ahead_is_reported_and_nothing_is_written() {
        let mut ipvs = FakeKernel::new();
        let mut link = FakeKernel::new();
        link.fail_next(FailOn::Link, KernelError::Other("no link".into()));
        let mut nft = FakeNft::default();
        let mut conntrack = FakeConntrack::default();
        let mut kernel = Kernel {
            ipvs: &mut ipvs,
            link: &mut link,
            nft: &mut nft,
            conntrack: &mut conntrack,
        };
        let mut reconciler = Reconciler::new(Ownership::default());
        let ruleset = NftRuleset::default();
        reconciler.set_service(ServiceName::new("default", "a"), Some(web(1)));

        let report = kernel.sync(&mut reconciler, &ruleset, true, true).await;
        assert!(
            report.errors.iter().any(|e| matches!(
                e,
                SyncError::Read {
                    what: KernelRead::Link,
                    ..
                }
            )),
            "the failed read is reported: {:?}",
            report.errors
        );
        assert_eq!(
            (
                kernel.ipvs.dumps(),
                kernel.ipvs.writes(),
                kernel.link.writes()
            ),
            (0, 0, 0),
            "after a failed link read nothing is listed or written"
        );

        // The next sync reads again, and converges.
        let report = kernel.sync(&mut reconciler, &ruleset, true, false).await;
        assert!(report.is_clean(), "{:?}", report.errors);
        assert_eq!(kernel.ipvs.virtual_servers().len(), 1);
        assert_eq!(kernel.link.addresses(), web(1).bind_addrs);
    }

    /// What the kernels of a large sync saw: the elements the sets took so
    /// far, and at each write how many transactions had been answered.
    #[derive(Default)]
    struct Ledger {
        elements: HashSet<NftElement>,
        answered: usize,
        /// Virtual servers added before their service's element was in.
        early: Vec<VirtualServerKey>,
        /// Transactions answered at each IPVS write, and at each VIP write.
        ipvs_writes: Vec<usize>,
        link_writes: Vec<usize>,
    }

    /// A kernel that checks each write against the ledger.
    struct Checked<T> {
        inner: T,
        ledger: Rc<RefCell<Ledger>>,
    }

    impl IpvsKernel for Checked<FakeKernel> {
        async fn list_virtual_servers(&mut self) -> Result<Vec<ListedVirtualServer>, KernelError> {
            self.inner.list_virtual_servers().await
        }

        async fn list_real_servers(
            &mut self,
            keys: &[VirtualServerKey],
        ) -> Result<Vec<ListedRealServers>, KernelError> {
            self.inner.list_real_servers(keys).await
        }

        async fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), KernelError>> {
            {
                let mut ledger = self.ledger.borrow_mut();
                let answered = ledger.answered;
                ledger.ipvs_writes.push(answered);
                for op in ops {
                    let key = op.virtual_server();
                    if !ledger.elements.contains(&cluster_ip_element(key)) {
                        ledger.early.push(key);
                    }
                }
            }
            self.inner.apply(ops).await
        }
    }

    impl AddressKernel for Checked<FakeKernel> {
        async fn ensure_link(&mut self) -> Result<Vec<IpAddr>, KernelError> {
            self.inner.ensure_link().await
        }

        async fn add_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
            self.add_addresses(&[addr]).await.remove(0)
        }

        async fn add_addresses(&mut self, addrs: &[IpAddr]) -> Vec<Result<(), KernelError>> {
            let answered = self.ledger.borrow().answered;
            self.ledger.borrow_mut().link_writes.push(answered);
            self.inner.add_addresses(addrs).await
        }

        async fn del_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
            self.inner.del_address(addr).await
        }
    }

    /// Each transaction is answered after a few turns of the executor (see
    /// [`answer_later`]), and its additions go in the ledger.
    impl NftKernel for Checked<FakeNft> {
        async fn ensure_ruleset(
            &mut self,
            ruleset: &NftRuleset,
        ) -> Result<Vec<NftElement>, KernelError> {
            self.inner.ensure_ruleset(ruleset).await
        }

        async fn dump_elements(&mut self) -> Result<Vec<NftElement>, KernelError> {
            self.inner.dump_elements().await
        }

        async fn generation(&mut self) -> Option<u32> {
            self.inner.generation().await
        }

        async fn apply(&mut self, changes: &[NftChange]) -> Result<(), KernelError> {
            let result = answer_later(&mut self.inner, changes).await;
            let mut ledger = self.ledger.borrow_mut();
            for change in changes {
                if let NftChange::Add(element) = change {
                    ledger.elements.insert(*element);
                }
            }
            ledger.answered += 1;
            result
        }

        async fn delete_table(&mut self) -> Result<bool, KernelError> {
            self.inner.delete_table().await
        }
    }

    fn cluster_ip_element(key: VirtualServerKey) -> NftElement {
        NftElement {
            set: NftSet::ClusterIps,
            key: NftKey::AddrProtoPort(key.addr, key.protocol, key.port),
        }
    }

    /// Service `i` of many, on 10.96.0.0 + i with two endpoints.
    fn numbered(i: u32) -> ServiceDesired {
        let key = VirtualServerKey {
            addr: IpAddr::from(
                (u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) + i).to_be_bytes(),
            ),
            protocol: Protocol::Tcp,
            port: 80,
        };
        let real_servers = (0..2)
            .map(|j| RealServer {
                key: RealServerKey {
                    addr: IpAddr::from(
                        (u32::from(std::net::Ipv4Addr::new(10, 128, 0, 0)) + 2 * i + j)
                            .to_be_bytes(),
                    ),
                    port: 8080,
                },
                weight: 1,
            })
            .collect();
        ServiceDesired {
            virtual_servers: vec![DesiredVirtualServer {
                server: VirtualServer {
                    key,
                    scheduler: "rr".into(),
                    persistence: None,
                },
                real_servers,
            }],
            bind_addrs: vec![key.addr],
            nft_elements: vec![cluster_ip_element(key)],
            ..Default::default()
        }
    }

    impl Kernels<Checked<FakeKernel>, Checked<FakeNft>> {
        /// The kernels of a large sync, each checking its writes against
        /// `ledger`.
        fn checked(ledger: &Rc<RefCell<Ledger>>) -> Self {
            Kernels {
                ipvs: Checked {
                    inner: FakeKernel::new(),
                    ledger: ledger.clone(),
                },
                link: Checked {
                    inner: FakeKernel::new(),
                    ledger: ledger.clone(),
                },
                nft: Checked {
                    inner: FakeNft::default(),
                    ledger: ledger.clone(),
                },
                conntrack: FakeConntrack::default(),
            }
        }
    }

    /// A reconciler that wants services 1 to `count` (see [`numbered`]).
    fn numbered_services(count: u32) -> Reconciler {
        let mut reconciler = Reconciler::new(Ownership::default());
        for i in 1..=count {
            let name = ServiceName::new("default", &format!("s{i}"));
            reconciler.set_service(name, Some(numbered(i)));
        }
        reconciler
    }

    #[tokio::test]
    async fn a_large_sync_writes_each_chunk_once_its_elements_are_in_and_not_after_all() {
        let ledger = Rc::new(RefCell::new(Ledger::default()));
        let mut kernels = Kernels::checked(&ledger);
        let mut kernel = kernels.kernel();
        let services = 3000;
        let mut reconciler = numbered_services(services);

        let report = kernel
            .sync(&mut reconciler, &NftRuleset::default(), true, true)
            .await;
        assert!(report.is_clean(), "{:?}", report.errors);
        let services = services as usize;
        assert_eq!(report.nft_elements, services);
        assert!(
            report.nft_batches > 1,
            "3,000 elements in {} transactions",
            report.nft_batches
        );
        let ledger = ledger.borrow();
        assert_eq!(ledger.answered, report.nft_batches);
        assert!(
            ledger.early.is_empty(),
            "virtual servers written before their elements: {:?}",
            &ledger.early[..ledger.early.len().min(5)]
        );
        assert!(
            ledger.ipvs_writes.len() > 1,
            "IPVS writes in chunks: {:?}",
            ledger.ipvs_writes
        );
        assert!(
            ledger.ipvs_writes[0] < report.nft_batches,
            "the first IPVS write goes before the last transaction: {:?} of {}",
            ledger.ipvs_writes,
            report.nft_batches
        );
        assert!(
            ledger.link_writes.iter().all(|n| *n == report.nft_batches),
            "VIPs are bound after every transaction: {:?}",
            ledger.link_writes
        );
        assert_eq!(kernel.nft.inner.elements().len(), services);
        assert_eq!(kernel.ipvs.inner.virtual_servers().len(), services);
        assert_eq!(kernel.link.inner.addresses().len(), services);
    }

    #[tokio::test]
    async fn a_failed_transaction_of_a_split_keeps_its_backoff() {
        let ledger = Rc::new(RefCell::new(Ledger::default()));
        let mut kernels = Kernels::checked(&ledger);
        kernels
            .nft
            .inner
            .fail_transactions(1, KernelError::Other("injected".into()));
        let mut kernel = kernels.kernel();
        let mut reconciler = numbered_services(3000);

        let report = kernel
            .sync(&mut reconciler, &NftRuleset::default(), true, true)
            .await;
        assert!(report.nft_batches > 1, "a split sync");
        let failed: Vec<_> = report
            .errors
            .iter()
            .filter(|e| matches!(e, SyncError::Nftables { .. }))
            .collect();
        assert_eq!(
            failed.len(),
            1,
            "the first transaction failed: {:?}",
            report.errors
        );
        assert!(
            reconciler.next_retry().is_some(),
            "the later transactions' answers leave the failed one's backoff in place"
        );
    }

    /// Service `i`'s desired state: `web`'s, on 10.96.x.y.
    fn many(i: u16) -> ServiceDesired {
        let [high, low] = i.to_be_bytes();
        let mut desired = web(low);
        let addr = IpAddr::from([10, 96, high, low]);
        let vs = &mut desired.virtual_servers[0];
        vs.server.key.addr = addr;
        desired.bind_addrs = vec![addr];
        desired.nft_elements = vec![NftElement {
            set: NftSet::ClusterIps,
            key: NftKey::AddrProtoPort(addr, Protocol::Tcp, 80),
        }];
        desired
    }

    /// Hands over services `many(0..count)` in order, noting each call.
    struct Services {
        next: u16,
        count: u16,
        journal: Journal,
    }

    impl Feed for Services {
        fn feed(&mut self, reconciler: &mut Reconciler, ops: usize) {
            self.journal.lock().unwrap().push("handed over");
            let mut worth = 0;
            while worth < ops && self.next < self.count {
                let desired = many(self.next);
                worth += operations_worth(&desired);
                let name = ServiceName::new("default", &format!("s{}", self.next));
                reconciler.set_service(name, Some(desired));
                self.next += 1;
            }
        }

        fn remaining(&self) -> usize {
            usize::from(self.count - self.next)
        }
    }

    impl Services {
        /// Services 0..`count`, noting each hand-over in `journal`.
        fn new(count: u16, journal: &Journal) -> Self {
            Services {
                next: 0,
                count,
                journal: journal.clone(),
            }
        }

        /// A first full sync of `kernels` from an empty `reconciler` that
        /// hands these services over as it asks for them, with VIPs bound
        /// as `vips`.
        async fn sync(
            &mut self,
            kernels: &mut Kernels<Noted<FakeKernel>, Noted<FakeNft>>,
            reconciler: &mut Reconciler,
            vips: VipMode,
        ) -> SyncReport {
            let ruleset = NftRuleset::default();
            let mut kernel = kernels.kernel();
            kernel
                .sync_feeding(reconciler, &ruleset, true, vips, self)
                .await
        }
    }

    /// Each of `count` services is in the kernels: its virtual server, VIP
    /// and set element.
    fn every_service_in(kernels: &Kernels<Noted<FakeKernel>, Noted<FakeNft>>, count: u16) {
        let held = kernels.ipvs.inner.virtual_servers();
        assert_eq!(held.len(), usize::from(count));
        for i in 0..count {
            let want = &many(i).virtual_servers[0];
            let vs = kernels.ipvs.inner.virtual_server(&want.server.key);
            assert_eq!(vs.map(|vs| vs.real_servers.len()), Some(1), "service {i}");
        }
        let addresses = kernels.link.inner.addresses();
        assert_eq!(addresses.len(), usize::from(count));
        assert_eq!(kernels.nft.inner.elements().len(), usize::from(count));
    }

    /// A first full sync of services 0..`count`, with VIPs bound as
    /// `vips`, from an empty reconciler into kernels that note every call
    /// in one journal, as `prepare` leaves them.
    async fn first_sync(
        count: u16,
        vips: VipMode,
        prepare: impl FnOnce(&mut Kernels<Noted<FakeKernel>, Noted<FakeNft>>),
    ) -> FirstSync {
        let journal = Journal::default();
        let mut kernels = Kernels::noted(&journal);
        prepare(&mut kernels);
        let mut reconciler = Reconciler::new(Ownership::default());
        let mut feed = Services::new(count, &journal);
        let report = feed.sync(&mut kernels, &mut reconciler, vips).await;
        FirstSync {
            journal,
            kernels,
            reconciler,
            feed,
            report,
        }
    }

    struct FirstSync {
        journal: Journal,
        kernels: Kernels<Noted<FakeKernel>, Noted<FakeNft>>,
        reconciler: Reconciler,
        feed: Services,
        report: SyncReport,
    }

    #[tokio::test]
    async fn a_cold_sync_into_an_empty_kernel_hands_services_over_while_the_kernel_writes() {
        let count = 400;
        let run = first_sync(count, VipMode::Route, |_| {}).await;
        assert!(run.report.is_clean(), "{:?}", run.report.errors);
        assert_eq!(run.feed.remaining(), 0);
        assert_eq!(run.report.services_synced, usize::from(count));
        every_service_in(&run.kernels, count);

        // The first sync starts with services worth its first chunk (256
        // operations: 128 services of two), and more are handed over while
        // that chunk is on its way (here, waiting for its transaction), for
        // the next sync: services worth twice the chunk, and none after
        // them, since the fake kernel answers as soon as the transaction is
        // in. The next sync hands over the 16 left. Each sync sends a
        // transaction of its own.
        let notes = run.journal.lock().unwrap();
        let at = |what: &str, nth: usize| {
            let mut found = notes.iter().enumerate().filter(|(_, n)| **n == what);
            found.nth(nth).map(|(i, _)| i)
        };
        assert!(
            at("handed over", 0) < at("IPVS write", 0),
            "services handed over before the first write: {notes:?}"
        );
        assert_eq!(run.kernels.ipvs.inner.apply_sizes()[0], 256);
        assert!(
            at("handed over", 1) < at("nft answered", 1),
            "more handed over during the first sync: {notes:?}"
        );
        assert_eq!(run.report.nft_batches, 3, "three syncs: {notes:?}");
        assert_eq!(
            run.report.writes,
            400 * 2 + 400 + 400,
            "IPVS, VIPs, elements"
        );
    }

    #[tokio::test]
    async fn the_sets_read_ahead_of_a_streamed_first_sync_spare_the_next_full_sync_a_read() {
        let count = 400;
        // As at start, the table is made before the first sync.
        let mut run = first_sync(count, VipMode::Route, |kernels| {
            let made = futures::executor::block_on(
                kernels.nft.inner.ensure_ruleset(&NftRuleset::default()),
            );
            assert_eq!(made, Ok(Vec::new()));
        })
        .await;
        assert!(run.report.is_clean(), "{:?}", run.report.errors);
        assert_eq!(run.report.nft_batches, 3, "three transactions");
        let reads = run.kernels.nft.inner.set_reads;

        run.reconciler.set_verify_rounds(20);
        let ruleset = NftRuleset::default();
        let report = (run.kernels.kernel())
            .sync(&mut run.reconciler, &ruleset, true, true)
            .await;
        assert!(report.is_clean(), "{:?}", report.errors);
        assert_eq!(report.writes, 0);
        assert_eq!(
            run.kernels.nft.inner.set_reads, reads,
            "the generation is where the first sync's three transactions left it"
        );

        run.kernels.nft.inner.foreign_commit();
        let report = (run.kernels.kernel())
            .sync(&mut run.reconciler, &ruleset, true, true)
            .await;
        assert!(report.is_clean(), "{:?}", report.errors);
        assert_eq!(run.kernels.nft.inner.set_reads, reads + 1);
    }

    #[tokio::test]
    async fn with_a_stale_vip_or_vips_as_addresses_every_service_is_handed_over_first() {
        // A VIP of an earlier run, no longer wanted, which the sync deletes;
        // with addresses, binding the VIPs must start at once with all.
        let stale = IpAddr::from([10, 97, 0, 1]);
        for (vips, stale) in [(VipMode::Route, Some(stale)), (VipMode::Address, None)] {
            let count = 400;
            let run = first_sync(count, vips, |kernels| {
                if let Some(vip) = stale {
                    kernels.link.inner.insert_address(vip);
                }
            })
            .await;
            assert!(run.report.is_clean(), "{:?}", run.report.errors);
            every_service_in(&run.kernels, count);
            assert!(stale.is_none_or(|vip| !run.kernels.link.inner.addresses().contains(&vip)));
            let notes = run.journal.lock().unwrap();
            let handed: Vec<usize> = (notes.iter().enumerate())
                .filter(|(_, n)| **n == "handed over")
                .map(|(i, _)| i)
                .collect();
            let first_write = notes.iter().position(|n| *n == "IPVS write").unwrap();
            assert_eq!(handed.len(), 1, "{vips:?}: one hand-over: {notes:?}");
            assert!(handed[0] < first_write, "{vips:?}: before the first write");
            assert_eq!(run.report.services_synced, usize::from(count));
            assert_eq!(run.report.nft_batches, 1, "{vips:?}: one sync");
        }
    }

    #[tokio::test]
    async fn a_lost_connection_while_streaming_hands_the_rest_over_for_a_full_sync() {
        let count = 2000;
        // In the first sync's 128 services, while most are still to come.
        let broken = many(100).virtual_servers[0].server.key;
        let mut run = first_sync(count, VipMode::Route, |kernels| {
            let lost = KernelError::ConnectionLost("socket closed".into());
            let broken = FailOn::VirtualServer(broken);
            kernels.ipvs.inner.fail_next(broken, lost);
        })
        .await;
        assert!(
            run.report
                .errors
                .iter()
                .any(|e| matches!(e.kernel_error(), KernelError::ConnectionLost(_))),
            "{:?}",
            run.report.errors
        );
        assert_eq!(run.feed.remaining(), 0, "the rest handed over at once");
        assert_eq!(run.reconciler.desired().count(), usize::from(count));
        assert!(
            run.reconciler.syncs_in_full(false),
            "what the kernel did is unknown: the next sync reads it"
        );

        let ruleset = NftRuleset::default();
        let mut kernel = run.kernels.kernel();
        let report = kernel.sync(&mut run.reconciler, &ruleset, true, true).await;
        assert!(report.is_clean(), "{:?}", report.errors);
        every_service_in(&run.kernels, count);
    }
}
