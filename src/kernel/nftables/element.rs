//! Set element keys: [`NftKey`] to the bytes a set holds and back.
//!
//! Every field of a key is padded to 4 bytes (nft's register layout):
//! `addr . proto . port` is 12 bytes in `ip`, 24 in `ip6`. Addresses and
//! ports are big-endian, the protocol one byte.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netlink_packet_core::{
    DefaultNla, Emitable, NlasIterator, NLA_F_NESTED, NLA_TYPE_MASK, NLM_F_CREATE,
};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementFlags,
    SetElementList, SetElementMessage,
};

use super::ruleset::{
    self, Field, Request, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE, TYPE_IP6ADDR, TYPE_IPADDR,
};
use super::KernelError;
use crate::desired::{NftElement, NftFamily, NftKey, NftSet, Protocol, NFT_TABLE};

/// The attributes of a NEWSETELEM reply that a dump's reading needs
/// (include/uapi/linux/netfilter/nf_tables.h).
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
/// struct nlmsghdr and struct nfgenmsg, before the attributes.
const HEADERS_LEN: usize = 16 + 4;
/// nlmsg_type of a NEWSETELEM: NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM.
const NEWSETELEM_TYPE: u16 = 10 << 8 | 12;

/// One field's type in a set key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FieldKind {
    Ipv4Addr,
    Ipv6Addr,
    InetProto,
    InetService,
}

impl FieldKind {
    /// nft's type number for the field (`ipv4_addr`, `ipv6_addr`,
    /// `inet_proto`, `inet_service`).
    pub fn nft_type(self) -> u32 {
        match self {
            FieldKind::Ipv4Addr => TYPE_IPADDR,
            FieldKind::Ipv6Addr => TYPE_IP6ADDR,
            FieldKind::InetProto => TYPE_INET_PROTOCOL,
            FieldKind::InetService => TYPE_INET_SERVICE,
        }
    }

    /// The field's own length, as NFTA_SET_DESC_CONCAT gives it.
    pub fn len(self) -> u32 {
        match self {
            FieldKind::Ipv4Addr => 4,
            FieldKind::Ipv6Addr => 16,
            FieldKind::InetProto => 1,
            FieldKind::InetService => 2,
        }
    }

    /// The field's length in the key: padded to whole 32-bit registers.
    pub fn padded_len(self) -> u32 {
        self.len().div_ceil(4) * 4
    }

    /// The field's type as `nft` writes it.
    pub fn name(self) -> &'static str {
        match self {
            FieldKind::Ipv4Addr => "ipv4_addr",
            FieldKind::Ipv6Addr => "ipv6_addr",
            FieldKind::InetProto => "inet_proto",
            FieldKind::InetService => "inet_service",
        }
    }
}

/// The key layout of a set, one per [`NftKey`] variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    AddrProtoPort,
    ProtoPort,
    Addr,
    AddrProtoPortSource,
    AddrProtoPortAddr,
    Cidr,
}

impl Shape {
    /// The shape each of the proxy's sets is declared with.
    pub fn of(set: NftSet) -> Shape {
        match set {
            NftSet::ClusterIps
            | NftSet::ExternalIps
            | NftSet::ExternalIpsLocal
            | NftSet::NoLocalEndpoints
            | NftSet::FirewallIps => Shape::AddrProtoPort,
            NftSet::NodePorts | NftSet::NodePortsNoLocalEndpoints => Shape::ProtoPort,
            NftSet::ServiceIps => Shape::Addr,
            NftSet::FirewallAllow => Shape::AddrProtoPortSource,
            NftSet::Hairpin => Shape::AddrProtoPortAddr,
            NftSet::LocalPodCidrs => Shape::Cidr,
        }
    }

    fn of_key(key: &NftKey) -> Shape {
        match key {
            NftKey::AddrProtoPort(..) => Shape::AddrProtoPort,
            NftKey::ProtoPort(..) => Shape::ProtoPort,
            NftKey::Addr(_) => Shape::Addr,
            NftKey::AddrProtoPortSource(..) => Shape::AddrProtoPortSource,
            NftKey::AddrProtoPortAddr(..) => Shape::AddrProtoPortAddr,
            NftKey::Cidr(_) => Shape::Cidr,
        }
    }

    /// The key's fields in the table of `family`.
    pub fn fields(self, family: NftFamily) -> &'static [FieldKind] {
        use FieldKind::*;
        match (self, family) {
            (Shape::AddrProtoPort, NftFamily::Ip) => &[Ipv4Addr, InetProto, InetService],
            (Shape::AddrProtoPort, NftFamily::Ip6) => &[Ipv6Addr, InetProto, InetService],
            (Shape::ProtoPort, _) => &[InetProto, InetService],
            (Shape::Addr | Shape::Cidr, NftFamily::Ip) => &[Ipv4Addr],
            (Shape::Addr | Shape::Cidr, NftFamily::Ip6) => &[Ipv6Addr],
            (Shape::AddrProtoPortSource | Shape::AddrProtoPortAddr, NftFamily::Ip) => {
                &[Ipv4Addr, InetProto, InetService, Ipv4Addr]
            }
            (Shape::AddrProtoPortSource | Shape::AddrProtoPortAddr, NftFamily::Ip6) => {
                &[Ipv6Addr, InetProto, InetService, Ipv6Addr]
            }
        }
    }

    pub fn is_interval(self) -> bool {
        matches!(self, Shape::AddrProtoPortSource | Shape::Cidr)
    }

    /// The `nft` type of the set: `ipv4_addr . inet_proto . inet_service`.
    pub fn nft_type(self, family: NftFamily) -> String {
        let names: Vec<&str> = self.fields(family).iter().map(|f| f.name()).collect();
        names.join(" . ")
    }

    /// The key field a rule's field loads in the table of `family`.
    pub fn field_of(field: Field, family: NftFamily) -> FieldKind {
        match (field, family) {
            (Field::Daddr | Field::Saddr, NftFamily::Ip) => FieldKind::Ipv4Addr,
            (Field::Daddr | Field::Saddr, NftFamily::Ip6) => FieldKind::Ipv6Addr,
            (Field::L4proto, _) => FieldKind::InetProto,
            (Field::Dport, _) => FieldKind::InetService,
        }
    }

    fn key_len(self, family: NftFamily) -> usize {
        self.fields(family)
            .iter()
            .map(|f| f.padded_len() as usize)
            .sum()
    }
}

/// `SET { KEY }` for error messages.
pub(super) fn describe(e: &NftElement) -> String {
    match e.key {
        NftKey::AddrProtoPort(a, p, port) => format!("{a} . {} . {port}", proto_name(p)),
        NftKey::ProtoPort(_, p, port) => format!("{} . {port}", proto_name(p)),
        NftKey::Addr(a) => a.to_string(),
        NftKey::AddrProtoPortSource(a, p, port, net) => {
            format!("{a} . {} . {port} . {}", proto_name(p), cidr_text(net))
        }
        NftKey::AddrProtoPortAddr(a, p, port, b) => {
            format!("{a} . {} . {port} . {b}", proto_name(p))
        }
        NftKey::Cidr(net) => cidr_text(net),
    }
}

/// A CIDR as nft prints it: a host route without its `/32`.
fn cidr_text(net: IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.trunc().to_string()
    }
}

pub(super) fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => libc::IPPROTO_TCP as u8,
        Protocol::Udp => libc::IPPROTO_UDP as u8,
        Protocol::Sctp => libc::IPPROTO_SCTP as u8,
    }
}

fn proto_of(number: u8) -> Option<Protocol> {
    match i32::from(number) {
        libc::IPPROTO_TCP => Some(Protocol::Tcp),
        libc::IPPROTO_UDP => Some(Protocol::Udp),
        libc::IPPROTO_SCTP => Some(Protocol::Sctp),
        _ => None,
    }
}

/// The key as the kernel holds it, checked against its set's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Encoded {
    /// One element: `key`, and `key_end` for a concatenation with an interval.
    Single {
        key: Vec<u8>,
        key_end: Option<Vec<u8>>,
    },
    /// An rbtree interval: the start, and the first address after it (none
    /// when the range runs to the family's last address).
    Range {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
}

/// Encodes `e`, or names the set and element when the key does not fit the set.
pub(super) fn encode(e: &NftElement) -> Result<Encoded, KernelError> {
    let shape = Shape::of(e.set);
    let invalid = |why: &str| {
        KernelError::Invalid(format!(
            "set {}: element {}: {why}",
            e.set.name(),
            describe(e)
        ))
    };
    let family = e.family();
    if Shape::of_key(&e.key) != shape {
        return Err(invalid(&format!(
            "the set's type is {}",
            shape.nft_type(family)
        )));
    }
    // Every address of a key is of the family of its first (the table's).
    let addr = |addr: IpAddr| {
        if NftFamily::of(addr) == family {
            Ok(octets(addr))
        } else {
            Err(invalid(&format!(
                "{addr} is not of family {family}, as the key's first address is"
            )))
        }
    };
    let mut key = Vec::with_capacity(40);
    Ok(match e.key {
        NftKey::AddrProtoPort(a, p, port) => {
            key.extend(addr(a)?);
            push_proto_port(&mut key, p, port);
            Encoded::Single { key, key_end: None }
        }
        NftKey::ProtoPort(_, p, port) => {
            push_proto_port(&mut key, p, port);
            Encoded::Single { key, key_end: None }
        }
        NftKey::Addr(a) => {
            key.extend(addr(a)?);
            Encoded::Single { key, key_end: None }
        }
        NftKey::AddrProtoPortAddr(a, p, port, b) => {
            key.extend(addr(a)?);
            push_proto_port(&mut key, p, port);
            key.extend(addr(b)?);
            Encoded::Single { key, key_end: None }
        }
        NftKey::AddrProtoPortSource(a, p, port, net) => {
            // pipapo: the start of every field, then the end of every field.
            key.extend(addr(a)?);
            push_proto_port(&mut key, p, port);
            let mut key_end = key.clone();
            key.extend(addr(net.network())?);
            key_end.extend(addr(net.broadcast())?);
            Encoded::Single {
                key,
                key_end: Some(key_end),
            }
        }
        NftKey::Cidr(net) => {
            let start = addr(net.network())?;
            let end = next_address(net.broadcast());
            Encoded::Range {
                start,
                end: end.map(octets),
            }
        }
    })
}

/// An address's bytes, network order.
fn octets(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The address after `addr`; none after the family's last.
fn next_address(addr: IpAddr) -> Option<IpAddr> {
    match addr {
        IpAddr::V4(a) => u32::from(a)
            .checked_add(1)
            .map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        IpAddr::V6(a) => u128::from(a)
            .checked_add(1)
            .map(|n| IpAddr::V6(Ipv6Addr::from(n))),
    }
}

fn push_proto_port(key: &mut Vec<u8>, p: Protocol, port: u16) {
    key.extend_from_slice(&[proto_number(p), 0, 0, 0]);
    key.extend_from_slice(&port.to_be_bytes());
    key.extend_from_slice(&[0, 0]);
}

/// The NFTA_LIST_ELEMs of one element: one, or two for an rbtree interval
/// (the start, then an NFT_SET_ELEM_INTERVAL_END element at the first
/// address after it). That is what nft 1.0.6 sends on 6.1: the kernel
/// refuses NFTA_SET_ELEM_KEY_END on a set without NFT_SET_CONCAT
/// (nft_setelem_valid_key_end), and rbtree sets have none.
pub(super) fn element_attributes(encoded: &Encoded) -> Vec<ListAttribute<SetElementAttribute>> {
    let key = |bytes: &[u8]| SetElementAttribute::Key(DataAttribute::Value(bytes.to_vec()));
    match encoded {
        Encoded::Single { key: k, key_end } => {
            let mut attrs = vec![key(k)];
            if let Some(end) = key_end {
                attrs.push(SetElementAttribute::KeyEnd(vec![end_nla(end)]));
            }
            vec![ListAttribute::Element(attrs)]
        }
        Encoded::Range { start, end } => {
            let mut elems = vec![ListAttribute::Element(vec![key(start)])];
            if let Some(end) = end {
                elems.push(ListAttribute::Element(vec![
                    SetElementAttribute::Flags(SetElementFlags::IntervalEnd),
                    key(end),
                ]));
            }
            elems
        }
    }
}

/// NFTA_SET_ELEM_KEY_END's NFTA_DATA_VALUE (the crate carries KeyEnd raw).
fn end_nla(bytes: &[u8]) -> DefaultNla {
    DefaultNla::new(NFTA_DATA_VALUE, bytes.to_vec())
}

/// Whether an element adds or deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Add,
    Delete,
}

/// One NEWSETELEM or DELSETELEM of `elements` of `set`, as nft sends it: an
/// add carries the set's transaction id and NLM_F_CREATE (an element that
/// exists is not an error without NLM_F_EXCL), a delete neither.
pub(super) fn message(
    op: Op,
    family: NftFamily,
    set: NftSet,
    elements: Vec<ListAttribute<SetElementAttribute>>,
) -> Request {
    let mut attributes = vec![
        SetElementList::Table(NFT_TABLE.to_owned()),
        SetElementList::Set(set.name().to_owned()),
    ];
    if op == Op::Add {
        attributes.push(SetElementList::SetId(ruleset::set_id(set)));
    }
    attributes.push(SetElementList::Elements(numbered(elements)));
    let message = SetElementMessage { attributes };
    match op {
        Op::Add => Request {
            family,
            message: NfTablesMessage::NewSetElement(message),
            flags: NLM_F_CREATE,
        },
        Op::Delete => Request {
            family,
            message: NfTablesMessage::DeleteSetElement(message),
            flags: 0,
        },
    }
}

/// The elements as libnftnl nests them: the i-th with attribute type i
/// (from 1) rather than NFTA_LIST_ELEM throughout. The kernel reads them
/// in order whatever their type; this keeps the bytes nft's.
fn numbered(
    elements: Vec<ListAttribute<SetElementAttribute>>,
) -> Vec<ListAttribute<SetElementAttribute>> {
    elements
        .into_iter()
        .enumerate()
        .map(|(i, element)| match element {
            ListAttribute::Element(attrs) if i > 0 => {
                let mut value = vec![0; attrs.as_slice().buffer_len()];
                attrs.as_slice().emit(&mut value);
                let kind = u16::try_from(i + 1).unwrap_or(u16::MAX) & NLA_TYPE_MASK;
                ListAttribute::Other(DefaultNla::new(kind | NLA_F_NESTED, value))
            }
            other => other,
        })
        .collect()
}

/// One element of a set dump, before intervals are paired.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dumped {
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
    interval_end: bool,
}

/// The keys of one set of the `family` table from its GETSETELEM dump:
/// each reply as the bytes of its netlink message. Interval elements come
/// back as CIDRs; interval-end markers are folded into them.
///
/// Read here rather than through netlink-packet-netfilter, whose parsing
/// of an element list formats the whole list once per element.
pub(super) fn decode<M: AsRef<[u8]>>(
    family: NftFamily,
    set: NftSet,
    messages: &[M],
) -> Result<Vec<NftElement>, KernelError> {
    let shape = Shape::of(set);
    let bad = |why: String| {
        KernelError::Other(format!(
            "set {} of table {family} {NFT_TABLE}: unreadable element: {why}",
            set.name()
        ))
    };
    let mut dumped = Vec::new();
    for message in messages {
        elements_of(message.as_ref(), &mut dumped).map_err(&bad)?;
    }
    let keys = if shape == Shape::Cidr {
        pair_ranges(family, &dumped).map_err(&bad)?
    } else {
        let mut keys = Vec::with_capacity(dumped.len());
        for d in dumped.iter().filter(|d| !d.interval_end) {
            keys.push(decode_key(family, shape, d).map_err(&bad)?);
        }
        keys
    };
    Ok(keys
        .into_iter()
        .map(|key| NftElement { set, key })
        .collect())
}

/// Appends the elements of one NEWSETELEM message to `out`.
fn elements_of(message: &[u8], out: &mut Vec<Dumped>) -> Result<(), String> {
    let attributes = message
        .get(HEADERS_LEN..)
        .ok_or_else(|| format!("a reply of {} bytes", message.len()))?;
    if u16::from_ne_bytes([message[4], message[5]]) != NEWSETELEM_TYPE {
        return Ok(());
    }
    for attr in NlasIterator::new(attributes) {
        let attr = attr.map_err(|e| format!("NFTA_SET_ELEM_LIST attribute: {e}"))?;
        if attr.kind() != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for element in NlasIterator::new(attr.value()) {
            let element = element.map_err(|e| format!("NFTA_LIST_ELEM: {e}"))?;
            if element.kind() == NFTA_LIST_ELEM {
                out.push(dumped_of(element.value())?);
            }
        }
    }
    Ok(())
}

/// One NFTA_LIST_ELEM's key, key end and interval-end flag.
fn dumped_of(element: &[u8]) -> Result<Dumped, String> {
    let mut key = None;
    let mut key_end = None;
    let mut interval_end = false;
    for attr in NlasIterator::new(element) {
        let attr = attr.map_err(|e| format!("NFTA_SET_ELEM attribute: {e}"))?;
        match attr.kind() {
            NFTA_SET_ELEM_KEY => key = Some(data_value(attr.value(), "NFTA_SET_ELEM_KEY")?),
            NFTA_SET_ELEM_KEY_END => {
                key_end = Some(data_value(attr.value(), "NFTA_SET_ELEM_KEY_END")?);
            }
            NFTA_SET_ELEM_FLAGS => {
                let flags: [u8; 4] = attr
                    .value()
                    .try_into()
                    .map_err(|_| format!("NFTA_SET_ELEM_FLAGS of {} bytes", attr.value().len()))?;
                interval_end = u32::from_be_bytes(flags) & NFT_SET_ELEM_INTERVAL_END != 0;
            }
            _ => {}
        }
    }
    let key = key.ok_or_else(|| "no NFTA_SET_ELEM_KEY".to_owned())?;
    Ok(Dumped {
        key,
        key_end,
        interval_end,
    })
}

/// The NFTA_DATA_VALUE nested in `what`.
fn data_value(nested: &[u8], what: &str) -> Result<Vec<u8>, String> {
    for attr in NlasIterator::new(nested) {
        let attr = attr.map_err(|e| format!("{what}: {e}"))?;
        if attr.kind() == NFTA_DATA_VALUE {
            return Ok(attr.value().to_vec());
        }
    }
    Err(format!("{what} without NFTA_DATA_VALUE"))
}

fn decode_key(family: NftFamily, shape: Shape, d: &Dumped) -> Result<NftKey, String> {
    let key = &d.key;
    let key_len = shape.key_len(family);
    if key.len() != key_len {
        return Err(format!(
            "key of {} bytes ({}), the set's type {} has {key_len}",
            key.len(),
            hex(key),
            shape.nft_type(family),
        ));
    }
    // The length check above keeps every slice below in bounds.
    let width = addr_width(family);
    let addr = |at: usize| address(family, &key[at..at + width]);
    let proto = |at: usize| {
        proto_of(key[at]).ok_or_else(|| format!("unknown protocol {} in {}", key[at], hex(key)))
    };
    let port = |at: usize| u16::from_be_bytes([key[at], key[at + 1]]);
    // After an address: the protocol, the port, then maybe another address.
    let (p, pt, second) = (width, width + 4, width + 8);
    Ok(match shape {
        Shape::AddrProtoPort => NftKey::AddrProtoPort(addr(0), proto(p)?, port(pt)),
        Shape::ProtoPort => NftKey::ProtoPort(family, proto(0)?, port(4)),
        Shape::Addr => NftKey::Addr(addr(0)),
        Shape::AddrProtoPortAddr => {
            NftKey::AddrProtoPortAddr(addr(0), proto(p)?, port(pt), addr(second))
        }
        Shape::AddrProtoPortSource => {
            let end = d
                .key_end
                .as_ref()
                .ok_or_else(|| format!("interval {} without NFTA_SET_ELEM_KEY_END", hex(key)))?;
            if end.len() != key.len() || end[..second] != key[..second] {
                return Err(format!(
                    "interval {} - {} is not one service and a CIDR",
                    hex(key),
                    hex(end)
                ));
            }
            let first = as_number(&key[second..]);
            let last = as_number(&end[second..]);
            let net = cidr(family, first, last)
                .ok_or_else(|| format!("interval {} - {} is not a CIDR", hex(key), hex(end)))?;
            NftKey::AddrProtoPortSource(addr(0), proto(p)?, port(pt), net)
        }
        Shape::Cidr => return Err("an rbtree element outside its interval".to_owned()),
    })
}

/// An address's length in a key of `family`.
fn addr_width(family: NftFamily) -> usize {
    match family {
        NftFamily::Ip => 4,
        NftFamily::Ip6 => 16,
    }
}

/// The address in `bytes`, of `family`'s width (callers check the length).
fn address(family: NftFamily, bytes: &[u8]) -> IpAddr {
    let n = as_number(bytes);
    match family {
        NftFamily::Ip => IpAddr::V4(Ipv4Addr::from(n as u32)),
        NftFamily::Ip6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// Big-endian bytes (at most 16) as a number.
fn as_number(bytes: &[u8]) -> u128 {
    bytes
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b))
}

/// The family's last address as a number.
fn last_address(family: NftFamily) -> u128 {
    match family {
        NftFamily::Ip => u128::from(u32::MAX),
        NftFamily::Ip6 => u128::MAX,
    }
}

/// Pairs an rbtree dump's starts with the interval-end elements that close
/// them. The dump comes in any order; intervals never overlap, so sorted
/// starts and ends alternate. An end with no start before it (nft's
/// leading `0.0.0.0` or `::` marker) is skipped; a last start without an
/// end runs to the family's last address.
fn pair_ranges(family: NftFamily, dumped: &[Dumped]) -> Result<Vec<NftKey>, String> {
    let width = addr_width(family);
    let mut points = Vec::with_capacity(dumped.len());
    for d in dumped {
        if d.key.len() != width {
            return Err(format!(
                "key of {} bytes ({}), {} has {width}",
                d.key.len(),
                hex(&d.key),
                Shape::Cidr.nft_type(family)
            ));
        }
        points.push((as_number(&d.key), !d.interval_end));
    }
    // Ends sort before starts at the same address: [a, b) then [b, c).
    points.sort_unstable();
    let mut keys = Vec::new();
    let mut open: Option<u128> = None;
    for (at, is_start) in points {
        match (open, is_start) {
            (None, true) => open = Some(at),
            (None, false) => {}
            (Some(start), false) => {
                keys.push(range_key(family, start, at.saturating_sub(1))?);
                open = None;
            }
            (Some(start), true) => {
                return Err(format!(
                    "interval starting at {} has no end before {}",
                    address_text(family, start),
                    address_text(family, at)
                ))
            }
        }
    }
    if let Some(start) = open {
        keys.push(range_key(family, start, last_address(family))?);
    }
    Ok(keys)
}

fn address_text(family: NftFamily, n: u128) -> String {
    let bytes = n.to_be_bytes();
    address(family, &bytes[16 - addr_width(family)..]).to_string()
}

/// The CIDR key of the interval `[first, last]`.
fn range_key(family: NftFamily, first: u128, last: u128) -> Result<NftKey, String> {
    cidr(family, first, last).map(NftKey::Cidr).ok_or_else(|| {
        format!(
            "interval {} - {} is not a CIDR",
            address_text(family, first),
            address_text(family, last)
        )
    })
}

/// The CIDR covering exactly `[first, last]`, if there is one.
fn cidr(family: NftFamily, first: u128, last: u128) -> Option<IpNet> {
    // A CIDR's span is all ones below its prefix, and its start is aligned.
    let span = last.checked_sub(first)?;
    if span & span.wrapping_add(1) != 0 || first & span != 0 || last > last_address(family) {
        return None;
    }
    let host_bits = span.count_ones() as u8;
    let bytes = first.to_be_bytes();
    match family {
        NftFamily::Ip => Ipv4Net::new(Ipv4Addr::from(first as u32), 32u8.checked_sub(host_bits)?)
            .ok()
            .map(IpNet::V4),
        NftFamily::Ip6 => Ipv6Net::new(Ipv6Addr::from(bytes), 128u8.checked_sub(host_bits)?)
            .ok()
            .map(IpNet::V6),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
