//! The reconciler's picture of the kernel state the proxy owns. Only
//! confirmed kernel answers (and dumps) change it, so it stays truthful.

use std::collections::VecDeque;
use std::net::IpAddr;

use foldhash::{HashMap, HashSet};

use crate::desired::{RealServer, RealServerKey, VirtualServer, VirtualServerKey};
use crate::kernel::{KernelVirtualServer, ListedRealServers};

/// One owned virtual server as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MirroredVirtualServer {
    pub server: VirtualServer,
    /// Sorted by key, one per key. A sorted vector takes a fraction of the
    /// memory of a map per virtual server, and the diff walks it in order.
    real_servers: Vec<MirroredRealServer>,
}

/// One real server of a [`MirroredVirtualServer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MirroredRealServer {
    pub key: RealServerKey,
    pub weight: u32,
    /// Its connections (active plus inactive) as the last dump counted
    /// them. `None`: unknown, because the proxy has written the real server
    /// since, or never dumped it. Only a known 0 lets a draining real server
    /// go.
    pub connections: Option<u32>,
}

impl MirroredVirtualServer {
    /// A virtual server with `real_servers`, in any order; of duplicates the
    /// last wins.
    pub fn new(
        server: VirtualServer,
        real_servers: impl IntoIterator<Item = MirroredRealServer>,
    ) -> Self {
        let mut real_servers: Vec<MirroredRealServer> = real_servers.into_iter().collect();
        real_servers.sort_by_key(|rs| rs.key);
        real_servers.dedup_by(|later, kept| {
            let same = later.key == kept.key;
            if same {
                *kept = *later;
            }
            same
        });
        real_servers.shrink_to_fit();
        MirroredVirtualServer {
            server,
            real_servers,
        }
    }

    /// The real servers, in key order.
    pub fn real_servers(&self) -> &[MirroredRealServer] {
        &self.real_servers
    }

    /// The real server `key`, if the kernel holds it.
    pub fn real_server(&self, key: &RealServerKey) -> Option<&MirroredRealServer> {
        let index = self.position(key).ok()?;
        Some(&self.real_servers[index])
    }

    fn position(&self, key: &RealServerKey) -> Result<usize, usize> {
        self.real_servers.binary_search_by_key(key, |rs| rs.key)
    }

    /// Records a real server added or reweighted, its connections unknown.
    fn set(&mut self, real_server: RealServer) {
        let mirrored = MirroredRealServer {
            key: real_server.key,
            weight: real_server.weight,
            connections: None,
        };
        match self.position(&real_server.key) {
            Ok(index) => self.real_servers[index] = mirrored,
            // The diff adds in key order: nearly always a push at the end.
            Err(index) => self.real_servers.insert(index, mirrored),
        }
    }

    fn remove(&mut self, key: &RealServerKey) {
        if let Ok(index) = self.position(key) {
            self.real_servers.remove(index);
        }
    }
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

    /// Records a dumped virtual server with its real servers (its counters
    /// go in the sync's report, not here).
    pub fn adopt(&mut self, dumped: KernelVirtualServer) {
        let key = dumped.server.key;
        let real_servers = mirrored_real_servers(ListedRealServers {
            real_servers: dumped.real_servers,
            connections: dumped.connections,
        });
        self.insert(key, MirroredVirtualServer::new(dumped.server, real_servers));
    }

    /// Replaces the real servers of a mirrored virtual server with what its
    /// destinations dump listed, and notes it as read this round.
    pub fn set_real_servers(&mut self, key: &VirtualServerKey, listed: ListedRealServers) {
        if let Some(vs) = self.virtual_servers.get_mut(key) {
            *vs = MirroredVirtualServer::new(vs.server.clone(), mirrored_real_servers(listed));
            self.freshness.read(*key);
            self.suspect.remove(key);
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
            .filter(|(_, vs)| vs.real_servers.iter().any(|rs| rs.weight == 0))
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
        self.insert(key, MirroredVirtualServer::new(server, []));
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
            vs.set(real_server);
        }
    }

    pub fn remove_real_server(&mut self, key: &VirtualServerKey, real_server: &RealServerKey) {
        if let Some(vs) = self.virtual_servers.get_mut(key) {
            vs.remove(real_server);
        }
    }

    /// Gives back the spare capacity a sync's writes left in `key`'s real
    /// servers: the mirror outlives the sync, and holds every owned one.
    pub fn shrink(&mut self, key: &VirtualServerKey) {
        if let Some(vs) = self.virtual_servers.get_mut(key) {
            vs.real_servers.shrink_to_fit();
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

/// The listed real servers, each with its connections (0 for those the
/// dump lists without any).
fn mirrored_real_servers(listed: ListedRealServers) -> impl Iterator<Item = MirroredRealServer> {
    let ListedRealServers {
        real_servers,
        connections,
    } = listed;
    real_servers.into_iter().map(move |rs| MirroredRealServer {
        key: rs.key,
        weight: rs.weight,
        connections: Some(connections.get(&rs.key).copied().unwrap_or(0)),
    })
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

    fn real_server(last_octet: u8, weight: u32) -> RealServer {
        RealServer {
            key: RealServerKey {
                addr: format!("10.244.0.{last_octet}").parse().unwrap(),
                port: 8080,
            },
            weight,
        }
    }

    /// (last octet, weight, connections) of each mirrored real server.
    fn held(mirror: &Mirror, port: u16) -> Vec<(u8, u32, Option<u32>)> {
        let vs = mirror.get(&server(port).key).expect("mirrored");
        vs.real_servers()
            .iter()
            .map(|rs| {
                let IpAddr::V4(addr) = rs.key.addr else {
                    panic!("IPv4")
                };
                (addr.octets()[3], rs.weight, rs.connections)
            })
            .collect()
    }

    #[test]
    fn real_servers_stay_sorted_with_connections_known_only_from_dumps() {
        let mut mirror = Mirror::default();
        let dumped = ListedRealServers {
            real_servers: vec![real_server(3, 1), real_server(1, 1), real_server(2, 0)],
            connections: [(real_server(2, 0).key, 5)].into_iter().collect(),
        };
        mirror.add_virtual_server(server(80));
        mirror.set_real_servers(&server(80).key, dumped);
        assert_eq!(
            held(&mirror, 80),
            [(1, 1, Some(0)), (2, 0, Some(5)), (3, 1, Some(0))],
            "in key order; listed without connections is a known 0"
        );
        assert_eq!(mirror.draining().collect::<Vec<_>>(), [&server(80).key]);

        mirror.set_real_server(&server(80).key, real_server(2, 1));
        mirror.set_real_server(&server(80).key, real_server(4, 1));
        mirror.set_real_server(&server(80).key, real_server(0, 1));
        mirror.remove_real_server(&server(80).key, &real_server(3, 1).key);
        mirror.remove_real_server(&server(80).key, &real_server(9, 1).key);
        assert_eq!(
            held(&mirror, 80),
            [(0, 1, None), (1, 1, Some(0)), (2, 1, None), (4, 1, None)],
            "a write makes its connections unknown; a missing one is no change"
        );
        assert_eq!(mirror.draining().count(), 0);
        let vs = mirror.get(&server(80).key).unwrap();
        assert_eq!(
            vs.real_server(&real_server(2, 0).key).map(|rs| rs.weight),
            Some(1)
        );
        assert_eq!(vs.real_server(&real_server(3, 0).key), None);

        mirror.set_real_server(&server(443).key, real_server(1, 1));
        assert!(!mirror.contains(&server(443).key), "not mirrored: ignored");
    }

    #[test]
    fn a_dump_listing_a_real_server_twice_keeps_the_last() {
        let mut mirror = Mirror::default();
        mirror.adopt(KernelVirtualServer {
            server: server(80),
            real_servers: vec![real_server(1, 1), real_server(2, 1), real_server(1, 7)],
            connections: HashMap::default(),
            counters: crate::kernel::TrafficCounters::default(),
        });
        assert_eq!(held(&mirror, 80), [(1, 7, Some(0)), (2, 1, Some(0))]);
    }
}
