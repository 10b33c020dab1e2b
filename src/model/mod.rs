//! The proxy's compact picture of the cluster, keyed by service: Services,
//! their EndpointSlices (and mirrored Endpoints), and this node's facts.
//!
//! [`Model::apply`] folds one [`SourceEvent`] in and returns the [`Changes`]:
//! the services whose translation may differ. It is the change tracker: an
//! update that leaves an object's compact form as it was reports nothing, and
//! an object that cannot be converted is reported and its last good version
//! kept. Work per event is proportional to the objects it carries.

use std::fmt;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet};
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::desired::ServiceName;
use crate::parallel;
use crate::source::{EndpointSlice, SourceEvent, Update};

mod endpoints;
mod error;
mod field;
mod node;
mod service;

#[cfg(test)]
mod tests;

pub use endpoints::{
    AddressType, EndpointHints, EndpointInfo, EndpointPortInfo, EndpointSliceInfo, HintsId,
    SERVICE_NAME_LABEL, SKIP_MIRROR_LABEL,
};
pub use error::{ModelError, ObjectKind, Problem, ServiceOf};
pub use node::{NodeInfo, TO_BE_DELETED_TAINT, ZONE_LABEL};
pub use service::{
    ServiceInfo, ServicePortInfo, ServiceType, SkipReason, TargetPort, Uid,
    DEFAULT_AFFINITY_TIMEOUT_SECONDS, SCHEDULER_ANNOTATION, SERVICE_PROXY_NAME_LABEL,
};

/// What one or more events changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Every service may translate differently (this node changed).
    pub all: bool,
    /// The services whose translation may differ.
    pub services: HashSet<ServiceName>,
    /// Objects rejected (their last good version, if any, is still in force).
    pub errors: Vec<ModelError>,
    /// The sources reported their initial lists complete.
    pub synced: bool,
}

impl Changes {
    /// Nothing to translate again.
    pub fn is_empty(&self) -> bool {
        !self.all && self.services.is_empty()
    }

    /// Folds later changes in, so that a burst of events syncs once.
    pub fn merge(&mut self, later: Changes) {
        self.all |= later.all;
        self.synced |= later.synced;
        let mut services = later.services;
        // The smaller set goes into the larger: a relist names every service.
        if services.len() > self.services.len() {
            std::mem::swap(&mut self.services, &mut services);
        }
        self.services.extend(services);
        self.errors.extend(later.errors);
    }
}

/// The API objects of whole lists the model has filed, not yet freed.
///
/// Freeing a list of API objects costs about as much as converting and
/// filing it (counted on the host: 276 against 360 million instructions at
/// 50,000 × 2). Before the first sync, the lists are freed while the sync
/// waits for the kernel's answers, a few objects at a time on the run
/// loop's thread (which allocated them: freed on another thread, glibc's
/// arenas made the frees contend with its allocations), rather than before
/// the first write.
/// Whatever is left is freed when this is dropped.
#[derive(Default)]
#[expect(
    clippy::vec_box,
    reason = "the lists as the sources deliver them, kept without moving an object"
)]
pub struct Spent {
    services: Vec<Vec<Box<Service>>>,
    slices: Vec<Vec<Box<EndpointSlice>>>,
}

impl Spent {
    /// Frees up to `count` objects. Returns whether any are left.
    pub fn free_some(&mut self, count: usize) -> bool {
        let mut left = count;
        while left > 0 {
            let freed = if !self.slices.is_empty() {
                free_tail(&mut self.slices, left)
            } else if !self.services.is_empty() {
                free_tail(&mut self.services, left)
            } else {
                break;
            };
            left = left.saturating_sub(freed);
        }
        !self.is_empty()
    }

    /// Whether every object has been freed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty()
    }

    /// How many objects are left to free.
    pub fn len(&self) -> usize {
        let services: usize = self.services.iter().map(Vec::len).sum();
        let slices: usize = self.slices.iter().map(Vec::len).sum();
        services + slices
    }
}

/// Frees up to `count` objects from the end of the last of `lists`, and
/// drops that list once it is empty. Returns how many objects went, or 1
/// for an empty list dropped, so that a caller's loop always moves on.
fn free_tail<T>(lists: &mut Vec<Vec<T>>, count: usize) -> usize {
    let Some(list) = lists.last_mut() else {
        return 0;
    };
    let freed = count.min(list.len());
    list.truncate(list.len() - freed);
    if list.is_empty() {
        lists.pop();
    }
    freed.max(1)
}

impl fmt::Debug for Spent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spent")
            .field("objects", &self.len())
            .finish()
    }
}

/// A listed Service in compact form, or why it was rejected (naming the
/// Service, when it has a name, whose last good version then stays).
type ListedService = Result<ServiceInfo, ModelError>;

/// Converts one listed Service. A relist converts on every core and files
/// the results in order on the caller's thread, each chunk as soon as it
/// is converted (see [`parallel::map_consume_in_order`]); the caller's
/// thread also frees the API objects: freed on the workers instead,
/// glibc's arenas made it slower.
fn convert_service(svc: &Service) -> ListedService {
    ServiceInfo::from_service(svc)
}

/// A listed EndpointSlice in compact form (`None` for a slice of no
/// Service), or why it was rejected, with its key if it has one (the version
/// filed under it then stays), boxed as rejections are rare.
type ListedSlice = Result<Option<EndpointSliceInfo>, Box<(Option<SliceKey>, ModelError)>>;

/// Converts one listed EndpointSlice, as [`convert_service`] does a Service.
/// The key is built for a rejected slice only: an accepted one is filed
/// under its compact form's own strings ([`SliceKey::sharing`]).
fn convert_slice(slice: &EndpointSlice) -> ListedSlice {
    EndpointSliceInfo::from_slice(slice).map_err(|e| Box::new((slice_key(&slice.metadata).ok(), e)))
}

/// Where a slice lives: its namespace and its own name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SliceKey {
    namespace: Arc<str>,
    name: Arc<str>,
}

impl SliceKey {
    /// The key of `info`, sharing its strings rather than copying them.
    fn sharing(info: &EndpointSliceInfo) -> SliceKey {
        SliceKey {
            namespace: info.service.namespace.clone(),
            name: info.name.clone(),
        }
    }
}

/// Slices of one service, sorted by slice name. A service has few slices,
/// and a vector costs far less memory than a map for so few.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ServiceSlices(Vec<EndpointSliceInfo>);

impl ServiceSlices {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|s| (*s.name).cmp(name))
    }

    fn get(&self, name: &str) -> Option<&EndpointSliceInfo> {
        self.position(name).ok().map(|i| &self.0[i])
    }

    fn insert(&mut self, info: EndpointSliceInfo) {
        match self.position(&info.name) {
            Ok(i) => self.0[i] = info,
            Err(i) => {
                // Most services have one slice: no room for four.
                self.0.reserve_exact(1);
                self.0.insert(i, info);
            }
        }
    }

    fn remove(&mut self, name: &str) {
        if let Ok(i) = self.position(name) {
            self.0.remove(i);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, EndpointSliceInfo> {
        self.0.iter()
    }
}

/// Services by name. Boxed: a map keeps a third of its slots empty, and an
/// empty slot of a [`ServiceInfo`]'s size would cost more than the box.
type Services = HashMap<ServiceName, Box<ServiceInfo>>;

/// Names that many objects repeat, one allocation per value: node names
/// (every endpoint names its node, and a cluster has far fewer nodes than
/// endpoints; a slice shares its own endpoints' names already, but not with
/// other slices) and namespaces (every Service and slice names one).
#[derive(Debug, Default)]
struct SharedNames {
    names: HashSet<Arc<str>>,
    /// How many names the last sweep left: the next sweep comes once there
    /// are twice as many, so that names nothing uses any more go.
    swept: usize,
}

impl SharedNames {
    /// Points `name` at the shared allocation of its value.
    fn share(&mut self, name: &mut Arc<str>) {
        match self.names.get(&**name) {
            // Most names come shared already (see `source::slice`).
            Some(shared) if Arc::ptr_eq(shared, name) => {}
            Some(shared) => *name = shared.clone(),
            None => {
                self.names.insert(name.clone());
            }
        }
        if self.names.len() > 2 * self.swept.max(64) {
            // Held only here: nothing names it any more.
            self.names.retain(|name| Arc::strong_count(name) > 1);
            self.swept = self.names.len();
        }
    }

    /// Shares the namespace of `info`'s service and its endpoints' node names.
    fn share_slice(&mut self, info: &mut EndpointSliceInfo) {
        self.share(&mut info.service.namespace);
        let node_names = info
            .endpoints
            .iter_mut()
            .filter_map(|ep| ep.node_name.as_mut());
        for node_name in node_names {
            self.share(node_name);
        }
    }
}

/// The compact cluster state one node's proxy works from.
#[derive(Debug)]
pub struct Model {
    node_name: Arc<str>,
    node: Option<NodeInfo>,
    services: Services,
    slices: HashMap<ServiceName, ServiceSlices>,
    /// Which service each slice was last filed under, so that a delete or a
    /// relabel finds it without a scan.
    slice_owners: HashMap<SliceKey, ServiceName>,
    /// Mirrored core/v1 Endpoints, by the name they share with their Service.
    mirrored: HashMap<ServiceName, Vec<EndpointSliceInfo>>,
    /// Node names and namespaces, one allocation per value.
    names: SharedNames,
    /// Streamed lists in progress, not yet in force.
    listing: Listing,
    synced: bool,
}

/// Lists that arrive one object at a time ([`Update::ListStart`]), held
/// until their [`Update::ListDone`]. Services and slices are kept in compact
/// form as they arrive; Endpoints (standalone only) and this node's Node are
/// few, and kept as they came.
#[derive(Debug, Default)]
struct Listing {
    services: Option<Services>,
    slices: Option<ListedSlices>,
    #[expect(
        clippy::vec_box,
        reason = "the list ends as the `Update::Replace` of boxed Endpoints that a source sends"
    )]
    endpoints: Option<Vec<Box<Endpoints>>>,
    #[expect(
        clippy::vec_box,
        reason = "the list ends as the `Update::Replace` of boxed Nodes that a source sends"
    )]
    nodes: Option<Vec<Box<Node>>>,
}

/// The slices of a list, filed as the model files its own.
#[derive(Debug, Default)]
struct ListedSlices {
    slices: HashMap<ServiceName, ServiceSlices>,
    owners: HashMap<SliceKey, ServiceName>,
}

impl Model {
    /// An empty model for the node called `node_name`; Node objects with
    /// other names are ignored.
    pub fn new(node_name: impl Into<Arc<str>>) -> Model {
        Model {
            node_name: node_name.into(),
            node: None,
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owners: HashMap::new(),
            names: SharedNames::default(),
            mirrored: HashMap::new(),
            listing: Listing::default(),
            synced: false,
        }
    }

    /// This node, once its Node object has been seen.
    pub fn node(&self) -> Option<&NodeInfo> {
        self.node.as_ref()
    }

    /// Whether the sources have delivered their initial lists.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Every Service, in no particular order.
    pub fn services(&self) -> impl Iterator<Item = &ServiceInfo> + '_ {
        self.services.values().map(Box::as_ref)
    }

    /// Number of Services held.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The Service called `name`, if the model holds it.
    pub fn service(&self, name: &ServiceName) -> Option<&ServiceInfo> {
        self.services.get(name).map(Box::as_ref)
    }

    /// The endpoint slices that feed a Service: its EndpointSlices and, if it
    /// exists and has no selector, its mirrored Endpoints.
    pub fn endpoint_slices<'a>(
        &'a self,
        name: &ServiceName,
    ) -> impl Iterator<Item = &'a EndpointSliceInfo> + 'a {
        let mirror = self.services.get(name).is_some_and(|svc| !svc.has_selector);
        let mirrored = self.mirrored.get(name).filter(|_| mirror);
        self.slices
            .get(name)
            .into_iter()
            .flat_map(|s| s.iter())
            .chain(mirrored.into_iter().flatten())
    }

    /// Folds one event in.
    pub fn apply(&mut self, event: SourceEvent) -> Changes {
        self.apply_keeping(event, &mut Spent::default())
    }

    /// [`Model::apply`], keeping the API objects of a whole list (a
    /// `Replace`) in `spent` rather than freeing them: the run loop's first
    /// sync frees them while it waits for the kernel (see [`Spent`]).
    pub fn apply_keeping(&mut self, event: SourceEvent, spent: &mut Spent) -> Changes {
        let mut changes = Changes::default();
        match event {
            SourceEvent::Service(update) => self.apply_services(update, &mut changes, spent),
            SourceEvent::EndpointSlice(update) => self.apply_slices(update, &mut changes, spent),
            SourceEvent::Endpoints(update) => self.apply_endpoints(update, &mut changes),
            SourceEvent::Node(update) => self.apply_node(update, &mut changes),
            SourceEvent::Synced => {
                self.synced = true;
                changes.synced = true;
            }
        }
        changes
    }

    fn apply_services(
        &mut self,
        update: Update<Box<Service>>,
        changes: &mut Changes,
        spent: &mut Spent,
    ) {
        match update {
            Update::Apply(svc) => match ServiceInfo::from_service(&svc) {
                Ok(mut info) => {
                    self.names.share(&mut info.name.namespace);
                    if self.services.get(&info.name).map(Box::as_ref) != Some(&info) {
                        changes.services.insert(info.name.clone());
                        self.services.insert(info.name.clone(), Box::new(info));
                    }
                }
                Err(e) => changes.errors.push(e),
            },
            Update::Delete(svc) => match object_name(ObjectKind::Service, &svc.metadata) {
                Ok(name) => {
                    if self.services.remove(&name).is_some() {
                        changes.services.insert(name);
                    }
                }
                Err(e) => changes.errors.push(e),
            },
            Update::Replace(list) => {
                let mut next = HashMap::with_capacity(list.len());
                parallel::map_consume_in_order(
                    &list,
                    |svc| convert_service(svc),
                    |listed| self.list_service(&mut next, listed, changes),
                );
                self.commit_services(next, changes);
                spent.services.push(list);
            }
            Update::ListStart => self.listing.services = Some(HashMap::new()),
            Update::Listed(svc) => {
                let mut next = self.listing.services.take().unwrap_or_default();
                self.list_service(&mut next, convert_service(&svc), changes);
                self.listing.services = Some(next);
            }
            Update::ListDone => {
                let next = self.listing.services.take().unwrap_or_default();
                self.commit_services(next, changes);
            }
        }
    }

    /// Files one Service of a list into `next`; a rejected one keeps the
    /// version in force.
    fn list_service(&mut self, next: &mut Services, listed: ListedService, changes: &mut Changes) {
        match listed {
            Ok(mut info) => {
                self.names.share(&mut info.name.namespace);
                next.insert(info.name.clone(), Box::new(info));
            }
            Err(e) => {
                let name = e.service.as_deref().map(|s| &s.name);
                if let Some(last_good) = name.and_then(|name| self.services.get(name)) {
                    next.insert(last_good.name.clone(), last_good.clone());
                }
                changes.errors.push(e);
            }
        }
    }

    fn commit_services(&mut self, next: Services, changes: &mut Changes) {
        diff_keys(&self.services, &next, &mut changes.services);
        self.services = next;
    }

    fn apply_slices(
        &mut self,
        update: Update<Box<EndpointSlice>>,
        changes: &mut Changes,
        spent: &mut Spent,
    ) {
        match update {
            Update::Apply(slice) => match slice_key(&slice.metadata) {
                Err(e) => changes.errors.push(e),
                Ok(key) => match EndpointSliceInfo::from_slice(&slice) {
                    Ok(info) => self.put_slice(key, info, changes),
                    Err(e) => changes.errors.push(e),
                },
            },
            Update::Delete(slice) => match slice_key(&slice.metadata) {
                Ok(key) => self.put_slice(key, None, changes),
                Err(e) => changes.errors.push(e),
            },
            Update::Replace(list) => {
                let mut next = ListedSlices::default();
                next.owners.reserve(list.len());
                parallel::map_consume_in_order(
                    &list,
                    |slice| convert_slice(slice),
                    |listed| self.list_slice(&mut next, listed, changes),
                );
                self.commit_slices(next, changes);
                spent.slices.push(list);
            }
            Update::ListStart => self.listing.slices = Some(ListedSlices::default()),
            Update::Listed(slice) => {
                let mut next = self.listing.slices.take().unwrap_or_default();
                self.list_slice(&mut next, convert_slice(&slice), changes);
                self.listing.slices = Some(next);
            }
            Update::ListDone => {
                let next = self.listing.slices.take().unwrap_or_default();
                self.commit_slices(next, changes);
            }
        }
    }

    /// Files one EndpointSlice of a list into `next`; a rejected one keeps
    /// the version in force.
    fn list_slice(&mut self, next: &mut ListedSlices, listed: ListedSlice, changes: &mut Changes) {
        let mut info = match listed {
            Ok(Some(info)) => info,
            Ok(None) => return,
            Err(rejected) => {
                let (key, e) = *rejected;
                changes.errors.push(e);
                match key.and_then(|key| self.slice(&key)) {
                    Some(last_good) => last_good.clone(),
                    None => return,
                }
            }
        };
        self.names.share_slice(&mut info);
        next.owners
            .insert(SliceKey::sharing(&info), info.service.clone());
        next.slices
            .entry(info.service.clone())
            .or_default()
            .insert(info);
    }

    fn commit_slices(&mut self, next: ListedSlices, changes: &mut Changes) {
        diff_keys(&self.slices, &next.slices, &mut changes.services);
        self.slices = next.slices;
        self.slice_owners = next.owners;
    }

    /// The slice last filed under `key`.
    fn slice(&self, key: &SliceKey) -> Option<&EndpointSliceInfo> {
        let owner = self.slice_owners.get(key)?;
        self.slices.get(owner)?.get(&key.name)
    }

    /// Files `info` under `key` (or removes what is there for `None`).
    fn put_slice(&mut self, key: SliceKey, info: Option<EndpointSliceInfo>, changes: &mut Changes) {
        let new_owner = info.as_ref().map(|i| &i.service);
        if let Some(old_owner) = self.slice_owners.get(&key) {
            if Some(old_owner) != new_owner {
                if let Some(owner_slices) = self.slices.get_mut(old_owner) {
                    owner_slices.remove(&key.name);
                    if owner_slices.is_empty() {
                        self.slices.remove(old_owner);
                    }
                }
                changes.services.insert(old_owner.clone());
            }
        }
        match info {
            Some(mut info) => {
                self.names.share_slice(&mut info);
                let owner = info.service.clone();
                match self.slice_owners.get_mut(&key) {
                    Some(filed_under) => *filed_under = owner.clone(),
                    None => {
                        self.slice_owners
                            .insert(SliceKey::sharing(&info), owner.clone());
                    }
                }
                let owner_slices = self.slices.entry(owner.clone()).or_default();
                if owner_slices.get(&key.name) != Some(&info) {
                    owner_slices.insert(info);
                    changes.services.insert(owner);
                }
            }
            None => {
                self.slice_owners.remove(&key);
            }
        }
    }

    fn apply_endpoints(&mut self, update: Update<Box<Endpoints>>, changes: &mut Changes) {
        match update {
            Update::Apply(ep) => {
                match (
                    object_name(ObjectKind::Endpoints, &ep.metadata),
                    EndpointSliceInfo::mirror_endpoints(&ep),
                ) {
                    (Ok(name), Ok(mirrored)) => self.put_mirrored(name, mirrored, changes),
                    (Err(e), _) | (_, Err(e)) => changes.errors.push(e),
                }
            }
            Update::Delete(ep) => match object_name(ObjectKind::Endpoints, &ep.metadata) {
                Ok(name) => self.put_mirrored(name, Vec::new(), changes),
                Err(e) => changes.errors.push(e),
            },
            Update::Replace(list) => {
                let mut next = HashMap::with_capacity(list.len());
                for ep in &list {
                    let name = match object_name(ObjectKind::Endpoints, &ep.metadata) {
                        Ok(name) => name,
                        Err(e) => {
                            changes.errors.push(e);
                            continue;
                        }
                    };
                    match EndpointSliceInfo::mirror_endpoints(ep) {
                        Ok(mirrored) if mirrored.is_empty() => {}
                        Ok(mirrored) => {
                            next.insert(name, mirrored);
                        }
                        Err(e) => {
                            changes.errors.push(e);
                            if let Some(last_good) = self.mirrored.get(&name) {
                                next.insert(name, last_good.clone());
                            }
                        }
                    }
                }
                diff_keys(&self.mirrored, &next, &mut changes.services);
                self.mirrored = next;
            }
            Update::ListStart => self.listing.endpoints = Some(Vec::new()),
            Update::Listed(ep) => self.listing.endpoints.get_or_insert_default().push(ep),
            Update::ListDone => {
                let list = self.listing.endpoints.take().unwrap_or_default();
                self.apply_endpoints(Update::Replace(list), changes);
            }
        }
    }

    fn put_mirrored(
        &mut self,
        name: ServiceName,
        mirrored: Vec<EndpointSliceInfo>,
        changes: &mut Changes,
    ) {
        let old = self
            .mirrored
            .get(&name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if old == mirrored.as_slice() {
            return;
        }
        changes.services.insert(name.clone());
        if mirrored.is_empty() {
            self.mirrored.remove(&name);
        } else {
            self.mirrored.insert(name, mirrored);
        }
    }

    fn apply_node(&mut self, update: Update<Box<Node>>, changes: &mut Changes) {
        let next = match update {
            Update::Apply(node) => {
                if node.metadata.name.as_deref() != Some(&*self.node_name) {
                    return;
                }
                match NodeInfo::from_node(&node) {
                    Ok(info) => Some(info),
                    Err(e) => {
                        changes.errors.push(e);
                        return;
                    }
                }
            }
            Update::Delete(node) => {
                if node.metadata.name.as_deref() != Some(&*self.node_name) {
                    return;
                }
                None
            }
            Update::ListStart => {
                self.listing.nodes = Some(Vec::new());
                return;
            }
            Update::Listed(node) => {
                // Only this node is read from a list; the others are not kept.
                if node.metadata.name.as_deref() == Some(&*self.node_name) {
                    self.listing.nodes.get_or_insert_default().push(node);
                }
                return;
            }
            Update::ListDone => {
                let list = self.listing.nodes.take().unwrap_or_default();
                return self.apply_node(Update::Replace(list), changes);
            }
            Update::Replace(list) => {
                let Some(node) = list
                    .iter()
                    .find(|n| n.metadata.name.as_deref() == Some(&*self.node_name))
                else {
                    self.set_node(None, changes);
                    return;
                };
                match NodeInfo::from_node(node) {
                    Ok(info) => Some(info),
                    Err(e) => {
                        changes.errors.push(e);
                        return;
                    }
                }
            }
        };
        self.set_node(next, changes);
    }

    fn set_node(&mut self, next: Option<NodeInfo>, changes: &mut Changes) {
        if self.node != next {
            self.node = next;
            changes.all = true;
        }
    }
}

/// The Service name of a Service or Endpoints object (they share names).
fn object_name(kind: ObjectKind, meta: &ObjectMeta) -> Result<ServiceName, ModelError> {
    let obj = field::namespaced(kind, meta)?;
    Ok(ServiceName::new(
        obj.namespace.unwrap_or_default(),
        obj.name,
    ))
}

fn slice_key(meta: &ObjectMeta) -> Result<SliceKey, ModelError> {
    let obj = field::namespaced(ObjectKind::EndpointSlice, meta)?;
    Ok(SliceKey {
        namespace: obj.namespace.unwrap_or_default().into(),
        name: obj.name.into(),
    })
}

/// Adds to `changed` every key whose value differs between `old` and `new`
/// (present in one only, or unequal).
fn diff_keys<V: PartialEq>(
    old: &HashMap<ServiceName, V>,
    new: &HashMap<ServiceName, V>,
    changed: &mut HashSet<ServiceName>,
) {
    for (name, value) in old {
        if new.get(name) != Some(value) {
            changed.insert(name.clone());
        }
    }
    for name in new.keys() {
        if !old.contains_key(name) {
            changed.insert(name.clone());
        }
    }
}
