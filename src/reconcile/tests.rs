//! The reconciler's specification, against [`FakeKernel`]: every test counts
//! kernel operations or compares whole kernel states; none measures time.

use std::cell::{RefCell, RefMut};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::executor::block_on;

use super::*;
use crate::desired::{Protocol, RealServer, RealServerKey, VirtualServer};
use crate::kernel::fake::{FailOn, FakeKernel, Write};
use crate::kernel::{KernelVirtualServer, ListedRealServers, Prepared};

/// A clock the test moves by hand.
#[derive(Clone)]
struct ManualClock(Arc<Mutex<Instant>>);

impl ManualClock {
    fn new() -> Self {
        ManualClock(Arc::new(Mutex::new(Instant::now())))
    }

    fn now(&self) -> Instant {
        *self.0.lock().unwrap()
    }

    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }

    fn clock(&self) -> Clock {
        let shared = self.0.clone();
        Box::new(move || *shared.lock().unwrap())
    }
}

/// One [`FakeKernel`] behind both traits, so that its journal shows the
/// order of address and IPVS writes. The fake's futures are ready at once, so
/// each call completes while the borrow is held.
#[derive(Clone, Default)]
struct SharedKernel(Rc<RefCell<FakeKernel>>);

impl IpvsKernel for SharedKernel {
    async fn list_virtual_servers(&mut self) -> Result<Vec<ListedVirtualServer>, KernelError> {
        block_on(self.0.borrow_mut().list_virtual_servers())
    }

    async fn list_real_servers(
        &mut self,
        keys: &[VirtualServerKey],
    ) -> Result<Vec<ListedRealServers>, KernelError> {
        block_on(self.0.borrow_mut().list_real_servers(keys))
    }

    async fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), KernelError>> {
        block_on(self.0.borrow_mut().apply(ops))
    }
}

impl AddressKernel for SharedKernel {
    async fn ensure_link(&mut self) -> Result<Vec<IpAddr>, KernelError> {
        block_on(self.0.borrow_mut().ensure_link())
    }

    async fn add_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        block_on(self.0.borrow_mut().add_address(addr))
    }

    async fn add_addresses(&mut self, addrs: &[IpAddr]) -> Vec<Result<(), KernelError>> {
        block_on(self.0.borrow_mut().add_addresses(addrs))
    }

    async fn del_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        block_on(self.0.borrow_mut().del_address(addr))
    }
}

/// One reconciler and the kernel it programs.
struct Node {
    kernel: SharedKernel,
    reconciler: Reconciler,
    clock: ManualClock,
}

impl Node {
    fn new() -> Self {
        Self::with_ownership(Ownership::default())
    }

    fn with_ownership(ownership: Ownership) -> Self {
        let clock = ManualClock::new();
        Node {
            kernel: SharedKernel::default(),
            reconciler: Reconciler::with_clock(ownership, clock.clock()),
            clock,
        }
    }

    /// A fresh reconciler (a restarted proxy) on this node's kernel.
    fn restart(&self, ownership: Ownership) -> Self {
        let clock = ManualClock::new();
        Node {
            kernel: self.kernel.clone(),
            reconciler: Reconciler::with_clock(ownership, clock.clock()),
            clock,
        }
    }

    fn kernel(&self) -> RefMut<'_, FakeKernel> {
        self.kernel.0.borrow_mut()
    }

    async fn full_sync(&mut self) -> SyncReport {
        let (mut ipvs, mut addrs) = (self.kernel.clone(), self.kernel.clone());
        self.reconciler.full_sync(&mut ipvs, &mut addrs).await
    }

    async fn sync_dirty(&mut self) -> SyncReport {
        let (mut ipvs, mut addrs) = (self.kernel.clone(), self.kernel.clone());
        self.reconciler.sync_dirty(&mut ipvs, &mut addrs).await
    }

    async fn cleanup(&mut self) -> SyncReport {
        let (mut ipvs, mut addrs) = (self.kernel.clone(), self.kernel.clone());
        self.reconciler.cleanup(&mut ipvs, &mut addrs).await
    }

    fn set(&mut self, name: &str, desired: Option<ServiceDesired>) {
        self.reconciler.set_service(svc(name), desired);
    }

    fn writes(&self) -> usize {
        self.kernel().writes()
    }

    fn take_writes(&self) -> Vec<Write> {
        self.kernel().take_writes()
    }

    /// Asserts that the kernel holds exactly what `services` want, plus
    /// `foreign`, whatever connections it counts.
    fn assert_kernel_is(&self, services: &[&ServiceDesired], foreign: &[KernelVirtualServer]) {
        let mut table: Vec<KernelVirtualServer> = services
            .iter()
            .flat_map(|s| s.virtual_servers.iter())
            .map(|dvs| {
                let mut real_servers = dvs.real_servers.clone();
                real_servers.sort_by_key(|rs| rs.key);
                KernelVirtualServer {
                    server: dvs.server.clone(),
                    real_servers,
                    connections: HashMap::new(),
                    counters: Default::default(),
                }
            })
            .chain(foreign.iter().cloned())
            .collect();
        table.sort_by_key(|vs| vs.server.key);
        // Connections are traffic, not what the proxy wrote.
        let mut held = self.kernel().virtual_servers();
        held.iter_mut().for_each(|vs| vs.connections.clear());
        assert_eq!(held, table, "IPVS table");
        let mut addresses: Vec<IpAddr> = services
            .iter()
            .flat_map(|s| s.bind_addrs.iter().copied())
            .collect();
        addresses.sort_unstable();
        addresses.dedup();
        assert_eq!(self.kernel().addresses(), addresses, "kube-ipvs0 addresses");
    }
}

fn svc(name: &str) -> ServiceName {
    ServiceName::new("default", name)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tcp(addr: &str, port: u16) -> VirtualServerKey {
    VirtualServerKey {
        addr: ip(addr),
        protocol: Protocol::Tcp,
        port,
    }
}

fn rs(addr: &str, port: u16) -> RealServer {
    RealServer {
        key: RealServerKey {
            addr: ip(addr),
            port,
        },
        weight: 1,
    }
}

fn udp(addr: &str, port: u16) -> VirtualServerKey {
    VirtualServerKey {
        protocol: Protocol::Udp,
        ..tcp(addr, port)
    }
}

/// `real_server` with another weight: 0 is draining.
fn weight(real_server: RealServer, weight: u32) -> RealServer {
    RealServer {
        weight,
        ..real_server
    }
}

fn vs(key: VirtualServerKey, real_servers: &[RealServer]) -> DesiredVirtualServer {
    DesiredVirtualServer {
        server: VirtualServer {
            key,
            scheduler: "rr".into(),
            persistence: None,
        },
        real_servers: real_servers.to_vec(),
    }
}

/// A ClusterIP service: `vip` bound on kube-ipvs0, one virtual server per port.
fn cluster_ip(vip: &str, ports: &[u16], real_servers: &[RealServer]) -> ServiceDesired {
    ServiceDesired {
        virtual_servers: ports
            .iter()
            .map(|&port| vs(tcp(vip, port), real_servers))
            .collect(),
        bind_addrs: vec![ip(vip)],
        ..Default::default()
    }
}

fn foreign(key: VirtualServerKey) -> KernelVirtualServer {
    KernelVirtualServer {
        server: VirtualServer {
            key,
            scheduler: "wlc".into(),
            persistence: None,
        },
        real_servers: vec![rs("192.168.7.7", 80)],
        connections: HashMap::new(),
        counters: Default::default(),
    }
}

fn counts_of(ops: &[Op]) -> [usize; 6] {
    let mut counts = [0; 6];
    for op in ops {
        counts[match op {
            Op::AddVirtualServer(_) => 0,
            Op::UpdateVirtualServer(_) => 1,
            Op::DeleteVirtualServer(_) => 2,
            Op::AddRealServer(..) => 3,
            Op::UpdateRealServer(..) => 4,
            Op::DeleteRealServer(..) => 5,
        }] += 1;
    }
    counts
}

/// The IPVS ops among `writes`.
fn ipvs_ops(writes: &[Write]) -> Vec<Op> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Ipvs(op) => Some(op.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn cold_start_programs_exactly_the_desired_state_in_one_batch() {
    let mut node = Node::new();
    let web = cluster_ip(
        "10.96.0.10",
        &[80, 443],
        &[rs("10.244.0.1", 8080), rs("10.244.0.2", 8080)],
    );
    let mut sticky = cluster_ip("10.96.0.11", &[53], &[rs("10.244.0.3", 53)]);
    sticky.virtual_servers[0].server.persistence = Some(10800);
    let empty = cluster_ip("fd00:96::12", &[8080], &[]);
    node.set("web", Some(web.clone()));
    node.set("sticky", Some(sticky.clone()));
    node.set("empty", Some(empty.clone()));

    let report = node.full_sync().await;

    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(report.services_synced, 3);
    let writes = node.take_writes();
    let ops = ipvs_ops(&writes);
    // [add vs, update vs, delete vs, add rs, update rs, delete rs]
    assert_eq!(counts_of(&ops), [4, 0, 0, 5, 0, 0]);
    assert_eq!(
        writes[..3],
        [
            Write::AddAddress(ip("10.96.0.10")),
            Write::AddAddress(ip("10.96.0.11")),
            Write::AddAddress(ip("fd00:96::12")),
        ],
        "addresses first"
    );
    assert_eq!(report.writes, 4 + 5 + 3);
    assert_eq!(report.writes, node.writes());
    assert_eq!(node.kernel().apply_calls(), 1, "one batch per sync");
    for (i, op) in ops.iter().enumerate() {
        if let Op::AddRealServer(key, _) = op {
            let created = ops[..i]
                .iter()
                .any(|earlier| matches!(earlier, Op::AddVirtualServer(s) if s.key == *key));
            assert!(created, "{op:?} comes after its virtual server");
        }
    }
    node.assert_kernel_is(&[&web, &sticky, &empty], &[]);
}

#[tokio::test]
async fn addresses_go_on_before_and_come_off_after_their_virtual_servers() {
    let mut node = Node::new();
    let key = tcp("10.96.0.10", 80);
    node.set(
        "web",
        Some(cluster_ip("10.96.0.10", &[80], &[rs("10.244.0.1", 80)])),
    );
    node.full_sync().await;
    node.set("web", None);
    node.sync_dirty().await;

    assert_eq!(
        node.take_writes(),
        vec![
            Write::AddAddress(ip("10.96.0.10")),
            Write::Ipvs(Op::AddVirtualServer(vs(key, &[]).server)),
            Write::Ipvs(Op::AddRealServer(key, rs("10.244.0.1", 80))),
            Write::Ipvs(Op::DeleteVirtualServer(key)),
            Write::DelAddress(ip("10.96.0.10")),
        ]
    );
    node.assert_kernel_is(&[], &[]);
}

#[tokio::test]
async fn a_restarted_proxy_adopts_a_matching_kernel_without_writing() {
    let mut node = Node::new();
    let services: Vec<ServiceDesired> = (0..20)
        .map(|i| {
            cluster_ip(
                &format!("10.96.1.{i}"),
                &[80, 443],
                &[rs("10.244.1.1", 8080)],
            )
        })
        .collect();
    for (i, desired) in services.iter().enumerate() {
        node.set(&format!("s{i}"), Some(desired.clone()));
    }
    node.full_sync().await;
    let before = node.writes();

    let mut restarted = node.restart(Ownership::default());
    for (i, desired) in services.iter().enumerate() {
        restarted.set(&format!("s{i}"), Some(desired.clone()));
    }
    let report = restarted.full_sync().await;

    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(report.writes, 0);
    assert_eq!(restarted.writes(), before);
    // And the adopted mirror is exact: a change costs exactly its own ops.
    let mut changed = services[3].clone();
    changed.virtual_servers[1]
        .real_servers
        .push(rs("10.244.1.2", 8080));
    restarted.set("s3", Some(changed));
    assert_eq!(restarted.sync_dirty().await.writes, 1);
}

#[tokio::test]
async fn a_full_sync_reports_the_counters_it_listed_of_owned_virtual_servers_and_keeps_none() {
    let mut node = Node::new();
    let key = tcp("10.96.0.10", 80);
    node.set(
        "web",
        Some(cluster_ip("10.96.0.10", &[80], &[rs("10.244.0.1", 80)])),
    );
    let cold = node.full_sync().await;
    assert_eq!(cold.traffic, Some(vec![]), "an empty kernel listed nothing");
    let counters = TrafficCounters {
        connections: 4,
        packets_in: 40,
        packets_out: 30,
        bytes_in: 4000,
        bytes_out: 3000,
    };
    assert!(node.kernel().set_counters(&key, counters));
    // Another program's virtual server, busy too: not the proxy's to report.
    let mut other = foreign(tcp("192.168.50.1", 80));
    other.counters = counters;
    node.kernel().insert_virtual_server(other);

    let report = node.full_sync().await;
    let read = report
        .traffic
        .expect("a full sync lists the virtual servers");
    assert_eq!(read, [(key, counters)]);
    let claimed: Vec<_> = node.reconciler.traffic(&read).collect();
    assert_eq!(claimed, [(&svc("web"), &key, &counters)]);

    // Once the virtual server is gone, what was read of it is not reported.
    node.set("web", None);
    assert_eq!(
        node.sync_dirty().await.traffic,
        None,
        "an incremental sync lists nothing"
    );
    assert_eq!(node.reconciler.traffic(&read).count(), 0);
    assert_eq!(node.full_sync().await.traffic, Some(vec![]));

    // A full sync whose listing fails reads nothing, which the run loop
    // takes as "keep the last counters", not as "none".
    node.kernel()
        .fail_next(FailOn::IpvsDump, KernelError::Other("listing".into()));
    assert_eq!(node.full_sync().await.traffic, None);
}

#[tokio::test]
async fn with_nothing_changed_a_resync_writes_nothing() {
    let mut node = Node::new();
    let web = cluster_ip("10.96.0.10", &[80], &[rs("10.244.0.1", 80)]);
    node.set("web", Some(web.clone()));
    node.full_sync().await;
    let (writes, dumps) = (node.writes(), node.kernel().dumps());

    assert_eq!(node.full_sync().await.writes, 0, "full sync");
    assert_eq!(
        node.kernel().dumps(),
        dumps + 2,
        "a full sync reads IPVS and kube-ipvs0"
    );

    node.set("web", Some(web.clone()));
    assert!(
        !node.reconciler.has_dirty(),
        "an identical update is dropped"
    );
    let report = node.sync_dirty().await;
    assert_eq!((report.writes, report.services_synced), (0, 0));
    assert_eq!(node.writes(), writes);
    assert_eq!(
        node.kernel().dumps(),
        dumps + 2,
        "an incremental sync reads nothing"
    );
}

#[tokio::test]
async fn one_endpoint_among_ten_thousand_services_is_one_write() {
    let mut node = Node::new();
    let service = |i: u32, endpoints: &[RealServer]| {
        let vip = format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256);
        cluster_ip(&vip, &[80], endpoints)
    };
    for i in 0..10_000 {
        node.set(
            &format!("s{i}"),
            Some(service(i, &[rs("10.244.0.1", 8080)])),
        );
    }
    node.full_sync().await;
    node.take_writes();
    let key = service(4321, &[]).virtual_servers[0].server.key;
    let added = rs("10.244.0.2", 8080);

    node.set(
        "s4321",
        Some(service(4321, &[rs("10.244.0.1", 8080), added])),
    );
    let report = node.sync_dirty().await;
    assert_eq!((report.writes, report.services_synced), (1, 1));
    assert_eq!(
        node.take_writes(),
        vec![Write::Ipvs(Op::AddRealServer(key, added))]
    );

    node.set("s4321", Some(service(4321, &[rs("10.244.0.1", 8080)])));
    let report = node.sync_dirty().await;
    assert_eq!(report.writes, 1);
    assert_eq!(
        node.take_writes(),
        vec![Write::Ipvs(Op::UpdateRealServer(key, weight(added, 0)))],
        "a removed TCP endpoint drains first"
    );
}

#[tokio::test]
async fn settings_change_in_place_without_dropping_the_virtual_server() {
    let key = tcp("10.96.0.10", 80);
    let base = cluster_ip("10.96.0.10", &[80], &[rs("10.244.0.1", 80)]);
    let with = |scheduler: &str, persistence: Option<u32>| {
        let mut desired = base.clone();
        desired.virtual_servers[0].server.scheduler = scheduler.into();
        desired.virtual_servers[0].server.persistence = persistence;
        desired
    };
    let cases = [
        ("scheduler rr → lc", with("rr", None), with("lc", None)),
        (
            "session affinity on",
            with("rr", None),
            with("rr", Some(10800)),
        ),
        (
            "session affinity off",
            with("rr", Some(10800)),
            with("rr", None),
        ),
        (
            "affinity timeout",
            with("rr", Some(10800)),
            with("rr", Some(60)),
        ),
    ];
    for (name, from, to) in cases {
        let mut node = Node::new();
        node.set("web", Some(from));
        node.full_sync().await;
        node.take_writes();
        node.set("web", Some(to.clone()));
        node.sync_dirty().await;
        assert_eq!(
            node.take_writes(),
            vec![Write::Ipvs(Op::UpdateVirtualServer(
                to.virtual_servers[0].server.clone()
            ))],
            "{name}"
        );
        assert_eq!(
            node.kernel()
                .virtual_server(&key)
                .unwrap()
                .real_servers
                .len(),
            1
        );
        node.assert_kernel_is(&[&to], &[]);
    }
}

#[tokio::test]
async fn full_sync_repairs_drift_and_writes_only_the_repair() {
    let web = cluster_ip(
        "10.96.0.10",
        &[80],
        &[rs("10.244.0.1", 80), rs("10.244.0.2", 80)],
    );
    let db = cluster_ip("10.96.0.11", &[5432], &[rs("10.244.0.3", 5432)]);
    /// What someone did behind the proxy's back, and the writes that undo it.
    type Case = (&'static str, fn(&mut FakeKernel), Vec<Write>);
    let cases: Vec<Case> = vec![
        (
            "a virtual server deleted behind our back comes back, with its real servers",
            |k| assert!(k.remove_virtual_server(&tcp("10.96.0.10", 80))),
            vec![
                Write::Ipvs(Op::AddVirtualServer(vs(tcp("10.96.0.10", 80), &[]).server)),
                Write::Ipvs(Op::AddRealServer(
                    tcp("10.96.0.10", 80),
                    rs("10.244.0.1", 80),
                )),
                Write::Ipvs(Op::AddRealServer(
                    tcp("10.96.0.10", 80),
                    rs("10.244.0.2", 80),
                )),
            ],
        ),
        (
            "a real server reweighted behind our back",
            |k| {
                assert!(k.set_real_server(
                    &tcp("10.96.0.11", 5432),
                    rs("10.244.0.3", 5432).key,
                    Some(9)
                ))
            },
            vec![Write::Ipvs(Op::UpdateRealServer(
                tcp("10.96.0.11", 5432),
                rs("10.244.0.3", 5432),
            ))],
        ),
        (
            // One with a weight drains first: see graceful_termination_*.
            "an idle real server at weight 0 added to an owned virtual server",
            |k| {
                assert!(k.set_real_server(
                    &tcp("10.96.0.11", 5432),
                    rs("10.244.9.9", 1).key,
                    Some(0)
                ))
            },
            vec![Write::Ipvs(Op::DeleteRealServer(
                tcp("10.96.0.11", 5432),
                rs("10.244.9.9", 1).key,
            ))],
        ),
        (
            "an address removed from kube-ipvs0",
            |k| assert!(k.remove_address(ip("10.96.0.11"))),
            vec![Write::AddAddress(ip("10.96.0.11"))],
        ),
        (
            "a stray virtual server on an owned address",
            |k| k.insert_virtual_server(foreign(tcp("10.96.0.10", 8443))),
            vec![Write::Ipvs(Op::DeleteVirtualServer(tcp(
                "10.96.0.10",
                8443,
            )))],
        ),
        (
            "a stray address on kube-ipvs0, with a virtual server on it",
            |k| {
                k.insert_address(ip("10.96.0.99"));
                k.insert_virtual_server(foreign(tcp("10.96.0.99", 80)));
            },
            vec![
                Write::Ipvs(Op::DeleteVirtualServer(tcp("10.96.0.99", 80))),
                Write::DelAddress(ip("10.96.0.99")),
            ],
        ),
    ];
    for (name, drift, repair) in cases {
        let mut node = Node::new();
        node.set("web", Some(web.clone()));
        node.set("db", Some(db.clone()));
        node.full_sync().await;
        node.take_writes();
        drift(&mut node.kernel());

        assert_eq!(
            node.sync_dirty().await.writes,
            0,
            "{name}: an incremental sync trusts the mirror"
        );
        let report = node.full_sync().await;

        assert!(report.is_clean(), "{name}: {:?}", report.errors);
        assert_eq!(node.take_writes(), repair, "{name}");
        node.assert_kernel_is(&[&web, &db], &[]);
        assert_eq!(
            node.full_sync().await.writes,
            0,
            "{name}: repaired for good"
        );
    }
}

#[tokio::test]
async fn foreign_virtual_servers_are_never_touched() {
    let ownership = Ownership {
        exclude_cidrs: vec!["10.96.200.0/24".parse().unwrap()],
        ..Ownership::default()
    };
    let node_ip = "192.168.1.10";
    let cases = [
        (
            "on an address neither on kube-ipvs0 nor wanted",
            tcp("172.16.0.1", 80),
        ),
        ("inside an exclude CIDR", tcp("10.96.200.5", 80)),
        (
            "on a node address outside the NodePort range",
            tcp(node_ip, 8080),
        ),
    ];
    for (name, key) in cases {
        let mut node = Node::with_ownership(ownership.clone());
        node.reconciler.set_node_addresses(vec![ip(node_ip)]);
        // An excluded address on kube-ipvs0 does not make it ours either.
        node.kernel().insert_address(ip("10.96.200.5"));
        node.kernel().insert_virtual_server(foreign(key));
        let web = cluster_ip("10.96.0.10", &[80], &[rs("10.244.0.1", 80)]);
        node.set("web", Some(web.clone()));

        let report = node.full_sync().await;
        assert!(report.is_clean(), "{name}: {:?}", report.errors);
        assert_eq!(
            node.kernel().virtual_server(&key),
            Some(foreign(key)),
            "{name}: full sync"
        );

        let report = node.cleanup().await;
        assert!(report.is_clean(), "{name}: {:?}", report.errors);
        assert_eq!(
            node.kernel().virtual_servers(),
            vec![foreign(key)],
            "{name}: cleanup"
        );
        assert_eq!(
            node.kernel().addresses(),
            vec![ip("10.96.200.5")],
            "{name}: cleanup"
        );
    }
}

#[tokio::test]
async fn a_desired_key_held_by_someone_else_is_left_alone() {
    let ownership = Ownership {
        exclude_cidrs: vec!["10.96.200.0/24".parse().unwrap()],
        ..Ownership::default()
    };
    let cases = [
        (
            "inside an exclude CIDR",
            ServiceDesired {
                virtual_servers: vec![vs(tcp("10.96.200.5", 80), &[rs("10.244.0.1", 80)])],
                bind_addrs: vec![ip("10.96.200.5")],
                ..Default::default()
            },
            tcp("10.96.200.5", 80),
        ),
        (
            "on an address the service does not bind and the node does not have",
            ServiceDesired {
                virtual_servers: vec![vs(tcp("172.16.0.1", 30080), &[rs("10.244.0.1", 80)])],
                bind_addrs: vec![],
                ..Default::default()
            },
            tcp("172.16.0.1", 30080),
        ),
    ];
    for (name, desired, key) in cases {
        let mut node = Node::with_ownership(ownership.clone());
        node.kernel().insert_virtual_server(foreign(key));
        node.set("svc", Some(desired));
        let report = node.full_sync().await;
        assert_eq!(report.writes, 0, "{name}");
        assert_eq!(
            node.kernel().virtual_servers(),
            vec![foreign(key)],
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_node_address_served_as_an_external_ip_is_cleared_by_a_full_sync_too() {
    // An ExternalIP that is the node's own address: served, not bound. The
    // service goes, and the next sync is a full one (of either kind).
    for rounds in [1, 20] {
        let mut node = Node::new();
        node.reconciler.set_verify_rounds(rounds);
        let key = tcp("192.0.2.1", 8088);
        let external = ServiceDesired {
            virtual_servers: vec![vs(key, &[rs("10.244.2.11", 8080)])],
            served_node_addrs: vec![ip("192.0.2.1")],
            ..Default::default()
        };
        node.set("unsafe", Some(external.clone()));
        assert!(node.full_sync().await.is_clean());
        node.assert_kernel_is(&[&external], &[]);

        node.set("unsafe", None);
        let report = node.full_sync().await;
        assert!(report.is_clean(), "{:?}", report.errors);
        node.assert_kernel_is(&[], &[]);
        assert_eq!(node.full_sync().await.writes, 0, "rounds {rounds}: settled");
    }
}

#[tokio::test]
async fn node_ports_become_ours_when_the_node_address_is_known() {
    let mut node = Node::new();
    let key = tcp("192.168.1.10", 30080);
    let node_port = ServiceDesired {
        virtual_servers: vec![vs(key, &[rs("10.244.0.1", 80)])],
        bind_addrs: vec![],
        ..Default::default()
    };
    node.set("np", Some(node_port.clone()));
    assert_eq!(
        node.full_sync().await.writes,
        0,
        "not ours before the node address is known"
    );

    node.reconciler.set_node_addresses(vec![ip("192.168.1.10")]);
    assert!(node.reconciler.has_dirty());
    assert_eq!(node.sync_dirty().await.writes, 2);
    node.assert_kernel_is(&[&node_port], &[]);

    node.reconciler.set_node_addresses(vec![ip("192.168.1.10")]);
    assert!(!node.reconciler.has_dirty(), "unchanged node addresses");
    node.set("np", None);
    node.sync_dirty().await;
    node.assert_kernel_is(&[], &[]);

    // A restarted proxy still owns a NodePort virtual server left behind.
    node.kernel().insert_virtual_server(foreign(key));
    let mut restarted = node.restart(Ownership::default());
    restarted
        .reconciler
        .set_node_addresses(vec![ip("192.168.1.10")]);
    restarted.full_sync().await;
    assert_eq!(restarted.kernel().virtual_servers(), vec![]);
}

#[tokio::test]
async fn a_failing_service_backs_off_while_others_proceed() {
    let mut node = Node::new();
    let a_key = tcp("10.96.0.10", 80);
    let a = cluster_ip("10.96.0.10", &[80], &[rs("10.244.0.1", 80)]);
    let b = cluster_ip("10.96.0.11", &[80], &[rs("10.244.0.2", 80)]);
    node.kernel().fail_always(
        FailOn::VirtualServer(a_key),
        KernelError::Invalid("bad scheduler".into()),
    );
    node.set("a", Some(a.clone()));
    node.set("b", Some(b.clone()));

    let report = node.full_sync().await;

    // A's add fails, and so does its real server (its virtual server is missing).
    assert_eq!(report.failed, 2);
    assert_eq!(
        report.errors[0],
        SyncError::Operation {
            service: Some(svc("a")),
            op: Op::AddVirtualServer(a.virtual_servers[0].server.clone()),
            error: KernelError::Invalid("bad scheduler".into()),
        }
    );
    assert_eq!(
        report.errors[0].to_string(),
        "service default/a: add virtual server TCP/10.96.0.10:80 (scheduler rr): invalid argument: bad scheduler"
    );
    assert_eq!(
        node.kernel().virtual_servers().len(),
        1,
        "B was applied in the same sync"
    );
    assert_eq!(node.kernel().apply_calls(), 1);

    let start = node.clock.now();
    let mut expected_delay = Duration::from_secs(1);
    for attempt in 1..=3 {
        assert_eq!(
            node.reconciler.next_retry(),
            Some(node.clock.now() + expected_delay),
            "attempt {attempt}"
        );
        assert!(!node.reconciler.has_dirty());
        let writes = node.writes();
        assert_eq!(node.sync_dirty().await.writes, 0, "not yet due");
        node.clock.advance(expected_delay);
        assert!(node.reconciler.has_dirty(), "due");
        let report = node.sync_dirty().await;
        assert_eq!(
            (report.services_synced, report.failed),
            (1, 2),
            "attempt {attempt}"
        );
        assert_eq!(node.writes(), writes + 2, "only A is retried");
        expected_delay *= 2;
    }
    assert_eq!(node.clock.now() - start, Duration::from_secs(1 + 2 + 4));

    node.kernel().clear_failures();
    node.clock.advance(expected_delay);
    let report = node.sync_dirty().await;
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(node.reconciler.next_retry(), None);
    node.assert_kernel_is(&[&a, &b], &[]);
}

#[tokio::test]
async fn a_new_desired_state_is_tried_at_once_despite_backoff() {
    let mut node = Node::new();
    let key = tcp("10.96.0.10", 80);
    node.kernel().fail_next(
        FailOn::VirtualServer(key),
        KernelError::Other("EBUSY".into()),
    );
    node.set("a", Some(cluster_ip("10.96.0.10", &[80], &[])));
    assert_eq!(node.full_sync().await.failed, 1);
    let fixed = cluster_ip("10.96.0.10", &[80], &[rs("10.244.0.1", 80)]);
    node.set("a", Some(fixed.clone()));
    assert!(node.sync_dirty().await.is_clean());
    node.assert_kernel_is(&[&fixed], &[]);
}

#[tokio::test]
async fn already_there_and_already_gone_are_success() {
    let mut node = Node::new();
    node.set(
        "a",
        Some(cluster_ip("10.96.0.10", &[80], &[rs("10.244.0.1", 80)])),
    );
    node.set("b", Some(cluster_ip("10.96.0.11", &[80], &[])));
    node.full_sync().await;
    // Someone else already created what "c" will want, and deleted what "b" had.
    let c = cluster_ip("10.96.0.12", &[80], &[rs("10.244.0.2", 80)]);
    node.kernel().insert_address(ip("10.96.0.12"));
    node.kernel().insert_virtual_server(KernelVirtualServer {
        server: c.virtual_servers[0].server.clone(),
        real_servers: c.virtual_servers[0].real_servers.clone(),
        connections: HashMap::new(),
        counters: Default::default(),
    });
    node.kernel().remove_virtual_server(&tcp("10.96.0.11", 80));
    node.kernel().remove_address(ip("10.96.0.11"));
    node.set("c", Some(c.clone()));
    node.set("b", None);

    let report = node.sync_dirty().await;

    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(
        report.writes, 5,
        "add c's address, vs, rs; delete b's vs, address"
    );
    assert_eq!(node.reconciler.next_retry(), None);
    assert_eq!(
        node.full_sync().await.writes,
        0,
        "the mirror matches the kernel"
    );
}

#[tokio::test]
async fn a_virtual_server_vanished_behind_our_back_is_rebuilt_on_retry() {
    let mut node = Node::new();
    let key = tcp("10.96.0.10", 80);
    node.set(
        "a",
        Some(cluster_ip("10.96.0.10", &[80], &[rs("10.244.0.1", 80)])),
    );
    node.full_sync().await;
    node.kernel().remove_virtual_server(&key);
    let grown = cluster_ip(
        "10.96.0.10",
        &[80],
        &[rs("10.244.0.1", 80), rs("10.244.0.2", 80)],
    );
    node.set("a", Some(grown.clone()));

    let report = node.sync_dirty().await;
    assert_eq!(
        report.failed, 1,
        "adding a real server to a missing virtual server"
    );
    node.clock.advance(Duration::from_secs(1));
    let report = node.sync_dirty().await;

    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(report.writes, 3, "the virtual server and both real servers");
    node.assert_kernel_is(&[&grown], &[]);
}

#[tokio::test]
async fn a_shared_address_stays_while_any_service_binds_it() {
    let mut node = Node::new();
    let a = cluster_ip("203.0.113.7", &[80], &[rs("10.244.0.1", 80)]);
    let b = cluster_ip("203.0.113.7", &[443], &[rs("10.244.0.2", 443)]);
    node.set("a", Some(a.clone()));
    node.set("b", Some(b.clone()));
    node.full_sync().await;
    node.take_writes();

    node.set("a", None);
    node.sync_dirty().await;
    assert_eq!(
        node.take_writes(),
        vec![Write::Ipvs(Op::DeleteVirtualServer(tcp("203.0.113.7", 80)))]
    );
    node.assert_kernel_is(&[&b], &[]);

    node.set("b", None);
    node.sync_dirty().await;
    assert_eq!(
        node.take_writes(),
        vec![
            Write::Ipvs(Op::DeleteVirtualServer(tcp("203.0.113.7", 443))),
            Write::DelAddress(ip("203.0.113.7")),
        ]
    );
    node.assert_kernel_is(&[], &[]);
}

#[tokio::test]
async fn an_address_stays_while_a_virtual_server_on_it_failed_to_go() {
    let mut node = Node::new();
    let key = tcp("10.96.0.10", 80);
    node.set("a", Some(cluster_ip("10.96.0.10", &[80], &[])));
    node.full_sync().await;
    node.kernel().fail_next(
        FailOn::VirtualServer(key),
        KernelError::Other("EBUSY".into()),
    );
    node.set("a", None);

    let report = node.sync_dirty().await;
    assert_eq!(
        (report.writes, report.failed),
        (1, 1),
        "no address removal yet"
    );
    assert_eq!(node.kernel().addresses(), vec![ip("10.96.0.10")]);

    node.clock.advance(Duration::from_secs(1));
    let report = node.sync_dirty().await;
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(report.writes, 2, "the virtual server, then its address");
    node.assert_kernel_is(&[], &[]);
    assert_eq!(node.reconciler.next_retry(), None);
}

#[tokio::test]
async fn a_failed_address_is_retried_with_backoff() {
    let mut node = Node::new();
    let a = cluster_ip("10.96.0.10", &[80], &[]);
    node.kernel().fail_next(
        FailOn::Address(ip("10.96.0.10")),
        KernelError::Other("ENOSPC".into()),
    );
    node.set("a", Some(a.clone()));
    let report = node.full_sync().await;
    assert_eq!(
        report.errors,
        vec![SyncError::Address {
            addr: ip("10.96.0.10"),
            action: AddressAction::Add,
            error: KernelError::Other("ENOSPC".into()),
        }]
    );
    assert_eq!(
        node.reconciler.next_retry(),
        Some(node.clock.now() + Duration::from_secs(1))
    );
    node.clock.advance(Duration::from_secs(1));
    let report = node.sync_dirty().await;
    assert_eq!((report.writes, report.failed), (1, 0));
    node.assert_kernel_is(&[&a], &[]);
    assert_eq!(node.reconciler.next_retry(), None);
}

#[tokio::test]
async fn two_undated_services_claiming_one_key_resolve_by_name() {
    let mut node = Node::new();
    let key = tcp("203.0.113.7", 80);
    let first = cluster_ip("203.0.113.7", &[80], &[rs("10.244.0.1", 80)]);
    let second = cluster_ip("203.0.113.7", &[80], &[rs("10.244.0.2", 80)]);
    node.set("first", Some(first.clone()));
    node.full_sync().await;
    node.take_writes();

    node.set("second", Some(second.clone()));
    assert_eq!(
        node.sync_dirty().await.writes,
        0,
        "the first by name keeps it"
    );
    assert_eq!(node.full_sync().await.writes, 0, "also on a full sync");
    node.assert_kernel_is(&[&first], &[]);

    node.set("first", None);
    node.sync_dirty().await;
    assert_eq!(
        node.take_writes(),
        vec![
            Write::Ipvs(Op::UpdateRealServer(key, weight(rs("10.244.0.1", 80), 0))),
            Write::Ipvs(Op::AddRealServer(key, rs("10.244.0.2", 80))),
        ],
        "handed over in place, without deleting the virtual server; the first's endpoint drains"
    );
    node.full_sync().await;
    node.assert_kernel_is(&[&second], &[]);
}

#[tokio::test]
async fn an_older_service_takes_a_virtual_server_over_and_a_restart_keeps_it() {
    let mut node = Node::new();
    let key = tcp("203.0.113.7", 80);
    let dated = |desired: ServiceDesired, created: i64| ServiceDesired {
        created: Some(created),
        ..desired
    };
    let young = dated(
        cluster_ip("203.0.113.7", &[80], &[rs("10.244.0.1", 80)]),
        2_000,
    );
    let old = dated(
        cluster_ip("203.0.113.7", &[80], &[rs("10.244.0.2", 80)]),
        1_000,
    );
    // "a-young" sorts first by name: only the age decides.
    let notices = node
        .reconciler
        .set_service(svc("a-young"), Some(young.clone()));
    assert_eq!(notices, vec![]);
    node.full_sync().await;
    node.take_writes();

    let notices = node.reconciler.set_service(svc("z-old"), Some(old.clone()));
    assert_eq!(
        notices,
        vec![ClaimNotice::Lost {
            service: svc("a-young"),
            key,
            owner: svc("z-old"),
        }],
        "the younger owner is told it lost the virtual server"
    );
    node.sync_dirty().await;
    assert_eq!(
        node.take_writes(),
        vec![
            Write::Ipvs(Op::UpdateRealServer(key, weight(rs("10.244.0.1", 80), 0))),
            Write::Ipvs(Op::AddRealServer(key, rs("10.244.0.2", 80))),
        ],
        "taken over in place, as a handover is"
    );
    node.full_sync().await;
    node.assert_kernel_is(&[&old], &[]);

    // A restart claims in either order and writes nothing.
    for order in [["a-young", "z-old"], ["z-old", "a-young"]] {
        let mut restarted = node.restart(Ownership::default());
        for name in order {
            let desired = if name == "z-old" { &old } else { &young };
            restarted
                .reconciler
                .set_service(svc(name), Some(desired.clone()));
        }
        assert_eq!(
            restarted.full_sync().await.writes,
            0,
            "claimed in {order:?}"
        );
    }

    let notices = node.reconciler.set_service(svc("z-old"), None);
    assert_eq!(
        notices,
        vec![ClaimNotice::HandedOver {
            service: svc("a-young"),
            key,
            from: svc("z-old"),
        }]
    );
    node.sync_dirty().await;
    node.full_sync().await;
    node.assert_kernel_is(&[&young], &[]);
}

#[tokio::test]
async fn a_recreated_owner_yields_to_the_older_service_waiting() {
    let mut node = Node::new();
    let key = tcp("203.0.113.7", 80);
    let dated = |real: &str, created: i64| ServiceDesired {
        created: Some(created),
        ..cluster_ip("203.0.113.7", &[80], &[rs(real, 80)])
    };
    node.reconciler
        .set_service(svc("a"), Some(dated("10.244.0.1", 1_000)));
    node.reconciler
        .set_service(svc("c"), Some(dated("10.244.0.3", 3_000)));
    node.full_sync().await;
    node.take_writes();

    // Deleted and created again while its watch was down: only the
    // creation time differs, and it is now the younger.
    let notices = node
        .reconciler
        .set_service(svc("a"), Some(dated("10.244.0.1", 9_000)));
    assert_eq!(
        notices,
        vec![ClaimNotice::Lost {
            service: svc("a"),
            key,
            owner: svc("c"),
        }]
    );
    node.sync_dirty().await;
    assert_eq!(
        node.take_writes(),
        vec![
            Write::Ipvs(Op::UpdateRealServer(key, weight(rs("10.244.0.1", 80), 0))),
            Write::Ipvs(Op::AddRealServer(key, rs("10.244.0.3", 80))),
        ]
    );
}

#[tokio::test]
async fn cleanup_removes_everything_owned_and_nothing_foreign() {
    let mut node = Node::with_ownership(Ownership {
        exclude_cidrs: vec!["10.96.200.0/24".parse().unwrap()],
        ..Ownership::default()
    });
    node.reconciler.set_node_addresses(vec![ip("192.168.1.10")]);
    node.set(
        "web",
        Some(cluster_ip(
            "10.96.0.10",
            &[80, 443],
            &[rs("10.244.0.1", 80)],
        )),
    );
    node.set(
        "np",
        Some(ServiceDesired {
            virtual_servers: vec![vs(tcp("192.168.1.10", 30080), &[rs("10.244.0.1", 80)])],
            bind_addrs: vec![],
            ..Default::default()
        }),
    );
    node.full_sync().await;
    let foreigners = [
        tcp("172.16.0.1", 80),
        tcp("10.96.200.1", 80),
        tcp("192.168.1.10", 22),
    ];
    for key in foreigners {
        node.kernel().insert_virtual_server(foreign(key));
    }
    node.kernel().insert_address(ip("10.96.200.1"));
    // Left behind by an earlier run: owned because it is on kube-ipvs0.
    node.kernel().insert_address(ip("10.96.0.50"));
    node.kernel()
        .insert_virtual_server(foreign(tcp("10.96.0.50", 80)));
    node.take_writes();

    // A cleanup run is a fresh process that knows nothing desired.
    let mut cleaner = node.restart(Ownership {
        exclude_cidrs: vec!["10.96.200.0/24".parse().unwrap()],
        ..Ownership::default()
    });
    cleaner
        .reconciler
        .set_node_addresses(vec![ip("192.168.1.10")]);
    let report = cleaner.cleanup().await;

    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(
        cleaner.take_writes(),
        vec![
            Write::Ipvs(Op::DeleteVirtualServer(tcp("10.96.0.10", 80))),
            Write::Ipvs(Op::DeleteVirtualServer(tcp("10.96.0.10", 443))),
            Write::Ipvs(Op::DeleteVirtualServer(tcp("10.96.0.50", 80))),
            Write::Ipvs(Op::DeleteVirtualServer(tcp("192.168.1.10", 30080))),
            Write::DelAddress(ip("10.96.0.10")),
            Write::DelAddress(ip("10.96.0.50")),
        ]
    );
    let mut remaining: Vec<KernelVirtualServer> = foreigners.into_iter().map(foreign).collect();
    remaining.sort_by_key(|vs| vs.server.key);
    assert_eq!(cleaner.kernel().virtual_servers(), remaining);
    assert_eq!(cleaner.kernel().addresses(), vec![ip("10.96.200.1")]);
    assert_eq!(
        cleaner.cleanup().await.writes,
        0,
        "a second cleanup finds nothing"
    );
}

#[tokio::test]
async fn a_failed_read_writes_nothing() {
    let cases = [
        ("IPVS dump", FailOn::IpvsDump, KernelRead::IpvsDump),
        ("kube-ipvs0", FailOn::Link, KernelRead::Link),
    ];
    for (name, target, what) in cases {
        let mut node = Node::new();
        node.set("a", Some(cluster_ip("10.96.0.10", &[80], &[])));
        node.kernel()
            .fail_next(target, KernelError::Other("EPERM".into()));
        let error = KernelError::Other("EPERM".into());

        let report = node.sync_dirty().await;

        assert_eq!(
            report.errors,
            vec![SyncError::Read { what, error }],
            "{name}"
        );
        assert_eq!(node.writes(), 0, "{name}");
        assert!(
            !node.reconciler.has_dirty(),
            "{name}: nothing is due before the read's backoff"
        );
        node.clock.advance(Duration::from_secs(1));
        assert!(node.reconciler.has_dirty(), "{name}: still to do");
        // Before any full sync succeeded, an incremental sync is a full one.
        assert!(node.sync_dirty().await.is_clean(), "{name}");
        assert_eq!(node.kernel().virtual_servers().len(), 1, "{name}");
    }
}

#[tokio::test]
async fn failed_reads_are_retried_with_backoff_and_dirty_work_waits_for_them() {
    let mut node = Node::new();
    node.set("a", Some(cluster_ip("10.96.0.10", &[80], &[])));
    node.kernel()
        .fail_always(FailOn::IpvsDump, KernelError::Other("EPERM".into()));
    let mut retries = Vec::new();
    for _ in 0..8 {
        let report = node.sync_dirty().await;
        assert!(!report.is_clean());
        let retry = node.reconciler.next_retry().expect("a read to retry");
        retries.push((retry - node.clock.now()).as_secs());
        assert!(
            !node.reconciler.has_dirty(),
            "dirty work waits for the read"
        );
        node.clock.advance(retry - node.clock.now());
        assert!(node.reconciler.has_dirty(), "the read is due");
    }
    assert_eq!(retries, [1, 2, 4, 8, 16, 32, 60, 60]);
    // The fake counts both reads of a full sync: kube-ipvs0 and the dump.
    assert_eq!(node.kernel().dumps(), 2 * 8, "one read per due retry");

    node.kernel().clear_failures();
    assert!(node.sync_dirty().await.is_clean());
    assert_eq!(node.reconciler.next_retry(), None, "a good read resets it");
    assert_eq!(node.kernel().virtual_servers().len(), 1);

    // After a good read, a failed one (a periodic full sync) lets
    // incremental syncs go on, and the read is retried when due.
    node.kernel()
        .fail_next(FailOn::IpvsDump, KernelError::Other("EINTR".into()));
    assert!(!node.full_sync().await.is_clean());
    node.set("b", Some(cluster_ip("10.96.0.11", &[80], &[])));
    assert!(node.reconciler.has_dirty());
    let dumps = node.kernel().dumps();
    assert!(node.sync_dirty().await.is_clean());
    assert_eq!(node.kernel().dumps(), dumps, "incremental: no read yet");
    node.clock.advance(Duration::from_secs(1));
    assert!(node.reconciler.has_dirty(), "the read is due");
    assert!(node.sync_dirty().await.is_clean());
    assert_eq!(
        node.kernel().dumps(),
        dumps + 2,
        "the due read is a full sync"
    );
    assert_eq!(node.reconciler.next_retry(), None);
    assert_eq!(node.kernel().virtual_servers().len(), 2);
}

#[tokio::test]
async fn a_deleted_service_whose_delete_failed_is_retried() {
    let mut node = Node::new();
    let key = tcp("10.96.0.10", 80);
    node.set("a", Some(cluster_ip("10.96.0.10", &[80, 81], &[])));
    node.full_sync().await;
    node.kernel().fail_next(
        FailOn::VirtualServer(key),
        KernelError::Other("EBUSY".into()),
    );
    node.set("a", None);
    assert_eq!(node.sync_dirty().await.failed, 1);
    assert_eq!(node.reconciler.desired().count(), 0);

    node.clock.advance(Duration::from_secs(1));
    let report = node.sync_dirty().await;

    assert_eq!(
        (report.services_synced, report.writes),
        (1, 2),
        "the one delete, then the address"
    );
    node.assert_kernel_is(&[], &[]);
}

#[tokio::test]
async fn excluded_and_duplicate_desires_are_dropped_from_the_index() {
    let ownership = Ownership {
        exclude_cidrs: vec!["10.96.200.0/24".parse().unwrap()],
        ..Ownership::default()
    };
    let mut node = Node::with_ownership(ownership);
    let kept = vs(tcp("10.96.0.10", 80), &[rs("10.244.0.1", 80)]);
    let mut duplicate = kept.clone();
    duplicate.server.scheduler = "lc".into();
    let desired = ServiceDesired {
        virtual_servers: vec![kept.clone(), vs(tcp("10.96.200.1", 80), &[]), duplicate],
        bind_addrs: vec![ip("10.96.0.10"), ip("10.96.200.1"), ip("10.96.0.10")],
        ..Default::default()
    };
    node.set("a", Some(desired.clone()));
    node.full_sync().await;

    node.assert_kernel_is(
        &[&ServiceDesired {
            virtual_servers: vec![kept],
            bind_addrs: vec![ip("10.96.0.10")],
            ..Default::default()
        }],
        &[],
    );
    let listed: Vec<_> = node.reconciler.desired().collect();
    assert_eq!(
        listed,
        vec![(&svc("a"), &desired)],
        "desired() returns what was given"
    );
}

#[test]
fn the_reconciler_can_move_into_a_spawned_task() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Reconciler>();
    assert_send_sync::<SyncReport>();
}

/// Upstream's graceful termination (pkg/proxy/ipvs/graceful_termination.go):
/// a removed TCP endpoint keeps its open connections at weight 0 and goes
/// once a dump shows it idle.
#[tokio::test]
async fn graceful_termination_drains_a_removed_tcp_endpoint_until_idle() {
    let mut node = Node::new();
    let key = tcp("10.96.0.10", 80);
    let (stays, leaves) = (rs("10.244.0.1", 80), rs("10.244.0.2", 80));
    let both = cluster_ip("10.96.0.10", &[80], &[stays, leaves]);
    let one = cluster_ip("10.96.0.10", &[80], &[stays]);
    node.set("web", Some(both.clone()));
    node.full_sync().await;
    node.take_writes();
    node.kernel().set_connections(&key, leaves.key, 2);

    node.set("web", Some(one.clone()));
    let report = node.sync_dirty().await;
    assert_eq!(
        node.take_writes(),
        vec![Write::Ipvs(Op::UpdateRealServer(key, weight(leaves, 0)))],
        "removal: weight 0, one write"
    );
    assert_eq!(report.writes, 1);
    let draining = cluster_ip("10.96.0.10", &[80], &[stays, weight(leaves, 0)]);
    node.assert_kernel_is(&[&draining], &[]);

    assert_eq!(
        node.full_sync().await.writes,
        0,
        "draining with connections survives a full sync"
    );
    assert_eq!(
        node.full_sync().await.writes,
        0,
        "and the next, while they stay open"
    );
    node.assert_kernel_is(&[&draining], &[]);

    node.kernel().set_connections(&key, leaves.key, 0);
    assert_eq!(
        node.sync_dirty().await.writes,
        0,
        "an incremental sync does not know it is idle"
    );
    let report = node.full_sync().await;
    assert_eq!(
        node.take_writes(),
        vec![Write::Ipvs(Op::DeleteRealServer(key, leaves.key))],
        "idle: deleted at the next full sync"
    );
    assert_eq!(report.writes, 1);
    node.assert_kernel_is(&[&one], &[]);
    assert_eq!(node.full_sync().await.writes, 0, "and then nothing to do");
}

#[tokio::test]
async fn graceful_termination_an_endpoint_back_while_draining_gets_its_weight_back() {
    let mut node = Node::new();
    let key = tcp("10.96.0.10", 80);
    let (stays, returns) = (rs("10.244.0.1", 80), rs("10.244.0.2", 80));
    let both = cluster_ip("10.96.0.10", &[80], &[stays, returns]);
    node.set("web", Some(both.clone()));
    node.full_sync().await;
    node.kernel().set_connections(&key, returns.key, 1);
    node.set("web", Some(cluster_ip("10.96.0.10", &[80], &[stays])));
    node.sync_dirty().await;
    node.full_sync().await;
    node.take_writes();

    node.set("web", Some(both.clone()));
    let report = node.sync_dirty().await;
    assert_eq!(
        node.take_writes(),
        vec![Write::Ipvs(Op::UpdateRealServer(key, returns))],
        "weight restored in place: its connections survive"
    );
    assert_eq!(report.writes, 1);
    node.assert_kernel_is(&[&both], &[]);
    node.kernel().set_connections(&key, returns.key, 0);
    assert_eq!(
        node.full_sync().await.writes,
        0,
        "a wanted idle real server is not deleted"
    );
}

#[tokio::test]
async fn graceful_termination_skips_udp_and_whole_virtual_servers() {
    let key = udp("10.96.0.53", 53);
    let (stays, leaves) = (rs("10.244.0.1", 53), rs("10.244.0.2", 53));
    let dns = |real_servers: &[RealServer]| ServiceDesired {
        virtual_servers: vec![vs(key, real_servers)],
        bind_addrs: vec![ip("10.96.0.53")],
        ..Default::default()
    };
    let mut node = Node::new();
    node.set("dns", Some(dns(&[stays, leaves])));
    node.full_sync().await;
    node.take_writes();
    node.kernel().set_connections(&key, leaves.key, 5);

    node.set("dns", Some(dns(&[stays])));
    node.sync_dirty().await;
    assert_eq!(
        node.take_writes(),
        vec![Write::Ipvs(Op::DeleteRealServer(key, leaves.key))],
        "UDP: deleted at once, whatever its connections"
    );
    node.assert_kernel_is(&[&dns(&[stays])], &[]);

    let web_key = tcp("10.96.0.10", 80);
    let web = cluster_ip("10.96.0.10", &[80], &[rs("10.244.0.3", 80)]);
    node.set("web", Some(web));
    node.sync_dirty().await;
    node.kernel()
        .set_connections(&web_key, rs("10.244.0.3", 80).key, 7);
    node.full_sync().await;
    node.take_writes();

    node.set("web", None);
    node.sync_dirty().await;
    assert_eq!(
        node.take_writes(),
        vec![
            Write::Ipvs(Op::DeleteVirtualServer(web_key)),
            Write::DelAddress(ip("10.96.0.10")),
        ],
        "a deleted service's virtual server goes at once, connections or not"
    );
    node.assert_kernel_is(&[&dns(&[stays])], &[]);
}

/// What [`SlowLink`] and [`LoggedIpvs`] saw, in order.
type Events = Rc<RefCell<Vec<&'static str>>>;

/// kube-ipvs0 whose batched additions take several polls to finish, as the
/// real link's do (they run on a blocking thread).
struct SlowLink {
    kernel: SharedKernel,
    events: Events,
}

impl AddressKernel for SlowLink {
    async fn ensure_link(&mut self) -> Result<Vec<IpAddr>, KernelError> {
        self.kernel.ensure_link().await
    }

    async fn add_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        self.kernel.add_address(addr).await
    }

    async fn add_addresses(&mut self, addrs: &[IpAddr]) -> Vec<Result<(), KernelError>> {
        self.events.borrow_mut().push("additions start");
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        let results = self.kernel.add_addresses(addrs).await;
        self.events.borrow_mut().push("additions end");
        results
    }

    async fn del_address(&mut self, addr: IpAddr) -> Result<(), KernelError> {
        self.kernel.del_address(addr).await
    }
}

/// IPVS that logs when a batch goes out.
struct LoggedIpvs {
    kernel: SharedKernel,
    events: Events,
}

impl IpvsKernel for LoggedIpvs {
    async fn list_virtual_servers(&mut self) -> Result<Vec<ListedVirtualServer>, KernelError> {
        self.kernel.list_virtual_servers().await
    }

    async fn list_real_servers(
        &mut self,
        keys: &[VirtualServerKey],
    ) -> Result<Vec<ListedRealServers>, KernelError> {
        self.kernel.list_real_servers(keys).await
    }

    async fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), KernelError>> {
        self.events.borrow_mut().push("IPVS batch");
        self.kernel.apply(ops).await
    }
}

#[tokio::test]
async fn address_additions_are_under_way_while_the_ipvs_batch_goes_out() {
    let mut node = Node::new();
    let events = Events::default();
    let mut link = SlowLink {
        kernel: node.kernel.clone(),
        events: events.clone(),
    };
    let mut ipvs = LoggedIpvs {
        kernel: node.kernel.clone(),
        events: events.clone(),
    };
    let web = cluster_ip("10.96.0.10", &[80], &[rs("10.244.0.1", 80)]);
    let db = cluster_ip("10.96.0.11", &[5432], &[rs("10.244.0.2", 5432)]);
    node.set("web", Some(web.clone()));
    node.set("db", Some(db.clone()));

    let report = node.reconciler.full_sync(&mut ipvs, &mut link).await;
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(
        report.writes,
        2 + 4,
        "two addresses, two virtual servers with one real server each"
    );
    assert_eq!(
        *events.borrow(),
        vec!["additions start", "IPVS batch", "additions end"]
    );
    node.assert_kernel_is(&[&web, &db], &[]);
    assert_eq!(
        node.full_sync().await.writes,
        0,
        "the late additions were recorded as held"
    );
}

/// A node whose full syncs read real servers in a rolling window over
/// `rounds`, holding `count` ClusterIP services of one port and two real
/// servers each, after its first (complete) full sync.
async fn windowed_node(count: usize, rounds: u64) -> (Node, Vec<ServiceDesired>) {
    let mut node = Node::new();
    node.reconciler.set_verify_rounds(rounds);
    let services: Vec<ServiceDesired> = (0..count)
        .map(|i| {
            let vip = format!("10.96.{}.{}", i / 256, i % 256);
            cluster_ip(
                &vip,
                &[80],
                &[rs("10.244.0.1", 8080), rs("10.244.0.2", 8080)],
            )
        })
        .collect();
    for (i, desired) in services.iter().enumerate() {
        node.set(&format!("s{i}"), Some(desired.clone()));
    }
    let first = node.full_sync().await;
    assert!(first.is_clean(), "{:?}", first.errors);
    assert_eq!(
        node.kernel().dump_requests(),
        1,
        "the first full sync lists the empty table once: nothing to read real servers of"
    );
    (node, services)
}

/// How many times each virtual server's real servers have been read.
fn reads_of(node: &Node) -> std::collections::BTreeMap<VirtualServerKey, usize> {
    node.kernel().real_server_reads().clone()
}

#[tokio::test]
async fn an_idle_full_sync_lists_every_virtual_server_but_reads_a_window_of_real_servers() {
    let cases = [(100, 10, 10), (37, 5, 8), (5, 20, 1), (12, 1, 12)];
    for (count, rounds, window) in cases {
        let (mut node, _) = windowed_node(count, rounds).await;
        for sync in 0..3 {
            let before = node.kernel().dump_requests();
            let report = node.full_sync().await;
            let what = format!("{count} virtual servers over {rounds} rounds, idle sync {sync}");
            assert!(report.is_clean(), "{what}: {:?}", report.errors);
            assert_eq!(report.writes, 0, "{what}: writes");
            assert_eq!(
                node.kernel().dump_requests() - before,
                1 + window,
                "{what}: one listing of the virtual servers and {window} of real servers"
            );
        }
    }
}

#[tokio::test]
async fn every_virtual_server_is_read_at_least_once_per_verify_bound() {
    let (count, rounds) = (37, 5);
    let (mut node, _) = windowed_node(count, rounds).await;
    // Each virtual server was read (created) in round 0.
    let keys: Vec<VirtualServerKey> = node
        .kernel()
        .virtual_servers()
        .iter()
        .map(|vs| vs.server.key)
        .collect();
    assert_eq!(keys.len(), count);
    let mut last_read: HashMap<VirtualServerKey, u64> = keys.iter().map(|k| (*k, 0)).collect();
    let mut reads = reads_of(&node);
    for round in 1..=4 * rounds {
        node.full_sync().await;
        let now = reads_of(&node);
        for key in &keys {
            if now.get(key) != reads.get(key) {
                last_read.insert(*key, round);
            }
            let age = round - last_read[key];
            assert!(
                age < rounds,
                "{key}: unread for {age} full syncs in round {round}; the bound is {rounds}"
            );
        }
        reads = now;
    }
    // The window is ceil(37 / 5) = 8, so 160 reads over 20 rounds: each
    // virtual server read 4 or 5 times, evenly, never bunched up.
    for key in &keys {
        let n = reads.get(key).copied().unwrap_or(0);
        assert!((4..=5).contains(&n), "{key}: read {n} times in 20 rounds");
    }
}

#[tokio::test]
async fn a_real_server_deleted_behind_the_proxys_back_is_repaired_within_the_verify_bound() {
    let rounds = 4;
    let (mut node, services) = windowed_node(10, rounds).await;
    // Take one just read, so the repair waits out the whole bound.
    let before = reads_of(&node);
    node.full_sync().await;
    let after = reads_of(&node);
    let key = *after
        .iter()
        .find(|(key, n)| before.get(*key) != Some(*n))
        .map(|(key, _)| key)
        .expect("a full sync reads some real servers");
    let gone = rs("10.244.0.2", 8080);
    assert!(node.kernel().set_real_server(&key, gone.key, None));
    node.take_writes();

    let mut repaired_in = None;
    for round in 1..=rounds {
        let report = node.full_sync().await;
        if report.writes > 0 {
            assert_eq!(
                ipvs_ops(&node.take_writes()),
                [Op::AddRealServer(key, gone)],
                "only the missing real server is written"
            );
            repaired_in = Some(round);
            break;
        }
    }
    // Read in a later round (it waited for its turn) but within the bound.
    let repaired_in = repaired_in.expect("repaired within the bound");
    assert!(
        (2..=rounds).contains(&repaired_in),
        "repaired after {repaired_in} full syncs"
    );
    let refs: Vec<&ServiceDesired> = services.iter().collect();
    node.assert_kernel_is(&refs, &[]);
}

#[tokio::test]
async fn a_deleted_or_changed_virtual_server_is_repaired_at_the_next_full_sync() {
    let (mut node, services) = windowed_node(10, 20).await;
    let deleted = tcp("10.96.0.3", 80);
    let changed = tcp("10.96.0.7", 80);
    assert!(node.kernel().remove_virtual_server(&deleted));
    let mut other = node.kernel().virtual_server(&changed).unwrap();
    other.server.scheduler = "wlc".into();
    other.real_servers.pop();
    node.kernel().insert_virtual_server(other);
    node.take_writes();

    let report = node.full_sync().await;

    assert!(report.is_clean(), "{:?}", report.errors);
    let mut ops = ipvs_ops(&node.take_writes());
    ops.sort_by_key(|op| format!("{op:?}"));
    let mut want = vec![
        Op::AddVirtualServer(vs(deleted, &[]).server),
        Op::AddRealServer(deleted, rs("10.244.0.1", 8080)),
        Op::AddRealServer(deleted, rs("10.244.0.2", 8080)),
        Op::UpdateVirtualServer(vs(changed, &[]).server),
        Op::AddRealServer(changed, rs("10.244.0.2", 8080)),
    ];
    want.sort_by_key(|op| format!("{op:?}"));
    assert_eq!(ops, want, "the changed one's real servers are read with it");
    let refs: Vec<&ServiceDesired> = services.iter().collect();
    node.assert_kernel_is(&refs, &[]);
}

#[tokio::test]
async fn draining_real_servers_are_read_at_every_full_sync() {
    let (mut node, services) = windowed_node(10, 20).await;
    let key = tcp("10.96.0.4", 80);
    let leaving = rs("10.244.0.2", 8080);
    node.set(
        "s4",
        Some(cluster_ip("10.96.0.4", &[80], &[rs("10.244.0.1", 8080)])),
    );
    node.sync_dirty().await;
    assert!(node.kernel().set_connections(&key, leaving.key, 3));

    for sync in 0..3 {
        let before = reads_of(&node).get(&key).copied();
        let report = node.full_sync().await;
        assert_eq!(report.writes, 0, "sync {sync}: still draining");
        assert_eq!(
            reads_of(&node).get(&key).copied(),
            Some(before.unwrap_or(0) + 1),
            "sync {sync}: its connections are read"
        );
    }
    assert!(node.kernel().set_connections(&key, leaving.key, 0));
    node.take_writes();
    node.full_sync().await;
    assert_eq!(
        ipvs_ops(&node.take_writes()),
        [Op::DeleteRealServer(key, leaving.key)],
        "deleted at the first full sync that sees it idle"
    );
    let mut services = services;
    services[4] = cluster_ip("10.96.0.4", &[80], &[rs("10.244.0.1", 8080)]);
    let refs: Vec<&ServiceDesired> = services.iter().collect();
    node.assert_kernel_is(&refs, &[]);
}

#[tokio::test]
async fn a_virtual_server_with_a_refused_write_is_read_at_the_next_full_sync() {
    let (mut node, _) = windowed_node(10, 20).await;
    let key = tcp("10.96.0.6", 80);
    // Someone else added the real server the service now wants.
    let added = rs("10.244.0.3", 8080);
    assert!(node.kernel().set_real_server(&key, added.key, Some(5)));
    let mut wanted = cluster_ip(
        "10.96.0.6",
        &[80],
        &[rs("10.244.0.1", 8080), rs("10.244.0.2", 8080)],
    );
    wanted.virtual_servers[0].real_servers.push(added);
    node.set("s6", Some(wanted));
    let report = node.sync_dirty().await;
    assert_eq!(report.writes, 1, "the add, answered \"exists\"");
    assert_eq!(
        node.kernel().virtual_server(&key).unwrap().real_servers[2].weight,
        5,
        "the kernel keeps its weight; the mirror cannot know it"
    );

    let before = reads_of(&node).get(&key).copied().unwrap_or(0);
    node.take_writes();
    node.full_sync().await;
    assert_eq!(reads_of(&node).get(&key), Some(&(before + 1)), "read");
    assert_eq!(
        ipvs_ops(&node.take_writes()),
        [Op::UpdateRealServer(key, added)],
        "and repaired at once, not within the bound"
    );
}

#[tokio::test]
async fn after_require_full_sync_a_full_sync_reads_every_real_server() {
    let (mut node, _) = windowed_node(30, 10).await;
    let idle = node.kernel().dump_requests();
    node.full_sync().await;
    assert_eq!(node.kernel().dump_requests() - idle, 1 + 3, "a window");

    // As after a rebuilt netlink connection.
    node.reconciler.require_full_sync();
    let before = node.kernel().dump_requests();
    let report = node.full_sync().await;
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(report.writes, 0);
    assert_eq!(node.kernel().dump_requests() - before, 1 + 30, "everything");

    // A failed read of the real servers leaves the next to read everything.
    node.kernel()
        .fail_next(FailOn::RealServerDump, KernelError::Other("EINTR".into()));
    let failed = node.full_sync().await;
    assert!(!failed.is_clean(), "the failed read is reported");
    let before = node.kernel().dump_requests();
    node.full_sync().await;
    assert_eq!(
        node.kernel().dump_requests() - before,
        1 + 30,
        "everything again"
    );
}

/// How long real-server drift lasts: one real server deleted behind the
/// proxy's back from every virtual server at once is repaired a window at a
/// time, all of it within the bound. So drift that starts at a random moment
/// waits half the verify period on average, and the whole period at worst.
#[tokio::test]
async fn real_server_drift_everywhere_is_repaired_a_window_at_a_time_within_the_bound() {
    let (count, rounds) = (37, 5);
    let (mut node, services) = windowed_node(count, rounds).await;
    let gone = rs("10.244.0.2", 8080);
    let keys: Vec<VirtualServerKey> = node
        .kernel()
        .virtual_servers()
        .iter()
        .map(|vs| vs.server.key)
        .collect();
    for key in &keys {
        assert!(node.kernel().set_real_server(key, gone.key, None));
    }
    node.take_writes();

    let mut repaired_per_sync = Vec::new();
    for _ in 0..rounds {
        let report = node.full_sync().await;
        assert!(report.is_clean(), "{:?}", report.errors);
        let ops = ipvs_ops(&node.take_writes());
        assert!(
            ops.iter()
                .all(|op| matches!(op, Op::AddRealServer(_, rs) if *rs == gone)),
            "only the missing real servers are written: {ops:?}"
        );
        repaired_per_sync.push(ops.len());
    }
    assert_eq!(
        repaired_per_sync,
        [8, 8, 8, 8, 5],
        "ceil(37 / 5) = 8 per full sync, the last round taking the rest"
    );
    let refs: Vec<&ServiceDesired> = services.iter().collect();
    node.assert_kernel_is(&refs, &[]);
}

/// VIP of service `s{i}` of [`four_hundred_services`].
fn vip_of(i: u16) -> String {
    format!("10.96.{}.{}", i / 256, i % 256)
}

/// 400 services of one virtual server and ten real servers: 4,400 ops,
/// more than one chunk.
fn four_hundred_services() -> Node {
    let mut node = Node::new();
    let real_servers: Vec<RealServer> =
        (1..=10).map(|i| rs(&format!("10.244.0.{i}"), 80)).collect();
    for i in 0..400 {
        node.set(
            &format!("s{i}"),
            Some(cluster_ip(&vip_of(i), &[80], &real_servers)),
        );
    }
    node
}

#[tokio::test]
async fn a_large_sync_is_applied_in_chunks_in_order_with_each_failure_reported() {
    let mut node = four_hundred_services();
    // One virtual server in the third chunk, by key order, with two after it.
    let failing = tcp(&vip_of(100), 80);
    node.kernel().fail_always(
        FailOn::VirtualServer(failing),
        KernelError::Invalid("bad scheduler".into()),
    );

    let report = node.full_sync().await;

    // 256 ops, then twice as many each time up to APPLY_CHUNK, each chunk
    // ending with the virtual server that reaches its size: 24, 47, 94 and
    // 187 virtual servers of 11 ops, then the 48 left.
    const { assert!(FIRST_CHUNK == 256 && APPLY_CHUNK >= 2048) };
    assert_eq!(node.kernel().apply_sizes(), [264, 517, 1_034, 2_057, 528]);
    let ops = ipvs_ops(&node.take_writes());
    assert_eq!(counts_of(&ops), [400, 0, 0, 4_000, 0, 0]);
    assert_eq!(
        report.writes,
        4_400 + 400,
        "every op and address counted once"
    );
    for (i, op) in ops.iter().enumerate() {
        if let Op::AddRealServer(key, _) = op {
            let created = ops[..i]
                .iter()
                .any(|earlier| matches!(earlier, Op::AddVirtualServer(s) if s.key == *key));
            assert!(created, "{op:?} comes after its virtual server");
        }
    }
    assert_eq!(report.failed, 11, "the add and its ten real servers");
    assert!(report.errors.iter().all(|error| matches!(
        error,
        SyncError::Operation { service: Some(name), op, .. }
            if *name == svc("s100") && op.virtual_server() == failing
    )));
    assert_eq!(
        node.kernel().virtual_servers().len(),
        399,
        "the rest applied in the same sync"
    );

    // Converged: the next full sync writes nothing.
    node.kernel().clear_failures();
    node.reconciler.set_service(svc("s100"), None);
    node.full_sync().await;
    node.take_writes();
    let report = node.full_sync().await;
    assert_eq!(report.writes, 0);
}

thread_local! {
    /// What [`PreparingIpvs`] saw, in order: its `prepare` has no `self`.
    static PREPARING: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// IPVS whose batches take several polls, as the real one's do (the
/// netlink layer sends them from a thread of its own), logging when each
/// chunk is prepared and when it goes out and comes back.
struct PreparingIpvs(SharedKernel);

impl PreparingIpvs {
    fn log(event: String) {
        PREPARING.with(|log| log.borrow_mut().push(event));
    }
}

impl IpvsKernel for PreparingIpvs {
    async fn list_virtual_servers(&mut self) -> Result<Vec<ListedVirtualServer>, KernelError> {
        self.0.list_virtual_servers().await
    }

    async fn list_real_servers(
        &mut self,
        keys: &[VirtualServerKey],
    ) -> Result<Vec<ListedRealServers>, KernelError> {
        self.0.list_real_servers(keys).await
    }

    async fn apply(&mut self, ops: &[Op]) -> Vec<Result<(), KernelError>> {
        self.apply_prepared(ops, Self::prepare(ops)).await
    }

    /// Stands for the requests with as many no-op operations as `ops`.
    fn prepare(ops: &[Op]) -> Prepared {
        Self::log(format!("prepare {}", ops.len()));
        let stand_ins = vec![netlink_ipvs::Operation::Flush; ops.len()];
        Prepared(Some(netlink_ipvs::PreparedBatch::new(stand_ins)))
    }

    async fn apply_prepared(
        &mut self,
        ops: &[Op],
        prepared: Prepared,
    ) -> Vec<Result<(), KernelError>> {
        let prepared_for = prepared.0.map(|batch| batch.operations().len());
        assert_eq!(prepared_for, Some(ops.len()), "prepared for these ops");
        Self::log(format!("send {}", ops.len()));
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        let results = self.0.apply(ops).await;
        Self::log(format!("answered {}", ops.len()));
        results
    }
}

#[tokio::test]
async fn each_chunk_is_prepared_while_the_kernel_takes_the_one_before() {
    let mut node = four_hundred_services();
    PREPARING.with(|log| log.borrow_mut().clear());

    let mut ipvs = PreparingIpvs(node.kernel.clone());
    let mut addrs = node.kernel.clone();
    let report = node.reconciler.full_sync(&mut ipvs, &mut addrs).await;
    assert!(report.is_clean(), "{:?}", report.errors);

    // The chunks of the test above, each prepared before the kernel has
    // answered the one before it, and sent with what was prepared for it.
    let expected: Vec<String> = [
        "prepare 264",
        "send 264",
        "prepare 517",
        "answered 264",
        "send 517",
        "prepare 1034",
        "answered 517",
        "send 1034",
        "prepare 2057",
        "answered 1034",
        "send 2057",
        "prepare 528",
        "answered 2057",
        "send 528",
        "prepare 0",
        "answered 528",
    ]
    .map(String::from)
    .into();
    assert_eq!(PREPARING.with(|log| log.take()), expected);
    assert_eq!(node.kernel().virtual_servers().len(), 400);
}

/// Hands over services f0, f1, … of one virtual server with one real
/// server (two IPVS operations each), one service per call asked for one
/// operation, counting them.
struct CountingFeed {
    handed_over: usize,
    count: usize,
}

impl Feed for CountingFeed {
    fn feed(&mut self, reconciler: &mut Reconciler, ops: usize) {
        let mut worth = 0;
        while worth < ops && self.handed_over < self.count {
            let i = self.handed_over;
            let vip = format!("10.97.{}.{}", i / 256, i % 256);
            let desired = cluster_ip(&vip, &[80], &[rs("10.244.1.1", 8080)]);
            worth += operations_worth(&desired);
            reconciler.set_service(svc(&format!("f{i}")), Some(desired));
            self.handed_over += 1;
        }
    }

    fn remaining(&self) -> usize {
        self.count - self.handed_over
    }
}

/// A full sync of 200 services of two operations each (chunks of 256 and
/// 144 operations, each answered at the kernel's fourth poll) with `feed`,
/// which must end with the 200 virtual servers in the kernel.
async fn sync_two_hundred_services_feeding(feed: &mut (dyn Feed + Send)) {
    let mut node = Node::new();
    for i in 0..200u16 {
        let vip = format!("10.96.{}.{}", i / 256, i % 256);
        let desired = cluster_ip(&vip, &[80], &[rs("10.244.0.1", 8080)]);
        node.set(&format!("s{i}"), Some(desired));
    }
    let mut ipvs = PreparingIpvs(node.kernel.clone());
    let mut addrs = node.kernel.clone();
    let report = node
        .reconciler
        .full_sync_feeding(&mut ipvs, &mut addrs, feed)
        .await;
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(node.kernel().virtual_servers().len(), 200);
}

#[tokio::test]
async fn the_feed_goes_on_until_the_kernel_has_answered_the_chunk() {
    let mut feed = CountingFeed {
        handed_over: 0,
        count: 10_000,
    };
    sync_two_hundred_services_feeding(&mut feed).await;

    // At least FEED_PER_OP times each chunk's 256 and 144 operations, and
    // more while this kernel takes several polls to answer each.
    let minimum = FEED_PER_OP * (256 + 144) / 2;
    assert!(
        feed.handed_over > minimum,
        "{} services handed over, {minimum} at the least",
        feed.handed_over
    );
    assert!(
        feed.remaining() > 0,
        "not everything: the feed stops at the answer"
    );
}

/// A feed with no service to hand over and `left` units of spare work,
/// counting the calls for it.
struct SparingFeed {
    left: usize,
    calls: usize,
}

impl Feed for SparingFeed {
    fn feed(&mut self, _: &mut Reconciler, _: usize) {}

    fn remaining(&self) -> usize {
        0
    }

    fn spare(&mut self) -> bool {
        self.calls += 1;
        self.left = self.left.saturating_sub(1);
        self.left > 0
    }
}

#[tokio::test]
async fn spare_work_fills_the_kernels_time_and_stops_at_its_answer_or_when_done() {
    for (left, expected_calls) in [(10_000, None), (1, Some(2))] {
        let mut feed = SparingFeed { left, calls: 0 };
        sync_two_hundred_services_feeding(&mut feed).await;
        match expected_calls {
            // More than one call while each of the two chunks was in the
            // kernel (it answers at the fourth poll), none after its
            // answer: most of the work is left.
            None => assert!(
                (3..=10).contains(&feed.calls) && feed.left > 9_000,
                "{} calls, {} left",
                feed.calls,
                feed.left
            ),
            // Once it says nothing is left, a chunk's wait asks no more:
            // one call for each of the two chunks.
            Some(calls) => assert_eq!(feed.calls, calls),
        }
    }
}
