//! The whole in-cluster pipeline (kube-rs watchers -> model -> translate ->
//! reconcile) driven by the proxy's own run loop, against the test API
//! server over real HTTP and an in-memory kernel. No kube-apiserver can be
//! installed on these machines; this is what stands in for one.
//!
//! It pins down what an operator relies on when the API misbehaves: a 410
//! Gone or a cut watch leads to a relist that changes only what changed, and
//! never withdraws a service that still exists.

#[allow(
    dead_code,
    reason = "this target uses only part of the shared test API server"
)]
mod support;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_ipvs_proxy::cli::Cli;
use kube_ipvs_proxy::desired::{NftRuleset, Op, RealServerKey, VirtualServerKey};
use kube_ipvs_proxy::events::EventSink;
use kube_ipvs_proxy::kernel::fake::{FakeConntrack, FakeKernel, FakeNft, Write};
use kube_ipvs_proxy::kernel::{
    AddressKernel, IpvsKernel, KernelError, ListedRealServers, ListedVirtualServer,
};
use kube_ipvs_proxy::metrics::Metrics;
use kube_ipvs_proxy::proxy::{Kernel, Loop, Result as ProxyResult};
use kube_ipvs_proxy::source::kube::{client, watch};
use kube_ipvs_proxy::translate::{NodeFacts, TranslateConfig};
use support::apiserver::TestApiServer;
use support::objects::{key, meta, service, slice};
use tokio::sync::{oneshot, Mutex};

/// One fake kernel, shared between the loop (as both kernel traits) and the
/// test, which reads it while the loop runs.
#[derive(Clone, Default)]
struct SharedKernel(Arc<Mutex<FakeKernel>>);

impl IpvsKernel for SharedKernel {
    async fn list_virtual_servers(&mut self) -> Result<Vec<ListedVirtualServer>, KernelError> {
        self.0.lock().await.list_virtual_servers().await
    }
    async fn list_real_servers(
        &mut self,
        keys: &[VirtualServerKey],
    ) -> Result<Vec<ListedRealServers>, KernelError> {
        self.0.lock().await.list_real_servers(keys).await
    }
    async fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), KernelError>> {
        self.0.lock().await.apply(ops).await
    }
}

impl AddressKernel for SharedKernel {
    async fn ensure_link(&mut self) -> Result<Vec<IpAddr>, KernelError> {
        self.0.lock().await.ensure_link().await
    }
    async fn add_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        self.0.lock().await.add_address(addr).await
    }
    async fn add_addresses(&mut self, addrs: &[IpAddr]) -> Vec<Result<(), KernelError>> {
        self.0.lock().await.add_addresses(addrs).await
    }
    async fn del_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        self.0.lock().await.del_address(addr).await
    }
}

/// The real servers of `vs`, sorted, as "addr:port" ("-" when the virtual
/// server is absent).
async fn real_servers(kernel: &SharedKernel, vs: &str) -> String {
    match kernel.0.lock().await.virtual_server(&key(vs)) {
        None => "-".to_owned(),
        Some(found) => {
            let mut keys: Vec<RealServerKey> = found.real_servers.iter().map(|r| r.key).collect();
            keys.sort();
            keys.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
    }
}

/// Polls until `vs` has exactly `want`; the bound only guards against a hang.
async fn converge(kernel: &SharedKernel, vs: &str, want: &str) {
    for _ in 0..200 {
        if real_servers(kernel, vs).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{vs} never became {want}; it is {}",
        real_servers(kernel, vs).await
    );
}

struct Running {
    server: TestApiServer,
    metrics: Metrics,
    kernel: SharedKernel,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<ProxyResult<()>>,
}

/// The proxy loop, in-cluster, against a server holding services `web`
/// (two endpoints) and `api` (one), and this node.
async fn start() -> Running {
    let server = TestApiServer::start().await;
    server.apply(&service("web", "10.96.0.10"));
    server.apply(&slice("web", &["10.244.1.11", "10.244.1.12"]));
    server.apply(&service("api", "10.96.0.20"));
    server.apply(&slice("api", &["10.244.1.13"]));
    server.apply(&Node {
        metadata: meta(None, "node-1", &[]),
        ..Node::default()
    });

    // The loop's metrics count the client's requests, as in `run`.
    let metrics = Metrics::new();
    let kube = client(None, Some(&server.url()), &metrics)
        .await
        .expect("client");
    let events = Box::pin(watch(kube, "node-1"));
    let kernel = SharedKernel::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let loop_metrics = metrics.clone();
    let (mut ipvs, mut link) = (kernel.clone(), kernel.clone());
    let task = tokio::spawn(async move {
        // Leaked so that the loop may borrow it for the task's whole life.
        let opts = Box::leak(Box::new(
            Cli::parse_from([
                "kube-ipvs-proxy",
                "--ipvs-min-sync-period",
                "50ms",
                "--ipvs-sync-period",
                "1h",
            ])
            .options,
        ));
        let node = NodeFacts {
            name: "node-1".into(),
            node_addresses: vec![],
            local_addresses: vec![],
            ipv4: true,
            ipv6: false,
        };
        let refresh = {
            let node = node.clone();
            move || ready(node.clone())
        };
        let (mut nft, mut conntrack) = (FakeNft::new(), FakeConntrack::default());
        let kernel_handles = Kernel {
            ipvs: &mut ipvs,
            link: &mut link,
            nft: &mut nft,
            conntrack: &mut conntrack,
        };
        Loop {
            opts,
            node,
            translate: TranslateConfig::default(),
            ruleset: NftRuleset::default(),
            source_name: "kube",
            metrics: loop_metrics,
            events: EventSink::disabled(),
        }
        .serve(events, kernel_handles, refresh, async {
            let _ = stopped.await;
        })
        .await
    });
    Running {
        server,
        metrics,
        kernel,
        stop: Some(stop),
        task,
    }
}

fn ready(node: NodeFacts) -> impl Future<Output = ProxyResult<NodeFacts>> {
    std::future::ready(Ok(node))
}

impl Running {
    async fn writes(&self) -> Vec<Write> {
        self.kernel.0.lock().await.take_writes()
    }

    /// Cuts the watches and compacts the history around a change to `api`,
    /// which gains 10.244.1.15, so that the client must relist (410 Gone);
    /// returns once the kernel has the new endpoint.
    async fn add_endpoint_behind_a_cut_watch(&self) {
        self.server.compact_history();
        self.server.cut_watches();
        self.server
            .apply(&slice("api", &["10.244.1.13", "10.244.1.15"]));
        self.server.compact_history();
        converge(
            &self.kernel,
            "10.96.0.20",
            "10.244.1.13:8080,10.244.1.15:8080",
        )
        .await;
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the loop stops when told")
            .expect("the loop task does not panic");
        assert!(result.is_ok(), "the loop ended with {result:?}");
    }
}

#[tokio::test]
async fn initial_lists_are_programmed_once_every_watcher_has_listed() {
    let proxy = start().await;
    converge(
        &proxy.kernel,
        "10.96.0.10",
        "10.244.1.11:8080,10.244.1.12:8080",
    )
    .await;
    converge(&proxy.kernel, "10.96.0.20", "10.244.1.13:8080").await;
    let kernel = proxy.kernel.0.lock().await;
    assert_eq!(
        kernel.addresses(),
        ["10.96.0.10", "10.96.0.20"]
            .map(|a| a.parse::<IpAddr>().unwrap())
            .to_vec()
    );
    drop(kernel);
    let exposition = proxy.metrics.encode();
    assert!(
        exposition.contains("kube_ipvs_proxy_virtual_servers_desired 2"),
        "{exposition}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn an_endpoint_change_is_one_write() {
    let proxy = start().await;
    converge(
        &proxy.kernel,
        "10.96.0.10",
        "10.244.1.11:8080,10.244.1.12:8080",
    )
    .await;
    proxy.writes().await;

    proxy.server.apply(&slice(
        "web",
        &["10.244.1.11", "10.244.1.12", "10.244.1.14"],
    ));
    converge(
        &proxy.kernel,
        "10.96.0.10",
        "10.244.1.11:8080,10.244.1.12:8080,10.244.1.14:8080",
    )
    .await;
    let writes = proxy.writes().await;
    assert_eq!(writes.len(), 1, "{writes:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_410_relist_applies_only_what_changed_and_withdraws_nothing_that_exists() {
    let proxy = start().await;
    converge(&proxy.kernel, "10.96.0.20", "10.244.1.13:8080").await;
    proxy.writes().await;
    let lists_before = proxy.server.requests::<EndpointSlice>().lists;

    // While the watch is broken and history compacted, `api` gains an
    // endpoint; `web` stays as it was. The client must relist (410 Gone).
    proxy.add_endpoint_behind_a_cut_watch().await;
    assert!(
        proxy.server.requests::<EndpointSlice>().lists > lists_before,
        "the 410 Gone must have led to a relist"
    );
    let writes = proxy.writes().await;
    assert_eq!(
        writes,
        [Write::Ipvs(Op::AddRealServer(
            key("10.96.0.20"),
            kube_ipvs_proxy::desired::RealServer {
                key: RealServerKey {
                    addr: "10.244.1.15".parse().unwrap(),
                    port: 8080
                },
                weight: 1
            }
        ))],
        "the relist must add the new endpoint and touch nothing else"
    );
    assert_eq!(
        real_servers(&proxy.kernel, "10.96.0.10").await,
        "10.244.1.11:8080,10.244.1.12:8080"
    );
    proxy.stop().await;
}

/// The value of the sample `name{labels}` in an exposition, if present.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split(' ').next()?.parse().ok())
}

#[tokio::test]
async fn api_requests_are_counted_as_client_go_counts_them() {
    let proxy = start().await;
    converge(&proxy.kernel, "10.96.0.20", "10.244.1.13:8080").await;
    let host = proxy.server.url().trim_start_matches("http://").to_owned();
    let ok = format!("rest_client_requests_total{{code=\"200\",host=\"{host}\",method=\"GET\"}}");
    let exposition = proxy.metrics.encode();
    // Three lists and three watches at least, each answered 200.
    let before = sample(&exposition, &ok).unwrap_or_else(|| panic!("no {ok} in {exposition}"));
    assert!(before >= 6.0, "{ok} is {before}");
    let latency =
        format!("rest_client_request_duration_seconds_count{{verb=\"GET\",host=\"{host}\"}}");
    assert_eq!(sample(&exposition, &latency), Some(before), "{exposition}");

    // A relist the server refuses once: counted under its code, then the
    // retry under 200.
    let lists_before = proxy.server.requests::<EndpointSlice>().lists;
    proxy.server.fail_next_lists(1);
    proxy.add_endpoint_behind_a_cut_watch().await;
    assert!(proxy.server.requests::<EndpointSlice>().lists > lists_before);
    let exposition = proxy.metrics.encode();
    let failed =
        format!("rest_client_requests_total{{code=\"500\",host=\"{host}\",method=\"GET\"}}");
    assert_eq!(sample(&exposition, &failed), Some(1.0), "{exposition}");
    let after = sample(&exposition, &ok).unwrap();
    assert!(after > before, "{ok}: {before} then {after}");
    // Every request is timed, whatever its answer (the watch that found
    // its history compacted may have had one of its own).
    let gets: f64 = exposition
        .lines()
        .filter(|l| l.starts_with("rest_client_requests_total{") && l.contains("method=\"GET\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(sample(&exposition, &latency), Some(gets), "{exposition}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_deleted_service_is_withdrawn_after_a_cut_watch_resumes() {
    let proxy = start().await;
    converge(&proxy.kernel, "10.96.0.20", "10.244.1.13:8080").await;
    proxy.server.cut_watches();
    proxy.server.delete::<Service>(Some("default"), "api");
    proxy
        .server
        .delete::<EndpointSlice>(Some("default"), "api-1");
    converge(&proxy.kernel, "10.96.0.20", "-").await;
    let kernel = proxy.kernel.0.lock().await;
    assert_eq!(
        kernel.addresses(),
        vec!["10.96.0.10".parse::<IpAddr>().unwrap()],
        "the withdrawn service's address leaves kube-ipvs0"
    );
    drop(kernel);
    assert_eq!(
        real_servers(&proxy.kernel, "10.96.0.10").await,
        "10.244.1.11:8080,10.244.1.12:8080"
    );
    proxy.stop().await;
}
