//! The in-cluster source end to end: kube-runtime watchers against a test
//! API server speaking list and watch over HTTP.

#[allow(
    dead_code,
    reason = "this target uses only part of the shared test API server"
)]
mod support;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;
use kube_ipvs_proxy::metrics::Metrics;
use kube_ipvs_proxy::source::kube::{client, error_chain, watch, ClientError};
use kube_ipvs_proxy::source::{SourceEvent, Update};
use support::apiserver::TestApiServer;
use support::tls::{TestCa, TlsFront};

fn meta(namespace: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        namespace: namespace.map(str::to_owned),
        name: Some(name.to_owned()),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }),
        ..ObjectMeta::default()
    }
}

fn service(name: &str, port: i32) -> Service {
    service_labelled(name, port, &[])
}

fn service_labelled(name: &str, port: i32, labels: &[(&str, &str)]) -> Service {
    Service {
        metadata: meta(Some("web"), name, labels),
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".to_owned()),
            ports: Some(vec![ServicePort {
                port,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn slice(name: &str, labels: &[(&str, &str)]) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(Some("web"), name, labels),
        address_type: "IPv4".to_owned(),
        endpoints: vec![Endpoint {
            addresses: vec!["10.0.0.1".to_owned()],
            ..Endpoint::default()
        }],
        ports: None,
    }
}

fn node(name: &str, zone: &str) -> Node {
    Node {
        metadata: meta(None, name, &[("topology.kubernetes.io/zone", zone)]),
        ..Node::default()
    }
}

const HEADLESS: (&str, &str) = ("service.kubernetes.io/headless", "");
const OTHER_PROXY: (&str, &str) = ("service.kubernetes.io/service-proxy-name", "other");

/// Lists in progress, by kind: the keys of their objects so far.
type Listing = std::collections::HashMap<&'static str, Vec<String>>;

/// An event as a line: kind, update and the objects' namespace/name (and a
/// Service's first port, a Node's zone, to tell versions apart). A streamed
/// list is one line, "Kind Replace [...]", at its `ListDone`; before that
/// its events only fill `listing`.
fn describe(event: &SourceEvent, listing: &mut Listing) -> Option<String> {
    fn key<K: Metadata<Ty = ObjectMeta>>(object: &K) -> String {
        let meta = object.metadata();
        match &meta.namespace {
            Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or("-")),
            None => meta.name.clone().unwrap_or_default(),
        }
    }
    fn service_key(s: &Service) -> String {
        let port = s
            .spec
            .as_ref()
            .and_then(|spec| spec.ports.as_ref())
            .and_then(|p| p.first())
            .map(|p| p.port);
        format!("{}:{}", key(s), port.unwrap_or_default())
    }
    fn node_key(n: &Node) -> String {
        let zone = n
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("topology.kubernetes.io/zone"));
        format!("{}@{}", key(n), zone.map(String::as_str).unwrap_or("-"))
    }
    fn update<K>(
        kind: &'static str,
        update: &Update<K>,
        key: fn(&K) -> String,
        listing: &mut Listing,
    ) -> Option<String> {
        let replace = |keys: Vec<String>| format!("{kind} Replace [{}]", keys.join(", "));
        match update {
            Update::Apply(o) => Some(format!("{kind} Apply {}", key(o))),
            Update::Delete(o) => Some(format!("{kind} Delete {}", key(o))),
            Update::Replace(v) => Some(replace(v.iter().map(key).collect())),
            Update::ListStart => {
                listing.insert(kind, Vec::new());
                None
            }
            Update::Listed(o) => {
                listing.entry(kind).or_default().push(key(o));
                None
            }
            Update::ListDone => Some(replace(listing.remove(kind).unwrap_or_default())),
        }
    }
    match event {
        SourceEvent::Service(u) => update("Service", u, |s| service_key(s), listing),
        SourceEvent::EndpointSlice(u) => update("EndpointSlice", u, |s| key(&**s), listing),
        SourceEvent::Endpoints(u) => update("Endpoints", u, |e| key(&**e), listing),
        SourceEvent::Node(u) => update("Node", u, |n| node_key(n), listing),
        SourceEvent::Synced => Some("Synced".to_owned()),
    }
}

/// A server holding the usual objects, with `prepare` run on it first.
async fn usual_server(prepare: impl FnOnce(&TestApiServer)) -> TestApiServer {
    let server = TestApiServer::start().await;
    prepare(&server);
    server.apply(&service("a", 80));
    server.apply(&service("b", 81));
    server.apply(&service_labelled("other", 82, &[OTHER_PROXY]));
    server.apply(&slice("a-1", &[]));
    server.apply(&slice("headless-1", &[HEADLESS]));
    server.apply(&node("node-1", "zone-a"));
    server.apply(&node("node-2", "zone-b"));
    server
}

/// The initial lists of the usual objects as node-1 sees them, and Synced.
const USUAL_INITIAL: [&str; 4] = [
    // Not the slice of a headless service, not another proxy's service,
    // not another node.
    "EndpointSlice Replace [web/a-1]",
    "Node Replace [node-1@zone-a]",
    "Service Replace [web/a:80, web/b:81]",
    "Synced",
];

/// How `Harness::suspend` breaks the open watches.
enum Break {
    /// The connection fails mid-stream.
    Cut,
    /// The watch ends cleanly, as at its timeout.
    End,
}

/// The source under test and everything it emitted so far.
struct Harness {
    server: TestApiServer,
    events: Pin<Box<dyn Stream<Item = SourceEvent> + Send>>,
    /// Every event received, in order.
    log: Vec<String>,
    /// Events received while waiting for watches, not yet handed out.
    unread: std::collections::VecDeque<String>,
    /// Streamed lists not yet complete.
    listing: Listing,
}

impl Harness {
    /// A server holding the usual objects, and the source watching it as
    /// node-1 through `--master`.
    async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    /// As `start`, with `prepare` run on the server before the source starts.
    async fn start_with(prepare: impl FnOnce(&TestApiServer)) -> Harness {
        let server = usual_server(prepare).await;
        let client = client(None, Some(&server.url()), &Metrics::new())
            .await
            .expect("client for the test server");
        Harness::watching(server, client)
    }

    /// The source watching `server` as node-1 through `client`.
    fn watching(server: TestApiServer, client: kube::Client) -> Harness {
        Harness {
            server,
            events: Box::pin(watch(client, "node-1")),
            log: Vec::new(),
            unread: std::collections::VecDeque::new(),
            listing: Listing::new(),
        }
    }

    /// As `start`, with 1,200 more Services (`web/s0000` to `web/s1199`,
    /// port 80): three pages of the watcher's LIST, as kube asks for 500
    /// objects a page. Returns their names too.
    async fn with_three_pages_of_services() -> (Harness, Vec<String>) {
        let names: Vec<String> = (0..1200).map(|i| format!("s{i:04}")).collect();
        let source = Harness::start_with(|server| {
            for name in &names {
                server.apply(&service(name, 80));
            }
        })
        .await;
        (source, names)
    }

    /// The next event (a streamed list counts as one); the timeout only
    /// guards against a hang.
    async fn next(&mut self) -> String {
        if let Some(line) = self.unread.pop_front() {
            return line;
        }
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), self.events.next())
                .await
                .unwrap_or_else(|_| panic!("no event within 10 s; so far: {:#?}", self.log))
                .expect("the source never ends");
            if let Some(line) = describe(&event, &mut self.listing) {
                self.log.push(line.clone());
                return line;
            }
        }
    }

    /// The next event about `kind` (the others are logged and skipped).
    async fn next_of(&mut self, kind: &str) -> String {
        loop {
            let line = self.next().await;
            if line.starts_with(&format!("{kind} ")) {
                return line;
            }
        }
    }

    /// The next event of each of `kinds`, in that order (other events are
    /// logged and skipped).
    async fn next_of_each(&mut self, kinds: &[&str]) -> Vec<String> {
        let mut found: Vec<Option<String>> = vec![None; kinds.len()];
        while found.iter().any(Option::is_none) {
            let line = self.next().await;
            let kind = line.split(' ').next().unwrap_or_default();
            if let Some(at) = kinds.iter().position(|k| *k == kind) {
                found[at].get_or_insert(line);
            }
        }
        found.into_iter().flatten().collect()
    }

    /// Consumes the initial lists and Synced.
    async fn synced(&mut self) {
        for _ in 0..4 {
            self.next().await;
        }
        assert_eq!(
            self.log.last().map(String::as_str),
            Some("Synced"),
            "{:#?}",
            self.log
        );
        self.open_watches(3).await;
    }

    /// Breaks every watch and keeps the source blind until `resume`.
    async fn suspend(&mut self, how: Break) {
        self.server.hold_watches();
        match how {
            Break::Cut => self.server.cut_watches(),
            Break::End => self.server.end_watches(),
        }
        self.open_watches(0).await;
    }

    async fn resume(&mut self) {
        self.server.release_watches();
        self.open_watches(3).await;
    }

    /// Waits for `count` open watches, polling the source meanwhile (its
    /// watchers only reconnect while polled).
    async fn open_watches(&mut self, count: usize) {
        let open = self.server.wait_for_open_watches(count);
        let mut open = std::pin::pin!(open);
        let guard = tokio::time::sleep(Duration::from_secs(10));
        let mut guard = std::pin::pin!(guard);
        loop {
            tokio::select! {
                () = &mut open => return,
                () = &mut guard => panic!("not {count} open watches within 10 s; events: {:#?}", self.log),
                event = self.events.next() => {
                    let event = event.expect("the source never ends");
                    if let Some(line) = describe(&event, &mut self.listing) {
                        self.log.push(line.clone());
                        self.unread.push_back(line);
                    }
                }
            }
        }
    }

    fn synced_count(&self) -> usize {
        self.log.iter().filter(|line| *line == "Synced").count()
    }
}

#[tokio::test]
async fn initial_lists_arrive_as_one_replace_per_kind_then_synced() {
    let mut source = Harness::start().await;
    let mut initial = Vec::new();
    for _ in 0..4 {
        initial.push(source.next().await);
    }
    assert_eq!(
        initial.last().map(String::as_str),
        Some("Synced"),
        "Synced comes after every list"
    );
    initial.sort();
    assert_eq!(initial, USUAL_INITIAL);
    for requests in [
        source.server.requests::<Service>(),
        source.server.requests::<EndpointSlice>(),
        source.server.requests::<Node>(),
    ] {
        assert_eq!(requests.lists, 1, "one list per kind");
    }
}

#[tokio::test]
async fn changes_arrive_as_apply_and_delete() {
    let mut source = Harness::start().await;
    source.synced().await;

    struct Step {
        name: &'static str,
        change: Box<dyn Fn(&TestApiServer)>,
        event: &'static str,
        kind: &'static str,
    }
    let steps = [
        Step {
            name: "service created",
            change: Box::new(|s| _ = s.apply(&service("c", 90))),
            kind: "Service",
            event: "Service Apply web/c:90",
        },
        Step {
            name: "service modified",
            change: Box::new(|s| _ = s.apply(&service("a", 8080))),
            kind: "Service",
            event: "Service Apply web/a:8080",
        },
        Step {
            name: "service deleted",
            change: Box::new(|s| _ = s.delete::<Service>(Some("web"), "b")),
            kind: "Service",
            event: "Service Delete web/b:81",
        },
        Step {
            name: "service handed to another proxy leaves the selection",
            change: Box::new(|s| _ = s.apply(&service_labelled("c", 90, &[OTHER_PROXY]))),
            kind: "Service",
            event: "Service Delete web/c:90",
        },
        Step {
            name: "slice created",
            change: Box::new(|s| _ = s.apply(&slice("a-2", &[]))),
            kind: "EndpointSlice",
            event: "EndpointSlice Apply web/a-2",
        },
        Step {
            name: "another node changes unseen; this node's change is seen",
            change: Box::new(|s| {
                s.apply(&node("node-2", "zone-c"));
                s.apply(&node("node-1", "zone-d"));
            }),
            kind: "Node",
            event: "Node Apply node-1@zone-d",
        },
        Step {
            name: "slice deleted",
            change: Box::new(|s| _ = s.delete::<EndpointSlice>(Some("web"), "a-1")),
            kind: "EndpointSlice",
            event: "EndpointSlice Delete web/a-1",
        },
    ];
    for step in steps {
        (step.change)(&source.server);
        assert_eq!(source.next_of(step.kind).await, step.event, "{}", step.name);
    }
    assert_eq!(source.synced_count(), 1, "{:#?}", source.log);
    assert_eq!(source.server.requests::<Service>().lists, 1, "no relist");
}

#[tokio::test]
async fn bookmarks_are_silent_and_move_the_resume_point() {
    let mut source = Harness::start().await;
    source.synced().await;

    // The services watch last saw an older resourceVersion than this.
    source.server.apply(&slice("a-2", &[]));
    assert_eq!(source.next().await, "EndpointSlice Apply web/a-2");
    source.server.send_bookmark();
    // The watches end after the bookmarks (as at their timeout), so the
    // watchers resume from the bookmark's version, which the compacted
    // history still serves: no relist.
    source.server.compact_history();
    source.suspend(Break::End).await;
    source.resume().await;

    source.server.apply(&service("c", 90));
    assert_eq!(
        source.next().await,
        "Service Apply web/c:90",
        "nothing came of the bookmark"
    );
    for requests in [
        source.server.requests::<Service>(),
        source.server.requests::<EndpointSlice>(),
        source.server.requests::<Node>(),
    ] {
        assert_eq!(requests.lists, 1, "no relist: {:#?}", source.log);
        assert_eq!(requests.watches, 2, "one watch, then one resumed watch");
    }
}

#[tokio::test]
async fn gone_relists_into_one_replace_of_exactly_the_current_objects() {
    let mut source = Harness::start().await;
    source.synced().await;

    // While the source is blind: a create, a modify and a delete, then the
    // history it would need is compacted away.
    source.suspend(Break::Cut).await;
    source.server.apply(&service("c", 90));
    source.server.apply(&service("a", 8080));
    source.server.delete::<Service>(Some("web"), "b");
    source.server.compact_history();
    source.resume().await;

    // Every watcher was behind the compaction: each relists, the services
    // into one Replace with no Delete of a still existing object before it.
    assert_eq!(
        source
            .next_of_each(&["Service", "EndpointSlice", "Node"])
            .await,
        [
            "Service Replace [web/a:8080, web/c:90]",
            "EndpointSlice Replace [web/a-1]",
            "Node Replace [node-1@zone-a]",
        ]
    );

    // Nothing else came between the relist and the next change.
    source.server.apply(&service("d", 91));
    assert_eq!(source.next_of("Service").await, "Service Apply web/d:91");
    assert_eq!(
        source.synced_count(),
        1,
        "Synced is not repeated: {:#?}",
        source.log
    );
    assert_eq!(source.server.requests::<Service>().lists, 2);
}

#[tokio::test]
async fn a_cut_watch_resumes_without_losing_an_event() {
    let mut source = Harness::start().await;
    source.synced().await;

    source.suspend(Break::Cut).await;
    source.server.apply(&service("c", 90));
    source.server.delete::<Service>(Some("web"), "b");
    source.server.apply(&service("a", 8080));
    source.resume().await;

    let mut resumed = Vec::new();
    for _ in 0..3 {
        resumed.push(source.next_of("Service").await);
    }
    assert_eq!(
        resumed,
        [
            "Service Apply web/c:90",
            "Service Delete web/b:81",
            "Service Apply web/a:8080"
        ]
    );

    // A cut without a pause: the change right after it is not lost either.
    source.server.cut_watches();
    source.server.apply(&service("e", 92));
    assert_eq!(source.next_of("Service").await, "Service Apply web/e:92");

    assert_eq!(
        source.server.requests::<Service>().lists,
        1,
        "resumed, not relisted"
    );
    assert_eq!(source.synced_count(), 1);
}

#[tokio::test]
async fn a_list_served_in_pages_arrives_whole() {
    let (mut source, names) = Harness::with_three_pages_of_services().await;
    let line = source.next_of("Service").await;
    let mut expected: Vec<String> = names.iter().map(|n| format!("web/{n}:80")).collect();
    expected.extend(["web/a:80".to_owned(), "web/b:81".to_owned()]);
    expected.sort();
    assert_eq!(line, format!("Service Replace [{}]", expected.join(", ")));
    let requests = source.server.requests::<Service>();
    assert_eq!(requests.lists, 1);
    assert_eq!(
        requests.continued, 2,
        "three pages, each asked for once: {requests:?}"
    );
}

#[tokio::test]
async fn the_next_page_is_asked_for_while_the_last_is_handed_on() {
    let (mut source, _) = Harness::with_three_pages_of_services().await;
    // The first Service of the first page; the other 499 wait in the
    // watcher, which asks for the next page only once it has handed them
    // on, and it is not polled from here on.
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), source.events.next())
            .await
            .expect("the first page within 10 s")
            .expect("the source never ends");
        let first = matches!(event, SourceEvent::Service(Update::Listed(_)));
        if let Some(line) = describe(&event, &mut source.listing) {
            source.unread.push_back(line);
        }
        if first {
            break;
        }
    }
    let mut waited = Duration::ZERO;
    while source.server.requests::<Service>().continued == 0 {
        assert!(
            waited < Duration::from_secs(10),
            "the second page was not asked for ahead: {:?}",
            source.server.requests::<Service>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
    // Only the next page: the one after waits for the watcher's request.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(source.server.requests::<Service>().continued, 1);
    let line = source.next_of("Service").await;
    assert_eq!(line.matches(":80").count(), 1200 + 1, "{line}");
    let requests = source.server.requests::<Service>();
    assert_eq!((requests.lists, requests.continued), (1, 2), "{requests:?}");
}

#[tokio::test]
async fn failed_lists_are_retried_and_the_source_goes_on() {
    let mut source = Harness::start_with(|server| server.fail_next_lists(2)).await;
    let mut initial = source
        .next_of_each(&["Service", "EndpointSlice", "Node", "Synced"])
        .await;
    initial.sort();
    assert_eq!(
        initial,
        [
            "EndpointSlice Replace [web/a-1]",
            "Node Replace [node-1@zone-a]",
            "Service Replace [web/a:80, web/b:81]",
            "Synced",
        ]
    );
    let lists: usize = [
        source.server.requests::<Service>(),
        source.server.requests::<EndpointSlice>(),
        source.server.requests::<Node>(),
    ]
    .iter()
    .map(|r| r.lists)
    .sum();
    assert_eq!(lists, 3 + 2, "each failed list was retried");
}

#[tokio::test]
async fn client_from_a_kubeconfig_with_the_server_overridden_by_master() {
    let server = TestApiServer::start().await;
    server.apply(&node("node-1", "zone-a"));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    // The file's server is unreachable: only --master makes this work.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
         clusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:1\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
         users:\n- name: test\n  user:\n    token: secret\n",
    )
    .unwrap();

    let client = client(Some(&kubeconfig), Some(&server.url()), &Metrics::new())
        .await
        .expect("client");
    let nodes: kube::Api<Node> = kube::Api::all(client);
    let listed = nodes
        .list(&Default::default())
        .await
        .expect("list through --master");
    assert_eq!(listed.items.len(), 1);
}

#[tokio::test]
async fn client_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-kubeconfig");
    match client(Some(&missing), None, &Metrics::new()).await {
        Err(error @ ClientError::Kubeconfig { .. }) => {
            assert!(
                error.to_string().contains(&missing.display().to_string()),
                "{error}"
            );
        }
        Err(other) => panic!("expected a kubeconfig error, got {other}"),
        Ok(_) => panic!("a missing kubeconfig gave a client"),
    }
    match client(None, Some("http://[::1"), &Metrics::new()).await {
        Err(error @ ClientError::MasterUrl { .. }) => {
            assert!(error.to_string().contains("http://[::1"), "{error}");
        }
        Err(other) => panic!("expected a --master error, got {other}"),
        Ok(_) => panic!("an invalid --master gave a client"),
    }
}

#[tokio::test]
async fn a_request_that_gets_no_answer_is_counted_as_an_error() {
    // Nothing listens on port 1: the connection is refused.
    let metrics = Metrics::new();
    let client = client(None, Some("http://127.0.0.1:1"), &metrics)
        .await
        .expect("client");
    let nodes: kube::Api<Node> = kube::Api::all(client);
    nodes
        .list(&Default::default())
        .await
        .expect_err("nothing answers on port 1");
    let exposition = metrics.encode();
    assert!(
        exposition.contains(
            "rest_client_requests_total{code=\"<error>\",host=\"127.0.0.1:1\",method=\"GET\"} 1\n"
        ),
        "{exposition}"
    );
    assert!(
        exposition.contains(
            "rest_client_request_duration_seconds_count{verb=\"GET\",host=\"127.0.0.1:1\"} 1\n"
        ),
        "{exposition}"
    );
}

/// A kubeconfig as kubeadm writes kube-proxy's: the API server over HTTPS,
/// the cluster's CA and the service account's token as files (in a pod,
/// /var/run/secrets/kubernetes.io/serviceaccount/ca.crt and token).
fn service_account_kubeconfig(dir: &Path, server: &str, ca_pem: &str, token: &str) -> PathBuf {
    let ca = dir.join("ca.crt");
    let token_file = dir.join("token");
    std::fs::write(&ca, ca_pem).unwrap();
    std::fs::write(&token_file, token).unwrap();
    let kubeconfig = dir.join("kubeconfig.conf");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: default\n\
             clusters:\n- name: default\n  cluster:\n    server: {server}\n    certificate-authority: {}\n\
             contexts:\n- name: default\n  context:\n    cluster: default\n    namespace: default\n    user: default\n\
             users:\n- name: default\n  user:\n    tokenFile: {}\n",
            ca.display(),
            token_file.display(),
        ),
    )
    .unwrap();
    kubeconfig
}

/// The count of `rest_client_requests_total` for `code` and `host`, GETs.
fn requests_counted(metrics: &Metrics, code: &str, host: &str) -> Option<u64> {
    let series =
        format!("rest_client_requests_total{{code=\"{code}\",host=\"{host}\",method=\"GET\"}} ");
    let exposition = metrics.encode();
    let line = exposition.lines().find(|line| line.starts_with(&series))?;
    Some(line[series.len()..].parse().expect("a count"))
}

/// The usual objects behind HTTPS, and a client that reaches them as a pod
/// does, through [`service_account_kubeconfig`].
struct OverTls {
    server: TestApiServer,
    /// Holds the port; dropped, it stops accepting.
    front: TlsFront,
    /// Holds the kubeconfig and the files it names.
    _dir: tempfile::TempDir,
    client: kube::Client,
    metrics: Metrics,
    /// The front's host and port, as the request metrics label them.
    host: String,
}

impl OverTls {
    /// The server's certificate comes from `server_ca` and it requires the
    /// token `required`; the kubeconfig trusts `trusted` and sends `token`.
    async fn start(server_ca: &TestCa, trusted: &TestCa, required: &str, token: &str) -> OverTls {
        let server = usual_server(|server| server.require_token(required)).await;
        let front = TlsFront::start(server_ca, server.address()).await;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig =
            service_account_kubeconfig(dir.path(), &front.url(), &trusted.pem(), token);
        let metrics = Metrics::new();
        let client = client(Some(&kubeconfig), None, &metrics)
            .await
            .expect("client from the kubeconfig (connecting comes later)");
        let host = front.url().trim_start_matches("https://").to_owned();
        OverTls {
            server,
            front,
            _dir: dir,
            client,
            metrics,
            host,
        }
    }

    /// A LIST of Nodes through the client.
    async fn list_nodes(&self) -> Result<kube::core::ObjectList<Node>, kube::Error> {
        let nodes: kube::Api<Node> = kube::Api::all(self.client.clone());
        nodes.list(&Default::default()).await
    }
}

const TOKEN: &str = "service-account-token";

#[tokio::test]
async fn https_with_the_clusters_ca_and_a_service_account_token() {
    let ca = TestCa::new("cluster CA");
    let OverTls {
        server,
        front: _front,
        _dir,
        client,
        metrics,
        host,
    } = OverTls::start(&ca, &ca, TOKEN, TOKEN).await;

    let mut source = Harness::watching(server, client);
    let mut initial = Vec::new();
    for _ in 0..4 {
        initial.push(source.next().await);
    }
    initial.sort();
    assert_eq!(initial, USUAL_INITIAL, "the same lists as over plain HTTP");
    assert_eq!(
        source.server.unauthorized(),
        0,
        "every request had the token"
    );
    let lists = requests_counted(&metrics, "200", &host);
    assert!(
        lists.is_some_and(|n| n >= 3),
        "the three lists are counted under the HTTPS host: {lists:?}\n{}",
        metrics.encode()
    );
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused_and_the_log_says_why() {
    let ca = TestCa::new("cluster CA");
    let other = TestCa::new("another cluster's CA");
    let tls = OverTls::start(&ca, &other, TOKEN, TOKEN).await;

    let error = tls
        .list_nodes()
        .await
        .expect_err("the server's certificate is not from the kubeconfig's CA");
    let said = error_chain(&error);
    assert!(
        said.contains("UnknownIssuer"),
        "the error names the certificate problem: {said}"
    );
    assert_eq!(
        tls.server.requests::<Node>().lists,
        0,
        "nothing reached the server"
    );
    assert_eq!(
        requests_counted(&tls.metrics, "<error>", &tls.host),
        Some(1)
    );
}

#[tokio::test]
async fn a_token_the_server_does_not_accept_is_refused_with_401() {
    let ca = TestCa::new("cluster CA");
    let tls = OverTls::start(&ca, &ca, TOKEN, "revoked").await;

    match tls.list_nodes().await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 401, "{status:?}"),
        other => panic!("expected 401 Unauthorized, got {other:?}"),
    }
    assert_eq!(tls.server.unauthorized(), 1);
    assert_eq!(requests_counted(&tls.metrics, "401", &tls.host), Some(1));
}
