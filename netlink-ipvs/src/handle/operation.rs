//! Requests answered by a verdict only, alone or pipelined in a batch.

use std::net::IpAddr;

use tokio::sync::oneshot;

use crate::connection::Job;
use crate::daemon::{Daemon, DaemonAttr, DaemonState};
use crate::destination::{display_endpoint, Destination};
use crate::error::{Error, Result};
use crate::handle::Handle;
use crate::message::{IpvsAttr, IpvsCmd, IpvsMessage, IPVS_CMD_ATTR_DEST, IPVS_CMD_ATTR_SERVICE};
use crate::request::RequestWriter;
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

    /// The request as the connection sends it, with the netlink header's
    /// family id, flags, sequence number and port left zero: the bytes of
    /// [`Operation::to_message`] emitted, written in one pass (see
    /// `request.rs`).
    pub(crate) fn to_request(&self) -> Vec<u8> {
        // The largest is an IPv6 destination request: 20 bytes of headers,
        // a service nest of 52 and a destination nest of 104.
        let mut request = RequestWriter::new(self.cmd(), 176);
        match self {
            Self::AddService(service) | Self::SetService(service) => {
                request.nest(IPVS_CMD_ATTR_SERVICE, |r| service.push_attrs(r));
            }
            Self::DelService(address) | Self::Zero(Some(address)) => {
                request.nest(IPVS_CMD_ATTR_SERVICE, |r| address.push_attrs(r));
            }
            Self::AddDestination(address, dest) | Self::SetDestination(address, dest) => {
                request.nest(IPVS_CMD_ATTR_SERVICE, |r| address.push_attrs(r));
                request.nest(IPVS_CMD_ATTR_DEST, |r| dest.push_request_attrs(r));
            }
            Self::DelDestination(address, addr, port) => {
                request.nest(IPVS_CMD_ATTR_SERVICE, |r| address.push_attrs(r));
                request.nest(IPVS_CMD_ATTR_DEST, |r| {
                    Destination::push_key_attrs(*addr, *port, r)
                });
            }
            // Sent once in a while: the typed message's attributes.
            _ => {
                for attr in &self.to_message().attrs {
                    request.attr(attr);
                }
            }
        }
        request.finish()
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
        let messages = operations.iter().map(Operation::to_request).collect();
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
    use crate::connection::serialize;
    use crate::destination::{ForwardingMethod, Tunnel, TunnelFlags, TunnelType};
    use crate::{AddressFamily, Protocol, Scheduler, ServiceFlags, Stats, Stats64};

    /// Every operation, with the fields that change a request's bytes set
    /// both ways: families, firewall marks, persistence engines, counters
    /// (as a dump would fill them), tunnels, thresholds, a scheduler of
    /// another name.
    fn every_operation() -> Vec<Operation> {
        let v4 = ServiceAddress::Inet {
            addr: "10.96.0.1".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        };
        let v6 = ServiceAddress::Inet {
            addr: "fd00:96::1".parse().unwrap(),
            protocol: Protocol::Udp,
            port: 53,
        };
        let fwmark = ServiceAddress::Fwmark {
            family: AddressFamily::Inet6,
            mark: 0x4000,
        };
        let plain = Service::new(
            "10.96.0.1".parse().unwrap(),
            Protocol::Tcp,
            80,
            Scheduler::RoundRobin,
        );
        let mut persistent = Service::with_address(v6.clone(), Scheduler::from("mh"));
        persistent = persistent.persistent(10_800);
        persistent.flags |= ServiceFlags::SH_PORT;
        persistent.netmask = 64;
        persistent.pe_name = Some("sip".to_owned());
        let mut counted = Service::with_address(fwmark.clone(), Scheduler::SourceHashing);
        counted.stats = Some(Stats {
            conns: 7,
            ..Stats::default()
        });
        counted.stats64 = Some(Stats64 {
            in_bytes: 1 << 40,
            ..Stats64::default()
        });
        let masq = Destination::new("10.128.0.1".parse().unwrap(), 8080);
        let mut tunnelled = Destination::new("fd00:128::9".parse().unwrap(), 0)
            .forwarding(ForwardingMethod::Tunnel)
            .weight(0);
        tunnelled.upper_threshold = 100;
        tunnelled.lower_threshold = 10;
        tunnelled.tunnel = Some(Tunnel {
            tunnel_type: TunnelType::Gue,
            port: 6080,
            flags: TunnelFlags::CSUM | TunnelFlags::REMCSUM,
        });
        vec![
            Operation::AddService(plain.clone()),
            Operation::AddService(persistent.clone()),
            Operation::SetService(counted),
            Operation::SetService(persistent),
            Operation::DelService(v4.clone()),
            Operation::DelService(fwmark.clone()),
            Operation::AddDestination(v4.clone(), masq.clone()),
            Operation::AddDestination(v6.clone(), tunnelled.clone()),
            Operation::SetDestination(fwmark.clone(), tunnelled),
            Operation::SetDestination(v4.clone(), masq),
            Operation::DelDestination(v4.clone(), "10.128.0.1".parse().unwrap(), 8080),
            Operation::DelDestination(v6, "fd00::1".parse().unwrap(), 8080),
            Operation::Zero(Some(fwmark)),
            Operation::Zero(None),
            Operation::Flush,
            Operation::SetConfig(Timeouts {
                tcp: 900,
                tcp_fin: 120,
                udp: 300,
            }),
            Operation::AddDaemon(Daemon::new(DaemonState::Master, "eth0", 9)),
            Operation::DelDaemon(DaemonState::Backup),
        ]
    }

    #[test]
    fn a_request_written_in_one_pass_is_the_typed_message_emitted() {
        for op in every_operation() {
            assert_eq!(op.to_request(), serialize(0, &op.to_message()), "{op:?}");
        }
    }

    #[test]
    fn a_prepared_request_is_the_request_once_its_family_is_written_in() {
        let operations = every_operation();
        let family_id = 0x1f2e;
        let batch = PreparedBatch::new(operations.clone());
        assert_eq!(batch.operations(), &operations[..]);
        for (op, mut message) in operations.iter().zip(batch.messages) {
            set_family(&mut message, family_id);
            assert_eq!(message, serialize(family_id, &op.to_message()), "{op:?}");
        }
    }
}
