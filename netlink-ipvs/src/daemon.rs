//! Connection-sync daemons (IPVS_DAEMON_ATTR_*, nested in
//! IPVS_CMD_ATTR_DAEMON): `ipvsadm --start-daemon`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    emit_u16, emit_u32, parse_ipv6, parse_string, parse_u16, parse_u32, parse_u8, DecodeError,
    DefaultNla, ErrorContext, Nla, NlaBuffer, Parseable,
};

use crate::error::{Error, Result};

const IPVS_DAEMON_ATTR_STATE: u16 = 1;
const IPVS_DAEMON_ATTR_MCAST_IFN: u16 = 2;
const IPVS_DAEMON_ATTR_SYNC_ID: u16 = 3;
const IPVS_DAEMON_ATTR_SYNC_MAXLEN: u16 = 4;
const IPVS_DAEMON_ATTR_MCAST_GROUP: u16 = 5;
const IPVS_DAEMON_ATTR_MCAST_GROUP6: u16 = 6;
const IPVS_DAEMON_ATTR_MCAST_PORT: u16 = 7;
const IPVS_DAEMON_ATTR_MCAST_TTL: u16 = 8;

const IP_VS_STATE_MASTER: u32 = 0x0001;
const IP_VS_STATE_BACKUP: u32 = 0x0002;

/// One attribute of a sync daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DaemonAttr {
    /// `IPVS_DAEMON_ATTR_STATE`.
    State(DaemonState),
    /// `IPVS_DAEMON_ATTR_MCAST_IFN`: the multicast interface.
    McastIfn(String),
    /// `IPVS_DAEMON_ATTR_SYNC_ID`.
    SyncId(u32),
    /// `IPVS_DAEMON_ATTR_SYNC_MAXLEN`: UDP payload size.
    SyncMaxLen(u16),
    /// `IPVS_DAEMON_ATTR_MCAST_GROUP`: an IPv4 group (4 bytes, network order).
    McastGroup(Ipv4Addr),
    /// `IPVS_DAEMON_ATTR_MCAST_GROUP6`.
    McastGroup6(Ipv6Addr),
    /// `IPVS_DAEMON_ATTR_MCAST_PORT`: a native-order u16 (the kernel uses
    /// `nla_put_u16`, unlike the service and destination ports).
    McastPort(u16),
    /// `IPVS_DAEMON_ATTR_MCAST_TTL`.
    McastTtl(u8),
    /// Anything else, kept as it came.
    Other(DefaultNla),
}

/// The role of a sync daemon (`IP_VS_STATE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DaemonState {
    /// `IP_VS_STATE_MASTER`: sends connection state.
    Master,
    /// `IP_VS_STATE_BACKUP`: receives it.
    Backup,
    /// Any other value.
    Other(u32),
}

impl From<u32> for DaemonState {
    fn from(value: u32) -> Self {
        match value {
            IP_VS_STATE_MASTER => Self::Master,
            IP_VS_STATE_BACKUP => Self::Backup,
            other => Self::Other(other),
        }
    }
}

impl From<DaemonState> for u32 {
    fn from(value: DaemonState) -> Self {
        match value {
            DaemonState::Master => IP_VS_STATE_MASTER,
            DaemonState::Backup => IP_VS_STATE_BACKUP,
            DaemonState::Other(other) => other,
        }
    }
}

impl Nla for DaemonAttr {
    fn value_len(&self) -> usize {
        match self {
            Self::State(_) | Self::SyncId(_) | Self::McastGroup(_) => 4,
            Self::McastIfn(name) => name.len() + 1,
            Self::SyncMaxLen(_) | Self::McastPort(_) => 2,
            Self::McastGroup6(_) => 16,
            Self::McastTtl(_) => 1,
            Self::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::State(_) => IPVS_DAEMON_ATTR_STATE,
            Self::McastIfn(_) => IPVS_DAEMON_ATTR_MCAST_IFN,
            Self::SyncId(_) => IPVS_DAEMON_ATTR_SYNC_ID,
            Self::SyncMaxLen(_) => IPVS_DAEMON_ATTR_SYNC_MAXLEN,
            Self::McastGroup(_) => IPVS_DAEMON_ATTR_MCAST_GROUP,
            Self::McastGroup6(_) => IPVS_DAEMON_ATTR_MCAST_GROUP6,
            Self::McastPort(_) => IPVS_DAEMON_ATTR_MCAST_PORT,
            Self::McastTtl(_) => IPVS_DAEMON_ATTR_MCAST_TTL,
            Self::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::State(state) => emit_u32(buffer, (*state).into()).expect("4 bytes"),
            Self::McastIfn(name) => {
                buffer[..name.len()].copy_from_slice(name.as_bytes());
                buffer[name.len()] = 0;
            }
            Self::SyncId(v) => emit_u32(buffer, *v).expect("4 bytes"),
            Self::SyncMaxLen(v) | Self::McastPort(v) => emit_u16(buffer, *v).expect("2 bytes"),
            Self::McastGroup(addr) => buffer.copy_from_slice(&addr.octets()),
            Self::McastGroup6(addr) => buffer.copy_from_slice(&addr.octets()),
            Self::McastTtl(v) => buffer[0] = *v,
            Self::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for DaemonAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        Ok(match buf.kind() {
            IPVS_DAEMON_ATTR_STATE => Self::State(
                parse_u32(payload)
                    .context("invalid IPVS_DAEMON_ATTR_STATE value")?
                    .into(),
            ),
            IPVS_DAEMON_ATTR_MCAST_IFN => Self::McastIfn(
                parse_string(payload).context("invalid IPVS_DAEMON_ATTR_MCAST_IFN value")?,
            ),
            IPVS_DAEMON_ATTR_SYNC_ID => {
                Self::SyncId(parse_u32(payload).context("invalid IPVS_DAEMON_ATTR_SYNC_ID value")?)
            }
            IPVS_DAEMON_ATTR_SYNC_MAXLEN => Self::SyncMaxLen(
                parse_u16(payload).context("invalid IPVS_DAEMON_ATTR_SYNC_MAXLEN value")?,
            ),
            IPVS_DAEMON_ATTR_MCAST_GROUP => {
                let octets: [u8; 4] = payload.try_into().map_err(|_| {
                    DecodeError::from(format!(
                        "invalid IPVS_DAEMON_ATTR_MCAST_GROUP value: {} bytes, 4 expected",
                        payload.len()
                    ))
                })?;
                Self::McastGroup(Ipv4Addr::from(octets))
            }
            IPVS_DAEMON_ATTR_MCAST_GROUP6 => Self::McastGroup6(Ipv6Addr::from(
                parse_ipv6(payload).context("invalid IPVS_DAEMON_ATTR_MCAST_GROUP6 value")?,
            )),
            IPVS_DAEMON_ATTR_MCAST_PORT => Self::McastPort(
                parse_u16(payload).context("invalid IPVS_DAEMON_ATTR_MCAST_PORT value")?,
            ),
            IPVS_DAEMON_ATTR_MCAST_TTL => Self::McastTtl(
                parse_u8(payload).context("invalid IPVS_DAEMON_ATTR_MCAST_TTL value")?,
            ),
            _ => Self::Other(DefaultNla::parse(buf).context("invalid IPVS daemon attribute")?),
        })
    }
}

/// A sync daemon, as `ipvsadm --start-daemon` starts it and
/// `ipvsadm -L --daemon` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    /// Master or backup.
    pub state: DaemonState,
    /// The multicast interface (`--mcast-interface`).
    pub mcast_ifn: String,
    /// The sync ID (`--syncid`).
    pub sync_id: u32,
    /// UDP payload size (`--sync-maxlen`); the kernel always reports it.
    pub sync_maxlen: Option<u16>,
    /// Multicast group (`--mcast-group`).
    pub mcast_group: Option<IpAddr>,
    /// Multicast port (`--mcast-port`).
    pub mcast_port: Option<u16>,
    /// Multicast TTL (`--mcast-ttl`).
    pub mcast_ttl: Option<u8>,
}

impl Daemon {
    /// A daemon with the kernel's defaults for everything optional.
    pub fn new(state: DaemonState, mcast_ifn: impl Into<String>, sync_id: u32) -> Self {
        Self {
            state,
            mcast_ifn: mcast_ifn.into(),
            sync_id,
            sync_maxlen: None,
            mcast_group: None,
            mcast_port: None,
            mcast_ttl: None,
        }
    }

    /// The attributes in the kernel's order (ipvsadm's for the first three).
    pub fn to_attrs(&self) -> Vec<DaemonAttr> {
        let mut attrs = vec![
            DaemonAttr::State(self.state),
            DaemonAttr::McastIfn(self.mcast_ifn.clone()),
            DaemonAttr::SyncId(self.sync_id),
        ];
        if let Some(v) = self.sync_maxlen {
            attrs.push(DaemonAttr::SyncMaxLen(v));
        }
        if let Some(v) = self.mcast_port {
            attrs.push(DaemonAttr::McastPort(v));
        }
        if let Some(v) = self.mcast_ttl {
            attrs.push(DaemonAttr::McastTtl(v));
        }
        match self.mcast_group {
            Some(IpAddr::V4(v4)) => attrs.push(DaemonAttr::McastGroup(v4)),
            Some(IpAddr::V6(v6)) => attrs.push(DaemonAttr::McastGroup6(v6)),
            None => {}
        }
        attrs
    }

    /// Reads a daemon; STATE, MCAST_IFN and SYNC_ID are required.
    pub fn from_attrs(attrs: &[DaemonAttr]) -> Result<Self> {
        let mut state = None;
        let mut mcast_ifn = None;
        let mut sync_id = None;
        let mut daemon = Self::new(DaemonState::Other(0), String::new(), 0);
        for attr in attrs {
            match attr {
                DaemonAttr::State(v) => state = Some(*v),
                DaemonAttr::McastIfn(v) => mcast_ifn = Some(v.clone()),
                DaemonAttr::SyncId(v) => sync_id = Some(*v),
                DaemonAttr::SyncMaxLen(v) => daemon.sync_maxlen = Some(*v),
                DaemonAttr::McastGroup(v) => daemon.mcast_group = Some(IpAddr::V4(*v)),
                DaemonAttr::McastGroup6(v) => daemon.mcast_group = Some(IpAddr::V6(*v)),
                DaemonAttr::McastPort(v) => daemon.mcast_port = Some(*v),
                DaemonAttr::McastTtl(v) => daemon.mcast_ttl = Some(*v),
                DaemonAttr::Other(_) => {}
            }
        }
        let missing = |attribute| Error::MissingAttribute {
            object: "daemon",
            attribute,
        };
        daemon.state = state.ok_or_else(|| missing("IPVS_DAEMON_ATTR_STATE"))?;
        daemon.mcast_ifn = mcast_ifn.ok_or_else(|| missing("IPVS_DAEMON_ATTR_MCAST_IFN"))?;
        daemon.sync_id = sync_id.ok_or_else(|| missing("IPVS_DAEMON_ATTR_SYNC_ID"))?;
        Ok(daemon)
    }
}
