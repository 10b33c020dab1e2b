//! The packet path's share of reconciliation, against [`FakeNft`] and
//! [`FakeConntrack`]: set elements go in one transaction per sync, only what
//! changed, and the flows of removed UDP real servers are deleted.

use futures::executor::block_on;

use super::*;
use crate::desired::{
    DesiredVirtualServer, NftChange, NftElement, NftKey, NftSet, Protocol, RealServer,
    RealServerKey, VirtualServer,
};
use crate::kernel::fake::{FakeConntrack, FakeKernel, FakeNft};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn element(set: NftSet, key: NftKey) -> NftElement {
    NftElement { set, key }
}

fn cluster_ip_element(vip: &str, port: u16) -> NftElement {
    element(
        NftSet::ClusterIps,
        NftKey::AddrProtoPort(ip(vip), Protocol::Tcp, port),
    )
}

fn service_ip(vip: &str) -> NftElement {
    element(NftSet::ServiceIps, NftKey::Addr(ip(vip)))
}

/// A service that wants only set elements (enough for these tests).
fn wanting(elements: &[NftElement]) -> ServiceDesired {
    let mut nft_elements = elements.to_vec();
    nft_elements.sort_unstable();
    ServiceDesired {
        nft_elements,
        ..Default::default()
    }
}

fn sync(reconciler: &mut Reconciler, nft: &mut FakeNft, full: bool) -> SyncReport {
    let mut report = SyncReport::default();
    block_on(reconciler.sync_nft(nft, &NftRuleset::default(), full, &mut report));
    report
}

#[test]
fn first_sync_creates_the_table_and_adds_every_element_in_one_transaction() {
    let mut reconciler = Reconciler::new(Ownership::default());
    let mut nft = FakeNft::new();
    let web = [
        cluster_ip_element("10.96.0.10", 80),
        service_ip("10.96.0.10"),
    ];
    let dns = [
        cluster_ip_element("10.96.0.53", 53),
        service_ip("10.96.0.53"),
    ];
    reconciler.set_service(ServiceName::new("default", "web"), Some(wanting(&web)));
    reconciler.set_service(ServiceName::new("kube-system", "dns"), Some(wanting(&dns)));
    reconciler.set_local_pod_cidrs(&["10.244.0.0/16".parse().unwrap()]);

    let report = sync(&mut reconciler, &mut nft, false);
    assert_eq!(
        (report.nft_batches, report.nft_elements, report.writes),
        (1, 5, 5)
    );
    assert_eq!(nft.tables_created, 1);
    assert_eq!(nft.transactions, 1);
    let mut want: Vec<NftElement> = web.iter().chain(&dns).copied().collect();
    want.push(element(
        NftSet::LocalPodCidrs,
        NftKey::Cidr("10.244.0.0/16".parse().unwrap()),
    ));
    want.sort_unstable();
    assert_eq!(nft.elements(), want);
}

#[test]
fn a_change_sends_only_its_elements_and_a_shared_element_stays_while_wanted() {
    let mut reconciler = Reconciler::new(Ownership::default());
    let mut nft = FakeNft::new();
    // Two ports of one address: service-ips 10.96.0.10 is wanted by both.
    let a = [
        cluster_ip_element("10.96.0.10", 80),
        service_ip("10.96.0.10"),
    ];
    let b = [
        cluster_ip_element("10.96.0.10", 443),
        service_ip("10.96.0.10"),
    ];
    reconciler.set_service(ServiceName::new("default", "a"), Some(wanting(&a)));
    reconciler.set_service(ServiceName::new("default", "b"), Some(wanting(&b)));
    sync(&mut reconciler, &mut nft, true);

    reconciler.set_service(ServiceName::new("default", "b"), None);
    let report = sync(&mut reconciler, &mut nft, false);
    assert_eq!(
        (report.nft_batches, report.nft_elements),
        (1, 1),
        "only b's port goes"
    );
    let mut want = a.to_vec();
    want.sort_unstable();
    assert_eq!(nft.elements(), want, "10.96.0.10 stays: a still wants it");

    let report = sync(&mut reconciler, &mut nft, false);
    assert_eq!(
        (report.nft_batches, report.writes),
        (0, 0),
        "nothing changed, nothing sent"
    );
}

#[test]
fn an_idle_full_sync_writes_nothing_and_drift_is_repaired() {
    let mut reconciler = Reconciler::new(Ownership::default());
    let mut nft = FakeNft::new();
    let web = [
        cluster_ip_element("10.96.0.10", 80),
        service_ip("10.96.0.10"),
    ];
    reconciler.set_service(ServiceName::new("default", "web"), Some(wanting(&web)));
    sync(&mut reconciler, &mut nft, true);

    let report = sync(&mut reconciler, &mut nft, true);
    assert_eq!((report.nft_batches, report.writes), (0, 0));
    assert_eq!(
        nft.tables_created, 1,
        "the table is adopted, not re-created"
    );

    assert!(nft.remove_element(&web[0]), "deleted by hand");
    let report = sync(&mut reconciler, &mut nft, false);
    assert_eq!(
        report.writes, 0,
        "an incremental sync does not read the kernel"
    );
    let report = sync(&mut reconciler, &mut nft, true);
    assert_eq!((report.nft_batches, report.nft_elements), (1, 1));
    assert!(nft.elements().contains(&web[0]));
}

#[test]
fn a_restart_adopts_the_sets_with_zero_writes() {
    let mut nft = FakeNft::new();
    let web = [
        cluster_ip_element("10.96.0.10", 80),
        service_ip("10.96.0.10"),
    ];
    let mut first = Reconciler::new(Ownership::default());
    first.set_service(ServiceName::new("default", "web"), Some(wanting(&web)));
    sync(&mut first, &mut nft, true);

    let mut second = Reconciler::new(Ownership::default());
    second.set_service(ServiceName::new("default", "web"), Some(wanting(&web)));
    let report = sync(&mut second, &mut nft, true);
    assert_eq!((report.writes, report.nft_batches), (0, 0));
    assert_eq!(nft.tables_created, 1);
}

#[test]
fn a_failed_transaction_is_retried_after_reading_the_sets_again() {
    let mut reconciler = Reconciler::new(Ownership::default());
    let mut nft = FakeNft::new();
    sync(&mut reconciler, &mut nft, true);
    let web = [
        cluster_ip_element("10.96.0.10", 80),
        service_ip("10.96.0.10"),
    ];
    reconciler.set_service(ServiceName::new("default", "web"), Some(wanting(&web)));
    nft.fail_transactions(1, KernelError::Other("Cannot allocate memory".into()));

    let report = sync(&mut reconciler, &mut nft, false);
    assert_eq!(report.failed, 2);
    assert!(
        matches!(&report.errors[..], [SyncError::Nftables { changes: 2, .. }]),
        "{:?}",
        report.errors
    );
    assert!(
        nft.elements().is_empty(),
        "the transaction was all or nothing"
    );
    assert!(reconciler.has_dirty() || reconciler.next_retry().is_some());

    // The retry is due only after its backoff; a full sync retries at once.
    let report = sync(&mut reconciler, &mut nft, true);
    assert!(report.is_clean(), "{:?}", report.errors);
    let mut want = web.to_vec();
    want.sort_unstable();
    assert_eq!(nft.elements(), want);
}

#[test]
fn a_changed_ruleset_recreates_the_table_and_refills_it() {
    let mut reconciler = Reconciler::new(Ownership::default());
    let mut nft = FakeNft::new();
    let web = [cluster_ip_element("10.96.0.10", 80)];
    reconciler.set_service(ServiceName::new("default", "web"), Some(wanting(&web)));
    sync(&mut reconciler, &mut nft, true);

    let masquerade_all = NftRuleset {
        masquerade_all: true,
        ..NftRuleset::default()
    };
    let mut report = SyncReport::default();
    block_on(reconciler.sync_nft(&mut nft, &masquerade_all, true, &mut report));
    assert_eq!(nft.tables_created, 2);
    assert_eq!(nft.elements(), web.to_vec(), "refilled after re-creation");
    assert_eq!(nft.ruleset(), Some(&masquerade_all));
}

fn udp_vs(addr: &str, port: u16, endpoints: &[&str]) -> DesiredVirtualServer {
    DesiredVirtualServer {
        server: VirtualServer {
            key: VirtualServerKey {
                addr: ip(addr),
                protocol: Protocol::Udp,
                port,
            },
            scheduler: "rr".into(),
            persistence: None,
        },
        real_servers: endpoints
            .iter()
            .map(|e| RealServer {
                key: RealServerKey {
                    addr: ip(e),
                    port: 5353,
                },
                weight: 1,
            })
            .collect(),
    }
}

fn dns(endpoints: &[&str]) -> ServiceDesired {
    ServiceDesired {
        virtual_servers: vec![udp_vs("10.96.0.53", 53, endpoints)],
        bind_addrs: vec![ip("10.96.0.53")],
        ..Default::default()
    }
}

#[test]
fn a_removed_udp_endpoint_has_its_flows_deleted_and_counted_as_writes() {
    let mut reconciler = Reconciler::new(Ownership::default());
    let (mut ipvs, mut link) = (FakeKernel::new(), FakeKernel::new());
    let name = ServiceName::new("kube-system", "dns");
    reconciler.set_service(name.clone(), Some(dns(&["10.244.1.5", "10.244.2.5"])));
    block_on(reconciler.full_sync(&mut ipvs, &mut link));
    assert!(reconciler.stale_flows().is_empty());

    reconciler.set_service(name.clone(), Some(dns(&["10.244.2.5"])));
    let report = block_on(reconciler.sync_dirty(&mut ipvs, &mut link));
    assert_eq!(
        report.writes, 1,
        "one real server deleted at once (UDP does not drain)"
    );
    let stale = FlowFilter {
        protocol: Protocol::Udp,
        addr: ip("10.96.0.53"),
        port: 53,
        endpoint: ip("10.244.1.5"),
    };
    assert_eq!(reconciler.stale_flows(), &[stale]);

    let mut conntrack = FakeConntrack::default();
    conntrack.flows.insert(stale, 3);
    let mut report = SyncReport::default();
    block_on(reconciler.clear_stale_flows(&mut conntrack, &mut report));
    assert_eq!((report.conntrack_deleted, report.writes), (3, 3));
    assert_eq!(conntrack.requested, vec![stale]);
    assert!(reconciler.stale_flows().is_empty());

    // The whole service goes: its last endpoint's flows go with it.
    reconciler.set_service(name, None);
    block_on(reconciler.sync_dirty(&mut ipvs, &mut link));
    assert_eq!(
        reconciler.stale_flows(),
        &[FlowFilter {
            endpoint: ip("10.244.2.5"),
            ..stale
        }]
    );
}

#[test]
fn flows_that_could_not_be_deleted_are_tried_again() {
    let mut reconciler = Reconciler::new(Ownership::default());
    let (mut ipvs, mut link) = (FakeKernel::new(), FakeKernel::new());
    let name = ServiceName::new("kube-system", "dns");
    reconciler.set_service(name.clone(), Some(dns(&["10.244.1.5"])));
    block_on(reconciler.full_sync(&mut ipvs, &mut link));
    reconciler.set_service(name, Some(dns(&[])));
    block_on(reconciler.sync_dirty(&mut ipvs, &mut link));

    let mut conntrack = FakeConntrack {
        fail_next: Some(KernelError::Other("Operation not permitted".into())),
        ..FakeConntrack::default()
    };
    let mut report = SyncReport::default();
    block_on(reconciler.clear_stale_flows(&mut conntrack, &mut report));
    assert!(matches!(
        &report.errors[..],
        [SyncError::Conntrack { flows: 1, .. }]
    ));
    assert_eq!(reconciler.stale_flows().len(), 1, "kept for the next sync");
    let mut report = SyncReport::default();
    block_on(reconciler.clear_stale_flows(&mut conntrack, &mut report));
    assert!(report.is_clean());
    assert!(reconciler.stale_flows().is_empty());
}

#[test]
fn tcp_endpoints_leave_no_flows_to_delete() {
    let mut reconciler = Reconciler::new(Ownership::default());
    let (mut ipvs, mut link) = (FakeKernel::new(), FakeKernel::new());
    let mut tcp = dns(&["10.244.1.5"]);
    tcp.virtual_servers[0].server.key.protocol = Protocol::Tcp;
    let name = ServiceName::new("default", "web");
    reconciler.set_service(name.clone(), Some(tcp));
    block_on(reconciler.full_sync(&mut ipvs, &mut link));
    reconciler.set_service(name, None);
    block_on(reconciler.sync_dirty(&mut ipvs, &mut link));
    assert!(reconciler.stale_flows().is_empty());
}

#[test]
fn changes_are_deletes_then_adds() {
    let mut reconciler = Reconciler::new(Ownership::default());
    let mut nft = FakeNft::new();
    let old = [cluster_ip_element("10.96.0.10", 80)];
    let new = [cluster_ip_element("10.96.0.10", 8080)];
    let name = ServiceName::new("default", "web");
    reconciler.set_service(name.clone(), Some(wanting(&old)));
    sync(&mut reconciler, &mut nft, true);
    reconciler.set_service(name, Some(wanting(&new)));
    let changes = reconciler.nft.changes(false);
    assert_eq!(
        changes,
        vec![NftChange::Delete(old[0]), NftChange::Add(new[0])]
    );
}

#[test]
fn with_cleanup_off_stale_flows_do_not_pile_up() {
    let mut reconciler = Reconciler::new(Ownership::default());
    let (mut ipvs, mut link) = (FakeKernel::new(), FakeKernel::new());
    let name = ServiceName::new("kube-system", "dns");
    reconciler.set_service(name.clone(), Some(dns(&["10.244.1.5"])));
    block_on(reconciler.full_sync(&mut ipvs, &mut link));
    reconciler.set_service(name, None);
    block_on(reconciler.sync_dirty(&mut ipvs, &mut link));
    assert_eq!(reconciler.stale_flows().len(), 1);
    reconciler.forget_stale_flows();
    assert!(reconciler.stale_flows().is_empty());
}

/// A reconciler that reads the sets at least every `rounds` full syncs,
/// with service `web` wanting `web`, after three full syncs: the mirror is
/// tied to the generation. Also the sets' reads until then.
fn settled(rounds: u64, web: &[NftElement]) -> (Reconciler, FakeNft, usize) {
    let mut reconciler = Reconciler::new(Ownership::default());
    reconciler.set_verify_rounds(rounds);
    let mut nft = FakeNft::new();
    reconciler.set_service(ServiceName::new("default", "web"), Some(wanting(web)));
    for _ in 0..3 {
        sync(&mut reconciler, &mut nft, true);
    }
    let reads = nft.set_reads;
    (reconciler, nft, reads)
}

#[test]
fn an_idle_full_sync_reads_the_sets_only_when_the_generation_moved_or_the_rounds_are_up() {
    let mut reconciler = Reconciler::new(Ownership::default());
    reconciler.set_verify_rounds(4);
    let mut nft = FakeNft::new();
    let web = [cluster_ip_element("10.96.0.10", 80)];
    reconciler.set_service(ServiceName::new("default", "web"), Some(wanting(&web)));
    sync(&mut reconciler, &mut nft, true);
    assert_eq!(nft.set_reads, 1);
    // Creating the table moved the generation past the one read before
    // it: this full sync reads again, and ties the read to a generation.
    sync(&mut reconciler, &mut nft, true);
    assert_eq!(nft.set_reads, 2);

    for round in 1..4 {
        let report = sync(&mut reconciler, &mut nft, true);
        assert_eq!(report.writes, 0);
        assert_eq!(nft.set_reads, 2, "round {round} took the mirror as it was");
    }
    sync(&mut reconciler, &mut nft, true);
    assert_eq!(
        nft.set_reads, 3,
        "the fourth full sync since the read reads"
    );

    // The proxy's own transactions move the generation as it expects.
    let dns = [cluster_ip_element("10.96.0.53", 53)];
    reconciler.set_service(ServiceName::new("kube-system", "dns"), Some(wanting(&dns)));
    let report = sync(&mut reconciler, &mut nft, false);
    assert_eq!(report.nft_batches, 1);
    let report = sync(&mut reconciler, &mut nft, true);
    assert_eq!((report.writes, nft.set_reads), (0, 3));

    // Another program's transaction, in a table of its own: read again.
    nft.foreign_commit();
    sync(&mut reconciler, &mut nft, true);
    assert_eq!(nft.set_reads, 4);
    sync(&mut reconciler, &mut nft, true);
    assert_eq!(nft.set_reads, 4);
}

#[test]
fn drift_moves_the_generation_and_the_next_full_sync_repairs_it() {
    let web = [
        cluster_ip_element("10.96.0.10", 80),
        service_ip("10.96.0.10"),
    ];
    let (mut reconciler, mut nft, reads) = settled(20, &web);

    assert!(nft.remove_element(&web[0]), "deleted by hand");
    let report = sync(&mut reconciler, &mut nft, true);
    assert_eq!(nft.set_reads, reads + 1);
    assert_eq!((report.nft_batches, report.nft_elements), (1, 1));
    assert!(nft.elements().contains(&web[0]), "repaired");
}

#[test]
fn without_a_generation_or_after_a_new_ruleset_every_full_sync_reads() {
    let web = [cluster_ip_element("10.96.0.10", 80)];
    let (mut reconciler, mut nft, reads) = settled(20, &web);

    nft.set_generation_readable(false);
    sync(&mut reconciler, &mut nft, true);
    sync(&mut reconciler, &mut nft, true);
    assert_eq!(nft.set_reads, reads + 2);

    nft.set_generation_readable(true);
    sync(&mut reconciler, &mut nft, true);
    sync(&mut reconciler, &mut nft, true);
    assert_eq!(nft.set_reads, reads + 3, "tied to a generation again");

    let masquerade_all = NftRuleset {
        masquerade_all: true,
        ..NftRuleset::default()
    };
    let mut report = SyncReport::default();
    block_on(reconciler.sync_nft(&mut nft, &masquerade_all, true, &mut report));
    assert_eq!(nft.set_reads, reads + 4, "a new ruleset is made sure of");
    assert_eq!(nft.ruleset(), Some(&masquerade_all));
}
