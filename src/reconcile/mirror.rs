//! The reconciler's picture of the kernel state the proxy owns. Only
//! confirmed kernel answers (and dumps) change it, so it stays truthful.

use std::collections::VecDeque;
use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt, HashSet};

use crate::desired::{RealServer, RealServerKey, VirtualServer, VirtualServerKey};
use crate::kernel::{KernelVirtualServer, ListedRealServers, TrafficCounters};

/// One owned virtual server as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MirroredVirtualServer {
    pub server: VirtualServer,
    /// Real server → weight.
    pub real_servers: HashMap<RealServerKey, u32>,
    /// Real server → its connections (active plus inactive) as the last dump
    /// counted them. Missing: unknown, because the proxy has written the real
    /// server since, or never dumped it. Only a known 0 lets a draining real
    /// server go.
    pub connections: HashMap<RealServerKey, u32>,
}

/// Owned virtual servers and owned kube-ipvs0 addresses.
#[derive(Clone, Debug, Default)]
pub(crate) struct Mirror {
    virtual_servers: HashMap<VirtualServerKey, MirroredVirtualServer>,
    addresses: HashSet<IpAddr>,
    /// How many mirrored virtual servers use each address: an address is only
    /// removed once nothing uses it, or a failed delete would leave a virtual
    /// server the proxy no longer owns after a restart.
    users: HashMap<IpAddr, usize>,
    /// The traffic counters of each mirrored virtual server the last dump
    /// found (one added since has none yet). Apart from
    /// [`MirroredVirtualServer`], which diffing compares.
    counters: HashMap<VirtualServerKey, TrafficCounters>,
    /// When each mirrored virtual server's real servers were last read.
    freshness: Freshness,
    /// Virtual servers whose real servers the mirror may have wrong: a
    /// write to them was refused, or answered "exists" or "not found".
    suspect: HashSet<VirtualServerKey>,
}

/// The rolling verification of real servers. A full sync is a round; a
/// virtual server whose real servers were read (or that was created empty)
/// in round `v` is read again in round `v + rounds` at the latest. The rest
/// of each round's window is filled with the longest unread, so that the
/// reads spread evenly over the rounds instead of coming due all at once.
#[derive(Clone, Debug, Default)]
struct Freshness {
    round: u64,
    /// The round each mirrored virtual server was last read in.
    read_in: HashMap<VirtualServerKey, u64>,
    /// Reads in the order they happened, oldest first. An entry whose round
    /// is not `read_in`'s any more (read again since, or gone) is stale and
    /// skipped.
    order: VecDeque<(VirtualServerKey, u64)>,
}

impl Freshness {
    fn read(&mut self, key: VirtualServerKey) {
        self.read_in.insert(key, self.round);
        self.order.push_back((key, self.round));
        // Virtual servers read every round (draining ones) leave stale
        // entries behind; keep the queue within twice the live ones.
        if self.order.len() > 2 * self.read_in.len() + 64 {
            let read_in = &self.read_in;
            self.order
                .retain(|(key, round)| read_in.get(key) == Some(round));
        }
    }

    fn forget(&mut self, key: &VirtualServerKey) {
        self.read_in.remove(key);
    }

    /// Starts the next round and returns the virtual servers whose real
    /// servers it must read: every one read `rounds` rounds ago or earlier,
    /// and at least ceil(live / rounds) in all, the longest unread first.
    fn next_round(&mut self, rounds: u64) -> Vec<VirtualServerKey> {
        self.round += 1;
        let rounds = rounds.max(1);
        let live = self.read_in.len() as u64;
        let window = live.div_ceil(rounds);
        let mut due = Vec::new();
        while let Some(&(key, round)) = self.order.front() {
            if self.read_in.get(&key) != Some(&round) {
                self.order.pop_front();
                continue;
            }
            if (due.len() as u64) >= window && round + rounds > self.round {
                break;
            }
            self.order.pop_front();
            due.push(key);
        }
        due
    }
}

impl Mirror {
    pub fn get(&self, key: &VirtualServerKey) -> Option<&MirroredVirtualServer> {
        self.virtual_servers.get(key)
    }

    pub fn contains(&self, key: &VirtualServerKey) -> bool {
        self.virtual_servers.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &VirtualServerKey> {
        self.virtual_servers.keys()
    }

    pub fn holds_address(&self, addr: IpAddr) -> bool {
        self.addresses.contains(&addr)
    }

    pub fn addresses(&self) -> impl Iterator<Item = &IpAddr> {
        self.addresses.iter()
    }

    /// How many mirrored virtual servers use `addr`.
    pub fn users_of(&self, addr: IpAddr) -> usize {
        self.users.get(&addr).copied().unwrap_or(0)
    }

    pub fn insert_address(&mut self, addr: IpAddr) {
        self.addresses.insert(addr);
    }

    pub fn remove_address(&mut self, addr: IpAddr) {
        self.addresses.remove(&addr);
    }

    /// The traffic counters of every mirrored virtual server as the last
    /// dump found them.
    pub fn counters(&self) -> impl Iterator<Item = (&VirtualServerKey, &TrafficCounters)> {
        self.counters.iter()
    }

    /// Records a dumped virtual server with its real servers and counters.
    pub fn adopt(&mut self, dumped: KernelVirtualServer) {
        let key = dumped.server.key;
        self.counters.insert(key, dumped.counters);
        let (real_servers, connections) = mirrored_real_servers(ListedRealServers {
            real_servers: dumped.real_servers,
            connections: dumped.connections,
        });
        self.insert(
            key,
            MirroredVirtualServer {
                server: dumped.server,
                real_servers,
                connections,
            },
        );
    }

    /// Replaces the real servers of a mirrored virtual server with what its
    /// destinations dump listed, and notes it as read this round.
    pub fn set_real_servers(&mut self, key: &VirtualServerKey, listed: ListedRealServers) {
        if let Some(vs) = self.virtual_servers.get_mut(key) {
            (vs.real_servers, vs.connections) = mirrored_real_servers(listed);
            self.freshness.read(*key);
            self.suspect.remove(key);
        }
    }

    /// Records the counters the services dump listed for a mirrored virtual server.
    pub fn set_counters(&mut self, key: VirtualServerKey, counters: TrafficCounters) {
        if self.virtual_servers.contains_key(&key) {
            self.counters.insert(key, counters);
        }
    }

    /// Replaces the addresses with those kube-ipvs0 holds.
    pub fn set_addresses(&mut self, held: impl IntoIterator<Item = IpAddr>) {
        self.addresses = held.into_iter().collect();
    }

    /// Notes that the mirror may be wrong about `key`'s real servers: the
    /// next full sync reads them whatever the window.
    pub fn mark_suspect(&mut self, key: VirtualServerKey) {
        if self.virtual_servers.contains_key(&key) {
            self.suspect.insert(key);
        }
    }

    /// The virtual servers with a real server at weight 0: draining ones,
    /// whose connection counts decide when they go.
    pub fn draining(&self) -> impl Iterator<Item = &VirtualServerKey> {
        self.virtual_servers
            .iter()
            .filter(|(_, vs)| vs.real_servers.values().any(|&weight| weight == 0))
            .map(|(key, _)| key)
    }

    /// The virtual servers marked suspect.
    pub fn suspects(&self) -> impl Iterator<Item = &VirtualServerKey> {
        self.suspect.iter()
    }

    /// Starts a round of the rolling verification (see [`Freshness`]) and
    /// returns the virtual servers whose real servers are due to be read,
    /// so that each is read at least once every `rounds` rounds.
    pub fn next_round(&mut self, rounds: u64) -> Vec<VirtualServerKey> {
        self.freshness.next_round(rounds)
    }

    /// Records a virtual server just added: no real servers yet, which
    /// counts as read.
    pub fn add_virtual_server(&mut self, server: VirtualServer) {
        let key = server.key;
        self.insert(
            key,
            MirroredVirtualServer {
                server,
                real_servers: HashMap::new(),
                connections: HashMap::new(),
            },
        );
    }

    /// Records new settings of a virtual server, if mirrored.
    pub fn update_virtual_server(&mut self, server: VirtualServer) {
        if let Some(vs) = self.virtual_servers.get_mut(&server.key) {
            vs.server = server;
        }
    }

    /// Forgets a virtual server (and its real servers). Returns its address
    /// if this left the address unused.
    pub fn remove_virtual_server(&mut self, key: &VirtualServerKey) -> Option<IpAddr> {
        self.virtual_servers.remove(key)?;
        self.counters.remove(key);
        self.freshness.forget(key);
        self.suspect.remove(key);
        let users = self.users.get_mut(&key.addr)?;
        *users -= 1;
        if *users == 0 {
            self.users.remove(&key.addr);
            return Some(key.addr);
        }
        None
    }

    /// Records a real server (added or reweighted), if its virtual server is
    /// mirrored. Its connections are unknown until the next dump: ones opened
    /// since the last dump may still be open.
    pub fn set_real_server(&mut self, key: &VirtualServerKey, real_server: RealServer) {
        if let Some(vs) = self.virtual_servers.get_mut(key) {
            vs.real_servers.insert(real_server.key, real_server.weight);
            vs.connections.remove(&real_server.key);
        }
    }

    pub fn remove_real_server(&mut self, key: &VirtualServerKey, real_server: &RealServerKey) {
        if let Some(vs) = self.virtual_servers.get_mut(key) {
            vs.real_servers.remove(real_server);
            vs.connections.remove(real_server);
        }
    }

    fn insert(&mut self, key: VirtualServerKey, vs: MirroredVirtualServer) {
        if self.virtual_servers.insert(key, vs).is_none() {
            *self.users.entry(key.addr).or_default() += 1;
        }
        self.freshness.read(key);
        self.suspect.remove(&key);
    }
}

/// Real server → weight, and real server → connections (0 for those the
/// dump lists without any).
fn mirrored_real_servers(
    listed: ListedRealServers,
) -> (HashMap<RealServerKey, u32>, HashMap<RealServerKey, u32>) {
    let weights = listed
        .real_servers
        .iter()
        .map(|rs| (rs.key, rs.weight))
        .collect();
    let connections = listed
        .real_servers
        .iter()
        .map(|rs| {
            let count = listed.connections.get(&rs.key).copied().unwrap_or(0);
            (rs.key, count)
        })
        .collect();
    (weights, connections)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::Protocol;

    fn server(port: u16) -> VirtualServer {
        VirtualServer {
            key: VirtualServerKey {
                addr: "10.0.0.1".parse().unwrap(),
                protocol: Protocol::Tcp,
                port,
            },
            scheduler: "rr".into(),
            persistence: None,
        }
    }

    #[test]
    fn an_address_is_freed_by_its_last_virtual_server() {
        let mut mirror = Mirror::default();
        let addr: IpAddr = "10.0.0.1".parse().unwrap();
        mirror.add_virtual_server(server(80));
        mirror.add_virtual_server(server(443));
        mirror.add_virtual_server(server(443));
        assert_eq!(
            mirror.users_of(addr),
            2,
            "re-adding a key is not a new user"
        );
        assert_eq!(mirror.remove_virtual_server(&server(80).key), None);
        assert_eq!(
            mirror.remove_virtual_server(&server(80).key),
            None,
            "already gone"
        );
        assert_eq!(mirror.remove_virtual_server(&server(443).key), Some(addr));
        assert_eq!(mirror.users_of(addr), 0);
    }

    #[test]
    fn the_rotation_stays_bounded_when_some_are_read_every_round() {
        let mut mirror = Mirror::default();
        for port in 0..10 {
            mirror.add_virtual_server(server(port));
        }
        for _ in 0..1000 {
            let due = mirror.next_round(5);
            assert_eq!(due.len(), 2, "ceil(10 / 5)");
            for key in &due {
                mirror.set_real_servers(key, ListedRealServers::default());
            }
            // A draining one, read every round besides its turn.
            mirror.set_real_servers(&server(0).key, ListedRealServers::default());
        }
        assert!(
            mirror.freshness.order.len() <= 2 * 10 + 64,
            "{} entries for 10 virtual servers",
            mirror.freshness.order.len()
        );
        mirror.remove_virtual_server(&server(3).key);
        let mut seen = HashSet::default();
        for _ in 0..5 {
            seen.extend(mirror.next_round(5));
        }
        assert_eq!(seen.len(), 9, "every one still mirrored, and only those");
        assert!(!seen.contains(&server(3).key));
    }

    #[test]
    fn counters_follow_the_dumps_and_go_with_their_virtual_server() {
        let mut mirror = Mirror::default();
        let counters = TrafficCounters {
            connections: 3,
            packets_in: 9,
            packets_out: 6,
            bytes_in: 900,
            bytes_out: 600,
        };
        mirror.adopt(KernelVirtualServer {
            server: server(80),
            real_servers: vec![],
            connections: HashMap::default(),
            counters,
        });
        mirror.add_virtual_server(server(443));
        let got: Vec<_> = mirror.counters().map(|(k, c)| (k.port, *c)).collect();
        assert_eq!(got, [(80, counters)], "dumped ones only");
        mirror.remove_virtual_server(&server(80).key);
        assert_eq!(mirror.counters().count(), 0, "gone with its virtual server");
    }
}
