//! The ctnetlink wire format (include/uapi/linux/netfilter/nfnetlink.h and
//! nfnetlink_conntrack.h): the two requests the proxy sends, the part of a
//! dumped flow it reads, and the framing of the kernel's answers.
//!
//! A dumped flow carries a dozen attributes (status, timeout, counters,
//! protoinfo...). The reader walks them in place and keeps the four it needs,
//! so that a dump of 100,000 flows allocates nothing per flow.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_packet_core::{
    Emitable, Nla, NlasIterator, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};

// nfnetlink.h
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const NFNETLINK_V0: u8 = 0;

// nfnetlink_conntrack.h, enum cntl_msg_types
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

// enum ctattr_type
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;

// enum ctattr_tuple
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;

// enum ctattr_ip
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;

// enum ctattr_l4proto
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg`: family, version, res_id.
const NFGENMSG_LEN: usize = 4;

/// The message type of a ctnetlink command: subsystem in the high byte.
const fn ctnetlink_type(message: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | message
}

/// The address family of a conntrack table, as `nfgenmsg.nfgen_family`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub(super) fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    fn af(self) -> u8 {
        match self {
            Family::Ipv4 => libc::AF_INET as u8,
            Family::Ipv6 => libc::AF_INET6 as u8,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

/// One direction of a flow (`struct nf_conntrack_tuple`). Ports are 0 for
/// protocols whose tuple has none (ICMP identifies by type, code and id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Tuple {
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "protocol {} {} -> {}",
            self.protocol,
            SocketAddr::new(self.src, self.src_port),
            SocketAddr::new(self.dst, self.dst_port)
        )
    }
}

/// What the proxy reads of a dumped flow: enough to match it and to name it
/// in a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Flow {
    /// `CTA_TUPLE_ORIG`: the client's view, and the flow's identity.
    pub original: Tuple,
    /// `CTA_TUPLE_REPLY`: the answers' view; its source is the real server.
    pub reply: Tuple,
    /// `CTA_ZONE`, present only for a non-default zone.
    pub zone: Option<u16>,
    /// `CTA_ID`, opaque.
    pub id: Option<u32>,
}

impl Flow {
    pub(super) fn family(&self) -> Family {
        Family::of(self.original.src)
    }
}

/// The `IPCTNL_MSG_CT_GET` dump of one family's table, as `conntrack -L -f
/// ipv4|ipv6` asks for it: no attributes, so no filter.
pub(super) fn dump_request(family: Family, sequence: u32, out: &mut Vec<u8>) {
    emit_message(
        out,
        ctnetlink_type(IPCTNL_MSG_CT_GET),
        NLM_F_REQUEST | NLM_F_DUMP,
        sequence,
        family,
        &[],
    );
}

/// The `IPCTNL_MSG_CT_DELETE` of one flow, acknowledged. The kernel finds the
/// flow by its original tuple and zone; `CTA_ID` makes it answer ENOENT
/// rather than delete a newer flow that took over the same tuple since the
/// dump (a client that retried after its endpoint went away).
pub(super) fn delete_request(flow: &Flow, sequence: u32, out: &mut Vec<u8>) {
    let mut attrs = Vec::with_capacity(3);
    attrs.push(CtAttr::TupleOrig(flow.original));
    if let Some(zone) = flow.zone {
        attrs.push(CtAttr::Zone(zone));
    }
    if let Some(id) = flow.id {
        attrs.push(CtAttr::Id(id));
    }
    emit_message(
        out,
        ctnetlink_type(IPCTNL_MSG_CT_DELETE),
        NLM_F_REQUEST | NLM_F_ACK,
        sequence,
        flow.family(),
        &attrs,
    );
}

/// Appends one netlink message: header, `nfgenmsg`, attributes.
fn emit_message(
    out: &mut Vec<u8>,
    message_type: u16,
    flags: u16,
    sequence: u32,
    family: Family,
    attrs: &[CtAttr],
) {
    let length = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.buffer_len();
    let start = out.len();
    out.extend_from_slice(&(length as u32).to_ne_bytes());
    out.extend_from_slice(&message_type.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&sequence.to_ne_bytes());
    // Port 0: the kernel fills in the sender's port id.
    out.extend_from_slice(&0u32.to_ne_bytes());
    // res_id is big-endian and unused by ctnetlink.
    out.extend_from_slice(&[family.af(), NFNETLINK_V0, 0, 0]);
    let at = out.len();
    out.resize(start + length, 0);
    attrs.emit(&mut out[at..]);
}

/// The top-level attributes (`enum ctattr_type`) a delete carries.
#[derive(Clone, Debug, PartialEq, Eq)]
enum CtAttr {
    /// `CTA_TUPLE_ORIG`.
    TupleOrig(Tuple),
    /// `CTA_ZONE`, big-endian.
    Zone(u16),
    /// `CTA_ID`, big-endian as the dump gave it.
    Id(u32),
}

impl Nla for CtAttr {
    fn value_len(&self) -> usize {
        match self {
            CtAttr::TupleOrig(tuple) => tuple_attrs(tuple).as_slice().buffer_len(),
            CtAttr::Zone(_) => 2,
            CtAttr::Id(_) => 4,
        }
    }

    fn kind(&self) -> u16 {
        match self {
            CtAttr::TupleOrig(_) => CTA_TUPLE_ORIG,
            CtAttr::Zone(_) => CTA_ZONE,
            CtAttr::Id(_) => CTA_ID,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            CtAttr::TupleOrig(tuple) => tuple_attrs(tuple).as_slice().emit(buffer),
            CtAttr::Zone(zone) => buffer[..2].copy_from_slice(&zone.to_be_bytes()),
            CtAttr::Id(id) => buffer[..4].copy_from_slice(&id.to_be_bytes()),
        }
    }

    fn is_nested(&self) -> bool {
        matches!(self, CtAttr::TupleOrig(_))
    }
}

/// `enum ctattr_tuple`, nested in `CTA_TUPLE_ORIG`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TupleAttr {
    /// `CTA_TUPLE_IP`: source, then destination.
    Ip([IpAttr; 2]),
    /// `CTA_TUPLE_PROTO`: number, source port, destination port.
    Proto([ProtoAttr; 3]),
}

fn tuple_attrs(tuple: &Tuple) -> [TupleAttr; 2] {
    let (src, dst) = match (tuple.src, tuple.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => (IpAttr::V4Src(src), IpAttr::V4Dst(dst)),
        (IpAddr::V6(src), IpAddr::V6(dst)) => (IpAttr::V6Src(src), IpAttr::V6Dst(dst)),
        // The reader never builds a mixed tuple; mapping keeps the kernel's
        // per-family attributes consistent should one appear.
        (src, dst) => (IpAttr::V6Src(to_v6(src)), IpAttr::V6Dst(to_v6(dst))),
    };
    [
        TupleAttr::Ip([src, dst]),
        TupleAttr::Proto([
            ProtoAttr::Num(tuple.protocol),
            ProtoAttr::SrcPort(tuple.src_port),
            ProtoAttr::DstPort(tuple.dst_port),
        ]),
    ]
}

fn to_v6(addr: IpAddr) -> Ipv6Addr {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

impl Nla for TupleAttr {
    fn value_len(&self) -> usize {
        match self {
            TupleAttr::Ip(attrs) => attrs.as_slice().buffer_len(),
            TupleAttr::Proto(attrs) => attrs.as_slice().buffer_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            TupleAttr::Ip(_) => CTA_TUPLE_IP,
            TupleAttr::Proto(_) => CTA_TUPLE_PROTO,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            TupleAttr::Ip(attrs) => attrs.as_slice().emit(buffer),
            TupleAttr::Proto(attrs) => attrs.as_slice().emit(buffer),
        }
    }

    fn is_nested(&self) -> bool {
        true
    }
}

/// `enum ctattr_ip`, nested in `CTA_TUPLE_IP`: addresses in network order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum IpAttr {
    V4Src(Ipv4Addr),
    V4Dst(Ipv4Addr),
    V6Src(Ipv6Addr),
    V6Dst(Ipv6Addr),
}

impl Nla for IpAttr {
    fn value_len(&self) -> usize {
        match self {
            IpAttr::V4Src(_) | IpAttr::V4Dst(_) => 4,
            IpAttr::V6Src(_) | IpAttr::V6Dst(_) => 16,
        }
    }

    fn kind(&self) -> u16 {
        match self {
            IpAttr::V4Src(_) => CTA_IP_V4_SRC,
            IpAttr::V4Dst(_) => CTA_IP_V4_DST,
            IpAttr::V6Src(_) => CTA_IP_V6_SRC,
            IpAttr::V6Dst(_) => CTA_IP_V6_DST,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            IpAttr::V4Src(a) | IpAttr::V4Dst(a) => buffer[..4].copy_from_slice(&a.octets()),
            IpAttr::V6Src(a) | IpAttr::V6Dst(a) => buffer[..16].copy_from_slice(&a.octets()),
        }
    }
}

/// `enum ctattr_l4proto`, nested in `CTA_TUPLE_PROTO`: ports big-endian.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ProtoAttr {
    Num(u8),
    SrcPort(u16),
    DstPort(u16),
}

impl Nla for ProtoAttr {
    fn value_len(&self) -> usize {
        match self {
            ProtoAttr::Num(_) => 1,
            ProtoAttr::SrcPort(_) | ProtoAttr::DstPort(_) => 2,
        }
    }

    fn kind(&self) -> u16 {
        match self {
            ProtoAttr::Num(_) => CTA_PROTO_NUM,
            ProtoAttr::SrcPort(_) => CTA_PROTO_SRC_PORT,
            ProtoAttr::DstPort(_) => CTA_PROTO_DST_PORT,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            ProtoAttr::Num(n) => buffer[0] = *n,
            ProtoAttr::SrcPort(p) | ProtoAttr::DstPort(p) => {
                buffer[..2].copy_from_slice(&p.to_be_bytes())
            }
        }
    }
}

/// One netlink message of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Message<'a> {
    pub message_type: u16,
    pub flags: u16,
    pub sequence: u32,
    /// Everything after the netlink header.
    pub payload: &'a [u8],
}

impl Message<'_> {
    /// Whether this is a flow of a dump. Kernels since 5.x answer a dump
    /// with `IPCTNL_MSG_CT_NEW`; older ones echoed the request's `CT_GET`.
    pub(super) fn is_flow(&self) -> bool {
        self.message_type == ctnetlink_type(IPCTNL_MSG_CT_NEW)
            || self.message_type == ctnetlink_type(IPCTNL_MSG_CT_GET)
    }

    pub(super) fn is_done(&self) -> bool {
        self.message_type == NLMSG_DONE
    }

    pub(super) fn is_error(&self) -> bool {
        self.message_type == NLMSG_ERROR
    }

    /// The errno an `NLMSG_ERROR` or `NLMSG_DONE` carries, positive; 0 for
    /// an ACK or a clean end of dump.
    pub(super) fn errno(&self) -> Result<i32, String> {
        match self.payload.first_chunk::<4>() {
            Some(code) => Ok(i32::from_ne_bytes(*code).saturating_neg()),
            // NLMSG_DONE's int is all it says; without one, the dump simply ended.
            None if self.is_done() => Ok(0),
            None => Err(format!(
                "NLMSG_ERROR of sequence {} is truncated: {} of 4 bytes of error code",
                self.sequence,
                self.payload.len()
            )),
        }
    }
}

/// Splits a datagram into its netlink messages. A message whose header is
/// cut short or claims more bytes than remain ends the iteration with an
/// error: the rest of the datagram cannot be framed.
pub(super) fn messages(datagram: &[u8]) -> Messages<'_> {
    Messages { datagram, at: 0 }
}

/// The iterator of [`messages`].
#[derive(Debug)]
pub(super) struct Messages<'a> {
    datagram: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.datagram.get(self.at..).filter(|r| !r.is_empty())?;
        let at = self.at;
        self.at = self.datagram.len();
        let Some(header) = rest.first_chunk::<NLMSG_HDRLEN>() else {
            return Some(Err(format!(
                "netlink header at byte {at} of a {}-byte datagram is truncated: {} of 16 bytes",
                self.datagram.len(),
                rest.len()
            )));
        };
        let [l0, l1, l2, l3, t0, t1, f0, f1, s0, s1, s2, s3, ..] = *header;
        let length = u32::from_ne_bytes([l0, l1, l2, l3]) as usize;
        if length < NLMSG_HDRLEN || length > rest.len() {
            return Some(Err(format!(
                "netlink message at byte {at} of a {}-byte datagram claims {length} bytes, {} remain",
                self.datagram.len(),
                rest.len()
            )));
        }
        self.at = at.saturating_add((length + 3) & !3);
        Some(Ok(Message {
            message_type: u16::from_ne_bytes([t0, t1]),
            flags: u16::from_ne_bytes([f0, f1]),
            sequence: u32::from_ne_bytes([s0, s1, s2, s3]),
            payload: &rest[NLMSG_HDRLEN..length],
        }))
    }
}

/// Reads a dumped flow from the payload of its message (`nfgenmsg` and
/// attributes). The error names the attribute that failed.
pub(super) fn parse_flow(payload: &[u8]) -> Result<Flow, String> {
    let attrs = payload.get(NFGENMSG_LEN..).ok_or_else(|| {
        format!(
            "nfgenmsg is truncated: {} of {NFGENMSG_LEN} bytes",
            payload.len()
        )
    })?;
    let (mut original, mut reply, mut zone, mut id) = (None, None, None, None);
    for attr in NlasIterator::new(attrs) {
        let attr = attr.map_err(|e| format!("flow attribute: {e}"))?;
        let value = attr.value();
        match attr.kind() {
            CTA_TUPLE_ORIG => {
                original = Some(parse_tuple(value).map_err(|e| format!("CTA_TUPLE_ORIG: {e}"))?)
            }
            CTA_TUPLE_REPLY => {
                reply = Some(parse_tuple(value).map_err(|e| format!("CTA_TUPLE_REPLY: {e}"))?)
            }
            CTA_ZONE => zone = Some(u16::from_be_bytes(exact(value, "CTA_ZONE")?)),
            CTA_ID => id = Some(u32::from_be_bytes(exact(value, "CTA_ID")?)),
            _ => {}
        }
    }
    let original = original.ok_or("no CTA_TUPLE_ORIG")?;
    let reply = reply.ok_or("no CTA_TUPLE_REPLY")?;
    if Family::of(original.src) != Family::of(reply.src) {
        return Err(format!(
            "CTA_TUPLE_ORIG is {} but CTA_TUPLE_REPLY is {}",
            Family::of(original.src),
            Family::of(reply.src)
        ));
    }
    Ok(Flow {
        original,
        reply,
        zone,
        id,
    })
}

fn parse_tuple(value: &[u8]) -> Result<Tuple, String> {
    let (mut addrs, mut proto) = (None, None);
    for attr in NlasIterator::new(value) {
        let attr = attr.map_err(|e| format!("tuple attribute: {e}"))?;
        match attr.kind() {
            CTA_TUPLE_IP => {
                addrs = Some(parse_ip(attr.value()).map_err(|e| format!("CTA_TUPLE_IP: {e}"))?)
            }
            CTA_TUPLE_PROTO => {
                proto =
                    Some(parse_proto(attr.value()).map_err(|e| format!("CTA_TUPLE_PROTO: {e}"))?)
            }
            _ => {}
        }
    }
    let (src, dst) = addrs.ok_or("no CTA_TUPLE_IP")?;
    let (protocol, src_port, dst_port) = proto.ok_or("no CTA_TUPLE_PROTO")?;
    Ok(Tuple {
        protocol,
        src,
        dst,
        src_port,
        dst_port,
    })
}

fn parse_ip(value: &[u8]) -> Result<(IpAddr, IpAddr), String> {
    let (mut src, mut dst) = (None, None);
    for attr in NlasIterator::new(value) {
        let attr = attr.map_err(|e| format!("address attribute: {e}"))?;
        let value = attr.value();
        match attr.kind() {
            CTA_IP_V4_SRC => src = Some(IpAddr::from(exact::<4>(value, "CTA_IP_V4_SRC")?)),
            CTA_IP_V4_DST => dst = Some(IpAddr::from(exact::<4>(value, "CTA_IP_V4_DST")?)),
            CTA_IP_V6_SRC => src = Some(IpAddr::from(exact::<16>(value, "CTA_IP_V6_SRC")?)),
            CTA_IP_V6_DST => dst = Some(IpAddr::from(exact::<16>(value, "CTA_IP_V6_DST")?)),
            _ => {}
        }
    }
    match (src, dst) {
        (Some(src), Some(dst)) if Family::of(src) == Family::of(dst) => Ok((src, dst)),
        (Some(src), Some(dst)) => Err(format!(
            "source {src} and destination {dst} differ in family"
        )),
        (None, _) => Err("no source address".to_owned()),
        (_, None) => Err("no destination address".to_owned()),
    }
}

fn parse_proto(value: &[u8]) -> Result<(u8, u16, u16), String> {
    let (mut protocol, mut src_port, mut dst_port) = (None, 0, 0);
    for attr in NlasIterator::new(value) {
        let attr = attr.map_err(|e| format!("protocol attribute: {e}"))?;
        let value = attr.value();
        match attr.kind() {
            CTA_PROTO_NUM => protocol = Some(exact::<1>(value, "CTA_PROTO_NUM")?[0]),
            CTA_PROTO_SRC_PORT => {
                src_port = u16::from_be_bytes(exact(value, "CTA_PROTO_SRC_PORT")?)
            }
            CTA_PROTO_DST_PORT => {
                dst_port = u16::from_be_bytes(exact(value, "CTA_PROTO_DST_PORT")?)
            }
            _ => {}
        }
    }
    Ok((protocol.ok_or("no CTA_PROTO_NUM")?, src_port, dst_port))
}

/// The value of a fixed-size attribute, which must be exactly `N` bytes.
fn exact<const N: usize>(value: &[u8], name: &str) -> Result<[u8; N], String> {
    value
        .try_into()
        .map_err(|_| format!("{name} is {} bytes, expected {N}", value.len()))
}

// The expected bytes below are assembled by hand from the uapi layouts, on
// a little-endian host: `struct nlmsghdr` (u32 len, u16 type, u16 flags,
// u32 seq, u32 pid, all host order), `struct nfgenmsg` (u8 family, u8
// version, be16 res_id), then `struct nlattr`s (u16 len without padding,
// u16 type with NLA_F_NESTED = 0x8000 on nests, value padded to 4 bytes).
// The build host has no conntrack, so none is an nlmon capture.
#[cfg(all(test, target_endian = "little"))]
pub(super) mod tests {
    use super::*;

    /// The UDP flow of a DNS query through IPVS NAT: 192.0.2.2:40000 asked
    /// the service 10.96.0.10:53, the real server 10.244.2.5:53 answered.
    pub(in crate::kernel::conntrack) fn dns_flow() -> Flow {
        Flow {
            original: Tuple {
                protocol: 17,
                src: "192.0.2.2".parse().unwrap(),
                dst: "10.96.0.10".parse().unwrap(),
                src_port: 40000,
                dst_port: 53,
            },
            reply: Tuple {
                protocol: 17,
                src: "10.244.2.5".parse().unwrap(),
                dst: "192.0.2.2".parse().unwrap(),
                src_port: 53,
                dst_port: 40000,
            },
            zone: None,
            id: Some(0xdead_beef),
        }
    }

    /// A dump message for `flow` as ctnetlink_fill_info lays one out, with
    /// only the attributes the reader looks at.
    pub(in crate::kernel::conntrack) fn flow_message(flow: &Flow, sequence: u32) -> Vec<u8> {
        let tuple = |kind: u16, tuple: &Tuple| {
            let attrs = tuple_attrs(tuple);
            let mut value = vec![0; attrs.as_slice().buffer_len()];
            attrs.as_slice().emit(&mut value);
            nested(kind, &value)
        };
        let mut attrs = tuple(CTA_TUPLE_ORIG, &flow.original);
        attrs.extend(tuple(CTA_TUPLE_REPLY, &flow.reply));
        let mut tail = Vec::new();
        tail.extend(flow.zone.map(CtAttr::Zone));
        tail.extend(flow.id.map(CtAttr::Id));
        let at = attrs.len();
        attrs.resize(at + tail.as_slice().buffer_len(), 0);
        tail.as_slice().emit(&mut attrs[at..]);
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&ctnetlink_type(IPCTNL_MSG_CT_NEW).to_ne_bytes());
        out.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        out.extend_from_slice(&sequence.to_ne_bytes());
        out.extend_from_slice(&0x3039u32.to_ne_bytes());
        out.extend_from_slice(&[flow.family().af(), 0, 0, 0]);
        out.extend(attrs);
        out
    }

    fn nested(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = ((value.len() + 4) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&(kind | 0x8000).to_ne_bytes());
        out.extend_from_slice(value);
        out
    }

    /// The dump message of [`dns_flow`] as a 6.x kernel sends it with
    /// nf_conntrack_acct=1: attributes in ctnetlink_fill_info's order.
    #[rustfmt::skip]
    const DNS_FLOW_MESSAGE: &[u8] = &[
        // nlmsghdr: len 220, type 0x0100 (NFNL_SUBSYS_CTNETLINK << 8 |
        // IPCTNL_MSG_CT_NEW), flags NLM_F_MULTI, seq 1, pid 0x3039.
        0xdc, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00,
        0x01, 0x00, 0x00, 0x00, 0x39, 0x30, 0x00, 0x00,
        // nfgenmsg: AF_INET, NFNETLINK_V0, res_id 0.
        0x02, 0x00, 0x00, 0x00,
        // CTA_TUPLE_ORIG (1 | NESTED), 52 bytes.
        0x34, 0x00, 0x01, 0x80,
        //   CTA_TUPLE_IP (1 | NESTED), 20 bytes.
        0x14, 0x00, 0x01, 0x80,
        //     CTA_IP_V4_SRC 192.0.2.2, CTA_IP_V4_DST 10.96.0.10.
        0x08, 0x00, 0x01, 0x00, 0xc0, 0x00, 0x02, 0x02,
        0x08, 0x00, 0x02, 0x00, 0x0a, 0x60, 0x00, 0x0a,
        //   CTA_TUPLE_PROTO (2 | NESTED), 28 bytes.
        0x1c, 0x00, 0x02, 0x80,
        //     CTA_PROTO_NUM 17 (len 5, 3 bytes of padding).
        0x05, 0x00, 0x01, 0x00, 0x11, 0x00, 0x00, 0x00,
        //     CTA_PROTO_SRC_PORT 40000 = be 0x9c40, CTA_PROTO_DST_PORT 53.
        0x06, 0x00, 0x02, 0x00, 0x9c, 0x40, 0x00, 0x00,
        0x06, 0x00, 0x03, 0x00, 0x00, 0x35, 0x00, 0x00,
        // CTA_TUPLE_REPLY (2 | NESTED), 52 bytes.
        0x34, 0x00, 0x02, 0x80,
        0x14, 0x00, 0x01, 0x80,
        //     CTA_IP_V4_SRC 10.244.2.5, CTA_IP_V4_DST 192.0.2.2.
        0x08, 0x00, 0x01, 0x00, 0x0a, 0xf4, 0x02, 0x05,
        0x08, 0x00, 0x02, 0x00, 0xc0, 0x00, 0x02, 0x02,
        0x1c, 0x00, 0x02, 0x80,
        0x05, 0x00, 0x01, 0x00, 0x11, 0x00, 0x00, 0x00,
        //     CTA_PROTO_SRC_PORT 53, CTA_PROTO_DST_PORT 40000.
        0x06, 0x00, 0x02, 0x00, 0x00, 0x35, 0x00, 0x00,
        0x06, 0x00, 0x03, 0x00, 0x9c, 0x40, 0x00, 0x00,
        // CTA_STATUS (3): IPS_SEEN_REPLY | IPS_CONFIRMED, be32.
        0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x0a,
        // CTA_MARK (8): 0.
        0x08, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00,
        // CTA_ID (12): 0xdeadbeef.
        0x08, 0x00, 0x0c, 0x00, 0xde, 0xad, 0xbe, 0xef,
        // CTA_USE (11): 1.
        0x08, 0x00, 0x0b, 0x00, 0x00, 0x00, 0x00, 0x01,
        // CTA_TIMEOUT (7): 30 s.
        0x08, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x1e,
        // CTA_COUNTERS_ORIG (9 | NESTED), 28 bytes: CTA_COUNTERS_PACKETS (1)
        // be64 1, CTA_COUNTERS_BYTES (2) be64 61.
        0x1c, 0x00, 0x09, 0x80,
        0x0c, 0x00, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0x01,
        0x0c, 0x00, 0x02, 0x00, 0, 0, 0, 0, 0, 0, 0, 0x3d,
        // CTA_COUNTERS_REPLY (10 | NESTED): 1 packet, 77 bytes.
        0x1c, 0x00, 0x0a, 0x80,
        0x0c, 0x00, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0x01,
        0x0c, 0x00, 0x02, 0x00, 0, 0, 0, 0, 0, 0, 0, 0x4d,
    ];

    #[test]
    fn dump_request_is_a_bare_ct_get_with_nlm_f_dump() {
        #[rustfmt::skip]
        let ipv4: &[u8] = &[
            // nlmsghdr: len 20, type 0x0101 (CTNETLINK << 8 | IPCTNL_MSG_CT_GET),
            // flags 0x0301 (NLM_F_REQUEST | NLM_F_DUMP), seq 1, pid 0.
            0x14, 0x00, 0x00, 0x00, 0x01, 0x01, 0x01, 0x03,
            0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            // nfgenmsg: AF_INET (2), NFNETLINK_V0, res_id 0; no attributes.
            0x02, 0x00, 0x00, 0x00,
        ];
        let mut out = Vec::new();
        dump_request(Family::Ipv4, 1, &mut out);
        assert_eq!(out, ipv4);

        let mut ipv6 = ipv4.to_vec();
        ipv6[8] = 2; // seq 2
        ipv6[16] = 10; // AF_INET6
        out.clear();
        dump_request(Family::Ipv6, 2, &mut out);
        assert_eq!(out, ipv6);
    }

    #[test]
    fn delete_request_names_the_flow_by_its_original_tuple_and_id() {
        #[rustfmt::skip]
        let expected: &[u8] = &[
            // nlmsghdr: len 80, type 0x0102 (CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE),
            // flags 0x0005 (NLM_F_REQUEST | NLM_F_ACK), seq 7, pid 0.
            0x50, 0x00, 0x00, 0x00, 0x02, 0x01, 0x05, 0x00,
            0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            // nfgenmsg: AF_INET, NFNETLINK_V0, res_id 0.
            0x02, 0x00, 0x00, 0x00,
            // CTA_TUPLE_ORIG, byte for byte as in the dump.
            0x34, 0x00, 0x01, 0x80,
            0x14, 0x00, 0x01, 0x80,
            0x08, 0x00, 0x01, 0x00, 0xc0, 0x00, 0x02, 0x02,
            0x08, 0x00, 0x02, 0x00, 0x0a, 0x60, 0x00, 0x0a,
            0x1c, 0x00, 0x02, 0x80,
            0x05, 0x00, 0x01, 0x00, 0x11, 0x00, 0x00, 0x00,
            0x06, 0x00, 0x02, 0x00, 0x9c, 0x40, 0x00, 0x00,
            0x06, 0x00, 0x03, 0x00, 0x00, 0x35, 0x00, 0x00,
            // CTA_ID (12), be32 0xdeadbeef as the dump gave it.
            0x08, 0x00, 0x0c, 0x00, 0xde, 0xad, 0xbe, 0xef,
        ];
        let mut out = Vec::new();
        delete_request(&dns_flow(), 7, &mut out);
        assert_eq!(out, expected);
        // The same tuple bytes as the dump's CTA_TUPLE_ORIG.
        assert_eq!(out[20..72], DNS_FLOW_MESSAGE[20..72]);
    }

    #[test]
    fn delete_request_of_an_ipv6_flow_carries_its_zone() {
        let flow = Flow {
            original: Tuple {
                protocol: 132,
                src: "2001:db8::2".parse().unwrap(),
                dst: "fd00::10".parse().unwrap(),
                src_port: 40000,
                dst_port: 53,
            },
            reply: Tuple {
                protocol: 132,
                src: "fd00:244::5".parse().unwrap(),
                dst: "2001:db8::2".parse().unwrap(),
                src_port: 53,
                dst_port: 40000,
            },
            zone: Some(5),
            id: None,
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            // nlmsghdr: len 104, CT_DELETE, REQUEST | ACK, seq 1, pid 0.
            0x68, 0x00, 0x00, 0x00, 0x02, 0x01, 0x05, 0x00,
            0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            // nfgenmsg: AF_INET6 (10).
            0x0a, 0x00, 0x00, 0x00,
            // CTA_TUPLE_ORIG, 76 bytes; CTA_TUPLE_IP, 44 bytes.
            0x4c, 0x00, 0x01, 0x80,
            0x2c, 0x00, 0x01, 0x80,
            // CTA_IP_V6_SRC (3) 2001:db8::2, 20 bytes.
            0x14, 0x00, 0x03, 0x00,
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02,
            // CTA_IP_V6_DST (4) fd00::10.
            0x14, 0x00, 0x04, 0x00,
            0xfd, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
            // CTA_TUPLE_PROTO: CTA_PROTO_NUM 132 (SCTP), ports 40000 -> 53.
            0x1c, 0x00, 0x02, 0x80,
            0x05, 0x00, 0x01, 0x00, 0x84, 0x00, 0x00, 0x00,
            0x06, 0x00, 0x02, 0x00, 0x9c, 0x40, 0x00, 0x00,
            0x06, 0x00, 0x03, 0x00, 0x00, 0x35, 0x00, 0x00,
            // CTA_ZONE (18), be16 5, 2 bytes of padding.
            0x06, 0x00, 0x12, 0x00, 0x00, 0x05, 0x00, 0x00,
        ];
        let mut out = Vec::new();
        delete_request(&flow, 1, &mut out);
        assert_eq!(out, expected);
    }

    #[test]
    fn a_dumped_nat_flow_parses_into_its_two_tuples() {
        let messages: Vec<_> = messages(DNS_FLOW_MESSAGE).collect();
        assert_eq!(messages.len(), 1);
        let message = messages[0].clone().unwrap();
        assert!(message.is_flow());
        assert_eq!((message.flags, message.sequence), (2, 1));
        assert_eq!(parse_flow(message.payload), Ok(dns_flow()));
        // The test helper lays out the same message, less the attributes
        // the reader skips.
        let helper = flow_message(&dns_flow(), 1);
        let parsed = messages_of(&helper);
        assert_eq!(parse_flow(parsed[0].payload), Ok(dns_flow()));
    }

    fn messages_of(datagram: &[u8]) -> Vec<Message<'_>> {
        messages(datagram).map(Result::unwrap).collect()
    }

    #[test]
    fn a_datagram_splits_into_its_messages() {
        let mut datagram = flow_message(&dns_flow(), 1);
        // NLMSG_DONE: len 20, type 3, flags NLM_F_MULTI, seq 1, int 0.
        datagram.extend_from_slice(&[20, 0, 0, 0, 3, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        datagram.extend_from_slice(&0i32.to_ne_bytes());
        let messages = messages_of(&datagram);
        assert_eq!(messages.len(), 2);
        assert!(messages[0].is_flow());
        assert!(messages[1].is_done());
        assert_eq!(messages[1].errno(), Ok(0));
    }

    #[test]
    fn errors_carry_a_positive_errno() {
        // NLMSG_ERROR: error -2 (ENOENT), then the request's header.
        let mut datagram = vec![36, 0, 0, 0, 2, 0, 0, 1, 9, 0, 0, 0, 0, 0, 0, 0];
        datagram.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        datagram.extend_from_slice(&[0; 16]);
        let messages = messages_of(&datagram);
        assert!(messages[0].is_error());
        assert_eq!(messages[0].sequence, 9);
        assert_eq!(messages[0].errno(), Ok(libc::ENOENT));

        let truncated = [18, 0, 0, 0, 2, 0, 0, 1, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let error = messages_of(&truncated)[0].errno().unwrap_err();
        assert!(
            error.contains("NLMSG_ERROR of sequence 9 is truncated"),
            "{error}"
        );
    }

    #[test]
    fn a_datagram_that_cannot_be_framed_is_an_error() {
        let cases: &[(&str, &[u8], &str)] = &[
            (
                "short header",
                &[20, 0, 0, 0, 3, 0],
                "netlink header at byte 0",
            ),
            (
                "length past the end",
                &[40, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                "claims 40 bytes, 20 remain",
            ),
            (
                "length below a header",
                &[8, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
                "claims 8 bytes",
            ),
        ];
        for (name, datagram, expected) in cases {
            let results: Vec<_> = messages(datagram).collect();
            assert_eq!(results.len(), 1, "{name}");
            let error = results[0].clone().unwrap_err();
            assert!(error.contains(expected), "{name}: {error}");
        }
    }

    #[test]
    fn a_malformed_flow_is_an_error_naming_the_attribute() {
        let payload = &DNS_FLOW_MESSAGE[16..];
        let with = |at: usize, bytes: &[u8]| {
            let mut p = payload.to_vec();
            p[at..at + bytes.len()].copy_from_slice(bytes);
            p
        };
        // Offsets are into the payload: nfgenmsg at 0, CTA_TUPLE_ORIG at 4,
        // its CTA_TUPLE_IP at 8, CTA_IP_V4_SRC at 12, CTA_TUPLE_PROTO at 28,
        // CTA_PROTO_NUM at 32, CTA_TUPLE_REPLY at 56.
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "no nfgenmsg",
                payload[..3].to_vec(),
                "nfgenmsg is truncated",
            ),
            (
                "cut inside the orig tuple",
                payload[..30].to_vec(),
                "flow attribute",
            ),
            (
                "short address",
                with(12, &[0x07]),
                "CTA_TUPLE_ORIG: CTA_TUPLE_IP",
            ),
            (
                "address of 5 bytes",
                with(12, &[0x09]),
                "CTA_IP_V4_SRC is 5 bytes, expected 4",
            ),
            (
                "protocol renumbered away",
                with(34, &[0x0f]),
                "CTA_TUPLE_PROTO: no CTA_PROTO_NUM",
            ),
            ("no reply tuple", with(58, &[0x0f]), "no CTA_TUPLE_REPLY"),
            ("no orig tuple", with(6, &[0x0f]), "no CTA_TUPLE_ORIG"),
            (
                "IPv6 source in an IPv4 tuple",
                with(14, &[0x03]),
                "CTA_IP_V6_SRC is 4 bytes",
            ),
        ];
        for (name, payload, expected) in cases {
            let error = parse_flow(&payload).unwrap_err();
            assert!(error.contains(expected), "{name}: {error}");
        }
    }

    #[test]
    fn a_flow_without_ports_parses_with_port_zero() {
        // An ICMP flow: CTA_PROTO_NUM 1 and ICMP attributes (ids, type,
        // code) the reader does not keep.
        let mut payload = DNS_FLOW_MESSAGE[16..].to_vec();
        // CTA_PROTO_NUM of each tuple, then the port attributes' types.
        for num in [32, 84] {
            payload[num + 4] = 1;
            payload[num + 10] = 4; // CTA_PROTO_ICMP_ID
            payload[num + 18] = 5; // CTA_PROTO_ICMP_TYPE
        }
        let flow = parse_flow(&payload).unwrap();
        assert_eq!(flow.original.protocol, 1);
        assert_eq!((flow.original.src_port, flow.original.dst_port), (0, 0));
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            for message in messages(&bytes).flatten() {
                let _ = message.errno();
                let _ = parse_flow(message.payload);
            }
            let _ = parse_flow(&bytes);
        }

        #[test]
        fn a_damaged_flow_never_panics(
            at in 0..DNS_FLOW_MESSAGE.len(),
            byte in proptest::num::u8::ANY,
            cut in 0..=DNS_FLOW_MESSAGE.len(),
        ) {
            let mut damaged = DNS_FLOW_MESSAGE.to_vec();
            damaged[at] = byte;
            damaged.truncate(cut);
            for message in messages(&damaged).flatten() {
                if let Ok(flow) = parse_flow(message.payload) {
                    // Whatever parses can be named in a delete.
                    let mut out = Vec::new();
                    delete_request(&flow, 1, &mut out);
                    proptest::prop_assert!(messages(&out).all(|m| m.is_ok()));
                }
            }
        }
    }
}
