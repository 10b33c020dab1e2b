//! The proxy's main loop: sources -> model -> translate -> reconcile -> kernel.
//!
//! One task owns everything, so no state is shared or locked. Events are
//! folded into the model as they arrive; the services they touched are
//! translated again at once (pure and per service) and handed to the
//! reconciler, which syncs them no sooner than `--ipvs-min-sync-period` after
//! the previous sync, so bursts coalesce. Every `--ipvs-sync-period` a full
//! sync dumps the kernel and repairs drift.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::time::Instant;

use futures::{Stream, StreamExt};

use crate::cli::Options;
use crate::desired::{NftRuleset, Protocol, ServiceName};
use crate::kernel::conntrack::NetlinkConntrack;
use crate::kernel::link::{local_addresses, DummyLink};
use crate::kernel::netlink::NetlinkIpvs;
use crate::kernel::nftables::NetlinkNft;
use crate::kernel::{
    modules, sysctl, AddressKernel, ConntrackKernel, IpvsKernel, KernelError, NftKernel,
};
use crate::metrics::Metrics;
use crate::model::{Changes, Model};
use crate::reconcile::{Ownership, Reconciler, SyncReport};
use crate::source::{self, SourceEvent};
use crate::translate::{translate_each, NodeFacts, SctpSupport, TranslateConfig, Translation};

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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A source's events, boxed so that either source fits.
pub type Events = Pin<Box<dyn Stream<Item = SourceEvent> + Send>>;

/// Opens the source the flags name: a manifests directory, or the API server.
async fn open_source(opts: &Options, node_name: &str) -> Result<(Events, &'static str)> {
    if let Some(dir) = &opts.manifests {
        return Ok((
            Box::pin(source::manifests::watch_dir(dir.clone())),
            "manifests",
        ));
    }
    let client = source::kube::client(opts.kubeconfig.as_deref(), opts.master.as_deref())
        .await
        .map_err(|e| Error::Kube(e.to_string()))?;
    Ok((Box::pin(source::kube::watch(client, node_name)), "kube"))
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

/// The nftables rules the flags ask for.
fn nft_ruleset(opts: &Options) -> Result<NftRuleset> {
    opts.nft_ruleset().map_err(Error::Flags)
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
    if let Some(warning) =
        sysctl::bridge_netfilter_warning(Path::new("/sys"), Path::new("/proc/sys"))
    {
        tracing::warn!("{warning}");
    }
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
    /// Desired virtual servers per service, so the gauge stays O(changes).
    virtual_servers: HashMap<ServiceName, usize>,
    virtual_servers_total: usize,
}

impl State {
    /// Folds one event into the model and passes on what it changed.
    /// Returns whether the sources have now listed everything.
    fn apply(&mut self, event: SourceEvent) -> bool {
        let endpoints = matches!(
            event,
            SourceEvent::EndpointSlice(_) | SourceEvent::Endpoints(_)
        );
        let changes = self.model.apply(event);
        let synced = changes.synced;
        if !changes.is_empty() {
            let n = changes.services.len();
            if endpoints {
                self.metrics.record_endpoint_changes(n);
            } else {
                self.metrics.record_service_changes(n);
            }
            self.metrics.mark_pending();
        }
        self.absorb(changes);
        synced
    }

    /// Translates again what `changes` touched and hands it to the reconciler.
    fn absorb(&mut self, changes: Changes) {
        for error in &changes.errors {
            tracing::error!(%error, "rejected object; its last good version stays in force");
        }
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
            let names: std::collections::HashSet<ServiceName> = self
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
        let translations = translate_each(&self.model, &names, &self.node, &self.translate);
        for (name, translation) in names.into_iter().zip(translations) {
            self.hand_over(name, translation);
        }
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
        for warning in &translation.warnings {
            tracing::warn!(service = %name, %warning, "translating service");
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
        let wanted = count > 0 || !desired.bind_addrs.is_empty();
        self.reconciler.set_service(name, wanted.then_some(desired));
    }

    /// Takes in fresh node addresses; every service is translated again if
    /// they changed.
    fn set_node(&mut self, node: NodeFacts) {
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

fn log_sync(kind: &'static str, report: &SyncReport, started: Instant, metrics: &Metrics) {
    metrics.record_sync(kind, started.elapsed(), report.writes, report.failed);
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
    prepare_kernel(opts)?;
    let mut ipvs = NetlinkIpvs::connect().await?;
    ipvs.set_timeouts(
        opts.ipvs_tcp_timeout,
        opts.ipvs_tcpfin_timeout,
        opts.ipvs_udp_timeout,
    )
    .await?;
    let mut link = DummyLink::new(&opts.ipvs_interface)?;
    let ruleset = nft_ruleset(opts)?;
    let mut nft = NetlinkNft::new().map_err(Error::Nftables)?;
    // Fails at start, naming what the kernel lacks, rather than at every sync.
    nft.ensure_ruleset(&ruleset)
        .await
        .map_err(Error::Nftables)?;
    let mut conntrack = NetlinkConntrack::new()?;
    let node_name = opts.node_name();
    tracing::info!(node = %node_name, interface = %opts.ipvs_interface, "starting");

    let (events, source_name) = open_source(opts, &node_name).await?;
    let node = node_facts(opts, &node_name).await?;
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
    let metrics = Metrics::new();
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
    };
    let kernel = Kernel {
        ipvs: &mut ipvs,
        link: &mut link,
        nft: &mut nft,
        conntrack: &mut conntrack,
    };
    let serve = loop_.serve(events, kernel, || node_facts(opts, &node_name), shutdown);
    tokio::select! {
        result = serve => result?,
        result = http => return Err(Error::Http(result.err().map_or_else(|| "stopped".to_owned(), |e| e.to_string()))),
    }
    tracing::info!("stopping; IPVS state is left in place for the next start to adopt");
    Ok(())
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
    /// flows of the real servers that went.
    /// `full` re-reads every subsystem and repairs drift; otherwise only
    /// what changed is sent. `conntrack_cleanup` is `--conntrack-cleanup`.
    pub async fn sync(
        &mut self,
        reconciler: &mut Reconciler,
        ruleset: &NftRuleset,
        conntrack_cleanup: bool,
        full: bool,
    ) -> SyncReport {
        let mut report = SyncReport::default();
        reconciler
            .sync_nft(self.nft, ruleset, full, &mut report)
            .await;
        let ipvs = if full {
            reconciler.full_sync(self.ipvs, self.link).await
        } else {
            reconciler.sync_dirty(self.ipvs, self.link).await
        };
        report.absorb(ipvs);
        if conntrack_cleanup {
            reconciler
                .clear_stale_flows(self.conntrack, &mut report)
                .await;
        } else {
            reconciler.forget_stale_flows();
        }
        report
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
        let ruleset = self.ruleset;
        let mut reconciler = Reconciler::new(ownership(opts));
        reconciler.set_node_addresses(self.node.node_addresses.clone());
        if !opts.pod_cidrs_from_node() {
            reconciler.set_local_pod_cidrs(&opts.cluster_cidr);
        }
        let mut state = State {
            model: Model::new(self.node.name.clone()),
            node: self.node,
            translate: self.translate,
            reconciler,
            pod_cidrs_from_node: opts.pod_cidrs_from_node(),
            metrics: self.metrics,
            virtual_servers: HashMap::new(),
            virtual_servers_total: 0,
        };
        let mut synced = false;
        let mut last_sync: Option<Instant> = None;
        let mut next_full: Option<Instant> = None;
        let mut shutdown = std::pin::pin!(shutdown);

        loop {
            let wake = synced
                .then(|| next_wake(&state.reconciler, last_sync, next_full, opts))
                .flatten();
            tokio::select! {
                event = events.next() => {
                    let Some(event) = event else { return Err(Error::SourceEnded(self.source_name)) };
                    synced |= state.apply(event);
                }
                () = sleep_until(wake) => {
                    let started = Instant::now();
                    if next_full.is_none_or(|t| t <= started) {
                        state.set_node(refresh_node().await?);
                        let report = kernel.sync(&mut state.reconciler, &ruleset, opts.conntrack_cleanup, true).await;
                        log_sync("full", &report, started, &state.metrics);
                        // The first sync and relists free far more than they keep.
                        crate::heap::release_free_memory();
                        next_full = Some(Instant::now() + opts.ipvs_sync_period);
                        if opts.once {
                            return verify(&mut state.reconciler, &mut kernel, opts, &ruleset, report, &state.metrics).await;
                        }
                    } else {
                        let report = kernel.sync(&mut state.reconciler, &ruleset, opts.conntrack_cleanup, false).await;
                        log_sync("incremental", &report, started, &state.metrics);
                    }
                    last_sync = Some(Instant::now());
                }
                () = &mut shutdown => return Ok(()),
            }
        }
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
        let (manifests, errors) = source::manifests::read_dir(dir);
        for error in &errors {
            tracing::error!(%error, "skipping document");
        }
        for event in manifests.into_events() {
            log_rejected(&model.apply(event));
        }
        return Ok(model);
    }
    let (mut events, name) = open_source(opts, node_name).await?;
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
    let mut out = crate::plan::render(desired.iter(), &opts.ipvs_interface);
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
    let table = crate::kernel::nftables::render_ruleset(&nft_ruleset(opts)?);
    let _ = crate::plan::render_packet_path(&table, elements, &warnings, &mut out);
    Ok(out)
}

/// `kube-ipvs-proxy cleanup`: removes what the proxy owns, then kube-ipvs0.
pub async fn cleanup(opts: &Options) -> Result<()> {
    let mut ipvs = NetlinkIpvs::connect().await?;
    let mut link = DummyLink::new(&opts.ipvs_interface)?;
    let node = node_facts(opts, &opts.node_name()).await?;
    let mut reconciler = Reconciler::new(ownership(opts));
    reconciler.set_node_addresses(node.node_addresses);
    let started = Instant::now();
    let report = reconciler.cleanup(&mut ipvs, &mut link).await;
    log_sync("cleanup", &report, started, &Metrics::new());
    let deleted = link.delete().await?;
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
    use clap::Parser;
    use std::time::Duration;

    fn opts(args: &[&str]) -> Options {
        crate::cli::Cli::parse_from(std::iter::once("kube-ipvs-proxy").chain(args.iter().copied()))
            .options
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
}
