//! The IPVS_SVC_ATTR_* attribute space, nested in IPVS_CMD_ATTR_SERVICE.

use netlink_packet_core::{
    emit_u16, emit_u16_be, emit_u32, parse_string, parse_u16, parse_u16_be, parse_u32, DecodeError,
    DefaultNla, Emitable, ErrorContext, Nla, NlaBuffer, Parseable, NLA_F_NESTED,
};

use crate::address::{AddressFamily, InetAddr, Protocol, INET_ADDR_LEN};
use crate::message::{parse_nlas, unflag_nest, OwnNests};
use crate::service::IpvsFlags;
use crate::stats::{Stats64Attr, StatsAttr};

const IPVS_SVC_ATTR_AF: u16 = 1;
const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
const IPVS_SVC_ATTR_ADDR: u16 = 3;
const IPVS_SVC_ATTR_PORT: u16 = 4;
const IPVS_SVC_ATTR_FWMARK: u16 = 5;
const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
const IPVS_SVC_ATTR_FLAGS: u16 = 7;
const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
const IPVS_SVC_ATTR_NETMASK: u16 = 9;
const IPVS_SVC_ATTR_STATS: u16 = 10;
const IPVS_SVC_ATTR_PE_NAME: u16 = 11;
const IPVS_SVC_ATTR_STATS64: u16 = 12;

/// One attribute of a virtual service.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceAttr {
    /// `IPVS_SVC_ATTR_AF`.
    AddressFamily(AddressFamily),
    /// `IPVS_SVC_ATTR_PROTOCOL`.
    Protocol(Protocol),
    /// `IPVS_SVC_ATTR_ADDR`: a 16-byte `union nf_inet_addr`.
    Address(InetAddr),
    /// `IPVS_SVC_ATTR_PORT`, host order here, big-endian on the wire.
    Port(u16),
    /// `IPVS_SVC_ATTR_FWMARK`.
    Fwmark(u32),
    /// `IPVS_SVC_ATTR_SCHED_NAME`, NUL-terminated on the wire.
    SchedulerName(String),
    /// `IPVS_SVC_ATTR_FLAGS`: `struct ip_vs_flags`.
    Flags(IpvsFlags),
    /// `IPVS_SVC_ATTR_TIMEOUT`: persistence timeout, seconds.
    Timeout(u32),
    /// `IPVS_SVC_ATTR_NETMASK`, the four wire bytes read in native order:
    /// for IPv4 they are the mask in network order (255.255.255.0 is
    /// `ff ff ff 00`), for IPv6 a prefix length in native order.
    Netmask(u32),
    /// `IPVS_SVC_ATTR_STATS`.
    Stats(Vec<StatsAttr>),
    /// `IPVS_SVC_ATTR_PE_NAME`: persistence engine, e.g. "sip".
    PersistenceEngine(String),
    /// `IPVS_SVC_ATTR_STATS64`.
    Stats64(Vec<Stats64Attr>),
    /// Anything else, kept as it came.
    Other(DefaultNla),
}

impl Nla for ServiceAttr {
    fn value_len(&self) -> usize {
        match self {
            Self::AddressFamily(_) | Self::Protocol(_) | Self::Port(_) => 2,
            Self::Address(_) => INET_ADDR_LEN,
            Self::Fwmark(_) | Self::Timeout(_) | Self::Netmask(_) => 4,
            Self::SchedulerName(name) | Self::PersistenceEngine(name) => name.len() + 1,
            Self::Flags(_) => IpvsFlags::LEN,
            Self::Stats(attrs) => attrs.as_slice().buffer_len(),
            Self::Stats64(attrs) => attrs.as_slice().buffer_len(),
            Self::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::AddressFamily(_) => IPVS_SVC_ATTR_AF,
            Self::Protocol(_) => IPVS_SVC_ATTR_PROTOCOL,
            Self::Address(_) => IPVS_SVC_ATTR_ADDR,
            Self::Port(_) => IPVS_SVC_ATTR_PORT,
            Self::Fwmark(_) => IPVS_SVC_ATTR_FWMARK,
            Self::SchedulerName(_) => IPVS_SVC_ATTR_SCHED_NAME,
            Self::Flags(_) => IPVS_SVC_ATTR_FLAGS,
            Self::Timeout(_) => IPVS_SVC_ATTR_TIMEOUT,
            Self::Netmask(_) => IPVS_SVC_ATTR_NETMASK,
            Self::Stats(_) => IPVS_SVC_ATTR_STATS | NLA_F_NESTED,
            Self::PersistenceEngine(_) => IPVS_SVC_ATTR_PE_NAME,
            Self::Stats64(_) => IPVS_SVC_ATTR_STATS64 | NLA_F_NESTED,
            Self::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::AddressFamily(family) => emit_u16(buffer, (*family).into()).expect("2 bytes"),
            Self::Protocol(protocol) => emit_u16(buffer, (*protocol).into()).expect("2 bytes"),
            Self::Address(addr) => buffer.copy_from_slice(&addr.0),
            Self::Port(port) => emit_u16_be(buffer, *port).expect("2 bytes"),
            Self::Fwmark(v) | Self::Timeout(v) | Self::Netmask(v) => {
                emit_u32(buffer, *v).expect("4 bytes")
            }
            Self::SchedulerName(name) | Self::PersistenceEngine(name) => {
                buffer[..name.len()].copy_from_slice(name.as_bytes());
                buffer[name.len()] = 0;
            }
            Self::Flags(flags) => flags.emit(buffer),
            Self::Stats(attrs) => attrs.as_slice().emit(buffer),
            Self::Stats64(attrs) => attrs.as_slice().emit(buffer),
            Self::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl OwnNests for ServiceAttr {
    fn clear_nested_flags(&self, buffer: &mut [u8]) {
        if matches!(self, Self::Stats(_) | Self::Stats64(_)) {
            unflag_nest(buffer);
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for ServiceAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        Ok(match buf.kind() {
            IPVS_SVC_ATTR_AF => Self::AddressFamily(
                parse_u16(payload)
                    .context("invalid IPVS_SVC_ATTR_AF value")?
                    .into(),
            ),
            IPVS_SVC_ATTR_PROTOCOL => Self::Protocol(
                parse_u16(payload)
                    .context("invalid IPVS_SVC_ATTR_PROTOCOL value")?
                    .into(),
            ),
            IPVS_SVC_ATTR_ADDR => {
                Self::Address(InetAddr::parse(payload).context("invalid IPVS_SVC_ATTR_ADDR value")?)
            }
            IPVS_SVC_ATTR_PORT => {
                Self::Port(parse_u16_be(payload).context("invalid IPVS_SVC_ATTR_PORT value")?)
            }
            IPVS_SVC_ATTR_FWMARK => {
                Self::Fwmark(parse_u32(payload).context("invalid IPVS_SVC_ATTR_FWMARK value")?)
            }
            IPVS_SVC_ATTR_SCHED_NAME => Self::SchedulerName(
                parse_string(payload).context("invalid IPVS_SVC_ATTR_SCHED_NAME value")?,
            ),
            IPVS_SVC_ATTR_FLAGS => {
                Self::Flags(IpvsFlags::parse(payload).context("invalid IPVS_SVC_ATTR_FLAGS value")?)
            }
            IPVS_SVC_ATTR_TIMEOUT => {
                Self::Timeout(parse_u32(payload).context("invalid IPVS_SVC_ATTR_TIMEOUT value")?)
            }
            IPVS_SVC_ATTR_NETMASK => {
                Self::Netmask(parse_u32(payload).context("invalid IPVS_SVC_ATTR_NETMASK value")?)
            }
            IPVS_SVC_ATTR_STATS => {
                Self::Stats(parse_nlas(payload).context("invalid IPVS_SVC_ATTR_STATS value")?)
            }
            IPVS_SVC_ATTR_PE_NAME => Self::PersistenceEngine(
                parse_string(payload).context("invalid IPVS_SVC_ATTR_PE_NAME value")?,
            ),
            IPVS_SVC_ATTR_STATS64 => {
                Self::Stats64(parse_nlas(payload).context("invalid IPVS_SVC_ATTR_STATS64 value")?)
            }
            _ => Self::Other(DefaultNla::parse(buf).context("invalid IPVS service attribute")?),
        })
    }
}
