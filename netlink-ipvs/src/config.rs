//! SET_CONFIG / GET_CONFIG: connection timeouts (`ipvsadm --set`).

use crate::error::{Error, Result};
use crate::message::IpvsAttr;

/// The timeouts `ipvsadm -L --timeout` shows, in seconds. In a SET_CONFIG
/// request a zero leaves that timeout unchanged (the kernel's rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeouts {
    /// Established TCP connections.
    pub tcp: u32,
    /// TCP connections after a FIN.
    pub tcp_fin: u32,
    /// UDP "connections".
    pub udp: u32,
}

impl Timeouts {
    /// The top-level attributes, in the kernel's and ipvsadm's order.
    pub fn to_attrs(&self) -> Vec<IpvsAttr> {
        vec![
            IpvsAttr::TimeoutTcp(self.tcp),
            IpvsAttr::TimeoutTcpFin(self.tcp_fin),
            IpvsAttr::TimeoutUdp(self.udp),
        ]
    }

    /// Reads a GET_CONFIG reply.
    pub fn from_attrs(attrs: &[IpvsAttr]) -> Result<Self> {
        let mut tcp = None;
        let mut tcp_fin = None;
        let mut udp = None;
        for attr in attrs {
            match attr {
                IpvsAttr::TimeoutTcp(v) => tcp = Some(*v),
                IpvsAttr::TimeoutTcpFin(v) => tcp_fin = Some(*v),
                IpvsAttr::TimeoutUdp(v) => udp = Some(*v),
                _ => {}
            }
        }
        let missing = |attribute| Error::MissingAttribute {
            object: "config",
            attribute,
        };
        Ok(Self {
            tcp: tcp.ok_or_else(|| missing("IPVS_CMD_ATTR_TIMEOUT_TCP"))?,
            tcp_fin: tcp_fin.ok_or_else(|| missing("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN"))?,
            udp: udp.ok_or_else(|| missing("IPVS_CMD_ATTR_TIMEOUT_UDP"))?,
        })
    }
}
