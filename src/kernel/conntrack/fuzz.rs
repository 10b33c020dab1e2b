//! Fuzzing of the ctnetlink replies: a datagram split into messages
//! (`message::messages`), each flow read by `parse_flow`, each error or end
//! of dump by `errno`. Seeds: `tests/fuzz/corpus/conntrack`.
//!
//! More cases: `PROPTEST_CASES=100000 cargo test --lib conntrack::fuzz`.

#[path = "../../../netlink-ipvs/tests/fuzz/mutate.rs"]
#[allow(
    clippy::duplicate_mod,
    reason = "each fuzz module includes the shared engine from netlink-ipvs/tests"
)]
mod mutate;

use std::path::Path;

use proptest::prelude::*;

use self::mutate::{load, mutated, Input};
use super::message::{messages, parse_flow};

fn seeds() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/conntrack");
    load(&dir).into_iter().map(|(_, bytes)| bytes).collect()
}

fn check_datagram(datagram: &[u8]) {
    for message in messages(datagram) {
        let Ok(message) = message else {
            return;
        };
        if message.is_flow() {
            if let Ok(flow) = parse_flow(message.payload) {
                let _ = format!("{flow:?}");
            }
        }
        if message.is_error() || message.is_done() {
            let _ = message.errno();
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
