//! The `healthCheckNodePort` servers: for every LoadBalancer with
//! externalTrafficPolicy Local, every node answers HTTP on the service's
//! health-check port, so that the load balancer sends traffic only to nodes
//! that have an endpoint of it.
//!
//! The answer follows upstream `pkg/proxy/healthcheck/service_health.go`:
//! any path and method gets 200 while this node has a ready endpoint of the
//! service and the proxier is healthy, 503 otherwise, with the same JSON
//! body and headers (`X-Load-Balancing-Endpoint-Weight` is the count of
//! local endpoints). The proxier's health is `/livez`'s: the node being
//! drained fails `/healthz`, not these.
//!
//! Servers open and close as services come and go, and a changed count is
//! a store into the running server: the work is O(changes). A port that
//! cannot be bound is that service's error alone, retried at the next full
//! sync or when the service changes.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::desired::ServiceName;
use crate::metrics::Metrics;
use crate::translate::{HealthCheck, NodeFacts};

/// The header upstream sends for load balancers that weigh nodes by it.
const WEIGHT_HEADER: &str = "x-load-balancing-endpoint-weight";

/// A health-check port that could not be opened, for one service.
#[derive(Debug, thiserror::Error)]
#[error("Service {service}: spec.healthCheckNodePort: cannot listen on port {port} ({address}): {error}; retrying at the next full sync")]
pub struct BindError {
    pub service: ServiceName,
    /// `spec.healthCheckNodePort`.
    pub port: u16,
    /// The address that failed (the service's other addresses are closed
    /// again, so that a retry starts clean).
    pub address: SocketAddr,
    pub error: io::Error,
}

/// The addresses health-check servers listen on, as upstream chooses them:
/// every address when `--nodeport-addresses` is not set (`restricted`
/// false), else the node's NodePort addresses. The wildcard is `::` on a
/// node that runs IPv6 (the kernel's default dual-stack socket serves IPv4
/// on it too), `0.0.0.0` otherwise.
pub fn listen_addresses(restricted: bool, node: &NodeFacts) -> Vec<IpAddr> {
    if restricted {
        node.node_addresses.clone()
    } else if node.ipv6 {
        vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)]
    } else {
        vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
    }
}

/// The running health-check servers, one per service that asks for one.
#[derive(Debug)]
pub struct ServiceHealthServers {
    /// Where each server listens (see [`listen_addresses`]).
    addresses: Vec<IpAddr>,
    /// Read at every request for `serviceProxyHealthy`.
    metrics: Metrics,
    /// `--ipvs-sync-period`, which the proxier's health is judged by.
    sync_period: Duration,
    servers: HashMap<ServiceName, Server>,
    /// Services whose port could not be bound, with what they asked for.
    failed: HashMap<ServiceName, HealthCheck>,
    /// Listening sockets opened so far.
    binds: usize,
}

/// One service's server: a listener per address and the count they serve.
#[derive(Debug)]
struct Server {
    port: u16,
    local_endpoints: Arc<AtomicUsize>,
    #[expect(
        dead_code,
        reason = "held for its Drop, which closes the port when the server goes"
    )]
    listeners: Vec<Listener>,
}

/// One listening socket and the task that accepts on it.
#[derive(Debug)]
struct Listener {
    socket: Arc<TcpListener>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    /// Closes the port at once, not whenever the aborted task is dropped:
    /// a shut-down listener refuses connections, and its port can be bound
    /// again straight away (by the same service on another address, or by
    /// another service in the same batch).
    fn drop(&mut self) {
        // The socket is valid: `self.socket` holds it open.
        let _ =
            nix::sys::socket::shutdown(self.socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        self.task.abort();
    }
}

impl ServiceHealthServers {
    /// No servers yet; each will listen on `addresses`, and report the
    /// proxier's health from `metrics` judged against `sync_period`.
    pub fn new(addresses: Vec<IpAddr>, metrics: Metrics, sync_period: Duration) -> Self {
        ServiceHealthServers {
            addresses,
            metrics,
            sync_period,
            servers: HashMap::new(),
            failed: HashMap::new(),
            binds: 0,
        }
    }

    /// Puts the service's fresh translation in force: opens its server if
    /// the check is new or moved to another port, closes it if the check is
    /// gone, and otherwise only updates the count it serves.
    ///
    /// Must run inside a tokio runtime, which serves the connections.
    pub fn set(
        &mut self,
        name: &ServiceName,
        check: Option<&HealthCheck>,
    ) -> Result<(), BindError> {
        let Some(check) = check else {
            self.failed.remove(name);
            if let Some(server) = self.servers.remove(name) {
                tracing::info!(service = %name, port = server.port, "closing health check");
            }
            return Ok(());
        };
        if let Some(server) = self.servers.get(name) {
            if server.port == check.port {
                server
                    .local_endpoints
                    .store(check.local_endpoints, Ordering::Relaxed);
                return Ok(());
            }
        }
        if let Some(old) = self.servers.remove(name) {
            tracing::info!(service = %name, port = old.port, "closing health check (port changed)");
        }
        match self.open(name, check) {
            Ok(server) => {
                tracing::info!(service = %name, port = check.port, "opened health check");
                self.failed.remove(name);
                self.servers.insert(name.clone(), server);
                Ok(())
            }
            Err(error) => {
                self.failed.insert(name.clone(), *check);
                Err(error)
            }
        }
    }

    /// Tries again every port that could not be bound; the full sync calls
    /// it. Returns the ports that still cannot be.
    pub fn retry_failed(&mut self) -> Vec<BindError> {
        let failed: Vec<(ServiceName, HealthCheck)> = self.failed.drain().collect();
        failed
            .into_iter()
            .filter_map(|(name, check)| self.set(&name, Some(&check)).err())
            .collect()
    }

    /// The port the service's server listens on, if it has one running.
    pub fn port(&self, name: &ServiceName) -> Option<u16> {
        self.servers.get(name).map(|s| s.port)
    }

    /// The listening sockets opened so far (a count update opens none).
    pub fn binds(&self) -> usize {
        self.binds
    }

    /// Listens on every address at the check's port; on any failure closes
    /// what was opened and names the address that failed.
    fn open(&mut self, name: &ServiceName, check: &HealthCheck) -> Result<Server, BindError> {
        let local_endpoints = Arc::new(AtomicUsize::new(check.local_endpoints));
        let mut listeners = Vec::with_capacity(self.addresses.len());
        for &ip in &self.addresses {
            let address = SocketAddr::new(ip, check.port);
            let socket = bind(address).map_err(|error| BindError {
                service: name.clone(),
                port: check.port,
                address,
                error,
            })?;
            self.binds += 1;
            let socket = Arc::new(socket);
            let task = tokio::spawn(accept_loop(
                socket.clone(),
                Answer {
                    service: name.clone(),
                    local_endpoints: local_endpoints.clone(),
                    metrics: self.metrics.clone(),
                    sync_period: self.sync_period,
                },
            ));
            listeners.push(Listener { socket, task });
        }
        Ok(Server {
            port: check.port,
            local_endpoints,
            listeners,
        })
    }
}

/// A listening socket on `address`, bound at once so that the error is the
/// caller's (std sets SO_REUSEADDR, as tokio does).
fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    let socket = std::net::TcpListener::bind(address)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket)
}

/// What one server needs to answer a request.
#[derive(Clone, Debug)]
struct Answer {
    service: ServiceName,
    local_endpoints: Arc<AtomicUsize>,
    metrics: Metrics,
    sync_period: Duration,
}

impl Answer {
    fn respond(&self) -> Response<Full<Bytes>> {
        let count = self.local_endpoints.load(Ordering::Relaxed);
        let proxy_healthy = self.metrics.liveness(self.sync_period).healthy;
        respond(&self.service, count, proxy_healthy)
    }
}

/// Serves `answer` until aborted, or until `Listener::drop` shuts the
/// socket down.
async fn accept_loop(listener: Arc<TcpListener>, answer: Answer) {
    let what = format!("the health check of {}", answer.service);
    crate::metrics::serve_http(&listener, move |_| answer.respond(), &what).await;
}

/// Upstream's answer: 200 when the node has a ready endpoint and the
/// proxier is healthy, 503 otherwise.
fn respond(
    service: &ServiceName,
    local_endpoints: usize,
    proxy_healthy: bool,
) -> Response<Full<Bytes>> {
    let status = if local_endpoints != 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = Response::new(Full::new(Bytes::from(body(
        service,
        local_endpoints,
        proxy_healthy,
    ))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(WEIGHT_HEADER, HeaderValue::from(local_endpoints));
    response
}

/// Upstream's body byte for byte: tab-indented, no final newline.
fn body(service: &ServiceName, local_endpoints: usize, proxy_healthy: bool) -> String {
    // Names are DNS labels; quoting them as JSON keeps the body valid anyway.
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        quote(&service.namespace),
        quote(&service.name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::{SystemTime, UNIX_EPOCH};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PERIOD: Duration = Duration::from_secs(30);
    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// One HTTP answer: status, headers (names lower-cased) and body.
    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// A port free on 127.0.0.1 a moment ago.
    fn free_port() -> u16 {
        let socket = std::net::TcpListener::bind((LOOPBACK, 0)).unwrap();
        socket.local_addr().unwrap().port()
    }

    async fn get(port: u16, path: &str) -> io::Result<Reply> {
        let mut stream = tokio::net::TcpStream::connect((LOOPBACK, port)).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await?;
        let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
        let mut lines = head.lines();
        let status = lines.next().unwrap()[9..12].parse().unwrap();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_ascii_lowercase(), v.to_owned())
            })
            .collect();
        Ok(Reply {
            status,
            headers,
            body: body.to_owned(),
        })
    }

    fn web() -> ServiceName {
        ServiceName::new("default", "web")
    }

    fn check(port: u16, local_endpoints: usize) -> HealthCheck {
        HealthCheck {
            port,
            local_endpoints,
        }
    }

    fn servers(metrics: Metrics) -> ServiceHealthServers {
        ServiceHealthServers::new(vec![LOOPBACK], metrics, PERIOD)
    }

    fn expected_body(count: usize, healthy: bool) -> String {
        format!(
            "{{\n\t\"service\": {{\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": {healthy}\n}}"
        )
    }

    #[tokio::test]
    async fn local_endpoints_answer_200_with_upstreams_body_and_headers() {
        let mut servers = servers(Metrics::new());
        let port = free_port();
        servers.set(&web(), Some(&check(port, 2))).unwrap();
        // Upstream answers whatever the path.
        for path in ["/", "/healthz"] {
            let reply = get(port, path).await.unwrap();
            assert_eq!(reply.status, 200, "{path}");
            assert_eq!(reply.body, expected_body(2, true), "{path}");
            assert_eq!(reply.header("content-type"), Some("application/json"));
            assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
            assert_eq!(reply.header("x-load-balancing-endpoint-weight"), Some("2"));
        }
        let parsed: serde_json::Value = serde_json::from_str(&expected_body(2, true)).unwrap();
        assert_eq!(parsed["service"]["name"], "web", "the body is JSON");
    }

    #[tokio::test]
    async fn no_local_endpoint_answers_503() {
        let mut servers = servers(Metrics::new());
        let port = free_port();
        servers.set(&web(), Some(&check(port, 0))).unwrap();
        let reply = get(port, "/").await.unwrap();
        assert_eq!(reply.status, 503);
        assert_eq!(reply.body, expected_body(0, true));
        assert_eq!(reply.header("x-load-balancing-endpoint-weight"), Some("0"));
    }

    #[tokio::test]
    async fn an_unhealthy_proxier_answers_503_despite_local_endpoints() {
        let now = Arc::new(Mutex::new(UNIX_EPOCH + Duration::from_secs(1_000_000)));
        let clock = now.clone();
        let metrics = Metrics::with_clock(move || *clock.lock().unwrap());
        let mut servers = servers(metrics.clone());
        let port = free_port();
        servers.set(&web(), Some(&check(port, 1))).unwrap();
        assert_eq!(get(port, "/").await.unwrap().status, 200);

        // A change queued and not synced for twice the sync period.
        metrics.mark_pending();
        let later: SystemTime = *now.lock().unwrap() + PERIOD * 2;
        *now.lock().unwrap() = later;
        let reply = get(port, "/").await.unwrap();
        assert_eq!(reply.status, 503);
        assert_eq!(reply.body, expected_body(1, false));
    }

    #[tokio::test]
    async fn a_count_change_updates_the_answer_without_rebinding() {
        let mut servers = servers(Metrics::new());
        let port = free_port();
        servers.set(&web(), Some(&check(port, 0))).unwrap();
        assert_eq!(get(port, "/").await.unwrap().status, 503);
        servers.set(&web(), Some(&check(port, 3))).unwrap();
        let reply = get(port, "/").await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, expected_body(3, true));
        assert_eq!(
            servers.binds(),
            1,
            "the count is stored, the port not bound again"
        );
    }

    #[tokio::test]
    async fn a_removed_service_closes_its_port_and_a_moved_one_follows() {
        let mut servers = servers(Metrics::new());
        let (first, second) = (free_port(), free_port());
        servers.set(&web(), Some(&check(first, 1))).unwrap();
        assert_eq!(get(first, "/").await.unwrap().status, 200);

        servers.set(&web(), Some(&check(second, 1))).unwrap();
        let refused = get(first, "/").await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(get(second, "/").await.unwrap().status, 200);
        assert_eq!(servers.port(&web()), Some(second));

        servers.set(&web(), None).unwrap();
        let refused = get(second, "/").await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(servers.port(&web()), None);
        // The port is free again at once (for another service, say).
        servers.set(&web(), Some(&check(second, 1))).unwrap();
        assert_eq!(get(second, "/").await.unwrap().status, 200);
    }

    #[tokio::test]
    async fn a_taken_port_fails_its_service_alone_and_is_retried() {
        let mut servers = servers(Metrics::new());
        let taken = std::net::TcpListener::bind((LOOPBACK, 0)).unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let db = ServiceName::new("shop", "db");

        let error = servers
            .set(&db, Some(&check(taken_port, 1)))
            .expect_err("the port is taken");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "Service shop/db: spec.healthCheckNodePort: cannot listen on port {taken_port} (127.0.0.1:{taken_port}): "
            )),
            "{message}"
        );
        assert_eq!(error.error.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(servers.port(&db), None);

        let port = free_port();
        servers.set(&web(), Some(&check(port, 1))).unwrap();
        assert_eq!(get(port, "/").await.unwrap().status, 200);

        // Still taken at the next full sync; free at the one after.
        assert_eq!(servers.retry_failed().len(), 1);
        drop(taken);
        assert!(servers.retry_failed().is_empty());
        assert_eq!(servers.port(&db), Some(taken_port));
        let reply = get(taken_port, "/").await.unwrap();
        assert_eq!(reply.status, 200);
        assert!(
            reply.body.contains("\"namespace\": \"shop\""),
            "{}",
            reply.body
        );
        assert!(servers.retry_failed().is_empty(), "nothing left to retry");
    }

    #[test]
    fn listen_addresses_are_the_node_port_addresses_or_every_address() {
        let node = |ipv6: bool| NodeFacts {
            name: "n1".into(),
            node_addresses: vec!["192.0.2.10".parse().unwrap()],
            local_addresses: vec![],
            ipv4: true,
            ipv6,
        };
        assert_eq!(
            listen_addresses(true, &node(false)),
            vec!["192.0.2.10".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            listen_addresses(false, &node(false)),
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
        );
        assert_eq!(
            listen_addresses(false, &node(true)),
            vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)]
        );
    }
}
