//! kube-ipvs0 and the node's addresses, through rtnetlink.
//!
//! Every service address (VIP) is made local to the node so that IPVS sees
//! its packets in LOCAL_IN, in one of two ways ([`VipMode`]):
//! - `address`, as upstream: a /32 or /128 address on a dummy interface,
//!   kube-ipvs0. Like upstream, the interface stays down: IPv4 local routes
//!   exist regardless, and a down dummy never answers ARP. The kernel walks
//!   the interface's whole address list on every IPv4 insert, so binding N
//!   addresses costs O(N²).
//! - `route`: a `local` route in table local, through `lo`, tagged with the
//!   proxy's route protocol ([`ROUTE_PROTOCOL`]). The kernel keeps routes in
//!   a trie: binding N VIPs costs O(N log N). kube-ipvs0 is still created.
//!   Routes go through `lo` rather than kube-ipvs0 for two reasons seen on
//!   the kernel: IPv6 refuses a route through a down device (ENETDOWN), and
//!   IPv4 flushes every route through an interface when its last address
//!   goes, which would drop every VIP at once while switching from addresses.
//!
//! Reading the kernel at a full sync also moves VIPs bound the other way to
//! the configured mode: the new binding is made before the old one goes, so
//! a switch drops no connection and leaves nothing of the other kind.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket, Socket, SocketAddr};
use rtnetlink::{AddressMessageBuilder, Handle, LinkDummy};
use tokio::task::JoinHandle;

use super::{AddressKernel, KernelError};

/// How service addresses are made local to the node (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum VipMode {
    /// An address on kube-ipvs0, as upstream kube-proxy binds them.
    #[default]
    Address,
    /// A `local` route in table local, through `lo`.
    Route,
}

impl VipMode {
    fn other(self) -> VipMode {
        match self {
            VipMode::Address => VipMode::Route,
            VipMode::Route => VipMode::Address,
        }
    }
}

impl std::fmt::Display for VipMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VipMode::Address => "address",
            VipMode::Route => "route",
        })
    }
}

/// The route protocol (`rtm_protocol`) of the proxy's local routes: what
/// tells them from every other route in table local. The kernel does not
/// interpret values above RTPROT_STATIC; 75 is assigned to nobody in
/// iproute2's rt_protos. `ip route show table local proto 75` lists them.
pub const ROUTE_PROTOCOL: u8 = 75;

/// The kernel's table of local routes (RT_TABLE_LOCAL).
const TABLE_LOCAL: u8 = 255;

/// The dummy interface kube-ipvs0, and the service addresses bound on it or
/// as local routes.
#[derive(Debug)]
pub struct DummyLink {
    handle: Handle,
    connection: JoinHandle<()>,
    name: String,
    index: Option<u32>,
    mode: VipMode,
    /// Addresses and routes inside these CIDRs are not the proxy's: never
    /// moved from one mode to the other.
    exclude: Vec<IpNet>,
}

impl Drop for DummyLink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// An rtnetlink connection for one dump, closed when dropped. netlink-proto
/// queues a dump's replies as they arrive and its queue keeps its room once
/// drained (1.4 MB after 10,000 routes), so a dump on the long-lived
/// connection would hold the room of the largest dump for good.
struct DumpConnection {
    handle: Handle,
    task: JoinHandle<()>,
}

impl DumpConnection {
    /// With `strict`, the kernel itself filters a route dump down to the
    /// request's table, type and protocol (strict dump checking).
    fn open(strict: bool) -> Result<Self, KernelError> {
        let open = |e: std::io::Error| {
            KernelError::Other(format!("opening an rtnetlink socket for a dump: {e}"))
        };
        let (mut connection, handle, _) = rtnetlink::new_connection().map_err(open)?;
        if strict {
            connection
                .socket_mut()
                .socket_ref()
                .set_netlink_get_strict_chk(true)
                .map_err(open)?;
        }
        Ok(DumpConnection {
            handle,
            task: tokio::spawn(connection),
        })
    }
}

impl Drop for DumpConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DummyLink {
    /// Opens rtnetlink connections for the interface `name` (kube-ipvs0),
    /// binding VIPs as addresses on it.
    pub fn new(name: &str) -> Result<Self, KernelError> {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| KernelError::Other(format!("opening an rtnetlink socket: {e}")))?;
        Ok(DummyLink {
            handle,
            connection: tokio::spawn(connection),
            name: name.to_owned(),
            index: None,
            mode: VipMode::Address,
            exclude: Vec::new(),
        })
    }

    /// Binds VIPs the `mode` way. VIPs found bound the other way (outside
    /// `exclude`) are moved at the next [`AddressKernel::ensure_link`].
    pub fn with_mode(mut self, mode: VipMode, exclude: &[IpNet]) -> Self {
        self.mode = mode;
        self.exclude = exclude.to_vec();
        self
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How this link binds VIPs.
    pub fn mode(&self) -> VipMode {
        self.mode
    }

    async fn find(&self, name: &str) -> Result<Option<u32>, KernelError> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(Some(link.header.index)),
            Ok(None) => Ok(None),
            Err(e) => match errno(&e) {
                Some(libc::ENODEV) => Ok(None),
                _ => Err(rtnl_error(&format!("looking up link {name}"), &e)),
            },
        }
    }

    /// Makes sure the interface exists, creating it if it does not, and
    /// returns its index. Reads nothing else: `run` calls it at start, while
    /// the source's first lists come in, so that the first sync only reads
    /// the interface (as it only reads the nftables table, made at start
    /// too); every full sync makes sure of it again through
    /// [`AddressKernel::ensure_link`].
    #[tracing::instrument(skip(self), fields(link = %self.name))]
    pub async fn create(&mut self) -> Result<u32, KernelError> {
        let index = match self.find(&self.name).await? {
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
                self.find(&self.name).await?.ok_or_else(|| {
                    KernelError::Other(format!("link {} vanished right after creation", self.name))
                })?
            }
        };
        self.index = Some(index);
        Ok(index)
    }

    /// Addresses currently held by interface `index`.
    async fn addresses(&self, index: u32) -> Result<Vec<IpAddr>, KernelError> {
        let connection = DumpConnection::open(false)?;
        let mut dump = connection
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        // Each message is read as it comes, not all collected first.
        let mut addrs = Vec::new();
        while let Some(message) = dump
            .try_next()
            .await
            .map_err(|e| rtnl_error(&format!("listing addresses of {}", self.name), &e))?
        {
            addrs.extend(address_of(&message));
        }
        Ok(addrs)
    }

    /// The VIPs bound as the proxy's local routes, of both families.
    pub async fn local_routes(&self) -> Result<Vec<IpAddr>, KernelError> {
        let connection = DumpConnection::open(true)?;
        let mut vips = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut request = RouteMessage::default();
            request.header.address_family = family;
            request.header.table = TABLE_LOCAL;
            request.header.protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
            request.header.kind = RouteType::Local;
            let mut dump = connection.handle.route().get(request).execute();
            loop {
                match dump.try_next().await {
                    Ok(Some(route)) => vips.extend(vip_of_route(&route)),
                    Ok(None) => break,
                    // A kernel without IPv6 has nothing to dump.
                    Err(e)
                        if family == AddressFamily::Inet6
                            && errno(&e) == Some(libc::EAFNOSUPPORT) =>
                    {
                        break
                    }
                    Err(e) => return Err(rtnl_error("listing the proxy's local routes", &e)),
                }
            }
        }
        Ok(vips)
    }

    /// Deletes the interface and, with it, every address it holds.
    /// Succeeds when it is already gone.
    pub async fn delete(&mut self) -> Result<bool, KernelError> {
        let Some(index) = self.find(&self.name).await? else {
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
        match self.find(&self.name).await? {
            Some(index) => self.addresses(index).await,
            None => Ok(Vec::new()),
        }
    }

    fn index(&self) -> Result<u32, KernelError> {
        self.index.ok_or_else(|| {
            KernelError::Other(format!("link {} has not been ensured yet", self.name))
        })
    }

    /// Binds `addrs` the `mode` way, batched, one result per address.
    async fn bind(&self, mode: VipMode, addrs: &[IpAddr]) -> Vec<Result<(), KernelError>> {
        self.batch(mode, Write::Bind, addrs).await
    }

    /// Runs one kind of write over `addrs` on a blocking thread (see
    /// [`batched`]).
    async fn batch(
        &self,
        mode: VipMode,
        write: Write,
        addrs: &[IpAddr],
    ) -> Vec<Result<(), KernelError>> {
        let target = match self.target(mode) {
            Ok(target) => target,
            Err(e) => return addrs.iter().map(|_| Err(e.clone())).collect(),
        };
        // The kernel does a netlink request's work inside the sendmsg that
        // carries it: on a blocking thread, the writes run on one core
        // while the caller's IPVS batch runs on another.
        let (link, batch) = (self.name.clone(), addrs.to_vec());
        let task = move || batched(&target, write, &link, &batch);
        match tokio::task::spawn_blocking(task).await {
            Ok(results) => results,
            Err(e) => {
                let e = KernelError::Other(format!("writing VIPs of {}: {e}", self.name));
                addrs.iter().map(|_| Err(e.clone())).collect()
            }
        }
    }

    fn target(&self, mode: VipMode) -> Result<Target, KernelError> {
        Ok(match mode {
            VipMode::Address => Target::Address(self.index()?),
            VipMode::Route => Target::Route(LOOPBACK_INDEX),
        })
    }

    /// Moves VIPs bound the other way (`stray`, minus excluded ones) to the
    /// configured mode: each is bound anew, then, if that worked, unbound the
    /// old way. Returns the VIPs still bound only the old way.
    async fn migrate(&self, held: &[IpAddr], stray: Vec<IpAddr>) -> Vec<IpAddr> {
        let stray: Vec<IpAddr> = stray
            .into_iter()
            .filter(|a| !self.exclude.iter().any(|c| c.contains(a)))
            .collect();
        if stray.is_empty() {
            return Vec::new();
        }
        let to_bind: Vec<IpAddr> = stray
            .iter()
            .filter(|a| !held.contains(a))
            .copied()
            .collect();
        let bound = self.bind(self.mode, &to_bind).await;
        let mut failed: Vec<IpAddr> = Vec::new();
        for (addr, result) in to_bind.iter().zip(bound) {
            if let Err(error) = result.or_else(|e| match e {
                KernelError::Exists => Ok(()),
                e => Err(e),
            }) {
                tracing::warn!(%addr, %error, mode = %self.mode, "cannot bind a VIP the new way; it stays bound the old way");
                failed.push(*addr);
            }
        }
        let moved: Vec<IpAddr> = stray.into_iter().filter(|a| !failed.contains(a)).collect();
        let unbound = self.batch(self.mode.other(), Write::Unbind, &moved).await;
        let mut left = 0;
        for (addr, result) in moved.iter().zip(unbound) {
            match result {
                Ok(()) | Err(KernelError::NotFound) => {}
                Err(error) => {
                    left += 1;
                    tracing::warn!(%addr, %error, "cannot unbind a VIP the old way; trying again at the next full sync");
                }
            }
        }
        tracing::info!(
            moved = moved.len(),
            failed = failed.len(),
            left_behind = left,
            from = %self.mode.other(),
            to = %self.mode,
            "moved VIPs to the configured mode"
        );
        failed
    }
}

/// The loopback interface's index: 1 in every network namespace.
const LOOPBACK_INDEX: u32 = 1;

impl AddressKernel for DummyLink {
    /// Creates kube-ipvs0 if it is missing and returns the VIPs bound the
    /// configured way, after moving those bound the other way (see the
    /// module doc). A VIP that could not be moved is returned too: it is
    /// still bound, and moving it is tried again at the next call.
    #[tracing::instrument(skip(self), fields(link = %self.name, mode = %self.mode))]
    async fn ensure_link(&mut self) -> Result<Vec<IpAddr>, KernelError> {
        let index = self.create().await?;
        let addresses = self.addresses(index).await?;
        let routes = self.local_routes().await?;
        let (mut held, stray) = match self.mode {
            VipMode::Address => (addresses, routes),
            VipMode::Route => (routes, addresses),
        };
        // Moved or not, every VIP found is still bound one way or the other.
        self.migrate(&held, stray.clone()).await;
        held.extend(stray);
        held.sort_unstable();
        held.dedup();
        Ok(held)
    }

    #[tracing::instrument(skip(self), fields(link = %self.name, mode = %self.mode))]
    async fn add_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        let mut results = self.bind(self.mode, &[addr]).await;
        results.pop().unwrap_or(Ok(()))
    }

    #[tracing::instrument(skip_all, fields(link = %self.name, mode = %self.mode, addrs = addrs.len()))]
    async fn add_addresses(&mut self, addrs: &[IpAddr]) -> Vec<Result<(), KernelError>> {
        self.bind(self.mode, addrs).await
    }

    #[tracing::instrument(skip(self), fields(link = %self.name, mode = %self.mode))]
    async fn del_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        // Built directly rather than looked up: a filtered get dumps every
        // address on the host, which made one delete O(services).
        let target = self.target(self.mode)?;
        let result = match target {
            Target::Address(index) => {
                let message = host_address_message(index, addr);
                self.handle.address().del(message).execute().await
            }
            Target::Route(index) => {
                let message = local_route_message(index, addr);
                self.handle.route().del(message).execute().await
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    errno(&e),
                    Some(libc::EADDRNOTAVAIL | libc::ENOENT | libc::ESRCH)
                ) =>
            {
                Err(KernelError::NotFound)
            }
            Err(e) => Err(rtnl_error(
                &target.describe(Write::Unbind, addr, &self.name),
                &e,
            )),
        }
    }
}

/// Where a VIP is bound: as an address on interface .0, or as a local route
/// through interface .0.
#[derive(Clone, Copy, Debug)]
enum Target {
    Address(u32),
    Route(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Write {
    Bind,
    Unbind,
}

impl Target {
    /// The request that binds or unbinds `addr`, with the flags `ip` sends.
    fn message(self, write: Write, addr: IpAddr) -> NetlinkMessage<RouteNetlinkMessage> {
        let payload = match (self, write) {
            (Target::Address(index), Write::Bind) => {
                RouteNetlinkMessage::NewAddress(host_address_message(index, addr))
            }
            (Target::Address(index), Write::Unbind) => {
                RouteNetlinkMessage::DelAddress(host_address_message(index, addr))
            }
            (Target::Route(index), Write::Bind) => {
                RouteNetlinkMessage::NewRoute(local_route_message(index, addr))
            }
            (Target::Route(index), Write::Unbind) => {
                RouteNetlinkMessage::DelRoute(local_route_message(index, addr))
            }
        };
        let mut message = NetlinkMessage::from(payload);
        message.header.flags = match (self, write) {
            (Target::Address(_), Write::Bind) => NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
            // No EXCL: the route may sit beside the kernel's own local route
            // of an address on kube-ipvs0 (same prefix, another protocol),
            // as it does while a node moves from addresses to routes. The
            // kernel still answers EEXIST for this very route.
            (Target::Route(_), Write::Bind) => NLM_F_REQUEST | NLM_F_CREATE,
            (_, Write::Unbind) => NLM_F_REQUEST,
        };
        message
    }

    fn describe(self, write: Write, addr: IpAddr, link: &str) -> String {
        let prefix = host_prefix(addr);
        match (self, write) {
            (Target::Address(_), Write::Bind) => format!("binding {addr}/{prefix} on {link}"),
            (Target::Address(_), Write::Unbind) => format!("unbinding {addr}/{prefix} from {link}"),
            (Target::Route(_), Write::Bind) => {
                format!(
                    "adding the local route {addr}/{prefix} (table local, proto {ROUTE_PROTOCOL})"
                )
            }
            (Target::Route(_), Write::Unbind) => format!(
                "deleting the local route {addr}/{prefix} (table local, proto {ROUTE_PROTOCOL})"
            ),
        }
    }
}

/// Writes per sendmsg. Their messages fit in 64 KiB, and the error replies
/// of a batch that fails throughout (each takes several hundred bytes of
/// receive buffer) come close to the default 208 KiB receive buffer without
/// passing it. Were it to overflow, the read fails, and the whole batch is
/// reported failed and retried with backoff.
const ADD_BATCH: usize = 256;

/// Writes `addrs` to `target` on a socket of its own: many requests per
/// sendmsg, as netlink-ipvs batches IPVS commands. Only the last message of
/// a batch asks for an ACK. The kernel handles a socket's messages in order
/// and reports every failure, ACK or not, so once that ACK is in, every
/// message before it without an error has succeeded. One result per
/// address, in order.
fn batched(
    target: &Target,
    write: Write,
    link: &str,
    addrs: &[IpAddr],
) -> Vec<Result<(), KernelError>> {
    let fail_all = |what: &str, e: std::io::Error| {
        let e = KernelError::Other(format!("{what} to write VIPs of {link}: {e}"));
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
            let mut message = target.message(write, addr);
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
            let e = KernelError::Other(format!("sending VIP writes for {link}: {e}"));
            results.extend(chunk.iter().map(|_| Err(e.clone())));
            continue;
        }
        'replies: loop {
            reply.clear();
            if let Err(e) = socket.recv(&mut reply, 0) {
                let e = KernelError::Other(format!("reading replies for {link}: {e}"));
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
                if let Some(answer) = answer_of(bytes, || target.describe(write, chunk[i], link)) {
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

/// What one reply says of one write: `None` for a message that is not an
/// answer (an ACK of success is `Some(Ok)`), an error naming the write (from
/// `what`) for a failure or a reply that does not decode.
fn answer_of(bytes: &[u8], what: impl Fn() -> String) -> Option<Result<(), KernelError>> {
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
    Some(match error.code.map(|code| code.get().saturating_neg()) {
        None => Ok(()),
        Some(libc::EEXIST) => Err(KernelError::Exists),
        Some(libc::EADDRNOTAVAIL | libc::ESRCH | libc::ENOENT) => Err(KernelError::NotFound),
        // Not error.to_io(): it negates the code, which overflows on i32::MIN.
        Some(code) => Err(KernelError::Other(format!(
            "{}: {}",
            what(),
            std::io::Error::from_raw_os_error(code)
        ))),
    })
}

/// The sequence number of the address at `index` of a batch call.
fn sequence(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
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

/// The RTM_NEWROUTE/RTM_DELROUTE message of the proxy's local route for
/// `addr` through interface `index`, as `ip route add local ADDR/32 dev lo
/// table local proto 75` sends it (scope host, as `ip` picks for `local`).
fn local_route_message(index: u32, addr: IpAddr) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    message.header.destination_prefix_length = host_prefix(addr);
    message.header.table = TABLE_LOCAL;
    message.header.protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
    message.header.scope = RouteScope::Host;
    message.header.kind = RouteType::Local;
    let destination = match addr {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    };
    message.attributes = vec![
        RouteAttribute::Destination(destination),
        RouteAttribute::Oif(index),
    ];
    message
}

/// The VIP a route of a dump stands for, if it is one of the proxy's: a
/// host route of type local in table local with the proxy's protocol. The
/// kernel filters the dump already (strict checking); this checks again,
/// since a kernel that ignores a filter would send every route.
fn vip_of_route(route: &RouteMessage) -> Option<IpAddr> {
    let header = &route.header;
    let table = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(header.table));
    if table != u32::from(TABLE_LOCAL)
        || header.kind != RouteType::Local
        || header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL)
    {
        return None;
    }
    let addr = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })?;
    (header.destination_prefix_length == host_prefix(addr)).then_some(addr)
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
    use netlink_packet_route::route::RouteHeader;

    use super::*;

    /// The VIPs of every RTM_NEWROUTE in a captured datagram.
    fn vips_in(datagram: &[u8]) -> Vec<IpAddr> {
        let mut vips = Vec::new();
        let mut at = 0;
        while let Ok(buffer) = NetlinkBuffer::new_checked(&datagram[at..]) {
            let length = buffer.length() as usize;
            let message =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[at..at + length])
                    .expect("a captured message decodes");
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) =
                message.payload
            {
                vips.extend(vip_of_route(&route));
            }
            at += (length + 3) & !3;
        }
        vips
    }

    #[test]
    fn the_proxys_local_routes_are_read_from_a_captured_dump() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
        let mut found = Vec::new();
        for name in ["getroute-local-v4-0.hex", "getroute-local-v6-0.hex"] {
            let text = std::fs::read_to_string(dir.join("rtnetlink").join(name)).unwrap();
            let hex: String = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .flat_map(|l| l.split_whitespace())
                .collect();
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            found.extend(vips_in(&bytes));
        }
        let expected: Vec<IpAddr> = ["10.96.0.1", "10.96.0.2", "fd00:10:96::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn a_route_message_reads_back_as_its_vip_and_others_do_not() {
        for addr in ["10.96.0.10", "fd00:10:96::10"] {
            let addr: IpAddr = addr.parse().unwrap();
            let route = local_route_message(LOOPBACK_INDEX, addr);
            assert_eq!(vip_of_route(&route), Some(addr));
            let mut kernels = route.clone();
            kernels.header.protocol = RouteProtocol::Kernel;
            assert_eq!(
                vip_of_route(&kernels),
                None,
                "the kernel's route of an address"
            );
            let mut main = route.clone();
            main.header.table = RouteHeader::RT_TABLE_MAIN;
            assert_eq!(vip_of_route(&main), None, "a route in table main");
            let mut unicast = route.clone();
            unicast.header.kind = RouteType::Unicast;
            assert_eq!(vip_of_route(&unicast), None, "a unicast route");
            let mut subnet = route;
            subnet.header.destination_prefix_length -= 8;
            assert_eq!(vip_of_route(&subnet), None, "not a host route");
        }
    }

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
