//! What an operator replacing kube-proxy expects to scrape and probe: the
//! proxier health on `--healthz-bind-address` (`/healthz`, `/livez`) and the
//! Prometheus metrics on `--metrics-bind-address` (`/metrics`).
//!
//! Health follows upstream `pkg/proxy/healthcheck/proxier_health.go`: the
//! proxy is healthy while nothing is pending, and turns unhealthy once a
//! queued change (or a failed sync: the kernel is then behind) has waited
//! `2 × --ipvs-sync-period` without a successful sync. A sync succeeds only
//! if every kernel read and write it attempted did. `/healthz` also fails
//! while the node is being deleted; `/livez` does not. Metric families keep
//! kube-proxy's names (`kubeproxy_*`, from `pkg/proxy/metrics/metrics.go`)
//! so its dashboards keep working; what is ours carries the
//! `kube_ipvs_proxy_` prefix.

use foldhash::{HashSet, HashSetExt};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::desired::{Protocol, ServiceName, VirtualServerKey};
use crate::kernel::TrafficCounters;

pub mod process;

/// The path of the proxier health endpoint (upstream's).
pub const HEALTHZ_PATH: &str = "/healthz";
/// The path of the liveness endpoint: `/healthz` without the node's eligibility.
pub const LIVEZ_PATH: &str = "/livez";
/// The path of the Prometheus exposition.
pub const METRICS_PATH: &str = "/metrics";
/// kube-proxy's `/proxyMode` on the metrics address, which answers the
/// mode as plain text: `curl 127.0.0.1:10249/proxyMode` says `ipvs`.
pub const PROXY_MODE_PATH: &str = "/proxyMode";
/// kube-proxy's `/configz` on the metrics address: the configuration in
/// force, as JSON (see `config::configz`).
pub const CONFIGZ_PATH: &str = "/configz";

/// The content type `encode` produces (prometheus-client writes OpenMetrics
/// text, which Prometheus negotiates and parses).
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The wall clock health and timestamps are read from; tests inject their own.
type Clock = dyn Fn() -> SystemTime + Send + Sync;

/// The proxy's health state and metric families. Cheap to clone: every clone
/// records into and reports from the same state.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Box<Clock>,
    /// When these metrics were created: older trigger times belong to
    /// changes programmed before the proxy started (upstream's
    /// `trackerStartTime`).
    started: SystemTime,
    registry: Registry,
    health: Mutex<HealthState>,
    families: Families,
    /// The per-virtual-server counters of the last full sync.
    traffic: Arc<VirtualServerTraffic>,
    /// The body of `/configz`, set once at start.
    configz: std::sync::OnceLock<String>,
}

/// Upstream's `proxierHealthServer` fields.
#[derive(Debug)]
struct HealthState {
    /// The last successful sync.
    last_updated: Option<SystemTime>,
    /// The oldest change queued since the last successful sync.
    oldest_pending: Option<SystemTime>,
    /// False once the node is being deleted (healthz fails so that load
    /// balancers drain it; livez does not).
    node_eligible: bool,
    /// Services changed by Service events since the last successful sync.
    pending_services: HashSet<ServiceName>,
    /// Services changed by EndpointSlice (or Endpoints) events since then.
    pending_endpoints: HashSet<ServiceName>,
    /// The last-change trigger times of the endpoint changes since then,
    /// observed as network programming latency once a sync succeeds.
    pending_triggers: Vec<SystemTime>,
}

/// The annotation in which the EndpointSlice controller (and the Endpoints
/// controller) records when the change a slice carries was triggered.
pub const LAST_CHANGE_TRIGGER_TIME_ANNOTATION: &str =
    "endpoints.kubernetes.io/last-change-trigger-time";

/// At most this many trigger times wait for a successful sync; later ones
/// are not observed (a kernel that keeps failing must not grow memory).
const MAX_PENDING_TRIGGERS: usize = 10_000;

/// The handles of every registered family (each is an `Arc` shared with the
/// registry).
#[derive(Debug)]
struct Families {
    sync_duration: Histogram,
    sync_full_duration: Histogram,
    sync_partial_duration: Histogram,
    sync_last_timestamp: Gauge<f64, std::sync::atomic::AtomicU64>,
    sync_last_queued_timestamp: Gauge<f64, std::sync::atomic::AtomicU64>,
    service_changes: Counter,
    endpoint_changes: Counter,
    service_changes_pending: Gauge,
    endpoint_changes_pending: Gauge,
    network_programming: Histogram,
    no_local_endpoints: Family<TrafficPolicyLabels, Gauge>,
    healthz_responses: Family<CodeLabels, Counter>,
    livez_responses: Family<CodeLabels, Counter>,
    syncs_by_kind: Family<KindLabels, Histogram>,
    netlink_writes: Family<KindLabels, Counter>,
    sync_errors: Family<KindLabels, Counter>,
    read_failures: Family<KindLabels, Counter>,
    virtual_servers_desired: Gauge,
    nft_elements: Counter,
    nft_transactions: Counter,
    conntrack_deleted: Counter,
    events_posted: Counter,
    events_dropped: Family<DropLabels, Counter>,
    api_requests: Family<ApiRequestLabels, Counter>,
    api_request_duration: Family<ApiVerbLabels, Histogram>,
}

/// client-go's labels of `rest_client_requests_total`: the status code (or
/// `<error>` when no answer came), the API server's host and port, and the
/// HTTP method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiRequestLabels {
    code: String,
    host: Arc<str>,
    method: String,
}

/// client-go's labels of `rest_client_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiVerbLabels {
    verb: String,
    host: Arc<str>,
}

/// Why an Event was not posted: `queue_full`, `rate_limited` or `api_error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: u16,
}

/// Upstream's `traffic_policy` label: `internal` or `external`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrafficPolicyLabels {
    traffic_policy: &'static str,
}

/// What one sync of the rules did to the kernel, as health and the sync
/// families judge it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Kernel writes sent.
    pub writes: usize,
    /// Kernel writes that failed.
    pub failed_writes: usize,
    /// Kernel reads that failed (the IPVS dump, kube-ipvs0's addresses, the
    /// nftables table): what needed them was not synced.
    pub failed_reads: usize,
}

impl SyncOutcome {
    /// Whether every read and write succeeded: upstream's "updated".
    pub fn succeeded(&self) -> bool {
        self.failed_writes == 0 && self.failed_reads == 0
    }
}

/// The kernel's counters of one owned virtual server, with the service that
/// owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualServerSample {
    /// The service that claims the virtual server.
    pub service: ServiceName,
    /// The virtual server.
    pub key: VirtualServerKey,
    /// Its counters as the dump read them.
    pub counters: TrafficCounters,
}

/// The labels of a per-virtual-server series: the owning service and the
/// virtual server's key. The key is what makes a series unique: one service
/// port has a virtual server per cluster IP, ExternalIP, LoadBalancer IP and
/// node address (NodePort), and one address may serve two ports of a service.
/// Made at each scrape from a [`VirtualServerSample`], without allocating.
#[derive(Clone, Debug, EncodeLabelSet)]
struct VirtualServerLabels {
    namespace: Arc<str>,
    service: Arc<str>,
    protocol: &'static str,
    address: LabelAddress,
    port: u16,
}

impl VirtualServerLabels {
    fn new(service: &ServiceName, key: &VirtualServerKey) -> VirtualServerLabels {
        VirtualServerLabels {
            namespace: service.namespace.clone(),
            service: service.name.clone(),
            protocol: match key.protocol {
                Protocol::Tcp => "TCP",
                Protocol::Udp => "UDP",
                Protocol::Sctp => "SCTP",
            },
            address: LabelAddress(key.addr),
            port: key.port,
        }
    }
}

/// An address as a label value, written as it is encoded rather than held
/// as a string.
#[derive(Clone, Copy, Debug)]
struct LabelAddress(IpAddr);

impl EncodeLabelValue for LabelAddress {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write!(encoder, "{}", self.0)
    }
}

/// The IPVS counters of every owned virtual server as the last full sync
/// dumped them, encoded at each scrape. Replaced whole at each full sync, so
/// the series of a virtual server that went disappear with it. The kernel's
/// counters only grow (a recreated virtual server starts again from zero,
/// which Prometheus reads as a counter reset), so they are counters.
///
/// The samples are kept as the reconciler hands them over (two reference
/// counts and two copies each) and in one buffer that each full sync
/// refills, so a full sync allocates nothing here that outlives it (it
/// used to make a string per address).
#[derive(Debug, Default)]
struct VirtualServerTraffic {
    samples: Mutex<Vec<VirtualServerSample>>,
}

/// A per-virtual-server family with a `direction` label: its name, help,
/// and how to read its (in, out) pair from the counters.
struct DirectedFamily {
    name: &'static str,
    help: &'static str,
    read: fn(&TrafficCounters) -> (u64, u64),
}

const DIRECTED_FAMILIES: [DirectedFamily; 2] = [
    DirectedFamily {
        name: "virtual_server_packets",
        help: "Packets through the IPVS virtual server since it was created (in: from clients, out: replies), read at each full sync",
        read: |c| (c.packets_in, c.packets_out),
    },
    DirectedFamily {
        name: "virtual_server_bytes",
        help: "Bytes through the IPVS virtual server since it was created (in: from clients, out: replies), read at each full sync",
        read: |c| (c.bytes_in, c.bytes_out),
    },
];

impl Collector for VirtualServerTraffic {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.is_empty() {
            return Ok(());
        }
        let connections = ConstCounter::new(0u64).metric_type();
        let mut family = encoder.encode_descriptor(
            "virtual_server_connections",
            "Connections the IPVS virtual server scheduled since it was created, read at each full sync",
            None,
            connections,
        )?;
        for sample in samples.iter() {
            let labels = VirtualServerLabels::new(&sample.service, &sample.key);
            ConstCounter::new(sample.counters.connections)
                .encode(family.encode_family(&labels)?)?;
        }
        for directed in DIRECTED_FAMILIES {
            let mut family =
                encoder.encode_descriptor(directed.name, directed.help, None, connections)?;
            for sample in samples.iter() {
                let labels = VirtualServerLabels::new(&sample.service, &sample.key);
                let (inbound, outbound) = (directed.read)(&sample.counters);
                for (direction, value) in [("in", inbound), ("out", outbound)] {
                    let labels = (labels.clone(), [("direction", direction)]);
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// The kinds of sync the run loop reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncKind {
    /// A full sync (every service), the periodic one or the first.
    Full,
    /// A sync of the services that changed since the last one.
    Incremental,
    /// The second full sync of `--once`, which must find nothing to write.
    Verify,
    /// `kube-ipvs-proxy cleanup`: removes rules rather than syncing them.
    Cleanup,
    /// A kind this module does not know; kept apart rather than guessed.
    Other,
}

impl SyncKind {
    fn parse(kind: &str) -> SyncKind {
        match kind {
            "full" => SyncKind::Full,
            "incremental" => SyncKind::Incremental,
            "verify" => SyncKind::Verify,
            "cleanup" => SyncKind::Cleanup,
            _ => SyncKind::Other,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            SyncKind::Full => "full",
            SyncKind::Incremental => "incremental",
            SyncKind::Verify => "verify",
            SyncKind::Cleanup => "cleanup",
            SyncKind::Other => "other",
        }
    }

    /// Whether upstream would call this a sync of the proxy rules, the only
    /// kind that feeds the `kubeproxy_*` sync families and health.
    fn syncs_rules(self) -> bool {
        matches!(
            self,
            SyncKind::Full | SyncKind::Incremental | SyncKind::Verify
        )
    }
}

/// kube-proxy's buckets for every sync duration: 1 ms to about 16 s.
fn sync_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// client-go's buckets for API request latency (component-base's
/// `rest_client_request_duration_seconds`): 5 ms to a minute.
fn api_request_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0,
    ])
}

/// kube-proxy's buckets for network programming latency: 0 (upstream's
/// bucket merge starts with one), 0.25 s and 0.5 s, every second to 59 s,
/// every 5 s to 115 s, every 30 s to 5 min.
fn network_programming_histogram() -> Histogram {
    let linear =
        |start: f64, step: f64, count: u32| (0..count).map(move |i| start + step * f64::from(i));
    let buckets = std::iter::once(0.0)
        .chain(linear(0.25, 0.25, 2))
        .chain(linear(1.0, 1.0, 59))
        .chain(linear(60.0, 5.0, 12))
        .chain(linear(120.0, 30.0, 7));
    Histogram::new(buckets)
}

impl Families {
    fn new() -> Families {
        Families {
            sync_duration: sync_duration_histogram(),
            sync_full_duration: sync_duration_histogram(),
            sync_partial_duration: sync_duration_histogram(),
            sync_last_timestamp: Gauge::default(),
            sync_last_queued_timestamp: Gauge::default(),
            service_changes: Counter::default(),
            endpoint_changes: Counter::default(),
            service_changes_pending: Gauge::default(),
            endpoint_changes_pending: Gauge::default(),
            network_programming: network_programming_histogram(),
            no_local_endpoints: Family::default(),
            healthz_responses: Family::default(),
            livez_responses: Family::default(),
            syncs_by_kind: Family::new_with_constructor(sync_duration_histogram),
            netlink_writes: Family::default(),
            sync_errors: Family::default(),
            read_failures: Family::default(),
            virtual_servers_desired: Gauge::default(),
            nft_elements: Counter::default(),
            nft_transactions: Counter::default(),
            conntrack_deleted: Counter::default(),
            events_posted: Counter::default(),
            events_dropped: {
                // Each reason from the start, at 0, so that a rate is defined.
                let family = Family::default();
                for reason in ["queue_full", "rate_limited", "api_error"] {
                    drop(family.get_or_create(&DropLabels { reason }));
                }
                family
            },
            api_requests: Family::default(),
            api_request_duration: Family::new_with_constructor(api_request_histogram),
        }
    }

    /// Registers what every Kubernetes component exports under the same
    /// names, with no prefix: client-go's API request families and the
    /// process collector's.
    fn register_component(&self, root: &mut Registry) {
        root.register(
            "rest_client_requests",
            "Number of HTTP requests, partitioned by status code, method, and host",
            self.api_requests.clone(),
        );
        root.register_with_unit(
            "rest_client_request_duration",
            "Request latency in seconds, to the response's headers. Broken down by verb, and host",
            Unit::Seconds,
            self.api_request_duration.clone(),
        );
        root.register_collector(Box::new(process::ProcessCollector(
            process::Process::current(),
        )));
    }

    /// Registers upstream's families, under their upstream names.
    fn register_kube_proxy(&self, kube_proxy: &mut Registry) {
        // Counters are registered without `_total`: the encoder appends it.
        kube_proxy.register_with_unit(
            "sync_proxy_rules_duration",
            "SyncProxyRules latency in seconds",
            Unit::Seconds,
            self.sync_duration.clone(),
        );
        kube_proxy.register_with_unit(
            "sync_full_proxy_rules_duration",
            "SyncProxyRules latency in seconds for full resyncs",
            Unit::Seconds,
            self.sync_full_duration.clone(),
        );
        kube_proxy.register_with_unit(
            "sync_partial_proxy_rules_duration",
            "SyncProxyRules latency in seconds for partial resyncs",
            Unit::Seconds,
            self.sync_partial_duration.clone(),
        );
        kube_proxy.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            self.sync_last_timestamp.clone(),
        );
        kube_proxy.register(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            self.sync_last_queued_timestamp.clone(),
        );
        kube_proxy.register(
            "sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            self.service_changes_pending.clone(),
        );
        kube_proxy.register(
            "sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            self.endpoint_changes_pending.clone(),
        );
        kube_proxy.register_with_unit(
            "network_programming_duration",
            "In Cluster Network Programming Latency in seconds",
            Unit::Seconds,
            self.network_programming.clone(),
        );
        kube_proxy.register(
            "sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            self.no_local_endpoints.clone(),
        );
        kube_proxy.register(
            "sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            self.service_changes.clone(),
        );
        kube_proxy.register(
            "sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            self.endpoint_changes.clone(),
        );
        kube_proxy.register(
            "proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            self.healthz_responses.clone(),
        );
        kube_proxy.register(
            "proxy_livez",
            "Cumulative proxy livez HTTP status",
            self.livez_responses.clone(),
        );
    }

    /// Registers the families that are ours alone.
    fn register_own(&self, ours: &mut Registry) {
        ours.register_with_unit(
            "sync_duration",
            "Sync latency in seconds, by kind of sync (full, incremental, verify, cleanup)",
            Unit::Seconds,
            self.syncs_by_kind.clone(),
        );
        ours.register(
            "netlink_writes",
            "Netlink requests that changed the kernel (IPVS services, destinations, addresses), by kind of sync",
            self.netlink_writes.clone(),
        );
        ours.register(
            "sync_errors",
            "Kernel writes that failed (and will be retried), by kind of sync",
            self.sync_errors.clone(),
        );
        ours.register(
            "kernel_read_failures",
            "Kernel reads that failed (IPVS dump, kube-ipvs0 addresses, nftables table, the node's addresses), by kind of sync; the sync then left that subsystem alone (or kept the last known node addresses)",
            self.read_failures.clone(),
        );
        ours.register(
            "nftables_element_changes",
            "nftables set elements added or deleted",
            self.nft_elements.clone(),
        );
        ours.register(
            "nftables_transactions",
            "nftables transactions sent (at most one per sync)",
            self.nft_transactions.clone(),
        );
        ours.register(
            "conntrack_flows_deleted",
            "Conntrack flows of removed UDP and SCTP endpoints deleted",
            self.conntrack_deleted.clone(),
        );
        ours.register(
            "events_posted",
            "Kubernetes Events created or updated about services the proxy cannot program as asked",
            self.events_posted.clone(),
        );
        ours.register(
            "events_dropped",
            "Kubernetes Events not posted, by reason (queue_full, rate_limited, api_error)",
            self.events_dropped.clone(),
        );
        ours.register(
            "virtual_servers_desired",
            "IPVS virtual servers the desired state holds",
            self.virtual_servers_desired.clone(),
        );
    }
}

/// The result of a health check, ready to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// 200 when true, 503 when false.
    pub healthy: bool,
    /// The JSON body upstream serves: `lastUpdated`, `currentTime` and
    /// `nodeEligible` (also under its former name `nodeHealthy`).
    pub body: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("health", &self.inner.health)
            .field("families", &self.inner.families)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics on the system clock.
    pub fn new() -> Metrics {
        Metrics::with_clock(SystemTime::now)
    }

    /// Metrics that read the time from `clock`, for tests that move time
    /// instead of waiting for it.
    pub fn with_clock(clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Metrics {
        let mut registry = Registry::default();
        let families = Families::new();
        families.register_component(&mut registry);
        families.register_kube_proxy(registry.sub_registry_with_prefix("kubeproxy"));
        let traffic = Arc::new(VirtualServerTraffic::default());
        let ours = registry.sub_registry_with_prefix("kube_ipvs_proxy");
        families.register_own(ours);
        ours.register_collector(Box::new(traffic.clone()));
        let started = clock();
        Metrics {
            inner: Arc::new(Inner {
                clock: Box::new(clock),
                started,
                registry,
                health: Mutex::new(HealthState {
                    last_updated: None,
                    oldest_pending: None,
                    node_eligible: true,
                    pending_services: HashSet::new(),
                    pending_endpoints: HashSet::new(),
                    pending_triggers: Vec::new(),
                }),
                families,
                traffic,
                configz: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The configuration `/configz` shows; the first one set stays.
    pub fn set_configz(&self, configuration: String) {
        let _ = self.inner.configz.set(configuration);
    }

    fn now(&self) -> SystemTime {
        (self.inner.clock)()
    }

    fn health_state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        // The state is a few plain values, consistent after any panic.
        self.inner
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one Event created or updated in the API.
    pub fn record_event_posted(&self) {
        self.inner.families.events_posted.inc();
    }

    /// Counts one Event not posted: `queue_full`, `rate_limited` or `api_error`.
    pub fn record_event_dropped(&self, reason: &'static str) {
        self.inner
            .families
            .events_dropped
            .get_or_create(&DropLabels { reason })
            .inc();
    }

    /// Records one request to the API server at `host` (its host and port,
    /// as the client's URL names them): its method, its status code or
    /// `None` when no answer came, and the time to the answer's headers.
    pub fn record_api_request(
        &self,
        host: &Arc<str>,
        method: &http::Method,
        status: Option<http::StatusCode>,
        duration: Duration,
    ) {
        let families = &self.inner.families;
        let code = status.map_or_else(|| "<error>".to_owned(), |s| s.as_u16().to_string());
        families
            .api_requests
            .get_or_create(&ApiRequestLabels {
                code,
                host: host.clone(),
                method: method.as_str().to_owned(),
            })
            .inc();
        families
            .api_request_duration
            .get_or_create(&ApiVerbLabels {
                verb: method.as_str().to_owned(),
                host: host.clone(),
            })
            .observe(duration.as_secs_f64());
    }

    /// Counts one sync's nftables element changes and transactions and its
    /// deleted conntrack flows.
    pub fn record_packet_path(&self, nft_elements: usize, nft_transactions: usize, flows: usize) {
        let families = &self.inner.families;
        families.nft_elements.inc_by(nft_elements as u64);
        families.nft_transactions.inc_by(nft_transactions as u64);
        families.conntrack_deleted.inc_by(flows as u64);
    }

    /// Records a failed read of the node's addresses, a read of the full
    /// sync (which went on with the last known addresses).
    pub fn record_node_address_read_failure(&self) {
        let labels = KindLabels {
            kind: SyncKind::Full.as_str(),
        };
        self.inner
            .families
            .read_failures
            .get_or_create(&labels)
            .inc();
    }

    /// Records one completed sync: kind `"full"`, `"incremental"`,
    /// `"verify"` or `"cleanup"` (anything else is recorded as `"other"`).
    ///
    /// As upstream, the duration is observed whether or not the sync
    /// succeeded. A sync of the rules in which every kernel read and write
    /// succeeded is the "updated" of upstream health: it clears the pending
    /// changes and sets the last-sync timestamp. One that failed to read or
    /// write leaves the kernel behind the desired state, so it counts as a
    /// pending change.
    pub fn record_sync(&self, kind: &str, duration: Duration, outcome: SyncOutcome) {
        let kind = SyncKind::parse(kind);
        let families = &self.inner.families;
        let seconds = duration.as_secs_f64();
        let labels = KindLabels {
            kind: kind.as_str(),
        };
        families
            .syncs_by_kind
            .get_or_create(&labels)
            .observe(seconds);
        families
            .netlink_writes
            .get_or_create(&labels)
            .inc_by(outcome.writes as u64);
        families
            .sync_errors
            .get_or_create(&labels)
            .inc_by(outcome.failed_writes as u64);
        families
            .read_failures
            .get_or_create(&labels)
            .inc_by(outcome.failed_reads as u64);
        if !kind.syncs_rules() {
            return;
        }
        families.sync_duration.observe(seconds);
        match kind {
            SyncKind::Incremental => families.sync_partial_duration.observe(seconds),
            _ => families.sync_full_duration.observe(seconds),
        }
        let now = self.now();
        let mut health = self.health_state();
        if outcome.succeeded() {
            health.oldest_pending = None;
            health.last_updated = Some(now);
            health.pending_services.clear();
            health.pending_endpoints.clear();
            for trigger in health.pending_triggers.drain(..) {
                families
                    .network_programming
                    .observe(latency_seconds(trigger, now));
            }
            families.service_changes_pending.set(0);
            families.endpoint_changes_pending.set(0);
            families.sync_last_timestamp.set(unix_seconds(now));
        } else {
            health.oldest_pending.get_or_insert(now);
        }
    }

    /// A Service event changed these services. They stay pending until a
    /// sync succeeds; each counts once however often it changes.
    pub fn record_service_changes<'a>(&self, services: impl IntoIterator<Item = &'a ServiceName>) {
        let families = &self.inner.families;
        let mut health = self.health_state();
        for service in services {
            families.service_changes.inc();
            if !health.pending_services.contains(service) {
                health.pending_services.insert(service.clone());
            }
        }
        families
            .service_changes_pending
            .set(gauge_value(health.pending_services.len()));
    }

    /// An EndpointSlice (or Endpoints) event changed these services' endpoints.
    /// As [`Metrics::record_service_changes`].
    pub fn record_endpoint_changes<'a>(&self, services: impl IntoIterator<Item = &'a ServiceName>) {
        let families = &self.inner.families;
        let mut health = self.health_state();
        for service in services {
            families.endpoint_changes.inc();
            if !health.pending_endpoints.contains(service) {
                health.pending_endpoints.insert(service.clone());
            }
        }
        families
            .endpoint_changes_pending
            .set(gauge_value(health.pending_endpoints.len()));
    }

    /// An endpoint change triggered at `trigger` (the slice's
    /// [`LAST_CHANGE_TRIGGER_TIME_ANNOTATION`]) is waiting to be programmed.
    /// The next successful sync of the rules observes its network
    /// programming latency, once, as upstream does. Changes triggered before
    /// the proxy started are not its latency and are left out.
    pub fn record_trigger_time(&self, trigger: SystemTime) {
        if trigger < self.inner.started {
            return;
        }
        let mut health = self.health_state();
        if health.pending_triggers.len() < MAX_PENDING_TRIGGERS {
            health.pending_triggers.push(trigger);
        }
    }

    /// Service ports with a Local traffic policy whose endpoints are all on
    /// other nodes, by policy, as the current desired state has them
    /// (upstream's `kubeproxy_sync_proxy_rules_no_local_endpoints_total`).
    pub fn set_no_local_endpoints(&self, internal: usize, external: usize) {
        let family = &self.inner.families.no_local_endpoints;
        for (traffic_policy, n) in [("internal", internal), ("external", external)] {
            family
                .get_or_create(&TrafficPolicyLabels { traffic_policy })
                .set(gauge_value(n));
        }
    }

    /// Replaces the per-virtual-server counters with those one full sync
    /// dumped. A virtual server missing here has no series any more.
    pub fn set_virtual_server_traffic(
        &self,
        samples: impl IntoIterator<Item = VirtualServerSample>,
    ) {
        let mut held = self
            .inner
            .traffic
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.clear();
        let samples = samples.into_iter();
        // Room for as many as may come (the full sync's reading of them),
        // not twice as many as came, as growing one at a time would leave.
        let (_, most) = samples.size_hint();
        held.reserve_exact(most.unwrap_or(0));
        held.extend(samples);
        // A node that lost most of its services gives the buffer back.
        if held.len() < held.capacity() / 4 {
            held.shrink_to_fit();
        }
    }

    /// The number of virtual servers in the desired state.
    pub fn set_virtual_servers(&self, n: usize) {
        self.inner
            .families
            .virtual_servers_desired
            .set(gauge_value(n));
    }

    /// A change is pending (queued) since now. Only the oldest pending change
    /// counts until a sync succeeds, as upstream's `QueuedUpdate`.
    pub fn mark_pending(&self) {
        let now = self.now();
        self.inner
            .families
            .sync_last_queued_timestamp
            .set(unix_seconds(now));
        self.health_state().oldest_pending.get_or_insert(now);
    }

    /// Whether the node may receive traffic: false once it is being deleted
    /// (deletionTimestamp set or tainted `ToBeDeletedByClusterAutoscaler`).
    /// `/healthz` then fails so load balancers drain the node; `/livez` does
    /// not. True until told otherwise.
    pub fn set_node_eligible(&self, eligible: bool) {
        self.health_state().node_eligible = eligible;
    }

    /// Renders the Prometheus (OpenMetrics) text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String fails only if a metric's own encoding does,
        // and ours are all built in; a partial page beats none.
        if let Err(error) =
            prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)
        {
            tracing::error!(%error, "encoding the metrics failed");
        }
        text
    }

    /// `/healthz` as upstream computes it, given `--ipvs-sync-period`: the
    /// proxier is healthy and the node eligible.
    pub fn health(&self, sync_period: Duration) -> Health {
        self.check(sync_period, true)
    }

    /// `/livez`: the proxier's health alone, whatever the node's state.
    pub fn liveness(&self, sync_period: Duration) -> Health {
        self.check(sync_period, false)
    }

    fn check(&self, sync_period: Duration, with_node: bool) -> Health {
        let now = self.now();
        let (proxier_healthy, last_updated, node_eligible) = {
            let health = self.health_state();
            let timeout = sync_period.saturating_mul(2);
            // A clock that went backwards reads as "not late yet".
            let late = health.oldest_pending.is_some_and(|queued| {
                now.duration_since(queued)
                    .is_ok_and(|waited| waited >= timeout)
            });
            (!late, health.last_updated, health.node_eligible)
        };
        let healthy = proxier_healthy && (node_eligible || !with_node);
        // Upstream reports lastUpdated as the current time while healthy, as
        // releases did when it meant "the sync loop last ran".
        let last_updated = if healthy { Some(now) } else { last_updated };
        let mut body = serde_json::json!({
            "lastUpdated": last_updated.map(rfc3339),
            "currentTime": rfc3339(now),
        });
        if with_node {
            body["nodeEligible"] = node_eligible.into();
            body["nodeHealthy"] = node_eligible.into();
        }
        Health {
            healthy,
            body: body.to_string(),
        }
    }

    fn count_response(&self, path: &str, status: StatusCode) {
        let families = &self.inner.families;
        let family = if path == HEALTHZ_PATH {
            &families.healthz_responses
        } else {
            &families.livez_responses
        };
        family
            .get_or_create(&CodeLabels {
                code: status.as_u16(),
            })
            .inc();
    }
}

/// Seconds from `trigger` to `now`. As upstream, a trigger time in the
/// future (clock skew between the node and the control plane) comes out
/// negative and lands in the lowest bucket.
fn latency_seconds(trigger: SystemTime, now: SystemTime) -> f64 {
    match now.duration_since(trigger) {
        Ok(waited) => waited.as_secs_f64(),
        Err(ahead) => -ahead.duration().as_secs_f64(),
    }
}

/// The trigger time an EndpointSlice or Endpoints object carries in
/// [`LAST_CHANGE_TRIGGER_TIME_ANNOTATION`] (RFC 3339), if any and valid.
pub fn last_change_trigger_time(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Option<SystemTime> {
    let value = annotations?.get(LAST_CHANGE_TRIGGER_TIME_ANNOTATION)?;
    humantime::parse_rfc3339_weak(value).ok()
}

/// A count as a gauge's value (saturating: no count comes near `i64::MAX`).
fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// RFC 3339 in UTC, clamped to what the formatter can write (it refuses
/// times before 1970 and after 9999) so a wild clock cannot panic.
fn rfc3339(t: SystemTime) -> String {
    const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
    let latest = UNIX_EPOCH + Duration::from_secs(LAST_SECOND_OF_9999);
    humantime::format_rfc3339_millis(t.clamp(UNIX_EPOCH, latest)).to_string()
}

/// Which endpoints one listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Routes {
    health: bool,
    metrics: bool,
}

/// The listeners to open: one per address, both route sets on one listener
/// when the two flags name the same address (two binds would collide).
fn listener_plan(
    healthz: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
) -> Vec<(SocketAddr, Routes, &'static str)> {
    match (healthz, metrics) {
        (Some(h), Some(m)) if h == m => vec![(
            h,
            Routes {
                health: true,
                metrics: true,
            },
            "--healthz-bind-address and --metrics-bind-address",
        )],
        _ => healthz
            .map(|a| (a, HEALTH_ROUTES, "--healthz-bind-address"))
            .into_iter()
            .chain(metrics.map(|a| (a, METRICS_ROUTES, "--metrics-bind-address")))
            .collect(),
    }
}

const HEALTH_ROUTES: Routes = Routes {
    health: true,
    metrics: false,
};
const METRICS_ROUTES: Routes = Routes {
    health: false,
    metrics: true,
};

/// Serves `/healthz` and `/livez` on `healthz` and `/metrics` on
/// `metrics_addr` until the future is dropped. `None` leaves that endpoint
/// off. Returns only if an address cannot be bound; the error names it.
pub async fn serve(
    healthz: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    metrics: Metrics,
    sync_period: Duration,
) -> io::Result<()> {
    let mut listeners = Vec::new();
    for (addr, routes, flag) in listener_plan(healthz, metrics_addr) {
        let listener = TcpListener::bind(addr).await.map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot listen on {addr} ({flag}): {error}"),
            )
        })?;
        listeners.push((listener, routes));
    }
    match serve_listeners(listeners, metrics, sync_period).await {}
}

/// [`serve`] on listeners already bound (port 0 in tests). Never returns;
/// dropping the future closes the listeners and every open connection.
pub async fn serve_on(
    healthz: Option<TcpListener>,
    metrics_listener: Option<TcpListener>,
    metrics: Metrics,
    sync_period: Duration,
) -> Infallible {
    let listeners = healthz
        .map(|l| (l, HEALTH_ROUTES))
        .into_iter()
        .chain(metrics_listener.map(|l| (l, METRICS_ROUTES)))
        .collect();
    serve_listeners(listeners, metrics, sync_period).await
}

async fn serve_listeners(
    listeners: Vec<(TcpListener, Routes)>,
    metrics: Metrics,
    sync_period: Duration,
) -> Infallible {
    let mut accept_loops: Vec<AcceptLoop> = listeners
        .into_iter()
        .map(|(listener, routes)| accept_loop(listener, routes, metrics.clone(), sync_period))
        .collect();
    // With no listener this waits forever, like a server with nothing to do.
    accept_loops.push(Box::pin(futures::future::pending()));
    futures::future::select_all(accept_loops).await.0
}

type AcceptLoop = std::pin::Pin<Box<dyn std::future::Future<Output = Infallible> + Send>>;

/// Accepts connections until dropped.
fn accept_loop(
    listener: TcpListener,
    routes: Routes,
    metrics: Metrics,
    sync_period: Duration,
) -> AcceptLoop {
    Box::pin(async move {
        let local = listener.local_addr().ok();
        tracing::info!(address = ?local, ?routes, "serving HTTP");
        let respond = move |request: &Request<Incoming>| {
            respond(
                &metrics,
                routes,
                sync_period,
                request.method(),
                request.uri().path(),
            )
        };
        serve_http(&listener, respond, "/healthz and /metrics").await;
        // Only a shut-down socket ends the loop; nothing here shuts it.
        futures::future::pending().await
    })
}

/// Accepts HTTP/1 connections on `listener` and answers every request with
/// `respond`, until dropped (the connections live in a `JoinSet` owned
/// here, so dropping the future ends them too) or until the socket is shut
/// down. `what` names the server in logs. Shared by `/healthz` and
/// `/metrics` and by the health-check node ports.
pub(crate) async fn serve_http<F>(listener: &TcpListener, respond: F, what: &str)
where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let respond = respond.clone();
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let response = respond(&request);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    connections.spawn(async move {
                        let served = hyper::server::conn::http1::Builder::new()
                            // Lets hyper's header-read timeout drop clients that never finish a request.
                            .timer(TokioTimer::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        if let Err(error) = served {
                            tracing::debug!(%error, %peer, "HTTP connection ended with an error");
                        }
                    });
                }
                // The socket was shut down (a health-check port closing).
                Err(error) if error.kind() == io::ErrorKind::InvalidInput => return,
                Err(error) => {
                    // EMFILE and friends pass; back off instead of spinning.
                    tracing::warn!(%error, server = what, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The response to one request: pure apart from the response counters.
fn respond(
    metrics: &Metrics,
    routes: Routes,
    sync_period: Duration,
    method: &Method,
    path: &str,
) -> Response<Full<Bytes>> {
    let known = (routes.health && (path == HEALTHZ_PATH || path == LIVEZ_PATH))
        || (routes.metrics
            && (path == METRICS_PATH || path == PROXY_MODE_PATH || path == CONFIGZ_PATH));
    if !known {
        return plain(StatusCode::NOT_FOUND, "404 page not found\n");
    }
    if method != Method::GET && method != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    if path == METRICS_PATH {
        return with_content_type(StatusCode::OK, metrics.encode(), METRICS_CONTENT_TYPE);
    }
    if path == CONFIGZ_PATH {
        return match metrics.inner.configz.get() {
            Some(body) => nosniff(with_content_type(
                StatusCode::OK,
                body.clone(),
                "application/json",
            )),
            None => plain(StatusCode::NOT_FOUND, "404 page not found\n"),
        };
    }
    if path == PROXY_MODE_PATH {
        return nosniff(plain(StatusCode::OK, "ipvs"));
    }
    let health = if path == HEALTHZ_PATH {
        metrics.health(sync_period)
    } else {
        metrics.liveness(sync_period)
    };
    let status = if health.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    metrics.count_response(path, status);
    nosniff(with_content_type(status, health.body, "application/json"))
}

/// `response` with `X-Content-Type-Options: nosniff`, as kube-proxy sends
/// it on `/healthz`, `/livez` and `/proxyMode`.
fn nosniff(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_content_type(status, body.to_owned(), "text/plain; charset=utf-8")
}

fn with_content_type(
    status: StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PERIOD: Duration = Duration::from_secs(30);

    /// A clock the test moves by hand, starting at a fixed instant.
    #[derive(Clone)]
    struct FakeClock(Arc<Mutex<SystemTime>>);

    impl FakeClock {
        fn new() -> FakeClock {
            FakeClock(Arc::new(Mutex::new(
                UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            )))
        }
        fn at(&self, seconds: u64) -> SystemTime {
            UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
        }
        fn set(&self, seconds: u64) {
            *self.0.lock().unwrap() = self.at(seconds);
        }
        fn metrics(&self) -> Metrics {
            let clock = self.0.clone();
            Metrics::with_clock(move || *clock.lock().unwrap())
        }
    }

    /// One thing that happens to the proxy, at a second of the fake clock.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Pending(u64),
        /// A sync of this kind with this many failed writes.
        Sync(u64, &'static str, usize),
        /// A sync of this kind whose kernel read failed.
        ReadFailed(u64, &'static str),
        NodeEligible(u64, bool),
    }

    /// A sync outcome with `failed_writes` failed writes of 3.
    fn wrote(failed_writes: usize) -> SyncOutcome {
        SyncOutcome {
            writes: 3,
            failed_writes,
            failed_reads: 0,
        }
    }

    /// A sync outcome whose kernel read failed, so nothing was written.
    fn read_failed() -> SyncOutcome {
        SyncOutcome {
            writes: 0,
            failed_writes: 0,
            failed_reads: 1,
        }
    }
    use Step::*;

    #[test]
    fn health_follows_upstream_proxier_health() {
        // (name, steps, checked at, /healthz healthy, /livez healthy)
        #[rustfmt::skip]
        let cases: &[(&str, &[Step], u64, bool, bool)] = &[
            ("fresh start with nothing synced is healthy",
                &[], 1000, true, true),
            ("a pending change younger than 2 x sync period is healthy",
                &[Pending(0)], 59, true, true),
            ("a pending change exactly 2 x sync period old is unhealthy",
                &[Pending(0)], 60, false, false),
            ("a pending change older than the threshold is unhealthy",
                &[Pending(0)], 500, false, false),
            ("a full sync clears the pending change",
                &[Pending(0), Sync(10, "full", 0)], 500, true, true),
            ("an incremental sync clears the pending change",
                &[Pending(0), Sync(10, "incremental", 0)], 500, true, true),
            ("a verify sync clears the pending change",
                &[Pending(0), Sync(10, "verify", 0)], 500, true, true),
            ("a sync with failed writes leaves the change pending",
                &[Pending(0), Sync(10, "full", 2)], 60, false, false),
            ("failed writes with nothing queued start the wait",
                &[Sync(10, "incremental", 1)], 69, true, true),
            ("failed writes turn unhealthy 2 x sync period later",
                &[Sync(10, "incremental", 1)], 70, false, false),
            ("a later pending change does not restart the wait",
                &[Pending(0), Pending(50)], 60, false, false),
            ("a change after a sync waits from its own time",
                &[Pending(0), Sync(10, "full", 0), Pending(40)], 99, true, true),
            ("cleanup is not a sync of the rules",
                &[Pending(0), Sync(10, "cleanup", 0)], 60, false, false),
            ("an unknown kind is not a sync of the rules",
                &[Pending(0), Sync(10, "bogus", 0)], 60, false, false),
            ("a node being deleted fails healthz, not livez",
                &[NodeEligible(0, false)], 10, false, true),
            ("a node eligible again is healthy",
                &[NodeEligible(0, false), NodeEligible(5, true)], 10, true, true),
            ("a clock that went backwards is not late",
                &[Pending(100)], 0, true, true),
            ("a failed kernel read is not a success",
                &[Pending(0), ReadFailed(10, "full")], 60, false, false),
            ("failed kernel reads with nothing queued start the wait",
                &[ReadFailed(10, "full"), ReadFailed(40, "incremental")], 69, true, true),
            ("failed kernel reads turn unhealthy 2 x sync period later",
                &[ReadFailed(10, "full"), ReadFailed(40, "incremental")], 70, false, false),
            ("a read that succeeds again makes the proxy healthy",
                &[ReadFailed(10, "full"), Sync(75, "full", 0)], 100, true, true),
            ("a deleted node with failing reads fails both",
                &[ReadFailed(0, "full"), NodeEligible(0, false)], 60, false, false),
        ];
        for &(name, steps, checked_at, healthz, livez) in cases {
            let clock = FakeClock::new();
            let metrics = clock.metrics();
            for step in steps {
                match *step {
                    Pending(t) => {
                        clock.set(t);
                        metrics.mark_pending();
                    }
                    Sync(t, kind, failed) => {
                        clock.set(t);
                        metrics.record_sync(kind, Duration::from_millis(5), wrote(failed));
                    }
                    ReadFailed(t, kind) => {
                        clock.set(t);
                        metrics.record_sync(kind, Duration::from_millis(5), read_failed());
                    }
                    NodeEligible(t, eligible) => {
                        clock.set(t);
                        metrics.set_node_eligible(eligible);
                    }
                }
            }
            clock.set(checked_at);
            assert_eq!(metrics.health(PERIOD).healthy, healthz, "{name}: /healthz");
            assert_eq!(metrics.liveness(PERIOD).healthy, livez, "{name}: /livez");
        }
    }

    #[test]
    fn health_body_reports_times_as_upstream() {
        let clock = FakeClock::new();
        let metrics = clock.metrics();
        let body =
            |health: Health| -> serde_json::Value { serde_json::from_str(&health.body).unwrap() };

        // Healthy: lastUpdated is the current time, as upstream keeps it.
        clock.set(5);
        let healthy = body(metrics.health(PERIOD));
        assert_eq!(healthy["currentTime"], "2023-11-14T22:13:25.000Z");
        assert_eq!(healthy["lastUpdated"], healthy["currentTime"]);
        assert_eq!(healthy["nodeEligible"], true);
        assert_eq!(healthy["nodeHealthy"], true);

        // Unhealthy and never synced: there is no last update to report.
        clock.set(10);
        metrics.mark_pending();
        clock.set(100);
        let never = body(metrics.health(PERIOD));
        assert_eq!(never["lastUpdated"], serde_json::Value::Null);
        assert_eq!(never["currentTime"], "2023-11-14T22:15:00.000Z");

        // Unhealthy after a sync: lastUpdated is that sync.
        clock.set(200);
        metrics.record_sync("full", Duration::from_millis(5), wrote(0));
        clock.set(201);
        metrics.mark_pending();
        clock.set(400);
        let stale = body(metrics.health(PERIOD));
        assert_eq!(stale["lastUpdated"], "2023-11-14T22:16:40.000Z");
        assert_eq!(stale["currentTime"], "2023-11-14T22:20:00.000Z");

        // livez has no node field, as upstream.
        let live = body(metrics.liveness(PERIOD));
        assert!(live.get("nodeEligible").is_none(), "{live}");
    }

    #[test]
    fn rfc3339_never_panics_on_a_wild_clock() {
        let cases = [
            (
                "before the epoch",
                UNIX_EPOCH - Duration::from_secs(1),
                "1970-01-01T00:00:00.000Z",
            ),
            ("the epoch", UNIX_EPOCH, "1970-01-01T00:00:00.000Z"),
            (
                "past year 9999",
                UNIX_EPOCH + Duration::from_secs(300_000_000_000),
                "9999-12-31T23:59:59.000Z",
            ),
        ];
        for (name, t, expected) in cases {
            assert_eq!(rfc3339(t), expected, "{name}");
        }
    }

    /// The samples of an exposition, keyed by `name{labels}`.
    fn samples(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').unwrap();
                (series.to_owned(), value.parse().unwrap())
            })
            .collect()
    }

    /// The cumulative count of a histogram's bucket whose bound is `le`.
    fn bucket(samples: &BTreeMap<String, f64>, prefix: &str, le: f64) -> f64 {
        let found: Vec<f64> = samples
            .iter()
            .filter_map(|(series, value)| {
                let bound = series
                    .strip_prefix(prefix)?
                    .split("le=\"")
                    .nth(1)?
                    .strip_suffix("\"}")?;
                let bound: f64 = bound.parse().ok()?;
                ((bound - le).abs() <= le * 1e-9).then_some(*value)
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one bucket le={le} under {prefix}: {samples:#?}"
        );
        found[0]
    }

    #[test]
    fn encode_exposes_kube_proxy_and_own_families() {
        let clock = FakeClock::new();
        let metrics = clock.metrics();
        clock.set(10);
        metrics.mark_pending();
        clock.set(11);
        let outcome = |writes, failed_writes| SyncOutcome {
            writes,
            failed_writes,
            failed_reads: 0,
        };
        metrics.record_sync("full", Duration::from_millis(500), outcome(10, 0));
        clock.set(20);
        metrics.record_sync("incremental", Duration::from_millis(2), outcome(3, 1));
        clock.set(21);
        metrics.record_sync("verify", Duration::from_millis(300), outcome(0, 0));
        clock.set(22);
        metrics.record_sync("cleanup", Duration::from_secs(1), outcome(4, 0));
        metrics.record_sync("full", Duration::from_millis(1), read_failed());
        let names = services(&["a", "b", "c", "d", "e", "f"]);
        metrics.record_service_changes(&names[..4]);
        metrics.record_service_changes(&names[4..]);
        metrics.record_endpoint_changes(&names[..5]);
        metrics.set_no_local_endpoints(2, 1);
        metrics.set_virtual_servers(7);
        metrics.record_packet_path(12, 1, 0);
        metrics.record_packet_path(2, 1, 3);
        metrics.count_response(HEALTHZ_PATH, StatusCode::OK);
        metrics.count_response(HEALTHZ_PATH, StatusCode::OK);
        metrics.count_response(HEALTHZ_PATH, StatusCode::SERVICE_UNAVAILABLE);
        metrics.count_response(LIVEZ_PATH, StatusCode::OK);

        let text = metrics.encode();
        #[rustfmt::skip]
        let families = [
            ("kubeproxy_sync_proxy_rules_duration_seconds", "histogram"),
            ("kubeproxy_sync_full_proxy_rules_duration_seconds", "histogram"),
            ("kubeproxy_sync_partial_proxy_rules_duration_seconds", "histogram"),
            ("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "gauge"),
            ("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", "gauge"),
            ("kubeproxy_sync_proxy_rules_service_changes", "counter"),
            ("kubeproxy_sync_proxy_rules_endpoint_changes", "counter"),
            ("kubeproxy_proxy_healthz", "counter"),
            ("kubeproxy_proxy_livez", "counter"),
            ("kube_ipvs_proxy_sync_duration_seconds", "histogram"),
            ("kube_ipvs_proxy_netlink_writes", "counter"),
            ("kube_ipvs_proxy_sync_errors", "counter"),
            ("kube_ipvs_proxy_virtual_servers_desired", "gauge"),
            ("kube_ipvs_proxy_nftables_element_changes", "counter"),
            ("kube_ipvs_proxy_nftables_transactions", "counter"),
            ("kube_ipvs_proxy_conntrack_flows_deleted", "counter"),
            ("kube_ipvs_proxy_kernel_read_failures", "counter"),
            ("kube_ipvs_proxy_events_posted", "counter"),
            ("kube_ipvs_proxy_events_dropped", "counter"),
            ("kubeproxy_sync_proxy_rules_service_changes_pending", "gauge"),
            ("kubeproxy_sync_proxy_rules_endpoint_changes_pending", "gauge"),
            ("kubeproxy_network_programming_duration_seconds", "histogram"),
            ("kubeproxy_sync_proxy_rules_no_local_endpoints_total", "gauge"),
        ];
        for (family, kind) in families {
            assert!(
                text.contains(&format!("# TYPE {family} {kind}\n")),
                "{family} {kind} in:\n{text}"
            );
        }

        let samples = samples(&text);
        #[rustfmt::skip]
        let expected = [
            // full (twice), incremental and verify are syncs of the rules; cleanup is not.
            ("kubeproxy_sync_proxy_rules_duration_seconds_count", 4.0),
            ("kubeproxy_sync_proxy_rules_duration_seconds_sum", 0.803),
            ("kubeproxy_sync_full_proxy_rules_duration_seconds_count", 3.0),
            ("kubeproxy_sync_full_proxy_rules_duration_seconds_sum", 0.801),
            ("kubeproxy_sync_partial_proxy_rules_duration_seconds_count", 1.0),
            ("kubeproxy_sync_partial_proxy_rules_duration_seconds_sum", 0.002),
            // The verify at second 21 was the last sync without failures:
            // the full sync whose read failed, after it, does not count.
            ("kubeproxy_sync_proxy_rules_last_timestamp_seconds", 1_700_000_021.0),
            ("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", 1_700_000_010.0),
            ("kubeproxy_sync_proxy_rules_service_changes_total", 6.0),
            ("kubeproxy_sync_proxy_rules_endpoint_changes_total", 5.0),
            ("kubeproxy_proxy_healthz_total{code=\"200\"}", 2.0),
            ("kubeproxy_proxy_healthz_total{code=\"503\"}", 1.0),
            ("kubeproxy_proxy_livez_total{code=\"200\"}", 1.0),
            ("kube_ipvs_proxy_sync_duration_seconds_count{kind=\"cleanup\"}", 1.0),
            ("kube_ipvs_proxy_sync_duration_seconds_sum{kind=\"full\"}", 0.501),
            ("kube_ipvs_proxy_netlink_writes_total{kind=\"full\"}", 10.0),
            ("kube_ipvs_proxy_netlink_writes_total{kind=\"incremental\"}", 3.0),
            ("kube_ipvs_proxy_netlink_writes_total{kind=\"verify\"}", 0.0),
            ("kube_ipvs_proxy_netlink_writes_total{kind=\"cleanup\"}", 4.0),
            ("kube_ipvs_proxy_sync_errors_total{kind=\"incremental\"}", 1.0),
            ("kube_ipvs_proxy_sync_errors_total{kind=\"full\"}", 0.0),
            ("kube_ipvs_proxy_virtual_servers_desired", 7.0),
            ("kube_ipvs_proxy_nftables_element_changes_total", 14.0),
            ("kube_ipvs_proxy_nftables_transactions_total", 2.0),
            ("kube_ipvs_proxy_conntrack_flows_deleted_total", 3.0),
            ("kube_ipvs_proxy_kernel_read_failures_total{kind=\"full\"}", 1.0),
            ("kube_ipvs_proxy_kernel_read_failures_total{kind=\"cleanup\"}", 0.0),
            // Six distinct services changed since the last successful sync.
            ("kubeproxy_sync_proxy_rules_service_changes_pending", 6.0),
            ("kubeproxy_sync_proxy_rules_endpoint_changes_pending", 5.0),
            ("kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"internal\"}", 2.0),
            ("kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\"}", 1.0),
            ("kubeproxy_network_programming_duration_seconds_count", 0.0),
        ];
        for (series, value) in expected {
            let got = samples
                .get(series)
                .unwrap_or_else(|| panic!("{series} missing from:\n{text}"));
            assert!((got - value).abs() < 1e-9, "{series}: {got} != {value}");
        }

        // kube-proxy's buckets: 0.001 s lands in le=0.001, 0.002 s in
        // le=0.002, 0.3 s and 0.5 s in le=0.512.
        let all = "kubeproxy_sync_proxy_rules_duration_seconds_bucket";
        let cases = [
            (0.001, 1.0),
            (0.002, 2.0),
            (0.256, 2.0),
            (0.512, 4.0),
            (16.384, 4.0),
        ];
        for (le, count) in cases {
            assert_eq!(bucket(&samples, all, le), count, "{all} le={le}");
        }
        assert_eq!(samples[&format!("{all}{{le=\"+Inf\"}}")], 4.0);
    }

    /// Service names in namespace `default`.
    fn services(names: &[&str]) -> Vec<ServiceName> {
        names
            .iter()
            .map(|n| ServiceName::new("default", n))
            .collect()
    }

    #[test]
    fn pending_changes_count_each_service_once_until_a_sync_succeeds() {
        let metrics = Metrics::new();
        let names = services(&["a", "b"]);
        let pending = |metrics: &Metrics| {
            let samples = samples(&metrics.encode());
            (
                samples["kubeproxy_sync_proxy_rules_service_changes_pending"],
                samples["kubeproxy_sync_proxy_rules_endpoint_changes_pending"],
                samples["kubeproxy_sync_proxy_rules_service_changes_total"],
                samples["kubeproxy_sync_proxy_rules_endpoint_changes_total"],
            )
        };
        metrics.record_service_changes(&names);
        metrics.record_service_changes(&names[..1]);
        metrics.record_endpoint_changes(&names[1..]);
        assert_eq!(
            pending(&metrics),
            (2.0, 1.0, 3.0, 1.0),
            "a changed twice counts once"
        );
        metrics.record_sync("incremental", Duration::ZERO, wrote(1));
        assert_eq!(
            pending(&metrics),
            (2.0, 1.0, 3.0, 1.0),
            "a failed write keeps them"
        );
        metrics.record_sync("full", Duration::ZERO, read_failed());
        assert_eq!(
            pending(&metrics),
            (2.0, 1.0, 3.0, 1.0),
            "a failed read keeps them"
        );
        metrics.record_sync("cleanup", Duration::ZERO, wrote(0));
        assert_eq!(
            pending(&metrics),
            (2.0, 1.0, 3.0, 1.0),
            "cleanup syncs no rules"
        );
        metrics.record_sync("incremental", Duration::ZERO, wrote(0));
        assert_eq!(
            pending(&metrics),
            (0.0, 0.0, 3.0, 1.0),
            "a successful sync clears them"
        );
        metrics.record_endpoint_changes(&names[..1]);
        assert_eq!(
            pending(&metrics),
            (0.0, 1.0, 3.0, 2.0),
            "pending again from zero"
        );
    }

    #[test]
    fn network_programming_is_observed_once_by_the_sync_that_succeeds() {
        let clock = FakeClock::new();
        let metrics = clock.metrics();
        let programming = |metrics: &Metrics| {
            let samples = samples(&metrics.encode());
            let family = "kubeproxy_network_programming_duration_seconds";
            (
                samples[&format!("{family}_count")],
                samples[&format!("{family}_sum")],
            )
        };
        // Before the proxy started: programmed by someone else.
        metrics.record_trigger_time(clock.at(0) - Duration::from_secs(10));
        clock.set(5);
        metrics.record_trigger_time(clock.at(2));
        metrics.record_trigger_time(clock.at(4));
        clock.set(20);
        metrics.record_sync("full", Duration::ZERO, read_failed());
        metrics.record_sync("incremental", Duration::ZERO, wrote(1));
        metrics.record_sync("cleanup", Duration::ZERO, wrote(0));
        assert_eq!(programming(&metrics), (0.0, 0.0), "nothing programmed yet");
        clock.set(30);
        metrics.record_sync("incremental", Duration::ZERO, wrote(0));
        assert_eq!(
            programming(&metrics),
            (2.0, 28.0 + 26.0),
            "30 - 2 and 30 - 4"
        );
        clock.set(40);
        metrics.record_sync("full", Duration::ZERO, wrote(0));
        assert_eq!(programming(&metrics), (2.0, 54.0), "each change once");

        // Upstream's buckets: 26 s and 28 s both land in le=28, neither in le=25.
        let samples = samples(&metrics.encode());
        let buckets = "kubeproxy_network_programming_duration_seconds_bucket";
        let cases = [
            (0.0, 0.0),
            (0.25, 0.0),
            (25.0, 0.0),
            (26.0, 1.0),
            (28.0, 2.0),
            (300.0, 2.0),
        ];
        for (le, count) in cases {
            assert_eq!(bucket(&samples, buckets, le), count, "le={le}");
        }
        let bounds = samples.keys().filter(|k| k.starts_with(buckets)).count();
        assert_eq!(
            bounds,
            1 + 2 + 59 + 12 + 7 + 1,
            "upstream's buckets and +Inf"
        );
    }

    #[test]
    fn last_change_trigger_time_reads_the_annotation() {
        let cases = [
            (
                "seconds",
                Some("2024-05-01T10:00:00Z"),
                Some(1_714_557_600_000),
            ),
            (
                "nanoseconds",
                Some("2024-05-01T10:00:00.250000000Z"),
                Some(1_714_557_600_250),
            ),
            ("garbage", Some("yesterday"), None),
            ("absent", None, None),
        ];
        for (name, value, expected_ms) in cases {
            let annotations: std::collections::BTreeMap<String, String> = value
                .map(|v| (LAST_CHANGE_TRIGGER_TIME_ANNOTATION.to_owned(), v.to_owned()))
                .into_iter()
                .collect();
            let got = last_change_trigger_time(Some(&annotations))
                .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_millis());
            assert_eq!(got, expected_ms, "{name}");
        }
        assert_eq!(last_change_trigger_time(None), None, "no annotations");
    }

    #[test]
    fn no_local_endpoints_is_a_gauge_by_traffic_policy() {
        let metrics = Metrics::new();
        metrics.set_no_local_endpoints(3, 1);
        metrics.set_no_local_endpoints(1, 0);
        let samples = samples(&metrics.encode());
        let family = "kubeproxy_sync_proxy_rules_no_local_endpoints_total";
        assert_eq!(
            samples[&format!("{family}{{traffic_policy=\"internal\"}}")],
            1.0
        );
        assert_eq!(
            samples[&format!("{family}{{traffic_policy=\"external\"}}")],
            0.0
        );
    }

    fn sample(
        service: &str,
        addr: &str,
        port: u16,
        counters: TrafficCounters,
    ) -> VirtualServerSample {
        VirtualServerSample {
            service: ServiceName::new("default", service),
            key: VirtualServerKey {
                addr: addr.parse().unwrap(),
                protocol: Protocol::Tcp,
                port,
            },
            counters,
        }
    }

    #[test]
    fn virtual_server_counters_are_replaced_at_each_full_sync() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        assert!(
            !text.contains("virtual_server_"),
            "no series before a dump:\n{text}"
        );

        let web = TrafficCounters {
            connections: 7,
            packets_in: 40,
            packets_out: 30,
            bytes_in: 4000,
            bytes_out: 9000,
        };
        metrics.set_virtual_server_traffic([
            sample("web", "10.96.0.10", 80, web),
            sample("db", "fd00::20", 5432, TrafficCounters::default()),
        ]);
        let text = metrics.encode();
        for family in [
            "kube_ipvs_proxy_virtual_server_connections",
            "kube_ipvs_proxy_virtual_server_packets",
            "kube_ipvs_proxy_virtual_server_bytes",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} counter\n")),
                "{family}:\n{text}"
            );
        }
        let samples = samples(&text);
        let web_labels = "namespace=\"default\",service=\"web\",protocol=\"TCP\",address=\"10.96.0.10\",port=\"80\"";
        #[rustfmt::skip]
        let expected = [
            (format!("kube_ipvs_proxy_virtual_server_connections_total{{{web_labels}}}"), 7.0),
            (format!("kube_ipvs_proxy_virtual_server_packets_total{{{web_labels},direction=\"in\"}}"), 40.0),
            (format!("kube_ipvs_proxy_virtual_server_packets_total{{{web_labels},direction=\"out\"}}"), 30.0),
            (format!("kube_ipvs_proxy_virtual_server_bytes_total{{{web_labels},direction=\"in\"}}"), 4000.0),
            (format!("kube_ipvs_proxy_virtual_server_bytes_total{{{web_labels},direction=\"out\"}}"), 9000.0),
            ("kube_ipvs_proxy_virtual_server_connections_total{namespace=\"default\",service=\"db\",protocol=\"TCP\",address=\"fd00::20\",port=\"5432\"}".to_owned(), 0.0),
        ];
        for (series, value) in &expected {
            assert_eq!(samples.get(series), Some(value), "{series} in:\n{text}");
        }

        // The next full sync no longer finds db: its series go.
        metrics.set_virtual_server_traffic([sample("web", "10.96.0.10", 80, web)]);
        let text = metrics.encode();
        assert!(text.contains("service=\"web\""), "{text}");
        assert!(!text.contains("service=\"db\""), "{text}");
        metrics.set_virtual_server_traffic([]);
        assert!(!metrics.encode().contains("virtual_server_"));
    }

    #[test]
    fn a_full_sync_refills_the_samples_in_place() {
        let metrics = Metrics::new();
        let samples = |n: u16| {
            (0..n).map(|port| sample("web", "10.96.0.10", port, TrafficCounters::default()))
        };
        let buffer = || {
            let held = metrics.inner.traffic.samples.lock().unwrap();
            (held.as_ptr(), held.len(), held.capacity())
        };
        metrics.set_virtual_server_traffic(samples(1000));
        let (first, len, capacity) = buffer();
        assert_eq!(len, 1000);
        // The same number of virtual servers again: the same buffer.
        metrics.set_virtual_server_traffic(samples(1000));
        assert_eq!(buffer(), (first, 1000, capacity));
        // A few less: still the same buffer.
        metrics.set_virtual_server_traffic(samples(900));
        assert_eq!(buffer(), (first, 900, capacity));
        // Most of them gone: the spare room is given back.
        metrics.set_virtual_server_traffic(samples(10));
        let (_, len, shrunk) = buffer();
        assert_eq!(len, 10);
        assert!(shrunk < capacity / 4, "{shrunk} of {capacity}");
    }

    #[test]
    fn virtual_servers_gauge_is_set_not_added() {
        let metrics = Metrics::new();
        metrics.set_virtual_servers(7);
        metrics.set_virtual_servers(3);
        assert_eq!(
            samples(&metrics.encode())["kube_ipvs_proxy_virtual_servers_desired"],
            3.0
        );
    }

    #[test]
    fn listener_plan_shares_one_listener_for_one_address() {
        let a: SocketAddr = "0.0.0.0:10256".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:10249".parse().unwrap();
        let both = Routes {
            health: true,
            metrics: true,
        };
        let cases = [
            ("neither", None, None, vec![]),
            ("healthz only", Some(a), None, vec![(a, HEALTH_ROUTES)]),
            ("metrics only", None, Some(b), vec![(b, METRICS_ROUTES)]),
            (
                "two addresses",
                Some(a),
                Some(b),
                vec![(a, HEALTH_ROUTES), (b, METRICS_ROUTES)],
            ),
            ("one address for both", Some(a), Some(a), vec![(a, both)]),
        ];
        for (name, healthz, metrics, expected) in cases {
            let plan: Vec<_> = listener_plan(healthz, metrics)
                .into_iter()
                .map(|(addr, routes, _flag)| (addr, routes))
                .collect();
            assert_eq!(plan, expected, "{name}");
        }
    }

    /// One HTTP/1.1 request over a fresh connection: (status, headers, body).
    async fn get(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    #[tokio::test]
    async fn serves_healthz_and_metrics_over_http() {
        let clock = FakeClock::new();
        let metrics = clock.metrics();
        let healthz = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let exposition = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (healthz_addr, metrics_addr) = (
            healthz.local_addr().unwrap(),
            exposition.local_addr().unwrap(),
        );
        let server = tokio::spawn(serve_on(
            Some(healthz),
            Some(exposition),
            metrics.clone(),
            PERIOD,
        ));

        let (status, head, body) = get(healthz_addr, "GET", HEALTHZ_PATH).await;
        assert_eq!(status, 200, "{head}{body}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["nodeEligible"], true);

        metrics.mark_pending();
        clock.set(61);
        let cases = [
            (
                "stale pending change fails healthz",
                healthz_addr,
                "GET",
                HEALTHZ_PATH,
                503,
            ),
            (
                "stale pending change fails livez",
                healthz_addr,
                "GET",
                LIVEZ_PATH,
                503,
            ),
            (
                "HEAD is a GET without body",
                healthz_addr,
                "HEAD",
                HEALTHZ_PATH,
                503,
            ),
            (
                "POST is not allowed",
                healthz_addr,
                "POST",
                HEALTHZ_PATH,
                405,
            ),
            (
                "metrics are not on the healthz port",
                healthz_addr,
                "GET",
                METRICS_PATH,
                404,
            ),
            (
                "health is not on the metrics port",
                metrics_addr,
                "GET",
                HEALTHZ_PATH,
                404,
            ),
            ("unknown path", metrics_addr, "GET", "/flagz", 404),
            (
                "no configuration set yet",
                metrics_addr,
                "GET",
                CONFIGZ_PATH,
                404,
            ),
        ];
        for (name, addr, method, path, expected) in cases {
            let (status, head, body) = get(addr, method, path).await;
            assert_eq!(status, expected, "{name}: {head}{body}");
        }

        // As upstream: the mode, as plain text, on the metrics address only.
        let (status, head, body) = get(metrics_addr, "GET", PROXY_MODE_PATH).await;
        assert_eq!((status, body.as_str()), (200, "ipvs"), "{head}");
        assert!(
            head.contains("content-type: text/plain; charset=utf-8"),
            "{head}"
        );
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        let (status, _, _) = get(healthz_addr, "GET", PROXY_MODE_PATH).await;
        assert_eq!(status, 404, "/proxyMode is not on the healthz address");

        // The configuration, once `run` has set it.
        metrics.set_configz(r#"{"kubeproxy.config.k8s.io":{"mode":"ipvs"}}"#.to_owned());
        let (status, head, body) = get(metrics_addr, "GET", CONFIGZ_PATH).await;
        assert_eq!(
            (status, body.as_str()),
            (200, r#"{"kubeproxy.config.k8s.io":{"mode":"ipvs"}}"#),
            "{head}"
        );
        assert!(head.contains("content-type: application/json"), "{head}");
        let (status, _, _) = get(healthz_addr, "GET", CONFIGZ_PATH).await;
        assert_eq!(status, 404, "/configz is not on the healthz address");

        let (status, head, body) = get(metrics_addr, "GET", METRICS_PATH).await;
        assert_eq!(status, 200, "{head}{body}");
        assert!(
            head.contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        let samples = samples(&body);
        // One 200 and two 503 answers from /healthz (HEAD included), one 503 from /livez.
        assert_eq!(
            samples["kubeproxy_proxy_healthz_total{code=\"200\"}"], 1.0,
            "{body}"
        );
        assert_eq!(
            samples["kubeproxy_proxy_healthz_total{code=\"503\"}"], 2.0,
            "{body}"
        );
        assert_eq!(
            samples["kubeproxy_proxy_livez_total{code=\"503\"}"], 1.0,
            "{body}"
        );

        server.abort();
    }

    #[tokio::test]
    async fn dropping_the_server_closes_open_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_on(Some(listener), None, Metrics::new(), PERIOD));

        // A kept-alive connection, known to be served: its first answer arrived.
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {HEALTHZ_PATH} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        while !String::from_utf8_lossy(&answer).ends_with('}') {
            let mut chunk = [0; 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            assert_ne!(
                n,
                0,
                "closed before answering: {}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&chunk[..n]);
        }

        server.abort();
        assert!(server.await.unwrap_err().is_cancelled());
        // The guard only turns a regression into a failure instead of a hang.
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(0))),
            "connection still open: {closed:?}"
        );
    }

    #[tokio::test]
    async fn serve_names_the_address_it_cannot_bind() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let cases = [
            ("healthz", Some(addr), None, "--healthz-bind-address"),
            ("metrics", None, Some(addr), "--metrics-bind-address"),
        ];
        for (name, healthz, metrics_addr, flag) in cases {
            let error = serve(healthz, metrics_addr, Metrics::new(), PERIOD)
                .await
                .unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{name}");
            let message = error.to_string();
            assert!(
                message.contains(&addr.to_string()) && message.contains(flag),
                "{name}: {message}"
            );
        }
    }
}
