//! The reconciler's picture of the kernel state the proxy owns. Only
//! confirmed kernel answers (and dumps) change it, so it stays truthful.

use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt, HashSet};

use crate::desired::{RealServer, RealServerKey, VirtualServer, VirtualServerKey};
use crate::kernel::{KernelVirtualServer, TrafficCounters};

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
        let real_servers = dumped
            .real_servers
            .iter()
            .map(|rs| (rs.key, rs.weight))
            .collect();
        let connections = dumped
            .real_servers
            .iter()
            .map(|rs| {
                let count = dumped.connections.get(&rs.key).copied().unwrap_or(0);
                (rs.key, count)
            })
            .collect();
        self.insert(
            key,
            MirroredVirtualServer {
                server: dumped.server,
                real_servers,
                connections,
            },
        );
    }

    /// Records a virtual server just added: no real servers yet.
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
    }
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
