//! [`IpvsKernel`] on the real kernel, through netlink-ipvs.

use std::time::Duration;

use futures::future::join_all;
use netlink_ipvs::ConnectionStats;
use netlink_ipvs::{
    Destination, ForwardingMethod, Handle, Operation, PreparedBatch, Protocol as NlProtocol,
    Scheduler, Service, ServiceAddress, ServiceFlags, Timeouts,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{
    IpvsKernel, KernelError, ListedRealServers, ListedVirtualServer, Prepared, TrafficCounters,
};
use crate::desired::{Op, Protocol, RealServer, RealServerKey, VirtualServer, VirtualServerKey};

/// The IPVS table over generic netlink: reads and small batches on a
/// connection that runs on the caller's runtime, large batches on one with
/// a thread of its own.
///
/// The kernel does the work of an IPVS request inside the `sendmsg` that
/// carries it, on the sending thread. A large sync's chunks go to the
/// second connection, so that the kernel's work on one chunk runs on a
/// second core while the reconciler records the answers to the chunk
/// before and works out the next (see `Reconciler::apply_diff`). A small
/// batch, a single change, stays on the first: the hop to another thread
/// and back would only add to its latency. The reconciler has one batch in
/// the kernel at a time, so the two sockets never race each other.
#[derive(Debug)]
pub struct NetlinkIpvs {
    handle: Handle,
    connection: JoinHandle<()>,
    /// Made for the first large batch, and again after it failed.
    bulk: Option<Handle>,
}

/// A batch of this many operations or more goes to the connection with a
/// thread of its own: the first chunk of a large sync has at least this
/// many.
pub const BULK_OPS: usize = crate::reconcile::FIRST_CHUNK;

impl Drop for NetlinkIpvs {
    fn drop(&mut self) {
        self.connection.abort();
        // Dropping `bulk` ends its thread once nothing is pending.
    }
}

impl NetlinkIpvs {
    /// Opens the socket and resolves the IPVS family.
    pub async fn connect() -> Result<Self, KernelError> {
        let (connection, handle) = netlink_ipvs::new_connection().await.map_err(kernel_error)?;
        Ok(NetlinkIpvs {
            handle,
            connection: tokio::spawn(connection),
            bulk: None,
        })
    }

    /// Both connections' socket traffic, added up.
    pub fn stats(&self) -> ConnectionStats {
        let local = self.handle.stats();
        let Some(bulk) = self.bulk.as_ref().map(Handle::stats) else {
            return local;
        };
        ConnectionStats {
            sends: local.sends + bulk.sends,
            messages_sent: local.messages_sent + bulk.messages_sent,
            receives: local.receives + bulk.receives,
            messages_received: local.messages_received + bulk.messages_received,
        }
    }

    /// The connection for large batches, opened on its thread if it is not
    /// yet; `None`, and the batch goes on the first connection, if it cannot
    /// be opened.
    async fn bulk(&mut self) -> Option<Handle> {
        if self.bulk.is_none() {
            match connect_on_own_thread().await {
                Ok(handle) => self.bulk = Some(handle),
                Err(error) => {
                    tracing::warn!(%error, "cannot open the IPVS netlink connection for large batches; sending them on the run loop's");
                    return None;
                }
            }
        }
        self.bulk.clone()
    }

    /// Rebuilds the connection after a socket failure, so that the next
    /// request goes out on a working socket. A failure to reconnect is
    /// logged; the next failed request tries again.
    async fn reconnect_if_lost<T>(&mut self, results: &[Result<T, KernelError>]) {
        if !connection_lost(results) {
            return;
        }
        match Self::connect().await {
            Ok(fresh) => {
                tracing::warn!("the IPVS netlink connection failed; reconnected, and the next sync reads the whole table");
                *self = fresh;
            }
            Err(error) => {
                tracing::error!(%error, "the IPVS netlink connection failed and cannot be rebuilt yet");
            }
        }
    }

    /// The first connection's handle (reads and small batches), for its
    /// counters and for what the trait does not cover. [`NetlinkIpvs::stats`]
    /// counts both connections.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// `--ipvs-tcp-timeout` and friends; zeros leave the kernel's values.
    pub async fn set_timeouts(
        &mut self,
        tcp: Duration,
        tcp_fin: Duration,
        udp: Duration,
    ) -> Result<(), KernelError> {
        if tcp.is_zero() && tcp_fin.is_zero() && udp.is_zero() {
            return Ok(());
        }
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let timeouts = Timeouts {
            tcp: secs(tcp),
            tcp_fin: secs(tcp_fin),
            udp: secs(udp),
        };
        self.handle
            .config()
            .set(timeouts)
            .execute()
            .await
            .map_err(kernel_error)
    }
}

impl IpvsKernel for NetlinkIpvs {
    #[tracing::instrument(skip(self))]
    async fn list_virtual_servers(&mut self) -> Result<Vec<ListedVirtualServer>, KernelError> {
        // Each service is made compact as its message is parsed: the
        // parsed services of a 10,000-service dump took 15 MB at once.
        let mut listed = Vec::new();
        let dumped = self
            .handle
            .service()
            .get()
            .for_each(|service| {
                if let Some(server) = virtual_server(&service) {
                    listed.push(ListedVirtualServer {
                        server,
                        counters: traffic_counters(&service),
                    });
                }
            })
            .await;
        if let Err(error) = dumped.map_err(kernel_error) {
            self.reconnect_if_lost(&[Err::<(), _>(error.clone())]).await;
            return Err(error);
        }
        Ok(listed)
    }

    #[tracing::instrument(skip_all, fields(virtual_servers = keys.len()))]
    async fn list_real_servers(
        &mut self,
        keys: &[VirtualServerKey],
    ) -> Result<Vec<ListedRealServers>, KernelError> {
        // Queued together: the connection runs the dumps back to back.
        let handle = &self.handle;
        let dumps = join_all(keys.iter().map(|key| {
            let address = service_address(key);
            async move { handle.destination().get(&address).execute().await }
        }))
        .await;
        let mut out = Vec::with_capacity(dumps.len());
        let mut failed = None;
        for dump in dumps {
            match dump.map_err(kernel_error) {
                Ok(dests) => out.push(real_servers(&dests)),
                // Deleted since it was listed: it has none.
                Err(KernelError::NotFound) => out.push(ListedRealServers::default()),
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        if let Some(error) = failed {
            self.reconnect_if_lost(&[Err::<(), _>(error.clone())]).await;
            return Err(error);
        }
        Ok(out)
    }

    async fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), KernelError>> {
        self.apply_prepared(ops, Self::prepare(ops)).await
    }

    fn prepare(ops: &[Op]) -> Prepared {
        Prepared(Some(requests(ops)))
    }

    #[tracing::instrument(skip_all, fields(ops = ops.len()))]
    async fn apply_prepared(
        &mut self,
        ops: &[Op],
        prepared: Prepared,
    ) -> Vec<Result<(), KernelError>> {
        if ops.is_empty() {
            return Vec::new();
        }
        let batch = match prepared.0 {
            Some(batch) if batch.operations().len() == ops.len() => batch,
            // Prepared by a layer that does not know netlink, or for other ops.
            _ => requests(ops),
        };
        let bulk = if ops.len() >= BULK_OPS {
            self.bulk().await
        } else {
            None
        };
        let on_bulk = bulk.is_some();
        let handle = bulk.as_ref().unwrap_or(&self.handle);
        let results: Vec<Result<(), KernelError>> = handle
            .prepared(batch)
            .execute()
            .await
            .into_iter()
            .map(|r| r.map_err(kernel_error))
            .collect();
        if on_bulk {
            if connection_lost(&results) {
                tracing::warn!("the IPVS netlink connection for large batches failed; the next large batch opens another");
                self.bulk = None;
            }
        } else {
            self.reconnect_if_lost(&results).await;
        }
        results
    }
}

/// The netlink requests of `ops`, built without a connection.
fn requests(ops: &[Op]) -> PreparedBatch {
    PreparedBatch::new(ops.iter().map(operation).collect())
}

/// Whether any of `results` says the socket failed under them.
fn connection_lost<T>(results: &[Result<T, KernelError>]) -> bool {
    results
        .iter()
        .any(|r| matches!(r, Err(KernelError::ConnectionLost(_))))
}

/// A connection on a thread of its own, with a runtime of its own on which
/// the socket is opened (so that it registers with that runtime's reactor).
/// The thread ends once every handle is gone and nothing is pending.
async fn connect_on_own_thread() -> Result<Handle, KernelError> {
    let (opened, handle) = oneshot::channel();
    std::thread::Builder::new()
        .name("ipvs-netlink".into())
        .spawn(move || serve_connection(opened))
        .map_err(|e| KernelError::Other(format!("cannot start the IPVS netlink thread: {e}")))?;
    handle.await.map_err(|_| {
        KernelError::Other("the IPVS netlink thread ended before it opened its socket".into())
    })?
}

/// The body of [`connect_on_own_thread`]'s thread.
fn serve_connection(opened: oneshot::Sender<Result<Handle, KernelError>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let error = format!("cannot start the IPVS netlink thread's runtime: {e}");
            let _ = opened.send(Err(KernelError::Other(error)));
            return;
        }
    };
    runtime.block_on(async move {
        match netlink_ipvs::new_connection().await {
            Ok((connection, handle)) => {
                // Nobody waiting: the caller is gone, and the handle with
                // the answer, so the connection would end at once.
                if opened.send(Ok(handle)).is_ok() {
                    connection.await;
                }
            }
            Err(error) => {
                let _ = opened.send(Err(kernel_error(error)));
            }
        }
    });
}

fn service_address(key: &VirtualServerKey) -> ServiceAddress {
    ServiceAddress::Inet {
        addr: key.addr,
        protocol: match key.protocol {
            Protocol::Tcp => NlProtocol::Tcp,
            Protocol::Udp => NlProtocol::Udp,
            Protocol::Sctp => NlProtocol::Sctp,
        },
        port: key.port,
    }
}

fn service(vs: &VirtualServer) -> Service {
    let address = service_address(&vs.key);
    let scheduler: Scheduler = vs.scheduler.parse().unwrap_or_else(|e| match e {});
    let service = Service::with_address(address, scheduler);
    match vs.persistence {
        Some(timeout) => service.persistent(timeout),
        None => service,
    }
}

fn destination(rs: &RealServer) -> Destination {
    Destination::new(rs.key.addr, rs.key.port)
        .forwarding(ForwardingMethod::Masquerade)
        .weight(rs.weight)
}

fn operation(op: &Op) -> Operation {
    match op {
        Op::AddVirtualServer(vs) => Operation::AddService(service(vs)),
        Op::UpdateVirtualServer(vs) => Operation::SetService(service(vs)),
        Op::DeleteVirtualServer(key) => Operation::DelService(service_address(key)),
        Op::AddRealServer(key, rs) => {
            Operation::AddDestination(service_address(key), destination(rs))
        }
        Op::UpdateRealServer(key, rs) => {
            Operation::SetDestination(service_address(key), destination(rs))
        }
        Op::DeleteRealServer(key, rs) => {
            Operation::DelDestination(service_address(key), rs.addr, rs.port)
        }
    }
}

/// The proxy's view of a kernel service, or `None` for what it never
/// programs (firewall marks, other protocols).
fn virtual_server(service: &Service) -> Option<VirtualServer> {
    let ServiceAddress::Inet {
        addr,
        protocol,
        port,
    } = &service.address
    else {
        return None;
    };
    let protocol = match protocol {
        NlProtocol::Tcp => Protocol::Tcp,
        NlProtocol::Udp => Protocol::Udp,
        NlProtocol::Sctp => Protocol::Sctp,
        _ => return None,
    };
    let persistent = service.flags.contains(ServiceFlags::PERSISTENT);
    Some(VirtualServer {
        key: VirtualServerKey {
            addr: *addr,
            protocol,
            port: *port,
        },
        scheduler: service.scheduler.as_str().into(),
        persistence: persistent.then_some(service.timeout),
    })
}

/// A destinations dump as the proxy sees it: keys and weights, and the
/// connections of those that have any.
fn real_servers(dests: &[Destination]) -> ListedRealServers {
    let key = |d: &Destination| RealServerKey {
        addr: d.addr,
        port: d.port,
    };
    ListedRealServers {
        real_servers: dests
            .iter()
            .map(|d| RealServer {
                key: key(d),
                weight: d.weight,
            })
            .collect(),
        connections: dests
            .iter()
            .map(|d| (key(d), d.active_conns.saturating_add(d.inactive_conns)))
            .filter(|&(_, count)| count > 0)
            .collect(),
    }
}

/// A dumped service's counters: the 64-bit ones (kernels since 4.1 send
/// them), else the 32-bit ones, else zeros.
fn traffic_counters(service: &Service) -> TrafficCounters {
    if let Some(s) = &service.stats64 {
        return TrafficCounters {
            connections: s.conns,
            packets_in: s.in_packets,
            packets_out: s.out_packets,
            bytes_in: s.in_bytes,
            bytes_out: s.out_bytes,
        };
    }
    service
        .stats
        .as_ref()
        .map_or_else(TrafficCounters::default, |s| TrafficCounters {
            connections: s.conns.into(),
            packets_in: s.in_packets.into(),
            packets_out: s.out_packets.into(),
            bytes_in: s.in_bytes,
            bytes_out: s.out_bytes,
        })
}

fn kernel_error(e: netlink_ipvs::Error) -> KernelError {
    if matches!(
        e,
        netlink_ipvs::Error::ConnectionClosed
            | netlink_ipvs::Error::Io(_)
            | netlink_ipvs::Error::Overrun { .. }
    ) {
        // Replies were lost with the socket or its buffer: the outcome of
        // what was in flight is unknown.
        KernelError::ConnectionLost(e.to_string())
    } else if e.is_exists() {
        KernelError::Exists
    } else if e.is_not_found() {
        KernelError::NotFound
    } else if e.is_unknown_scheduler() {
        // ENOENT from the kernel: not a missing object, but a value this
        // kernel cannot take.
        KernelError::UnknownScheduler(e.to_string())
    } else if e.is_invalid() {
        KernelError::Invalid(e.to_string())
    } else {
        KernelError::Other(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_ipvs::IpvsCmd;

    fn refused(cmd: IpvsCmd, errno: i32) -> KernelError {
        kernel_error(netlink_ipvs::Error::Kernel {
            errno,
            cmd,
            object: "TCP 10.96.0.10:80".into(),
            extack: None,
        })
    }

    #[test]
    fn enoent_is_an_unknown_scheduler_only_when_adding_or_setting_a_service() {
        let cases = [
            (IpvsCmd::NewService, libc::ENOENT, "unknown scheduler"),
            (IpvsCmd::SetService, libc::ENOENT, "unknown scheduler"),
            (IpvsCmd::DelDest, libc::ENOENT, "not found"),
            (IpvsCmd::NewService, libc::EINVAL, "invalid"),
        ];
        for (cmd, errno, want) in cases {
            let got = refused(cmd, errno);
            let kind = match got {
                KernelError::UnknownScheduler(_) => "unknown scheduler",
                KernelError::NotFound => "not found",
                KernelError::Invalid(_) => "invalid",
                _ => "other",
            };
            assert_eq!(kind, want, "{cmd:?} errno {errno}: {got}");
        }
    }
}
