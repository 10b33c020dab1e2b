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
//! A document that cannot be read is reported with its file and index, and
//! the objects last read from that same document are kept, so a typo in one
//! file never withdraws a service that was working.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::{SourceEvent, Update};

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

/// The objects of a manifests directory, one list per kind, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifests {
    /// v1 Services.
    pub services: Vec<Service>,
    /// discovery.k8s.io/v1 EndpointSlices.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// v1 Endpoints (the model mirrors them into slices).
    pub endpoints: Vec<Endpoints>,
    /// v1 Nodes.
    pub nodes: Vec<Node>,
}

impl Manifests {
    /// The events of a source that has just read these objects: one
    /// `Replace` per kind, then `Synced`.
    pub fn into_events(self) -> Vec<SourceEvent> {
        let mut events = self.into_replace_events(Kinds::ALL);
        events.push(SourceEvent::Synced);
        events
    }

    fn into_replace_events(self, kinds: Kinds) -> Vec<SourceEvent> {
        let mut events = Vec::new();
        if kinds.services {
            events.push(SourceEvent::Service(Update::Replace(self.services)));
        }
        if kinds.endpoint_slices {
            events.push(SourceEvent::EndpointSlice(Update::Replace(
                self.endpoint_slices,
            )));
        }
        if kinds.endpoints {
            events.push(SourceEvent::Endpoints(Update::Replace(self.endpoints)));
        }
        if kinds.nodes {
            events.push(SourceEvent::Node(Update::Replace(self.nodes)));
        }
        events
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

    fn add(&mut self, object: &Object) {
        match object {
            Object::Service(_) => self.services = true,
            Object::EndpointSlice(_) => self.endpoint_slices = true,
            Object::Endpoints(_) => self.endpoints = true,
            Object::Node(_) => self.nodes = true,
        }
    }

    fn add_documents(&mut self, documents: &[Vec<Object>]) {
        documents
            .iter()
            .flatten()
            .for_each(|object| self.add(object));
    }
}

/// Reads a manifests directory once: `plan --manifests DIR` and `--once`.
/// Documents in the errors are skipped; everything else is returned.
pub fn read_dir(dir: &Path) -> (Manifests, Vec<ManifestError>) {
    let mut state = ManifestDir::new(dir.to_path_buf());
    let rescan = state.rescan();
    (state.manifests(), rescan.errors)
}

/// The outcome of one read of a manifests directory.
#[derive(Debug, Default)]
pub struct Rescan {
    /// Whether the directory itself could be listed.
    pub listed: bool,
    /// The kinds whose objects differ from the previous read.
    pub changed: Kinds,
    /// Files and documents that could not be read (their last good objects
    /// are kept).
    pub errors: Vec<ManifestError>,
}

/// A manifests directory as last read, file by file and document by
/// document, so that a broken document can keep its last good objects.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

#[derive(Debug)]
struct FileState {
    /// Hash of the content last parsed: an unchanged file is not parsed again.
    digest: u64,
    /// The last good objects of each document.
    documents: Vec<Vec<Object>>,
}

impl ManifestDir {
    /// A directory not read yet.
    pub fn new(dir: PathBuf) -> Self {
        ManifestDir {
            dir,
            files: BTreeMap::new(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory again. Files whose content changed are parsed,
    /// files no longer listed are forgotten, and a file or document that
    /// cannot be read keeps the objects last read from it.
    pub fn rescan(&mut self) -> Rescan {
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

        self.files.retain(|path, state| {
            let keep = listed.contains(path);
            if !keep {
                rescan.changed.add_documents(&state.documents);
            }
            keep
        });

        for path in listed {
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(error) => {
                    rescan
                        .errors
                        .push(file_error(&path, format!("cannot read: {error}")));
                    continue;
                }
            };
            let digest = digest(&bytes);
            if self
                .files
                .get(&path)
                .is_some_and(|state| state.digest == digest)
            {
                continue;
            }
            let text = match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(error) => {
                    rescan
                        .errors
                        .push(file_error(&path, format!("not UTF-8: {error}")));
                    continue;
                }
            };

            let previous = self.files.remove(&path).map(|state| state.documents);
            let previous = previous.unwrap_or_default();
            let mut documents = Vec::new();
            for (index, parsed) in parse_file(&path, &text).into_iter().enumerate() {
                match parsed {
                    Ok(objects) => documents.push(objects),
                    Err(error) => {
                        rescan.errors.push(error);
                        documents.push(previous.get(index).cloned().unwrap_or_default());
                    }
                }
            }
            if documents != previous {
                rescan.changed.add_documents(&previous);
                rescan.changed.add_documents(&documents);
            }
            self.files.insert(path, FileState { digest, documents });
        }
        rescan
    }

    /// Every object, in file and document order. When two documents define
    /// the same object, the later one wins, as with `kubectl apply -f DIR`.
    pub fn manifests(&self) -> Manifests {
        let mut manifests = Manifests::default();
        let mut seen = Seen::default();
        for (path, state) in &self.files {
            for object in state.documents.iter().flatten() {
                match object.clone() {
                    Object::Service(o) => {
                        seen.push("Service", &mut manifests.services, o, path);
                    }
                    Object::EndpointSlice(o) => {
                        let list = &mut manifests.endpoint_slices;
                        seen.push("EndpointSlice", list, o, path);
                    }
                    Object::Endpoints(o) => {
                        seen.push("Endpoints", &mut manifests.endpoints, o, path);
                    }
                    Object::Node(o) => seen.push("Node", &mut manifests.nodes, *o, path),
                }
            }
        }
        manifests
    }

    /// A `Replace` of every object of each of `kinds`.
    pub fn replace_events(&self, kinds: Kinds) -> Vec<SourceEvent> {
        self.manifests().into_replace_events(kinds)
    }
}

/// Kind, namespace and name: what makes an object the same object.
type ObjectKey = (&'static str, Option<String>, Option<String>);

/// Where each object was first seen, to replace duplicates in place.
#[derive(Default)]
struct Seen {
    index: HashMap<ObjectKey, (usize, PathBuf)>,
}

impl Seen {
    fn push<K: Metadata<Ty = ObjectMeta>>(
        &mut self,
        kind: &'static str,
        list: &mut Vec<K>,
        object: K,
        path: &Path,
    ) {
        let meta = object.metadata();
        let key = (kind, meta.namespace.clone(), meta.name.clone());
        match self.index.get(&key) {
            Some((at, first)) => {
                tracing::warn!(
                    kind,
                    namespace = key.1.as_deref().unwrap_or_default(),
                    name = key.2.as_deref().unwrap_or_default(),
                    first = %first.display(),
                    again = %path.display(),
                    "object defined twice in the manifests; the later definition wins"
                );
                list[*at] = object;
            }
            None => {
                self.index.insert(key, (list.len(), path.to_path_buf()));
                list.push(object);
            }
        }
    }
}

/// One object read from a manifest.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "Services dominate a manifests directory; boxing them saves nothing"
)]
enum Object {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Endpoints(Endpoints),
    /// Boxed: a Node is twice the size of the others and rare.
    Node(Box<Node>),
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

fn is_json(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// Each document of a file: its objects, or why it cannot be read.
fn parse_file(path: &Path, text: &str) -> Vec<Result<Vec<Object>, ManifestError>> {
    let document_error = |index: usize, message: String| ManifestError {
        path: path.to_path_buf(),
        document: Some(index + 1),
        message,
    };
    if is_json(path) {
        let parsed = serde_json::from_str::<serde_json::Value>(text)
            .map_err(|error| error.to_string())
            .and_then(|value| decode_document(path, 1, value).map_err(|e| e.to_string()));
        return vec![parsed.map_err(|message| document_error(0, message))];
    }
    yaml_documents(text)
        .into_iter()
        .enumerate()
        .map(|(index, (first_line, document))| {
            let value = serde_yaml_ng::from_str::<serde_json::Value>(document)
                .map_err(|_| yaml_error_at(first_line, document))?;
            decode_document(path, index + 1, value).map_err(|e| e.to_string())
        })
        .enumerate()
        .map(|(index, parsed)| parsed.map_err(|message| document_error(index, message)))
        .collect()
}

/// A YAML error whose line numbers count from the start of the file, not of
/// the document: the document is parsed again behind as many empty lines as
/// precede it (only on error, so the copy costs nothing in the common case).
fn yaml_error_at(first_line: usize, document: &str) -> String {
    let mut padded = "\n".repeat(first_line);
    padded.push_str(document);
    match serde_yaml_ng::from_str::<serde_json::Value>(&padded) {
        Err(error) => error.to_string(),
        Ok(_) => "invalid YAML".to_owned(),
    }
}

/// Splits a YAML stream at its `---` document markers into (index of the
/// document's first line, text). Comments and directives before the first
/// marker belong to the first document instead of forming an empty one.
fn yaml_documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let (mut start, mut start_line) = (0, 0);
    let mut offset = 0;
    for (line_index, line) in text.split_inclusive('\n').enumerate() {
        if is_document_marker(line) && offset > 0 {
            let previous = &text[start..offset];
            if start > 0 || has_content(previous) {
                documents.push((start_line, previous));
                (start, start_line) = (offset, line_index);
            }
        }
        offset += line.len();
    }
    let last = &text[start..];
    if start > 0 || has_content(last) {
        documents.push((start_line, last));
    }
    documents
}

fn is_document_marker(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Whether YAML text holds more than blank lines, comments and directives.
fn has_content(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim();
        !line.is_empty() && !line.starts_with('#') && !line.starts_with('%')
    })
}

/// Why a document could not be decoded: the field and what is wrong with it.
#[derive(Debug)]
struct DecodeError {
    /// Dotted path of the field, empty for the document itself.
    field: String,
    message: String,
}

impl DecodeError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        DecodeError {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// The same error, inside `items[index]` of a list.
    fn in_item(mut self, index: usize) -> Self {
        self.field = if self.field.is_empty() {
            format!("items[{index}]")
        } else {
            format!("items[{index}].{}", self.field)
        };
        self
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// The objects of one document: none (empty document), one, or a list's.
fn decode_document(
    path: &Path,
    document: usize,
    value: serde_json::Value,
) -> Result<Vec<Object>, DecodeError> {
    if value.is_null() {
        return Ok(Vec::new());
    }
    let (api_version, kind) = type_of(&value)?;
    if kind == "List" || (kind.ends_with("List") && value.get("items").is_some()) {
        let serde_json::Value::Object(mut list) = value else {
            unreachable!("type_of accepts only objects");
        };
        let items = match list.remove("items") {
            Some(serde_json::Value::Array(items)) => items,
            Some(serde_json::Value::Null) | None => Vec::new(),
            Some(other) => {
                return Err(DecodeError::new(
                    "items",
                    format!("expected a sequence, found {}", json_type(&other)),
                ))
            }
        };
        let mut objects = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let (api_version, kind) = type_of(&item).map_err(|e| e.in_item(index))?;
            let object = decode_object(&api_version, &kind, item).map_err(|e| e.in_item(index))?;
            match object {
                Some(object) => objects.push(object),
                None => ignore_kind(path, document, &api_version, &kind),
            }
        }
        return Ok(objects);
    }
    match decode_object(&api_version, &kind, value)? {
        Some(object) => Ok(vec![object]),
        None => {
            ignore_kind(path, document, &api_version, &kind);
            Ok(Vec::new())
        }
    }
}

fn ignore_kind(path: &Path, document: usize, api_version: &str, kind: &str) {
    tracing::warn!(
        file = %path.display(),
        document,
        api_version,
        kind,
        "manifest of a kind the proxy does not read; ignored"
    );
}

/// The apiVersion and kind of an object, both required.
fn type_of(value: &serde_json::Value) -> Result<(String, String), DecodeError> {
    let serde_json::Value::Object(object) = value else {
        return Err(DecodeError::new(
            "",
            format!(
                "expected an object with apiVersion and kind, found {}",
                json_type(value)
            ),
        ));
    };
    let field = |name: &str| match object.get(name) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(serde_json::Value::Null) => Err(DecodeError::new(name, "missing")),
        Some(serde_json::Value::String(_)) => Err(DecodeError::new(name, "empty")),
        Some(other) => Err(DecodeError::new(
            name,
            format!("expected a string, found {}", json_type(other)),
        )),
    };
    Ok((field("apiVersion")?, field("kind")?))
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a sequence",
        serde_json::Value::Object(_) => "a mapping",
    }
}

/// One object of a kind the proxy reads, or `None` for any other kind.
fn decode_object(
    api_version: &str,
    kind: &str,
    value: serde_json::Value,
) -> Result<Option<Object>, DecodeError> {
    let object = match (api_version, kind) {
        ("v1", "Service") => Object::Service(decode_namespaced(value)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Object::EndpointSlice(decode_namespaced(value)?)
        }
        ("v1", "Endpoints") => Object::Endpoints(decode_namespaced(value)?),
        ("v1", "Node") => Object::Node(Box::new(decode(value)?)),
        _ => return Ok(None),
    };
    Ok(Some(object))
}

/// A namespaced object; without a namespace it lands in `default`, as with
/// `kubectl apply`.
fn decode_namespaced<K>(value: serde_json::Value) -> Result<K, DecodeError>
where
    K: DeserializeOwned + Metadata<Ty = ObjectMeta>,
{
    let mut object: K = decode(value)?;
    let namespace = &mut object.metadata_mut().namespace;
    if namespace.as_deref().is_none_or(str::is_empty) {
        *namespace = Some("default".to_owned());
    }
    Ok(object)
}

fn decode<K>(value: serde_json::Value) -> Result<K, DecodeError>
where
    K: DeserializeOwned + Metadata<Ty = ObjectMeta>,
{
    let object: K = serde_path_to_error::deserialize(value).map_err(|error| {
        let field = error.path().to_string();
        let field = if field == "." { String::new() } else { field };
        DecodeError {
            field,
            message: error.into_inner().to_string(),
        }
    })?;
    if object.metadata().name.as_deref().is_none_or(str::is_empty) {
        return Err(DecodeError::new("metadata.name", "missing"));
    }
    Ok(object)
}

/// Follows a manifests directory: one `Replace` per kind and `Synced` once
/// the directory has been read, then a `Replace` of each kind a change of
/// the files touched. Errors are logged and never end the stream.
///
/// The directory is watched from this call on, so no change between the
/// call and the first read is lost. Must be called inside a Tokio runtime.
pub fn watch_dir(dir: PathBuf) -> impl Stream<Item = SourceEvent> + Send {
    let (sender, receiver) = mpsc::unbounded_channel();
    let watcher = start_watching(&dir, sender.clone());
    let state = DirWatch {
        dir: Some(ManifestDir::new(dir)),
        watcher,
        sender,
        receiver,
        pending: VecDeque::new(),
        synced: false,
        first_read: true,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.pending.pop_front() {
                return Some((event, state));
            }
            if !state.first_read {
                state.wait_for_change().await;
            }
            state.first_read = false;
            state.read().await;
        }
    })
}

type NotifySender = mpsc::UnboundedSender<notify::Result<notify::Event>>;

/// The state behind [`watch_dir`]'s stream.
struct DirWatch {
    /// `None` only while a rescan runs on the blocking pool.
    dir: Option<ManifestDir>,
    /// Dropping it stops the notifications; `None` while the directory
    /// cannot be watched.
    watcher: Option<notify::RecommendedWatcher>,
    sender: NotifySender,
    receiver: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    pending: VecDeque<SourceEvent>,
    synced: bool,
    first_read: bool,
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
            let dir = self.dir.as_ref().map(|d| d.dir().to_path_buf());
            self.watcher = dir.and_then(|dir| start_watching(&dir, self.sender.clone()));
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

    /// Reads the directory and queues the events for what changed.
    async fn read(&mut self) {
        let Some(mut dir) = self.dir.take() else {
            return;
        };
        // File reads block; keep them off the runtime's workers.
        let path = dir.dir().to_path_buf();
        let (dir, rescan) = match tokio::task::spawn_blocking(move || {
            let rescan = dir.rescan();
            (dir, rescan)
        })
        .await
        {
            Ok(done) => done,
            Err(error) => {
                // Parsing never panics; should it, start over from an empty state.
                tracing::error!(%error, "reading the manifests directory failed");
                (ManifestDir::new(path), Rescan::default())
            }
        };
        for error in &rescan.errors {
            tracing::error!("{error}");
        }
        if rescan.listed && !self.synced {
            self.synced = true;
            self.pending.extend(dir.manifests().into_events());
        } else if self.synced && !rescan.changed.is_empty() {
            self.pending.extend(dir.replace_events(rescan.changed));
        }
        self.dir = Some(dir);
    }
}

#[cfg(test)]
mod fuzz;

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
