//! The in-cluster source: kube-runtime watchers on the API server.
//!
//! Three watchers (Services, EndpointSlices, this node's Node) merge into one
//! stream of [`SourceEvent`]s. A watcher's (re)list streams through as
//! `ListStart`, one `Listed` per object and `ListDone`; the model holds the
//! objects in compact form and puts the list in force only at `ListDone`, so
//! a relist after a 410 Gone or a dropped connection never programs half a
//! state, and no list of whole API objects is ever held. No reflector store
//! is kept either: the model holds the compact state.

use std::collections::BTreeMap;
use std::fmt::{self, Debug};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ::kube::config::{Config, InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use ::kube::runtime::watcher::{self, watcher};
use ::kube::runtime::WatchStreamExt;
use ::kube::{Api, Client, Resource};
use futures::{future, stream, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Service, ServiceSpec, ServiceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::de::{DeserializeOwned, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::{EndpointSlice, SourceEvent, Update};
use crate::metrics::Metrics;

/// The label selector upstream kube-proxy lists Services and EndpointSlices
/// with (`cmd/kube-proxy/app/server.go`, one informer factory for both):
/// objects claimed by another service proxy are not ours, and the
/// EndpointSlices of headless services (labelled by the EndpointSlice
/// controller) have no virtual server to feed.
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// The annotation `kubectl apply` leaves: a full copy of the object, never read.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Builds the API client: from `kubeconfig` when given (its server replaced
/// by `master` when that is given too), from `master` alone (no
/// credentials), or else from the in-cluster service account — the same
/// rules as upstream kube-proxy's `--kubeconfig` and `--master`. Its paged
/// LISTs ask for each next page ahead (see [`super::prefetch`]), and every
/// request it sends is counted in `metrics` as client-go counts kube-proxy's
/// (`rest_client_requests_total`, `rest_client_request_duration_seconds`).
pub async fn client(
    kubeconfig: Option<&Path>,
    master: Option<&str>,
    metrics: &Metrics,
) -> Result<Client, ClientError> {
    let master = master.map(parse_master).transpose()?;
    let config = match (kubeconfig, master) {
        (Some(path), master) => {
            let kubeconfig_error = |source| ClientError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            let mut config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_error)?;
            if let Some(master) = master {
                config.cluster_url = master;
            }
            config
        }
        (None, Some(master)) => Config::new(master),
        (None, None) => Config::incluster().map_err(ClientError::InCluster)?,
    };
    // client-go labels its request metrics with the URL's host and port.
    let host: Arc<str> = config
        .cluster_url
        .authority()
        .map_or_else(|| config.cluster_url.to_string(), ToString::to_string)
        .into();
    let client = Client::try_from(config).map_err(ClientError::Client)?;
    // Counted below the read-ahead: a page asked for ahead is one request
    // when it is sent, and the watcher's request that takes it is none.
    let counted = counted(client, host, metrics.clone());
    Ok(super::prefetch::prefetching(counted))
}

/// `client`, recording each request it sends to `host` in `metrics`: its
/// method, its status code (or that no answer came) and the time to the
/// answer's headers.
fn counted(client: Client, host: Arc<str>, metrics: Metrics) -> Client {
    let namespace = client.default_namespace().to_owned();
    let service = tower::service_fn(move |request: http::Request<::kube::client::Body>| {
        let (client, host, metrics) = (client.clone(), host.clone(), metrics.clone());
        async move {
            let method = request.method().clone();
            let started = Instant::now();
            let response = client.send(request).await;
            let status = response.as_ref().ok().map(http::Response::status);
            metrics.record_api_request(&host, &method, status, started.elapsed());
            response
        }
    });
    Client::new(service, namespace)
}

/// `--master` as the URL kube's `Config` takes.
fn parse_master(url: &str) -> Result<http::Uri, ClientError> {
    url.parse()
        .map_err(|error: http::uri::InvalidUri| ClientError::MasterUrl {
            url: url.to_owned(),
            reason: error.to_string(),
        })
}

/// `error` and every error below it, outermost first, joined with ": ".
///
/// kube's errors name only their own layer: a TLS handshake that failed on
/// the API server's certificate is "ServiceError: client error (Connect)",
/// and that the certificate was not issued by the kubeconfig's CA is three
/// sources down. A source whose text the layer above already quotes is
/// not repeated.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// Why the API client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig file could not be read or used.
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        /// The file given with `--kubeconfig`.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: KubeconfigError,
    },
    /// Neither `--kubeconfig` nor `--master` was given and this is not a pod.
    #[error("no --kubeconfig or --master, and no in-cluster service account: {0}")]
    InCluster(#[source] InClusterError),
    /// `--master` is not a URL.
    #[error("--master {url:?} is not a URL: {reason}")]
    MasterUrl {
        /// The value given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The client could not be built from the configuration (TLS, say).
    #[error("cannot build the API client: {0}")]
    Client(#[source] ::kube::Error),
}

/// Watches Services and EndpointSlices in all namespaces (with
/// [`PROXY_LABEL_SELECTOR`]) and the Node named `node_name`.
///
/// Each watcher's initial list and every relist arrive as `ListStart`,
/// `Listed` objects and `ListDone`; changes in between as `Apply` and
/// `Delete`. `Synced` follows once, after all three have listed. Errors are
/// logged and retried with backoff: the stream never ends.
pub fn watch(client: Client, node_name: &str) -> impl Stream<Item = SourceEvent> + Send {
    let selected = || watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
    let this_node = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let watchers = [
        resource_events::<Service>(client.clone(), selected(), SourceEvent::Service).boxed(),
        resource_events::<EndpointSlice>(client.clone(), selected(), SourceEvent::EndpointSlice)
            .boxed(),
        resource_events::<Node>(client, this_node, SourceEvent::Node).boxed(),
    ];
    stream::select_all(watchers)
        .scan(InitialLists::default(), |lists, event| {
            let synced = lists.observe(&event);
            future::ready(Some(stream::iter(std::iter::once(event).chain(synced))))
        })
        .flatten()
}

/// Which watchers have delivered their first complete list.
#[derive(Debug, Default)]
struct InitialLists {
    services: bool,
    endpoint_slices: bool,
    node: bool,
    synced: bool,
}

impl InitialLists {
    /// `Synced` when `event` completes the first list of the last watcher.
    fn observe(&mut self, event: &SourceEvent) -> Option<SourceEvent> {
        match event {
            SourceEvent::Service(Update::Replace(_) | Update::ListDone) => self.services = true,
            SourceEvent::EndpointSlice(Update::Replace(_) | Update::ListDone) => {
                self.endpoint_slices = true;
            }
            SourceEvent::Node(Update::Replace(_) | Update::ListDone) => self.node = true,
            _ => return None,
        }
        if self.synced || !(self.services && self.endpoint_slices && self.node) {
            return None;
        }
        self.synced = true;
        Some(SourceEvent::Synced)
    }
}

/// A watcher of every `K` as source events: objects decoded into boxes
/// without the fields the proxy never reads (see [`Boxed`] and [`Decode`]),
/// lists streamed, errors logged (the backoff retries them).
fn resource_events<K>(
    client: Client,
    config: watcher::Config,
    wrap: fn(Update<Box<K>>) -> SourceEvent,
) -> impl Stream<Item = SourceEvent> + Send
where
    Boxed<K>: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher(Api::<Boxed<K>>::all(client), config)
        .default_backoff()
        .filter_map(move |event| {
            future::ready(update_of(event).map(|update| wrap(update.map(Boxed::into_box))))
        })
}

/// One watcher event as the update to emit, if any.
fn update_of<K: Resource<DynamicType = ()>>(
    event: Result<watcher::Event<K>, watcher::Error>,
) -> Option<Update<K>> {
    match event {
        Ok(watcher::Event::Init) => Some(Update::ListStart),
        Ok(watcher::Event::InitApply(object)) => Some(Update::Listed(object)),
        Ok(watcher::Event::InitDone) => {
            tracing::debug!(kind = %K::kind(&()), "listed");
            Some(Update::ListDone)
        }
        Ok(watcher::Event::Apply(object)) => Some(Update::Apply(object)),
        Ok(watcher::Event::Delete(object)) => Some(Update::Delete(object)),
        Err(error) => {
            tracing::warn!(kind = %K::kind(&()), error = %error_chain(&error),
                "watch failed; retrying with backoff");
            None
        }
    }
}

/// An API object on the heap from the moment it is decoded.
///
/// kube-runtime's watcher decodes a page of a list into a `Vec` of objects
/// and moves each one, by value, through its state machine and through
/// every stream adapter up to the run loop. A k8s-openapi Service is over
/// a kilobyte and a slim EndpointSlice 440 bytes (mostly its metadata);
/// boxed, each of those moves is a pointer's.
#[derive(Clone, Debug)]
struct Boxed<K>(Box<K>);

impl<K> Boxed<K> {
    fn into_box(self) -> Box<K> {
        self.0
    }
}

impl<'de, K: Decode> Deserialize<'de> for Boxed<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        K::decode(deserializer).map(|object| Boxed(Box::new(object)))
    }
}

impl<K: k8s_openapi::Resource> k8s_openapi::Resource for Boxed<K> {
    const API_VERSION: &'static str = K::API_VERSION;
    const GROUP: &'static str = K::GROUP;
    const KIND: &'static str = K::KIND;
    const VERSION: &'static str = K::VERSION;
    const URL_PATH_SEGMENT: &'static str = K::URL_PATH_SEGMENT;
    type Scope = K::Scope;
}

impl<K: k8s_openapi::Metadata> k8s_openapi::Metadata for Boxed<K> {
    type Ty = K::Ty;
    fn metadata(&self) -> &K::Ty {
        self.0.metadata()
    }
    fn metadata_mut(&mut self) -> &mut K::Ty {
        self.0.metadata_mut()
    }
}

/// How a watched kind is decoded: without what the proxy never reads, so
/// that it is neither built nor freed. 10,000 services must fit in a few
/// tens of MiB, and on a real cluster most of a Service's JSON is its
/// `managedFields` and, for one made by `kubectl apply`, its last-applied
/// annotation, a second copy of the whole object.
trait Decode: Sized {
    fn decode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error>;
}

/// A top-level object (a Service, a Node) with [`LeanMetadata`].
#[derive(Deserialize)]
struct Lean<Spec, Status> {
    #[serde(default)]
    metadata: LeanMetadata,
    spec: Option<Spec>,
    status: Option<Status>,
}

impl Decode for Service {
    fn decode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Lean {
            metadata,
            spec,
            status,
        } = Lean::<ServiceSpec, ServiceStatus>::deserialize(deserializer)?;
        Ok(Service {
            metadata: metadata.into(),
            spec,
            status,
        })
    }
}

impl Decode for EndpointSlice {
    /// The slim type decodes only what the proxy reads (see `source::slice`).
    fn decode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        EndpointSlice::deserialize(deserializer)
    }
}

impl Decode for Node {
    fn decode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Lean {
            metadata,
            spec,
            mut status,
        } = Lean::<NodeSpec, NodeStatus>::deserialize(deserializer)?;
        if let Some(status) = &mut status {
            // The image list alone is often larger than everything else.
            status.images = None;
            status.volumes_attached = None;
            status.volumes_in_use = None;
        }
        Ok(Node {
            metadata: metadata.into(),
            spec,
            status,
        })
    }
}

/// An object's metadata but its `managedFields` and the last-applied
/// annotation, which are skipped as they are read, never decoded.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanMetadata {
    #[serde(default, deserialize_with = "annotations_but_last_applied")]
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    name: Option<String>,
    namespace: Option<String>,
    owner_references: Option<Vec<OwnerReference>>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

impl From<LeanMetadata> for ObjectMeta {
    fn from(lean: LeanMetadata) -> ObjectMeta {
        ObjectMeta {
            annotations: lean.annotations,
            creation_timestamp: lean.creation_timestamp,
            deletion_grace_period_seconds: lean.deletion_grace_period_seconds,
            deletion_timestamp: lean.deletion_timestamp,
            finalizers: lean.finalizers,
            generate_name: lean.generate_name,
            generation: lean.generation,
            labels: lean.labels,
            managed_fields: None,
            name: lean.name,
            namespace: lean.namespace,
            owner_references: lean.owner_references,
            resource_version: lean.resource_version,
            self_link: lean.self_link,
            uid: lean.uid,
        }
    }
}

/// `metadata.annotations` without [`LAST_APPLIED`], whose value is skipped.
fn annotations_but_last_applied<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Annotations;
    impl<'de> Visitor<'de> for Annotations {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of annotations or null")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
            let mut annotations = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if key == LAST_APPLIED {
                    map.next_value::<IgnoredAny>()?;
                } else {
                    let value = map.next_value::<String>()?;
                    annotations.insert(key, value);
                }
            }
            Ok(Some(annotations))
        }
    }
    deserializer.deserialize_option(Annotations)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with an optional source, for `error_chain`.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn an_error_chain_names_every_layer_once() {
        let tls = Layer(
            "invalid peer certificate: UnknownIssuer",
            Some(Box::new(Layer("UnknownIssuer", None))),
        );
        let connect = Layer("client error (Connect)", Some(Box::new(tls)));
        let outer = Layer(
            "ServiceError: client error (Connect)",
            Some(Box::new(connect)),
        );
        assert_eq!(
            error_chain(&outer),
            "ServiceError: client error (Connect): invalid peer certificate: UnknownIssuer"
        );
        assert_eq!(error_chain(&Layer("alone", None)), "alone");
    }

    fn service(name: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    fn slice() -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some("a-1".to_owned()),
                ..ObjectMeta::default()
            },
            ..EndpointSlice::default()
        }
    }

    #[test]
    fn objects_are_boxed_from_the_decoder_to_the_model() {
        use std::mem::size_of;
        // Each stream adapter between the two moves each event by value:
        // a move must be a pointer's, not a Service's (over a kilobyte) or
        // a slim EndpointSlice's (440 bytes).
        assert_eq!(size_of::<Boxed<Service>>(), size_of::<usize>());
        assert_eq!(size_of::<Boxed<EndpointSlice>>(), size_of::<usize>());
        let event = size_of::<SourceEvent>();
        assert!(
            event <= 4 * size_of::<usize>(),
            "a source event is {event} bytes"
        );
    }

    #[test]
    fn a_boxed_service_decodes_all_but_what_the_proxy_never_reads() {
        let json = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "uid": "0b5c3f1e-2a4d-4b8e-9f6a-1c2d3e4f5a6b",
                "resourceVersion": "42",
                "creationTimestamp": "2026-12-07T00:00:00Z",
                "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u"}],
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
                "annotations": {LAST_APPLIED: "{\"kind\":\"Service\"}", "kept": "yes"},
            },
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}},
        });
        let service = serde_json::from_value::<Boxed<Service>>(json.clone())
            .unwrap()
            .into_box();
        // Everything a full decode has, but the two skipped fields.
        let mut full: Service = serde_json::from_value(json).unwrap();
        full.metadata.managed_fields = None;
        full.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(LAST_APPLIED);
        assert_eq!(*service, full);
        assert_eq!(
            service.metadata.uid.as_deref(),
            Some("0b5c3f1e-2a4d-4b8e-9f6a-1c2d3e4f5a6b")
        );
        assert!(service.metadata.creation_timestamp.is_some());
        assert_eq!(<Boxed<Service> as Resource>::kind(&()), "Service");
        assert_eq!(
            <Boxed<EndpointSlice> as Resource>::plural(&()),
            "endpointslices"
        );
    }

    #[test]
    fn skipped_fields_are_never_decoded() {
        // Values no full decode accepts: skipped, they cannot fail.
        let json = serde_json::json!({
            "metadata": {
                "name": "web",
                "managedFields": 7,
                "annotations": {LAST_APPLIED: {"not": "a string"}, "kept": "yes"},
            },
        });
        assert!(serde_json::from_value::<Service>(json.clone()).is_err());
        let service = serde_json::from_value::<Boxed<Service>>(json)
            .unwrap()
            .into_box();
        assert_eq!(service.metadata.name.as_deref(), Some("web"));
        assert_eq!(
            service.metadata.annotations,
            Some([("kept".to_owned(), "yes".to_owned())].into())
        );
        // No annotations, or null ones, are none.
        for metadata in [
            serde_json::json!({}),
            serde_json::json!({"annotations": null}),
        ] {
            let service: Boxed<Service> =
                serde_json::from_value(serde_json::json!({"metadata": metadata})).unwrap();
            assert_eq!(service.into_box().metadata.annotations, None);
        }
    }

    fn names(update: &Option<Update<Service>>) -> String {
        let names = |objects: &[Service]| {
            objects
                .iter()
                .map(|s| s.metadata.name.clone().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(",")
        };
        match update {
            None => "-".to_owned(),
            Some(Update::Apply(s)) => format!("Apply {}", names(std::slice::from_ref(s))),
            Some(Update::Delete(s)) => format!("Delete {}", names(std::slice::from_ref(s))),
            Some(Update::Replace(v)) => format!("Replace [{}]", names(v)),
            Some(Update::ListStart) => "ListStart".to_owned(),
            Some(Update::Listed(s)) => format!("Listed {}", names(std::slice::from_ref(s))),
            Some(Update::ListDone) => "ListDone".to_owned(),
        }
    }

    #[test]
    fn lists_stream_through_one_object_at_a_time() {
        use watcher::Event;
        let steps: Vec<(Result<Event<Service>, watcher::Error>, &str)> = vec![
            (Ok(Event::Init), "ListStart"),
            (Ok(Event::InitApply(service("a"))), "Listed a"),
            (Ok(Event::InitApply(service("b"))), "Listed b"),
            (Ok(Event::InitDone), "ListDone"),
            (Ok(Event::Apply(service("c"))), "Apply c"),
            (Ok(Event::Delete(service("a"))), "Delete a"),
            // Errors are logged and retried by the watcher's backoff.
            (Err(watcher::Error::NoResourceVersion), "-"),
        ];
        for (index, (event, expected)) in steps.into_iter().enumerate() {
            assert_eq!(names(&update_of(event)), expected, "step {index}");
        }
    }

    #[test]
    fn synced_follows_the_last_first_list_once() {
        let replace_services = || SourceEvent::Service(Update::Replace(vec![]));
        let steps = [
            (replace_services(), false),
            (SourceEvent::service(Update::Apply(service("a"))), false),
            (SourceEvent::Node(Update::ListDone), false),
            (replace_services(), false),
            // A list that has only started is not a list yet.
            (SourceEvent::EndpointSlice(Update::ListStart), false),
            (SourceEvent::slice(Update::Listed(slice())), false),
            (SourceEvent::EndpointSlice(Update::ListDone), true),
            (SourceEvent::slice(Update::Replace(vec![])), false),
            (SourceEvent::Service(Update::ListDone), false),
        ];
        let mut lists = InitialLists::default();
        for (index, (event, synced)) in steps.into_iter().enumerate() {
            assert_eq!(
                matches!(lists.observe(&event), Some(SourceEvent::Synced)),
                synced,
                "step {index}"
            );
        }
    }

    #[test]
    fn a_boxed_node_decodes_without_what_the_proxy_never_reads() {
        let json = serde_json::json!({
            "metadata": {
                "name": "n",
                "labels": {"topology.kubernetes.io/zone": "a"},
                "annotations": {LAST_APPLIED: "{}", "keep": "me"},
                "managedFields": [{"manager": "kubelet"}],
            },
            "spec": {"podCIDRs": ["10.244.1.0/24"]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "192.0.2.10"}],
                "images": [{"names": ["registry/app:1"], "sizeBytes": 1}],
                "volumesInUse": ["v"],
            },
        });
        let node = serde_json::from_value::<Boxed<Node>>(json)
            .unwrap()
            .into_box();
        assert_eq!(node.metadata.managed_fields, None);
        assert_eq!(
            node.metadata.annotations,
            Some([("keep".to_owned(), "me".to_owned())].into())
        );
        assert!(
            node.metadata.labels.is_some(),
            "labels carry the topology zone"
        );
        let spec = node.spec.unwrap();
        assert_eq!(spec.pod_cidrs.unwrap(), ["10.244.1.0/24"]);
        let status = node.status.unwrap();
        assert_eq!(status.addresses.unwrap().len(), 1);
        assert_eq!((status.images, status.volumes_in_use), (None, None));
    }
}
