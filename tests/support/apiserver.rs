//! A test API server: Kubernetes LIST and WATCH over real HTTP, for the
//! in-cluster source (no kube-apiserver can run on the test machines).
//!
//! It keeps one global, increasing resourceVersion and a history of events
//! per collection, as etcd does, and serves:
//! - LIST (`GET /api/v1/services?labelSelector=…`): the matching objects in
//!   a `ServiceList` stamped with the current resourceVersion, in pages of
//!   `limit` with a `continue` token, as the real server pages them. A page
//!   after the first is served only while the collection is as it was at
//!   the first page; after a change the token has expired (410), where the
//!   real server would still serve its snapshot;
//! - WATCH (`…?watch=1&resourceVersion=RV&allowWatchBookmarks=true`): the
//!   events after RV, then live events, as chunked JSON lines; from an RV
//!   older than the compacted history, a single ERROR event with a 410
//!   Expired Status, which is what makes a client relist.
//!
//! Collections are cluster-wide (`/api/v1/services`) or namespaced
//! (`/api/v1/namespaces/NS/services`). Label selectors support `k`, `!k`,
//! `k=v`, `k==v` and `k!=v`; field selectors `metadata.name` and
//! `metadata.namespace`. As in the real server, an object that stops
//! matching a watch's selector is DELETED from it and one that starts
//! matching is ADDED.
//!
//! It also takes POST (create) and PATCH (JSON merge patch) of objects in a
//! registered collection, as the proxy posts Events; a test reads them back
//! with [`TestApiServer::objects`].
//!
//! The test drives it through [`TestApiServer`]: create, update and delete
//! objects, send bookmarks, compact the history, cut, end or hold watches,
//! count requests, and require a bearer token (others get 401, as from the
//! real server). It serves plain HTTP; `tls::TlsFront` puts HTTPS in front.
//! It depends only on axum, tokio, serde_json and k8s-openapi, so a
//! benchmark binary can include it as it is.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State as AxumState};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

/// A running test API server. Dropping it stops the server.
#[derive(Debug)]
pub struct TestApiServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

/// How often each collection was listed and watched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// LISTs (a list served in several pages counts once).
    pub lists: usize,
    /// Pages served after the first of a LIST (requests with `continue`).
    pub continued: usize,
    /// WATCH requests, including those answered with 410 Gone.
    pub watches: usize,
}

/// One request, in the terms of an RBAC rule: what a ClusterRole must grant
/// for it to succeed in a real cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiCall {
    /// get, list, watch, create, update, patch or delete.
    pub verb: String,
    /// "" for the core group, e.g. "discovery.k8s.io".
    pub api_group: String,
    /// The plural, e.g. "endpointslices".
    pub resource: String,
}

impl ApiCall {
    /// The call a request is, as the API server's RBAC authorizer sees it;
    /// `None` for a path that names no resource (discovery, /version).
    fn of(method: &Method, path: &str, query: &HashMap<String, String>) -> Option<ApiCall> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (api_group, rest) = match segments.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => return None,
        };
        let (resource, named) = match rest {
            [plural] | ["namespaces", _, plural] => (*plural, false),
            [plural, _name] | ["namespaces", _, plural, _name] => (*plural, true),
            _ => return None,
        };
        let watching = query.get("watch").is_some_and(|w| w == "1" || w == "true");
        let verb = match *method {
            Method::GET if watching => "watch",
            Method::GET if named => "get",
            Method::GET => "list",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if named => "delete",
            Method::DELETE => "deletecollection",
            _ => return None,
        };
        Some(ApiCall {
            verb: verb.to_owned(),
            api_group: api_group.to_owned(),
            resource: resource.to_owned(),
        })
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// True while new watches are held back (see `hold_watches`).
    held: watch::Sender<bool>,
    /// The number of watch streams open now.
    open_watches: watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct State {
    /// The last resourceVersion handed out.
    resource_version: u64,
    /// Watches from an older resourceVersion get 410 Gone.
    compacted: u64,
    collections: HashMap<CollectionKey, Collection>,
    watches: Vec<OpenWatch>,
    next_watch_id: u64,
    /// How many LIST requests to come fail with 500.
    failing_lists: usize,
    /// Every request that named a resource, served or not, in order.
    calls: Vec<ApiCall>,
    /// The bearer token every request must carry, once one is required.
    token: Option<String>,
    /// Requests refused with 401 for want of that token.
    unauthorized: usize,
}

/// apiVersion and plural, e.g. ("discovery.k8s.io/v1", "endpointslices").
type CollectionKey = (String, String);

#[derive(Debug)]
struct Collection {
    kind: String,
    /// Current objects by (namespace, name).
    objects: BTreeMap<(String, String), Value>,
    /// Each of `objects` as a list item (without apiVersion and kind),
    /// serialized once when stored: a page of a LIST is these joined, so
    /// a big list costs the server little beside the client it serves.
    items: BTreeMap<(String, String), String>,
    /// Every change still retained, oldest first.
    history: Vec<Change>,
    /// The resourceVersion of the last change (continue tokens older than
    /// it have expired).
    changed_at: u64,
    requests: Requests,
}

#[derive(Debug, Clone)]
struct Change {
    resource_version: u64,
    /// The object before the change (None when created).
    old: Option<Value>,
    /// The object after the change; the last state when deleted.
    new: Value,
    deleted: bool,
}

#[derive(Debug)]
struct OpenWatch {
    id: u64,
    collection: CollectionKey,
    filter: Filter,
    bookmarks: bool,
    sender: mpsc::UnboundedSender<Result<Bytes, std::io::Error>>,
}

impl TestApiServer {
    /// Starts a server on 127.0.0.1 on an ephemeral port, serving Services,
    /// EndpointSlices, Endpoints and Nodes (others can be `register`ed).
    pub async fn start() -> TestApiServer {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            held: watch::Sender::new(false),
            open_watches: watch::Sender::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("local address");
        let router = Router::new()
            .fallback(serve)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("test API server");
        });
        let server = TestApiServer {
            address,
            shared,
            server,
        };
        server.register::<k8s_openapi::api::core::v1::Service>();
        server.register::<k8s_openapi::api::discovery::v1::EndpointSlice>();
        server.register::<k8s_openapi::api::core::v1::Endpoints>();
        server.register::<k8s_openapi::api::core::v1::Node>();
        server.register::<k8s_openapi::api::events::v1::Event>();
        server
    }

    /// The server's URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Where the server listens (for a front such as TLS).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// From now on, every request without `Authorization: Bearer TOKEN` is
    /// refused with 401 Unauthorized, as the real server refuses a request
    /// it cannot authenticate.
    pub fn require_token(&self, token: &str) {
        self.state().token = Some(token.to_owned());
    }

    /// How many requests were refused for want of the token.
    pub fn unauthorized(&self) -> usize {
        self.state().unauthorized
    }

    /// Serves the collection of `K` (empty until objects are applied).
    pub fn register<K: k8s_openapi::Resource>(&self) {
        self.state()
            .collections
            .entry(collection_key::<K>())
            .or_insert_with(|| Collection {
                kind: K::KIND.to_owned(),
                objects: BTreeMap::new(),
                items: BTreeMap::new(),
                history: Vec::new(),
                changed_at: 0,
                requests: Requests::default(),
            });
    }

    /// Creates or replaces an object (ADDED or MODIFIED to watches) and
    /// returns its new resourceVersion.
    pub fn apply<K: k8s_openapi::Resource + serde::Serialize>(&self, object: &K) -> u64 {
        self.register::<K>();
        let mut value = serde_json::to_value(object).expect("a k8s-openapi object serializes");
        value["apiVersion"] = json!(K::API_VERSION);
        value["kind"] = json!(K::KIND);
        let collection_key = collection_key::<K>();
        self.state().store(&collection_key, &mut value)
    }

    /// The objects of `K`'s collection now, e.g. the Events posted to it.
    pub fn objects<K: k8s_openapi::Resource + serde::de::DeserializeOwned>(&self) -> Vec<K> {
        let state = self.state();
        let Some(collection) = state.collections.get(&collection_key::<K>()) else {
            return Vec::new();
        };
        collection
            .objects
            .values()
            .map(|v| serde_json::from_value(v.clone()).expect("stored objects are K"))
            .collect()
    }

    /// Deletes an object (DELETED to watches); false if there was none.
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: Option<&str>, name: &str) -> bool {
        let collection_key = collection_key::<K>();
        let mut state = self.state();
        let key = (namespace.unwrap_or_default().to_owned(), name.to_owned());
        let Some(mut value) = state.collections.get_mut(&collection_key).and_then(|c| {
            c.items.remove(&key);
            c.objects.remove(&key)
        }) else {
            return false;
        };
        state.resource_version += 1;
        let resource_version = state.resource_version;
        value["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        let change = Change {
            resource_version,
            old: Some(value.clone()),
            new: value,
            deleted: true,
        };
        let collection = state
            .collections
            .get_mut(&collection_key)
            .expect("found above");
        collection.changed_at = resource_version;
        collection.history.push(change.clone());
        state.publish(&collection_key, &change);
        true
    }

    /// Sends every open watch that asked for bookmarks a BOOKMARK carrying
    /// the current resourceVersion, which it returns.
    pub fn send_bookmark(&self) -> u64 {
        let mut state = self.state();
        let resource_version = state.resource_version;
        let State {
            watches,
            collections,
            ..
        } = &mut *state;
        for open in watches.iter().filter(|open| open.bookmarks) {
            let kind = &collections[&open.collection].kind;
            let bookmark = json!({
                "type": "BOOKMARK",
                "object": {
                    "apiVersion": open.collection.0,
                    "kind": kind,
                    "metadata": {"resourceVersion": resource_version.to_string()},
                },
            });
            let _ = open.sender.send(Ok(json_line(&bookmark)));
        }
        resource_version
    }

    /// Forgets the history: a watch from any resourceVersion older than the
    /// current one is answered 410 Gone from now on.
    pub fn compact_history(&self) {
        let mut state = self.state();
        state.compacted = state.resource_version;
        for collection in state.collections.values_mut() {
            collection.history.clear();
        }
    }

    /// Breaks every open watch connection mid-stream (no final chunk), as a
    /// network failure or an API server crash would. Events written just
    /// before may be lost in flight, as they would be then.
    pub fn cut_watches(&self) {
        let watches = std::mem::take(&mut self.state().watches);
        for open in watches {
            let _ = open
                .sender
                .send(Err(std::io::Error::other("connection cut by the test")));
        }
    }

    /// Ends every open watch cleanly after what was sent to it, as the
    /// server does when a watch's timeoutSeconds expire.
    pub fn end_watches(&self) {
        // Dropping the senders ends the streams once drained.
        drop(std::mem::take(&mut self.state().watches));
    }

    /// Holds new watch requests (without answering) until
    /// [`release_watches`](Self::release_watches): with `cut_watches` or
    /// `end_watches`, the client is blind meanwhile.
    pub fn hold_watches(&self) {
        self.shared.held.send_replace(true);
    }

    /// Lets held and new watch requests through.
    pub fn release_watches(&self) {
        self.shared.held.send_replace(false);
    }

    /// Waits until exactly `count` watch streams are open (a hang guard is
    /// the caller's business).
    pub async fn wait_for_open_watches(&self, count: usize) {
        let mut open = self.shared.open_watches.subscribe();
        open.wait_for(|open| *open == count)
            .await
            .expect("the sender lives in self");
    }

    /// Answers the next `count` LIST requests (of any collection) with a
    /// 500 InternalError Status, as an overloaded API server would.
    pub fn fail_next_lists(&self, count: usize) {
        self.state().failing_lists = count;
    }

    /// Every request so far that named a resource, in RBAC terms, whether
    /// it was served or refused.
    pub fn calls(&self) -> Vec<ApiCall> {
        self.state().calls.clone()
    }

    /// How often the collection of `K` was listed and watched.
    pub fn requests<K: k8s_openapi::Resource>(&self) -> Requests {
        self.state()
            .collections
            .get(&collection_key::<K>())
            .map(|c| c.requests)
            .unwrap_or_default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// Creates or replaces `value` in a registered collection, stamped with
    /// a new resourceVersion (which it returns), and tells the watches.
    fn store(&mut self, collection_key: &CollectionKey, value: &mut Value) -> u64 {
        let key = object_key(value);
        self.resource_version += 1;
        let resource_version = self.resource_version;
        value["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        let collection = self
            .collections
            .get_mut(collection_key)
            .expect("a registered collection");
        collection.items.insert(key.clone(), list_item(value));
        let old = collection.objects.insert(key, value.clone());
        collection.changed_at = resource_version;
        let change = Change {
            resource_version,
            old,
            new: value.clone(),
            deleted: false,
        };
        collection.history.push(change.clone());
        self.publish(collection_key, &change);
        resource_version
    }

    /// Sends a change to the watches of its collection whose selectors it
    /// concerns, as the event type each of them sees.
    fn publish(&mut self, collection: &CollectionKey, change: &Change) {
        self.watches.retain(|open| {
            if &open.collection != collection {
                return true;
            }
            match watch_event(&open.filter, change) {
                Some(event) => open.sender.send(Ok(json_line(&event))).is_ok(),
                None => true,
            }
        });
    }
}

/// The event a watch with `filter` sees for `change`, if any.
fn watch_event(filter: &Filter, change: &Change) -> Option<Value> {
    let was = change.old.as_ref().is_some_and(|old| filter.matches(old));
    let is = !change.deleted && filter.matches(&change.new);
    let kind = match (was, is) {
        (false, true) => "ADDED",
        (true, true) => "MODIFIED",
        (true, false) => "DELETED",
        (false, false) => return None,
    };
    Some(json!({"type": kind, "object": change.new}))
}

fn json_line(value: &Value) -> Bytes {
    let mut line = serde_json::to_vec(value).expect("JSON values serialize");
    line.push(b'\n');
    Bytes::from(line)
}

fn collection_key<K: k8s_openapi::Resource>() -> CollectionKey {
    (K::API_VERSION.to_owned(), K::URL_PATH_SEGMENT.to_owned())
}

fn object_key(object: &Value) -> (String, String) {
    let field = |name: &str| {
        object["metadata"][name]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    (field("namespace"), field("name"))
}

/// What a request selects: namespace from the path, label and field selectors.
#[derive(Debug, Default)]
struct Filter {
    namespace: Option<String>,
    labels: Vec<LabelRequirement>,
    fields: Vec<(String, String)>,
}

#[derive(Debug)]
enum LabelRequirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
}

impl Filter {
    fn parse(namespace: Option<String>, query: &HashMap<String, String>) -> Result<Filter, String> {
        let mut filter = Filter {
            namespace,
            ..Filter::default()
        };
        let terms = |selector: Option<&String>| {
            selector
                .map(|s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        for term in terms(query.get("labelSelector")) {
            let requirement = if let Some(key) = term.strip_prefix('!') {
                LabelRequirement::NotExists(key.to_owned())
            } else if let Some((key, value)) = term.split_once("!=") {
                LabelRequirement::NotEquals(key.to_owned(), value.to_owned())
            } else if let Some((key, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                LabelRequirement::Equals(key.to_owned(), value.to_owned())
            } else if term.contains(' ') || term.contains('(') {
                return Err(format!("unsupported label selector term {term:?}"));
            } else {
                LabelRequirement::Exists(term)
            };
            filter.labels.push(requirement);
        }
        for term in terms(query.get("fieldSelector")) {
            let (field, value) = term
                .split_once("==")
                .or_else(|| term.split_once('='))
                .ok_or_else(|| format!("unsupported field selector term {term:?}"))?;
            if field != "metadata.name" && field != "metadata.namespace" {
                return Err(format!("field selector on {field:?} is not supported"));
            }
            filter.fields.push((field.to_owned(), value.to_owned()));
        }
        Ok(filter)
    }

    fn matches(&self, object: &Value) -> bool {
        let metadata = &object["metadata"];
        let namespace = metadata["namespace"].as_str().unwrap_or_default();
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return false;
        }
        let label = |key: &str| metadata["labels"][key].as_str();
        let labels_match = self.labels.iter().all(|requirement| match requirement {
            LabelRequirement::Exists(key) => label(key).is_some(),
            LabelRequirement::NotExists(key) => label(key).is_none(),
            LabelRequirement::Equals(key, value) => label(key) == Some(value),
            LabelRequirement::NotEquals(key, value) => label(key) != Some(value),
        });
        let fields_match = self.fields.iter().all(|(field, value)| {
            let actual = match field.as_str() {
                "metadata.name" => metadata["name"].as_str(),
                _ => metadata["namespace"].as_str(),
            };
            actual.unwrap_or_default() == value
        });
        labels_match && fields_match
    }
}

/// Splits a collection path into its key and namespace:
/// `/api/v1[/namespaces/NS]/PLURAL` or `/apis/GROUP/VERSION[/namespaces/NS]/PLURAL`.
fn parse_path(path: &str) -> Option<(CollectionKey, Option<String>)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ((*version).to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    match rest {
        [plural] => Some(((api_version, (*plural).to_owned()), None)),
        ["namespaces", namespace, plural] => Some((
            (api_version, (*plural).to_owned()),
            Some((*namespace).to_owned()),
        )),
        _ => None,
    }
}

/// Whether the request carries the token the server requires (always, when
/// it requires none); a refusal is counted.
fn authorized(state: &mut State, headers: &HeaderMap) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if sent == Some(token.as_str()) {
        return true;
    }
    state.unauthorized += 1;
    false
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = status_object(code.as_u16(), reason, message);
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn status_object(code: u16, reason: &str, message: String) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

async fn serve(
    AxumState(shared): AxumState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&mut shared.lock(), &headers) {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".to_owned(),
        );
    }
    if let Some(call) = ApiCall::of(&method, uri.path(), &query) {
        shared.lock().calls.push(call);
    }
    if method == Method::POST {
        return create_object(&shared, uri.path(), &body);
    }
    if method == Method::PATCH {
        return patch_object(&shared, uri.path(), &body);
    }
    if method != Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not served"),
        );
    }
    let Some((key, namespace)) = parse_path(uri.path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} is not a collection", uri.path()),
        );
    };
    if !shared.lock().collections.contains_key(&key) {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find {}", uri.path()),
        );
    }
    let filter = match Filter::parse(namespace, &query) {
        Ok(filter) => filter,
        Err(message) => return status(StatusCode::BAD_REQUEST, "BadRequest", message),
    };
    let watching = query.get("watch").is_some_and(|w| w == "1" || w == "true");
    if watching {
        if query.get("sendInitialEvents").is_some_and(|s| s == "true") {
            let message = "streaming lists (sendInitialEvents) are not served".to_owned();
            return status(StatusCode::BAD_REQUEST, "BadRequest", message);
        }
        watch_collection(shared, key, filter, &query).await
    } else {
        let page = match Page::parse(&query) {
            Ok(page) => page,
            Err(message) => return status(StatusCode::BAD_REQUEST, "BadRequest", message),
        };
        list_collection(&shared, &key, &filter, page)
    }
}

/// POST to a collection: stores the object, 409 if its name is taken.
fn create_object(shared: &Shared, path: &str, body: &[u8]) -> Response {
    let Some((key, namespace)) = parse_path(path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{path} is not a collection"),
        );
    };
    let mut object: Value = match serde_json::from_slice(body) {
        Ok(object) => object,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
    };
    let mut state = shared.lock();
    let Some(collection) = state.collections.get(&key) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find {path}"),
        );
    };
    if let Some(namespace) = namespace {
        object["metadata"]["namespace"] = json!(namespace);
    }
    if object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
    {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value".to_owned(),
        );
    }
    if collection.objects.contains_key(&object_key(&object)) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{path}: {} already exists", object["metadata"]["name"]),
        );
    }
    object["apiVersion"] = json!(key.0);
    object["kind"] = json!(collection.kind);
    state.store(&key, &mut object);
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        object.to_string(),
    )
        .into_response()
}

/// PATCH of one object with a JSON merge patch (RFC 7386); 404 if absent.
fn patch_object(shared: &Shared, path: &str, body: &[u8]) -> Response {
    let found = path
        .trim_end_matches('/')
        .rsplit_once('/')
        .and_then(|(collection, name)| Some((parse_path(collection)?, name.to_owned())));
    let Some(((key, namespace), name)) = found else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{path} is not an object"),
        );
    };
    let patch: Value = match serde_json::from_slice(body) {
        Ok(patch) => patch,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
    };
    let mut state = shared.lock();
    let object_key = (namespace.unwrap_or_default(), name);
    let Some(mut object) = state
        .collections
        .get(&key)
        .and_then(|c| c.objects.get(&object_key))
        .cloned()
    else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{path} not found"),
        );
    };
    merge_patch(&mut object, &patch);
    state.store(&key, &mut object);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        object.to_string(),
    )
        .into_response()
}

/// RFC 7386: objects merge key by key, `null` deletes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Which page of a LIST is asked for: `limit` (0 or absent: all) and the
/// `continue` token of the page before.
#[derive(Debug)]
struct Page {
    limit: usize,
    after: Option<Continue>,
}

/// A continue token, "RV/NAMESPACE/NAME": the list's resourceVersion and
/// the key of the last object served (names never contain '/').
#[derive(Debug)]
struct Continue {
    resource_version: u64,
    key: (String, String),
}

impl Page {
    fn parse(query: &HashMap<String, String>) -> Result<Page, String> {
        let limit = match query.get("limit") {
            None => 0,
            Some(limit) => limit
                .parse()
                .map_err(|_| format!("invalid limit {limit:?}"))?,
        };
        let after = match query.get("continue").filter(|token| !token.is_empty()) {
            None => None,
            Some(token) => {
                let mut parts = token.splitn(3, '/');
                let (Some(rv), Some(namespace), Some(name)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(format!("invalid continue token {token:?}"));
                };
                let resource_version = rv
                    .parse()
                    .map_err(|_| format!("invalid continue token {token:?}"))?;
                Some(Continue {
                    resource_version,
                    key: (namespace.to_owned(), name.to_owned()),
                })
            }
        };
        Ok(Page { limit, after })
    }
}

fn list_collection(shared: &Shared, key: &CollectionKey, filter: &Filter, page: Page) -> Response {
    use std::ops::Bound;
    let mut state = shared.lock();
    let collection = state.collections.get_mut(key).expect("checked by serve");
    // One LIST, however many pages it is served in.
    match page.after {
        None => collection.requests.lists += 1,
        Some(_) => collection.requests.continued += 1,
    }
    if state.failing_lists > 0 {
        state.failing_lists -= 1;
        let message = "the test server fails this list".to_owned();
        return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message);
    }
    let collection = state.collections.get(key).expect("checked by serve");
    let (resource_version, start) = match &page.after {
        None => (state.resource_version, Bound::Unbounded),
        Some(after) if after.resource_version < collection.changed_at => {
            let message = "the provided continue parameter is too old to serve a consistent list; \
                           list again without it"
                .to_owned();
            return status(StatusCode::GONE, "Expired", message);
        }
        Some(after) => (after.resource_version, Bound::Excluded(after.key.clone())),
    };
    let limit = if page.limit == 0 {
        usize::MAX
    } else {
        page.limit
    };
    let mut matching = collection
        .objects
        .range((start, Bound::Unbounded))
        .filter(|(_, object)| filter.matches(object));
    let mut items = String::new();
    let mut last_key = None;
    for (object_key, _) in matching.by_ref().take(limit) {
        if last_key.is_some() {
            items.push(',');
        }
        items.push_str(&collection.items[object_key]);
        last_key = Some(object_key);
    }
    let mut metadata = json!({"resourceVersion": resource_version.to_string()});
    if let (Some((namespace, name)), Some(_)) = (last_key, matching.next()) {
        metadata["continue"] = json!(format!("{resource_version}/{namespace}/{name}"));
    }
    let head = json!({
        "kind": format!("{}List", collection.kind),
        "apiVersion": key.0,
        "metadata": metadata,
    })
    .to_string();
    // `head` is an object: its closing brace gives way to the items.
    let list = format!("{},\"items\":[{items}]}}", &head[..head.len() - 1]);
    ([(header::CONTENT_TYPE, "application/json")], list).into_response()
}

/// An object as an item of a list: as the real server, without apiVersion
/// and kind.
fn list_item(object: &Value) -> String {
    let mut item = object.clone();
    if let Value::Object(fields) = &mut item {
        fields.remove("apiVersion");
        fields.remove("kind");
    }
    item.to_string()
}

async fn watch_collection(
    shared: Arc<Shared>,
    key: CollectionKey,
    filter: Filter,
    query: &HashMap<String, String>,
) -> Response {
    let from = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("invalid resourceVersion {rv:?}"),
                );
            }
        },
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");

    // Held while the test has suspended watches; the client just waits.
    let mut held = shared.held.subscribe();
    let _ = held.wait_for(|held| !held).await;

    let (sender, receiver) = mpsc::unbounded_channel();
    let id = {
        let mut state = shared.lock();
        let current = state.resource_version;
        let compacted = state.compacted;
        let collection = state.collections.get_mut(&key).expect("checked by serve");
        collection.requests.watches += 1;
        let from = from.unwrap_or(current);
        if from < compacted {
            let message = format!("too old resource version: {from} ({compacted})");
            let gone = json!({"type": "ERROR", "object": status_object(410, "Expired", message)});
            return (
                [(header::CONTENT_TYPE, "application/json")],
                json_line(&gone),
            )
                .into_response();
        }
        // The backlog and the registration happen under one lock: no change
        // falls between them.
        for change in collection
            .history
            .iter()
            .filter(|c| c.resource_version > from)
        {
            if let Some(event) = watch_event(&filter, change) {
                let _ = sender.send(Ok(json_line(&event)));
            }
        }
        let id = state.next_watch_id;
        state.next_watch_id += 1;
        state.watches.push(OpenWatch {
            id,
            collection: key,
            filter,
            bookmarks,
            sender,
        });
        id
    };
    shared.open_watches.send_modify(|open| *open += 1);

    let guard = WatchGuard { shared, id };
    let body = futures::stream::unfold((receiver, guard), |(mut receiver, guard)| async move {
        let item = receiver.recv().await?;
        Some((item, (receiver, guard)))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body.boxed()))
        .expect("a valid response")
}

/// Unregisters a watch when its stream ends or the client goes away.
struct WatchGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.shared.lock().watches.retain(|open| open.id != self.id);
        self.shared.open_watches.send_modify(|open| *open -= 1);
    }
}
