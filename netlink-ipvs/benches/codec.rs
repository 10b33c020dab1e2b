//! Encoding and decoding costs of the messages a proxy sends and dumps.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use netlink_ipvs::{
    Destination, IpvsAttr, IpvsCmd, IpvsMessage, Protocol, Scheduler, Service, Stats, Stats64,
};
use netlink_packet_core::{Emitable, ParseableParametrized};
use netlink_packet_generic::GenlHeader;

const COUNT: usize = 1000;

fn services() -> Vec<Service> {
    (0..COUNT)
        .map(|i| {
            let addr = IpAddr::from([10, 96, (i / 256) as u8, (i % 256) as u8]);
            let mut service = Service::new(addr, Protocol::Tcp, 443, Scheduler::RoundRobin);
            service.stats = Some(Stats::default());
            service.stats64 = Some(Stats64::default());
            service
        })
        .collect()
}

fn destinations() -> Vec<(Service, Destination)> {
    services()
        .into_iter()
        .enumerate()
        .map(|(i, service)| {
            let addr = IpAddr::from([192, 168, (i / 256) as u8, (i % 256) as u8]);
            (service, Destination::new(addr, 8443).weight(1))
        })
        .collect()
}

fn emit(message: &IpvsMessage) -> Vec<u8> {
    let mut bytes = vec![0u8; message.buffer_len()];
    message.emit(&mut bytes);
    bytes
}

fn codec(c: &mut Criterion) {
    let services = services();
    let service_messages: Vec<IpvsMessage> = services
        .iter()
        .map(|s| IpvsMessage::new(IpvsCmd::NewService, vec![IpvsAttr::Service(s.to_attrs())]))
        .collect();
    let service_bytes: Vec<Vec<u8>> = service_messages.iter().map(emit).collect();

    let destinations = destinations();
    let dest_messages: Vec<IpvsMessage> = destinations
        .iter()
        .map(|(s, d)| {
            IpvsMessage::new(
                IpvsCmd::NewDest,
                vec![
                    IpvsAttr::Service(s.address.to_attrs()),
                    IpvsAttr::Destination(d.to_attrs()),
                ],
            )
        })
        .collect();
    let dest_bytes: Vec<Vec<u8>> = dest_messages.iter().map(emit).collect();

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(COUNT as u64));
    group.bench_function("encode 1000 services", |b| {
        b.iter(|| {
            for service in &services {
                let message = IpvsMessage::new(
                    IpvsCmd::NewService,
                    vec![IpvsAttr::Service(service.to_attrs())],
                );
                black_box(emit(&message));
            }
        })
    });
    group.bench_function("decode 1000 services", |b| {
        let header = GenlHeader {
            cmd: IpvsCmd::NewService.into(),
            version: 1,
        };
        b.iter(|| {
            for bytes in &service_bytes {
                let message = IpvsMessage::parse_with_param(bytes, header).unwrap();
                let IpvsAttr::Service(attrs) = &message.attrs[0] else {
                    unreachable!()
                };
                black_box(Service::from_attrs(attrs).unwrap());
            }
        })
    });
    group.bench_function("encode 1000 destinations", |b| {
        b.iter_batched(
            || destinations.clone(),
            |destinations| {
                for (service, dest) in &destinations {
                    let message = IpvsMessage::new(
                        IpvsCmd::NewDest,
                        vec![
                            IpvsAttr::Service(service.address.to_attrs()),
                            IpvsAttr::Destination(dest.to_request_attrs()),
                        ],
                    );
                    black_box(emit(&message));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("decode 1000 destinations", |b| {
        let header = GenlHeader {
            cmd: IpvsCmd::NewDest.into(),
            version: 1,
        };
        b.iter(|| {
            for bytes in &dest_bytes {
                let message = IpvsMessage::parse_with_param(bytes, header).unwrap();
                let IpvsAttr::Destination(attrs) = &message.attrs[1] else {
                    unreachable!()
                };
                black_box(Destination::from_attrs(attrs).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
