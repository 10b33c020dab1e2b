//! Against the real kernel, cross-checked with ipvsadm in both directions.
//! Run by the VM harness (`--ignored --test-threads=1`, as root, ip_vs
//! loadable). Every test starts from a flushed table and flushes after.

use std::net::IpAddr;
use std::process::Command;

use netlink_ipvs::{
    new_connection, AddressFamily, Daemon, DaemonState, Destination, ForwardingMethod, Handle,
    Operation, Protocol, Scheduler, Service, ServiceAddress, ServiceFlags, Timeouts, Tunnel,
    TunnelFlags, TunnelType,
};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("{program} {args:?}: {err}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `ipvsadm -Sn`, one rule per line, sorted.
fn ipvsadm_save() -> Vec<String> {
    let mut lines: Vec<String> = run("ipvsadm", &["-Sn"], None)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

fn sorted(lines: &[&str]) -> Vec<String> {
    let mut lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    lines.sort();
    lines
}

/// A connection on a flushed table.
async fn connect() -> Handle {
    run("modprobe", &["ip_vs"], None);
    let (connection, handle) = new_connection().await.expect("IPVS family");
    tokio::spawn(connection);
    handle.flush().execute().await.expect("flush");
    handle
}

async fn finish(handle: &Handle) {
    handle.flush().execute().await.expect("flush");
}

fn tcp(addr: &str, port: u16, scheduler: Scheduler) -> Service {
    Service::new(ip(addr), Protocol::Tcp, port, scheduler)
}

/// The services and real servers of the ipvsadm cross-checks, with the
/// `ipvsadm -Sn` line each one produces.
fn table() -> (Vec<Operation>, Vec<&'static str>) {
    let web = tcp("10.0.0.1", 80, Scheduler::RoundRobin);
    let mut v6 = tcp("2001:db8::1", 443, Scheduler::WeightedLeastConnection).persistent(300);
    v6.netmask = 64;
    let mut dns = Service::new(
        ip("10.0.0.2"),
        Protocol::Udp,
        53,
        Scheduler::WeightedRoundRobin,
    )
    .persistent(60);
    dns.netmask = 0xffff_ff00;
    dns.flags |= ServiceFlags::ONEPACKET;
    let mut sctp = Service::new(ip("10.0.0.3"), Protocol::Sctp, 9000, Scheduler::Maglev);
    sctp.flags = ServiceFlags::MH_PORT;
    let mut mark = Service::fwmark(AddressFamily::Inet, 42, Scheduler::SourceHashing);
    mark.flags = ServiceFlags::SH_FALLBACK | ServiceFlags::SH_PORT;
    let mark6 = Service::fwmark(AddressFamily::Inet6, 43, Scheduler::LeastConnection);

    let mut limited = Destination::new(ip("192.168.1.10"), 8080).weight(5);
    limited.upper_threshold = 100;
    limited.lower_threshold = 10;
    let routed =
        Destination::new(ip("2001:db8::10"), 443).forwarding(ForwardingMethod::DirectRoute);
    let tunnelled = Destination {
        tunnel: Some(Tunnel {
            tunnel_type: TunnelType::Gue,
            port: 6080,
            flags: TunnelFlags::CSUM,
        }),
        ..Destination::new(ip("192.168.1.12"), 0).forwarding(ForwardingMethod::Tunnel)
    };
    let drained = Destination::new(ip("192.168.1.13"), 53).weight(0);

    let operations = vec![
        Operation::AddService(web.clone()),
        Operation::AddService(v6.clone()),
        Operation::AddService(dns.clone()),
        Operation::AddService(sctp),
        Operation::AddService(mark.clone()),
        Operation::AddService(mark6),
        Operation::AddDestination(web.address.clone(), limited),
        Operation::AddDestination(v6.address.clone(), routed),
        Operation::AddDestination(mark.address.clone(), tunnelled),
        Operation::AddDestination(dns.address.clone(), drained),
    ];
    let lines = vec![
        "-A -t 10.0.0.1:80 -s rr",
        "-a -t 10.0.0.1:80 -r 192.168.1.10:8080 -m -w 5 -x 100 -y 10",
        "-A -t [2001:db8::1]:443 -s wlc -p 300 -M 64",
        "-a -t [2001:db8::1]:443 -r [2001:db8::10]:443 -g -w 1",
        "-A -u 10.0.0.2:53 -s wrr -p 60 -M 255.255.255.0 -o",
        "-a -u 10.0.0.2:53 -r 192.168.1.13:53 -m -w 0",
        "-A --sctp-service 10.0.0.3:9000 -s mh -b mh-port",
        "-A -f 42 -s sh -b sh-fallback,sh-port",
        "-a -f 42 -r 192.168.1.12:0 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum",
        "-A -f 43 -6 -s lc",
    ];
    (operations, lines)
}

#[tokio::test]
#[ignore = "needs root and the ip_vs module: run by tests/vm"]
async fn what_the_crate_writes_ipvsadm_reads_back_exactly() {
    let handle = connect().await;
    let (operations, lines) = table();
    let results = handle.batch(operations).execute().await;
    for result in &results {
        result.as_ref().expect("every add succeeds");
    }
    // `-Sn` leaves thresholds out; `--thresholds` lists them.
    let saved: Vec<&str> = lines
        .iter()
        .map(|l| l.trim_end_matches(" -x 100 -y 10"))
        .collect();
    assert_eq!(ipvsadm_save(), sorted(&saved));
    assert_eq!(thresholds("192.168.1.10:8080"), ["100", "10"]);
    finish(&handle).await;
}

/// Uthreshold and Lthreshold of a real server, as `ipvsadm -Ln
/// --thresholds` lists them.
fn thresholds(real_server: &str) -> Vec<String> {
    let listing = run("ipvsadm", &["-Ln", "--thresholds"], None);
    let line = listing
        .lines()
        .find(|line| line.trim_start().starts_with("->") && line.contains(real_server))
        .unwrap_or_else(|| panic!("{real_server} not listed:\n{listing}"));
    line.split_whitespace()
        .skip(2)
        .take(2)
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
#[ignore = "needs root and the ip_vs module: run by tests/vm"]
async fn what_ipvsadm_writes_the_crate_dumps_exactly() {
    let handle = connect().await;
    let (operations, lines) = table();
    run("ipvsadm", &["-R"], Some(&(lines.join("\n") + "\n")));

    let mut expected_services = Vec::new();
    let mut expected_destinations: Vec<(ServiceAddress, Destination)> = Vec::new();
    for op in operations {
        match op {
            Operation::AddService(service) => expected_services.push(service),
            Operation::AddDestination(address, dest) => expected_destinations.push((address, dest)),
            other => panic!("unexpected {other:?}"),
        }
    }
    let table = handle.dump().execute().await.expect("dump");
    assert_eq!(table.len(), expected_services.len());
    for expected in &expected_services {
        let (service, destinations) = table
            .iter()
            .find(|(service, _)| service.address == expected.address)
            .unwrap_or_else(|| panic!("{} missing from the dump", expected.address));
        // The kernel adds HASHED to every service it holds and reports counters.
        assert_eq!(
            service.flags,
            expected.flags | ServiceFlags::HASHED,
            "{}",
            expected.address
        );
        assert_eq!(
            Service {
                flags: expected.flags,
                stats: None,
                stats64: None,
                ..service.clone()
            },
            *expected
        );
        let wanted: Vec<Destination> = expected_destinations
            .iter()
            .filter(|(address, _)| *address == expected.address)
            .map(|(_, dest)| dest.clone())
            .collect();
        let got: Vec<Destination> = destinations
            .iter()
            .map(|dest| Destination {
                stats: None,
                stats64: None,
                ..dest.clone()
            })
            .collect();
        // Direct routing keeps the service's port, as `ipvsadm -Sn` shows.
        let wanted: Vec<Destination> = wanted
            .into_iter()
            .map(|dest| match (&expected.address, dest.forwarding) {
                (ServiceAddress::Inet { port, .. }, ForwardingMethod::DirectRoute) => Destination {
                    port: *port,
                    ..dest
                },
                _ => dest,
            })
            .collect();
        assert_eq!(got, wanted, "{}", expected.address);
        assert!(destinations
            .iter()
            .all(|d| d.stats.is_some() && d.stats64.is_some()));
        assert!(service.stats.is_some() && service.stats64.is_some());
    }
    finish(&handle).await;
}

/// The scheduler modules the running kernel ships.
fn shipped_schedulers() -> Vec<Scheduler> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let dir = format!("/lib/modules/{}/kernel/net/netfilter/ipvs", release.trim());
    let mut schedulers: Vec<Scheduler> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{dir}: {err}"))
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let module = name.strip_prefix("ip_vs_")?.split('.').next()?.to_owned();
            let scheduler = Scheduler::from(module.as_str());
            (!matches!(scheduler, Scheduler::Other(_))).then_some(scheduler)
        })
        .collect();
    schedulers.sort();
    schedulers
}

#[tokio::test]
#[ignore = "needs root and the ip_vs module: run by tests/vm"]
async fn every_shipped_scheduler_is_accepted_and_named_back() {
    let handle = connect().await;
    let schedulers = shipped_schedulers();
    assert!(schedulers.len() >= 13, "{schedulers:?}");
    let services: Vec<Service> = schedulers
        .iter()
        .enumerate()
        .map(|(i, scheduler)| tcp("10.1.0.1", 1000 + i as u16, scheduler.clone()))
        .collect();
    let results = handle
        .batch(
            services
                .iter()
                .cloned()
                .map(Operation::AddService)
                .collect(),
        )
        .execute()
        .await;
    for (service, result) in services.iter().zip(&results) {
        assert!(result.is_ok(), "{}: {result:?}", service.scheduler);
    }
    let expected: Vec<String> = services
        .iter()
        .map(|s| match &s.address {
            ServiceAddress::Inet { port, .. } => {
                format!("-A -t 10.1.0.1:{port} -s {}", s.scheduler)
            }
            _ => unreachable!(),
        })
        .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(ipvsadm_save(), expected);
    let dumped = handle.service().get().execute().await.unwrap();
    let mut names: Vec<Scheduler> = dumped.into_iter().map(|s| s.scheduler).collect();
    names.sort();
    assert_eq!(names, schedulers);
    finish(&handle).await;
}

#[tokio::test]
#[ignore = "needs root and the ip_vs module: run by tests/vm"]
async fn edits_change_what_ipvsadm_shows() {
    let handle = connect().await;
    let service = tcp("10.0.0.1", 80, Scheduler::RoundRobin);
    let dest = Destination::new(ip("192.168.1.10"), 8080);
    handle
        .service()
        .add(service.clone())
        .execute()
        .await
        .unwrap();
    handle
        .destination()
        .add(&service.address, dest.clone())
        .execute()
        .await
        .unwrap();

    let mut edited = Service {
        scheduler: Scheduler::LeastConnection,
        ..service.clone()
    }
    .persistent(120);
    edited.netmask = 0xffff_0000;
    handle
        .service()
        .set(edited.clone())
        .execute()
        .await
        .unwrap();
    let mut heavier = dest.clone().weight(9);
    heavier.upper_threshold = 50;
    handle
        .destination()
        .set(&service.address, heavier)
        .execute()
        .await
        .unwrap();
    assert_eq!(
        ipvsadm_save(),
        sorted(&[
            "-A -t 10.0.0.1:80 -s lc -p 120 -M 255.255.0.0",
            "-a -t 10.0.0.1:80 -r 192.168.1.10:8080 -m -w 9",
        ])
    );
    assert_eq!(thresholds("192.168.1.10:8080"), ["50", "0"]);

    handle
        .destination()
        .del(&service.address, dest.addr, dest.port)
        .execute()
        .await
        .unwrap();
    assert!(handle
        .destination()
        .get(&service.address)
        .execute()
        .await
        .unwrap()
        .is_empty());
    handle
        .service()
        .del(service.address.clone())
        .execute()
        .await
        .unwrap();
    assert!(ipvsadm_save().is_empty());
    finish(&handle).await;
}

#[tokio::test]
#[ignore = "needs root and the ip_vs module: run by tests/vm"]
async fn updates_keep_what_they_do_not_change() {
    let handle = connect().await;
    let service = tcp("10.0.0.1", 80, Scheduler::RoundRobin).persistent(300);
    let dest = Destination::new(ip("192.168.1.10"), 8080).forwarding(ForwardingMethod::DirectRoute);
    handle
        .service()
        .add(service.clone())
        .execute()
        .await
        .unwrap();
    handle
        .destination()
        .add(&service.address, dest)
        .execute()
        .await
        .unwrap();

    let services = handle.service().get().execute().await.unwrap();
    let [listed] = services.as_slice() else {
        panic!("expected one service, got {services:?}");
    };
    handle
        .service()
        .update(listed)
        .scheduler(Scheduler::WeightedLeastConnection)
        .execute()
        .await
        .unwrap();
    let dests = handle
        .destination()
        .get(&service.address)
        .execute()
        .await
        .unwrap();
    let [listed_dest] = dests.as_slice() else {
        panic!("expected one destination, got {dests:?}");
    };
    handle
        .destination()
        .update(&service.address, listed_dest)
        .weight(5)
        .execute()
        .await
        .unwrap();
    assert_eq!(
        ipvsadm_save(),
        sorted(&[
            "-A -t 10.0.0.1:80 -s wlc -p 300",
            "-a -t 10.0.0.1:80 -r 192.168.1.10:8080 -g -w 5",
        ])
    );
    finish(&handle).await;
}

#[tokio::test]
#[ignore = "needs root and the ip_vs module: run by tests/vm"]
async fn timeouts_set_and_get_agree_with_ipvsadm() {
    let handle = connect().await;
    let before = handle.config().get().execute().await.unwrap();
    let wanted = Timeouts {
        tcp: 901,
        tcp_fin: 121,
        udp: 301,
    };
    handle.config().set(wanted).execute().await.unwrap();
    assert_eq!(handle.config().get().execute().await.unwrap(), wanted);
    assert_eq!(
        run("ipvsadm", &["-L", "--timeout"], None).trim(),
        "Timeout (tcp tcpfin udp): 901 121 301"
    );
    run("ipvsadm", &["--set", "902", "122", "302"], None);
    assert_eq!(
        handle.config().get().execute().await.unwrap(),
        Timeouts {
            tcp: 902,
            tcp_fin: 122,
            udp: 302
        }
    );
    handle.config().set(before).execute().await.unwrap();
    finish(&handle).await;
}

#[tokio::test]
#[ignore = "needs root and the ip_vs module: run by tests/vm"]
async fn info_matches_ipvsadm_banner() {
    let handle = connect().await;
    let info = handle.info().execute().await.unwrap();
    let banner = run("ipvsadm", &["-Ln"], None);
    let first = banner.lines().next().unwrap();
    assert_eq!(
        first,
        format!(
            "IP Virtual Server version {} (size={})",
            info.version_string(),
            info.conn_tab_size
        )
    );
    finish(&handle).await;
}

#[tokio::test]
#[ignore = "needs root and the ip_vs module: run by tests/vm"]
async fn zero_and_flush() {
    let handle = connect().await;
    let service = tcp("10.0.0.1", 80, Scheduler::RoundRobin);
    handle
        .service()
        .add(service.clone())
        .execute()
        .await
        .unwrap();
    handle.zero(None).execute().await.unwrap();
    handle
        .zero(Some(service.address.clone()))
        .execute()
        .await
        .unwrap();
    let missing = tcp("10.9.9.9", 80, Scheduler::RoundRobin).address;
    let err = handle.zero(Some(missing)).execute().await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let stats = handle.service().get().execute().await.unwrap()[0]
        .stats64
        .unwrap();
    assert_eq!(stats.conns, 0);
    handle.flush().execute().await.unwrap();
    assert!(handle.service().get().execute().await.unwrap().is_empty());
    assert!(ipvsadm_save().is_empty());
}

#[tokio::test]
#[ignore = "needs root and the ip_vs module: run by tests/vm"]
async fn kernel_errors_are_classified() {
    let handle = connect().await;
    let service = tcp("10.0.0.1", 80, Scheduler::RoundRobin);
    handle
        .service()
        .add(service.clone())
        .execute()
        .await
        .unwrap();

    let duplicate = handle
        .service()
        .add(service.clone())
        .execute()
        .await
        .unwrap_err();
    assert!(duplicate.is_exists(), "{duplicate}");
    assert!(
        duplicate.to_string().contains("TCP 10.0.0.1:80"),
        "{duplicate}"
    );

    let gone = tcp("10.9.9.9", 80, Scheduler::RoundRobin).address;
    let missing_service = handle
        .service()
        .del(gone.clone())
        .execute()
        .await
        .unwrap_err();
    assert_eq!(missing_service.errno(), Some(libc::ESRCH));
    assert!(missing_service.is_not_found());

    let missing_dest = handle
        .destination()
        .del(&service.address, ip("192.168.1.99"), 80)
        .execute()
        .await
        .unwrap_err();
    assert_eq!(missing_dest.errno(), Some(libc::ENOENT));
    assert!(missing_dest.is_not_found());

    // The kernel ends a dump of a missing service's destinations without error.
    let dests_of_missing = handle.destination().get(&gone).execute().await.unwrap();
    assert!(dests_of_missing.is_empty());

    let missing_dest_edit = handle
        .destination()
        .set(&service.address, Destination::new(ip("192.168.1.99"), 80))
        .execute()
        .await
        .unwrap_err();
    assert_eq!(missing_dest_edit.errno(), Some(libc::ENOENT));
    assert!(missing_dest_edit.is_not_found(), "{missing_dest_edit}");

    // ENOENT again, but an unknown scheduler is not "already gone".
    let unknown = tcp("10.0.0.2", 80, Scheduler::Other("nosuch".into()));
    let unknown_scheduler = handle.service().add(unknown).execute().await.unwrap_err();
    assert_eq!(
        unknown_scheduler.errno(),
        Some(libc::ENOENT),
        "{unknown_scheduler}"
    );
    assert!(
        unknown_scheduler.is_unknown_scheduler(),
        "{unknown_scheduler}"
    );
    assert!(!unknown_scheduler.is_not_found(), "{unknown_scheduler}");

    let misspelled = Service {
        scheduler: Scheduler::Other("wrrr".into()),
        ..service.clone()
    };
    let unknown_on_edit = handle
        .service()
        .set(misspelled)
        .execute()
        .await
        .unwrap_err();
    assert!(unknown_on_edit.is_unknown_scheduler(), "{unknown_on_edit}");
    assert!(!unknown_on_edit.is_not_found(), "{unknown_on_edit}");

    let unknown_pe = Service {
        pe_name: Some("nosuch".into()),
        ..tcp("10.0.0.3", 80, Scheduler::RoundRobin).persistent(60)
    };
    let unknown_engine = handle
        .service()
        .add(unknown_pe)
        .execute()
        .await
        .unwrap_err();
    assert!(unknown_engine.is_unknown_scheduler(), "{unknown_engine}");
    assert!(!unknown_engine.is_not_found(), "{unknown_engine}");

    let mut bad_mask = tcp("2001:db8::5", 80, Scheduler::RoundRobin).persistent(10);
    bad_mask.netmask = 129;
    let invalid = handle.service().add(bad_mask).execute().await.unwrap_err();
    assert!(invalid.is_invalid(), "{invalid}");
    finish(&handle).await;
}

#[tokio::test]
#[ignore = "needs root and the ip_vs module: run by tests/vm"]
async fn a_failing_operation_in_a_batch_fails_alone() {
    let handle = connect().await;
    let a = tcp("10.0.0.1", 80, Scheduler::RoundRobin);
    let b = tcp("10.0.0.2", 80, Scheduler::RoundRobin);
    let c = tcp("10.0.0.3", 80, Scheduler::RoundRobin);
    let results = handle
        .batch(vec![
            Operation::AddService(a.clone()),
            Operation::AddService(b.clone()),
            Operation::AddService(a.clone()),
            Operation::AddService(c.clone()),
            Operation::DelService(tcp("10.9.9.9", 80, Scheduler::RoundRobin).address),
            Operation::AddDestination(c.address.clone(), Destination::new(ip("192.168.0.1"), 80)),
        ])
        .execute()
        .await;
    let verdicts: Vec<&str> = results
        .iter()
        .map(|r| match r {
            Ok(()) => "ok",
            Err(e) if e.is_exists() => "exists",
            Err(e) if e.is_not_found() => "not found",
            Err(_) => "other",
        })
        .collect();
    assert_eq!(verdicts, ["ok", "ok", "exists", "ok", "not found", "ok"]);
    assert_eq!(
        ipvsadm_save(),
        sorted(&[
            "-A -t 10.0.0.1:80 -s rr",
            "-A -t 10.0.0.2:80 -s rr",
            "-A -t 10.0.0.3:80 -s rr",
            "-a -t 10.0.0.3:80 -r 192.168.0.1:80 -m -w 1",
        ])
    );
    finish(&handle).await;
}

#[tokio::test]
#[ignore = "needs root and the ip_vs module: run by tests/vm"]
async fn ten_thousand_services_in_few_sends() {
    const COUNT: u16 = 10_000;
    let handle = connect().await;
    let services: Vec<Service> = (0..COUNT)
        .map(|i| {
            let addr = IpAddr::from([10, 2, (i / 250) as u8, (i % 250 + 1) as u8]);
            Service::new(addr, Protocol::Tcp, 80, Scheduler::RoundRobin)
        })
        .collect();
    let mut operations: Vec<Operation> = services
        .iter()
        .cloned()
        .map(Operation::AddService)
        .collect();
    operations.extend(services.iter().map(|s| {
        Operation::AddDestination(s.address.clone(), Destination::new(ip("192.168.0.1"), 8080))
    }));

    let before = handle.stats();
    let results = handle.batch(operations).execute().await;
    let after = handle.stats();
    assert_eq!(results.len(), 2 * COUNT as usize);
    assert!(results.iter().all(Result::is_ok));
    let sends = after.sends - before.sends;
    assert_eq!(
        after.messages_sent - before.messages_sent,
        2 * u64::from(COUNT)
    );
    assert!(
        sends <= 200,
        "{} operations took {sends} sendmsg calls",
        2 * COUNT
    );
    // Only barriers are acknowledged: one reply per send, not per operation.
    assert_eq!(after.messages_received - before.messages_received, sends);

    let table = handle.dump().execute().await.unwrap();
    assert_eq!(table.len(), COUNT as usize);
    assert!(table.iter().all(|(_, dests)| dests.len() == 1));
    let listed = run("ipvsadm", &["-Sn"], None);
    assert_eq!(
        listed.lines().filter(|l| l.starts_with("-A ")).count(),
        COUNT as usize
    );

    let results = handle
        .batch(
            services
                .iter()
                .map(|s| Operation::DelService(s.address.clone()))
                .collect(),
        )
        .execute()
        .await;
    assert!(results.iter().all(Result::is_ok));
    assert!(handle.service().get().execute().await.unwrap().is_empty());
    finish(&handle).await;
}

#[tokio::test]
#[ignore = "needs root and the ip_vs module: run by tests/vm"]
async fn sync_daemon_start_list_stop() {
    let handle = connect().await;
    run("ip", &["link", "set", "lo", "up"], None);
    handle
        .daemon()
        .add(Daemon::new(DaemonState::Master, "lo", 7))
        .execute()
        .await
        .unwrap();
    let daemons = handle.daemon().get().execute().await.unwrap();
    assert_eq!(daemons.len(), 1);
    assert_eq!(daemons[0].state, DaemonState::Master);
    assert_eq!(daemons[0].mcast_ifn, "lo");
    assert_eq!(daemons[0].sync_id, 7);
    let listed = run("ipvsadm", &["-L", "--daemon"], None);
    assert!(
        listed.contains("master sync daemon (mcast=lo, syncid=7"),
        "{listed}"
    );
    handle
        .daemon()
        .del(DaemonState::Master)
        .execute()
        .await
        .unwrap();
    assert!(handle.daemon().get().execute().await.unwrap().is_empty());
    finish(&handle).await;
}
