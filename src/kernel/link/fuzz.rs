//! Fuzzing of the rtnetlink replies the proxy decodes: the answers to its
//! batched writes (`answer_of`), and the RTM_NEWADDR, RTM_NEWROUTE and
//! RTM_NEWLINK messages of its queries (netlink-packet-route, then
//! `address_of` and `vip_of_route`).
//! Seeds: `tests/fuzz/corpus/rtnetlink`, captured in a network namespace.
//!
//! More cases: `PROPTEST_CASES=100000 cargo test --lib kernel::link::fuzz`.

#[path = "../../../netlink-ipvs/tests/fuzz/mutate.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "each fuzz module includes the shared engine from netlink-ipvs/tests"
)]
mod mutate;

use std::path::Path;

use proptest::prelude::*;

use self::mutate::{load, mutated, Input};
use super::*;

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    load(&dir.join(name))
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect()
}

fn seeds() -> Vec<Vec<u8>> {
    corpus("rtnetlink")
}

/// Reads `datagram` as `add_batched` does (its loop, which reads from the
/// socket, is not a function of its own): each message to `answer_of`,
/// then decoded as a query's reply would be.
fn check_datagram(datagram: &[u8]) {
    let addrs: [IpAddr; 2] = ["10.96.0.10".parse().unwrap(), "fd00::10".parse().unwrap()];
    let mut at = 0;
    while let Ok(buffer) = NetlinkBuffer::new_checked(&datagram[at..]) {
        let length = (buffer.length() as usize).max(16);
        let seq = buffer.sequence_number();
        let bytes = &datagram[at..(at + length).min(datagram.len())];
        at = (at + ((length + 3) & !3)).min(datagram.len());
        let addr = addrs[seq as usize % 2];
        let _ = answer_of(bytes, || format!("binding {addr}"));
        if let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(address)) =
                &message.payload
            {
                address_of(address);
            }
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) =
                &message.payload
            {
                vip_of_route(route);
            }
        }
    }
}

#[test]
fn the_corpus_reads_without_panicking() {
    for seed in seeds() {
        check_datagram(&seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_replies_never_panic(input in mutated(seeds())) {
        let Input(datagram) = input;
        check_datagram(&datagram);
    }
}
