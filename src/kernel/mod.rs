//! The kernel edge: IPVS through netlink-ipvs, kube-ipvs0 through rtnetlink,
//! sysctls and modules. Everything above talks to the traits here, so that the
//! reconciler's logic is tested against [`fake`] and proven against the real
//! kernel in the VM.

use std::net::IpAddr;

use foldhash::HashMap;

use crate::desired::{
    FlowFilter, NftChange, NftElement, NftRuleset, Op, RealServer, RealServerKey, VirtualServer,
    VirtualServerKey,
};

pub mod conntrack;
pub mod fake;
pub mod link;
pub mod modules;
pub mod netlink;
pub mod nftables;
pub mod oom;
pub mod sysctl;
pub mod upstream;

/// A virtual server as dumped from the kernel, with its real servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelVirtualServer {
    pub server: VirtualServer,
    pub real_servers: Vec<RealServer>,
    /// Active plus inactive connections of each real server that has any;
    /// a real server missing here has none. Kept apart from [`RealServer`]
    /// so that comparing real servers compares only what the proxy writes.
    /// Graceful termination deletes a draining real server once it is idle.
    pub connections: HashMap<RealServerKey, u32>,
    /// The virtual server's traffic since it was created, from the same dump.
    pub counters: TrafficCounters,
}

/// A virtual server as the services dump lists it: its settings and
/// counters, without its real servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedVirtualServer {
    pub server: VirtualServer,
    pub counters: TrafficCounters,
}

/// One virtual server's real servers, as its destinations dump lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListedRealServers {
    pub real_servers: Vec<RealServer>,
    /// As [`KernelVirtualServer::connections`].
    pub connections: HashMap<RealServerKey, u32>,
}

/// The kernel's traffic counters of one virtual server (`ipvsadm -Ln
/// --stats`): they only grow, and start again from zero when the virtual
/// server is recreated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    /// Connections scheduled.
    pub connections: u64,
    /// Packets from clients.
    pub packets_in: u64,
    /// Packets of the replies.
    pub packets_out: u64,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes of the replies.
    pub bytes_out: u64,
}

/// Why one kernel operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    #[error("already exists")]
    Exists,
    #[error("not found")]
    NotFound,
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The kernel has no such scheduler (no module `ip_vs_<name>`): a value
    /// of the service this node cannot take, reported on the Service.
    #[error("unknown scheduler: {0}")]
    UnknownScheduler(String),
    /// The netlink socket failed: what was in flight may or may not have
    /// been applied, so the next sync must read the kernel again. The
    /// connection is rebuilt before the next request.
    #[error("the netlink connection was lost: {0}")]
    ConnectionLost(String),
    #[error("{0}")]
    Other(String),
}

/// The IPVS table, as the reconciler sees it.
///
/// The kernel lists virtual servers in one dump request, but real servers
/// only per virtual server: one request each. Reading the whole table is
/// therefore 1 + N requests, and a full sync that needs only some virtual
/// servers' real servers asks for just those. Neither read has a default,
/// so that a wrapper cannot silently fall back to reading everything.
#[allow(async_fn_in_trait)]
pub trait IpvsKernel {
    /// Every virtual server the kernel holds (owned or not), without real
    /// servers: one dump request. Fwmark services and others the proxy
    /// cannot express are left out.
    async fn list_virtual_servers(&mut self) -> Result<Vec<ListedVirtualServer>, KernelError>;

    /// The real servers of each of `keys`, in order, one dump request per
    /// key (pipelined). A virtual server missing from the kernel has none.
    async fn list_real_servers(
        &mut self,
        keys: &[VirtualServerKey],
    ) -> Result<Vec<ListedRealServers>, KernelError>;

    /// Every virtual server the kernel holds with its real servers:
    /// [`IpvsKernel::list_virtual_servers`], then the real servers of all
    /// of them.
    async fn dump(&mut self) -> Result<Vec<KernelVirtualServer>, KernelError> {
        let listed = self.list_virtual_servers().await?;
        let keys: Vec<VirtualServerKey> = listed.iter().map(|vs| vs.server.key).collect();
        let real_servers = self.list_real_servers(&keys).await?;
        if real_servers.len() != listed.len() {
            return Err(KernelError::Other(format!(
                "the kernel layer listed the real servers of {} virtual servers, {} asked for",
                real_servers.len(),
                listed.len()
            )));
        }
        Ok(listed
            .into_iter()
            .zip(real_servers)
            .map(|(vs, rs)| KernelVirtualServer {
                server: vs.server,
                real_servers: rs.real_servers,
                connections: rs.connections,
                counters: vs.counters,
            })
            .collect())
    }

    /// Applies `ops` in order, pipelined, and returns one result per op.
    async fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), KernelError>>;

    /// The work on `ops` that needs no kernel, done ahead of
    /// [`IpvsKernel::apply_prepared`]: a sync prepares its next chunk while
    /// the kernel takes the one before (the netlink layer builds the
    /// requests here). Nothing by default.
    fn prepare(ops: &[Op]) -> Prepared {
        let _ = ops;
        Prepared::default()
    }

    /// [`IpvsKernel::apply`] of `ops`, with what [`IpvsKernel::prepare`]
    /// made of the same `ops`.
    async fn apply_prepared(
        &mut self,
        ops: &[Op],
        prepared: Prepared,
    ) -> Vec<Result<(), KernelError>> {
        let _ = prepared;
        self.apply(ops).await
    }
}

/// What [`IpvsKernel::prepare`] made of a batch of operations: for the real
/// kernel, their netlink requests.
#[derive(Debug, Default)]
pub struct Prepared(pub(crate) Option<netlink_ipvs::PreparedBatch>);

/// The addresses held on the dummy interface (kube-ipvs0).
#[allow(async_fn_in_trait)]
pub trait AddressKernel {
    /// Creates the interface if it is missing and returns the addresses it holds.
    async fn ensure_link(&mut self) -> Result<Vec<IpAddr>, KernelError>;
    async fn add_address(&mut self, addr: IpAddr) -> Result<(), KernelError>;
    /// Adds several addresses, one result per address in order. The real
    /// link batches them. There is no default: a one-at-a-time fallback let
    /// a wrapper silently lose the batching (the benchmark's timing wrapper
    /// once measured that slow path as the proxy's).
    async fn add_addresses(&mut self, addrs: &[IpAddr]) -> Vec<Result<(), KernelError>>;
    async fn del_address(&mut self, addr: IpAddr) -> Result<(), KernelError>;
}

/// The proxy's own nftables tables (`ip kube-ipvs-proxy`, and `ip6
/// kube-ipvs-proxy` when the ruleset has IPv6): fixed chains and rules, and
/// sets that hold everything per service.
#[allow(async_fn_in_trait)]
pub trait NftKernel {
    /// Makes sure the table exists with exactly the chains, rules and sets of
    /// `ruleset`, and returns the elements its sets hold. A table that
    /// matches is adopted with no write; a missing one, or one made for
    /// another ruleset, is (re)created in one transaction, empty.
    async fn ensure_ruleset(
        &mut self,
        ruleset: &NftRuleset,
    ) -> Result<Vec<NftElement>, KernelError>;

    /// Every element of the table's sets.
    async fn dump_elements(&mut self) -> Result<Vec<NftElement>, KernelError>;

    /// The generation of the network namespace's nf_tables ruleset
    /// (`NFT_MSG_GETGEN`), which the kernel moves on by one at every
    /// transaction it commits, whoever sends it: while it stays put, no
    /// table, chain, rule or set element has changed. `None` when it
    /// cannot be read; the caller then reads the sets.
    async fn generation(&mut self) -> Option<u32>;

    /// Adds and deletes elements in one transaction: all or nothing.
    async fn apply(&mut self, changes: &[NftChange]) -> Result<(), KernelError>;

    /// Deletes both tables and everything in them; `false` when there was none.
    async fn delete_table(&mut self) -> Result<bool, KernelError>;
}

/// The conntrack table, for the flows a removed UDP or SCTP endpoint leaves.
#[allow(async_fn_in_trait)]
pub trait ConntrackKernel {
    /// Deletes every flow that matches one of `filters` and returns how many
    /// were deleted. A flow that is already gone is not an error.
    async fn delete_flows(&mut self, filters: &[FlowFilter]) -> Result<usize, KernelError>;
}
