//! Paged LISTs whose next page is asked for while this one is decoded.
//!
//! kube-runtime's watcher lists a collection in pages (`limit`, then
//! `continue` with the token of the page before) and asks for each page
//! only once it has handed on every object of the one before. The API
//! server's time to build a page and the proxy's time to decode the last
//! one then add up, page after page: at 10,000 EndpointSlices that is 20
//! round trips in series. This client asks for the next page as soon as a
//! page is in (its `continue` token is in the list's metadata, which the
//! API server writes before the items), and the watcher's request for it
//! takes the answer, so that the server builds a page while the proxy
//! decodes the one before.
//!
//! Nothing else changes: the same requests go to the server, each answer
//! (an error status, or a 410 Gone for an expired token, included) reaches
//! the watcher as the server gave it, and a request that is not the next
//! page of a list goes straight through. A page asked ahead that got no
//! answer (a connection lost) is asked again when the watcher asks for it.
//! At most one page per collection and selector is held ahead; a list that
//! is abandoned (a relist, an error) drops it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde::de::{self, Deserializer as _, IgnoredAny, MapAccess, Visitor};
use tokio::task::JoinHandle;

/// `client`, asking for the next page of each paged LIST ahead.
pub fn prefetching(client: Client) -> Client {
    let namespace = client.default_namespace().to_owned();
    let pages = Pages::default();
    let service = tower::service_fn(move |request: Request<Body>| {
        let client = client.clone();
        let pages = pages.clone();
        async move { pages.send(&client, request).await }
    });
    Client::new(service, namespace)
}

/// A page answer, its body read in full.
type Page = Response<Bytes>;

/// The pages asked for ahead, by list (see [`ListRequest::list`]).
#[derive(Clone, Default)]
struct Pages(Arc<Mutex<HashMap<String, Ahead>>>);

/// The next page of one list, asked for ahead.
struct Ahead {
    /// Its `continue` token, as the server wrote it.
    token: String,
    page: JoinHandle<Result<Page, kube::Error>>,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        // Not wanted any more (a relist, or taken): nothing waits for it.
        self.page.abort();
    }
}

impl Pages {
    async fn send(&self, client: &Client, request: Request<Body>) -> kube::Result<Response<Body>> {
        let Some(list) = ListRequest::of(&request) else {
            return client.send(request).await;
        };
        let ahead = self.take(&list);
        let page = match ahead {
            Some(mut ahead) => match (&mut ahead.page).await {
                Ok(Ok(page)) => page,
                // The request asked ahead was not answered (a connection
                // lost, say): it is asked again, now, as it would have
                // been without it. An answer, an error status included,
                // is the server's and is passed on.
                Ok(Err(_)) | Err(_) => read_page(client, request).await?,
            },
            None => read_page(client, request).await?,
        };
        if page.status() == StatusCode::OK {
            if let Some(token) = continue_token(page.body()) {
                self.ask_ahead(client, &list, token);
                // Lets the request go out before the caller decodes this
                // page: on a single-threaded runtime nothing else would
                // run until it is done.
                tokio::task::yield_now().await;
            }
        }
        Ok(page.map(Body::from))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ahead>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The page asked for ahead that `list` asks for, if any. Any other
    /// page of the same list is dropped: that list was abandoned.
    fn take(&self, list: &ListRequest) -> Option<Ahead> {
        let ahead = self.lock().remove(&list.list)?;
        (list.token.as_deref() == Some(ahead.token.as_str())).then_some(ahead)
    }

    /// Asks for the page of `list` after `token`.
    fn ask_ahead(&self, client: &Client, list: &ListRequest, token: String) {
        let Some(request) = list.next(&token) else {
            return;
        };
        let client = client.clone();
        let page = tokio::spawn(async move { read_page(&client, request).await });
        self.lock().insert(list.list.clone(), Ahead { token, page });
    }
}

/// Sends `request` and reads the whole answer.
async fn read_page(client: &Client, request: Request<Body>) -> kube::Result<Page> {
    let (parts, body) = client.send(request).await?.into_parts();
    Ok(Response::from_parts(parts, body.collect_bytes().await?))
}

/// A GET of a collection in pages (a `limit`, no `watch`).
#[derive(Debug, PartialEq)]
struct ListRequest {
    /// The path and every query parameter but `continue`, as sent: which
    /// list this is a page of.
    list: String,
    /// The `continue` token, decoded; `None` for the first page.
    token: Option<String>,
    /// The request's headers, for the next page's.
    headers: http::HeaderMap,
}

impl ListRequest {
    fn of(request: &Request<Body>) -> Option<ListRequest> {
        if request.method() != Method::GET {
            return None;
        }
        let uri = request.uri();
        let query = uri.query()?;
        let mut list = String::with_capacity(uri.path().len() + query.len());
        list.push_str(uri.path());
        let mut token = None;
        let mut paged = false;
        let mut first = true;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "watch" => return None,
                "continue" => {
                    let decoded = form_urlencoded::parse(pair.as_bytes()).next();
                    token = decoded
                        .map(|(_, v)| v.into_owned())
                        .filter(|t| !t.is_empty());
                    continue;
                }
                "limit" => paged = value.parse::<u64>().is_ok_and(|l| l > 0),
                _ => {}
            }
            list.push(if first { '?' } else { '&' });
            list.push_str(pair);
            first = false;
        }
        paged.then(|| ListRequest {
            list,
            token,
            headers: request.headers().clone(),
        })
    }

    /// The request for the page after `token`. The path and query came
    /// from a valid URI and the token is form-encoded, so the URI parses;
    /// should it not, `None`: the page is not asked for ahead, and the
    /// watcher asks for it as it would have.
    fn next(&self, token: &str) -> Option<Request<Body>> {
        let continued: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("continue", token)
            .finish();
        let separator = if self.list.contains('?') { '&' } else { '?' };
        let uri = format!("{}{separator}{continued}", self.list);
        let mut request = Request::new(Body::empty());
        *request.uri_mut() = uri.parse().ok()?;
        *request.headers_mut() = self.headers.clone();
        Some(request)
    }
}

/// The `metadata.continue` of a list's JSON, read without decoding its
/// items when the metadata comes first (as the API server writes it).
fn continue_token(body: &[u8]) -> Option<String> {
    let mut token = None;
    let mut de = serde_json::Deserializer::from_slice(body);
    // Stops with an error once the metadata is read: the items are not
    // wanted. A body that is not a list object has no token either way.
    let _ = de.deserialize_map(ListHead { token: &mut token });
    token.filter(|t| !t.is_empty())
}

/// Reads a list object's keys up to `metadata` and its `continue`.
struct ListHead<'a> {
    token: &'a mut Option<String>,
}

/// The error [`ListHead`] stops the reading with once it has the metadata.
const HEAD_READ: &str = "list metadata read";

impl<'de> Visitor<'de> for ListHead<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "metadata" {
                let meta: ListMeta = map.next_value()?;
                *self.token = meta.continue_;
                return Err(de::Error::custom(HEAD_READ));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

#[derive(serde::Deserialize)]
struct ListMeta {
    #[serde(rename = "continue", default)]
    continue_: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(uri: &str) -> Request<Body> {
        let mut request = Request::new(Body::empty());
        *request.uri_mut() = uri.parse().unwrap();
        request
    }

    #[test]
    fn a_paged_list_is_known_by_its_path_and_query_without_the_token() {
        let first = ListRequest::of(&get(
            "/apis/discovery.k8s.io/v1/endpointslices?&labelSelector=%21a&limit=500",
        ))
        .unwrap();
        assert_eq!(
            first.list,
            "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=%21a&limit=500"
        );
        assert_eq!(first.token, None);
        let next = first.next("7/ns/a b+c=").unwrap();
        assert_eq!(
            next.uri().to_string(),
            "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=%21a&limit=500&continue=7%2Fns%2Fa+b%2Bc%3D"
        );
        let second = ListRequest::of(&next).unwrap();
        assert_eq!(second.list, first.list);
        assert_eq!(second.token.as_deref(), Some("7/ns/a b+c="));
    }

    #[test]
    fn watches_unpaged_lists_and_writes_are_not_pages() {
        assert_eq!(
            ListRequest::of(&get("/api/v1/services?watch=true&limit=500")),
            None
        );
        assert_eq!(
            ListRequest::of(&get("/api/v1/services?labelSelector=a")),
            None
        );
        assert_eq!(ListRequest::of(&get("/api/v1/services?limit=0")), None);
        assert_eq!(ListRequest::of(&get("/api/v1/services")), None);
        let mut post = get("/api/v1/services?limit=500");
        *post.method_mut() = Method::POST;
        assert_eq!(ListRequest::of(&post), None);
    }

    /// A client whose server answers a list of two pages (`t1` continues
    /// it), logging each request's query; the first request for the
    /// second page fails without an answer when `drop_first` is set.
    fn two_pages(drop_first: bool) -> (Client, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&log);
        let server = tower::service_fn(move |request: Request<Body>| {
            let query = request.uri().query().unwrap_or_default().to_owned();
            let mut seen = seen.lock().unwrap();
            seen.push(query.clone());
            let dropped = drop_first && seen.iter().filter(|q| q.contains("continue")).count() == 1;
            async move {
                if dropped {
                    return Err(std::io::Error::other("connection lost"));
                }
                let token = if query.contains("continue=t1") {
                    ""
                } else {
                    "t1"
                };
                let body = format!(r#"{{"metadata":{{"continue":"{token}"}},"items":[]}}"#);
                Ok(Response::new(Body::from(body.into_bytes())))
            }
        });
        let client = prefetching(Client::new(server, "default"));
        (client, log)
    }

    async fn body(client: &Client, uri: &str) -> String {
        let response = client.send(get(uri)).await.unwrap();
        let bytes = response.into_body().collect_bytes().await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_next_page_is_asked_for_before_the_caller_asks_and_once() {
        let (client, log) = two_pages(false);
        let first = body(&client, "/api/v1/services?limit=2").await;
        assert!(first.contains(r#""continue":"t1""#), "{first}");
        // The request asked ahead goes out through kube's buffer task.
        for _ in 0..100 {
            if log.lock().unwrap().len() > 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(*log.lock().unwrap(), ["limit=2", "limit=2&continue=t1"]);
        let second = body(&client, "/api/v1/services?limit=2&continue=t1").await;
        assert!(second.contains(r#""continue":"""#), "{second}");
        assert_eq!(
            log.lock().unwrap().len(),
            2,
            "answered by the page asked ahead"
        );
        // The last page asks for nothing more; other requests go through.
        body(&client, "/api/v1/services/web").await;
        assert_eq!(log.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_page_asked_ahead_without_an_answer_is_asked_again() {
        let (client, log) = two_pages(true);
        body(&client, "/api/v1/services?limit=2").await;
        let second = body(&client, "/api/v1/services?limit=2&continue=t1").await;
        assert!(second.contains(r#""continue":"""#), "{second}");
        assert_eq!(
            *log.lock().unwrap(),
            ["limit=2", "limit=2&continue=t1", "limit=2&continue=t1"]
        );
    }

    #[tokio::test]
    async fn only_the_next_page_of_the_same_list_is_taken() {
        let pages = Pages::default();
        let list = |uri: &str| ListRequest::of(&get(uri)).unwrap();
        let ahead = |token: &str| Ahead {
            token: token.to_owned(),
            page: tokio::spawn(std::future::pending()),
        };
        let services = "/api/v1/services?limit=500";
        pages.lock().insert(list(services).list, ahead("9/a"));
        assert!(pages
            .take(&list("/api/v1/services?limit=500&continue=9%2Fa"))
            .is_some());
        assert!(pages.lock().is_empty(), "taken once");
        // Another list of the same collection (a relist, here with another
        // selector) keeps it; a request for another page of the same list
        // drops it: that list was started again.
        pages.lock().insert(list(services).list, ahead("9/a"));
        assert!(pages
            .take(&list(
                "/api/v1/services?limit=500&labelSelector=x&continue=9%2Fa"
            ))
            .is_none());
        assert_eq!(pages.lock().len(), 1);
        assert!(pages.take(&list(services)).is_none());
        assert!(pages.lock().is_empty(), "a first page drops it");
        pages.lock().insert(list(services).list, ahead("9/a"));
        assert!(pages
            .take(&list("/api/v1/services?limit=500&continue=9%2Fb"))
            .is_none());
        assert!(pages.lock().is_empty(), "another token drops it");
    }

    #[test]
    fn the_token_is_read_from_the_metadata_before_the_items() {
        let list = br#"{"kind":"ServiceList","apiVersion":"v1","metadata":{"resourceVersion":"9","continue":"9/default/web"},"items":[{"not":"#;
        assert_eq!(continue_token(list).as_deref(), Some("9/default/web"));
        let after = br#"{"items":[{"metadata":{"continue":"no"}}],"metadata":{"continue":"yes"}}"#;
        assert_eq!(continue_token(after).as_deref(), Some("yes"));
        let last = br#"{"metadata":{"resourceVersion":"9","continue":""},"items":[]}"#;
        assert_eq!(continue_token(last), None);
        assert_eq!(continue_token(br#"{"metadata":{}}"#), None);
        assert_eq!(continue_token(b"not json"), None);
        assert_eq!(continue_token(br#"["continue"]"#), None);
    }
}
