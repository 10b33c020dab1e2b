//! Property tests: whatever the crate emits, it parses back to the same
//! value, at the typed level and at the message level.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_ipvs::{
    AddressFamily, Destination, ForwardingMethod, IpvsAttr, IpvsCmd, IpvsMessage, Protocol,
    Scheduler, Service, ServiceAddress, ServiceFlags, Stats, Stats64, Tunnel, TunnelFlags,
    TunnelType,
};
use netlink_packet_core::{Emitable, ParseableParametrized};
use netlink_packet_generic::GenlHeader;
use proptest::prelude::*;

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Sctp),
        (0u16..=u16::MAX)
            .prop_filter("named protocols have variants", |n| ![6, 17, 132]
                .contains(n))
            .prop_map(Protocol::Other),
    ]
}

fn scheduler() -> impl Strategy<Value = Scheduler> {
    prop_oneof![
        proptest::sample::select(Scheduler::KNOWN.to_vec()),
        "[a-z]{1,15}".prop_map(|name| Scheduler::from(name.as_str())),
    ]
}

fn service_address() -> impl Strategy<Value = ServiceAddress> {
    prop_oneof![
        (ip(), protocol(), any::<u16>()).prop_map(|(addr, protocol, port)| ServiceAddress::Inet {
            addr,
            protocol,
            port
        }),
        (
            prop_oneof![Just(AddressFamily::Inet), Just(AddressFamily::Inet6)],
            1u32..
        )
            .prop_map(|(family, mark)| ServiceAddress::Fwmark { family, mark }),
    ]
}

fn stats() -> impl Strategy<Value = Stats> {
    (any::<[u32; 8]>(), any::<u64>(), any::<u64>()).prop_map(|(n, in_bytes, out_bytes)| Stats {
        conns: n[0],
        in_packets: n[1],
        out_packets: n[2],
        in_bytes,
        out_bytes,
        cps: n[3],
        in_pps: n[4],
        out_pps: n[5],
        in_bps: n[6],
        out_bps: n[7],
    })
}

fn stats64() -> impl Strategy<Value = Stats64> {
    any::<[u64; 10]>().prop_map(|n| Stats64 {
        conns: n[0],
        in_packets: n[1],
        out_packets: n[2],
        in_bytes: n[3],
        out_bytes: n[4],
        cps: n[5],
        in_pps: n[6],
        out_pps: n[7],
        in_bps: n[8],
        out_bps: n[9],
    })
}

prop_compose! {
    fn service()(
        address in service_address(),
        scheduler in scheduler(),
        flags in any::<u32>().prop_map(ServiceFlags::from_bits_retain),
        timeout in any::<u32>(),
        netmask in any::<u32>(),
        pe_name in proptest::option::of("[a-z]{1,15}"),
        stats in proptest::option::of(stats()),
        stats64 in proptest::option::of(stats64()),
    ) -> Service {
        Service { address, scheduler, flags, timeout, netmask, pe_name, stats, stats64 }
    }
}

fn forwarding() -> impl Strategy<Value = ForwardingMethod> {
    prop_oneof![
        Just(ForwardingMethod::Masquerade),
        Just(ForwardingMethod::Local),
        Just(ForwardingMethod::Tunnel),
        Just(ForwardingMethod::DirectRoute),
        Just(ForwardingMethod::Bypass),
        (5u32..).prop_map(ForwardingMethod::Other),
    ]
}

fn tunnel() -> impl Strategy<Value = Option<Tunnel>> {
    (
        prop_oneof![
            Just(TunnelType::Ipip),
            Just(TunnelType::Gue),
            Just(TunnelType::Gre),
            (3u8..).prop_map(TunnelType::Other)
        ],
        any::<u16>(),
        any::<u16>().prop_map(TunnelFlags::from_bits_retain),
    )
        .prop_map(|(tunnel_type, port, flags)| Tunnel {
            tunnel_type,
            port,
            flags,
        })
        // The kernel's defaults are carried as zeros and read back as None.
        .prop_map(|tunnel| (tunnel != Tunnel::default()).then_some(tunnel))
}

prop_compose! {
    fn destination()(
        addr in ip(),
        port in any::<u16>(),
        forwarding in forwarding(),
        n in any::<[u32; 6]>(),
        tunnel in tunnel(),
        stats in proptest::option::of(stats()),
        stats64 in proptest::option::of(stats64()),
    ) -> Destination {
        Destination {
            addr, port, forwarding,
            weight: n[0], upper_threshold: n[1], lower_threshold: n[2],
            active_conns: n[3], inactive_conns: n[4], persistent_conns: n[5],
            tunnel, stats, stats64,
        }
    }
}

fn wire_round_trip(message: &IpvsMessage) -> IpvsMessage {
    let mut bytes = vec![0u8; message.buffer_len()];
    message.emit(&mut bytes);
    let header = GenlHeader {
        cmd: message.cmd.into(),
        version: 1,
    };
    IpvsMessage::parse_with_param(&bytes, header).expect("what we emit parses")
}

proptest! {
    #[test]
    fn services_survive_the_wire(service in service(), nested_flag in any::<bool>()) {
        let message = IpvsMessage {
            cmd: IpvsCmd::NewService,
            attrs: vec![IpvsAttr::Service(service.to_attrs())],
            nested_flag,
        };
        let parsed = wire_round_trip(&message);
        prop_assert_eq!(&parsed, &message);
        let IpvsAttr::Service(attrs) = &parsed.attrs[0] else { panic!("not a service") };
        prop_assert_eq!(Service::from_attrs(attrs).unwrap(), service);
    }

    #[test]
    fn destinations_survive_the_wire(
        service in service_address(),
        dest in destination(),
        nested_flag in any::<bool>(),
    ) {
        let message = IpvsMessage {
            cmd: IpvsCmd::NewDest,
            attrs: vec![IpvsAttr::Service(service.to_attrs()), IpvsAttr::Destination(dest.to_attrs())],
            nested_flag,
        };
        let parsed = wire_round_trip(&message);
        prop_assert_eq!(&parsed, &message);
        let IpvsAttr::Service(service_attrs) = &parsed.attrs[0] else { panic!("not a service") };
        prop_assert_eq!(ServiceAddress::from_attrs(service_attrs).unwrap(), service);
        let IpvsAttr::Destination(attrs) = &parsed.attrs[1] else { panic!("not a destination") };
        prop_assert_eq!(Destination::from_attrs(attrs).unwrap(), dest);
    }

    #[test]
    fn request_attributes_carry_everything_but_the_counters(dest in destination()) {
        let parsed = Destination::from_attrs(&dest.to_request_attrs()).unwrap();
        prop_assert_eq!(parsed, Destination {
            active_conns: 0, inactive_conns: 0, persistent_conns: 0, stats: None, stats64: None,
            ..dest
        });
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), cmd in any::<u8>()) {
        let _ = IpvsMessage::parse_with_param(&bytes, GenlHeader { cmd, version: 1 });
    }
}
