//! Fuzzing of the nf_tables replies: a datagram split as `read_until`
//! splits it, each message read by `parse_reply` (acks, errors with their
//! extended ACK, and NfTablesMessage through netlink-packet-netfilter),
//! every message also read raw, as set elements are, and decoded into
//! elements of every set of both families,
//! and every NEWTABLE's userdata read for its fingerprint. Seeds:
//! `tests/fuzz/corpus/nftables`, captured replies and nft's requests.
//!
//! More cases: `PROPTEST_CASES=100000 cargo test --lib nftables::socket::fuzz`.

#[path = "../../../../netlink-ipvs/tests/fuzz/mutate.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "each fuzz module includes the shared engine from netlink-ipvs/tests"
)]
mod mutate;

use std::path::Path;

use netlink_packet_netfilter::nftables::TableAttribute;
use proptest::prelude::*;

use self::mutate::{load, mutated, Input};
use super::super::element;
use super::super::ruleset::fingerprint_of;
use super::*;
use crate::desired::NftSet;

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz/corpus")
            .join(name),
    )
}

fn seeds() -> Vec<Vec<u8>> {
    corpus("nftables")
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect()
}

/// Reads `datagram` as `read_until` does (its loop, which reads from the
/// socket, is not a function of its own).
fn check_datagram(datagram: &[u8]) {
    let mut at = 0;
    while at < datagram.len() {
        let Ok(buffer) = NetlinkBuffer::new_checked(&datagram[at..]) else {
            return;
        };
        let length = buffer.length() as usize;
        let bytes = &datagram[at..at + length];
        at += (length + 3) & !3;
        if let Ok(Reply::Raw(raw)) = raw_reply(bytes) {
            for family in NftFamily::ALL {
                for set in NftSet::ALL {
                    let _ = element::decode(family, set, std::slice::from_ref(&raw));
                }
            }
        }
        match parse_reply(bytes) {
            Ok(Reply::Message(NfTablesMessage::NewTable(table))) => {
                for attr in &table.attributes {
                    if let TableAttribute::UserData(userdata) = attr {
                        fingerprint_of(userdata);
                    }
                }
            }
            Ok(Reply::Error(refusal)) => {
                refusal.text();
            }
            _ => {}
        }
    }
}

#[test]
fn the_corpus_reads_without_panicking() {
    // regression-*: an error code of i32::MIN, and a set element key that
    // overruns its attribute (netlink-packet-netfilter 0.4 panics on it;
    // parse_reply turns that into an error).
    for (_, seed) in corpus("nftables") {
        check_datagram(&seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_replies_never_panic(input in mutated(seeds())) {
        let Input(datagram) = input;
        check_datagram(&datagram);
    }
}
