//! Fuzzing of what the crate reads from the kernel, through its public API:
//! whole IPVS netlink messages, their attributes, and the typed objects
//! converted from them. Each case is a captured message (`corpus/messages`)
//! with a few mutations (see `mutate.rs`); none may panic.
//!
//! The datagram demultiplexing and the extended ACKs are private to the
//! connection; they are fuzzed in `src/connection/fuzz.rs`.
//!
//! More cases: `PROPTEST_CASES=100000 cargo test -p netlink-ipvs --test fuzz`.

mod mutate;

use std::path::Path;

use netlink_ipvs::{
    Daemon, Destination, Info, IpvsAttr, IpvsMessage, Service, ServiceAddress, ServiceAttr, Stats,
    Stats64, Timeouts,
};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, ParseableParametrized};
use netlink_packet_generic::{GenlHeader, GenlMessage};
use proptest::prelude::*;

use mutate::{load, mutated, Input};

fn corpus() -> Vec<(String, Vec<u8>)> {
    load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/messages"))
}

/// Parses `bytes` as a whole message, and when that works, emits it, parses
/// that, and converts every attribute to its typed object. Emitting must
/// reach a fixed point at once: the emitted bytes emit as themselves. (Not
/// emit(parse(bytes)) == bytes: netlink-packet-core 0.9 drops
/// NLA_F_NET_BYTEORDER from an unknown attribute that is also flagged
/// NLA_F_NESTED, see corpus/messages/regression-unknown-attribute-with-both-flags.hex.)
fn check_message(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(mut message) = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(bytes) else {
        return Ok(());
    };
    // Emitting a parsed message must work whatever it holds.
    message.finalize();
    let mut emitted = vec![0; message.buffer_len()];
    message.serialize(&mut emitted);
    let reparsed = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(&emitted)
        .map_err(|e| TestCaseError::fail(format!("emitted message does not parse: {e}")))?;
    let mut again = vec![0; reparsed.buffer_len()];
    reparsed.serialize(&mut again);
    prop_assert_eq!(Input(again), Input(emitted), "emit(parse(emit(message)))");
    if let NetlinkPayload::InnerMessage(genl) = &message.payload {
        check_objects(&genl.payload);
    }
    Ok(())
}

/// Every typed conversion of `message`'s attributes; what converts must
/// convert back.
fn check_objects(message: &IpvsMessage) {
    let _ = Timeouts::from_attrs(&message.attrs).map(|t| t.to_attrs());
    let mut info = Vec::new();
    for attr in &message.attrs {
        match attr {
            IpvsAttr::Service(attrs) => {
                let _ = ServiceAddress::from_attrs(attrs).map(|a| a.to_attrs());
                let _ = Service::from_attrs(attrs).map(|s| s.to_attrs());
                for attr in attrs {
                    match attr {
                        ServiceAttr::Stats(stats) => {
                            Stats::from_attrs(stats).to_attrs();
                        }
                        ServiceAttr::Stats64(stats) => {
                            Stats64::from_attrs(stats).to_attrs();
                        }
                        _ => {}
                    }
                }
            }
            IpvsAttr::Destination(attrs) => {
                if let Ok(dest) = Destination::from_attrs(attrs) {
                    dest.to_attrs();
                    dest.to_request_attrs();
                }
            }
            IpvsAttr::Daemon(attrs) => {
                let _ = Daemon::from_attrs(attrs).map(|d| d.to_attrs());
            }
            IpvsAttr::Info(attr) => info.push(attr.clone()),
            _ => {}
        }
    }
    let _ = Info::from_attrs(&info).map(|i| {
        i.version_string();
        i.to_attrs()
    });
}

/// The attributes alone, under `cmd`, as a family's payload is parsed.
fn check_attributes(bytes: &[u8], cmd: u8) {
    let header = GenlHeader { cmd, version: 1 };
    if let Ok(message) = IpvsMessage::parse_with_param(bytes, header) {
        check_objects(&message);
    }
}

#[test]
fn the_corpus_parses_without_panicking() {
    for (name, bytes) in corpus() {
        check_message(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_attributes(bytes.get(20..).unwrap_or_default(), bytes[16]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_messages_never_panic(input in mutated(corpus().into_iter().map(|(_, b)| b).collect())) {
        let Input(bytes) = input;
        check_message(&bytes)?;
    }

    /// The payload after the netlink and generic headers, under any command
    /// (GET_INFO and SET_INFO read another attribute space).
    #[test]
    fn mutated_attributes_never_panic(
        input in mutated(corpus().into_iter().map(|(_, b)| b[20..].to_vec()).collect()),
        cmd in prop_oneof![Just(15u8), 0u8..=18, any::<u8>()],
    ) {
        check_attributes(&input.0, cmd);
    }
}
