//! kube-ipvs0 and the node's addresses, through rtnetlink.
//!
//! Every service address is bound on a dummy interface so that the kernel
//! treats it as local and IPVS sees the packets in LOCAL_IN. Like upstream,
//! the interface stays down: IPv4 local routes exist regardless, and a down
//! dummy never answers ARP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use netlink_packet_core::{
    NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use rtnetlink::{AddressMessageBuilder, Handle, LinkDummy};
use tokio::task::JoinHandle;

use super::{AddressKernel, KernelError};

/// The dummy interface that holds every service address.
#[derive(Debug)]
pub struct DummyLink {
    handle: Handle,
    connection: JoinHandle<()>,
    name: String,
    index: Option<u32>,
}

impl Drop for DummyLink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl DummyLink {
    /// Opens an rtnetlink connection for the interface `name` (kube-ipvs0).
    pub fn new(name: &str) -> Result<Self, KernelError> {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| KernelError::Other(format!("opening an rtnetlink socket: {e}")))?;
        Ok(DummyLink {
            handle,
            connection: tokio::spawn(connection),
            name: name.to_owned(),
            index: None,
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn find(&self) -> Result<Option<u32>, KernelError> {
        let mut links = self.handle.link().get().match_name(&self.name).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(Some(link.header.index)),
            Ok(None) => Ok(None),
            Err(e) => match errno(&e) {
                Some(libc::ENODEV) => Ok(None),
                _ => Err(rtnl_error(&format!("looking up link {}", self.name), &e)),
            },
        }
    }

    /// Addresses currently held by interface `index`.
    async fn addresses(&self, index: u32) -> Result<Vec<IpAddr>, KernelError> {
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| rtnl_error(&format!("listing addresses of {}", self.name), &e))?;
        Ok(messages.iter().filter_map(address_of).collect())
    }

    /// Deletes the interface and, with it, every address it holds.
    /// Succeeds when it is already gone.
    pub async fn delete(&mut self) -> Result<bool, KernelError> {
        let Some(index) = self.find().await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::ENODEV) => return Ok(false),
            Err(e) => return Err(rtnl_error(&format!("deleting link {}", self.name), &e)),
        }
        self.index = None;
        Ok(true)
    }

    /// Addresses held on the interface now, without creating it.
    pub async fn current_addresses(&mut self) -> Result<Vec<IpAddr>, KernelError> {
        match self.find().await? {
            Some(index) => self.addresses(index).await,
            None => Ok(Vec::new()),
        }
    }

    fn index(&self) -> Result<u32, KernelError> {
        self.index.ok_or_else(|| {
            KernelError::Other(format!("link {} has not been ensured yet", self.name))
        })
    }
}

impl AddressKernel for DummyLink {
    #[tracing::instrument(skip(self), fields(link = %self.name))]
    async fn ensure_link(&mut self) -> Result<Vec<IpAddr>, KernelError> {
        let index = match self.find().await? {
            Some(index) => index,
            None => {
                match self
                    .handle
                    .link()
                    .add(LinkDummy::new(&self.name).build())
                    .execute()
                    .await
                {
                    Ok(()) => tracing::info!("created dummy interface"),
                    Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                    Err(e) => {
                        return Err(rtnl_error(
                            &format!(
                                "creating dummy link {} (is the dummy module available?)",
                                self.name
                            ),
                            &e,
                        ))
                    }
                }
                self.find().await?.ok_or_else(|| {
                    KernelError::Other(format!("link {} vanished right after creation", self.name))
                })?
            }
        };
        self.index = Some(index);
        self.addresses(index).await
    }

    #[tracing::instrument(skip(self), fields(link = %self.name))]
    async fn add_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        add(&self.handle, self.index()?, &self.name, addr).await
    }

    #[tracing::instrument(skip_all, fields(link = %self.name, addrs = addrs.len()))]
    async fn add_addresses(&mut self, addrs: &[IpAddr]) -> Vec<Result<(), KernelError>> {
        let index = match self.index() {
            Ok(index) => index,
            Err(e) => return addrs.iter().map(|_| Err(e.clone())).collect(),
        };
        // The kernel does a netlink request's work inside the sendmsg that
        // carries it: on a blocking thread, the additions run on one core
        // while the caller's IPVS batch runs on another.
        let (link, batch) = (self.name.clone(), addrs.to_vec());
        match tokio::task::spawn_blocking(move || add_batched(index, &link, &batch)).await {
            Ok(results) => results,
            Err(e) => {
                let e = KernelError::Other(format!("adding addresses to {}: {e}", self.name));
                addrs.iter().map(|_| Err(e.clone())).collect()
            }
        }
    }

    #[tracing::instrument(skip(self), fields(link = %self.name))]
    async fn del_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        // Built directly rather than looked up: a filtered get dumps every
        // address on the host, which made one delete O(services).
        let message = host_address_message(self.index()?, addr);
        match self.handle.address().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENOENT)) => {
                Err(KernelError::NotFound)
            }
            Err(e) => Err(rtnl_error(
                &format!("unbinding {addr} from {}", self.name),
                &e,
            )),
        }
    }
}

/// Address additions per sendmsg. Their messages fit in 64 KiB, and the
/// error replies of a batch that fails throughout (each takes several
/// hundred bytes of receive buffer) come close to the default 208 KiB
/// receive buffer without passing it. Were it to overflow, the read fails,
/// and the whole batch is reported failed and retried with backoff.
const ADD_BATCH: usize = 256;

/// Adds `addrs` to interface `index` on a socket of its own: many
/// RTM_NEWADDR per sendmsg, as netlink-ipvs batches IPVS commands. Only the
/// last message of a batch asks for an ACK. The kernel handles a socket's
/// messages in order and reports every failure, ACK or not, so once that ACK
/// is in, every message before it without an error has succeeded. One
/// result per address, in order.
fn add_batched(index: u32, link: &str, addrs: &[IpAddr]) -> Vec<Result<(), KernelError>> {
    let fail_all = |what: &str, e: std::io::Error| {
        let e = KernelError::Other(format!("{what} to add addresses to {link}: {e}"));
        addrs.iter().map(|_| Err(e.clone())).collect()
    };
    let mut socket = match Socket::new(NETLINK_ROUTE) {
        Ok(socket) => socket,
        Err(e) => return fail_all("opening an rtnetlink socket", e),
    };
    if let Err(e) = socket
        .bind_auto()
        .and_then(|_| socket.connect(&SocketAddr::new(0, 0)))
    {
        return fail_all("binding an rtnetlink socket", e);
    }
    let mut results: Vec<Result<(), KernelError>> = Vec::with_capacity(addrs.len());
    let mut request = Vec::with_capacity(64 * 1024);
    let mut reply = Vec::with_capacity(64 * 1024);
    for (batch, chunk) in addrs.chunks(ADD_BATCH).enumerate() {
        // Sequence numbers are 1 + the address's index in `addrs`.
        let first = batch * ADD_BATCH;
        request.clear();
        for (i, &addr) in chunk.iter().enumerate() {
            let mut message = NetlinkMessage::from(RouteNetlinkMessage::NewAddress(
                host_address_message(index, addr),
            ));
            message.header.flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL;
            if i + 1 == chunk.len() {
                message.header.flags |= NLM_F_ACK;
            }
            message.header.sequence_number = sequence(first + i);
            message.finalize();
            let at = request.len();
            request.resize(at + message.buffer_len(), 0);
            message.serialize(&mut request[at..]);
        }
        let mut outcome: Vec<Result<(), KernelError>> = chunk.iter().map(|_| Ok(())).collect();
        let last = sequence(first + chunk.len() - 1);
        if let Err(e) = socket.send(&request, 0) {
            let e = KernelError::Other(format!("sending address additions to {link}: {e}"));
            results.extend(chunk.iter().map(|_| Err(e.clone())));
            continue;
        }
        'replies: loop {
            reply.clear();
            if let Err(e) = socket.recv(&mut reply, 0) {
                let e = KernelError::Other(format!("reading replies from {link}: {e}"));
                outcome.iter_mut().for_each(|o| *o = Err(e.clone()));
                break;
            }
            let mut at = 0;
            while let Ok(buffer) = NetlinkBuffer::new_checked(&reply[at..]) {
                let length = (buffer.length() as usize).max(16);
                let seq = buffer.sequence_number();
                let bytes = &reply[at..(at + length).min(reply.len())];
                at = (at + ((length + 3) & !3)).min(reply.len());
                let Some(i) = (seq as usize)
                    .checked_sub(first + 1)
                    .filter(|&i| i < chunk.len())
                else {
                    continue;
                };
                if let Some(answer) = answer_of(bytes, chunk[i], link) {
                    outcome[i] = answer;
                }
                if seq == last {
                    break 'replies;
                }
            }
        }
        results.extend(outcome);
    }
    results
}

/// What one reply says of the addition of `addr`: `None` for a message that
/// is not an answer (an ACK of success is `Some(Ok)`), an error naming the
/// address for a failure or a reply that does not decode.
fn answer_of(bytes: &[u8], addr: IpAddr, link: &str) -> Option<Result<(), KernelError>> {
    let what = || format!("binding {addr}/{} on {link}", host_prefix(addr));
    let message = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
        Ok(message) => message,
        Err(e) => {
            return Some(Err(KernelError::Other(format!(
                "{}: bad reply: {e}",
                what()
            ))))
        }
    };
    let NetlinkPayload::Error(error) = message.payload else {
        return None;
    };
    Some(match error.code {
        None => Ok(()),
        Some(code) if code.get() == -libc::EEXIST => Err(KernelError::Exists),
        // Not error.to_io(): it negates the code, which overflows on i32::MIN.
        Some(code) => Err(KernelError::Other(format!(
            "{}: {}",
            what(),
            std::io::Error::from_raw_os_error(code.get().saturating_neg())
        ))),
    })
}

/// The sequence number of the address at `index` of a batch call.
fn sequence(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

async fn add(handle: &Handle, index: u32, link: &str, addr: IpAddr) -> Result<(), KernelError> {
    let prefix = host_prefix(addr);
    match handle.address().add(index, addr, prefix).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Err(KernelError::Exists),
        Err(e) => Err(rtnl_error(
            &format!("binding {addr}/{prefix} on {link}"),
            &e,
        )),
    }
}

/// Every address of this host that can serve NodePorts: all interfaces but
/// `exclude_link` (kube-ipvs0), without loopback and link-local addresses.
pub async fn local_addresses(exclude_link: &str) -> Result<Vec<IpAddr>, KernelError> {
    let (connection, handle, _) = rtnetlink::new_connection()
        .map_err(|e| KernelError::Other(format!("opening an rtnetlink socket: {e}")))?;
    let task = tokio::spawn(connection);
    let result = async {
        let links: Vec<LinkMessage> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| rtnl_error("listing links", &e))?;
        let excluded: Vec<u32> = links
            .iter()
            .filter(|link| {
                link.attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::IfName(n) if n == exclude_link))
            })
            .map(|link| link.header.index)
            .collect();
        let messages: Vec<AddressMessage> = handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| rtnl_error("listing addresses", &e))?;
        let mut addrs: Vec<IpAddr> = messages
            .iter()
            .filter(|m| !excluded.contains(&m.header.index))
            .filter_map(address_of)
            .filter(|a| is_node_port_candidate(*a))
            .collect();
        addrs.sort();
        addrs.dedup();
        Ok(addrs)
    }
    .await;
    task.abort();
    result
}

/// Loopback and link-local addresses cannot carry NodePort traffic through
/// IPVS (upstream leaves them out too).
fn is_node_port_candidate(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local() && !a.is_unspecified(),
        IpAddr::V6(a) => {
            !a.is_loopback() && !a.is_unspecified() && (a.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// The RTM_NEWADDR/RTM_DELADDR message for `addr` as a host address on
/// interface `index`, as `ip addr add|del ADDR/32 dev ...` sends it.
fn host_address_message(index: u32, addr: IpAddr) -> AddressMessage {
    match addr {
        IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(a, 32)
            .build(),
        IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(index)
            .address(a, 128)
            .build(),
    }
}

fn host_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The address an RTM_NEWADDR carries: IFA_LOCAL for IPv4 (IFA_ADDRESS is
/// the peer on point-to-point links), IFA_ADDRESS for IPv6.
fn address_of(message: &AddressMessage) -> Option<IpAddr> {
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}

fn rtnl_error(context: &str, e: &rtnetlink::Error) -> KernelError {
    match e {
        rtnetlink::Error::NetlinkError(msg) => {
            KernelError::Other(format!("{context}: {}", msg.to_io()))
        }
        other => KernelError::Other(format!("{context}: {other}")),
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_port_candidates_leave_out_loopback_and_link_local() {
        let cases: &[(&str, bool)] = &[
            ("192.0.2.10", true),
            ("127.0.0.1", false),
            ("169.254.1.1", false),
            ("2001:db8::1", true),
            ("::1", false),
            ("fe80::1", false),
            ("0.0.0.0", false),
        ];
        for (addr, expected) in cases {
            let ip: IpAddr = addr.parse().unwrap();
            assert_eq!(is_node_port_candidate(ip), *expected, "{addr}");
        }
    }
}
