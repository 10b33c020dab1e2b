//! kube-ipvs0's address path, and VIPs as local routes, against the real
//! kernel, read back with `ip`.
//! Run by the VM harness (`--ignored --test-threads=1`, as root, with the
//! dummy module loadable); each test uses a dummy link of its own and
//! deletes it after.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use ipnet::IpNet;
use kube_ipvs_proxy::kernel::link::{DummyLink, VipMode};
use kube_ipvs_proxy::kernel::{AddressKernel, KernelError};

fn ip(args: &[&str]) -> String {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        output.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The IPv4 addresses `ip` shows on `link`, sorted.
fn addresses_on(link: &str) -> Vec<IpAddr> {
    let mut found: Vec<IpAddr> = ip(&["-o", "-4", "addr", "show", "dev", link])
        .lines()
        .filter_map(|line| {
            let cidr = line
                .split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)?;
            assert!(cidr.ends_with("/32"), "a host address: {line}");
            cidr.trim_end_matches("/32").parse().ok()
        })
        .collect();
    found.sort();
    found
}

fn v4(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i))
}

/// Deletes the link, and every local route of the proxy, however the test
/// ends.
struct Cleanup(&'static str);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).status();
        for family in ["-4", "-6"] {
            let _ = Command::new("ip")
                .args([family, "route", "flush", "table", "local", "proto", "75"])
                .status();
        }
    }
}

/// The VIPs `ip` shows as the proxy's local routes (table local, proto 75),
/// both families, sorted; each must be a host route through lo.
fn local_routes() -> Vec<IpAddr> {
    let mut found = Vec::new();
    for family in ["-4", "-6"] {
        for line in ip(&[family, "route", "show", "table", "local", "proto", "75"]).lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(words.first(), Some(&"local"), "a local route: {line}");
            assert!(line.contains(" dev lo "), "through lo: {line}");
            found.push(words[1].parse().unwrap_or_else(|e| panic!("{line}: {e}")));
        }
    }
    found.sort();
    found
}

/// What the kernel does with a packet to `addr`: `local` when it is
/// delivered to this host, `unreachable` when there is no route at all.
fn route_kind(addr: IpAddr) -> String {
    let output = Command::new("ip")
        .args(["route", "get", &addr.to_string()])
        .output()
        .expect("ip route get");
    if !output.status.success() {
        return "unreachable".to_owned();
    }
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    out.split_whitespace().next().unwrap_or_default().to_owned()
}

fn v6(i: u16) -> IpAddr {
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0x10, 0x97, 0, 0, 0, 0, i))
}

#[tokio::test]
#[ignore = "needs root and a kernel with dummy links: run by tests/run.sh in the VM"]
async fn many_addresses_are_added_in_batches_and_each_gets_its_answer() {
    const LINK: &str = "kip-batch0";
    let _cleanup = Cleanup(LINK);
    let mut link = DummyLink::new(LINK).expect("rtnetlink socket");
    assert_eq!(link.ensure_link().await, Ok(vec![]));
    link.add_address(v4(5)).await.expect("one address");

    // 1,200 addresses span five batches; one is held already and one is
    // asked for twice, in the middle of a batch and not at its end.
    let mut wanted: Vec<IpAddr> = (0..1200).map(v4).collect();
    wanted.insert(700, v4(600));
    let results = link.add_addresses(&wanted).await;
    assert_eq!(results.len(), wanted.len());
    let answers: Vec<(usize, &Result<(), KernelError>)> = results
        .iter()
        .enumerate()
        .filter(|(_, result)| result.is_err())
        .collect();
    assert_eq!(
        answers,
        [
            (5, &Err(KernelError::Exists)),
            (700, &Err(KernelError::Exists))
        ],
        "only the held address and the repeated one exist already"
    );
    let expected: Vec<IpAddr> = (0..1200).map(v4).collect();
    assert_eq!(addresses_on(LINK), expected);
}

#[tokio::test]
#[ignore = "needs root and a kernel with dummy links: run by tests/run.sh in the VM"]
async fn a_batch_that_fails_names_the_link_and_each_address() {
    const LINK: &str = "kip-batch1";
    let _cleanup = Cleanup(LINK);
    let mut link = DummyLink::new(LINK).expect("rtnetlink socket");
    link.ensure_link().await.expect("link created");
    // The link goes behind the proxy's back: every addition fails, the ones
    // sent without an ACK request as much as the last one.
    ip(&["link", "del", LINK]);
    let wanted = [v4(1), v4(2), v4(3)];
    let results = link.add_addresses(&wanted).await;
    assert_eq!(results.len(), 3);
    for (addr, result) in wanted.iter().zip(&results) {
        match result {
            Err(KernelError::Other(message)) => {
                assert!(
                    message.contains(&format!("binding {addr}/32 on {LINK}")),
                    "{message}"
                );
            }
            other => panic!("{addr}: {other:?}, not an error naming it"),
        }
    }
}

#[tokio::test]
#[ignore = "needs root and a kernel with dummy links: run by tests/run.sh in the VM"]
async fn vips_as_local_routes_are_bound_read_back_and_unbound() {
    const LINK: &str = "kip-route0";
    let _cleanup = Cleanup(LINK);
    let mut link = DummyLink::new(LINK)
        .expect("rtnetlink sockets")
        .with_mode(VipMode::Route, &[]);
    assert_eq!(link.ensure_link().await, Ok(vec![]));

    // 600 IPv4 VIPs span three batches, with two IPv6 ones in the middle;
    // one is asked for twice.
    let mut wanted: Vec<IpAddr> = (0..600).map(v4).collect();
    wanted.insert(300, v6(1));
    wanted.insert(301, v6(2));
    wanted.insert(400, v4(10));
    let results = link.add_addresses(&wanted).await;
    let failed: Vec<(usize, &Result<(), KernelError>)> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .collect();
    assert_eq!(failed, [(400, &Err(KernelError::Exists))]);
    let mut expected: Vec<IpAddr> = (0..600).map(v4).chain([v6(1), v6(2)]).collect();
    expected.sort();
    assert_eq!(local_routes(), expected);
    assert_eq!(
        addresses_on(LINK),
        Vec::<IpAddr>::new(),
        "no address on {LINK}"
    );
    assert_eq!(route_kind(v4(7)), "local");
    assert_eq!(route_kind(v6(2)), "local");
    assert_eq!(link.ensure_link().await, Ok(expected.clone()));

    assert_eq!(link.del_address(v4(7)).await, Ok(()));
    assert_eq!(link.del_address(v6(2)).await, Ok(()));
    assert_eq!(link.del_address(v4(7)).await, Err(KernelError::NotFound));
    assert_ne!(route_kind(v4(7)), "local");
    expected.retain(|a| *a != v4(7) && *a != v6(2));
    assert_eq!(local_routes(), expected);
    assert_eq!(link.add_address(v4(7)).await, Ok(()));
    assert_eq!(link.add_address(v4(7)).await, Err(KernelError::Exists));
}

#[tokio::test]
#[ignore = "needs root and a kernel with dummy links: run by tests/run.sh in the VM"]
async fn switching_modes_moves_every_vip_both_ways_and_leaves_excluded_ones() {
    const LINK: &str = "kip-switch0";
    let _cleanup = Cleanup(LINK);
    let excluded: IpAddr = "10.96.200.1".parse().unwrap();
    let exclude: Vec<IpNet> = vec!["10.96.200.0/24".parse().unwrap()];
    let vips: Vec<IpAddr> = (0..300).map(v4).collect();

    let mut addresses = DummyLink::new(LINK)
        .expect("rtnetlink sockets")
        .with_mode(VipMode::Address, &exclude);
    addresses.ensure_link().await.expect("link created");
    let all: Vec<IpAddr> = vips.iter().copied().chain([excluded]).collect();
    assert!(addresses
        .add_addresses(&all)
        .await
        .iter()
        .all(Result::is_ok));
    let mut everything = all.clone();
    everything.sort();
    assert_eq!(addresses_on(LINK), everything);

    // To routes: all held, every address gone but the excluded one.
    let mut routes = DummyLink::new(LINK)
        .expect("rtnetlink sockets")
        .with_mode(VipMode::Route, &exclude);
    assert_eq!(routes.ensure_link().await, Ok(everything.clone()));
    assert_eq!(addresses_on(LINK), vec![excluded]);
    assert_eq!(local_routes(), vips);
    for vip in &vips {
        assert_eq!(route_kind(*vip), "local", "{vip}");
    }
    // Read again, nothing moves.
    assert_eq!(routes.ensure_link().await, Ok(everything.clone()));
    assert_eq!(local_routes(), vips);

    // And back: addresses again, no route left.
    assert_eq!(addresses.ensure_link().await, Ok(everything.clone()));
    assert_eq!(addresses_on(LINK), everything);
    assert_eq!(local_routes(), Vec::<IpAddr>::new());
    for vip in &vips {
        assert_eq!(route_kind(*vip), "local", "{vip}");
    }
}
