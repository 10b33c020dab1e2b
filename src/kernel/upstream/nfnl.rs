//! Raw nfnetlink messages for the two subsystems upstream's leftovers live
//! in: nf_tables (iptables-nft's `nat` and `filter` tables) and ipset, which
//! netlink-packet-netfilter does not know. Requests are built here byte by
//! byte; replies are split and read without trusting a single length.

use std::io;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

// include/uapi/linux/netlink.h
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
#[cfg(test)]
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
/// struct nfgenmsg: family, version, res_id.
const NFGENMSG_LEN: usize = 4;

// include/uapi/linux/netfilter/nfnetlink.h
pub(super) const NFNL_SUBSYS_IPSET: u16 = 6;
pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;

/// One request: its nlmsg_type (subsystem << 8 | command), the nfgenmsg
/// family and the attributes, already encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Request {
    pub kind: u16,
    pub family: u8,
    pub attributes: Vec<u8>,
}

impl Request {
    pub fn new(subsystem: u16, command: u16, family: u8) -> Self {
        Request {
            kind: (subsystem << 8) | command,
            family,
            attributes: Vec::new(),
        }
    }

    /// Appends an attribute of raw bytes.
    pub fn attr(mut self, kind: u16, value: &[u8]) -> Self {
        push_attr(&mut self.attributes, kind, value);
        self
    }

    /// Appends a NUL-terminated string attribute (NLA_STRING, NLA_NUL_STRING).
    pub fn string(self, kind: u16, value: &str) -> Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    /// The whole netlink message.
    pub fn encode(&self, flags: u16, sequence: u32) -> Vec<u8> {
        let length = NLMSG_HDRLEN + NFGENMSG_LEN + self.attributes.len();
        let mut bytes = Vec::with_capacity(length);
        bytes.extend_from_slice(&(length as u32).to_ne_bytes());
        bytes.extend_from_slice(&self.kind.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&sequence.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(&[self.family, 0, 0, 0]);
        bytes.extend_from_slice(&self.attributes);
        bytes
    }
}

/// Appends one attribute, padded to 4 bytes.
pub(super) fn push_attr(bytes: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let length = 4 + value.len();
    bytes.extend_from_slice(&(length as u16).to_ne_bytes());
    bytes.extend_from_slice(&kind.to_ne_bytes());
    bytes.extend_from_slice(value);
    bytes.resize(bytes.len() + ((4 - length % 4) % 4), 0);
}

/// Appends a nested attribute holding `inner` (already encoded attributes).
#[cfg(test)]
pub(super) fn push_nested(bytes: &mut Vec<u8>, kind: u16, inner: &[u8]) {
    push_attr(bytes, kind | NLA_F_NESTED, inner);
}

/// The attributes of `bytes`, as (type without flags, value). Iteration
/// stops at the first attribute whose length is short or overruns the
/// buffer: a malformed tail is ignored, never read past.
pub(super) fn attributes(bytes: &[u8]) -> Attributes<'_> {
    Attributes { rest: bytes }
}

#[derive(Debug, Clone)]
pub(super) struct Attributes<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attributes<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let header = self.rest.get(..4)?;
        let length = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let kind = u16::from_ne_bytes([header[2], header[3]]) & NLA_TYPE_MASK;
        let value = (length >= 4).then(|| self.rest.get(4..length)).flatten();
        let Some(value) = value else {
            self.rest = &[];
            return None;
        };
        let next = (length + 3) & !3;
        self.rest = self.rest.get(next..).unwrap_or_default();
        Some((kind, value))
    }
}

/// The first attribute of type `kind`.
pub(super) fn find(bytes: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(bytes).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

/// A string attribute's text: up to its NUL, and only if it is UTF-8.
pub(super) fn text(value: &[u8]) -> Option<&str> {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    std::str::from_utf8(&value[..end]).ok()
}

/// A big-endian u32 attribute (NLA_BE32).
pub(super) fn be32(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?))
}

/// A big-endian u64 attribute (NLA_BE64).
pub(super) fn be64(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

/// One message of a reply datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    /// An answer: its nlmsg_type and its attributes (after the nfgenmsg).
    Message {
        kind: u16,
        attributes: Vec<u8>,
    },
    Ack,
    Done,
    /// A refusal, as a positive errno (ipset's own codes start at 4096).
    Error(i32),
}

/// Splits a datagram into (sequence, reply). A message whose length is
/// short or overruns the datagram ends it with an error: the rest cannot be
/// framed.
pub(super) fn split(datagram: &[u8]) -> Result<Vec<(u32, Reply)>, String> {
    let mut replies = Vec::new();
    let mut at = 0;
    while at < datagram.len() {
        let Some(header) = datagram.get(at..at + NLMSG_HDRLEN) else {
            return Err(format!("truncated netlink header at byte {at}"));
        };
        let length = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        let sequence = u32::from_ne_bytes([header[8], header[9], header[10], header[11]]);
        let Some(message) = (length >= NLMSG_HDRLEN)
            .then(|| datagram.get(at..at + length))
            .flatten()
        else {
            return Err(format!(
                "netlink message at byte {at} claims {length} bytes of {}",
                datagram.len() - at
            ));
        };
        let body = &message[NLMSG_HDRLEN..];
        let reply = match kind {
            NLMSG_DONE => Reply::Done,
            NLMSG_NOOP => Reply::Ack,
            NLMSG_ERROR => {
                let code = body
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(|| format!("short NLMSG_ERROR at byte {at}"))?;
                if code == 0 {
                    Reply::Ack
                } else {
                    Reply::Error(code.saturating_neg())
                }
            }
            _ => Reply::Message {
                kind,
                attributes: body.get(NFGENMSG_LEN..).unwrap_or_default().to_vec(),
            },
        };
        replies.push((sequence, reply));
        at += length.max(NLMSG_HDRLEN).div_ceil(4) * 4;
    }
    Ok(replies)
}

/// A NETLINK_NETFILTER socket of raw requests.
#[derive(Debug)]
pub(super) struct NfnlSocket {
    socket: Socket,
    sequence: u32,
}

impl NfnlSocket {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(NfnlSocket {
            socket,
            sequence: 0,
        })
    }

    fn next_sequence(&mut self) -> u32 {
        self.sequence = self.sequence.wrapping_add(1);
        self.sequence
    }

    /// Every answer of type `answer` (nf_tables answers a GET with NEW
    /// messages) to a dump request, as attributes; Err(errno) when the
    /// kernel refused it.
    pub fn dump(&mut self, request: &Request, answer: u16) -> Result<Vec<Vec<u8>>, i32> {
        let sequence = self.next_sequence();
        self.send(&request.encode(NLM_F_REQUEST | NLM_F_DUMP, sequence))?;
        let mut answers = Vec::new();
        let mut refusal = None;
        self.read_until(sequence, |seq, reply| {
            if seq != sequence {
                return;
            }
            match reply {
                Reply::Message { kind, attributes } if kind == answer => answers.push(attributes),
                Reply::Error(errno) => refusal = Some(errno),
                _ => {}
            }
        })?;
        refusal.map_or(Ok(answers), Err)
    }

    /// One request outside a batch, answered by its ACK.
    pub fn request(&mut self, request: &Request) -> Result<(), i32> {
        let sequence = self.next_sequence();
        self.send(&request.encode(NLM_F_REQUEST | NLM_F_ACK, sequence))?;
        let mut refusal = None;
        self.read_until(sequence, |seq, reply| {
            if let (true, Reply::Error(errno)) = (seq == sequence, reply) {
                refusal = Some(errno);
            }
        })?;
        refusal.map_or(Ok(()), Err)
    }

    /// One nf_tables transaction: all of `requests` or none. On refusal,
    /// the index of the refused request (None: the batch as a whole) and
    /// the errno.
    pub fn transact(&mut self, requests: &[Request]) -> Result<(), (Option<usize>, i32)> {
        let control = |kind: u16, sequence: u32| {
            let mut request = Request::new(0, 0, 0);
            request.kind = kind;
            let mut bytes = request.encode(NLM_F_REQUEST, sequence);
            // res_id: the subsystem the batch is for, big-endian.
            bytes[18..20].copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
            bytes
        };
        let begin = self.next_sequence();
        let mut bytes = control(NFNL_MSG_BATCH_BEGIN, begin);
        for request in requests {
            let sequence = self.next_sequence();
            bytes.extend(request.encode(NLM_F_REQUEST | NLM_F_ACK, sequence));
        }
        let end = self.next_sequence();
        bytes.extend(control(NFNL_MSG_BATCH_END, end));
        self.send(&bytes).map_err(|errno| (None, errno))?;
        // A NOOP with an ACK, answered after everything the batch caused.
        let barrier = self.next_sequence();
        let mut noop = Request::new(0, 0, 0);
        noop.kind = NLMSG_NOOP;
        let mut noop = noop.encode(NLM_F_REQUEST | NLM_F_ACK, barrier);
        noop.truncate(NLMSG_HDRLEN);
        noop[..4].copy_from_slice(&(NLMSG_HDRLEN as u32).to_ne_bytes());
        self.send(&noop).map_err(|errno| (None, errno))?;
        let mut first: Option<(Option<usize>, i32)> = None;
        self.read_until(barrier, |seq, reply| {
            if let Reply::Error(errno) = reply {
                let index = seq.wrapping_sub(begin.wrapping_add(1)) as usize;
                let at = (index < requests.len()).then_some(index);
                if first.is_none() || at.is_some_and(|i| first.is_some_and(|(f, _)| f > Some(i))) {
                    first = Some((at, errno));
                }
            }
        })
        .map_err(|errno| (None, errno))?;
        first.map_or(Ok(()), Err)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), i32> {
        self.socket
            .send(bytes, 0)
            .map(|_| ())
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    }

    /// Reads replies until the one that ends request `last` (its ACK,
    /// error or NLMSG_DONE), handing each to `each`.
    fn read_until(&mut self, last: u32, mut each: impl FnMut(u32, Reply)) -> Result<(), i32> {
        loop {
            let (datagram, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            let replies = split(&datagram).map_err(|_| libc::EBADMSG)?;
            for (sequence, reply) in replies {
                let ends = sequence == last && !matches!(reply, Reply::Message { .. });
                each(sequence, reply);
                if ends {
                    return Ok(());
                }
            }
        }
    }
}

/// "Device or resource busy", without the "(os error 16)" std adds; ipset's
/// own codes by their uapi names.
pub(super) fn errno_text(errno: i32) -> String {
    match errno {
        4097 => "IPSET_ERR_PROTOCOL (protocol version refused)".to_owned(),
        4100 => "IPSET_ERR_BUSY (the set is still referenced)".to_owned(),
        _ => {
            let text = io::Error::from_raw_os_error(errno).to_string();
            match text.find(" (os error") {
                Some(at) => text[..at].to_owned(),
                None => text,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_header_nfgenmsg_and_padded_attributes() {
        let bytes = Request::new(NFNL_SUBSYS_IPSET, 3, 2)
            .attr(1, &[6])
            .string(2, "KUBE-CLUSTER-IP")
            .encode(NLM_F_REQUEST | NLM_F_ACK, 7);
        let mut want = Vec::new();
        // nlmsghdr: length 48, type IPSET_CMD_DESTROY of subsystem 6, flags REQUEST|ACK, seq 7, pid 0.
        want.extend_from_slice(&48u32.to_ne_bytes());
        want.extend_from_slice(&0x0603u16.to_ne_bytes());
        want.extend_from_slice(&5u16.to_ne_bytes());
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: AF_INET, NFNETLINK_V0, res_id 0.
        want.extend_from_slice(&[2, 0, 0, 0]);
        // IPSET_ATTR_PROTOCOL = 6, padded.
        want.extend_from_slice(&5u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&[6, 0, 0, 0]);
        // IPSET_ATTR_SETNAME "KUBE-CLUSTER-IP\0": 16 bytes, no padding.
        want.extend_from_slice(&20u16.to_ne_bytes());
        want.extend_from_slice(&2u16.to_ne_bytes());
        want.extend_from_slice(b"KUBE-CLUSTER-IP\0");
        assert_eq!(bytes, want);
    }

    #[test]
    fn attributes_stop_at_a_length_that_overruns() {
        let mut bytes = Vec::new();
        push_attr(&mut bytes, 1, b"nat\0");
        bytes.extend_from_slice(&200u16.to_ne_bytes());
        bytes.extend_from_slice(&3u16.to_ne_bytes());
        bytes.extend_from_slice(b"KUBE");
        let read: Vec<_> = attributes(&bytes).collect();
        assert_eq!(read, vec![(1, &b"nat\0"[..])]);
    }

    #[test]
    fn split_reads_acks_errors_done_and_answers() {
        let answer = Request::new(NFNL_SUBSYS_NFTABLES, 3, 2)
            .string(1, "nat")
            .encode(2, 9);
        let mut datagram = answer.clone();
        // NLMSG_ERROR with -EBUSY, then one with 0 (an ACK), then NLMSG_DONE.
        for (kind, code) in [(NLMSG_ERROR, -16i32), (NLMSG_ERROR, 0), (NLMSG_DONE, 0)] {
            datagram.extend_from_slice(&20u32.to_ne_bytes());
            datagram.extend_from_slice(&kind.to_ne_bytes());
            datagram.extend_from_slice(&0u16.to_ne_bytes());
            datagram.extend_from_slice(&9u32.to_ne_bytes());
            datagram.extend_from_slice(&0u32.to_ne_bytes());
            datagram.extend_from_slice(&code.to_ne_bytes());
        }
        let replies = split(&datagram).unwrap();
        let mut attributes = Vec::new();
        push_attr(&mut attributes, 1, b"nat\0");
        assert_eq!(
            replies,
            vec![
                (
                    9,
                    Reply::Message {
                        kind: 0x0a03,
                        attributes
                    }
                ),
                (9, Reply::Error(16)),
                (9, Reply::Ack),
                (9, Reply::Done),
            ]
        );
    }

    #[test]
    fn split_refuses_a_message_longer_than_the_datagram() {
        let mut message = Request::new(NFNL_SUBSYS_NFTABLES, 3, 2).encode(2, 1);
        message[..4].copy_from_slice(&64u32.to_ne_bytes());
        assert!(split(&message)
            .unwrap_err()
            .contains("claims 64 bytes of 20"));
    }
}
