//! What the proxy may touch: the configuration half of the ownership rule.
//! The other half (which addresses are held or wanted on kube-ipvs0, which
//! are the node's) is state the [`Reconciler`](super::Reconciler) keeps.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnet::IpNet;

/// Which virtual servers and addresses belong to the proxy.
///
/// A virtual server is owned iff its address is outside every exclude CIDR
/// and either the address is held or wanted on kube-ipvs0, or it is a node
/// address and the port is in the NodePort range. An address on kube-ipvs0
/// is owned iff it is outside every exclude CIDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    /// `--ipvs-exclude-cidrs`: never touched, never programmed.
    pub exclude_cidrs: Vec<IpNet>,
    /// `--service-node-port-range`.
    pub node_port_range: RangeInclusive<u16>,
}

impl Default for Ownership {
    /// No exclusions and Kubernetes' default NodePort range, 30000-32767.
    fn default() -> Self {
        Ownership {
            exclude_cidrs: Vec::new(),
            node_port_range: 30000..=32767,
        }
    }
}

impl Ownership {
    /// Whether `addr` lies inside an exclude CIDR.
    pub fn is_excluded(&self, addr: IpAddr) -> bool {
        self.exclude_cidrs.iter().any(|cidr| cidr.contains(&addr))
    }

    /// Whether `port` is a NodePort.
    pub fn is_node_port(&self, port: u16) -> bool {
        self.node_port_range.contains(&port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusion_and_node_ports() {
        let ownership = Ownership {
            exclude_cidrs: vec![
                "10.96.200.0/24".parse().unwrap(),
                "fd00::/64".parse().unwrap(),
            ],
            ..Ownership::default()
        };
        let cases = [
            ("inside an IPv4 exclude CIDR", "10.96.200.7", true),
            ("just outside it", "10.96.201.0", false),
            ("inside an IPv6 exclude CIDR", "fd00::1", true),
            (
                "an IPv4-mapped address is not the IPv6 CIDR",
                "::ffff:10.96.200.7",
                false,
            ),
        ];
        for (name, addr, excluded) in cases {
            assert_eq!(
                ownership.is_excluded(addr.parse().unwrap()),
                excluded,
                "{name}"
            );
        }
        let ports = [(29999, false), (30000, true), (32767, true), (32768, false)];
        for (port, node_port) in ports {
            assert_eq!(ownership.is_node_port(port), node_port, "port {port}");
        }
    }
}
