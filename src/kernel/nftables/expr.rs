//! The nf_tables expressions netlink-packet-netfilter 0.4 lacks (`ct`,
//! `fib`, `masq`, `reject`), one attribute enum per kernel attribute space
//! as the crate writes its own, and the constants the proxy's rules need.
//! They travel as the crate's `Expressions::Other`.

use netlink_packet_core::{
    emit_u32_be, parse_u32_be, parse_u8, DecodeError, DefaultNla, ErrorContext as _, Nla,
    NlaBuffer, Parseable,
};
use netlink_packet_netfilter::nftables::{Expressions, Register};

// Defined in Linux kernel: include/uapi/linux/netfilter/nf_tables.h
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;

const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;

const NFTA_BYTEORDER_SREG: u16 = 1;
const NFTA_BYTEORDER_DREG: u16 = 2;
const NFTA_BYTEORDER_OP: u16 = 3;
const NFTA_BYTEORDER_LEN: u16 = 4;
const NFTA_BYTEORDER_SIZE: u16 = 5;

const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_REJECT_ICMP_CODE: u16 = 2;

/// `enum nft_ct_keys`: NFT_CT_STATE.
pub(super) const NFT_CT_STATE: u32 = 0;
/// `enum nft_fib_result`: NFT_FIB_RESULT_ADDRTYPE.
pub(super) const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
/// `enum nft_fib_flags`: NFTA_FIB_F_DADDR.
pub(super) const NFTA_FIB_F_DADDR: u32 = 1 << 1;
/// `enum nft_byteorder_ops`: NFT_BYTEORDER_HTON.
pub(super) const NFT_BYTEORDER_HTON: u32 = 1;
/// `enum nft_reject_types`: NFT_REJECT_ICMP_UNREACH.
pub(super) const NFT_REJECT_ICMP_UNREACH: u32 = 0;
/// ICMP_PORT_UNREACH (include/uapi/linux/icmp.h).
pub(super) const ICMP_PORT_UNREACH: u8 = 3;
/// ICMPV6_PORT_UNREACH (include/uapi/linux/icmpv6.h).
pub(super) const ICMPV6_PORT_UNREACH: u8 = 4;
/// RTN_LOCAL (include/uapi/linux/rtnetlink.h): what `fib daddr type local` compares to.
pub(super) const RTN_LOCAL: u32 = 2;
/// `enum nft_lookup_flags`: NFT_LOOKUP_F_INV.
pub(super) const NFT_LOOKUP_F_INV: u32 = 1 << 0;
/// `enum nft_bitwise_ops`: NFT_BITWISE_BOOL, `(reg & mask) ^ xor`.
pub(super) const NFT_BITWISE_BOOL: u32 = 0;
/// `enum nft_payload_bases`: NFT_PAYLOAD_NETWORK_HEADER.
pub(super) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
/// `enum nft_payload_bases`: NFT_PAYLOAD_TRANSPORT_HEADER.
pub(super) const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
/// NF_CT_STATE_BIT(IP_CT_NEW) (include/uapi/linux/netfilter/nf_conntrack_common.h).
pub(super) const NF_CT_STATE_NEW_BIT: u32 = 1 << 3;
/// NF_DROP and NF_ACCEPT (include/uapi/linux/netfilter.h): verdict codes.
pub(super) const NF_DROP: u32 = 0;
pub(super) const NF_ACCEPT: u32 = 1;

/// The `ct` expression's attributes (NFTA_CT_*): loads conntrack state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ct {
    DestinationRegister(Register),
    /// `enum nft_ct_keys`.
    Key(u32),
    Other(DefaultNla),
}

impl Nla for Ct {
    fn value_len(&self) -> usize {
        match self {
            Self::DestinationRegister(_) | Self::Key(_) => 4,
            Self::Other(attr) => attr.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::DestinationRegister(_) => NFTA_CT_DREG,
            Self::Key(_) => NFTA_CT_KEY,
            Self::Other(attr) => attr.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::DestinationRegister(reg) => put_u32(buffer, (*reg).into()),
            Self::Key(key) => put_u32(buffer, *key),
            Self::Other(attr) => attr.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for Ct {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        Ok(match buf.kind() {
            NFTA_CT_DREG => Self::DestinationRegister(
                parse_u32_be(payload)
                    .context("invalid NFTA_CT_DREG value")?
                    .into(),
            ),
            NFTA_CT_KEY => Self::Key(parse_u32_be(payload).context("invalid NFTA_CT_KEY value")?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// The `fib` expression's attributes (NFTA_FIB_*): a route lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fib {
    DestinationRegister(Register),
    /// `enum nft_fib_result`.
    Result(u32),
    /// `enum nft_fib_flags`.
    Flags(u32),
    Other(DefaultNla),
}

impl Nla for Fib {
    fn value_len(&self) -> usize {
        match self {
            Self::DestinationRegister(_) | Self::Result(_) | Self::Flags(_) => 4,
            Self::Other(attr) => attr.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::DestinationRegister(_) => NFTA_FIB_DREG,
            Self::Result(_) => NFTA_FIB_RESULT,
            Self::Flags(_) => NFTA_FIB_FLAGS,
            Self::Other(attr) => attr.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::DestinationRegister(reg) => put_u32(buffer, (*reg).into()),
            Self::Result(value) | Self::Flags(value) => put_u32(buffer, *value),
            Self::Other(attr) => attr.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for Fib {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        Ok(match buf.kind() {
            NFTA_FIB_DREG => Self::DestinationRegister(
                parse_u32_be(payload)
                    .context("invalid NFTA_FIB_DREG value")?
                    .into(),
            ),
            NFTA_FIB_RESULT => {
                Self::Result(parse_u32_be(payload).context("invalid NFTA_FIB_RESULT value")?)
            }
            NFTA_FIB_FLAGS => {
                Self::Flags(parse_u32_be(payload).context("invalid NFTA_FIB_FLAGS value")?)
            }
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// The `byteorder` expression's attributes (NFTA_BYTEORDER_*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Byteorder {
    SourceRegister(Register),
    DestinationRegister(Register),
    /// `enum nft_byteorder_ops`.
    Op(u32),
    Len(u32),
    Size(u32),
    Other(DefaultNla),
}

impl Nla for Byteorder {
    fn value_len(&self) -> usize {
        match self {
            Self::Other(attr) => attr.value_len(),
            _ => 4,
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::SourceRegister(_) => NFTA_BYTEORDER_SREG,
            Self::DestinationRegister(_) => NFTA_BYTEORDER_DREG,
            Self::Op(_) => NFTA_BYTEORDER_OP,
            Self::Len(_) => NFTA_BYTEORDER_LEN,
            Self::Size(_) => NFTA_BYTEORDER_SIZE,
            Self::Other(attr) => attr.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::SourceRegister(reg) | Self::DestinationRegister(reg) => {
                put_u32(buffer, (*reg).into())
            }
            Self::Op(value) | Self::Len(value) | Self::Size(value) => put_u32(buffer, *value),
            Self::Other(attr) => attr.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for Byteorder {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        let value = |what: &'static str| parse_u32_be(payload).context(what);
        Ok(match buf.kind() {
            NFTA_BYTEORDER_SREG => {
                Self::SourceRegister(value("invalid NFTA_BYTEORDER_SREG value")?.into())
            }
            NFTA_BYTEORDER_DREG => {
                Self::DestinationRegister(value("invalid NFTA_BYTEORDER_DREG value")?.into())
            }
            NFTA_BYTEORDER_OP => Self::Op(value("invalid NFTA_BYTEORDER_OP value")?),
            NFTA_BYTEORDER_LEN => Self::Len(value("invalid NFTA_BYTEORDER_LEN value")?),
            NFTA_BYTEORDER_SIZE => Self::Size(value("invalid NFTA_BYTEORDER_SIZE value")?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// The `reject` expression's attributes (NFTA_REJECT_*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reject {
    /// `enum nft_reject_types`.
    Type(u32),
    /// The ICMP code, one byte.
    IcmpCode(u8),
    Other(DefaultNla),
}

impl Nla for Reject {
    fn value_len(&self) -> usize {
        match self {
            Self::Type(_) => 4,
            Self::IcmpCode(_) => 1,
            Self::Other(attr) => attr.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::Type(_) => NFTA_REJECT_TYPE,
            Self::IcmpCode(_) => NFTA_REJECT_ICMP_CODE,
            Self::Other(attr) => attr.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::Type(value) => put_u32(buffer, *value),
            Self::IcmpCode(code) => buffer[0] = *code,
            Self::Other(attr) => attr.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for Reject {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let payload = buf.value();
        Ok(match buf.kind() {
            NFTA_REJECT_TYPE => {
                Self::Type(parse_u32_be(payload).context("invalid NFTA_REJECT_TYPE value")?)
            }
            NFTA_REJECT_ICMP_CODE => {
                Self::IcmpCode(parse_u8(payload).context("invalid NFTA_REJECT_ICMP_CODE value")?)
            }
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// `ct` as the crate's expression list carries it.
pub(super) fn ct(attributes: &[Ct]) -> Expressions {
    other("ct", attributes)
}

/// `fib` as the crate's expression list carries it.
pub(super) fn fib(attributes: &[Fib]) -> Expressions {
    other("fib", attributes)
}

/// `byteorder` as the crate's expression list carries it.
pub(super) fn byteorder(attributes: &[Byteorder]) -> Expressions {
    other("byteorder", attributes)
}

/// `reject` as the crate's expression list carries it.
pub(super) fn reject(attributes: &[Reject]) -> Expressions {
    other("reject", attributes)
}

/// `masq` with no attributes: masquerade to the outgoing interface's address.
pub(super) fn masq() -> Expressions {
    Expressions::Other {
        expression_type: "masq".to_owned(),
        attributes: Vec::new(),
    }
}

fn other<N: Nla>(name: &str, attributes: &[N]) -> Expressions {
    Expressions::Other {
        expression_type: name.to_owned(),
        attributes: attributes.iter().map(to_default).collect(),
    }
}

fn to_default<N: Nla>(nla: &N) -> DefaultNla {
    let mut value = vec![0; nla.value_len()];
    nla.emit_value(&mut value);
    DefaultNla::new(nla.kind(), value)
}

fn put_u32(buffer: &mut [u8], value: u32) {
    // Nla::emit_value hands a buffer of exactly value_len() bytes: 4.
    let _ = emit_u32_be(buffer, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_parse_back() {
        let fib_attrs = [
            Fib::Flags(NFTA_FIB_F_DADDR),
            Fib::Result(NFT_FIB_RESULT_ADDRTYPE),
            Fib::DestinationRegister(Register::Reg1),
        ];
        for attr in fib_attrs {
            let nla = to_default(&attr);
            let mut bytes = vec![0; netlink_packet_core::Emitable::buffer_len(&nla)];
            netlink_packet_core::Emitable::emit(&nla, &mut bytes);
            assert_eq!(Fib::parse(&NlaBuffer::new(&bytes)).unwrap(), attr);
        }
        let code = to_default(&Reject::IcmpCode(ICMP_PORT_UNREACH));
        let mut bytes = vec![0; netlink_packet_core::Emitable::buffer_len(&code)];
        netlink_packet_core::Emitable::emit(&code, &mut bytes);
        assert_eq!(bytes, [5, 0, 2, 0, 3, 0, 0, 0]);
        assert_eq!(
            Reject::parse(&NlaBuffer::new(&bytes)).unwrap(),
            Reject::IcmpCode(ICMP_PORT_UNREACH)
        );
        let ct_key = to_default(&Ct::Key(NFT_CT_STATE));
        let mut bytes = vec![0; netlink_packet_core::Emitable::buffer_len(&ct_key)];
        netlink_packet_core::Emitable::emit(&ct_key, &mut bytes);
        assert_eq!(
            Ct::parse(&NlaBuffer::new(&bytes)).unwrap(),
            Ct::Key(NFT_CT_STATE)
        );
    }
}
