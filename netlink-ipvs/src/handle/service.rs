//! `handle.service()`: the equivalent of `ipvsadm -A/-E/-D/-L`.

use crate::error::Result;
use crate::handle::{Handle, OperationRequest};
use crate::message::{IpvsAttr, IpvsCmd, IpvsMessage};
use crate::service::{Service, ServiceAddress};
use crate::Operation;

/// Virtual services.
#[derive(Debug, Clone)]
pub struct ServiceHandle(pub(crate) Handle);

impl ServiceHandle {
    /// Adds a service (`ipvsadm -A`). Fails with [`Error::is_exists`](crate::Error::is_exists)
    /// when it is there.
    pub fn add(&self, service: Service) -> OperationRequest {
        OperationRequest::new(self.0.clone(), Operation::AddService(service))
    }

    /// Edits a service's scheduler, flags, timeout and netmask (`ipvsadm -E`).
    pub fn set(&self, service: Service) -> OperationRequest {
        OperationRequest::new(self.0.clone(), Operation::SetService(service))
    }

    /// Deletes a service and its destinations (`ipvsadm -D`). Fails with
    /// [`Error::is_not_found`](crate::Error::is_not_found) when it is gone.
    pub fn del(&self, address: ServiceAddress) -> OperationRequest {
        OperationRequest::new(self.0.clone(), Operation::DelService(address))
    }

    /// Lists every service (`ipvsadm -Ln` without the real servers).
    pub fn get(&self) -> ServiceGetRequest {
        ServiceGetRequest(self.0.clone())
    }
}

/// A dump of every service; ends in [`ServiceGetRequest::execute`].
#[derive(Debug)]
#[must_use = "a request does nothing until executed"]
pub struct ServiceGetRequest(Handle);

impl ServiceGetRequest {
    /// Dumps the services.
    pub async fn execute(self) -> Result<Vec<Service>> {
        let request = IpvsMessage::new(IpvsCmd::GetService, Vec::new());
        let reply = self
            .0
            .dump_messages(request, || "all services".to_owned())
            .await?;
        reply
            .iter()
            .flat_map(|message| &message.attrs)
            .filter_map(|attr| match attr {
                IpvsAttr::Service(attrs) => Some(Service::from_attrs(attrs)),
                _ => None,
            })
            .collect()
    }
}
