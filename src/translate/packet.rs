//! The packet path's share of a service: the elements it puts in the
//! proxy's nftables sets (see [`NftSet`] for what each set does).
//!
//! The sets are of family `ip`: IPv6 addresses add nothing here yet.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::desired::{NftElement, NftKey, NftSet, Protocol, RealServerKey};
use crate::model::{ServiceInfo, ServicePortInfo};

use super::ExternalAddress;

/// The elements of one service, gathered port by port.
#[derive(Debug, Default)]
pub(super) struct Elements(BTreeSet<NftElement>);

impl Elements {
    fn insert(&mut self, set: NftSet, key: NftKey) {
        self.0.insert(NftElement { set, key });
    }

    /// A ClusterIP port: masqueraded from outside the pods, and its address
    /// guarded against ports no service serves.
    pub(super) fn cluster_ip(&mut self, ip: IpAddr, port: &ServicePortInfo) {
        if !ip.is_ipv4() {
            return;
        }
        self.insert(
            NftSet::ClusterIps,
            NftKey::AddrProtoPort(ip, port.protocol, port.port),
        );
        self.insert(NftSet::ServiceIps, NftKey::Addr(ip));
    }

    /// An ExternalIP or LoadBalancer IP port: masqueraded unless the policy
    /// is Local, where it is dropped when this node has no endpoint; a
    /// LoadBalancer IP with source ranges admits only them.
    pub(super) fn external_ip(
        &mut self,
        ext: &ExternalAddress,
        port: &ServicePortInfo,
        svc: &ServiceInfo,
        node_addresses: &[IpAddr],
        no_endpoints: bool,
    ) {
        let ip = ext.ip;
        if !ip.is_ipv4() {
            return;
        }
        let key = NftKey::AddrProtoPort(ip, port.protocol, port.port);
        if svc.external_traffic_local {
            self.insert(NftSet::ExternalIpsLocal, key);
            if no_endpoints {
                self.insert(NftSet::NoLocalEndpoints, key);
            }
        } else {
            self.insert(NftSet::ExternalIps, key);
        }
        if !ext.node_owned {
            self.insert(NftSet::ServiceIps, NftKey::Addr(ip));
        }
        // An interval set refuses overlapping elements: merge them first.
        let v4: Vec<ipnet::Ipv4Net> = svc
            .load_balancer_source_ranges
            .iter()
            .filter_map(|net| match net {
                ipnet::IpNet::V4(v4) => Some(*v4),
                ipnet::IpNet::V6(_) => None,
            })
            .collect();
        let ranges: Vec<ipnet::IpNet> = ipnet::Ipv4Net::aggregate(&v4)
            .into_iter()
            .map(ipnet::IpNet::from)
            .collect();
        if ext.load_balancer && !ranges.is_empty() {
            self.insert(NftSet::FirewallIps, key);
            for &net in &ranges {
                let allow = NftKey::AddrProtoPortSource(ip, port.protocol, port.port, net);
                self.insert(NftSet::FirewallAllow, allow);
            }
            // The node reaches a VIP on kube-ipvs0 from the VIP itself.
            // Upstream lets the node in when a range holds a node address;
            // that address is then the source the ranges see.
            let node_allowed = node_addresses
                .iter()
                .any(|addr| ranges.iter().any(|net| net.contains(addr)));
            let covered = ranges.iter().any(|net| net.contains(&ip));
            if node_allowed && !ext.node_owned && !covered {
                let own = ipnet::IpNet::from(ip);
                let allow = NftKey::AddrProtoPortSource(ip, port.protocol, port.port, own);
                self.insert(NftSet::FirewallAllow, allow);
            }
        }
    }

    /// A NodePort: masqueraded unless the policy is Local, where it is
    /// dropped when this node has no endpoint.
    pub(super) fn node_port(
        &mut self,
        protocol: Protocol,
        node_port: u16,
        svc: &ServiceInfo,
        no_endpoints: bool,
    ) {
        let key = NftKey::ProtoPort(protocol, node_port);
        if !svc.external_traffic_local {
            self.insert(NftSet::NodePorts, key);
        } else if no_endpoints {
            self.insert(NftSet::NodePortsNoLocalEndpoints, key);
        }
    }

    /// This node's endpoints, which may reach themselves through the service.
    pub(super) fn hairpin(&mut self, local: &[RealServerKey], protocol: Protocol) {
        for ep in local.iter().filter(|ep| ep.addr.is_ipv4()) {
            let key = NftKey::AddrProtoPortAddr(ep.addr, protocol, ep.port, ep.addr);
            self.insert(NftSet::Hairpin, key);
        }
    }

    pub(super) fn finish(self) -> Vec<NftElement> {
        self.0.into_iter().collect()
    }
}
