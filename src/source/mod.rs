//! Where Services, EndpointSlices, Endpoints and the Node come from: the API
//! server (`kube`) or a directory of manifests (`manifests`). Both emit the
//! same [`SourceEvent`]s, which the model folds into its compact form.

pub mod kube;
pub mod manifests;
pub mod prefetch;
pub mod slice;

use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
pub use slice::EndpointSlice;

/// A change to one kind of object.
#[derive(Debug, Clone)]
pub enum Update<K> {
    /// The object was created or modified.
    Apply(K),
    /// The object is gone (the last state seen is carried).
    Delete(K),
    /// A full (re)list: exactly these objects exist now. Applied atomically,
    /// so a relist never programs half a state.
    Replace(Vec<K>),
    /// A (re)list begins: the objects follow one by one as `Listed`, and
    /// `ListDone` puts exactly them in force at once, as `Replace` would.
    /// Streaming lets the model keep each object in compact form as it
    /// arrives, rather than a whole list of API objects. Another
    /// `ListStart` abandons an unfinished list.
    ListStart,
    /// One object of the list in progress.
    Listed(K),
    /// The list in progress is complete.
    ListDone,
}

impl<K> Update<K> {
    /// The same update of `f(object)` for each object it carries.
    pub fn map<T>(self, mut f: impl FnMut(K) -> T) -> Update<T> {
        match self {
            Update::Apply(object) => Update::Apply(f(object)),
            Update::Delete(object) => Update::Delete(f(object)),
            Update::Replace(objects) => Update::Replace(objects.into_iter().map(f).collect()),
            Update::ListStart => Update::ListStart,
            Update::Listed(object) => Update::Listed(f(object)),
            Update::ListDone => Update::ListDone,
        }
    }
}

/// One event from a source.
///
/// An event is moved by value through every stream adapter between the
/// decoder and the model, so its size is paid on each move of every
/// object: every object is boxed, so that an event is four words at most
/// (a `Replace` list's `Vec` and a tag), where a slim EndpointSlice, the
/// most numerous object, is 440 bytes, mostly its metadata, and a Service
/// over a kilobyte.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    Service(Update<Box<Service>>),
    EndpointSlice(Update<Box<EndpointSlice>>),
    /// core/v1 Endpoints, mirrored into slices (standalone mode only).
    Endpoints(Update<Box<Endpoints>>),
    Node(Update<Box<Node>>),
    /// Every kind has delivered its initial list: the first sync may run.
    Synced,
}

impl SourceEvent {
    /// A Service update, boxing each Service it carries.
    pub fn service(update: Update<Service>) -> Self {
        SourceEvent::Service(update.map(Box::new))
    }

    /// An EndpointSlice update, boxing each slice it carries.
    pub fn slice(update: Update<EndpointSlice>) -> Self {
        SourceEvent::EndpointSlice(update.map(Box::new))
    }

    /// An Endpoints update, boxing each Endpoints it carries.
    pub fn endpoints(update: Update<Endpoints>) -> Self {
        SourceEvent::Endpoints(update.map(Box::new))
    }

    /// A Node update, boxing each Node it carries.
    pub fn node(update: Update<Node>) -> Self {
        SourceEvent::Node(update.map(Box::new))
    }
}
