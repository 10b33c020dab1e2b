//! Traffic counters: the nested IPVS_STATS_ATTR_* space, which the kernel
//! fills inside IPVS_SVC_ATTR_STATS(64) and IPVS_DEST_ATTR_STATS(64).

use netlink_packet_core::{
    emit_u32, emit_u64, parse_u32, parse_u64, DecodeError, DefaultNla, ErrorContext, Nla,
    NlaBuffer, Parseable,
};

const IPVS_STATS_ATTR_CONNS: u16 = 1;
const IPVS_STATS_ATTR_INPKTS: u16 = 2;
const IPVS_STATS_ATTR_OUTPKTS: u16 = 3;
const IPVS_STATS_ATTR_INBYTES: u16 = 4;
const IPVS_STATS_ATTR_OUTBYTES: u16 = 5;
const IPVS_STATS_ATTR_CPS: u16 = 6;
const IPVS_STATS_ATTR_INPPS: u16 = 7;
const IPVS_STATS_ATTR_OUTPPS: u16 = 8;
const IPVS_STATS_ATTR_INBPS: u16 = 9;
const IPVS_STATS_ATTR_OUTBPS: u16 = 10;
const IPVS_STATS_ATTR_PAD: u16 = 11;

/// One attribute of the 32-bit counters (`IPVS_*_ATTR_STATS`). The kernel
/// writes the byte counters as 64-bit even here (`nla_put_u64_64bit`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatsAttr {
    /// `IPVS_STATS_ATTR_CONNS`. Connections scheduled.
    Conns(u32),
    /// `IPVS_STATS_ATTR_INPKTS`. Incoming packets.
    InPkts(u32),
    /// `IPVS_STATS_ATTR_OUTPKTS`. Outgoing packets.
    OutPkts(u32),
    /// `IPVS_STATS_ATTR_INBYTES`. Incoming bytes.
    InBytes(u64),
    /// `IPVS_STATS_ATTR_OUTBYTES`. Outgoing bytes.
    OutBytes(u64),
    /// `IPVS_STATS_ATTR_CPS`. Current connection rate.
    Cps(u32),
    /// `IPVS_STATS_ATTR_INPPS`. Current incoming packet rate.
    InPps(u32),
    /// `IPVS_STATS_ATTR_OUTPPS`. Current outgoing packet rate.
    OutPps(u32),
    /// `IPVS_STATS_ATTR_INBPS`. Current incoming byte rate.
    InBps(u32),
    /// `IPVS_STATS_ATTR_OUTBPS`. Current outgoing byte rate.
    OutBps(u32),
    /// Alignment padding the kernel may insert before a 64-bit value.
    Pad(Vec<u8>),
    /// Anything else, kept as it came.
    Other(DefaultNla),
}

/// One attribute of the 64-bit counters (`IPVS_*_ATTR_STATS64`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stats64Attr {
    /// `IPVS_STATS_ATTR_CONNS`. Connections scheduled.
    Conns(u64),
    /// `IPVS_STATS_ATTR_INPKTS`. Incoming packets.
    InPkts(u64),
    /// `IPVS_STATS_ATTR_OUTPKTS`. Outgoing packets.
    OutPkts(u64),
    /// `IPVS_STATS_ATTR_INBYTES`. Incoming bytes.
    InBytes(u64),
    /// `IPVS_STATS_ATTR_OUTBYTES`. Outgoing bytes.
    OutBytes(u64),
    /// `IPVS_STATS_ATTR_CPS`. Current connection rate.
    Cps(u64),
    /// `IPVS_STATS_ATTR_INPPS`. Current incoming packet rate.
    InPps(u64),
    /// `IPVS_STATS_ATTR_OUTPPS`. Current outgoing packet rate.
    OutPps(u64),
    /// `IPVS_STATS_ATTR_INBPS`. Current incoming byte rate.
    InBps(u64),
    /// `IPVS_STATS_ATTR_OUTBPS`. Current outgoing byte rate.
    OutBps(u64),
    /// Alignment padding the kernel may insert before a 64-bit value.
    Pad(Vec<u8>),
    /// Anything else, kept as it came.
    Other(DefaultNla),
}

impl Nla for StatsAttr {
    fn value_len(&self) -> usize {
        match self {
            Self::InBytes(_) | Self::OutBytes(_) => 8,
            Self::Pad(bytes) => bytes.len(),
            Self::Other(nla) => nla.value_len(),
            _ => 4,
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::Conns(_) => IPVS_STATS_ATTR_CONNS,
            Self::InPkts(_) => IPVS_STATS_ATTR_INPKTS,
            Self::OutPkts(_) => IPVS_STATS_ATTR_OUTPKTS,
            Self::InBytes(_) => IPVS_STATS_ATTR_INBYTES,
            Self::OutBytes(_) => IPVS_STATS_ATTR_OUTBYTES,
            Self::Cps(_) => IPVS_STATS_ATTR_CPS,
            Self::InPps(_) => IPVS_STATS_ATTR_INPPS,
            Self::OutPps(_) => IPVS_STATS_ATTR_OUTPPS,
            Self::InBps(_) => IPVS_STATS_ATTR_INBPS,
            Self::OutBps(_) => IPVS_STATS_ATTR_OUTBPS,
            Self::Pad(_) => IPVS_STATS_ATTR_PAD,
            Self::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::Conns(v)
            | Self::InPkts(v)
            | Self::OutPkts(v)
            | Self::Cps(v)
            | Self::InPps(v)
            | Self::OutPps(v)
            | Self::InBps(v)
            | Self::OutBps(v) => emit_u32(buffer, *v).expect("value_len is 4"),
            Self::InBytes(v) | Self::OutBytes(v) => emit_u64(buffer, *v).expect("value_len is 8"),
            Self::Pad(bytes) => buffer.copy_from_slice(bytes),
            Self::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for StatsAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        let u32_of =
            |name: &str| parse_u32(payload).with_context(|| format!("invalid {name} value"));
        let u64_of =
            |name: &str| parse_u64(payload).with_context(|| format!("invalid {name} value"));
        Ok(match buf.kind() {
            IPVS_STATS_ATTR_CONNS => Self::Conns(u32_of("IPVS_STATS_ATTR_CONNS")?),
            IPVS_STATS_ATTR_INPKTS => Self::InPkts(u32_of("IPVS_STATS_ATTR_INPKTS")?),
            IPVS_STATS_ATTR_OUTPKTS => Self::OutPkts(u32_of("IPVS_STATS_ATTR_OUTPKTS")?),
            IPVS_STATS_ATTR_INBYTES => Self::InBytes(u64_of("IPVS_STATS_ATTR_INBYTES")?),
            IPVS_STATS_ATTR_OUTBYTES => Self::OutBytes(u64_of("IPVS_STATS_ATTR_OUTBYTES")?),
            IPVS_STATS_ATTR_CPS => Self::Cps(u32_of("IPVS_STATS_ATTR_CPS")?),
            IPVS_STATS_ATTR_INPPS => Self::InPps(u32_of("IPVS_STATS_ATTR_INPPS")?),
            IPVS_STATS_ATTR_OUTPPS => Self::OutPps(u32_of("IPVS_STATS_ATTR_OUTPPS")?),
            IPVS_STATS_ATTR_INBPS => Self::InBps(u32_of("IPVS_STATS_ATTR_INBPS")?),
            IPVS_STATS_ATTR_OUTBPS => Self::OutBps(u32_of("IPVS_STATS_ATTR_OUTBPS")?),
            IPVS_STATS_ATTR_PAD => Self::Pad(payload.to_vec()),
            _ => Self::Other(DefaultNla::parse(buf).context("invalid IPVS stats attribute")?),
        })
    }
}

impl Nla for Stats64Attr {
    fn value_len(&self) -> usize {
        match self {
            Self::Pad(bytes) => bytes.len(),
            Self::Other(nla) => nla.value_len(),
            _ => 8,
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::Conns(_) => IPVS_STATS_ATTR_CONNS,
            Self::InPkts(_) => IPVS_STATS_ATTR_INPKTS,
            Self::OutPkts(_) => IPVS_STATS_ATTR_OUTPKTS,
            Self::InBytes(_) => IPVS_STATS_ATTR_INBYTES,
            Self::OutBytes(_) => IPVS_STATS_ATTR_OUTBYTES,
            Self::Cps(_) => IPVS_STATS_ATTR_CPS,
            Self::InPps(_) => IPVS_STATS_ATTR_INPPS,
            Self::OutPps(_) => IPVS_STATS_ATTR_OUTPPS,
            Self::InBps(_) => IPVS_STATS_ATTR_INBPS,
            Self::OutBps(_) => IPVS_STATS_ATTR_OUTBPS,
            Self::Pad(_) => IPVS_STATS_ATTR_PAD,
            Self::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::Conns(v)
            | Self::InPkts(v)
            | Self::OutPkts(v)
            | Self::InBytes(v)
            | Self::OutBytes(v)
            | Self::Cps(v)
            | Self::InPps(v)
            | Self::OutPps(v)
            | Self::InBps(v)
            | Self::OutBps(v) => emit_u64(buffer, *v).expect("value_len is 8"),
            Self::Pad(bytes) => buffer.copy_from_slice(bytes),
            Self::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for Stats64Attr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        let u64_of =
            |name: &str| parse_u64(payload).with_context(|| format!("invalid {name} value"));
        Ok(match buf.kind() {
            IPVS_STATS_ATTR_CONNS => Self::Conns(u64_of("IPVS_STATS_ATTR_CONNS")?),
            IPVS_STATS_ATTR_INPKTS => Self::InPkts(u64_of("IPVS_STATS_ATTR_INPKTS")?),
            IPVS_STATS_ATTR_OUTPKTS => Self::OutPkts(u64_of("IPVS_STATS_ATTR_OUTPKTS")?),
            IPVS_STATS_ATTR_INBYTES => Self::InBytes(u64_of("IPVS_STATS_ATTR_INBYTES")?),
            IPVS_STATS_ATTR_OUTBYTES => Self::OutBytes(u64_of("IPVS_STATS_ATTR_OUTBYTES")?),
            IPVS_STATS_ATTR_CPS => Self::Cps(u64_of("IPVS_STATS_ATTR_CPS")?),
            IPVS_STATS_ATTR_INPPS => Self::InPps(u64_of("IPVS_STATS_ATTR_INPPS")?),
            IPVS_STATS_ATTR_OUTPPS => Self::OutPps(u64_of("IPVS_STATS_ATTR_OUTPPS")?),
            IPVS_STATS_ATTR_INBPS => Self::InBps(u64_of("IPVS_STATS_ATTR_INBPS")?),
            IPVS_STATS_ATTR_OUTBPS => Self::OutBps(u64_of("IPVS_STATS_ATTR_OUTBPS")?),
            IPVS_STATS_ATTR_PAD => Self::Pad(payload.to_vec()),
            _ => Self::Other(DefaultNla::parse(buf).context("invalid IPVS stats64 attribute")?),
        })
    }
}

/// The counters of a service or destination in the kernel's 32-bit format
/// (`struct ip_vs_stats_user`: packet counters and rates are 32-bit, byte
/// counters 64-bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Connections scheduled.
    pub conns: u32,
    /// Incoming packets.
    pub in_packets: u32,
    /// Outgoing packets.
    pub out_packets: u32,
    /// Incoming bytes.
    pub in_bytes: u64,
    /// Outgoing bytes.
    pub out_bytes: u64,
    /// Current connection rate.
    pub cps: u32,
    /// Current incoming packet rate.
    pub in_pps: u32,
    /// Current outgoing packet rate.
    pub out_pps: u32,
    /// Current incoming byte rate.
    pub in_bps: u32,
    /// Current outgoing byte rate.
    pub out_bps: u32,
}

/// The counters of a service or destination, all 64-bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats64 {
    /// Connections scheduled.
    pub conns: u64,
    /// Incoming packets.
    pub in_packets: u64,
    /// Outgoing packets.
    pub out_packets: u64,
    /// Incoming bytes.
    pub in_bytes: u64,
    /// Outgoing bytes.
    pub out_bytes: u64,
    /// Current connection rate.
    pub cps: u64,
    /// Current incoming packet rate.
    pub in_pps: u64,
    /// Current outgoing packet rate.
    pub out_pps: u64,
    /// Current incoming byte rate.
    pub in_bps: u64,
    /// Current outgoing byte rate.
    pub out_bps: u64,
}

impl Stats {
    /// The attributes in the order the kernel writes them.
    pub fn to_attrs(&self) -> Vec<StatsAttr> {
        vec![
            StatsAttr::Conns(self.conns),
            StatsAttr::InPkts(self.in_packets),
            StatsAttr::OutPkts(self.out_packets),
            StatsAttr::InBytes(self.in_bytes),
            StatsAttr::OutBytes(self.out_bytes),
            StatsAttr::Cps(self.cps),
            StatsAttr::InPps(self.in_pps),
            StatsAttr::OutPps(self.out_pps),
            StatsAttr::InBps(self.in_bps),
            StatsAttr::OutBps(self.out_bps),
        ]
    }

    /// Collects counters; a counter the kernel left out stays zero.
    pub fn from_attrs(attrs: &[StatsAttr]) -> Self {
        let mut stats = Self::default();
        for attr in attrs {
            match attr {
                StatsAttr::Conns(v) => stats.conns = *v,
                StatsAttr::InPkts(v) => stats.in_packets = *v,
                StatsAttr::OutPkts(v) => stats.out_packets = *v,
                StatsAttr::InBytes(v) => stats.in_bytes = *v,
                StatsAttr::OutBytes(v) => stats.out_bytes = *v,
                StatsAttr::Cps(v) => stats.cps = *v,
                StatsAttr::InPps(v) => stats.in_pps = *v,
                StatsAttr::OutPps(v) => stats.out_pps = *v,
                StatsAttr::InBps(v) => stats.in_bps = *v,
                StatsAttr::OutBps(v) => stats.out_bps = *v,
                StatsAttr::Pad(_) | StatsAttr::Other(_) => {}
            }
        }
        stats
    }
}

impl Stats64 {
    /// The attributes in the order the kernel writes them.
    pub fn to_attrs(&self) -> Vec<Stats64Attr> {
        vec![
            Stats64Attr::Conns(self.conns),
            Stats64Attr::InPkts(self.in_packets),
            Stats64Attr::OutPkts(self.out_packets),
            Stats64Attr::InBytes(self.in_bytes),
            Stats64Attr::OutBytes(self.out_bytes),
            Stats64Attr::Cps(self.cps),
            Stats64Attr::InPps(self.in_pps),
            Stats64Attr::OutPps(self.out_pps),
            Stats64Attr::InBps(self.in_bps),
            Stats64Attr::OutBps(self.out_bps),
        ]
    }

    /// Collects counters; a counter the kernel left out stays zero.
    pub fn from_attrs(attrs: &[Stats64Attr]) -> Self {
        let mut stats = Self::default();
        for attr in attrs {
            match attr {
                Stats64Attr::Conns(v) => stats.conns = *v,
                Stats64Attr::InPkts(v) => stats.in_packets = *v,
                Stats64Attr::OutPkts(v) => stats.out_packets = *v,
                Stats64Attr::InBytes(v) => stats.in_bytes = *v,
                Stats64Attr::OutBytes(v) => stats.out_bytes = *v,
                Stats64Attr::Cps(v) => stats.cps = *v,
                Stats64Attr::InPps(v) => stats.in_pps = *v,
                Stats64Attr::OutPps(v) => stats.out_pps = *v,
                Stats64Attr::InBps(v) => stats.in_bps = *v,
                Stats64Attr::OutBps(v) => stats.out_bps = *v,
                Stats64Attr::Pad(_) | Stats64Attr::Other(_) => {}
            }
        }
        stats
    }
}
