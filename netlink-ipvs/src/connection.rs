//! The transport: one generic netlink socket owned by a task that
//! coalesces requests into few `sendmsg` calls and routes replies by
//! sequence number.
//!
//! Requests that only need a verdict (add, edit, delete) go without
//! `NLM_F_ACK`, except the last one of each `sendmsg` (the barrier). The
//! kernel handles a socket's messages in order and always reports a failed
//! message with an `NLMSG_ERROR`, ACK or not; so once any reply for
//! sequence S arrives, every silent request before S that has no error yet
//! has succeeded.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use netlink_packet_core::{
    DecodeError, Emitable, NetlinkBuffer, NetlinkMessage, NetlinkPayload, NlasIterator,
    ParseableParametrized, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{
    protocols::NETLINK_GENERIC, AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket,
};
use nix::sys::socket::{setsockopt, sockopt};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::message::{IpvsCmd, IpvsMessage};

/// Largest datagram handed to one `sendmsg`.
const MAX_SEND: usize = 64 * 1024;
/// Receive buffer for one datagram: the kernel's dump skbs stay below 32 KiB.
const RECV_BUFFER: usize = 128 * 1024;
/// Socket buffers sized for bursts of 100,000 operations.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;
/// Upper bound on silent requests in flight; also bounded by the receive
/// buffer, so that their error replies can never overflow it.
const MAX_IN_FLIGHT: usize = 4096;
/// The receive-buffer bytes one queued error reply may occupy (skb truesize).
const BYTES_PER_REPLY: usize = 2048;

pub(crate) const NETLINK_HEADER_LEN: usize = 16;
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Why one request failed, before the handle names the object.
#[derive(Debug)]
pub(crate) enum Failure {
    Kernel { errno: i32, extack: Option<String> },
    Overrun,
    Closed,
    Io(io::ErrorKind, String),
}

impl Failure {
    /// Names the command and object the failure belongs to.
    pub(crate) fn into_error(self, cmd: IpvsCmd, object: impl FnOnce() -> String) -> Error {
        match self {
            Self::Kernel { errno, extack } => Error::Kernel {
                errno,
                cmd,
                object: object(),
                extack,
            },
            Self::Overrun => Error::Overrun {
                cmd,
                object: object(),
            },
            Self::Closed => Error::ConnectionClosed,
            Self::Io(kind, message) => Error::Io(io::Error::new(kind, message)),
        }
    }
}

/// The messages a GET or dump returned, as the kernel sent them: each one's
/// generic netlink payload, back to back, parsed only as it is read
/// ([`QueryReply::messages`]). A dump of 10,000 services is about 3 MB of
/// payloads (some 300 bytes each, most of them the two stats nests);
/// parsed all at once, with the services made from them, it took 15 MB.
#[derive(Debug, Default)]
pub(crate) struct QueryReply {
    payloads: Vec<u8>,
    /// Where each payload ends in `payloads`.
    ends: Vec<usize>,
    /// The kernel flagged the dump `NLM_F_DUMP_INTR`: the table changed
    /// while it was dumped, so the result may be inconsistent.
    pub interrupted: bool,
}

impl QueryReply {
    fn push(&mut self, payload: &[u8]) {
        self.payloads.extend_from_slice(payload);
        self.ends.push(self.payloads.len());
    }

    /// Each message, parsed as the iterator reaches it.
    pub fn messages(
        &self,
        family_id: u16,
    ) -> impl Iterator<Item = std::result::Result<IpvsMessage, DecodeError>> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(move |(start, &end)| {
            GenlMessage::<IpvsMessage>::parse_with_param(&self.payloads[start..end], family_id)
                .map(|message| message.payload)
        })
    }
}

/// What a handle asks the connection task to do.
pub(crate) enum Job {
    /// Requests answered by a verdict only, one result each, in order.
    Batch {
        messages: Vec<Vec<u8>>,
        reply: oneshot::Sender<Vec<Result<(), Failure>>>,
    },
    /// One request answered with messages: a GET (acknowledged) or a dump.
    Query {
        message: Vec<u8>,
        dump: bool,
        reply: oneshot::Sender<Result<QueryReply, Failure>>,
    },
}

/// Counters of the connection's socket traffic, for benchmarks and for
/// tests that prove requests are coalesced.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    sends: AtomicU64,
    messages_sent: AtomicU64,
    receives: AtomicU64,
    messages_received: AtomicU64,
}

/// A snapshot of a connection's socket traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionStats {
    /// `sendmsg` calls.
    pub sends: u64,
    /// Netlink messages sent (requests).
    pub messages_sent: u64,
    /// `recvmsg` calls that returned a datagram.
    pub receives: u64,
    /// Netlink messages received (replies, ACKs, errors).
    pub messages_received: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> ConnectionStats {
        ConnectionStats {
            sends: self.sends.load(Ordering::Relaxed),
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            receives: self.receives.load(Ordering::Relaxed),
            messages_received: self.messages_received.load(Ordering::Relaxed),
        }
    }
}

/// Serializes an IPVS request into a complete netlink message. The
/// connection fills in flags and sequence number when it sends it.
pub(crate) fn serialize(family_id: u16, message: &IpvsMessage) -> Vec<u8> {
    let genl = GenlHeader {
        cmd: message.command(),
        version: message.version(),
    };
    let len = NETLINK_HEADER_LEN + genl.buffer_len() + message.buffer_len();
    let mut bytes = vec![0u8; len];
    bytes[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    bytes[4..6].copy_from_slice(&family_id.to_ne_bytes());
    genl.emit(&mut bytes[NETLINK_HEADER_LEN..]);
    message.emit(&mut bytes[NETLINK_HEADER_LEN + genl.buffer_len()..]);
    bytes
}

/// The connection task. Spawn it (`tokio::spawn(connection)`); it ends
/// when every [`Handle`](crate::Handle) is dropped and nothing is pending.
#[must_use = "the connection does nothing unless spawned"]
pub struct Connection {
    task: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Future for Connection {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.task.as_mut().poll(cx)
    }
}

/// Opens the socket, sizes its buffers and resolves the IPVS family id.
pub(crate) async fn open(
    counters: Arc<Counters>,
) -> Result<(Connection, u16, mpsc::UnboundedSender<Job>)> {
    let mut socket = TokioSocket::new(NETLINK_GENERIC)?;
    socket.socket_mut().bind_auto()?;
    socket.socket_mut().connect(&SocketAddr::new(0, 0))?;
    // Older kernels lack these; the connection works without them.
    if let Err(err) = socket.socket_ref().set_ext_ack(true) {
        tracing::debug!(%err, "NETLINK_EXT_ACK not available");
    }
    if let Err(err) = socket.socket_ref().set_cap_ack(true) {
        tracing::debug!(%err, "NETLINK_CAP_ACK not available");
    }
    let receive_buffer = size_buffers(&socket);
    let family_id = resolve_family(&mut socket).await?;
    let window = (receive_buffer / BYTES_PER_REPLY).clamp(64, MAX_IN_FLIGHT);
    tracing::debug!(
        family_id,
        receive_buffer,
        window,
        "IPVS netlink connection open"
    );
    let (tx, rx) = mpsc::unbounded_channel();
    let task = Task {
        socket,
        jobs: rx,
        state: State::new(family_id, window, counters),
    };
    Ok((
        Connection {
            task: Box::pin(task.run()),
        },
        family_id,
        tx,
    ))
}

/// Grows the socket buffers, forcing past rmem_max/wmem_max when allowed
/// (CAP_NET_ADMIN). Returns the receive buffer size the kernel granted.
fn size_buffers(socket: &TokioSocket) -> usize {
    let fd = socket.socket_ref();
    if let Err(err) = setsockopt(fd, sockopt::RcvBufForce, &SOCKET_BUFFER) {
        tracing::debug!(%err, "SO_RCVBUFFORCE refused, falling back to SO_RCVBUF");
        let _ = setsockopt(fd, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if let Err(err) = setsockopt(fd, sockopt::SndBufForce, &SOCKET_BUFFER) {
        tracing::debug!(%err, "SO_SNDBUFFORCE refused, falling back to SO_SNDBUF");
        let _ = setsockopt(fd, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    fd.get_rx_buf_sz().unwrap_or(0)
}

/// Asks the generic netlink controller for the IPVS family id.
async fn resolve_family(socket: &mut TokioSocket) -> Result<u16> {
    let mut genl = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(
            IpvsMessage::family_name().to_owned(),
        )],
    });
    genl.finalize();
    let mut request = NetlinkMessage::from(genl);
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    request.header.sequence_number = 0;
    request.finalize();
    let mut bytes = vec![0u8; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes).await?;

    let mut family_id = None;
    let mut buffer = Vec::with_capacity(RECV_BUFFER);
    loop {
        buffer.clear();
        socket.recv(&mut buffer).await?;
        let mut offset = 0;
        while offset < buffer.len() {
            let message = NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(&buffer[offset..])
                .map_err(|source| Error::Decode {
                what: "CTRL_CMD_GETFAMILY reply".into(),
                source,
            })?;
            offset += align(message.header.length as usize).max(NETLINK_HEADER_LEN);
            match message.payload {
                NetlinkPayload::InnerMessage(genl) => {
                    family_id = genl.payload.nlas.iter().find_map(|nla| match nla {
                        GenlCtrlAttrs::FamilyId(id) => Some(*id),
                        _ => None,
                    });
                }
                NetlinkPayload::Error(err) if err.code.is_none() => {
                    return family_id.ok_or(Error::FamilyNotFound);
                }
                NetlinkPayload::Error(err) => {
                    return Err(match -err.raw_code() {
                        libc::ENOENT => Error::FamilyNotFound,
                        errno => Error::Kernel {
                            errno,
                            cmd: IpvsCmd::Other(GenlCtrlCmd::GetFamily.into()),
                            object: "CTRL_CMD_GETFAMILY IPVS".into(),
                            extack: None,
                        },
                    });
                }
                _ => {}
            }
        }
    }
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Answered by a verdict only.
    Do,
    /// Answered by messages, then an ACK.
    Get,
    /// Answered by multipart messages, then NLMSG_DONE.
    Dump,
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Batch { id: u64, index: usize },
    Query { id: u64 },
}

struct Outgoing {
    bytes: Vec<u8>,
    kind: Kind,
    target: Target,
}

struct Pending {
    /// Sent without NLM_F_ACK: resolved by the next reply to a later request.
    silent: bool,
    target: Target,
}

struct BatchState {
    results: Vec<Option<Result<(), Failure>>>,
    remaining: usize,
    reply: oneshot::Sender<Vec<Result<(), Failure>>>,
}

struct QueryState {
    reply: QueryReply,
    sender: oneshot::Sender<Result<QueryReply, Failure>>,
}

struct Task {
    socket: TokioSocket,
    jobs: mpsc::UnboundedReceiver<Job>,
    state: State,
}

struct State {
    family_id: u16,
    window: usize,
    counters: Arc<Counters>,
    queue: VecDeque<Outgoing>,
    /// Requests on the wire, by a sequence counter that never wraps; the
    /// wire carries its low 32 bits.
    pending: BTreeMap<u64, Pending>,
    next_seq: u64,
    /// The dump on the wire: the kernel runs one per socket (EBUSY otherwise).
    dump: Option<u64>,
    batches: HashMap<u64, BatchState>,
    queries: HashMap<u64, QueryState>,
    next_job: u64,
    send_buffer: Vec<u8>,
    closed: bool,
}

impl Task {
    async fn run(self) {
        let Task {
            socket,
            mut jobs,
            mut state,
        } = self;
        let mut receive_buffer: Vec<u8> = Vec::with_capacity(RECV_BUFFER);
        loop {
            loop {
                match jobs.try_recv() {
                    Ok(job) => state.enqueue(job),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        state.closed = true;
                        break;
                    }
                }
            }
            while state.can_send() {
                state.fill_send_buffer();
                let sent = socket.send(&state.send_buffer).await;
                state.counters.sends.fetch_add(1, Ordering::Relaxed);
                if let Err(err) = sent {
                    tracing::error!(%err, "IPVS netlink send failed");
                    state.fail_everything(|| Failure::Io(err.kind(), err.to_string()));
                    return;
                }
            }
            if state.closed && state.pending.is_empty() && state.queue.is_empty() {
                return;
            }
            tokio::select! {
                job = jobs.recv(), if !state.closed => match job {
                    Some(job) => state.enqueue(job),
                    None => state.closed = true,
                },
                received = recv(&socket, &mut receive_buffer), if !state.pending.is_empty() => {
                    match received {
                        Ok(()) => {
                            state.counters.receives.fetch_add(1, Ordering::Relaxed);
                            if receive_buffer.len() == RECV_BUFFER {
                                tracing::warn!("netlink datagram filled the receive buffer and may be truncated");
                            }
                            state.on_datagram(&receive_buffer);
                        }
                        Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                            tracing::warn!("netlink receive buffer overflowed (ENOBUFS): failing the requests in flight");
                            state.fail_in_flight(|| Failure::Overrun);
                        }
                        Err(err) => {
                            tracing::error!(%err, "IPVS netlink receive failed");
                            state.fail_everything(|| Failure::Io(err.kind(), err.to_string()));
                            return;
                        }
                    }
                }
            }
        }
    }
}

async fn recv(socket: &TokioSocket, buffer: &mut Vec<u8>) -> io::Result<()> {
    buffer.clear();
    socket.recv(buffer).await
}

impl State {
    fn new(family_id: u16, window: usize, counters: Arc<Counters>) -> Self {
        Self {
            family_id,
            window,
            counters,
            queue: VecDeque::new(),
            pending: BTreeMap::new(),
            next_seq: 1,
            dump: None,
            batches: HashMap::new(),
            queries: HashMap::new(),
            next_job: 0,
            send_buffer: Vec::with_capacity(MAX_SEND),
            closed: false,
        }
    }

    fn enqueue(&mut self, job: Job) {
        let id = self.next_job;
        self.next_job += 1;
        match job {
            Job::Batch { messages, reply } => {
                if messages.is_empty() {
                    let _ = reply.send(Vec::new());
                    return;
                }
                let count = messages.len();
                self.queue
                    .extend(
                        messages
                            .into_iter()
                            .enumerate()
                            .map(|(index, bytes)| Outgoing {
                                bytes,
                                kind: Kind::Do,
                                target: Target::Batch { id, index },
                            }),
                    );
                self.batches.insert(
                    id,
                    BatchState {
                        results: (0..count).map(|_| None).collect(),
                        remaining: count,
                        reply,
                    },
                );
            }
            Job::Query {
                message,
                dump,
                reply,
            } => {
                self.queue.push_back(Outgoing {
                    bytes: message,
                    kind: if dump { Kind::Dump } else { Kind::Get },
                    target: Target::Query { id },
                });
                self.queries.insert(
                    id,
                    QueryState {
                        reply: QueryReply::default(),
                        sender: reply,
                    },
                );
            }
        }
    }

    fn can_send(&self) -> bool {
        match self.queue.front() {
            None => false,
            Some(front) => {
                self.pending.len() < self.window
                    && !(front.kind == Kind::Dump && self.dump.is_some())
            }
        }
    }

    /// Moves queued requests into the send buffer: up to `MAX_SEND` bytes,
    /// the window, or a second dump (the kernel runs one dump per socket).
    /// The last request becomes the barrier.
    fn fill_send_buffer(&mut self) {
        self.send_buffer.clear();
        let mut last: Option<(usize, u64, Kind)> = None;
        while let Some(front) = self.queue.front() {
            let fits = self.send_buffer.is_empty()
                || self.send_buffer.len() + front.bytes.len() <= MAX_SEND;
            if !fits
                || self.pending.len() >= self.window
                || (front.kind == Kind::Dump && self.dump.is_some())
            {
                break;
            }
            let outgoing = self.queue.pop_front().expect("front exists");
            let key = self.next_seq;
            self.next_seq += 1;
            let offset = self.send_buffer.len();
            self.send_buffer.extend_from_slice(&outgoing.bytes);
            let flags = match outgoing.kind {
                Kind::Do => NLM_F_REQUEST,
                Kind::Get => NLM_F_REQUEST | NLM_F_ACK,
                Kind::Dump => NLM_F_REQUEST | NLM_F_DUMP,
            };
            let header = &mut self.send_buffer[offset..offset + NETLINK_HEADER_LEN];
            header[6..8].copy_from_slice(&flags.to_ne_bytes());
            header[8..12].copy_from_slice(&(key as u32).to_ne_bytes());
            if outgoing.kind == Kind::Dump {
                self.dump = Some(key);
            }
            self.pending.insert(
                key,
                Pending {
                    silent: outgoing.kind == Kind::Do,
                    target: outgoing.target,
                },
            );
            last = Some((offset, key, outgoing.kind));
        }
        if let Some((offset, key, Kind::Do)) = last {
            let flags = NLM_F_REQUEST | NLM_F_ACK;
            self.send_buffer[offset + 6..offset + 8].copy_from_slice(&flags.to_ne_bytes());
            if let Some(pending) = self.pending.get_mut(&key) {
                pending.silent = false;
            }
        }
        self.counters
            .messages_sent
            .fetch_add(count_messages(&self.send_buffer), Ordering::Relaxed);
    }

    /// The pending key whose low 32 bits are `seq`, if any.
    fn key_of(&self, seq: u32) -> Option<u64> {
        let (&lowest, _) = self.pending.first_key_value()?;
        let key = lowest + u64::from(seq.wrapping_sub(lowest as u32));
        self.pending.contains_key(&key).then_some(key)
    }

    fn on_datagram(&mut self, datagram: &[u8]) {
        let mut offset = 0;
        while offset + NETLINK_HEADER_LEN <= datagram.len() {
            let buffer = match NetlinkBuffer::new_checked(&datagram[offset..]) {
                Ok(buffer) => buffer,
                Err(err) => {
                    tracing::warn!(%err, "dropping a malformed netlink message");
                    return;
                }
            };
            let length = buffer.length() as usize;
            let message_type = buffer.message_type();
            let flags = buffer.flags();
            let seq = buffer.sequence_number();
            let payload = &datagram[offset + NETLINK_HEADER_LEN..offset + length];
            offset += align(length).max(NETLINK_HEADER_LEN);
            self.counters
                .messages_received
                .fetch_add(1, Ordering::Relaxed);
            if message_type == NLMSG_NOOP || message_type == NLMSG_OVERRUN {
                continue;
            }
            let Some(key) = self.key_of(seq) else {
                tracing::warn!(
                    seq,
                    message_type,
                    "dropping a reply with an unknown sequence number"
                );
                continue;
            };
            self.resolve_silent_before(key);
            match message_type {
                NLMSG_ERROR => self.on_error(key, payload, flags),
                NLMSG_DONE => {
                    let code = payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0);
                    let outcome = if code < 0 {
                        Err(Failure::Kernel {
                            // i32::MIN has no negation; no real errno is that large.
                            errno: code.saturating_neg(),
                            extack: None,
                        })
                    } else {
                        Ok(())
                    };
                    self.finish(key, outcome);
                }
                t if t == self.family_id => self.on_data(key, payload, flags),
                other => {
                    tracing::warn!(
                        seq,
                        message_type = other,
                        "dropping a reply of an unexpected type"
                    );
                }
            }
        }
    }

    fn on_error(&mut self, key: u64, payload: &[u8], flags: u16) {
        if payload.len() < 4 {
            tracing::warn!("dropping a truncated NLMSG_ERROR");
            return;
        }
        let code = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
        let outcome = if code == 0 {
            Ok(())
        } else {
            Err(Failure::Kernel {
                errno: code.saturating_neg(),
                extack: extack_message(&payload[4..], flags),
            })
        };
        self.finish(key, outcome);
    }

    fn on_data(&mut self, key: u64, payload: &[u8], flags: u16) {
        let Some(Pending {
            target: Target::Query { id },
            ..
        }) = self.pending.get(&key)
        else {
            tracing::warn!("dropping a data reply to a request that expects none");
            return;
        };
        let Some(query) = self.queries.get_mut(id) else {
            return;
        };
        if flags & NLM_F_DUMP_INTR != 0 {
            query.reply.interrupted = true;
        }
        query.reply.push(payload);
    }

    /// Every silent request before `key` was processed without error.
    fn resolve_silent_before(&mut self, key: u64) {
        let done: Vec<u64> = self
            .pending
            .range(..key)
            .filter(|(_, pending)| pending.silent)
            .map(|(key, _)| *key)
            .collect();
        for key in done {
            self.finish(key, Ok(()));
        }
    }

    /// Completes the request `key` (a query only when its reply is complete).
    fn finish(&mut self, key: u64, outcome: Result<(), Failure>) {
        let Some(pending) = self.pending.remove(&key) else {
            return;
        };
        match pending.target {
            Target::Batch { id, index } => self.finish_batch_slot(id, index, outcome),
            Target::Query { id } => {
                // A dump ends with DONE or an error; either way it is over.
                if self.dump == Some(key) {
                    self.dump = None;
                }
                if let Some(query) = self.queries.remove(&id) {
                    let _ = query.sender.send(outcome.map(|()| query.reply));
                }
            }
        }
    }

    fn finish_batch_slot(&mut self, id: u64, index: usize, outcome: Result<(), Failure>) {
        let Some(batch) = self.batches.get_mut(&id) else {
            return;
        };
        if batch.results[index].is_none() {
            batch.remaining -= 1;
        }
        batch.results[index] = Some(outcome);
        if batch.remaining == 0 {
            let batch = self.batches.remove(&id).expect("present");
            let results = batch
                .results
                .into_iter()
                .map(|r| r.unwrap_or(Err(Failure::Closed)))
                .collect();
            let _ = batch.reply.send(results);
        }
    }

    /// Fails every request on the wire (their replies may be lost).
    fn fail_in_flight(&mut self, failure: impl Fn() -> Failure) {
        let keys: Vec<u64> = self.pending.keys().copied().collect();
        for key in keys {
            self.finish(key, Err(failure()));
        }
        self.dump = None;
    }

    /// Fails every request, on the wire or queued: the socket is unusable.
    fn fail_everything(&mut self, failure: impl Fn() -> Failure) {
        self.fail_in_flight(&failure);
        while let Some(outgoing) = self.queue.pop_front() {
            match outgoing.target {
                Target::Batch { id, index } => self.finish_batch_slot(id, index, Err(failure())),
                Target::Query { id } => {
                    if let Some(query) = self.queries.remove(&id) {
                        let _ = query.sender.send(Err(failure()));
                    }
                }
            }
        }
    }
}

fn count_messages(buffer: &[u8]) -> u64 {
    let mut offset = 0;
    let mut count = 0;
    while offset + NETLINK_HEADER_LEN <= buffer.len() {
        let len = u32::from_ne_bytes([
            buffer[offset],
            buffer[offset + 1],
            buffer[offset + 2],
            buffer[offset + 3],
        ]) as usize;
        offset += align(len).max(NETLINK_HEADER_LEN);
        count += 1;
    }
    count
}

/// The extended-ACK message (NLMSGERR_ATTR_MSG) of an NLMSG_ERROR payload
/// after its error code: the echoed request (only its header when capped),
/// then the TLVs.
fn extack_message(after_code: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || after_code.len() < NETLINK_HEADER_LEN {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NETLINK_HEADER_LEN
    } else {
        let header = NetlinkBuffer::new(&after_code[..NETLINK_HEADER_LEN]);
        align(header.length() as usize)
    };
    let tlvs = after_code.get(echoed..)?;
    NlasIterator::new(tlvs).flatten().find_map(|nla| {
        (nla.kind() == NLMSGERR_ATTR_MSG).then(|| {
            let value = nla.value();
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            String::from_utf8_lossy(&value[..end]).into_owned()
        })
    })
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("queued", &self.queue.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::IpvsAttr;

    const FAMILY: u16 = 0x20;
    /// A part of a multipart reply (`linux/netlink.h`).
    const NLM_F_MULTI: u16 = 2;

    fn request(cmd: IpvsCmd) -> Vec<u8> {
        serialize(
            FAMILY,
            &IpvsMessage::new(cmd, vec![IpvsAttr::TimeoutTcp(1)]),
        )
    }

    /// An NLMSG_ERROR for `seq` (0 is an ACK), capped like the kernel's
    /// with NETLINK_CAP_ACK.
    fn error_reply(seq: u32, errno: i32) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&36u32.to_ne_bytes());
        bytes.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        bytes.extend_from_slice(&NLM_F_CAPPED.to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(&(-errno).to_ne_bytes());
        bytes.extend_from_slice(&[0u8; 16]);
        bytes
    }

    fn sent_seqs_and_flags(buffer: &[u8]) -> Vec<(u32, u16)> {
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < buffer.len() {
            let b = NetlinkBuffer::new(&buffer[offset..]);
            out.push((b.sequence_number(), b.flags()));
            offset += align(b.length() as usize);
        }
        out
    }

    fn state(window: usize) -> State {
        State::new(FAMILY, window, Arc::new(Counters::default()))
    }

    #[test]
    fn a_batch_goes_out_in_one_send_with_one_ack_request_at_the_end() {
        let mut state = state(4096);
        let (reply, mut results) = oneshot::channel();
        state.enqueue(Job::Batch {
            messages: (0..5).map(|_| request(IpvsCmd::NewService)).collect(),
            reply,
        });
        assert!(state.can_send());
        state.fill_send_buffer();
        assert!(!state.can_send());
        assert_eq!(
            sent_seqs_and_flags(&state.send_buffer),
            vec![
                (1, NLM_F_REQUEST),
                (2, NLM_F_REQUEST),
                (3, NLM_F_REQUEST),
                (4, NLM_F_REQUEST),
                (5, NLM_F_REQUEST | NLM_F_ACK),
            ]
        );
        // Only the third fails; the barrier's ACK settles the others.
        state.on_datagram(&error_reply(3, libc::EEXIST));
        assert!(
            results.try_recv().is_err(),
            "not complete before the barrier"
        );
        state.on_datagram(&error_reply(5, 0));
        let results = results.try_recv().expect("complete after the barrier");
        let verdicts: Vec<Option<i32>> = results
            .iter()
            .map(|r| match r {
                Ok(()) => None,
                Err(Failure::Kernel { errno, .. }) => Some(*errno),
                Err(other) => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(verdicts, vec![None, None, Some(libc::EEXIST), None, None]);
        assert!(state.pending.is_empty());
    }

    #[test]
    fn the_window_splits_a_batch_into_several_sends() {
        let mut state = state(64);
        let (reply, mut results) = oneshot::channel();
        state.enqueue(Job::Batch {
            messages: (0..150).map(|_| request(IpvsCmd::NewDest)).collect(),
            reply,
        });
        let mut sends = 0;
        while state.can_send() || !state.pending.is_empty() {
            assert!(
                state.can_send(),
                "every send ends in a barrier, so the window drains"
            );
            state.fill_send_buffer();
            sends += 1;
            let sent = sent_seqs_and_flags(&state.send_buffer);
            assert!(sent.len() <= 64);
            let (barrier, flags) = *sent.last().unwrap();
            assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK);
            state.on_datagram(&error_reply(barrier, 0));
        }
        assert_eq!(sends, 3);
        assert!(results.try_recv().unwrap().iter().all(Result::is_ok));
    }

    #[test]
    fn a_second_dump_waits_for_the_first_to_finish() {
        let mut state = state(4096);
        let (first, _first_results) = oneshot::channel();
        let (second, _second_results) = oneshot::channel();
        for reply in [first, second] {
            state.enqueue(Job::Query {
                message: request(IpvsCmd::GetService),
                dump: true,
                reply,
            });
        }
        state.fill_send_buffer();
        assert_eq!(
            sent_seqs_and_flags(&state.send_buffer),
            vec![(1, NLM_F_REQUEST | NLM_F_DUMP)]
        );
        assert!(
            !state.can_send(),
            "the kernel answers EBUSY to a second dump"
        );
        let mut done = Vec::new();
        done.extend_from_slice(&20u32.to_ne_bytes());
        done.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        done.extend_from_slice(&2u16.to_ne_bytes());
        done.extend_from_slice(&1u32.to_ne_bytes());
        done.extend_from_slice(&0u32.to_ne_bytes());
        done.extend_from_slice(&0i32.to_ne_bytes());
        state.on_datagram(&done);
        assert!(state.can_send());
    }

    #[test]
    fn a_dump_is_kept_as_sent_and_each_message_parsed_as_it_is_read() {
        let mut state = state(4096);
        let (reply, mut result) = oneshot::channel();
        state.enqueue(Job::Query {
            message: request(IpvsCmd::GetService),
            dump: true,
            reply,
        });
        state.fill_send_buffer();
        let message = |timeout: u32| {
            let mut bytes = serialize(
                FAMILY,
                &IpvsMessage::new(IpvsCmd::NewService, vec![IpvsAttr::TimeoutTcp(timeout)]),
            );
            bytes[6..8].copy_from_slice(&NLM_F_MULTI.to_ne_bytes());
            bytes[8..12].copy_from_slice(&1u32.to_ne_bytes());
            bytes
        };
        let mut datagram = message(7);
        // The second message's only attribute claims more bytes than it has.
        let mut broken = message(8);
        let attribute = NETLINK_HEADER_LEN + 4;
        broken[attribute..attribute + 2].copy_from_slice(&64u16.to_ne_bytes());
        datagram.extend_from_slice(&broken);
        datagram.extend_from_slice(&message(9));
        let mut done = Vec::new();
        done.extend_from_slice(&20u32.to_ne_bytes());
        done.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        done.extend_from_slice(&NLM_F_MULTI.to_ne_bytes());
        done.extend_from_slice(&1u32.to_ne_bytes());
        done.extend_from_slice(&0u32.to_ne_bytes());
        done.extend_from_slice(&0i32.to_ne_bytes());
        datagram.extend_from_slice(&done);
        state.on_datagram(&datagram);

        let reply = result.try_recv().expect("answered").expect("a dump");
        let read: Vec<_> = reply
            .messages(FAMILY)
            .map(|parsed| parsed.map(|message| message.attrs))
            .collect();
        assert_eq!(read.len(), 3, "{read:?}");
        assert_eq!(read[0].as_ref().ok(), Some(&vec![IpvsAttr::TimeoutTcp(7)]));
        assert!(read[1].is_err(), "{:?}", read[1]);
        assert_eq!(read[2].as_ref().ok(), Some(&vec![IpvsAttr::TimeoutTcp(9)]));
    }

    #[test]
    fn replies_with_unknown_sequence_numbers_are_dropped() {
        let mut state = state(4096);
        let (reply, mut results) = oneshot::channel();
        state.enqueue(Job::Batch {
            messages: vec![request(IpvsCmd::DelService)],
            reply,
        });
        state.fill_send_buffer();
        state.on_datagram(&error_reply(999, libc::ENOENT));
        state.on_datagram(&[1, 2, 3]);
        assert!(results.try_recv().is_err());
        state.on_datagram(&error_reply(1, libc::ESRCH));
        assert!(matches!(
            results.try_recv().unwrap()[0],
            Err(Failure::Kernel {
                errno: libc::ESRCH,
                ..
            })
        ));
    }

    #[test]
    fn an_overrun_fails_what_is_in_flight() {
        let mut state = state(4096);
        let (reply, mut results) = oneshot::channel();
        state.enqueue(Job::Batch {
            messages: vec![request(IpvsCmd::NewService), request(IpvsCmd::NewService)],
            reply,
        });
        state.fill_send_buffer();
        state.fail_in_flight(|| Failure::Overrun);
        assert!(results
            .try_recv()
            .unwrap()
            .iter()
            .all(|r| matches!(r, Err(Failure::Overrun))));
    }

    #[test]
    fn extack_messages_are_read_after_the_echoed_header() {
        let mut after_code = vec![0u8; 16];
        // NLMSGERR_ATTR_MSG "bad attr\0"
        after_code.extend_from_slice(&[13, 0, 1, 0]);
        after_code.extend_from_slice(b"bad attr\0");
        after_code.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            extack_message(&after_code, NLM_F_CAPPED | NLM_F_ACK_TLVS).as_deref(),
            Some("bad attr")
        );
        assert_eq!(extack_message(&after_code, NLM_F_CAPPED), None);
    }
}
