//! kube-ipvs0's address path against the real kernel, read back with `ip`.
//! Run by the VM harness (`--ignored --test-threads=1`, as root, with the
//! dummy module loadable); each test uses a dummy link of its own and
//! deletes it after.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use kube_ipvs_proxy::kernel::link::DummyLink;
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

/// Deletes the link however the test ends.
struct Cleanup(&'static str);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).status();
    }
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
