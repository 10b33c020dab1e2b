//! Where Services, EndpointSlices, Endpoints and the Node come from: the API
//! server (`kube`) or a directory of manifests (`manifests`). Both emit the
//! same [`SourceEvent`]s, which the model folds into its compact form.

pub mod kube;
pub mod manifests;
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

/// One event from a source.
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "events pass one at a time through a channel; boxing would add an allocation per object"
)]
pub enum SourceEvent {
    Service(Update<Service>),
    EndpointSlice(Update<EndpointSlice>),
    /// core/v1 Endpoints, mirrored into slices (standalone mode only).
    Endpoints(Update<Endpoints>),
    Node(Update<Node>),
    /// Every kind has delivered its initial list: the first sync may run.
    Synced,
}
