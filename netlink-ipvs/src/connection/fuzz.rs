//! Fuzzing of the connection's reading of replies: the demultiplexing of a
//! received datagram into netlink messages (`State::on_datagram`) and the
//! extended ACKs of errors (`extack_message`). Seeds are captured replies
//! with sequence numbers rewritten to the requests in flight
//! (`tests/fuzz/corpus/datagrams`), and the captured messages of
//! `tests/fuzz/corpus/messages`.
//!
//! More cases: `PROPTEST_CASES=100000 cargo test -p netlink-ipvs --lib fuzz`.

#[path = "../../tests/fuzz/mutate.rs"]
mod mutate;

use std::path::Path;

use proptest::prelude::*;

use self::mutate::{load, mutated, Input};
use super::*;
use crate::message::IpvsAttr;

const FAMILY: u16 = 0x20;

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    load(&dir.join(name)).into_iter().map(|(_, b)| b).collect()
}

fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = corpus("datagrams");
    seeds.extend(corpus("messages"));
    seeds
}

fn request(cmd: IpvsCmd) -> Vec<u8> {
    serialize(
        FAMILY,
        &IpvsMessage::new(cmd, vec![IpvsAttr::TimeoutTcp(1)]),
    )
}

/// Feeds `datagram` to a connection with a batch of two requests (sequence
/// 1 and 2), a get (3) and a dump (4) in flight, then fails what is left:
/// every job must have been answered once, the batch with both results.
fn check_datagram(datagram: &[u8]) -> Result<(), TestCaseError> {
    let mut state = State::new(FAMILY, 4096, Arc::new(Counters::default()));
    let (batch, mut batch_results) = oneshot::channel();
    state.enqueue(Job::Batch {
        messages: vec![request(IpvsCmd::NewService), request(IpvsCmd::NewDest)],
        reply: batch,
    });
    let (get, mut get_result) = oneshot::channel();
    state.enqueue(Job::Query {
        message: request(IpvsCmd::GetInfo),
        dump: false,
        reply: get,
    });
    let (dump, mut dump_result) = oneshot::channel();
    state.enqueue(Job::Query {
        message: request(IpvsCmd::GetService),
        dump: true,
        reply: dump,
    });
    state.fill_send_buffer();
    prop_assert_eq!(state.pending.len(), 4);

    state.on_datagram(datagram);
    count_messages(datagram);
    state.fail_everything(|| Failure::Closed);

    prop_assert_eq!(batch_results.try_recv().map(|r| r.len()).ok(), Some(2));
    for (what, result) in [
        ("get", get_result.try_recv()),
        ("dump", dump_result.try_recv()),
    ] {
        let Ok(result) = result else {
            return Err(TestCaseError::fail(format!("the {what} was not answered")));
        };
        // The handle parses the messages as it reads them: every one must
        // parse or be an error, never a panic.
        if let Ok(reply) = result {
            reply.messages(FAMILY).for_each(drop);
        }
    }
    prop_assert!(state.pending.is_empty() && state.batches.is_empty());
    prop_assert!(state.queries.is_empty());
    Ok(())
}

/// The extended ACK of `message` read as an NLMSG_ERROR, as `on_error`
/// reads one: its flags, and its payload after the error code.
fn check_extack(message: &[u8]) {
    let flags = message
        .get(6..8)
        .map_or(0, |f| u16::from_ne_bytes([f[0], f[1]]));
    for flags in [
        flags,
        flags | NLM_F_ACK_TLVS,
        flags | NLM_F_ACK_TLVS | NLM_F_CAPPED,
    ] {
        extack_message(message.get(20..).unwrap_or_default(), flags);
    }
}

#[test]
fn the_corpus_reads_without_panicking() {
    for (i, seed) in seeds().iter().enumerate() {
        check_datagram(seed).unwrap_or_else(|e| panic!("seed {i}: {e}"));
        check_extack(seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_datagrams_never_panic(input in mutated(seeds())) {
        let Input(datagram) = input;
        check_datagram(&datagram)?;
    }

    #[test]
    fn mutated_extended_acks_never_panic(input in mutated(corpus("datagrams"))) {
        check_extack(&input.0);
    }
}
