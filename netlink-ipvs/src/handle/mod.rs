//! The async handle: builders that end in `execute()`, in the manner of
//! rtnetlink.

mod config;
mod daemon;
mod destination;
mod operation;
mod service;

use std::sync::Arc;

use futures::future::join_all;
use tokio::sync::{mpsc, oneshot};

pub use self::config::{ConfigGetRequest, ConfigHandle};
pub use self::daemon::{DaemonGetRequest, DaemonHandle};
pub use self::destination::{DestinationGetRequest, DestinationHandle, DestinationUpdateRequest};
pub use self::operation::{BatchRequest, Operation, OperationRequest, PreparedBatch};
pub use self::service::{ServiceGetRequest, ServiceHandle, ServiceUpdateRequest};

use crate::connection::{self, serialize, ConnectionStats, Counters, Job, QueryReply};
use crate::destination::Destination;
use crate::error::{Error, Result};
use crate::info::Info;
use crate::message::{IpvsAttr, IpvsCmd, IpvsMessage};
use crate::service::{Service, ServiceAddress};
use crate::Connection;

/// How often a dump is retried when the kernel marks it interrupted
/// (NLM_F_DUMP_INTR: the table changed while it was being dumped).
const DUMP_ATTEMPTS: u32 = 3;

/// Opens a generic netlink socket and resolves the IPVS family once.
/// Spawn the returned [`Connection`]; clone the [`Handle`] freely.
///
/// Fails with [`Error::FamilyNotFound`] when the ip_vs module is not loaded.
pub async fn new_connection() -> Result<(Connection, Handle)> {
    let counters = Arc::new(Counters::default());
    let (connection, family_id, jobs) = connection::open(counters.clone()).await?;
    Ok((
        connection,
        Handle {
            jobs,
            family_id,
            counters,
        },
    ))
}

/// A cheap, cloneable handle to a [`Connection`].
#[derive(Debug, Clone)]
pub struct Handle {
    pub(crate) jobs: mpsc::UnboundedSender<Job>,
    pub(crate) family_id: u16,
    counters: Arc<Counters>,
}

impl Handle {
    /// Virtual services: `ipvsadm -A`, `-E`, `-D`, `-L`.
    pub fn service(&self) -> ServiceHandle {
        ServiceHandle(self.clone())
    }

    /// Real servers: `ipvsadm -a`, `-e`, `-d`.
    pub fn destination(&self) -> DestinationHandle {
        DestinationHandle(self.clone())
    }

    /// Timeouts: `ipvsadm --set`, `-L --timeout`.
    pub fn config(&self) -> ConfigHandle {
        ConfigHandle(self.clone())
    }

    /// Sync daemons: `ipvsadm --start-daemon`, `--stop-daemon`, `-L --daemon`.
    pub fn daemon(&self) -> DaemonHandle {
        DaemonHandle(self.clone())
    }

    /// The IPVS version and connection table size (first line of `ipvsadm -Ln`).
    pub fn info(&self) -> InfoRequest {
        InfoRequest(self.clone())
    }

    /// Zeroes the counters of one service, or of every service when `None`
    /// (`ipvsadm -Z`).
    pub fn zero(&self, service: Option<ServiceAddress>) -> OperationRequest {
        OperationRequest::new(self.clone(), Operation::Zero(service))
    }

    /// Deletes every service and real server (`ipvsadm -C`).
    pub fn flush(&self) -> OperationRequest {
        OperationRequest::new(self.clone(), Operation::Flush)
    }

    /// Applies many operations pipelined, one result per operation in order.
    pub fn batch(&self, operations: Vec<Operation>) -> BatchRequest {
        self.prepared(PreparedBatch::new(operations))
    }

    /// Applies a batch serialized beforehand ([`PreparedBatch::new`]), as
    /// [`Handle::batch`] would its operations.
    pub fn prepared(&self, batch: PreparedBatch) -> BatchRequest {
        BatchRequest::new(self.clone(), batch)
    }

    /// Every service with its real servers (`ipvsadm -Ln`).
    pub fn dump(&self) -> DumpRequest {
        DumpRequest(self.clone())
    }

    /// The connection's socket traffic so far: `sendmsg` calls, messages,
    /// receives. Shared by every clone of the handle.
    pub fn stats(&self) -> ConnectionStats {
        self.counters.snapshot()
    }

    /// The generic netlink family id the kernel gave IPVS.
    pub fn family_id(&self) -> u16 {
        self.family_id
    }

    async fn query(
        &self,
        message: &IpvsMessage,
        dump: bool,
    ) -> Option<Result<QueryReply, connection::Failure>> {
        let (reply, receive) = oneshot::channel();
        let job = Job::Query {
            message: serialize(self.family_id, message),
            dump,
            reply,
        };
        self.jobs.send(job).ok()?;
        receive.await.ok()
    }

    /// Dumps `request`, retrying when the kernel reports the dump interrupted.
    /// The messages are parsed as [`Replies::messages`] reads them.
    pub(crate) async fn dump_messages(
        &self,
        request: IpvsMessage,
        object: impl Fn() -> String,
    ) -> Result<Replies> {
        for _ in 0..DUMP_ATTEMPTS {
            let reply = self
                .query(&request, true)
                .await
                .ok_or(Error::ConnectionClosed)?
                .map_err(|failure| failure.into_error(request.cmd, &object))?;
            if !reply.interrupted {
                return Ok(Replies {
                    reply,
                    family_id: self.family_id,
                    cmd: request.cmd,
                });
            }
            tracing::debug!(cmd = %request.cmd, "dump interrupted by a concurrent change, retrying");
        }
        Err(Error::DumpInterrupted {
            cmd: request.cmd,
            attempts: DUMP_ATTEMPTS,
        })
    }

    /// Sends an acknowledged GET and returns its reply messages.
    pub(crate) async fn get(
        &self,
        request: IpvsMessage,
        object: impl Fn() -> String,
    ) -> Result<Vec<IpvsMessage>> {
        let reply = self
            .query(&request, false)
            .await
            .ok_or(Error::ConnectionClosed)?
            .map_err(|failure| failure.into_error(request.cmd, &object))?;
        Replies {
            reply,
            family_id: self.family_id,
            cmd: request.cmd,
        }
        .messages(object)
        .collect()
    }
}

/// The reply messages of one request, kept as the kernel sent them and
/// parsed one at a time as they are read, so that a large dump is never
/// held parsed all at once.
#[derive(Debug)]
pub(crate) struct Replies {
    reply: QueryReply,
    family_id: u16,
    cmd: IpvsCmd,
}

impl Replies {
    /// Each message, parsed as the iterator reaches it; a message that does
    /// not parse is an [`Error::Decode`] that names the command and
    /// `object`.
    pub(crate) fn messages<'a>(
        &'a self,
        object: impl Fn() -> String + 'a,
    ) -> impl Iterator<Item = Result<IpvsMessage>> + 'a {
        self.reply.messages(self.family_id).map(move |parsed| {
            parsed.map_err(|source| Error::Decode {
                what: format!("{} reply for {}", self.cmd, object()),
                source,
            })
        })
    }

    /// The objects `from` finds in the messages' attributes, each message
    /// parsed as the iterator reaches it; no collection per message.
    pub(crate) fn objects<'a, T: 'a>(
        &'a self,
        object: impl Fn() -> String + 'a,
        from: impl Fn(&IpvsAttr) -> Option<Result<T>> + Copy + 'a,
    ) -> impl Iterator<Item = Result<T>> + 'a {
        self.messages(object).flat_map(move |message| {
            let (attrs, error) = match message {
                Ok(message) => (message.attrs, None),
                Err(error) => (Vec::new(), Some(Err(error))),
            };
            error
                .into_iter()
                .chain(attrs.into_iter().filter_map(move |attr| from(&attr)))
        })
    }
}

#[cfg(test)]
impl Handle {
    /// A handle without a connection: enough to build requests in tests.
    pub(crate) fn detached() -> Self {
        let (jobs, _) = mpsc::unbounded_channel();
        Self {
            jobs,
            family_id: 0,
            counters: Arc::new(Counters::default()),
        }
    }
}

/// Reads the IPVS version and table size; ends in [`InfoRequest::execute`].
#[derive(Debug)]
#[must_use = "a request does nothing until executed"]
pub struct InfoRequest(Handle);

impl InfoRequest {
    /// Sends IPVS_CMD_GET_INFO.
    pub async fn execute(self) -> Result<Info> {
        let request = IpvsMessage::new(IpvsCmd::GetInfo, Vec::new());
        let reply = self.0.get(request, || "IPVS".to_owned()).await?;
        let attrs: Vec<_> = reply
            .into_iter()
            .flat_map(|m| m.attrs)
            .filter_map(|attr| match attr {
                IpvsAttr::Info(info) => Some(info),
                _ => None,
            })
            .collect();
        Info::from_attrs(&attrs)
    }
}

/// Every service with its destinations; ends in [`DumpRequest::execute`].
#[derive(Debug)]
#[must_use = "a request does nothing until executed"]
pub struct DumpRequest(Handle);

impl DumpRequest {
    /// Dumps the services, then the destinations of all of them at once
    /// (queued together; the connection runs them back to back). A service
    /// deleted between the two steps is left out.
    pub async fn execute(self) -> Result<Vec<(Service, Vec<Destination>)>> {
        let services = self.0.service().get().execute().await?;
        let destinations = join_all(
            services
                .iter()
                .map(|service| self.0.destination().get(&service.address).execute()),
        )
        .await;
        let mut table = Vec::with_capacity(services.len());
        for (service, destinations) in services.into_iter().zip(destinations) {
            match destinations {
                Ok(destinations) => table.push((service, destinations)),
                Err(err) if err.is_not_found() => {}
                Err(err) => return Err(err),
            }
        }
        Ok(table)
    }
}
