//! `handle.destination()`: the equivalent of `ipvsadm -a/-e/-d`.

use std::net::IpAddr;

use crate::destination::Destination;
use crate::error::Result;
use crate::handle::{Handle, OperationRequest};
use crate::message::{IpvsAttr, IpvsCmd, IpvsMessage};
use crate::service::ServiceAddress;
use crate::Operation;

/// Destinations (real servers) of a service.
#[derive(Debug, Clone)]
pub struct DestinationHandle(pub(crate) Handle);

impl DestinationHandle {
    /// Adds a real server to `service` (`ipvsadm -a`).
    pub fn add(&self, service: &ServiceAddress, destination: Destination) -> OperationRequest {
        OperationRequest::new(
            self.0.clone(),
            Operation::AddDestination(service.clone(), destination),
        )
    }

    /// Edits a real server's forwarding, weight and thresholds (`ipvsadm -e`).
    pub fn set(&self, service: &ServiceAddress, destination: Destination) -> OperationRequest {
        OperationRequest::new(
            self.0.clone(),
            Operation::SetDestination(service.clone(), destination),
        )
    }

    /// Removes the real server `addr:port` from `service` (`ipvsadm -d`).
    pub fn del(&self, service: &ServiceAddress, addr: IpAddr, port: u16) -> OperationRequest {
        OperationRequest::new(
            self.0.clone(),
            Operation::DelDestination(service.clone(), addr, port),
        )
    }

    /// Lists the real servers of `service`.
    pub fn get(&self, service: &ServiceAddress) -> DestinationGetRequest {
        DestinationGetRequest {
            handle: self.0.clone(),
            service: service.clone(),
        }
    }
}

/// A dump of one service's destinations; ends in [`DestinationGetRequest::execute`].
#[derive(Debug)]
#[must_use = "a request does nothing until executed"]
pub struct DestinationGetRequest {
    handle: Handle,
    service: ServiceAddress,
}

impl DestinationGetRequest {
    /// Dumps the destinations. The kernel answers a dump of a missing
    /// service with no destinations and no error.
    pub async fn execute(self) -> Result<Vec<Destination>> {
        let request = IpvsMessage::new(
            IpvsCmd::GetDest,
            vec![IpvsAttr::Service(self.service.to_attrs())],
        );
        let service = &self.service;
        let reply = self
            .handle
            .dump_messages(request, || service.to_string())
            .await?;
        reply
            .iter()
            .flat_map(|message| &message.attrs)
            .filter_map(|attr| match attr {
                IpvsAttr::Destination(attrs) => Some(Destination::from_attrs(attrs)),
                _ => None,
            })
            .collect()
    }
}
