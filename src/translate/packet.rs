//! The packet path's share of a service: the elements it puts in the
//! proxy's nftables sets (see [`NftSet`] for what each set does).
//!
//! An element goes in the table of its addresses' family (`ip` or `ip6`);
//! a NodePort in the table of each family the service is served in.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::desired::{NftElement, NftFamily, NftKey, NftSet, Protocol, RealServerKey};
use crate::model::{AddressType, ServiceInfo, ServicePortInfo};

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
        // Only the ranges of the address's family can hold its clients.
        let ranges = merged_of_family(&svc.load_balancer_source_ranges, NftFamily::of(ip));
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

    /// A NodePort in the table of `family`: masqueraded unless the policy
    /// is Local, where it is dropped when this node has no endpoint of
    /// that family.
    pub(super) fn node_port(
        &mut self,
        family: AddressType,
        protocol: Protocol,
        node_port: u16,
        svc: &ServiceInfo,
        no_endpoints: bool,
    ) {
        let family = match family {
            AddressType::Ipv4 => NftFamily::Ip,
            AddressType::Ipv6 => NftFamily::Ip6,
            // No slice of this type keeps endpoints, and no table serves it.
            AddressType::Fqdn => return,
        };
        let key = NftKey::ProtoPort(family, protocol, node_port);
        if !svc.external_traffic_local {
            self.insert(NftSet::NodePorts, key);
        } else if no_endpoints {
            self.insert(NftSet::NodePortsNoLocalEndpoints, key);
        }
    }

    /// This node's endpoints, which may reach themselves through the service.
    pub(super) fn hairpin(&mut self, local: &[RealServerKey], protocol: Protocol) {
        for ep in local {
            let key = NftKey::AddrProtoPortAddr(ep.addr, protocol, ep.port, ep.addr);
            self.insert(NftSet::Hairpin, key);
        }
    }

    pub(super) fn finish(self) -> Vec<NftElement> {
        self.0.into_iter().collect()
    }
}

/// The CIDRs of `family` among `nets`, overlapping ones merged: an interval
/// set refuses overlapping elements.
fn merged_of_family(nets: &[ipnet::IpNet], family: NftFamily) -> Vec<ipnet::IpNet> {
    match family {
        NftFamily::Ip => {
            let v4: Vec<ipnet::Ipv4Net> = nets
                .iter()
                .filter_map(|net| match net {
                    ipnet::IpNet::V4(v4) => Some(*v4),
                    ipnet::IpNet::V6(_) => None,
                })
                .collect();
            ipnet::Ipv4Net::aggregate(&v4)
                .into_iter()
                .map(ipnet::IpNet::from)
                .collect()
        }
        NftFamily::Ip6 => {
            let v6: Vec<ipnet::Ipv6Net> = nets
                .iter()
                .filter_map(|net| match net {
                    ipnet::IpNet::V6(v6) => Some(*v6),
                    ipnet::IpNet::V4(_) => None,
                })
                .collect();
            ipnet::Ipv6Net::aggregate(&v6)
                .into_iter()
                .map(ipnet::IpNet::from)
                .collect()
        }
    }
}
