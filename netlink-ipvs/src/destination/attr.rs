//! The IPVS_DEST_ATTR_* attribute space, nested in IPVS_CMD_ATTR_DEST.

use netlink_packet_core::{
    emit_u16, emit_u16_be, emit_u32, parse_u16, parse_u16_be, parse_u32, parse_u8, DecodeError,
    DefaultNla, Emitable, ErrorContext, Nla, NlaBuffer, Parseable, NLA_F_NESTED,
};

use crate::address::{AddressFamily, InetAddr, INET_ADDR_LEN};
use crate::destination::{ForwardingMethod, TunnelFlags, TunnelType};
use crate::message::{parse_nlas, unflag_nest, OwnNests};
use crate::stats::{Stats64Attr, StatsAttr};

const IPVS_DEST_ATTR_ADDR: u16 = 1;
const IPVS_DEST_ATTR_PORT: u16 = 2;
const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
const IPVS_DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const IPVS_DEST_ATTR_INACT_CONNS: u16 = 8;
const IPVS_DEST_ATTR_PERSIST_CONNS: u16 = 9;
const IPVS_DEST_ATTR_STATS: u16 = 10;
const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;
const IPVS_DEST_ATTR_STATS64: u16 = 12;
const IPVS_DEST_ATTR_TUN_TYPE: u16 = 13;
const IPVS_DEST_ATTR_TUN_PORT: u16 = 14;
const IPVS_DEST_ATTR_TUN_FLAGS: u16 = 15;

/// One attribute of a destination (real server).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DestinationAttr {
    /// `IPVS_DEST_ATTR_ADDR`: a 16-byte `union nf_inet_addr`.
    Address(InetAddr),
    /// `IPVS_DEST_ATTR_PORT`, host order here, big-endian on the wire.
    Port(u16),
    /// `IPVS_DEST_ATTR_FWD_METHOD`: `IP_VS_CONN_F_*` forwarding bits.
    ForwardingMethod(ForwardingMethod),
    /// `IPVS_DEST_ATTR_WEIGHT`.
    Weight(u32),
    /// `IPVS_DEST_ATTR_U_THRESH`: upper connection threshold, 0 for none.
    UpperThreshold(u32),
    /// `IPVS_DEST_ATTR_L_THRESH`: lower connection threshold.
    LowerThreshold(u32),
    /// `IPVS_DEST_ATTR_ACTIVE_CONNS` (dumps only).
    ActiveConns(u32),
    /// `IPVS_DEST_ATTR_INACT_CONNS` (dumps only).
    InactiveConns(u32),
    /// `IPVS_DEST_ATTR_PERSIST_CONNS` (dumps only).
    PersistentConns(u32),
    /// `IPVS_DEST_ATTR_STATS`.
    Stats(Vec<StatsAttr>),
    /// `IPVS_DEST_ATTR_ADDR_FAMILY`: may differ from the service's for
    /// tunnelled destinations.
    AddressFamily(AddressFamily),
    /// `IPVS_DEST_ATTR_STATS64`.
    Stats64(Vec<Stats64Attr>),
    /// `IPVS_DEST_ATTR_TUN_TYPE`.
    TunnelType(TunnelType),
    /// `IPVS_DEST_ATTR_TUN_PORT`, host order here, big-endian on the wire.
    TunnelPort(u16),
    /// `IPVS_DEST_ATTR_TUN_FLAGS`.
    TunnelFlags(TunnelFlags),
    /// Anything else, kept as it came.
    Other(DefaultNla),
}

impl Nla for DestinationAttr {
    fn value_len(&self) -> usize {
        match self {
            Self::Address(_) => INET_ADDR_LEN,
            Self::Port(_) | Self::AddressFamily(_) | Self::TunnelPort(_) | Self::TunnelFlags(_) => {
                2
            }
            Self::TunnelType(_) => 1,
            Self::ForwardingMethod(_)
            | Self::Weight(_)
            | Self::UpperThreshold(_)
            | Self::LowerThreshold(_)
            | Self::ActiveConns(_)
            | Self::InactiveConns(_)
            | Self::PersistentConns(_) => 4,
            Self::Stats(attrs) => attrs.as_slice().buffer_len(),
            Self::Stats64(attrs) => attrs.as_slice().buffer_len(),
            Self::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::Address(_) => IPVS_DEST_ATTR_ADDR,
            Self::Port(_) => IPVS_DEST_ATTR_PORT,
            Self::ForwardingMethod(_) => IPVS_DEST_ATTR_FWD_METHOD,
            Self::Weight(_) => IPVS_DEST_ATTR_WEIGHT,
            Self::UpperThreshold(_) => IPVS_DEST_ATTR_U_THRESH,
            Self::LowerThreshold(_) => IPVS_DEST_ATTR_L_THRESH,
            Self::ActiveConns(_) => IPVS_DEST_ATTR_ACTIVE_CONNS,
            Self::InactiveConns(_) => IPVS_DEST_ATTR_INACT_CONNS,
            Self::PersistentConns(_) => IPVS_DEST_ATTR_PERSIST_CONNS,
            Self::Stats(_) => IPVS_DEST_ATTR_STATS | NLA_F_NESTED,
            Self::AddressFamily(_) => IPVS_DEST_ATTR_ADDR_FAMILY,
            Self::Stats64(_) => IPVS_DEST_ATTR_STATS64 | NLA_F_NESTED,
            Self::TunnelType(_) => IPVS_DEST_ATTR_TUN_TYPE,
            Self::TunnelPort(_) => IPVS_DEST_ATTR_TUN_PORT,
            Self::TunnelFlags(_) => IPVS_DEST_ATTR_TUN_FLAGS,
            Self::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::Address(addr) => buffer.copy_from_slice(&addr.0),
            Self::Port(port) | Self::TunnelPort(port) => {
                emit_u16_be(buffer, *port).expect("2 bytes")
            }
            Self::ForwardingMethod(method) => emit_u32(buffer, (*method).into()).expect("4 bytes"),
            Self::Weight(v)
            | Self::UpperThreshold(v)
            | Self::LowerThreshold(v)
            | Self::ActiveConns(v)
            | Self::InactiveConns(v)
            | Self::PersistentConns(v) => emit_u32(buffer, *v).expect("4 bytes"),
            Self::Stats(attrs) => attrs.as_slice().emit(buffer),
            Self::Stats64(attrs) => attrs.as_slice().emit(buffer),
            Self::AddressFamily(family) => emit_u16(buffer, (*family).into()).expect("2 bytes"),
            Self::TunnelType(kind) => buffer[0] = (*kind).into(),
            Self::TunnelFlags(flags) => emit_u16(buffer, flags.bits()).expect("2 bytes"),
            Self::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl OwnNests for DestinationAttr {
    fn clear_nested_flags(&self, buffer: &mut [u8]) {
        if matches!(self, Self::Stats(_) | Self::Stats64(_)) {
            unflag_nest(buffer);
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for DestinationAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        let u32_of =
            |name: &str| parse_u32(payload).with_context(|| format!("invalid {name} value"));
        Ok(match buf.kind() {
            IPVS_DEST_ATTR_ADDR => Self::Address(
                InetAddr::parse(payload).context("invalid IPVS_DEST_ATTR_ADDR value")?,
            ),
            IPVS_DEST_ATTR_PORT => {
                Self::Port(parse_u16_be(payload).context("invalid IPVS_DEST_ATTR_PORT value")?)
            }
            IPVS_DEST_ATTR_FWD_METHOD => {
                Self::ForwardingMethod(u32_of("IPVS_DEST_ATTR_FWD_METHOD")?.into())
            }
            IPVS_DEST_ATTR_WEIGHT => Self::Weight(u32_of("IPVS_DEST_ATTR_WEIGHT")?),
            IPVS_DEST_ATTR_U_THRESH => Self::UpperThreshold(u32_of("IPVS_DEST_ATTR_U_THRESH")?),
            IPVS_DEST_ATTR_L_THRESH => Self::LowerThreshold(u32_of("IPVS_DEST_ATTR_L_THRESH")?),
            IPVS_DEST_ATTR_ACTIVE_CONNS => {
                Self::ActiveConns(u32_of("IPVS_DEST_ATTR_ACTIVE_CONNS")?)
            }
            IPVS_DEST_ATTR_INACT_CONNS => {
                Self::InactiveConns(u32_of("IPVS_DEST_ATTR_INACT_CONNS")?)
            }
            IPVS_DEST_ATTR_PERSIST_CONNS => {
                Self::PersistentConns(u32_of("IPVS_DEST_ATTR_PERSIST_CONNS")?)
            }
            IPVS_DEST_ATTR_STATS => {
                Self::Stats(parse_nlas(payload).context("invalid IPVS_DEST_ATTR_STATS value")?)
            }
            IPVS_DEST_ATTR_ADDR_FAMILY => Self::AddressFamily(
                parse_u16(payload)
                    .context("invalid IPVS_DEST_ATTR_ADDR_FAMILY value")?
                    .into(),
            ),
            IPVS_DEST_ATTR_STATS64 => {
                Self::Stats64(parse_nlas(payload).context("invalid IPVS_DEST_ATTR_STATS64 value")?)
            }
            IPVS_DEST_ATTR_TUN_TYPE => Self::TunnelType(
                parse_u8(payload)
                    .context("invalid IPVS_DEST_ATTR_TUN_TYPE value")?
                    .into(),
            ),
            IPVS_DEST_ATTR_TUN_PORT => Self::TunnelPort(
                parse_u16_be(payload).context("invalid IPVS_DEST_ATTR_TUN_PORT value")?,
            ),
            IPVS_DEST_ATTR_TUN_FLAGS => Self::TunnelFlags(TunnelFlags::from_bits_retain(
                parse_u16(payload).context("invalid IPVS_DEST_ATTR_TUN_FLAGS value")?,
            )),
            _ => Self::Other(DefaultNla::parse(buf).context("invalid IPVS destination attribute")?),
        })
    }
}
