//! `handle.destination()`: the equivalent of `ipvsadm -a/-e/-d`.

use std::net::IpAddr;

use crate::destination::{Destination, ForwardingMethod, Tunnel};
use crate::error::Result;
use crate::handle::{Handle, OperationRequest};
use crate::message::{IpvsAttr, IpvsCmd, IpvsMessage};
use crate::service::ServiceAddress;
use crate::Operation;

/// Destinations (real servers) of a service.
#[derive(Debug, Clone)]
pub struct DestinationHandle(pub(crate) Handle);

impl DestinationHandle {
    /// Adds a real server to `service` (`ipvsadm -a`). Fails with
    /// [`Error::is_exists`](crate::Error::is_exists) when it is there, and
    /// with [`Error::is_not_found`](crate::Error::is_not_found) when the
    /// service is gone.
    pub fn add(&self, service: &ServiceAddress, destination: Destination) -> OperationRequest {
        OperationRequest::new(
            self.0.clone(),
            Operation::AddDestination(service.clone(), destination),
        )
    }

    /// Edits a real server (`ipvsadm -e`): replaces every editable field,
    /// i.e. the forwarding method, weight, thresholds and tunnel options,
    /// with those of `destination`.
    ///
    /// The kernel has no partial edit, so a field left at its default
    /// resets the real server's: `Destination::new(..).weight(5)` also
    /// switches a direct-routed server to masquerading. To change some
    /// fields and keep the others, use [`DestinationHandle::update`].
    pub fn set(&self, service: &ServiceAddress, destination: Destination) -> OperationRequest {
        OperationRequest::new(
            self.0.clone(),
            Operation::SetDestination(service.clone(), destination),
        )
    }

    /// Edits the fields set on the returned request and keeps the others as
    /// `current` has them (`ipvsadm -e` repeating the current options).
    /// `current` is the real server as [`DestinationHandle::get`] listed it.
    ///
    /// The request sends all of `current` with the changes applied, so a
    /// field someone else changed since `current` was listed is set back.
    pub fn update(
        &self,
        service: &ServiceAddress,
        current: &Destination,
    ) -> DestinationUpdateRequest {
        DestinationUpdateRequest {
            handle: self.0.clone(),
            service: service.clone(),
            destination: Destination {
                active_conns: 0,
                inactive_conns: 0,
                persistent_conns: 0,
                stats: None,
                stats64: None,
                ..current.clone()
            },
        }
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

/// An edit of some of a real server's fields; ends in
/// [`DestinationUpdateRequest::execute`].
#[derive(Debug)]
#[must_use = "a request does nothing until executed"]
pub struct DestinationUpdateRequest {
    handle: Handle,
    service: ServiceAddress,
    destination: Destination,
}

impl DestinationUpdateRequest {
    /// Sets the forwarding method (`-m`, `-g`, `-i`).
    pub fn forwarding(mut self, forwarding: ForwardingMethod) -> Self {
        self.destination.forwarding = forwarding;
        self
    }

    /// Sets the weight (`-w`); 0 stops new connections (drain).
    pub fn weight(mut self, weight: u32) -> Self {
        self.destination.weight = weight;
        self
    }

    /// Sets the upper connection threshold (`-x`), 0 for none.
    pub fn upper_threshold(mut self, threshold: u32) -> Self {
        self.destination.upper_threshold = threshold;
        self
    }

    /// Sets the lower connection threshold (`-y`).
    pub fn lower_threshold(mut self, threshold: u32) -> Self {
        self.destination.lower_threshold = threshold;
        self
    }

    /// Sets the tunnel options (`--tun-*`), or the kernel's defaults with
    /// `None`.
    pub fn tunnel(mut self, tunnel: Option<Tunnel>) -> Self {
        self.destination.tunnel = tunnel;
        self
    }

    /// The real server the request will send.
    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// The edit as an operation, for [`Handle::batch`].
    pub fn into_operation(self) -> Operation {
        Operation::SetDestination(self.service, self.destination)
    }

    /// Sends IPVS_CMD_SET_DEST and waits for the kernel's verdict.
    pub async fn execute(self) -> Result<()> {
        let handle = self.handle.clone();
        OperationRequest::new(handle, self.into_operation())
            .execute()
            .await
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
            .objects(
                || service.to_string(),
                |attr| match attr {
                    IpvsAttr::Destination(attrs) => Some(Destination::from_attrs(attrs)),
                    _ => None,
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Protocol;
    use crate::destination::{DestinationAttr, TunnelFlags, TunnelType};
    use crate::stats::Stats64;

    fn service() -> ServiceAddress {
        ServiceAddress::Inet {
            addr: "10.0.0.1".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        }
    }

    /// `-r 192.168.1.10:8080 -g -w 1 -x 100 -y 10`, as a dump lists it.
    fn listed() -> Destination {
        Destination {
            upper_threshold: 100,
            lower_threshold: 10,
            active_conns: 3,
            stats64: Some(Stats64::default()),
            ..Destination::new("192.168.1.10".parse().unwrap(), 8080)
                .forwarding(ForwardingMethod::DirectRoute)
        }
    }

    fn sent_attrs(operation: Operation) -> Vec<DestinationAttr> {
        match operation.to_message().attrs.as_slice() {
            [IpvsAttr::Service(_), IpvsAttr::Destination(attrs)] => attrs.clone(),
            other => panic!("expected a service and a destination nest, got {other:?}"),
        }
    }

    #[test]
    fn a_weight_change_keeps_the_forwarding_method() {
        let operation = Handle::detached()
            .destination()
            .update(&service(), &listed())
            .weight(5)
            .into_operation();
        assert_eq!(operation.cmd(), IpvsCmd::SetDest);
        let attrs = sent_attrs(operation);
        assert!(attrs.contains(&DestinationAttr::Weight(5)));
        assert!(attrs.contains(&DestinationAttr::ForwardingMethod(
            ForwardingMethod::DirectRoute
        )));
        assert!(attrs.contains(&DestinationAttr::UpperThreshold(100)));
        assert!(attrs.contains(&DestinationAttr::LowerThreshold(10)));
        assert_eq!(attrs, listed().weight(5).to_request_attrs());
    }

    #[test]
    fn every_setter_changes_its_field_only() {
        let tunnel = Tunnel {
            tunnel_type: TunnelType::Gue,
            port: 6080,
            flags: TunnelFlags::CSUM,
        };
        let request = Handle::detached()
            .destination()
            .update(&service(), &listed())
            .forwarding(ForwardingMethod::Tunnel)
            .upper_threshold(0)
            .lower_threshold(0)
            .tunnel(Some(tunnel));
        let expected = Destination {
            forwarding: ForwardingMethod::Tunnel,
            upper_threshold: 0,
            lower_threshold: 0,
            tunnel: Some(tunnel),
            active_conns: 0,
            stats64: None,
            ..listed()
        };
        assert_eq!(request.destination(), &expected);
    }
}
