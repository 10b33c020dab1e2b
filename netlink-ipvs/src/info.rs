//! GET_INFO: the IPVS version and connection table size
//! (IPVS_INFO_ATTR_*, top-level attributes of the SET_INFO reply).

use netlink_packet_core::{
    emit_u32, parse_u32, DecodeError, DefaultNla, ErrorContext, Nla, NlaBuffer, Parseable,
};

use crate::error::{Error, Result};

const IPVS_INFO_ATTR_VERSION: u16 = 1;
const IPVS_INFO_ATTR_CONN_TAB_SIZE: u16 = 2;

/// One attribute of a GET_INFO reply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InfoAttr {
    /// `IPVS_INFO_ATTR_VERSION`: `IP_VS_VERSION_CODE`, e.g. 0x010201.
    Version(u32),
    /// `IPVS_INFO_ATTR_CONN_TAB_SIZE`.
    ConnTabSize(u32),
    /// Anything else, kept as it came.
    Other(DefaultNla),
}

impl Nla for InfoAttr {
    fn value_len(&self) -> usize {
        match self {
            Self::Version(_) | Self::ConnTabSize(_) => 4,
            Self::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::Version(_) => IPVS_INFO_ATTR_VERSION,
            Self::ConnTabSize(_) => IPVS_INFO_ATTR_CONN_TAB_SIZE,
            Self::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::Version(v) | Self::ConnTabSize(v) => emit_u32(buffer, *v).expect("4 bytes"),
            Self::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for InfoAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        Ok(match buf.kind() {
            IPVS_INFO_ATTR_VERSION => {
                Self::Version(parse_u32(payload).context("invalid IPVS_INFO_ATTR_VERSION value")?)
            }
            IPVS_INFO_ATTR_CONN_TAB_SIZE => Self::ConnTabSize(
                parse_u32(payload).context("invalid IPVS_INFO_ATTR_CONN_TAB_SIZE value")?,
            ),
            _ => Self::Other(DefaultNla::parse(buf).context("invalid IPVS info attribute")?),
        })
    }
}

/// What `ipvsadm -Ln` prints in its first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// `IP_VS_VERSION_CODE`: 0x010201 is 1.2.1.
    pub version: u32,
    /// Size of the connection hash table.
    pub conn_tab_size: u32,
}

impl Info {
    /// The version as ipvsadm prints it, e.g. "1.2.1".
    pub fn version_string(&self) -> String {
        let v = self.version;
        format!("{}.{}.{}", (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff)
    }

    /// The attributes in the kernel's order.
    pub fn to_attrs(&self) -> Vec<InfoAttr> {
        vec![
            InfoAttr::Version(self.version),
            InfoAttr::ConnTabSize(self.conn_tab_size),
        ]
    }

    /// Reads a GET_INFO reply's attributes.
    pub fn from_attrs(attrs: &[InfoAttr]) -> Result<Self> {
        let mut version = None;
        let mut conn_tab_size = None;
        for attr in attrs {
            match attr {
                InfoAttr::Version(v) => version = Some(*v),
                InfoAttr::ConnTabSize(v) => conn_tab_size = Some(*v),
                InfoAttr::Other(_) => {}
            }
        }
        let missing = |attribute| Error::MissingAttribute {
            object: "info",
            attribute,
        };
        Ok(Self {
            version: version.ok_or_else(|| missing("IPVS_INFO_ATTR_VERSION"))?,
            conn_tab_size: conn_tab_size.ok_or_else(|| missing("IPVS_INFO_ATTR_CONN_TAB_SIZE"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prints_like_ipvsadm() {
        let info = Info {
            version: 0x010201,
            conn_tab_size: 4096,
        };
        assert_eq!(info.version_string(), "1.2.1");
        assert_eq!(Info::from_attrs(&info.to_attrs()).unwrap(), info);
    }
}
