//! Which dumped flows a set of [`FlowFilter`]s selects.

use std::collections::BTreeSet;
use std::net::IpAddr;

use foldhash::{HashSet, HashSetExt};

use super::message::{Family, Flow};
use crate::desired::{FlowFilter, Protocol};

// include/uapi/linux/in.h
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;

/// The IP protocol number of `protocol`.
pub(super) fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
        Protocol::Sctp => IPPROTO_SCTP,
    }
}

/// What a filter compares: protocol, original destination address and port,
/// reply source address.
type Key = (u8, IpAddr, u16, IpAddr);

/// The filters of one call, indexed so that matching a flow is one lookup
/// however many filters there are.
#[derive(Debug)]
pub(super) struct FlowMatcher {
    keys: HashSet<Key>,
    families: BTreeSet<Family>,
}

impl FlowMatcher {
    pub(super) fn new(filters: &[FlowFilter]) -> Self {
        let mut keys = HashSet::with_capacity(filters.len());
        let mut families = BTreeSet::new();
        for filter in filters {
            keys.insert((
                protocol_number(filter.protocol),
                filter.addr,
                filter.port,
                filter.endpoint,
            ));
            families.insert(Family::of(filter.addr));
        }
        FlowMatcher { keys, families }
    }

    /// The tables to dump: one per address family the filters name.
    pub(super) fn families(&self) -> impl Iterator<Item = Family> + '_ {
        self.families.iter().copied()
    }

    /// Whether `flow` was sent to one filter's `addr:port` over its protocol
    /// and answered from its endpoint (`conntrack -D -p PROTO --orig-dst
    /// ADDR --orig-port-dst PORT --reply-src ENDPOINT`).
    pub(super) fn matches(&self, flow: &Flow) -> bool {
        self.keys.contains(&(
            flow.original.protocol,
            flow.original.dst,
            flow.original.dst_port,
            flow.reply.src,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::conntrack::message::Tuple;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A flow from a client to `service:port` that `endpoint` answered.
    fn flow(protocol: u8, service: &str, port: u16, endpoint: &str) -> Flow {
        let client = if service.contains(':') {
            "2001:db8::2"
        } else {
            "192.0.2.2"
        };
        Flow {
            original: Tuple {
                protocol,
                src: ip(client),
                dst: ip(service),
                src_port: 40000,
                dst_port: port,
            },
            reply: Tuple {
                protocol,
                src: ip(endpoint),
                dst: ip(client),
                src_port: 5353,
                dst_port: 40000,
            },
            zone: None,
            id: None,
        }
    }

    fn filter(protocol: Protocol, addr: &str, port: u16, endpoint: &str) -> FlowFilter {
        FlowFilter {
            protocol,
            addr: ip(addr),
            port,
            endpoint: ip(endpoint),
        }
    }

    #[test]
    fn a_flow_matches_on_protocol_original_destination_and_reply_source() {
        let matcher = FlowMatcher::new(&[
            filter(Protocol::Udp, "10.96.0.10", 53, "10.244.2.5"),
            filter(Protocol::Sctp, "10.96.0.20", 3868, "10.244.3.7"),
            filter(Protocol::Udp, "fd00::10", 53, "fd00:244::5"),
        ]);
        let cases = [
            (
                "the filter's flow",
                flow(17, "10.96.0.10", 53, "10.244.2.5"),
                true,
            ),
            ("SCTP", flow(132, "10.96.0.20", 3868, "10.244.3.7"), true),
            ("IPv6", flow(17, "fd00::10", 53, "fd00:244::5"), true),
            (
                "wrong protocol",
                flow(6, "10.96.0.10", 53, "10.244.2.5"),
                false,
            ),
            (
                "wrong port",
                flow(17, "10.96.0.10", 54, "10.244.2.5"),
                false,
            ),
            (
                "wrong endpoint",
                flow(17, "10.96.0.10", 53, "10.244.2.6"),
                false,
            ),
            (
                "wrong service address",
                flow(17, "10.96.0.11", 53, "10.244.2.5"),
                false,
            ),
            (
                "another filter's endpoint",
                flow(17, "10.96.0.10", 53, "10.244.3.7"),
                false,
            ),
            (
                "IPv6 wrong endpoint",
                flow(17, "fd00::10", 53, "fd00:244::6"),
                false,
            ),
            // An un-NATed flow straight to the endpoint: its reply source is
            // the endpoint, but it was not sent to the service.
            (
                "direct to the endpoint",
                flow(17, "10.244.2.5", 53, "10.244.2.5"),
                false,
            ),
        ];
        for (name, flow, expected) in cases {
            assert_eq!(matcher.matches(&flow), expected, "{name}");
        }
    }

    #[test]
    fn the_reply_destination_is_not_the_endpoint() {
        let matcher = FlowMatcher::new(&[filter(Protocol::Udp, "10.96.0.10", 53, "192.0.2.2")]);
        // 192.0.2.2 is the client here: the reply goes to it, not from it.
        assert!(!matcher.matches(&flow(17, "10.96.0.10", 53, "10.244.2.5")));
    }

    #[test]
    fn one_dump_per_family_the_filters_name() {
        let v4 = filter(Protocol::Udp, "10.96.0.10", 53, "10.244.2.5");
        let v6 = filter(Protocol::Udp, "fd00::10", 53, "fd00:244::5");
        let families = |filters: &[FlowFilter]| -> Vec<Family> {
            FlowMatcher::new(filters).families().collect()
        };
        assert_eq!(families(&[]), []);
        assert_eq!(families(&[v4, v4]), [Family::Ipv4]);
        assert_eq!(families(&[v6]), [Family::Ipv6]);
        assert_eq!(families(&[v6, v4]), [Family::Ipv4, Family::Ipv6]);
    }

    #[test]
    fn protocol_numbers_are_iana_s() {
        assert_eq!(protocol_number(Protocol::Tcp), 6);
        assert_eq!(protocol_number(Protocol::Udp), 17);
        assert_eq!(protocol_number(Protocol::Sctp), 132);
    }
}
