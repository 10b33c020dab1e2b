//! An in-memory kernel for tests: IPVS and kube-ipvs0 in maps, with the real
//! kernel's error semantics, operation counters, injected failures and drift.
//!
//! Modelled on kube-proxy's `ipvs/util/testing/fake.go`, but strict: adding
//! what exists is `Exists` and touching what is missing is `NotFound`, as the
//! kernel answers EEXIST and ENOENT/ESRCH, so the reconciler's idempotence is
//! exercised rather than assumed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::desired::{
    FlowFilter, NftChange, NftElement, NftFamily, NftRuleset, Op, RealServer, RealServerKey,
    VirtualServer, VirtualServerKey,
};
use crate::kernel::{
    AddressKernel, ConntrackKernel, IpvsKernel, KernelError, KernelVirtualServer,
    ListedRealServers, ListedVirtualServer, NftKernel, TrafficCounters,
};

/// What an injected failure hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOn {
    /// Any IPVS operation on this virtual server (or one of its real servers).
    VirtualServer(VirtualServerKey),
    /// Adding or removing this address on kube-ipvs0.
    Address(IpAddr),
    /// [`IpvsKernel::list_virtual_servers`] (and so [`IpvsKernel::dump`]).
    IpvsDump,
    /// [`IpvsKernel::list_real_servers`].
    RealServerDump,
    /// [`AddressKernel::ensure_link`].
    Link,
}

/// One write the fake received, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Ipvs(Op),
    AddAddress(IpAddr),
    DelAddress(IpAddr),
}

#[derive(Clone, Debug)]
struct InjectedFailure {
    target: FailOn,
    error: KernelError,
    /// `None`: until [`FakeKernel::clear_failures`].
    remaining: Option<usize>,
}

#[derive(Clone, Debug)]
struct FakeVirtualServer {
    server: VirtualServer,
    real_servers: BTreeMap<RealServerKey, u32>,
    /// Open connections of real servers that have any (see
    /// [`FakeKernel::set_connections`]).
    connections: BTreeMap<RealServerKey, u32>,
    /// What dumps report as its traffic (see [`FakeKernel::set_counters`]).
    counters: TrafficCounters,
}

/// A map-backed [`IpvsKernel`] and [`AddressKernel`].
///
/// Ordered maps make [`FakeKernel::virtual_servers`] and dumps deterministic,
/// so tests compare whole states with `assert_eq!`.
#[derive(Clone, Debug, Default)]
pub struct FakeKernel {
    virtual_servers: BTreeMap<VirtualServerKey, FakeVirtualServer>,
    link_exists: bool,
    addresses: BTreeSet<IpAddr>,
    failures: Vec<InjectedFailure>,
    journal: Vec<Write>,
    writes: usize,
    dumps: usize,
    dump_requests: usize,
    real_server_reads: BTreeMap<VirtualServerKey, usize>,
    apply_calls: usize,
    apply_sizes: Vec<usize>,
}

impl FakeKernel {
    /// An empty kernel without kube-ipvs0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes received so far: every op passed to `apply` and every address
    /// addition or removal, failed ones included.
    pub fn writes(&self) -> usize {
        self.writes
    }

    /// Reads received so far: listings of the virtual servers (every
    /// `dump` makes one) and `ensure_link` calls.
    pub fn dumps(&self) -> usize {
        self.dumps
    }

    /// IPVS dump requests received so far, as the real kernel counts them:
    /// one per listing of the virtual servers and one per virtual server
    /// whose real servers were listed. A whole-table `dump` of N virtual
    /// servers is 1 + N.
    pub fn dump_requests(&self) -> usize {
        self.dump_requests
    }

    /// How many times the real servers of each virtual server were listed.
    pub fn real_server_reads(&self) -> &BTreeMap<VirtualServerKey, usize> {
        &self.real_server_reads
    }

    /// How many times `apply` was called (the reconciler batches one sync
    /// into one call).
    pub fn apply_calls(&self) -> usize {
        self.apply_calls
    }

    /// How many ops each call of `apply` carried, in order.
    pub fn apply_sizes(&self) -> &[usize] {
        &self.apply_sizes
    }

    /// The writes received since the last call, in order.
    pub fn take_writes(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.journal)
    }

    /// The IPVS table, ordered by key, real servers ordered by key.
    pub fn virtual_servers(&self) -> Vec<KernelVirtualServer> {
        self.virtual_servers
            .values()
            .map(FakeVirtualServer::to_kernel)
            .collect()
    }

    /// One virtual server, if present.
    pub fn virtual_server(&self, key: &VirtualServerKey) -> Option<KernelVirtualServer> {
        self.virtual_servers
            .get(key)
            .map(FakeVirtualServer::to_kernel)
    }

    /// The addresses on kube-ipvs0, ordered.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.addresses.iter().copied().collect()
    }

    /// Whether kube-ipvs0 exists.
    pub fn link_exists(&self) -> bool {
        self.link_exists
    }

    /// Makes the next operation touching `target` fail with `error`.
    pub fn fail_next(&mut self, target: FailOn, error: KernelError) {
        self.failures.push(InjectedFailure {
            target,
            error,
            remaining: Some(1),
        });
    }

    /// Makes every operation touching `target` fail with `error` until
    /// [`FakeKernel::clear_failures`].
    pub fn fail_always(&mut self, target: FailOn, error: KernelError) {
        self.failures.push(InjectedFailure {
            target,
            error,
            remaining: None,
        });
    }

    /// Removes every injected failure.
    pub fn clear_failures(&mut self) {
        self.failures.clear();
    }

    /// Drift: someone else adds (or replaces) a virtual server. Not counted.
    pub fn insert_virtual_server(&mut self, vs: KernelVirtualServer) {
        let real_servers = vs
            .real_servers
            .iter()
            .map(|rs| (rs.key, rs.weight))
            .collect();
        self.virtual_servers.insert(
            vs.server.key,
            FakeVirtualServer {
                server: vs.server,
                real_servers,
                connections: vs.connections.into_iter().collect(),
                counters: vs.counters,
            },
        );
    }

    /// Drift: someone else deletes a virtual server. Not counted.
    pub fn remove_virtual_server(&mut self, key: &VirtualServerKey) -> bool {
        self.virtual_servers.remove(key).is_some()
    }

    /// Drift: someone else adds, reweights or deletes (`None`) a real server.
    /// Returns false if the virtual server is missing. Not counted.
    pub fn set_real_server(
        &mut self,
        key: &VirtualServerKey,
        real_server: RealServerKey,
        weight: Option<u32>,
    ) -> bool {
        let Some(vs) = self.virtual_servers.get_mut(key) else {
            return false;
        };
        match weight {
            Some(weight) => {
                vs.real_servers.insert(real_server, weight);
            }
            None => {
                vs.real_servers.remove(&real_server);
                vs.connections.remove(&real_server);
            }
        }
        true
    }

    /// Traffic: the real server now has `count` connections (active plus
    /// inactive), as a dump will report. Returns false if the real server is
    /// missing. Not counted.
    pub fn set_connections(
        &mut self,
        key: &VirtualServerKey,
        real_server: RealServerKey,
        count: u32,
    ) -> bool {
        let Some(vs) = self.virtual_servers.get_mut(key) else {
            return false;
        };
        if !vs.real_servers.contains_key(&real_server) {
            return false;
        }
        if count == 0 {
            vs.connections.remove(&real_server);
        } else {
            vs.connections.insert(real_server, count);
        }
        true
    }

    /// Traffic: the virtual server's counters are now `counters`, as a dump
    /// will report. Returns false if the virtual server is missing. Not counted.
    pub fn set_counters(&mut self, key: &VirtualServerKey, counters: TrafficCounters) -> bool {
        let Some(vs) = self.virtual_servers.get_mut(key) else {
            return false;
        };
        vs.counters = counters;
        true
    }

    /// Drift: someone else adds an address to kube-ipvs0 (creating it). Not counted.
    pub fn insert_address(&mut self, addr: IpAddr) {
        self.link_exists = true;
        self.addresses.insert(addr);
    }

    /// Drift: someone else removes an address from kube-ipvs0. Not counted.
    pub fn remove_address(&mut self, addr: IpAddr) -> bool {
        self.addresses.remove(&addr)
    }

    /// Consumes the first injected failure matching `target`, if any.
    fn injected(&mut self, target: FailOn) -> Option<KernelError> {
        let index = self.failures.iter().position(|f| f.target == target)?;
        let failure = &mut self.failures[index];
        let error = failure.error.clone();
        if let Some(remaining) = &mut failure.remaining {
            *remaining -= 1;
            if *remaining == 0 {
                self.failures.remove(index);
            }
        }
        Some(error)
    }

    fn apply_one(&mut self, op: &Op) -> Result<(), KernelError> {
        if let Some(error) = self.injected(FailOn::VirtualServer(op.virtual_server())) {
            return Err(error);
        }
        match op {
            Op::AddVirtualServer(server) => {
                if self.virtual_servers.contains_key(&server.key) {
                    return Err(KernelError::Exists);
                }
                self.virtual_servers.insert(
                    server.key,
                    FakeVirtualServer {
                        server: server.clone(),
                        real_servers: BTreeMap::new(),
                        connections: BTreeMap::new(),
                        counters: TrafficCounters::default(),
                    },
                );
            }
            Op::UpdateVirtualServer(server) => {
                let vs = self
                    .virtual_servers
                    .get_mut(&server.key)
                    .ok_or(KernelError::NotFound)?;
                vs.server = server.clone();
            }
            Op::DeleteVirtualServer(key) => {
                // The kernel drops the real servers with their virtual server.
                self.virtual_servers
                    .remove(key)
                    .ok_or(KernelError::NotFound)?;
            }
            Op::AddRealServer(key, real_server) => {
                let vs = self
                    .virtual_servers
                    .get_mut(key)
                    .ok_or(KernelError::NotFound)?;
                if vs.real_servers.contains_key(&real_server.key) {
                    return Err(KernelError::Exists);
                }
                vs.real_servers.insert(real_server.key, real_server.weight);
            }
            Op::UpdateRealServer(key, real_server) => {
                let weight = self
                    .virtual_servers
                    .get_mut(key)
                    .and_then(|vs| vs.real_servers.get_mut(&real_server.key))
                    .ok_or(KernelError::NotFound)?;
                *weight = real_server.weight;
            }
            Op::DeleteRealServer(key, real_server) => {
                let vs = self
                    .virtual_servers
                    .get_mut(key)
                    .ok_or(KernelError::NotFound)?;
                vs.real_servers
                    .remove(real_server)
                    .ok_or(KernelError::NotFound)?;
                // The kernel keeps serving them from its trash; the dump no longer shows them.
                vs.connections.remove(real_server);
            }
        }
        Ok(())
    }
}

impl FakeVirtualServer {
    fn to_kernel(&self) -> KernelVirtualServer {
        KernelVirtualServer {
            server: self.server.clone(),
            real_servers: self
                .real_servers
                .iter()
                .map(|(&key, &weight)| RealServer { key, weight })
                .collect(),
            connections: self
                .connections
                .iter()
                .map(|(&key, &count)| (key, count))
                .collect(),
            counters: self.counters,
        }
    }
}

impl IpvsKernel for FakeKernel {
    async fn list_virtual_servers(&mut self) -> Result<Vec<ListedVirtualServer>, KernelError> {
        self.dumps += 1;
        self.dump_requests += 1;
        if let Some(error) = self.injected(FailOn::IpvsDump) {
            return Err(error);
        }
        Ok(self
            .virtual_servers
            .values()
            .map(|vs| ListedVirtualServer {
                server: vs.server.clone(),
                counters: vs.counters,
            })
            .collect())
    }

    async fn list_real_servers(
        &mut self,
        keys: &[VirtualServerKey],
    ) -> Result<Vec<ListedRealServers>, KernelError> {
        self.dump_requests += keys.len();
        for key in keys {
            *self.real_server_reads.entry(*key).or_default() += 1;
        }
        if let Some(error) = self.injected(FailOn::RealServerDump) {
            return Err(error);
        }
        Ok(keys
            .iter()
            .map(|key| {
                // As the kernel: a missing virtual server has no real servers.
                self.virtual_servers
                    .get(key)
                    .map_or_else(Default::default, |vs| {
                        let dumped = vs.to_kernel();
                        ListedRealServers {
                            real_servers: dumped.real_servers,
                            connections: dumped.connections,
                        }
                    })
            })
            .collect())
    }

    async fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), KernelError>> {
        self.apply_calls += 1;
        self.apply_sizes.push(ops.len());
        self.writes += ops.len();
        self.journal.extend(ops.iter().cloned().map(Write::Ipvs));
        ops.iter().map(|op| self.apply_one(op)).collect()
    }
}

impl AddressKernel for FakeKernel {
    async fn ensure_link(&mut self) -> Result<Vec<IpAddr>, KernelError> {
        self.dumps += 1;
        if let Some(error) = self.injected(FailOn::Link) {
            return Err(error);
        }
        self.link_exists = true;
        Ok(self.addresses())
    }

    async fn add_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        self.writes += 1;
        self.journal.push(Write::AddAddress(addr));
        if let Some(error) = self.injected(FailOn::Address(addr)) {
            return Err(error);
        }
        if !self.link_exists {
            return Err(KernelError::NotFound);
        }
        if !self.addresses.insert(addr) {
            return Err(KernelError::Exists);
        }
        Ok(())
    }

    async fn add_addresses(&mut self, addrs: &[IpAddr]) -> Vec<Result<(), KernelError>> {
        let mut results = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            results.push(self.add_address(addr).await);
        }
        results
    }

    async fn del_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        self.writes += 1;
        self.journal.push(Write::DelAddress(addr));
        if let Some(error) = self.injected(FailOn::Address(addr)) {
            return Err(error);
        }
        if !self.addresses.remove(&addr) {
            return Err(KernelError::NotFound);
        }
        Ok(())
    }
}

/// A set-backed [`NftKernel`]: the tables' ruleset and their elements,
/// with the kernel's transaction semantics (a failing change aborts the
/// whole transaction; adding an element twice is accepted, deleting a
/// missing one, or touching a table that does not exist, is `NotFound`).
#[derive(Clone, Debug, Default)]
pub struct FakeNft {
    /// The ruleset last ensured; `None`: none yet, or deleted.
    ruleset: Option<NftRuleset>,
    /// Per family, the ruleset its table was made for: each table is
    /// adopted or re-created on its own, as the real ones are.
    tables: BTreeMap<NftFamily, NftRuleset>,
    elements: BTreeSet<NftElement>,
    /// Tables created (or re-created for another ruleset), both families.
    pub tables_created: usize,
    /// Transactions of element changes received, failed ones included.
    pub transactions: usize,
    /// Element changes received, failed ones included.
    pub element_writes: usize,
    /// The next `n` transactions fail with this error.
    fail_next: Option<(usize, KernelError)>,
    /// The ruleset's generation: moved on by every commit, as the kernel's.
    generation: u32,
    /// Whether [`NftKernel::generation`] fails to answer.
    generation_unreadable: bool,
    /// Reads of the sets ([`NftKernel::ensure_ruleset`] and
    /// [`NftKernel::dump_elements`]).
    pub set_reads: usize,
}

impl FakeNft {
    pub fn new() -> Self {
        FakeNft::default()
    }

    /// The elements the sets hold now, sorted.
    pub fn elements(&self) -> Vec<NftElement> {
        self.elements.iter().copied().collect()
    }

    /// The ruleset last ensured.
    pub fn ruleset(&self) -> Option<&NftRuleset> {
        self.ruleset.as_ref()
    }

    /// The families that have a table.
    pub fn families(&self) -> Vec<NftFamily> {
        self.tables.keys().copied().collect()
    }

    /// Drift: removes an element behind the proxy's back, in a
    /// transaction of its own.
    pub fn remove_element(&mut self, element: &NftElement) -> bool {
        let removed = self.elements.remove(element);
        if removed {
            self.commit();
        }
        removed
    }

    /// Another program's transaction, in a table of its own: the
    /// generation moves on, nothing of the proxy's changes.
    pub fn foreign_commit(&mut self) {
        self.commit();
    }

    /// Whether the generation can be read.
    pub fn set_generation_readable(&mut self, readable: bool) {
        self.generation_unreadable = !readable;
    }

    /// A committed transaction: the generation moves on by one, and never
    /// to zero, as the kernel's.
    fn commit(&mut self) {
        self.generation = match self.generation.wrapping_add(1) {
            0 => 1,
            next => next,
        };
    }

    /// Makes the next `count` transactions fail with `error`.
    pub fn fail_transactions(&mut self, count: usize, error: KernelError) {
        self.fail_next = Some((count, error));
    }
}

impl NftKernel for FakeNft {
    async fn ensure_ruleset(
        &mut self,
        ruleset: &NftRuleset,
    ) -> Result<Vec<NftElement>, KernelError> {
        // What shapes a table's rules; `ipv6` only says which tables exist.
        let same_rules = |made: &NftRuleset| {
            made.masquerade_all == ruleset.masquerade_all
                && made.local_detect == ruleset.local_detect
        };
        for family in ruleset.families() {
            if !self.tables.get(&family).is_some_and(same_rules) {
                self.tables.insert(family, ruleset.clone());
                self.elements.retain(|e| e.family() != family);
                self.tables_created += 1;
                self.commit();
            }
        }
        self.ruleset = Some(ruleset.clone());
        self.dump_elements().await
    }

    async fn dump_elements(&mut self) -> Result<Vec<NftElement>, KernelError> {
        self.set_reads += 1;
        let Some(ruleset) = &self.ruleset else {
            return Err(KernelError::NotFound);
        };
        let families: Vec<NftFamily> = ruleset.families().collect();
        Ok(self
            .elements
            .iter()
            .filter(|e| families.contains(&e.family()))
            .copied()
            .collect())
    }

    async fn apply(&mut self, changes: &[NftChange]) -> Result<(), KernelError> {
        self.transactions += 1;
        self.element_writes += changes.len();
        if let Some((count, error)) = self.fail_next.take() {
            if count > 1 {
                self.fail_next = Some((count - 1, error.clone()));
            }
            return Err(error);
        }
        if self.ruleset.is_none() {
            return Err(KernelError::NotFound);
        }
        let mut next = self.elements.clone();
        for change in changes {
            let (NftChange::Add(e) | NftChange::Delete(e)) = change;
            if !self.tables.contains_key(&e.family()) {
                return Err(KernelError::NotFound);
            }
            match change {
                NftChange::Add(e) => {
                    next.insert(*e);
                }
                NftChange::Delete(e) => {
                    if !next.remove(e) {
                        return Err(KernelError::NotFound);
                    }
                }
            }
        }
        // As the kernel, which commits nothing for a transaction that
        // changes nothing (adds of held elements only).
        if next != self.elements {
            self.elements = next;
            self.commit();
        }
        Ok(())
    }

    async fn generation(&mut self) -> Option<u32> {
        (!self.generation_unreadable).then_some(self.generation)
    }

    async fn delete_table(&mut self) -> Result<bool, KernelError> {
        self.elements.clear();
        self.ruleset = None;
        let had = !self.tables.is_empty();
        if had {
            self.commit();
        }
        self.tables.clear();
        Ok(had)
    }
}

/// A [`ConntrackKernel`] holding flows as the filters that would match them.
#[derive(Clone, Debug, Default)]
pub struct FakeConntrack {
    /// Flows, each as (filter it matches, how many such flows).
    pub flows: BTreeMap<FlowFilter, usize>,
    /// Every filter asked for, in order.
    pub requested: Vec<FlowFilter>,
    /// The next call fails with this error.
    pub fail_next: Option<KernelError>,
}

impl ConntrackKernel for FakeConntrack {
    async fn delete_flows(&mut self, filters: &[FlowFilter]) -> Result<usize, KernelError> {
        self.requested.extend_from_slice(filters);
        if let Some(error) = self.fail_next.take() {
            return Err(error);
        }
        Ok(filters.iter().filter_map(|f| self.flows.remove(f)).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::Protocol;

    fn key(addr: &str, port: u16) -> VirtualServerKey {
        VirtualServerKey {
            addr: addr.parse().unwrap(),
            protocol: Protocol::Tcp,
            port,
        }
    }

    fn server(addr: &str, port: u16) -> VirtualServer {
        VirtualServer {
            key: key(addr, port),
            scheduler: "rr".into(),
            persistence: None,
        }
    }

    fn real(addr: &str, port: u16, weight: u32) -> RealServer {
        RealServer {
            key: RealServerKey {
                addr: addr.parse().unwrap(),
                port,
            },
            weight,
        }
    }

    /// A kernel holding 10.0.0.1:80 with one real server 10.1.0.1:8080.
    async fn populated() -> FakeKernel {
        let mut kernel = FakeKernel::new();
        let results = kernel
            .apply(&[
                Op::AddVirtualServer(server("10.0.0.1", 80)),
                Op::AddRealServer(key("10.0.0.1", 80), real("10.1.0.1", 8080, 1)),
            ])
            .await;
        assert_eq!(results, vec![Ok(()), Ok(())]);
        kernel
    }

    #[tokio::test]
    async fn ipvs_operations_answer_like_the_kernel() {
        let vs = key("10.0.0.1", 80);
        let missing = key("10.0.0.9", 80);
        let rs = real("10.1.0.1", 8080, 1);
        let cases: Vec<(&str, Op, Result<(), KernelError>)> = vec![
            (
                "adding an existing virtual server",
                Op::AddVirtualServer(server("10.0.0.1", 80)),
                Err(KernelError::Exists),
            ),
            (
                "updating a missing virtual server",
                Op::UpdateVirtualServer(server("10.0.0.9", 80)),
                Err(KernelError::NotFound),
            ),
            (
                "deleting a missing virtual server",
                Op::DeleteVirtualServer(missing),
                Err(KernelError::NotFound),
            ),
            (
                "adding a real server to a missing virtual server",
                Op::AddRealServer(missing, rs),
                Err(KernelError::NotFound),
            ),
            (
                "adding an existing real server",
                Op::AddRealServer(vs, rs),
                Err(KernelError::Exists),
            ),
            (
                "updating a missing real server",
                Op::UpdateRealServer(vs, real("10.1.0.2", 8080, 1)),
                Err(KernelError::NotFound),
            ),
            (
                "deleting a missing real server",
                Op::DeleteRealServer(vs, real("10.1.0.2", 8080, 1).key),
                Err(KernelError::NotFound),
            ),
            (
                "updating an existing real server's weight",
                Op::UpdateRealServer(vs, real("10.1.0.1", 8080, 5)),
                Ok(()),
            ),
            (
                "adding a new virtual server",
                Op::AddVirtualServer(server("10.0.0.2", 80)),
                Ok(()),
            ),
        ];
        for (name, op, expected) in cases {
            let mut kernel = populated().await;
            let results = kernel.apply(std::slice::from_ref(&op)).await;
            assert_eq!(results, vec![expected], "{name}");
            assert_eq!(kernel.writes(), 3, "{name}: every op is counted");
        }
    }

    #[tokio::test]
    async fn deleting_a_virtual_server_drops_its_real_servers() {
        let mut kernel = populated().await;
        let vs = key("10.0.0.1", 80);
        let results = kernel
            .apply(&[
                Op::DeleteVirtualServer(vs),
                Op::AddVirtualServer(server("10.0.0.1", 80)),
            ])
            .await;
        assert_eq!(results, vec![Ok(()), Ok(())]);
        assert_eq!(kernel.virtual_server(&vs).unwrap().real_servers, vec![]);
    }

    #[tokio::test]
    async fn injected_failures_hit_only_their_target() {
        let mut kernel = populated().await;
        let vs = key("10.0.0.1", 80);
        kernel.fail_next(FailOn::VirtualServer(vs), KernelError::Other("boom".into()));
        let results = kernel
            .apply(&[
                Op::AddVirtualServer(server("10.0.0.2", 80)),
                Op::UpdateRealServer(vs, real("10.1.0.1", 8080, 7)),
                Op::UpdateRealServer(vs, real("10.1.0.1", 8080, 9)),
            ])
            .await;
        assert_eq!(
            results,
            vec![Ok(()), Err(KernelError::Other("boom".into())), Ok(())],
            "fail_next fails exactly one op"
        );
        assert_eq!(
            kernel.virtual_server(&vs).unwrap().real_servers[0].weight,
            9
        );

        let addr: IpAddr = "10.0.0.1".parse().unwrap();
        kernel.fail_always(FailOn::Address(addr), KernelError::Other("busy".into()));
        kernel.ensure_link().await.unwrap();
        for _ in 0..2 {
            assert!(kernel.add_address(addr).await.is_err());
        }
        kernel.clear_failures();
        assert_eq!(kernel.add_address(addr).await, Ok(()));
        assert_eq!(kernel.add_address(addr).await, Err(KernelError::Exists));
        assert_eq!(kernel.addresses(), vec![addr]);

        kernel.fail_next(FailOn::IpvsDump, KernelError::Other("dump".into()));
        assert!(kernel.dump().await.is_err());
        assert_eq!(kernel.dump().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn dumps_count_connections_until_the_real_server_goes() {
        let mut kernel = populated().await;
        let vs = key("10.0.0.1", 80);
        let rs = real("10.1.0.1", 8080, 1).key;
        assert!(!kernel.set_connections(&vs, real("10.1.0.9", 8080, 1).key, 1));
        assert!(kernel.set_connections(&vs, rs, 3));
        let dumped = kernel.dump().await.unwrap();
        assert_eq!(dumped[0].connections, [(rs, 3)].into_iter().collect());
        assert_eq!(kernel.writes(), 2, "traffic is not a write");

        let results = kernel.apply(&[Op::DeleteRealServer(vs, rs)]).await;
        assert_eq!(results, vec![Ok(())]);
        assert!(kernel.dump().await.unwrap()[0].connections.is_empty());
    }

    #[tokio::test]
    async fn addresses_need_the_link_and_answer_like_the_kernel() {
        let mut kernel = FakeKernel::new();
        let addr: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(kernel.add_address(addr).await, Err(KernelError::NotFound));
        assert_eq!(kernel.ensure_link().await, Ok(vec![]));
        assert_eq!(kernel.add_address(addr).await, Ok(()));
        assert_eq!(kernel.ensure_link().await, Ok(vec![addr]));
        assert_eq!(kernel.del_address(addr).await, Ok(()));
        assert_eq!(kernel.del_address(addr).await, Err(KernelError::NotFound));
        assert_eq!(kernel.writes(), 4);
        assert_eq!(kernel.dumps(), 2);
        assert_eq!(
            kernel.take_writes(),
            vec![
                Write::AddAddress(addr),
                Write::AddAddress(addr),
                Write::DelAddress(addr),
                Write::DelAddress(addr),
            ]
        );
    }
}
