//! Fuzzing of the replies `detect` reads: a datagram split into messages,
//! each read as a chain, a rule and an ipset answer, whatever its type.
//! Seeds are built by the tests' encoders (iptables-nft's rule shape, a
//! chain, an ipset list answer, an error).
//!
//! More cases: `PROPTEST_CASES=100000 cargo test --lib upstream::fuzz`.

#[path = "../../../netlink-ipvs/tests/fuzz/mutate.rs"]
#[allow(
    clippy::duplicate_mod,
    dead_code,
    reason = "each fuzz module includes the shared engine from netlink-ipvs/tests; \
              this one builds its seeds instead of loading a corpus"
)]
mod mutate;

use proptest::prelude::*;

use self::mutate::{mutated, Input};
use super::nfnl::{split, Reply, Request};
use super::tests::{chain_attributes, ipset_attributes, rule_attributes};
use super::*;

fn message(kind: u16, attributes: Vec<u8>) -> Vec<u8> {
    Request {
        kind,
        family: 2,
        attributes,
    }
    .encode(2, 1)
}

fn seeds() -> Vec<Vec<u8>> {
    let mut error = Vec::new();
    error.extend_from_slice(&36u32.to_ne_bytes());
    error.extend_from_slice(&2u16.to_ne_bytes());
    error.extend_from_slice(&0u16.to_ne_bytes());
    error.extend_from_slice(&1u32.to_ne_bytes());
    error.extend_from_slice(&0u32.to_ne_bytes());
    error.extend_from_slice(&(-4100i32).to_ne_bytes());
    error.extend_from_slice(&[0; 16]);
    let mut dump = message(0x0a04, chain_attributes("nat", "KUBE-SERVICES"));
    dump.extend(message(
        0x0a07,
        rule_attributes("nat", "OUTPUT", 3, "KUBE-SERVICES"),
    ));
    vec![
        dump,
        message(
            0x0a07,
            rule_attributes("filter", "INPUT", 9, "KUBE-IPVS-FILTER"),
        ),
        message(0x0607, ipset_attributes("KUBE-6-CLUSTER-IP")),
        error,
    ]
}

fn check_datagram(datagram: &[u8]) {
    let Ok(replies) = split(datagram) else {
        return;
    };
    for (_, reply) in replies {
        match reply {
            Reply::Message { attributes, .. } => {
                if let Some((table, chain)) = parse_chain(&attributes) {
                    is_upstream_chain(table, chain);
                }
                if let Some(rule) = parse_rule(&attributes) {
                    for target in rule.targets {
                        is_upstream_chain(rule.table, target);
                    }
                }
                if let Some(name) = parse_ipset_name(&attributes) {
                    is_upstream_ipset(name);
                }
            }
            Reply::Error(errno) => {
                nfnl::errno_text(errno);
            }
            Reply::Ack | Reply::Done => {}
        }
    }
}

#[test]
fn the_seeds_read_as_built() {
    for seed in seeds() {
        let replies = split(&seed).expect("a seed splits");
        assert!(!replies.is_empty());
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
