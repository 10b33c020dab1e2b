//! Requests answered by a verdict only, alone or pipelined in a batch.

use std::net::IpAddr;

use tokio::sync::oneshot;

use crate::connection::{serialize, Job};
use crate::daemon::{Daemon, DaemonAttr, DaemonState};
use crate::destination::{display_endpoint, Destination};
use crate::error::{Error, Result};
use crate::handle::Handle;
use crate::message::{IpvsAttr, IpvsCmd, IpvsMessage};
use crate::service::{Service, ServiceAddress};
use crate::Timeouts;

/// One change to the IPVS table. A batch applies many, pipelined, with one
/// result each.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// `ipvsadm -A`: IPVS_CMD_NEW_SERVICE.
    AddService(Service),
    /// `ipvsadm -E`: IPVS_CMD_SET_SERVICE.
    SetService(Service),
    /// `ipvsadm -D`: IPVS_CMD_DEL_SERVICE.
    DelService(ServiceAddress),
    /// `ipvsadm -a`: IPVS_CMD_NEW_DEST.
    AddDestination(ServiceAddress, Destination),
    /// `ipvsadm -e`: IPVS_CMD_SET_DEST.
    SetDestination(ServiceAddress, Destination),
    /// `ipvsadm -d`: IPVS_CMD_DEL_DEST of the real server `addr:port`.
    DelDestination(ServiceAddress, IpAddr, u16),
    /// `ipvsadm -Z`: IPVS_CMD_ZERO of one service, or of all.
    Zero(Option<ServiceAddress>),
    /// `ipvsadm -C`: IPVS_CMD_FLUSH.
    Flush,
    /// `ipvsadm --set`: IPVS_CMD_SET_CONFIG.
    SetConfig(Timeouts),
    /// `ipvsadm --start-daemon`: IPVS_CMD_NEW_DAEMON.
    AddDaemon(Daemon),
    /// `ipvsadm --stop-daemon`: IPVS_CMD_DEL_DAEMON.
    DelDaemon(DaemonState),
}

impl Operation {
    /// The command this operation sends.
    pub fn cmd(&self) -> IpvsCmd {
        match self {
            Self::AddService(_) => IpvsCmd::NewService,
            Self::SetService(_) => IpvsCmd::SetService,
            Self::DelService(_) => IpvsCmd::DelService,
            Self::AddDestination(..) => IpvsCmd::NewDest,
            Self::SetDestination(..) => IpvsCmd::SetDest,
            Self::DelDestination(..) => IpvsCmd::DelDest,
            Self::Zero(_) => IpvsCmd::Zero,
            Self::Flush => IpvsCmd::Flush,
            Self::SetConfig(_) => IpvsCmd::SetConfig,
            Self::AddDaemon(_) => IpvsCmd::NewDaemon,
            Self::DelDaemon(_) => IpvsCmd::DelDaemon,
        }
    }

    /// The request message.
    pub fn to_message(&self) -> IpvsMessage {
        let attrs = match self {
            Self::AddService(service) | Self::SetService(service) => {
                vec![IpvsAttr::Service(service.to_attrs())]
            }
            Self::DelService(address) | Self::Zero(Some(address)) => {
                vec![IpvsAttr::Service(address.to_attrs())]
            }
            Self::AddDestination(address, dest) | Self::SetDestination(address, dest) => vec![
                IpvsAttr::Service(address.to_attrs()),
                IpvsAttr::Destination(dest.to_request_attrs()),
            ],
            Self::DelDestination(address, addr, port) => vec![
                IpvsAttr::Service(address.to_attrs()),
                IpvsAttr::Destination(Destination::key_attrs(*addr, *port)),
            ],
            Self::Zero(None) | Self::Flush => Vec::new(),
            Self::SetConfig(timeouts) => timeouts.to_attrs(),
            Self::AddDaemon(daemon) => vec![IpvsAttr::Daemon(daemon.to_attrs())],
            Self::DelDaemon(state) => vec![IpvsAttr::Daemon(vec![DaemonAttr::State(*state)])],
        };
        IpvsMessage::new(self.cmd(), attrs)
    }

    /// What the operation is about, for error messages: "TCP 10.0.0.1:80",
    /// "TCP 10.0.0.1:80 -> 192.168.1.10:8080".
    pub fn object(&self) -> String {
        match self {
            Self::AddService(service) | Self::SetService(service) => service.address.to_string(),
            Self::DelService(address) | Self::Zero(Some(address)) => address.to_string(),
            Self::AddDestination(address, dest) | Self::SetDestination(address, dest) => {
                format!("{address} -> {}", display_endpoint(dest.addr, dest.port))
            }
            Self::DelDestination(address, addr, port) => {
                format!("{address} -> {}", display_endpoint(*addr, *port))
            }
            Self::Zero(None) | Self::Flush => "all services".to_owned(),
            Self::SetConfig(t) => {
                format!("timeouts tcp {} tcpfin {} udp {}", t.tcp, t.tcp_fin, t.udp)
            }
            Self::AddDaemon(daemon) => format!("{:?} sync daemon", daemon.state),
            Self::DelDaemon(state) => format!("{state:?} sync daemon"),
        }
    }
}

/// A single operation; ends in [`OperationRequest::execute`].
#[derive(Debug)]
#[must_use = "a request does nothing until executed"]
pub struct OperationRequest {
    handle: Handle,
    operation: Operation,
}

impl OperationRequest {
    pub(crate) fn new(handle: Handle, operation: Operation) -> Self {
        Self { handle, operation }
    }

    /// Sends the request and waits for the kernel's verdict.
    pub async fn execute(self) -> Result<()> {
        let mut results = self.handle.batch(vec![self.operation]).execute().await;
        results.pop().unwrap_or(Err(Error::ConnectionClosed))
    }
}

/// Operations already serialized, to be sent later by any [`Handle`]:
/// the work of building their requests can run while the kernel takes the
/// batch before them (see [`Handle::prepared`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedBatch {
    operations: Vec<Operation>,
    /// One request per operation; the generic netlink family id is written
    /// in when the batch is sent, by the handle that sends it.
    messages: Vec<Vec<u8>>,
}

impl PreparedBatch {
    /// Serializes `operations`. Needs no connection.
    pub fn new(operations: Vec<Operation>) -> Self {
        let messages = operations
            .iter()
            .map(|op| serialize(0, &op.to_message()))
            .collect();
        Self {
            operations,
            messages,
        }
    }

    /// The operations, in order.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }
}

/// Many operations, pipelined: coalesced into few `sendmsg` calls, acknowledged
/// once per call. Ends in [`BatchRequest::execute`].
#[derive(Debug)]
#[must_use = "a request does nothing until executed"]
pub struct BatchRequest {
    handle: Handle,
    batch: PreparedBatch,
}

impl BatchRequest {
    pub(crate) fn new(handle: Handle, batch: PreparedBatch) -> Self {
        Self { handle, batch }
    }

    /// Applies the operations in order and returns one result per
    /// operation, in the same order. A failed operation does not stop the
    /// ones after it.
    pub async fn execute(self) -> Vec<Result<()>> {
        let PreparedBatch {
            operations,
            mut messages,
        } = self.batch;
        for message in &mut messages {
            set_family(message, self.handle.family_id);
        }
        let (reply, receive) = oneshot::channel();
        if self
            .handle
            .jobs
            .send(Job::Batch { messages, reply })
            .is_err()
        {
            return operations
                .iter()
                .map(|_| Err(Error::ConnectionClosed))
                .collect();
        }
        let Ok(outcomes) = receive.await else {
            return operations
                .iter()
                .map(|_| Err(Error::ConnectionClosed))
                .collect();
        };
        outcomes
            .into_iter()
            .zip(&operations)
            .map(|(outcome, op)| {
                outcome.map_err(|failure| failure.into_error(op.cmd(), || op.object()))
            })
            .collect()
    }
}

/// Writes `family_id` as the netlink message type of a serialized request.
fn set_family(message: &mut [u8], family_id: u16) {
    if let Some(kind) = message.get_mut(4..6) {
        kind.copy_from_slice(&family_id.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Protocol, Scheduler};

    #[test]
    fn a_prepared_request_is_the_request_once_its_family_is_written_in() {
        let address = ServiceAddress::Inet {
            addr: "10.96.0.1".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        };
        let operations = vec![
            Operation::AddService(Service::new(
                "10.96.0.1".parse().unwrap(),
                Protocol::Tcp,
                80,
                Scheduler::RoundRobin,
            )),
            Operation::AddDestination(
                address.clone(),
                Destination::new("10.128.0.1".parse().unwrap(), 8080),
            ),
            Operation::DelDestination(address.clone(), "fd00::1".parse().unwrap(), 8080),
            Operation::DelService(address),
            Operation::Flush,
        ];
        let family_id = 0x1f2e;
        let batch = PreparedBatch::new(operations.clone());
        assert_eq!(batch.operations(), &operations[..]);
        for (op, mut message) in operations.iter().zip(batch.messages) {
            set_family(&mut message, family_id);
            assert_eq!(message, serialize(family_id, &op.to_message()), "{op:?}");
        }
    }
}
