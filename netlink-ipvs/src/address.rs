//! Address families, transport protocols and the kernel's `union nf_inet_addr`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::DecodeError;

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

const IPPROTO_TCP: u16 = libc::IPPROTO_TCP as u16;
const IPPROTO_UDP: u16 = libc::IPPROTO_UDP as u16;
const IPPROTO_SCTP: u16 = libc::IPPROTO_SCTP as u16;

/// Size of `union nf_inet_addr`, the address format of every IPVS address
/// attribute: an IPv4 address fills the first 4 bytes, the rest are zero.
pub(crate) const INET_ADDR_LEN: usize = 16;

/// An address family (`AF_INET`, `AF_INET6`), as IPVS_SVC_ATTR_AF and
/// IPVS_DEST_ATTR_ADDR_FAMILY carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum AddressFamily {
    /// `AF_INET`.
    Inet,
    /// `AF_INET6`.
    Inet6,
    /// Any other family number.
    Other(u16),
}

impl AddressFamily {
    /// The family of `addr`.
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::Inet,
            IpAddr::V6(_) => Self::Inet6,
        }
    }
}

impl From<u16> for AddressFamily {
    fn from(value: u16) -> Self {
        match value {
            AF_INET => Self::Inet,
            AF_INET6 => Self::Inet6,
            other => Self::Other(other),
        }
    }
}

impl From<AddressFamily> for u16 {
    fn from(value: AddressFamily) -> Self {
        match value {
            AddressFamily::Inet => AF_INET,
            AddressFamily::Inet6 => AF_INET6,
            AddressFamily::Other(other) => other,
        }
    }
}

impl fmt::Display for AddressFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inet => f.write_str("inet"),
            Self::Inet6 => f.write_str("inet6"),
            Self::Other(n) => write!(f, "family {n}"),
        }
    }
}

/// The transport protocol of a virtual service (IPVS_SVC_ATTR_PROTOCOL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Protocol {
    /// `IPPROTO_TCP`, ipvsadm `-t`.
    Tcp,
    /// `IPPROTO_UDP`, ipvsadm `-u`.
    Udp,
    /// `IPPROTO_SCTP`, ipvsadm `--sctp-service`.
    Sctp,
    /// Any other protocol number.
    Other(u16),
}

impl From<u16> for Protocol {
    fn from(value: u16) -> Self {
        match value {
            IPPROTO_TCP => Self::Tcp,
            IPPROTO_UDP => Self::Udp,
            IPPROTO_SCTP => Self::Sctp,
            other => Self::Other(other),
        }
    }
}

impl From<Protocol> for u16 {
    fn from(value: Protocol) -> Self {
        match value {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
            Protocol::Sctp => IPPROTO_SCTP,
            Protocol::Other(other) => other,
        }
    }
}

impl fmt::Display for Protocol {
    /// The names `ipvsadm -Sn` prints (TCP, UDP, SCTP).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp => f.write_str("TCP"),
            Self::Udp => f.write_str("UDP"),
            Self::Sctp => f.write_str("SCTP"),
            Self::Other(n) => write!(f, "protocol {n}"),
        }
    }
}

/// The raw 16 bytes of a `union nf_inet_addr`: which of its members is
/// meant depends on an address family carried by another attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct InetAddr(pub [u8; INET_ADDR_LEN]);

impl InetAddr {
    /// Reads an address attribute. The kernel and ipvsadm always send 16
    /// bytes; a shorter value (an IPv4 `in_addr`) is zero-padded.
    pub(crate) fn parse(payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.len() > INET_ADDR_LEN {
            return Err(DecodeError::from(format!(
                "address is {} bytes, at most {INET_ADDR_LEN} expected",
                payload.len()
            )));
        }
        let mut bytes = [0u8; INET_ADDR_LEN];
        bytes[..payload.len()].copy_from_slice(payload);
        Ok(Self(bytes))
    }

    /// Reads the union as a member of `family`.
    pub fn to_ip(&self, family: AddressFamily) -> Option<IpAddr> {
        match family {
            AddressFamily::Inet => {
                let [a, b, c, d, ..] = self.0;
                Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
            }
            AddressFamily::Inet6 => Some(IpAddr::V6(Ipv6Addr::from(self.0))),
            AddressFamily::Other(_) => None,
        }
    }
}

impl From<IpAddr> for InetAddr {
    fn from(addr: IpAddr) -> Self {
        let mut bytes = [0u8; INET_ADDR_LEN];
        match addr {
            IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => bytes = v6.octets(),
        }
        Self(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_fills_the_first_four_bytes_of_the_union() {
        let addr = InetAddr::from(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(addr.0, [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            addr.to_ip(AddressFamily::Inet),
            Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        );
    }

    #[test]
    fn a_four_byte_in_addr_is_accepted_and_padded() {
        let addr = InetAddr::parse(&[192, 168, 0, 1]).unwrap();
        assert_eq!(
            addr.to_ip(AddressFamily::Inet),
            Some(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1)))
        );
    }

    #[test]
    fn an_address_longer_than_the_union_is_an_error() {
        assert!(InetAddr::parse(&[0u8; 17]).is_err());
    }

    #[test]
    fn numbers_map_to_names_and_back() {
        for (number, protocol) in [
            (6, Protocol::Tcp),
            (17, Protocol::Udp),
            (132, Protocol::Sctp),
            (1, Protocol::Other(1)),
        ] {
            assert_eq!(Protocol::from(number), protocol);
            assert_eq!(u16::from(protocol), number);
        }
        for (number, family) in [
            (2, AddressFamily::Inet),
            (10, AddressFamily::Inet6),
            (7, AddressFamily::Other(7)),
        ] {
            assert_eq!(AddressFamily::from(number), family);
            assert_eq!(u16::from(family), number);
        }
    }
}
