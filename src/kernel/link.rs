//! kube-ipvs0 and the node's addresses, through rtnetlink.
//!
//! Every service address is bound on a dummy interface so that the kernel
//! treats it as local and IPVS sees the packets in LOCAL_IN. Like upstream,
//! the interface stays down: IPv4 local routes exist regardless, and a down
//! dummy never answers ARP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{AddressMessageBuilder, Handle, LinkDummy};
use tokio::sync::oneshot;

use super::{AddressKernel, KernelError};

/// The dummy interface that holds every service address.
#[derive(Debug)]
pub struct DummyLink {
    handle: Handle,
    /// Dropping it ends the connection thread.
    _stop: oneshot::Sender<()>,
    name: String,
    index: Option<u32>,
}

impl DummyLink {
    /// Opens an rtnetlink connection for the interface `name` (kube-ipvs0).
    ///
    /// The connection runs on a thread of its own. The kernel does the work
    /// of a netlink request inside the `sendmsg` that carries it, so this
    /// lets a cold sync's address additions run on one core while the IPVS
    /// batch runs on another, instead of one after the other.
    pub fn new(name: &str) -> Result<Self, KernelError> {
        let (handle, stop) = spawn_connection(name)?;
        Ok(DummyLink {
            handle,
            _stop: stop,
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
        // rtnetlink pipelines requests on its socket; a bounded window keeps
        // the ACKs within the receive buffer.
        let (handle, name) = (&self.handle, self.name.as_str());
        futures::stream::iter(addrs.iter().map(|&addr| add(handle, index, name, addr)))
            .buffered(ADD_WINDOW)
            .collect()
            .await
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

/// Starts an rtnetlink connection on its own thread (named for `link`) and
/// returns its handle, and a sender whose drop stops it.
fn spawn_connection(link: &str) -> Result<(Handle, oneshot::Sender<()>), KernelError> {
    let cannot = |what: &str, e: &dyn std::fmt::Display| {
        KernelError::Other(format!("{what} for {link}: {e}"))
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("rtnl-{link}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("starting its runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                // The socket registers with the runtime it is created on.
                match rtnetlink::new_connection() {
                    Ok((connection, handle, _)) => {
                        let _ = ready_tx.send(Ok(handle));
                        tokio::select! {
                            () = connection => {}
                            _ = stop_rx => {}
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("opening an rtnetlink socket: {e}")));
                    }
                }
            });
        })
        .map_err(|e| cannot("starting the rtnetlink thread", &e))?;
    match ready_rx.recv() {
        Ok(Ok(handle)) => Ok((handle, stop_tx)),
        Ok(Err(reason)) => Err(KernelError::Other(format!("{reason} (for {link})"))),
        Err(e) => Err(cannot("the rtnetlink thread ended early", &e)),
    }
}

/// Address additions in flight at once.
const ADD_WINDOW: usize = 64;

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
