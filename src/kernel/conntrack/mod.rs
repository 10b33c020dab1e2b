//! The conntrack table, through ctnetlink (NETLINK_NETFILTER).
//!
//! When a UDP or SCTP endpoint leaves a service, the flows IPVS bound to it
//! stay in conntrack and keep steering the client's retries to an address
//! that is gone. Like kube-proxy's `conntrack -D -p udp --orig-dst ADDR
//! --orig-port-dst PORT --reply-src ENDPOINT`, the proxy deletes them; with
//! `net.ipv4.vs.conntrack=1` the reply tuple's source is the real server.
//!
//! One call dumps each address family's table once, matches every flow
//! against all filters with one hash lookup, and deletes the matches in
//! pipelined batches: many acknowledged deletes per `sendmsg`, the batch
//! sized so that their answers fit the receive buffer.

#[cfg(test)]
mod fuzz;
mod matcher;
mod message;

use std::io;
use std::time::Duration;

use foldhash::{HashSet, HashSetExt};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

use self::matcher::FlowMatcher;
use self::message::{Family, Flow};
use super::{ConntrackKernel, KernelError};
use crate::desired::FlowFilter;

/// Largest datagram handed to one `sendmsg`.
const MAX_SEND: usize = 64 * 1024;
/// Receive buffer for one datagram: the kernel's dump skbs stay below 32 KiB.
const RECV_BUFFER: usize = 128 * 1024;
/// Socket receive buffer, forced past rmem_max when allowed (CAP_NET_ADMIN).
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;
/// The receive-buffer bytes one queued answer may occupy (skb truesize),
/// as netlink-ipvs counts them.
const BYTES_PER_REPLY: usize = 2048;
/// How long a read waits for the kernel, which answers within the
/// `sendmsg` that carried the request: past this, something is wrong.
const RECV_TIMEOUT: Duration = Duration::from_secs(30);

/// The conntrack table of this network namespace, over a ctnetlink socket
/// of its own. Reads and writes are blocking and run on tokio's blocking
/// pool.
#[derive(Debug)]
pub struct NetlinkConntrack {
    /// `None` after a failed call, whose unread answers could confuse the
    /// next one: that call opens a fresh socket.
    socket: Option<ConntrackSocket>,
    sequence: u32,
}

impl NetlinkConntrack {
    /// Opens a NETLINK_NETFILTER socket. Its requests need CAP_NET_ADMIN and
    /// the nf_conntrack_netlink module, which the kernel loads on first use.
    pub fn new() -> Result<Self, KernelError> {
        Ok(NetlinkConntrack {
            socket: Some(ConntrackSocket::open()?),
            sequence: 0,
        })
    }
}

impl ConntrackKernel for NetlinkConntrack {
    #[tracing::instrument(skip_all, fields(filters = filters.len()))]
    async fn delete_flows(&mut self, filters: &[FlowFilter]) -> Result<usize, KernelError> {
        if filters.is_empty() {
            return Ok(0);
        }
        let socket = match self.socket.take() {
            Some(socket) => socket,
            None => ConntrackSocket::open()?,
        };
        let mut session = Session::new(socket, self.sequence);
        let filters = filters.to_vec();
        let (session, result) = tokio::task::spawn_blocking(move || {
            let result = session.delete_flows(&filters);
            (session, result)
        })
        .await
        .map_err(|e| KernelError::Other(format!("deleting conntrack flows: {e}")))?;
        self.sequence = session.sequence;
        if result.is_ok() {
            self.socket = Some(session.transport);
        }
        result
    }
}

/// Where requests go and answers come from: the socket, or a script in tests.
trait Transport {
    fn send(&mut self, request: &[u8]) -> io::Result<()>;

    /// Reads one datagram into `datagram`, replacing what it held.
    fn recv(&mut self, datagram: &mut Vec<u8>) -> io::Result<()>;

    /// How many acknowledged requests may be in flight before their answers
    /// could overflow the receive buffer and be lost.
    fn window(&self) -> usize;
}

/// A blocking ctnetlink socket.
#[derive(Debug)]
struct ConntrackSocket {
    socket: Socket,
    window: usize,
}

impl ConntrackSocket {
    fn open() -> Result<Self, KernelError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            KernelError::Other(format!("{what} a ctnetlink socket: {e}"))
        };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| failed("opening", &e))?;
        socket
            .bind_auto()
            .and_then(|_| socket.connect(&SocketAddr::new(0, 0)))
            .map_err(|e| failed("binding", &e))?;
        if let Err(err) = setsockopt(&socket, sockopt::RcvBufForce, &SOCKET_BUFFER) {
            tracing::debug!(%err, "SO_RCVBUFFORCE refused, falling back to SO_RCVBUF");
            let _ = socket.set_rx_buf_sz(SOCKET_BUFFER as libc::c_int);
        }
        let timeout = TimeVal::new(RECV_TIMEOUT.as_secs() as _, 0);
        setsockopt(&socket, sockopt::ReceiveTimeout, &timeout)
            .map_err(|e| failed("setting a receive timeout on", &e))?;
        // A failed delete's answer then holds only the request's header.
        let _ = socket.set_cap_ack(true);
        // The kernel reports the doubled, bookkept size; 0 if it cannot.
        let receive_buffer = socket.get_rx_buf_sz().unwrap_or(0);
        Ok(ConntrackSocket {
            socket,
            window: (receive_buffer / BYTES_PER_REPLY).max(1),
        })
    }
}

impl Transport for ConntrackSocket {
    fn send(&mut self, request: &[u8]) -> io::Result<()> {
        self.socket.send(request, 0).map(|_| ())
    }

    fn recv(&mut self, datagram: &mut Vec<u8>) -> io::Result<()> {
        datagram.clear();
        datagram.reserve(RECV_BUFFER);
        // MSG_TRUNC makes recv return the datagram's real size.
        let size = self.socket.recv(datagram, libc::MSG_TRUNC).map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                io::Error::other(format!("no answer from the kernel within {RECV_TIMEOUT:?}"))
            } else {
                e
            }
        })?;
        if size > datagram.len() {
            return Err(io::Error::other(format!(
                "a {size}-byte datagram did not fit the {}-byte read buffer",
                datagram.len()
            )));
        }
        Ok(())
    }

    fn window(&self) -> usize {
        self.window
    }
}

/// One call's work on a transport: dumps, then deletes.
struct Session<T> {
    transport: T,
    /// The last sequence number used.
    sequence: u32,
    request: Vec<u8>,
    datagram: Vec<u8>,
}

impl<T: Transport> Session<T> {
    fn new(transport: T, sequence: u32) -> Self {
        Session {
            transport,
            sequence,
            request: Vec::with_capacity(MAX_SEND),
            datagram: Vec::with_capacity(RECV_BUFFER),
        }
    }

    fn delete_flows(&mut self, filters: &[FlowFilter]) -> Result<usize, KernelError> {
        let matcher = FlowMatcher::new(filters);
        let mut doomed = Vec::new();
        for family in matcher.families() {
            self.dump(family, |flow| {
                if matcher.matches(&flow) {
                    doomed.push(flow);
                }
            })?;
        }
        // A dump resumed after a full skb may show a flow twice.
        let mut seen = HashSet::with_capacity(doomed.len());
        doomed.retain(|flow| seen.insert(*flow));
        tracing::debug!(matched = doomed.len(), "deleting conntrack flows");
        let deleted = self.delete(&doomed)?;
        tracing::debug!(deleted, "deleted conntrack flows");
        Ok(deleted)
    }

    /// Dumps the `family` table, handing each flow to `each` and skipping
    /// flows that do not parse.
    fn dump(&mut self, family: Family, mut each: impl FnMut(Flow)) -> Result<(), KernelError> {
        let failed = |e: &dyn std::fmt::Display| {
            KernelError::Other(format!("dumping the {family} conntrack table: {e}"))
        };
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        self.request.clear();
        message::dump_request(family, sequence, &mut self.request);
        self.transport.send(&self.request).map_err(|e| failed(&e))?;
        let mut skipped = 0usize;
        loop {
            self.transport
                .recv(&mut self.datagram)
                .map_err(|e| failed(&e))?;
            for message in message::messages(&self.datagram) {
                let message = message.map_err(|e| failed(&e))?;
                if message.sequence != sequence {
                    continue;
                }
                if message.is_done() || message.is_error() {
                    return match message.errno().map_err(|e| failed(&e))? {
                        0 if message.is_done() => {
                            if skipped > 0 {
                                tracing::debug!(%family, skipped, "skipped malformed conntrack flows");
                            }
                            Ok(())
                        }
                        errno => Err(failed(&dump_errno(errno))),
                    };
                }
                if message.is_flow() {
                    match message::parse_flow(message.payload) {
                        Ok(flow) => each(flow),
                        Err(error) => {
                            skipped += 1;
                            tracing::debug!(%family, %error, "skipping a malformed conntrack flow");
                        }
                    }
                }
            }
        }
    }

    /// Deletes `flows`, a window of them per `sendmsg`, and counts those the
    /// kernel deleted. ENOENT (gone already, or replaced by a newer flow)
    /// counts as neither deleted nor failed; other failures do not stop the
    /// rest and are reported together at the end.
    fn delete(&mut self, flows: &[Flow]) -> Result<usize, KernelError> {
        let window = self.transport.window().max(1);
        let mut deleted = 0;
        let mut failures: Vec<String> = Vec::new();
        let mut rest = flows;
        while !rest.is_empty() {
            let first = self.sequence.wrapping_add(1);
            let batch = self.fill_deletes(rest, first, window);
            let (sent, later) = rest.split_at(batch);
            rest = later;
            self.sequence = first.wrapping_add(batch as u32 - 1);
            let failed = |e: &dyn std::fmt::Display, deleted: usize| {
                KernelError::Other(format!(
                    "deleting {} conntrack flows (from {}): {e}; {deleted} deleted before",
                    sent.len(),
                    sent[0].original
                ))
            };
            self.transport
                .send(&self.request)
                .map_err(|e| failed(&e, deleted))?;
            let mut answered = vec![false; batch];
            let mut pending = batch;
            while pending > 0 {
                self.transport
                    .recv(&mut self.datagram)
                    .map_err(|e| failed(&e, deleted))?;
                for message in message::messages(&self.datagram) {
                    let message = message.map_err(|e| failed(&e, deleted))?;
                    let index = message.sequence.wrapping_sub(first) as usize;
                    if !message.is_error() || index >= batch || answered[index] {
                        continue;
                    }
                    answered[index] = true;
                    pending -= 1;
                    match message.errno() {
                        Ok(0) => deleted += 1,
                        Ok(libc::ENOENT) => {}
                        Ok(errno) => failures.push(format!(
                            "deleting conntrack flow {}: {}",
                            sent[index].original,
                            io::Error::from_raw_os_error(errno)
                        )),
                        Err(e) => failures.push(format!(
                            "deleting conntrack flow {}: {e}",
                            sent[index].original
                        )),
                    }
                }
            }
        }
        match failures.split_first() {
            None => Ok(deleted),
            Some((first, [])) => Err(KernelError::Other(format!(
                "{first}; {deleted} other flows deleted"
            ))),
            Some((first, more)) => Err(KernelError::Other(format!(
                "{first}; and {} more deletes failed; {deleted} flows deleted",
                more.len()
            ))),
        }
    }

    /// Fills the request buffer with the deletes of as many of `flows` as
    /// the window and one `sendmsg` allow (at least one), numbered from
    /// `first`, and returns how many.
    fn fill_deletes(&mut self, flows: &[Flow], first: u32, window: usize) -> usize {
        self.request.clear();
        let mut count = 0;
        for flow in flows.iter().take(window) {
            let before = self.request.len();
            message::delete_request(flow, first.wrapping_add(count as u32), &mut self.request);
            if self.request.len() > MAX_SEND && count > 0 {
                self.request.truncate(before);
                break;
            }
            count += 1;
        }
        count
    }
}

/// Explains an errno that ended a dump.
fn dump_errno(errno: i32) -> String {
    let error = io::Error::from_raw_os_error(errno);
    match errno {
        libc::EPERM => format!("{error} (needs CAP_NET_ADMIN)"),
        libc::EINVAL | libc::EOPNOTSUPP => {
            format!("{error} (is the nf_conntrack_netlink module available?)")
        }
        _ => error.to_string(),
    }
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use std::collections::VecDeque;
    use std::net::IpAddr;

    use super::message::tests::{dns_flow, flow_message};
    use super::*;
    use crate::desired::Protocol;

    /// A conntrack table behind a scripted transport. A dump answers with
    /// the flows of the requested family, `per_datagram` to a datagram, then
    /// NLMSG_DONE; a delete answers with an ACK if the table holds the flow
    /// and removes it, ENOENT if not.
    struct FakeKernel {
        flows: Vec<Flow>,
        per_datagram: usize,
        window: usize,
        /// Datagrams slipped into the first datagram of a dump.
        extra: Vec<Vec<u8>>,
        dump_errno: Option<i32>,
        /// The errno that a delete of this flow gets instead of an ACK.
        refuse: Option<(Flow, i32)>,
        /// Flows that expire between the dump and the deletes.
        expire: Vec<Flow>,
        sent: Vec<Vec<u8>>,
        queued: VecDeque<Vec<u8>>,
    }

    impl FakeKernel {
        fn new(flows: Vec<Flow>) -> Self {
            FakeKernel {
                flows,
                per_datagram: 2,
                window: 64,
                extra: Vec::new(),
                dump_errno: None,
                refuse: None,
                expire: Vec::new(),
                sent: Vec::new(),
                queued: VecDeque::new(),
            }
        }

        fn answer_dump(&mut self, sequence: u32, af: u8) {
            if let Some(errno) = self.dump_errno {
                self.queued.push_back(answer(2, sequence, errno));
                return;
            }
            let family = if af == libc::AF_INET as u8 {
                Family::Ipv4
            } else {
                Family::Ipv6
            };
            let flows: Vec<Flow> = self
                .flows
                .iter()
                .filter(|f| f.family() == family)
                .copied()
                .collect();
            let mut datagrams: Vec<Vec<u8>> = flows
                .chunks(self.per_datagram)
                .map(|chunk| {
                    chunk
                        .iter()
                        .flat_map(|f| flow_message(f, sequence))
                        .collect()
                })
                .collect();
            if datagrams.is_empty() {
                datagrams.push(Vec::new());
            }
            for extra in self.extra.drain(..) {
                datagrams[0].extend(extra);
            }
            datagrams.push(answer(3, sequence, 0));
            self.queued.extend(datagrams);
            self.flows.retain(|f| !self.expire.contains(f));
        }

        fn answer_delete(&mut self, payload: &[u8], sequence: u32) {
            let held = self.flows.iter().position(|flow| {
                let mut request = Vec::new();
                message::delete_request(flow, sequence, &mut request);
                request[16..] == *payload
            });
            let errno = match (held, self.refuse) {
                (Some(i), Some((refused, errno))) if self.flows[i] == refused => errno,
                (Some(i), _) => {
                    self.flows.remove(i);
                    0
                }
                (None, _) => libc::ENOENT,
            };
            self.queued.push_back(answer(2, sequence, errno));
        }
    }

    /// An NLMSG_ERROR (type 2, with the request's header, here zeros) or an
    /// NLMSG_DONE (type 3) carrying `-errno`.
    fn answer(message_type: u16, sequence: u32, errno: i32) -> Vec<u8> {
        let length: u32 = if message_type == 2 { 36 } else { 20 };
        let mut out = length.to_ne_bytes().to_vec();
        out.extend_from_slice(&message_type.to_ne_bytes());
        out.extend_from_slice(&0x100u16.to_ne_bytes());
        out.extend_from_slice(&sequence.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&(-errno).to_ne_bytes());
        out.resize(length as usize, 0);
        out
    }

    impl Transport for FakeKernel {
        fn send(&mut self, request: &[u8]) -> io::Result<()> {
            self.sent.push(request.to_vec());
            for message in message::messages(request) {
                let message = message.expect("the proxy sends framed requests");
                match message.message_type {
                    0x0101 => self.answer_dump(message.sequence, message.payload[0]),
                    0x0102 => self.answer_delete(message.payload, message.sequence),
                    other => panic!("unexpected request type {other:#x}"),
                }
            }
            Ok(())
        }

        fn recv(&mut self, datagram: &mut Vec<u8>) -> io::Result<()> {
            *datagram = self
                .queued
                .pop_front()
                .ok_or_else(|| io::Error::new(io::ErrorKind::WouldBlock, "no answer queued"))?;
            Ok(())
        }

        fn window(&self) -> usize {
            self.window
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// `dns_flow` from client port `port`, answered by `endpoint`.
    fn dns_from(port: u16, endpoint: &str) -> Flow {
        let mut flow = dns_flow();
        flow.original.src_port = port;
        flow.reply.dst_port = port;
        flow.reply.src = ip(endpoint);
        flow.id = Some(u32::from(port));
        flow
    }

    fn dns_filter(endpoint: &str) -> FlowFilter {
        FlowFilter {
            protocol: Protocol::Udp,
            addr: ip("10.96.0.10"),
            port: 53,
            endpoint: ip(endpoint),
        }
    }

    fn run(kernel: FakeKernel, filters: &[FlowFilter]) -> (FakeKernel, Result<usize, KernelError>) {
        // Start next to the wrap so that every test crosses it.
        let mut session = Session::new(kernel, u32::MAX - 1);
        let result = session.delete_flows(filters);
        (session.transport, result)
    }

    /// The number of messages in each datagram the proxy sent.
    fn batches(kernel: &FakeKernel) -> Vec<usize> {
        kernel
            .sent
            .iter()
            .map(|d| message::messages(d).count())
            .collect()
    }

    #[test]
    fn deletes_the_matching_flows_of_a_multipart_dump_in_windows() {
        let gone = "10.244.2.5";
        let mut tcp = dns_from(40004, gone);
        tcp.original.protocol = 6;
        tcp.reply.protocol = 6;
        let keep = vec![dns_from(40001, "10.244.2.6"), tcp];
        let doomed: Vec<Flow> = (40010..40015).map(|port| dns_from(port, gone)).collect();
        let mut kernel = FakeKernel::new([keep.clone(), doomed].concat());
        kernel.window = 2;

        let (kernel, result) = run(kernel, &[dns_filter(gone)]);

        assert_eq!(result, Ok(5));
        assert_eq!(kernel.flows, keep);
        // One dump, then five deletes two at a time.
        assert_eq!(batches(&kernel), [1, 2, 2, 1]);
        assert_eq!(kernel.sent[0][4..6], [0x01, 0x01]);
        assert_eq!(kernel.sent[0][16], libc::AF_INET as u8);
    }

    #[test]
    fn a_flow_gone_before_its_delete_is_not_counted_nor_an_error() {
        let gone = "10.244.2.5";
        let mut kernel = FakeKernel::new(vec![dns_from(40000, gone), dns_from(40001, gone)]);
        kernel.expire = vec![dns_from(40000, gone)];
        let (kernel, result) = run(kernel, &[dns_filter(gone)]);
        assert_eq!(result, Ok(1));
        assert!(kernel.flows.is_empty());
    }

    #[test]
    fn a_flow_that_took_over_a_tuple_since_the_dump_is_left_alone() {
        // Same tuple, new conntrack id: the kernel answers ENOENT to the id.
        let gone = "10.244.2.5";
        let mut kernel = FakeKernel::new(vec![dns_from(40000, gone)]);
        kernel.expire = vec![dns_from(40000, gone)];
        let mut newer = dns_from(40000, "10.244.2.6");
        newer.id = Some(7);
        kernel.flows.push(newer);
        let (kernel, result) = run(kernel, &[dns_filter(gone)]);
        assert_eq!(result, Ok(0));
        assert_eq!(kernel.flows, [newer]);
    }

    #[test]
    fn malformed_flows_and_answers_to_other_requests_are_skipped() {
        let gone = "10.244.2.5";
        let mut kernel = FakeKernel::new(vec![dns_from(40000, gone)]);
        // A flow message whose CTA_TUPLE_ORIG is cut to 3 bytes, and a
        // matching flow answering another request's sequence number.
        let mut malformed = flow_message(&dns_from(40001, gone), u32::MAX);
        malformed[20] = 3;
        let stale = flow_message(&dns_from(40002, gone), 12345);
        kernel.extra = vec![malformed, stale];
        let (kernel, result) = run(kernel, &[dns_filter(gone)]);
        assert_eq!(result, Ok(1));
        assert_eq!(batches(&kernel), [1, 1]);
    }

    #[test]
    fn a_failed_delete_is_reported_after_the_others_are_done() {
        let gone = "10.244.2.5";
        let stuck = dns_from(40000, gone);
        let mut kernel = FakeKernel::new(vec![stuck, dns_from(40001, gone), dns_from(40002, gone)]);
        kernel.refuse = Some((stuck, libc::EBUSY));
        let (kernel, result) = run(kernel, &[dns_filter(gone)]);
        let Err(KernelError::Other(error)) = result else {
            panic!("expected an error, got {result:?}");
        };
        assert!(
            error.starts_with(
                "deleting conntrack flow protocol 17 192.0.2.2:40000 -> 10.96.0.10:53: \
                 Device or resource busy"
            ),
            "{error}"
        );
        assert!(error.ends_with("2 other flows deleted"), "{error}");
        assert_eq!(kernel.flows, [stuck]);
    }

    #[test]
    fn a_refused_dump_is_an_error_that_explains_itself() {
        let mut kernel = FakeKernel::new(vec![dns_flow()]);
        kernel.dump_errno = Some(libc::EPERM);
        let (kernel, result) = run(kernel, &[dns_filter("10.244.2.5")]);
        let Err(KernelError::Other(error)) = result else {
            panic!("expected an error, got {result:?}");
        };
        assert!(
            error.starts_with("dumping the IPv4 conntrack table: "),
            "{error}"
        );
        assert!(error.ends_with("(needs CAP_NET_ADMIN)"), "{error}");
        assert_eq!(batches(&kernel), [1]);
    }

    #[test]
    fn a_datagram_that_cannot_be_framed_ends_the_dump_with_an_error() {
        let mut kernel = FakeKernel::new(vec![dns_flow()]);
        kernel.extra = vec![vec![200, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]];
        let (_, result) = run(kernel, &[dns_filter("10.244.2.5")]);
        let Err(KernelError::Other(error)) = result else {
            panic!("expected an error, got {result:?}");
        };
        assert!(
            error.starts_with("dumping the IPv4 conntrack table: netlink message at byte"),
            "{error}"
        );
    }

    #[test]
    fn only_the_families_of_the_filters_are_dumped() {
        let mut v6 = dns_flow();
        v6.original.src = ip("2001:db8::2");
        v6.original.dst = ip("fd00::10");
        v6.reply.src = ip("fd00:244::5");
        v6.reply.dst = ip("2001:db8::2");
        let kernel = FakeKernel::new(vec![dns_flow(), v6]);
        let filter = FlowFilter {
            protocol: Protocol::Udp,
            addr: ip("fd00::10"),
            port: 53,
            endpoint: ip("fd00:244::5"),
        };
        let (kernel, result) = run(kernel, &[filter]);
        assert_eq!(result, Ok(1));
        assert_eq!(kernel.flows, [dns_flow()]);
        assert_eq!(batches(&kernel), [1, 1]);
        assert_eq!(kernel.sent[0][16], libc::AF_INET6 as u8);
    }

    #[test]
    fn no_filters_send_nothing() {
        let (kernel, result) = run(FakeKernel::new(vec![dns_flow()]), &[]);
        assert_eq!(result, Ok(0));
        assert!(kernel.sent.is_empty());
    }
}
