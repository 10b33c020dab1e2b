//! Destinations (real servers): the typed [`Destination`] and its attributes.

mod attr;

use std::fmt;
use std::net::IpAddr;

pub use self::attr::DestinationAttr;

use crate::address::{AddressFamily, InetAddr};
use crate::error::{Error, Result};
use crate::request::AttrSink;
use crate::stats::{Stats, Stats64};

const OBJECT: &str = "destination";

const IP_VS_CONN_F_MASQ: u32 = 0x0000;
const IP_VS_CONN_F_LOCALNODE: u32 = 0x0001;
const IP_VS_CONN_F_TUNNEL: u32 = 0x0002;
const IP_VS_CONN_F_DROUTE: u32 = 0x0003;
const IP_VS_CONN_F_BYPASS: u32 = 0x0004;

const IP_VS_CONN_F_TUNNEL_TYPE_IPIP: u8 = 0;
const IP_VS_CONN_F_TUNNEL_TYPE_GUE: u8 = 1;
const IP_VS_CONN_F_TUNNEL_TYPE_GRE: u8 = 2;

/// How packets reach a destination (`IP_VS_CONN_F_*` forwarding bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ForwardingMethod {
    /// NAT (ipvsadm `-m`).
    #[default]
    Masquerade,
    /// Local node.
    Local,
    /// IP-in-IP, GUE or GRE tunnelling (ipvsadm `-i`).
    Tunnel,
    /// Direct routing (ipvsadm `-g`).
    DirectRoute,
    /// Cache bypass.
    Bypass,
    /// Any other value.
    Other(u32),
}

impl From<u32> for ForwardingMethod {
    fn from(value: u32) -> Self {
        match value {
            IP_VS_CONN_F_MASQ => Self::Masquerade,
            IP_VS_CONN_F_LOCALNODE => Self::Local,
            IP_VS_CONN_F_TUNNEL => Self::Tunnel,
            IP_VS_CONN_F_DROUTE => Self::DirectRoute,
            IP_VS_CONN_F_BYPASS => Self::Bypass,
            other => Self::Other(other),
        }
    }
}

impl From<ForwardingMethod> for u32 {
    fn from(value: ForwardingMethod) -> Self {
        match value {
            ForwardingMethod::Masquerade => IP_VS_CONN_F_MASQ,
            ForwardingMethod::Local => IP_VS_CONN_F_LOCALNODE,
            ForwardingMethod::Tunnel => IP_VS_CONN_F_TUNNEL,
            ForwardingMethod::DirectRoute => IP_VS_CONN_F_DROUTE,
            ForwardingMethod::Bypass => IP_VS_CONN_F_BYPASS,
            ForwardingMethod::Other(other) => other,
        }
    }
}

impl fmt::Display for ForwardingMethod {
    /// ipvsadm `-Ln`'s column: Masq, Local, Tunnel, Route, Bypass.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Masquerade => f.write_str("Masq"),
            Self::Local => f.write_str("Local"),
            Self::Tunnel => f.write_str("Tunnel"),
            Self::DirectRoute => f.write_str("Route"),
            Self::Bypass => f.write_str("Bypass"),
            Self::Other(n) => write!(f, "forwarding {n}"),
        }
    }
}

/// The encapsulation of a tunnelled destination (`IP_VS_CONN_F_TUNNEL_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TunnelType {
    /// IP-in-IP (the default).
    #[default]
    Ipip,
    /// Generic UDP encapsulation.
    Gue,
    /// Generic routing encapsulation.
    Gre,
    /// Any other value.
    Other(u8),
}

impl From<u8> for TunnelType {
    fn from(value: u8) -> Self {
        match value {
            IP_VS_CONN_F_TUNNEL_TYPE_IPIP => Self::Ipip,
            IP_VS_CONN_F_TUNNEL_TYPE_GUE => Self::Gue,
            IP_VS_CONN_F_TUNNEL_TYPE_GRE => Self::Gre,
            other => Self::Other(other),
        }
    }
}

impl From<TunnelType> for u8 {
    fn from(value: TunnelType) -> Self {
        match value {
            TunnelType::Ipip => IP_VS_CONN_F_TUNNEL_TYPE_IPIP,
            TunnelType::Gue => IP_VS_CONN_F_TUNNEL_TYPE_GUE,
            TunnelType::Gre => IP_VS_CONN_F_TUNNEL_TYPE_GRE,
            TunnelType::Other(other) => other,
        }
    }
}

bitflags::bitflags! {
    /// `IP_VS_TUNNEL_ENCAP_FLAG_*` (no flag is `NOCSUM`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct TunnelFlags: u16 {
        /// `IP_VS_TUNNEL_ENCAP_FLAG_CSUM` (`--tun-csum`).
        const CSUM = 1 << 0;
        /// `IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM` (`--tun-remcsum`).
        const REMCSUM = 1 << 1;
        // Bits a newer kernel may define are kept.
        const _ = !0;
    }
}

/// Tunnel options of a destination (`--tun-type`, `--tun-port`, `--tun-*csum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Tunnel {
    /// The encapsulation.
    pub tunnel_type: TunnelType,
    /// The GUE destination port.
    pub port: u16,
    /// Checksum options.
    pub flags: TunnelFlags,
}

impl Tunnel {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A real server of a virtual service, as `ipvsadm -a` creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The real server's address; its family may differ from the service's
    /// only for tunnelled destinations.
    pub addr: IpAddr,
    /// The real server's port (0 for firewall-mark services without one).
    pub port: u16,
    /// How packets reach it.
    pub forwarding: ForwardingMethod,
    /// Scheduling weight; 0 stops new connections (drain).
    pub weight: u32,
    /// Upper connection threshold (`-x`), 0 for none.
    pub upper_threshold: u32,
    /// Lower connection threshold (`-y`).
    pub lower_threshold: u32,
    /// Active connections (dumps only).
    pub active_conns: u32,
    /// Inactive connections (dumps only).
    pub inactive_conns: u32,
    /// Persistence templates (dumps only).
    pub persistent_conns: u32,
    /// Tunnel options. `None` stands for the kernel's defaults (IPIP, port
    /// 0, no flags), which the wire carries as zeros.
    pub tunnel: Option<Tunnel>,
    /// 32-bit counters, in dumps only.
    pub stats: Option<Stats>,
    /// 64-bit counters, in dumps only.
    pub stats64: Option<Stats64>,
}

impl Destination {
    /// A masqueraded destination of weight 1 without thresholds (ipvsadm's
    /// defaults).
    pub fn new(addr: IpAddr, port: u16) -> Self {
        Self {
            addr,
            port,
            forwarding: ForwardingMethod::Masquerade,
            weight: 1,
            upper_threshold: 0,
            lower_threshold: 0,
            active_conns: 0,
            inactive_conns: 0,
            persistent_conns: 0,
            tunnel: None,
            stats: None,
            stats64: None,
        }
    }

    /// Sets the forwarding method.
    pub fn forwarding(mut self, forwarding: ForwardingMethod) -> Self {
        self.forwarding = forwarding;
        self
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    fn tunnel_or_default(&self) -> Tunnel {
        self.tunnel.unwrap_or_default()
    }

    /// The attributes of an add or edit request, in ipvsadm's order.
    /// Counters and stats are not sent: the kernel ignores them.
    pub fn to_request_attrs(&self) -> Vec<DestinationAttr> {
        let mut attrs = Vec::with_capacity(10);
        self.push_request_attrs(&mut attrs);
        attrs
    }

    /// [`Destination::to_request_attrs`], into a vector or straight into a
    /// request.
    pub(crate) fn push_request_attrs(&self, attrs: &mut impl AttrSink<DestinationAttr>) {
        let tunnel = self.tunnel_or_default();
        Self::push_key_attrs(self.addr, self.port, attrs);
        attrs.put(DestinationAttr::ForwardingMethod(self.forwarding));
        attrs.put(DestinationAttr::Weight(self.weight));
        attrs.put(DestinationAttr::TunnelType(tunnel.tunnel_type));
        attrs.put(DestinationAttr::TunnelPort(tunnel.port));
        attrs.put(DestinationAttr::TunnelFlags(tunnel.flags));
        attrs.put(DestinationAttr::UpperThreshold(self.upper_threshold));
        attrs.put(DestinationAttr::LowerThreshold(self.lower_threshold));
    }

    /// Every attribute, in the order the kernel's dump writes them.
    pub fn to_attrs(&self) -> Vec<DestinationAttr> {
        let tunnel = self.tunnel_or_default();
        let mut attrs = vec![
            DestinationAttr::Address(InetAddr::from(self.addr)),
            DestinationAttr::Port(self.port),
            DestinationAttr::ForwardingMethod(self.forwarding),
            DestinationAttr::Weight(self.weight),
            DestinationAttr::TunnelType(tunnel.tunnel_type),
            DestinationAttr::TunnelPort(tunnel.port),
            DestinationAttr::TunnelFlags(tunnel.flags),
            DestinationAttr::UpperThreshold(self.upper_threshold),
            DestinationAttr::LowerThreshold(self.lower_threshold),
            DestinationAttr::ActiveConns(self.active_conns),
            DestinationAttr::InactiveConns(self.inactive_conns),
            DestinationAttr::PersistentConns(self.persistent_conns),
            DestinationAttr::AddressFamily(AddressFamily::of(&self.addr)),
        ];
        if let Some(stats) = &self.stats {
            attrs.push(DestinationAttr::Stats(stats.to_attrs()));
        }
        if let Some(stats64) = &self.stats64 {
            attrs.push(DestinationAttr::Stats64(stats64.to_attrs()));
        }
        attrs
    }

    /// The attributes that identify a destination within its service, as a
    /// delete sends them.
    pub fn key_attrs(addr: IpAddr, port: u16) -> Vec<DestinationAttr> {
        let mut attrs = Vec::with_capacity(3);
        Self::push_key_attrs(addr, port, &mut attrs);
        attrs
    }

    /// [`Destination::key_attrs`], into a vector or straight into a request.
    pub(crate) fn push_key_attrs(
        addr: IpAddr,
        port: u16,
        attrs: &mut impl AttrSink<DestinationAttr>,
    ) {
        attrs.put(DestinationAttr::AddressFamily(AddressFamily::of(&addr)));
        attrs.put(DestinationAttr::Address(InetAddr::from(addr)));
        attrs.put(DestinationAttr::Port(port));
    }

    /// Builds a destination from a dump entry or an add request; a missing
    /// or inconsistent attribute is an error that names it. Counters absent
    /// from a request are zero.
    pub fn from_attrs(attrs: &[DestinationAttr]) -> Result<Self> {
        let mut family = None;
        let mut address = None;
        let mut port = None;
        let mut forwarding = None;
        let mut weight = None;
        let mut upper_threshold = None;
        let mut lower_threshold = None;
        let mut active_conns = 0;
        let mut inactive_conns = 0;
        let mut persistent_conns = 0;
        let mut tunnel = Tunnel::default();
        let mut stats = None;
        let mut stats64 = None;
        for attr in attrs {
            match attr {
                DestinationAttr::AddressFamily(v) => family = Some(*v),
                DestinationAttr::Address(v) => address = Some(*v),
                DestinationAttr::Port(v) => port = Some(*v),
                DestinationAttr::ForwardingMethod(v) => forwarding = Some(*v),
                DestinationAttr::Weight(v) => weight = Some(*v),
                DestinationAttr::UpperThreshold(v) => upper_threshold = Some(*v),
                DestinationAttr::LowerThreshold(v) => lower_threshold = Some(*v),
                DestinationAttr::ActiveConns(v) => active_conns = *v,
                DestinationAttr::InactiveConns(v) => inactive_conns = *v,
                DestinationAttr::PersistentConns(v) => persistent_conns = *v,
                DestinationAttr::TunnelType(v) => tunnel.tunnel_type = *v,
                DestinationAttr::TunnelPort(v) => tunnel.port = *v,
                DestinationAttr::TunnelFlags(v) => tunnel.flags = *v,
                DestinationAttr::Stats(v) => stats = Some(Stats::from_attrs(v)),
                DestinationAttr::Stats64(v) => stats64 = Some(Stats64::from_attrs(v)),
                DestinationAttr::Other(_) => {}
            }
        }
        let missing = |attribute| Error::MissingAttribute {
            object: OBJECT,
            attribute,
        };
        let family = family.ok_or_else(|| missing("IPVS_DEST_ATTR_ADDR_FAMILY"))?;
        let address = address.ok_or_else(|| missing("IPVS_DEST_ATTR_ADDR"))?;
        let addr = address
            .to_ip(family)
            .ok_or_else(|| Error::InvalidAttribute {
                object: OBJECT,
                attribute: "IPVS_DEST_ATTR_ADDR_FAMILY",
                value: u16::from(family).to_string(),
            })?;
        Ok(Self {
            addr,
            port: port.ok_or_else(|| missing("IPVS_DEST_ATTR_PORT"))?,
            forwarding: forwarding.ok_or_else(|| missing("IPVS_DEST_ATTR_FWD_METHOD"))?,
            weight: weight.ok_or_else(|| missing("IPVS_DEST_ATTR_WEIGHT"))?,
            upper_threshold: upper_threshold.ok_or_else(|| missing("IPVS_DEST_ATTR_U_THRESH"))?,
            lower_threshold: lower_threshold.ok_or_else(|| missing("IPVS_DEST_ATTR_L_THRESH"))?,
            active_conns,
            inactive_conns,
            persistent_conns,
            tunnel: (!tunnel.is_default()).then_some(tunnel),
            stats,
            stats64,
        })
    }
}

impl TryFrom<&[DestinationAttr]> for Destination {
    type Error = Error;

    fn try_from(attrs: &[DestinationAttr]) -> Result<Self> {
        Self::from_attrs(attrs)
    }
}

/// `addr:port` in ipvsadm's notation (`[v6]:port` for IPv6).
pub(crate) fn display_endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_numbers_follow_the_header() {
        for (number, method) in [
            (0, ForwardingMethod::Masquerade),
            (1, ForwardingMethod::Local),
            (2, ForwardingMethod::Tunnel),
            (3, ForwardingMethod::DirectRoute),
            (4, ForwardingMethod::Bypass),
            (9, ForwardingMethod::Other(9)),
        ] {
            assert_eq!(ForwardingMethod::from(number), method);
            assert_eq!(u32::from(method), number);
        }
    }

    #[test]
    fn default_tunnel_options_read_back_as_none() {
        let dest = Destination::new("192.168.1.10".parse().unwrap(), 8080);
        assert_eq!(Destination::from_attrs(&dest.to_attrs()).unwrap(), dest);
        let tunnelled = Destination {
            tunnel: Some(Tunnel {
                tunnel_type: TunnelType::Gue,
                port: 6080,
                flags: TunnelFlags::CSUM,
            }),
            ..dest.forwarding(ForwardingMethod::Tunnel)
        };
        assert_eq!(
            Destination::from_attrs(&tunnelled.to_request_attrs()).unwrap(),
            tunnelled
        );
    }

    #[test]
    fn missing_attributes_are_named() {
        let dest = Destination::new("192.168.1.10".parse().unwrap(), 8080);
        let cases = [
            (
                "IPVS_DEST_ATTR_ADDR_FAMILY",
                DestinationAttr::AddressFamily(AddressFamily::Inet),
            ),
            (
                "IPVS_DEST_ATTR_ADDR",
                DestinationAttr::Address(InetAddr::default()),
            ),
            ("IPVS_DEST_ATTR_PORT", DestinationAttr::Port(0)),
            (
                "IPVS_DEST_ATTR_FWD_METHOD",
                DestinationAttr::ForwardingMethod(ForwardingMethod::Masquerade),
            ),
            ("IPVS_DEST_ATTR_WEIGHT", DestinationAttr::Weight(0)),
            (
                "IPVS_DEST_ATTR_U_THRESH",
                DestinationAttr::UpperThreshold(0),
            ),
            (
                "IPVS_DEST_ATTR_L_THRESH",
                DestinationAttr::LowerThreshold(0),
            ),
        ];
        for (name, like) in cases {
            let attrs: Vec<_> = dest
                .to_request_attrs()
                .into_iter()
                .filter(|a| std::mem::discriminant(a) != std::mem::discriminant(&like))
                .collect();
            match Destination::from_attrs(&attrs) {
                Err(Error::MissingAttribute { attribute, .. }) => assert_eq!(attribute, name),
                other => panic!("{name}: expected a missing attribute, got {other:?}"),
            }
        }
    }
}
