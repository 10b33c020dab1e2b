//! A blocking NETLINK_NETFILTER socket: nf_tables transactions (one
//! BATCH_BEGIN..BATCH_END in one sendmsg), gets and dumps.
//!
//! The kernel runs a batch only when BATCH_BEGIN and BATCH_END arrive in
//! the same sendmsg (an skb without BATCH_END is aborted), so a large
//! batch is one large send, with the send buffer grown to fit it, as nft
//! does. A NLMSG_NOOP with NLM_F_ACK follows it in its own sendmsg: its ACK
//! comes after every answer to the batch, so reading up to it collects
//! them all, even when the batch was refused as a whole.

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::NfTablesMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt};

use super::ruleset::Request;
use crate::desired::NftFamily;

/// NFNL_SUBSYS_NFTABLES (include/uapi/linux/netfilter/nfnetlink.h): the
/// res_id of an nf_tables batch.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// NFNL_MSG_BATCH_BEGIN / NFNL_MSG_BATCH_END.
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Error replies: only the header of the failed message is echoed, and
/// extended-ACK attributes follow it (include/uapi/linux/netlink.h).
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;

/// Replies to a batch of 10,000+ messages with an ACK each fit easily.
const RECEIVE_BUFFER: usize = 8 * 1024 * 1024;

/// Why a request failed: the kernel's errno, and what its extended ACK
/// said (a message, the offset of the attribute at fault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub errno: i32,
    pub message: Option<String>,
    pub offset: Option<u32>,
}

impl Refusal {
    fn io(e: &std::io::Error) -> Self {
        Refusal {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            message: Some(e.to_string()),
            offset: None,
        }
    }

    /// The errno as text, with the kernel's own message when it gave one.
    pub fn text(&self) -> String {
        let base = errno_text(self.errno);
        match &self.message {
            Some(m) if !m.is_empty() && *m != base => format!("{base} ({m})"),
            _ => base,
        }
    }
}

/// "File exists", without the "(os error 17)" std adds.
pub(super) fn errno_text(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// How a transaction failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BatchError {
    /// The socket or the batch as a whole (BATCH_BEGIN refused: no nf_tables).
    Whole(Refusal),
    /// The message at this index of the batch was refused; the kernel
    /// aborted the whole transaction.
    Message(usize, Refusal),
}

/// A NETLINK_NETFILTER socket.
#[derive(Debug)]
pub(super) struct NftSocket {
    socket: Socket,
    sequence: u32,
}

impl NftSocket {
    /// Opens and binds the socket. EPROTONOSUPPORT means no nfnetlink.
    pub fn open() -> Result<Self, Refusal> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| Refusal::io(&e))?;
        socket
            .bind_auto()
            .and_then(|_| socket.connect(&SocketAddr::new(0, 0)))
            .map_err(|e| Refusal::io(&e))?;
        // Best effort: without them, errors are terser and replies bigger.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        if setsockopt(&socket, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
            let _ = setsockopt(&socket, sockopt::RcvBuf, &RECEIVE_BUFFER);
        }
        Ok(NftSocket {
            socket,
            sequence: 0,
        })
    }

    fn next_sequence(&mut self) -> u32 {
        self.sequence = self.sequence.wrapping_add(1);
        self.sequence
    }

    /// Runs `requests` as one nf_tables transaction, every message with
    /// NLM_F_ACK. All or nothing: the first refusal is returned, by index.
    pub fn transact(&mut self, requests: &[Request]) -> Result<(), BatchError> {
        let begin = self.next_sequence();
        let mut bytes = Vec::new();
        push(&mut bytes, &control(NFNL_MSG_BATCH_BEGIN, begin));
        let first = begin.wrapping_add(1);
        for request in requests {
            let sequence = self.next_sequence();
            let message = netfilter_message(
                request.family,
                request.message.clone(),
                NLM_F_REQUEST | NLM_F_ACK | request.flags,
                sequence,
            );
            push(&mut bytes, &message);
        }
        let end = self.next_sequence();
        push(&mut bytes, &control(NFNL_MSG_BATCH_END, end));

        // A batch must be one skb, which the send buffer bounds.
        let wanted = bytes.len() + 64 * 1024;
        if setsockopt(&self.socket, sockopt::SndBufForce, &wanted).is_err() {
            let _ = setsockopt(&self.socket, sockopt::SndBuf, &wanted);
        }
        self.socket
            .send(&bytes, 0)
            .map_err(|e| BatchError::Whole(Refusal::io(&e)))?;
        let barrier = self.send_barrier().map_err(BatchError::Whole)?;

        let mut first_error: Option<(u32, Refusal)> = None;
        let mut whole: Option<Refusal> = None;
        self.read_until(barrier, Decode::Parsed, |sequence, reply| {
            if let Reply::Error(refusal) = reply {
                if sequence == begin || sequence == end {
                    whole.get_or_insert(refusal);
                } else {
                    let index = sequence.wrapping_sub(first);
                    if (index as usize) < requests.len()
                        && first_error.as_ref().is_none_or(|(i, _)| index < *i)
                    {
                        first_error = Some((index, refusal));
                    }
                }
            }
            Ok(())
        })
        .map_err(BatchError::Whole)?;
        if let Some((index, refusal)) = first_error {
            return Err(BatchError::Message(index as usize, refusal));
        }
        match whole {
            Some(refusal) => Err(BatchError::Whole(refusal)),
            None => Ok(()),
        }
    }

    /// Sends one request outside a batch (a GETTABLE) and returns its answer.
    pub fn get(
        &mut self,
        message: NfTablesMessage,
        family: NetfilterProtoFamily,
    ) -> Result<NfTablesMessage, Refusal> {
        let answers = self.request(message, family, NLM_F_REQUEST | NLM_F_ACK, Decode::Parsed)?;
        let parsed = answers.into_iter().find_map(|answer| match answer {
            Answer::Parsed(m) => Some(m),
            Answer::Raw(_) => None,
        });
        parsed.ok_or(Refusal {
            errno: libc::ENOENT,
            message: Some("no answer".to_owned()),
            offset: None,
        })
    }

    /// Dumps: every answer to an NLM_F_DUMP request.
    pub fn dump(
        &mut self,
        message: NfTablesMessage,
        family: NetfilterProtoFamily,
    ) -> Result<Vec<NfTablesMessage>, Refusal> {
        let answers = self.request(message, family, NLM_F_REQUEST | NLM_F_DUMP, Decode::Parsed)?;
        Ok(answers
            .into_iter()
            .filter_map(|answer| match answer {
                Answer::Parsed(m) => Some(m),
                Answer::Raw(_) => None,
            })
            .collect())
    }

    /// Dumps, handing back each answer as the bytes of its netlink message,
    /// unparsed: for set elements, whose parsing in netlink-packet-netfilter
    /// formats the whole message once per element (quadratic; 20,000
    /// elements took seconds of CPU).
    pub fn dump_raw(
        &mut self,
        message: NfTablesMessage,
        family: NetfilterProtoFamily,
    ) -> Result<Vec<Vec<u8>>, Refusal> {
        let answers = self.request(message, family, NLM_F_REQUEST | NLM_F_DUMP, Decode::Raw)?;
        Ok(answers
            .into_iter()
            .filter_map(|answer| match answer {
                Answer::Raw(bytes) => Some(bytes),
                Answer::Parsed(_) => None,
            })
            .collect())
    }

    fn request(
        &mut self,
        message: NfTablesMessage,
        family: NetfilterProtoFamily,
        flags: u16,
        decode: Decode,
    ) -> Result<Vec<Answer>, Refusal> {
        let sequence = self.next_sequence();
        let mut netlink = NetlinkMessage::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            message,
        ));
        netlink.header.flags = flags;
        netlink.header.sequence_number = sequence;
        netlink.finalize();
        let mut bytes = Vec::new();
        push(&mut bytes, &netlink);
        self.socket.send(&bytes, 0).map_err(|e| Refusal::io(&e))?;
        // A dump ends with NLMSG_DONE, a get with its ACK; either may be an
        // error instead. (A barrier would be answered mid-dump: the kernel
        // fills the rest of a dump as it is read.)
        let mut answers = Vec::new();
        let mut refusal = None;
        self.read_until(sequence, decode, |seq, reply| {
            if seq != sequence {
                return Ok(());
            }
            match reply {
                Reply::Message(m) => answers.push(Answer::Parsed(m)),
                Reply::Raw(bytes) => answers.push(Answer::Raw(bytes)),
                Reply::Error(r) => refusal = Some(r),
                Reply::Done | Reply::Ack => {}
            }
            Ok(())
        })?;
        match refusal {
            Some(r) => Err(r),
            None => Ok(answers),
        }
    }

    fn send_barrier(&mut self) -> Result<u32, Refusal> {
        let sequence = self.next_sequence();
        let mut header = NetlinkHeader::default();
        header.message_type = NLMSG_NOOP;
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = sequence;
        header.length = 16;
        let mut bytes = vec![0; 16];
        netlink_packet_core::Emitable::emit(&header, &mut bytes);
        self.socket.send(&bytes, 0).map_err(|e| Refusal::io(&e))?;
        Ok(sequence)
    }

    /// Reads replies, handing each to `each`, until the one that ends the
    /// request `last` (its ACK, error or NLMSG_DONE), which is handed too.
    fn read_until(
        &mut self,
        last: u32,
        decode: Decode,
        mut each: impl FnMut(u32, Reply) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(|e| Refusal::io(&e))?;
            let mut at = 0;
            while at < datagram.len() {
                let Ok(buffer) = NetlinkBuffer::new_checked(&datagram[at..]) else {
                    return Err(Refusal {
                        errno: libc::EBADMSG,
                        message: Some(format!("truncated netlink reply at byte {at}")),
                        offset: None,
                    });
                };
                let length = buffer.length() as usize;
                let sequence = buffer.sequence_number();
                let bytes = &datagram[at..at + length];
                at += (length + 3) & !3;
                let reply = match decode {
                    Decode::Parsed => parse_reply(bytes)?,
                    Decode::Raw => raw_reply(bytes)?,
                };
                let ends = sequence == last && !matches!(reply, Reply::Message(_) | Reply::Raw(_));
                each(sequence, reply)?;
                if ends {
                    return Ok(());
                }
            }
        }
    }
}

/// One reply from the kernel.
#[derive(Debug)]
enum Reply {
    Message(NfTablesMessage),
    /// A message left unparsed ([`Decode::Raw`]): its bytes, header included.
    Raw(Vec<u8>),
    Ack,
    Done,
    Error(Refusal),
}

/// Whether a request's answers are parsed into [`NfTablesMessage`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decode {
    Parsed,
    Raw,
}

/// One answer to a get or dump.
#[derive(Debug)]
enum Answer {
    Parsed(NfTablesMessage),
    Raw(Vec<u8>),
}

/// As [`parse_reply`], leaving messages other than ACKs, errors and
/// NLMSG_DONE as bytes.
fn raw_reply(bytes: &[u8]) -> Result<Reply, Refusal> {
    match u16::from_ne_bytes([bytes[4], bytes[5]]) {
        NLMSG_DONE | NLMSG_ERROR => parse_reply(bytes),
        _ => Ok(Reply::Raw(bytes.to_vec())),
    }
}

fn parse_reply(bytes: &[u8]) -> Result<Reply, Refusal> {
    let bad = |why: String| Refusal {
        errno: libc::EBADMSG,
        message: Some(why),
        offset: None,
    };
    let flags = u16::from_ne_bytes([bytes[6], bytes[7]]);
    match u16::from_ne_bytes([bytes[4], bytes[5]]) {
        NLMSG_DONE => Ok(Reply::Done),
        NLMSG_ERROR => {
            let code = bytes
                .get(16..20)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| bad("short error reply".to_owned()))?;
            if code == 0 {
                return Ok(Reply::Ack);
            }
            Ok(Reply::Error(error_of(bytes, code, flags)))
        }
        _ => {
            // netlink-packet-netfilter 0.4 reads some nested values (set
            // element keys, expressions) with unchecked buffers and panics
            // on a length that overruns its attribute: a malformed reply
            // must be an error here, not the end of the proxy.
            let decoded =
                std::panic::catch_unwind(|| NetlinkMessage::<NetfilterMessage>::deserialize(bytes))
                    .map_err(|_| {
                        bad(
                            "undecodable nf_tables reply: an attribute overruns its parent"
                                .to_owned(),
                        )
                    })?;
            let message = decoded.map_err(|e| bad(format!("undecodable nf_tables reply: {e}")))?;
            match message.payload {
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::NfTables(m),
                    ..
                }) => Ok(Reply::Message(m)),
                _ => Ok(Reply::Ack),
            }
        }
    }
}

/// A refusal and its extended-ACK attributes.
fn error_of(bytes: &[u8], code: i32, flags: u16) -> Refusal {
    let mut refusal = Refusal {
        // i32::MIN has no negation; no real errno is that large.
        errno: code.saturating_neg(),
        message: None,
        offset: None,
    };
    if flags & NLM_F_ACK_TLVS == 0 {
        return refusal;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        bytes.get(20..24).map_or(16, |b| {
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
    };
    let mut at = 20 + ((echoed + 3) & !3);
    while let Some(header) = bytes.get(at..at + 4) {
        let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let kind = u16::from_ne_bytes([header[2], header[3]]) & 0x3fff;
        let Some(value) = bytes.get(at + 4..at + len.max(4)) else {
            break;
        };
        match kind {
            NLMSGERR_ATTR_MSG => {
                let text = value.split(|b| *b == 0).next().unwrap_or_default();
                refusal.message = Some(String::from_utf8_lossy(text).into_owned());
            }
            NLMSGERR_ATTR_OFFS if value.len() >= 4 => {
                refusal.offset = Some(u32::from_ne_bytes([value[0], value[1], value[2], value[3]]));
            }
            _ => {}
        }
        if len < 4 {
            break;
        }
        at += (len + 3) & !3;
    }
    refusal
}

/// A batch's BATCH_BEGIN or BATCH_END: res_id NFNL_SUBSYS_NFTABLES.
fn control(kind: u16, sequence: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.message_type = kind;
    header.flags = NLM_F_REQUEST;
    header.sequence_number = sequence;
    header.length = 20;
    let mut bytes = vec![0; 20];
    netlink_packet_core::Emitable::emit(&header, &mut bytes);
    // struct nfgenmsg: family AF_UNSPEC, version NFNETLINK_V0, res_id (big-endian).
    bytes[18..20].copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
    bytes
}

/// The nfgenmsg family of a table's requests.
pub(super) fn proto_family(family: NftFamily) -> NetfilterProtoFamily {
    match family {
        NftFamily::Ip => NetfilterProtoFamily::IPv4,
        NftFamily::Ip6 => NetfilterProtoFamily::IPv6,
    }
}

/// The netlink message of one nf_tables request for the table of `family`.
pub(super) fn netfilter_message(
    family: NftFamily,
    message: NfTablesMessage,
    flags: u16,
    sequence: u32,
) -> NetlinkMessage<NetfilterMessage> {
    let mut netlink = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(proto_family(family), 0, 0),
        message,
    ));
    netlink.header.flags = flags;
    netlink.header.sequence_number = sequence;
    netlink.finalize();
    netlink
}

/// Serializes a finalized message onto `bytes`.
pub(super) fn push<M: Serialized>(bytes: &mut Vec<u8>, message: &M) {
    message.append_to(bytes);
}

/// Something that can be appended to a batch buffer.
pub(super) trait Serialized {
    fn append_to(&self, bytes: &mut Vec<u8>);
}

impl Serialized for NetlinkMessage<NetfilterMessage> {
    fn append_to(&self, bytes: &mut Vec<u8>) {
        let at = bytes.len();
        bytes.resize(at + self.buffer_len(), 0);
        self.serialize(&mut bytes[at..]);
    }
}

impl Serialized for Vec<u8> {
    fn append_to(&self, bytes: &mut Vec<u8>) {
        bytes.extend_from_slice(self);
    }
}

#[cfg(test)]
mod fuzz;
