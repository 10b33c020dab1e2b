//! The in-cluster source: kube-runtime watchers on the API server.
//!
//! Three watchers (Services, EndpointSlices, this node's Node) merge into one
//! stream of [`SourceEvent`]s. A watcher's (re)list streams through as
//! `ListStart`, one `Listed` per object and `ListDone`; the model holds the
//! objects in compact form and puts the list in force only at `ListDone`, so
//! a relist after a 410 Gone or a dropped connection never programs half a
//! state, and no list of whole API objects is ever held. No reflector store
//! is kept either: the model holds the compact state.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use ::kube::config::{Config, InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use ::kube::runtime::watcher::{self, watcher};
use ::kube::runtime::WatchStreamExt;
use ::kube::{Api, Client, Resource};
use futures::{future, stream, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;

use super::{EndpointSlice, SourceEvent, Update};

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
/// LISTs ask for each next page ahead (see [`super::prefetch`]).
pub async fn client(
    kubeconfig: Option<&Path>,
    master: Option<&str>,
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
    let client = Client::try_from(config).map_err(ClientError::Client)?;
    Ok(super::prefetch::prefetching(client))
}

/// `--master` as the URL kube's `Config` takes.
fn parse_master(url: &str) -> Result<http::Uri, ClientError> {
    url.parse()
        .map_err(|error: http::uri::InvalidUri| ClientError::MasterUrl {
            url: url.to_owned(),
            reason: error.to_string(),
        })
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
/// (see [`Boxed`]), lists streamed, errors logged (the backoff retries
/// them), unused fields dropped.
fn resource_events<K>(
    client: Client,
    config: watcher::Config,
    wrap: fn(Update<Box<K>>) -> SourceEvent,
) -> impl Stream<Item = SourceEvent> + Send
where
    Boxed<K>: Resource<DynamicType = ()> + Trim + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher(Api::<Boxed<K>>::all(client), config)
        .default_backoff()
        .modify(Trim::trim)
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
            tracing::warn!(kind = %K::kind(&()), %error, "watch failed; retrying with backoff");
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

impl<'de, K: serde::Deserialize<'de>> serde::Deserialize<'de> for Boxed<K> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        K::deserialize(deserializer).map(|object| Boxed(Box::new(object)))
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

impl<K: Trim> Trim for Boxed<K> {
    fn trim(&mut self) {
        self.0.trim();
    }
}

/// Drops what the proxy never reads before an object is kept anywhere:
/// 10,000 services must fit in a few tens of MiB.
trait Trim {
    fn trim(&mut self);
}

fn trim_metadata(metadata: &mut ObjectMeta) {
    metadata.managed_fields = None;
    if let Some(annotations) = &mut metadata.annotations {
        annotations.remove(LAST_APPLIED);
    }
}

impl Trim for Service {
    fn trim(&mut self) {
        trim_metadata(&mut self.metadata);
    }
}

impl Trim for EndpointSlice {
    /// Nothing to drop: the slim type never decodes what the proxy does
    /// not read (see `source::slice`).
    fn trim(&mut self) {}
}

impl Trim for Node {
    fn trim(&mut self) {
        trim_metadata(&mut self.metadata);
        if let Some(status) = &mut self.status {
            // The image list alone is often larger than everything else.
            status.images = None;
            status.volumes_attached = None;
            status.volumes_in_use = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_boxed_object_decodes_and_trims_as_the_object() {
        let json = serde_json::json!({
            "metadata": {
                "name": "web",
                "namespace": "default",
                "managedFields": [{"manager": "kubectl"}],
                "annotations": {LAST_APPLIED: "{}", "kept": "yes"},
            },
            "spec": {"clusterIP": "10.96.0.10"},
        });
        let mut boxed: Boxed<Service> = serde_json::from_value(json).unwrap();
        Trim::trim(&mut boxed);
        let service = boxed.into_box();
        assert_eq!(service.metadata.name.as_deref(), Some("web"));
        assert_eq!(service.metadata.managed_fields, None);
        let annotations = service.metadata.annotations.unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["kept"]);
        assert_eq!(
            service.spec.and_then(|s| s.cluster_ip).as_deref(),
            Some("10.96.0.10")
        );
        assert_eq!(<Boxed<Service> as Resource>::kind(&()), "Service");
        assert_eq!(
            <Boxed<EndpointSlice> as Resource>::plural(&()),
            "endpointslices"
        );
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
    fn trimming_drops_what_the_proxy_never_reads() {
        use k8s_openapi::api::core::v1::{ContainerImage, NodeStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let metadata = ObjectMeta {
            name: Some("n".to_owned()),
            labels: Some([("topology.kubernetes.io/zone".to_owned(), "a".to_owned())].into()),
            annotations: Some(
                [
                    (LAST_APPLIED.to_owned(), "{}".to_owned()),
                    ("keep".to_owned(), "me".to_owned()),
                ]
                .into(),
            ),
            managed_fields: Some(vec![ManagedFieldsEntry::default()]),
            ..ObjectMeta::default()
        };
        let mut node = Node {
            metadata,
            status: Some(NodeStatus {
                images: Some(vec![ContainerImage::default()]),
                ..NodeStatus::default()
            }),
            ..Node::default()
        };
        node.trim();
        assert_eq!(node.metadata.managed_fields, None);
        assert_eq!(
            node.metadata.annotations,
            Some([("keep".to_owned(), "me".to_owned())].into())
        );
        assert!(
            node.metadata.labels.is_some(),
            "labels carry the topology zone"
        );
        assert_eq!(node.status.and_then(|s| s.images), None);
    }
}
