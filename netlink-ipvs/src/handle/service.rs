//! `handle.service()`: the equivalent of `ipvsadm -A/-E/-D/-L`.

use crate::error::Result;
use crate::handle::{Handle, OperationRequest};
use crate::message::{IpvsAttr, IpvsCmd, IpvsMessage};
use crate::service::{Scheduler, Service, ServiceAddress, ServiceFlags};
use crate::Operation;

/// Virtual services.
#[derive(Debug, Clone)]
pub struct ServiceHandle(pub(crate) Handle);

impl ServiceHandle {
    /// Adds a service (`ipvsadm -A`). Fails with [`Error::is_exists`](crate::Error::is_exists)
    /// when it is there, and with
    /// [`Error::is_unknown_scheduler`](crate::Error::is_unknown_scheduler)
    /// when the kernel has no such scheduler or persistence engine.
    pub fn add(&self, service: Service) -> OperationRequest {
        OperationRequest::new(self.0.clone(), Operation::AddService(service))
    }

    /// Edits a service (`ipvsadm -E`): replaces every editable field, i.e.
    /// the scheduler, flags, persistence timeout, netmask and persistence
    /// engine, with those of `service`.
    ///
    /// The kernel has no partial edit, so a field left at its default
    /// resets the service's: a `Service::new(..)` with another scheduler
    /// also ends persistence. To change some fields and keep the others,
    /// use [`ServiceHandle::update`].
    pub fn set(&self, service: Service) -> OperationRequest {
        OperationRequest::new(self.0.clone(), Operation::SetService(service))
    }

    /// Edits the fields set on the returned request and keeps the others as
    /// `current` has them (`ipvsadm -E` repeating the current options).
    /// `current` is the service as [`ServiceHandle::get`] listed it.
    ///
    /// The request sends all of `current` with the changes applied, so a
    /// field someone else changed since `current` was listed is set back.
    pub fn update(&self, current: &Service) -> ServiceUpdateRequest {
        ServiceUpdateRequest {
            handle: self.0.clone(),
            service: Service {
                stats: None,
                stats64: None,
                ..current.clone()
            },
        }
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

/// An edit of some of a service's fields; ends in
/// [`ServiceUpdateRequest::execute`].
#[derive(Debug)]
#[must_use = "a request does nothing until executed"]
pub struct ServiceUpdateRequest {
    handle: Handle,
    service: Service,
}

impl ServiceUpdateRequest {
    /// Sets the scheduler (`-s`).
    pub fn scheduler(mut self, scheduler: Scheduler) -> Self {
        self.service.scheduler = scheduler;
        self
    }

    /// Sets the flags (`-p` sets PERSISTENT, `-o` ONEPACKET, `-b` the
    /// scheduler flags).
    pub fn flags(mut self, flags: ServiceFlags) -> Self {
        self.service.flags = flags;
        self
    }

    /// Sets the persistence timeout in seconds (`-p timeout`).
    pub fn timeout(mut self, timeout: u32) -> Self {
        self.service.timeout = timeout;
        self
    }

    /// Sets the persistence netmask (`-M`), as [`Service::netmask`] holds it.
    pub fn netmask(mut self, netmask: u32) -> Self {
        self.service.netmask = netmask;
        self
    }

    /// Sets the persistence engine (`--pe`), or removes it with `None`.
    pub fn persistence_engine(mut self, pe_name: Option<String>) -> Self {
        self.service.pe_name = pe_name;
        self
    }

    /// The service the request will send.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// The edit as an operation, for [`Handle::batch`].
    pub fn into_operation(self) -> Operation {
        Operation::SetService(self.service)
    }

    /// Sends IPVS_CMD_SET_SERVICE and waits for the kernel's verdict.
    pub async fn execute(self) -> Result<()> {
        let handle = self.handle.clone();
        OperationRequest::new(handle, self.into_operation())
            .execute()
            .await
    }
}

/// A dump of every service; ends in [`ServiceGetRequest::execute`].
#[derive(Debug)]
#[must_use = "a request does nothing until executed"]
pub struct ServiceGetRequest(Handle);

impl ServiceGetRequest {
    /// Dumps the services.
    pub async fn execute(self) -> Result<Vec<Service>> {
        let mut services = Vec::new();
        self.for_each(|service| services.push(service)).await?;
        Ok(services)
    }

    /// Dumps the services and hands each to `f` as its message is parsed:
    /// a caller that keeps less of each than a [`Service`] never holds
    /// them all (10,000 [`Service`]s take 3.8 MB). On an error `f` may
    /// have seen some of them already; what it kept is to be dropped.
    pub async fn for_each(self, mut f: impl FnMut(Service)) -> Result<()> {
        let request = IpvsMessage::new(IpvsCmd::GetService, Vec::new());
        let object = || "all services".to_owned();
        let reply = self.0.dump_messages(request, object).await?;
        for service in reply.objects(object, |attr| match attr {
            IpvsAttr::Service(attrs) => Some(Service::from_attrs(attrs)),
            _ => None,
        }) {
            f(service?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Protocol;
    use crate::service::ServiceAttr;
    use crate::stats::Stats64;

    /// `-t 10.0.0.1:80 -s rr -p 300 --pe sip`, as a dump lists it.
    fn listed() -> Service {
        Service {
            pe_name: Some("sip".into()),
            stats64: Some(Stats64::default()),
            ..Service::new(
                "10.0.0.1".parse().unwrap(),
                Protocol::Tcp,
                80,
                Scheduler::RoundRobin,
            )
            .persistent(300)
        }
    }

    fn sent_attrs(operation: Operation) -> Vec<ServiceAttr> {
        match operation.to_message().attrs.as_slice() {
            [IpvsAttr::Service(attrs)] => attrs.clone(),
            other => panic!("expected one service nest, got {other:?}"),
        }
    }

    #[test]
    fn a_scheduler_change_keeps_persistence() {
        let operation = Handle::detached()
            .service()
            .update(&listed())
            .scheduler(Scheduler::WeightedLeastConnection)
            .into_operation();
        assert_eq!(operation.cmd(), IpvsCmd::SetService);
        let attrs = sent_attrs(operation);
        let expected = Service {
            scheduler: Scheduler::WeightedLeastConnection,
            stats64: None,
            ..listed()
        };
        assert_eq!(attrs, expected.to_attrs());
        assert!(attrs.contains(&ServiceAttr::Timeout(300)));
        assert!(attrs.contains(&ServiceAttr::PersistenceEngine("sip".into())));
        assert!(
            !attrs
                .iter()
                .any(|attr| matches!(attr, ServiceAttr::Stats64(_))),
            "counters are not sent back"
        );
    }

    #[test]
    fn every_setter_changes_its_field_only() {
        let request = Handle::detached()
            .service()
            .update(&listed())
            .flags(ServiceFlags::empty())
            .timeout(0)
            .netmask(0xffff_ff00)
            .persistence_engine(None);
        let expected = Service {
            flags: ServiceFlags::empty(),
            timeout: 0,
            netmask: 0xffff_ff00,
            pe_name: None,
            stats64: None,
            ..listed()
        };
        assert_eq!(request.service(), &expected);
    }
}
