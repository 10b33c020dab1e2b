//! The standalone source: a directory of manifests.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file directly in the directory is read,
//! in name order. Hidden files are skipped: editors write their temporary
//! files under dot names, and a ConfigMap volume keeps its real data under
//! `..data`. A YAML file may hold several documents; a document holds one
//! object or a `List` of them. The kinds read are Service, EndpointSlice
//! (discovery.k8s.io/v1), Endpoints and Node; other kinds are logged and
//! ignored.
//!
//! A document that cannot be read is reported with its file and index, a
//! bad item of a list also with its index, kind, name and field, and the
//! other items still load. While a file has such errors, the objects it
//! defined before and no longer yields are kept, so a typo in one file
//! never withdraws a service that was working.
//!
//! The objects themselves are not kept: they go to the model as they are
//! parsed (a `List`'s items one at a time, see `decode`), and the model
//! holds them in compact form, as in-cluster. What is kept is what a rescan
//! needs to emit only the changes: per document, a hash of its text and the
//! key and content hash of each object it defined; per object, the files
//! that define it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;
use tokio::sync::mpsc;

#[cfg(test)]
use self::decode::yaml_documents;
use self::decode::{parse_document, split_file};
use super::{EndpointSlice, SourceEvent, Update};

/// How long the directory must be quiet before a burst of file events is
/// read: one editor save is several events.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// A burst of events longer than this is read anyway, so a file rewritten
/// continuously is still followed.
const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

/// How often to retry watching a directory that could not be watched (it
/// does not exist yet, say).
const WATCH_RETRY: Duration = Duration::from_secs(2);

/// A file or document that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file; the directory itself when it could not be listed.
    pub path: PathBuf,
    /// The document's index in the file, counted from 1, when the error is
    /// in one document rather than the whole file.
    pub document: Option<usize>,
    /// What is wrong, starting with the field path when a field is.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.path.display())?;
        if let Some(document) = self.document {
            write!(f, "document {document}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ManifestError {}

/// The objects of a manifests directory, one list per kind, in file order:
/// what [`read_dir`] returns. The proxy itself never holds them all; it
/// streams them into its model (see [`ManifestDir::rescan`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifests {
    /// v1 Services.
    pub services: Vec<Box<Service>>,
    /// discovery.k8s.io/v1 EndpointSlices.
    pub endpoint_slices: Vec<Box<EndpointSlice>>,
    /// v1 Endpoints (the model mirrors them into slices).
    pub endpoints: Vec<Box<Endpoints>>,
    /// v1 Nodes.
    pub nodes: Vec<Box<Node>>,
}

impl Manifests {
    /// The events of a source that has just read these objects: one
    /// `Replace` per kind, then `Synced`.
    pub fn into_events(self) -> Vec<SourceEvent> {
        vec![
            SourceEvent::Service(Update::Replace(self.services)),
            SourceEvent::EndpointSlice(Update::Replace(self.endpoint_slices)),
            SourceEvent::Endpoints(Update::Replace(self.endpoints)),
            SourceEvent::Node(Update::Replace(self.nodes)),
            SourceEvent::Synced,
        ]
    }

    /// Files the object a first read emits; a later definition of the same
    /// object replaces the earlier one in place.
    fn add(&mut self, event: SourceEvent, index: &mut HashMap<ObjectKey, usize>) {
        fn put<K>(list: &mut Vec<K>, at: Option<usize>, object: K) -> usize {
            match at {
                Some(at) => {
                    list[at] = object;
                    at
                }
                None => {
                    list.push(object);
                    list.len() - 1
                }
            }
        }
        let object = match event {
            SourceEvent::Service(Update::Listed(o)) => Object::Service(o),
            SourceEvent::EndpointSlice(Update::Listed(o)) => Object::EndpointSlice(o),
            SourceEvent::Endpoints(Update::Listed(o)) => Object::Endpoints(o),
            SourceEvent::Node(Update::Listed(o)) => Object::Node(o),
            _ => return,
        };
        let key = object.key();
        let at = index.get(&key).copied();
        let at = match object {
            Object::Service(o) => put(&mut self.services, at, o),
            Object::EndpointSlice(o) => put(&mut self.endpoint_slices, at, o),
            Object::Endpoints(o) => put(&mut self.endpoints, at, o),
            Object::Node(o) => put(&mut self.nodes, at, o),
        };
        index.insert(key, at);
    }
}

/// Which kinds of object a change touched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kinds {
    /// Services changed.
    pub services: bool,
    /// EndpointSlices changed.
    pub endpoint_slices: bool,
    /// Endpoints changed.
    pub endpoints: bool,
    /// Nodes changed.
    pub nodes: bool,
}

impl Kinds {
    /// Every kind.
    pub const ALL: Kinds = Kinds {
        services: true,
        endpoint_slices: true,
        endpoints: true,
        nodes: true,
    };

    /// Whether no kind changed.
    pub fn is_empty(self) -> bool {
        self == Kinds::default()
    }

    fn add(&mut self, kind: Kind) {
        match kind {
            Kind::Service => self.services = true,
            Kind::EndpointSlice => self.endpoint_slices = true,
            Kind::Endpoints => self.endpoints = true,
            Kind::Node => self.nodes = true,
        }
    }
}

/// Reads a manifests directory once into lists of objects. Documents in
/// the errors are skipped; everything else is returned.
pub fn read_dir(dir: &Path) -> (Manifests, Vec<ManifestError>) {
    let mut manifests = Manifests::default();
    let mut index = HashMap::new();
    let rescan = ManifestDir::new(dir.to_path_buf()).rescan(&mut |event| {
        manifests.add(event, &mut index);
    });
    (manifests, rescan.errors)
}

/// Reads a manifests directory once, as `plan --manifests DIR` and `--once`
/// do: its objects are handed to `emit` one at a time as they are parsed
/// (`ListStart`, `Listed`…, `ListDone` per kind, then `Synced`), so that the
/// model keeps them in compact form and no list of objects is ever held.
/// Returns the files and documents that could not be read (skipped).
pub fn read_events(dir: &Path, mut emit: impl FnMut(SourceEvent)) -> Vec<ManifestError> {
    let rescan = ManifestDir::new(dir.to_path_buf()).rescan(&mut emit);
    emit(SourceEvent::Synced);
    rescan.errors
}

/// The outcome of one read of a manifests directory.
#[derive(Debug, Default)]
pub struct Rescan {
    /// Whether the directory itself could be listed.
    pub listed: bool,
    /// The kinds of the objects emitted: those that differ from the
    /// previous read.
    pub changed: Kinds,
    /// Files and documents that could not be read (their last good objects
    /// are kept).
    pub errors: Vec<ManifestError>,
}

/// A manifests directory as last read. Only what a rescan needs to emit
/// the changes is kept, never the objects themselves (the model holds them
/// in compact form): per document, a fingerprint of its text and the key
/// and content hash of each object it last produced; per key, the files
/// that define it, the last of which is in force.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<Arc<Path>, FileState>,
    /// Every file defining each object, in name order: the last wins, as
    /// with `kubectl apply -f DIR` (and within a file, the last document).
    holders: HashMap<Arc<ObjectKey>, Vec<Arc<Path>>>,
    /// Whether a first read has listed the directory: it emits lists, later
    /// reads changes.
    listed: bool,
}

#[derive(Debug, Default)]
struct FileState {
    /// Hash of the content last parsed: an unchanged file is not parsed
    /// again. `None` forces a parse.
    digest: Option<u64>,
    documents: Vec<DocumentState>,
    /// Objects read before that a read with errors did not find: the error
    /// may be in them, so they stay in force until the file reads in full.
    kept: Vec<(Arc<ObjectKey>, u64)>,
    /// Objects to emit at its next read even if unchanged: a later
    /// definition of them was withdrawn, so this one is in force again.
    reinstate: HashSet<Arc<ObjectKey>>,
}

impl FileState {
    /// The key and content hash of every object it defines.
    fn objects(&self) -> impl Iterator<Item = &(Arc<ObjectKey>, u64)> {
        let documents = self.documents.iter().flat_map(|d| &d.objects);
        documents.chain(&self.kept)
    }
}

#[derive(Debug, Default)]
struct DocumentState {
    /// Hash of the text last read without error: an unchanged document is
    /// not parsed again. `None` for a document with errors, so that it is
    /// parsed (and reported) again at every change of its file.
    fingerprint: Option<u64>,
    /// The key and content hash of each object last read from it.
    objects: Vec<(Arc<ObjectKey>, u64)>,
}

/// A file being read again: what it last produced, against which each
/// object read now is compared. Documents are not matched one to one, so
/// that a document removed or inserted leaves the others' objects alone.
struct Settling {
    path: Arc<Path>,
    /// The content hash in force of each object before this read (for an
    /// object defined twice in the file, the later definition's).
    last: HashMap<Arc<ObjectKey>, u64>,
    /// Objects the file defined twice before this read: which definition
    /// is the last is only known at its end, so they are emitted then.
    twice: HashSet<Arc<ObjectKey>>,
    /// The last definition read so far of each object in `twice`.
    pending: HashMap<Arc<ObjectKey>, (Object, u64)>,
    reinstate: HashSet<Arc<ObjectKey>>,
}

/// Files to read again, and their objects whose later definition was
/// withdrawn, so that theirs is in force again.
type Reinstate = BTreeMap<Arc<Path>, Vec<Arc<ObjectKey>>>;

/// Where the events of a rescan go, and what they touched.
struct Emitter<'a> {
    /// The first read: objects go out as `Listed`, and there is nothing to
    /// delete.
    listing: bool,
    send: &'a mut dyn FnMut(SourceEvent),
    changed: Kinds,
}

impl Emitter<'_> {
    fn object(&mut self, object: Object) {
        self.changed.add(object.kind());
        (self.send)(object.into_event(self.listing));
    }

    fn delete(&mut self, key: &ObjectKey) {
        if !self.listing {
            self.changed.add(key.kind);
            (self.send)(key.delete_event());
        }
    }
}

/// A bound on the documents reinstated in one rescan: each re-read of a
/// file can only find more work if the file changed again meanwhile, and
/// what is left over is read at the next rescan.
const REINSTATE_ROUNDS: usize = 64;

impl ManifestDir {
    /// A directory not read yet.
    pub fn new(dir: PathBuf) -> Self {
        ManifestDir {
            dir,
            files: BTreeMap::new(),
            holders: HashMap::new(),
            listed: false,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory again and hands `emit` the events that bring a
    /// model up to date, one object at a time as it is parsed. The first
    /// read that lists the directory emits `ListStart`, a `Listed` per
    /// object and `ListDone`, for every kind; later reads emit an `Apply`
    /// per object added or changed and a `Delete` per object withdrawn.
    /// Files no longer listed are forgotten, and a file or document that
    /// cannot be read keeps the objects last read from it in force.
    pub fn rescan(&mut self, emit: &mut dyn FnMut(SourceEvent)) -> Rescan {
        let mut rescan = Rescan::default();
        let listed = match list_manifest_files(&self.dir) {
            Ok(listed) => listed,
            Err(error) => {
                rescan.errors.push(ManifestError {
                    path: self.dir.clone(),
                    document: None,
                    message: format!("cannot list the directory: {error}"),
                });
                return rescan;
            }
        };
        rescan.listed = true;
        let listing = !self.listed;
        if listing {
            list_marker(emit, || Update::ListStart);
        }
        let mut out = Emitter {
            listing,
            send: emit,
            changed: Kinds::default(),
        };
        let mut reinstate = Reinstate::new();

        for path in &listed {
            self.read_file(path, &mut out, &mut rescan.errors, &mut reinstate);
        }
        // After the files read: a file renamed is then read under its new
        // name first, and its objects never withdrawn in between.
        let gone: Vec<Arc<Path>> = (self.files.keys())
            .filter(|path| !listed.contains(&***path))
            .cloned()
            .collect();
        for path in gone {
            let Some(state) = self.files.remove(&path) else {
                continue;
            };
            let keys = state
                .objects()
                .map(|(key, _)| key.clone())
                .collect::<Vec<_>>();
            self.withdraw(&path, keys, &mut out, &mut reinstate);
        }
        for _ in 0..REINSTATE_ROUNDS {
            let Some((path, objects)) = reinstate.pop_first() else {
                break;
            };
            if self.force_parse(&path, objects) {
                self.read_file(&path, &mut out, &mut rescan.errors, &mut reinstate);
            }
        }
        // Left over: parsed at the next rescan.
        while let Some((path, objects)) = reinstate.pop_first() {
            self.force_parse(&path, objects);
        }

        rescan.changed = out.changed;
        if listing {
            list_marker(emit, || Update::ListDone);
            self.listed = true;
        }
        rescan
    }

    /// Marks objects of `path` to be emitted at the next read of the file,
    /// which then parses the documents defining them. False if the file is
    /// not known.
    fn force_parse(&mut self, path: &Path, objects: Vec<Arc<ObjectKey>>) -> bool {
        let Some(state) = self.files.get_mut(path) else {
            return false;
        };
        state.digest = None;
        state.reinstate.extend(objects);
        true
    }

    /// Reads one file and emits what changed in it.
    fn read_file(
        &mut self,
        path: &Path,
        out: &mut Emitter<'_>,
        errors: &mut Vec<ManifestError>,
        reinstate: &mut Reinstate,
    ) {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) => {
                errors.push(file_error(path, format!("cannot read: {error}")));
                return;
            }
        };
        let file_digest = digest(&bytes);
        let known = self.files.get_key_value(path);
        if known.is_some_and(|(_, state)| state.digest == Some(file_digest)) {
            return;
        }
        let path: Arc<Path> = known.map_or_else(|| Arc::from(path), |(path, _)| path.clone());
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(error) => {
                errors.push(file_error(&path, format!("not UTF-8: {error}")));
                return;
            }
        };

        let previous = self.files.remove(&path).unwrap_or_default();
        let mut settling = Settling {
            path: path.clone(),
            last: HashMap::new(),
            twice: HashSet::new(),
            pending: HashMap::new(),
            reinstate: previous.reinstate,
        };
        for (key, hash) in previous.documents.iter().flat_map(|d| &d.objects) {
            if settling.last.insert(key.clone(), *hash).is_some() {
                settling.twice.insert(key.clone());
            }
        }
        settling.last.extend(previous.kept);
        let mut previous = previous.documents.into_iter();
        let mut documents = Vec::new();
        let mut complete = true;
        for (index, (first_line, document)) in split_file(&path, &text).into_iter().enumerate() {
            let fingerprint = digest(document.as_bytes());
            // Parsed even if unchanged: a document with an object to emit
            // anyway, or one the file defines twice.
            let unchanged = previous.next().filter(|last| {
                last.fingerprint == Some(fingerprint)
                    && !(last.objects.iter()).any(|(key, _)| {
                        settling.reinstate.contains(key) || settling.twice.contains(key)
                    })
            });
            if let Some(last) = unchanged {
                documents.push(last);
                continue;
            }
            let mut objects = Vec::new();
            let document_errors =
                parse_document(&path, index, first_line, document, &mut |object| {
                    objects.push(self.settle(&mut settling, object, out));
                });
            complete &= document_errors.is_empty();
            documents.push(DocumentState {
                fingerprint: document_errors.is_empty().then_some(fingerprint),
                objects,
            });
            errors.extend(document_errors);
        }
        let mut state = self.finish(settling, documents, complete, out, reinstate);
        state.digest = Some(file_digest);
        self.files.insert(path, state);
    }

    /// Puts an object just read from the file being read in force where
    /// that file is its last definition, and emits it if it differs from
    /// what the file last produced. Returns its key and content hash.
    fn settle(
        &mut self,
        settling: &mut Settling,
        object: Object,
        out: &mut Emitter<'_>,
    ) -> (Arc<ObjectKey>, u64) {
        let hash = object.content_hash();
        let key = self.hold(object.key(), &settling.path);
        if settling.twice.contains(&key) {
            settling.pending.insert(key.clone(), (object, hash));
            return (key, hash);
        }
        let forced = settling.reinstate.remove(&key);
        let unchanged = !forced && settling.last.get(&key) == Some(&hash);
        if !unchanged && self.in_force(&key, &settling.path) {
            out.object(object);
        }
        (key, hash)
    }

    /// Whether `path` holds the definition of `key` in force.
    fn in_force(&self, key: &ObjectKey, path: &Arc<Path>) -> bool {
        self.holders.get(key).and_then(|h| h.last()) == Some(path)
    }

    /// Ends the read of a file: emits the objects it defines twice, and,
    /// read in full, withdraws those it no longer defines; read with
    /// errors, they stay in force, as the error may be in them.
    fn finish(
        &mut self,
        settling: Settling,
        documents: Vec<DocumentState>,
        complete: bool,
        out: &mut Emitter<'_>,
        reinstate: &mut Reinstate,
    ) -> FileState {
        let Settling {
            path,
            mut last,
            pending,
            reinstate: mut unread,
            ..
        } = settling;
        for (key, (object, hash)) in pending {
            let forced = unread.remove(&key);
            if (forced || last.get(&key) != Some(&hash)) && self.in_force(&key, &path) {
                out.object(object);
            }
        }
        for (key, _) in documents.iter().flat_map(|d| &d.objects) {
            last.remove(key);
        }
        let mut state = FileState {
            documents,
            ..FileState::default()
        };
        if complete {
            self.withdraw(&path, last.into_keys(), out, reinstate);
        } else {
            unread.retain(|key| last.contains_key(key));
            state.kept = last.into_iter().collect();
            state.reinstate = unread;
        }
        state
    }

    /// Records that file `path` defines the object `key`; returns the key
    /// as shared by every file defining it.
    fn hold(&mut self, key: ObjectKey, path: &Arc<Path>) -> Arc<ObjectKey> {
        let shared = match self.holders.get_key_value(&key) {
            Some((shared, _)) => shared.clone(),
            None => Arc::new(key),
        };
        let holders = self.holders.entry(shared.clone()).or_default();
        if let Err(at) = holders.binary_search(path) {
            holders.insert(at, path.clone());
            if let [first, .., last] = &holders[..] {
                tracing::warn!(
                    kind = ?shared.kind,
                    namespace = &*shared.namespace,
                    name = &*shared.name,
                    first = %first.display(),
                    again = %last.display(),
                    "object defined in two files; the later file wins"
                );
            }
        }
        shared
    }

    /// Withdraws file `path`'s definition of each of `keys`: an object no
    /// other file defines is deleted, and where the withdrawn one was in
    /// force, the definition before it is reinstated.
    fn withdraw(
        &mut self,
        path: &Arc<Path>,
        keys: impl IntoIterator<Item = Arc<ObjectKey>>,
        out: &mut Emitter<'_>,
        reinstate: &mut Reinstate,
    ) {
        for key in keys {
            let Some((shared, mut holders)) = self.holders.remove_entry(&key) else {
                continue;
            };
            let was_in_force = holders.last() == Some(path);
            holders.retain(|holder| holder != path);
            match holders.last() {
                None => {
                    if was_in_force {
                        out.delete(&key);
                    }
                    continue;
                }
                // Not deleted meanwhile, so that a move between files never
                // withdraws the object; should the earlier definition no
                // longer parse, the withdrawn one stays until it does.
                Some(earlier) if was_in_force => {
                    let objects = reinstate.entry(earlier.clone()).or_default();
                    objects.push(shared.clone());
                }
                Some(_) => {}
            }
            self.holders.insert(shared, holders);
        }
    }
}

/// Emits a list marker for every kind.
fn list_marker(emit: &mut dyn FnMut(SourceEvent), marker: fn() -> Update<()>) {
    fn cast<K>(update: Update<()>) -> Update<K> {
        match update {
            Update::ListStart => Update::ListStart,
            _ => Update::ListDone,
        }
    }
    emit(SourceEvent::Service(cast(marker())));
    emit(SourceEvent::EndpointSlice(cast(marker())));
    emit(SourceEvent::Endpoints(cast(marker())));
    emit(SourceEvent::Node(cast(marker())));
}

/// The kinds the proxy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Service,
    EndpointSlice,
    Endpoints,
    Node,
}

/// Kind, namespace and name: what makes an object the same object.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ObjectKey {
    kind: Kind,
    /// Empty for a Node.
    namespace: Box<str>,
    name: Box<str>,
}

impl ObjectKey {
    /// The `Delete` of this object: the model reads only the key.
    fn delete_event(&self) -> SourceEvent {
        let metadata = ObjectMeta {
            namespace: (!self.namespace.is_empty()).then(|| self.namespace.to_string()),
            name: Some(self.name.to_string()),
            ..ObjectMeta::default()
        };
        match self.kind {
            Kind::Service => SourceEvent::Service(Update::Delete(Box::new(Service {
                metadata,
                ..Service::default()
            }))),
            Kind::EndpointSlice => SourceEvent::slice(Update::Delete(EndpointSlice {
                metadata,
                ..EndpointSlice::default()
            })),
            Kind::Endpoints => SourceEvent::endpoints(Update::Delete(Endpoints {
                metadata,
                ..Endpoints::default()
            })),
            Kind::Node => SourceEvent::Node(Update::Delete(Box::new(Node {
                metadata,
                ..Node::default()
            }))),
        }
    }
}

/// One object read from a manifest.
///
/// Services and Nodes are boxed, as in [`SourceEvent`], which carries them
/// on without moving them again.
#[derive(Debug, Clone, PartialEq)]
enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Endpoints(Box<Endpoints>),
    Node(Box<Node>),
}

impl Object {
    fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Endpoints(_) => Kind::Endpoints,
            Object::Node(_) => Kind::Node,
        }
    }

    fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Service(o) => o.metadata(),
            Object::EndpointSlice(o) => o.metadata(),
            Object::Endpoints(o) => o.metadata(),
            Object::Node(o) => o.metadata(),
        }
    }

    fn key(&self) -> ObjectKey {
        let meta = self.metadata();
        ObjectKey {
            kind: self.kind(),
            namespace: meta.namespace.as_deref().unwrap_or_default().into(),
            name: meta.name.as_deref().unwrap_or_default().into(),
        }
    }

    /// A hash of the object as decoded: a change of comments, layout or
    /// key order leaves it as it was.
    fn content_hash(&self) -> u64 {
        let mut hasher = HashWriter(std::collections::hash_map::DefaultHasher::new());
        // Writing to a hasher cannot fail, nor can serializing these types.
        let _ = match self {
            Object::Service(o) => serde_json::to_writer(&mut hasher, o),
            Object::EndpointSlice(o) => serde_json::to_writer(&mut hasher, o),
            Object::Endpoints(o) => serde_json::to_writer(&mut hasher, o),
            Object::Node(o) => serde_json::to_writer(&mut hasher, o),
        };
        hasher.0.finish()
    }

    fn into_event(self, listing: bool) -> SourceEvent {
        fn update<K>(object: K, listing: bool) -> Update<K> {
            if listing {
                Update::Listed(object)
            } else {
                Update::Apply(object)
            }
        }
        match self {
            Object::Service(o) => SourceEvent::Service(update(o, listing)),
            Object::EndpointSlice(o) => SourceEvent::EndpointSlice(update(o, listing)),
            Object::Endpoints(o) => SourceEvent::Endpoints(update(o, listing)),
            Object::Node(o) => SourceEvent::Node(update(o, listing)),
        }
    }
}

/// Feeds what is written to a hasher.
struct HashWriter<H>(H);

impl<H: Hasher> std::io::Write for HashWriter<H> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn file_error(path: &Path, message: String) -> ManifestError {
    ManifestError {
        path: path.to_path_buf(),
        document: None,
        message,
    }
}

fn digest(bytes: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// The manifest files directly in `dir`, sorted.
fn list_manifest_files(dir: &Path) -> std::io::Result<BTreeSet<PathBuf>> {
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        // Follows symlinks: a ConfigMap volume's files are links into `..data`.
        if is_manifest_name(&path) && path.is_file() {
            files.insert(path);
        }
    }
    Ok(files)
}

fn is_manifest_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
            ["yaml", "yml", "json"]
                .iter()
                .any(|known| e.eq_ignore_ascii_case(known))
        })
}

/// Follows a manifests directory: once it has been read, every object as
/// a list per kind (`ListStart`, `Listed`…, `ListDone`) and `Synced`; then
/// an `Apply` or `Delete` per object a change of the files touched. Objects
/// stream through as they are parsed (the reading thread waits for the
/// consumer), so no list of them is ever held. Errors are logged and never
/// end the stream.
///
/// The directory is watched from this call on, so no change between the
/// call and the first read is lost. Must be called inside a Tokio runtime.
pub fn watch_dir(dir: PathBuf) -> impl Stream<Item = SourceEvent> + Send {
    let (sender, receiver) = mpsc::unbounded_channel();
    let watcher = start_watching(&dir, sender.clone());
    let state = DirWatch {
        path: dir.clone(),
        dir: Some(ManifestDir::new(dir)),
        watcher,
        sender,
        receiver,
        reading: None,
        synced: false,
        first_read: true,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.next_read_event().await {
                return Some((event, state));
            }
            if !state.first_read {
                state.wait_for_change().await;
            }
            state.first_read = false;
            state.start_read();
        }
    })
}

type NotifySender = mpsc::UnboundedSender<notify::Result<notify::Event>>;

/// Events a read passes on while it runs; a few are buffered, then the
/// reading thread waits.
const READ_BUFFER: usize = 256;

/// The state behind [`watch_dir`]'s stream.
struct DirWatch {
    path: PathBuf,
    /// `None` only while a rescan runs on the blocking pool.
    dir: Option<ManifestDir>,
    /// Dropping it stops the notifications; `None` while the directory
    /// cannot be watched.
    watcher: Option<notify::RecommendedWatcher>,
    sender: NotifySender,
    receiver: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    /// The read in progress.
    reading: Option<Reading>,
    synced: bool,
    first_read: bool,
}

/// A rescan running on the blocking pool, and the events it emits.
struct Reading {
    events: mpsc::Receiver<SourceEvent>,
    task: tokio::task::JoinHandle<(ManifestDir, Rescan)>,
}

fn start_watching(dir: &Path, sender: NotifySender) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let watcher = notify::recommended_watcher(move |event| {
        // The receiver is gone only when the stream was dropped.
        let _ = sender.send(event);
    })
    .and_then(|mut watcher| {
        watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        Ok(watcher)
    });
    match watcher {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::error!(
                dir = %dir.display(),
                %error,
                retry_in = ?WATCH_RETRY,
                "cannot watch the manifests directory"
            );
            None
        }
    }
}

/// Whether an event can mean changed content. Our own reads open files,
/// and those events must not trigger another read.
fn is_change(event: &notify::Result<notify::Event>) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, MetadataKind, ModifyKind};
    match event {
        Err(error) => {
            tracing::warn!(%error, "manifests directory watch error; reading it again");
            true
        }
        Ok(event) => match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
            _ => true,
        },
    }
}

impl DirWatch {
    /// Returns once the directory may have changed and the burst of events
    /// is over.
    async fn wait_for_change(&mut self) {
        if self.watcher.is_none() {
            tokio::time::sleep(WATCH_RETRY).await;
            self.watcher = start_watching(&self.path, self.sender.clone());
            return;
        }
        loop {
            // Never `None`: this struct holds a sender.
            let Some(event) = self.receiver.recv().await else {
                return;
            };
            if is_change(&event) {
                break;
            }
        }
        let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
        loop {
            let quiet = tokio::time::Instant::now() + DEBOUNCE;
            match tokio::time::timeout_at(quiet.min(deadline), self.receiver.recv()).await {
                Ok(Some(_)) if tokio::time::Instant::now() < deadline => continue,
                _ => break,
            }
        }
    }

    /// Starts reading the directory on the blocking pool: file reads block.
    fn start_read(&mut self) {
        let Some(mut dir) = self.dir.take() else {
            return;
        };
        let (sender, events) = mpsc::channel(READ_BUFFER);
        let task = tokio::task::spawn_blocking(move || {
            let rescan = dir.rescan(&mut |event| {
                // The receiver is gone only when the stream was dropped.
                let _ = sender.blocking_send(event);
            });
            (dir, rescan)
        });
        self.reading = Some(Reading { events, task });
    }

    /// The next event of the read in progress; `None` once there is none
    /// (no read, or the read is done).
    async fn next_read_event(&mut self) -> Option<SourceEvent> {
        let reading = self.reading.as_mut()?;
        if let Some(event) = reading.events.recv().await {
            return Some(event);
        }
        let reading = self.reading.take()?;
        let rescan = match reading.task.await {
            Ok((dir, rescan)) => {
                self.dir = Some(dir);
                rescan
            }
            Err(error) => {
                // Parsing never panics; should it, start over from an empty
                // state, whose first read lists every object again.
                tracing::error!(%error, "reading the manifests directory failed");
                self.dir = Some(ManifestDir::new(self.path.clone()));
                Rescan::default()
            }
        };
        for error in &rescan.errors {
            tracing::error!("{error}");
        }
        if rescan.listed && !self.synced {
            self.synced = true;
            return Some(SourceEvent::Synced);
        }
        None
    }
}

#[cfg(test)]
mod fuzz;

mod decode;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_documents_split_at_markers() {
        struct Case {
            name: &'static str,
            text: &'static str,
            documents: &'static [(usize, &'static str)],
        }
        let cases = [
            Case {
                name: "single document without marker",
                text: "a: 1\n",
                documents: &[(0, "a: 1\n")],
            },
            Case {
                name: "leading marker does not make an empty first document",
                text: "---\na: 1\n",
                documents: &[(0, "---\na: 1\n")],
            },
            Case {
                name: "comments before the first marker join the first document",
                text: "# header\n---\na: 1\n---\nb: 2\n",
                documents: &[(0, "# header\n---\na: 1\n"), (3, "---\nb: 2\n")],
            },
            Case {
                name: "content before the first marker is a document",
                text: "a: 1\n--- \nb: 2",
                documents: &[(0, "a: 1\n"), (1, "--- \nb: 2")],
            },
            Case {
                name: "content on the marker line stays with its document",
                text: "--- {a: 1}\n--- {b: 2}\n",
                documents: &[(0, "--- {a: 1}\n"), (1, "--- {b: 2}\n")],
            },
            Case {
                name: "dashes inside a value are not a marker",
                text: "a: |\n  ---\n----\n",
                documents: &[(0, "a: |\n  ---\n----\n")],
            },
            Case {
                name: "empty file has no documents",
                text: "# nothing\n\n",
                documents: &[],
            },
        ];
        for case in cases {
            assert_eq!(yaml_documents(case.text), case.documents, "{}", case.name);
        }
    }

    #[test]
    fn manifest_names() {
        let cases = [
            ("svc.yaml", true),
            ("svc.yml", true),
            ("svc.json", true),
            ("SVC.YAML", true),
            (".svc.yaml", false),
            ("..data", false),
            ("svc.yaml.swp", false),
            ("svc.yaml~", false),
            ("README.md", false),
            ("yaml", false),
        ];
        for (name, expected) in cases {
            assert_eq!(is_manifest_name(Path::new(name)), expected, "{name}");
        }
    }
}
