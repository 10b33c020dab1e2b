//! Linux IPVS (the kernel's layer-4 load balancer, `ipvsadm`) over generic
//! netlink: typed messages for the whole IPVS family and an async,
//! pipelined handle in the manner of rtnetlink.
//!
//! # Example
//!
//! ```no_run
//! use netlink_ipvs::{
//!     new_connection, Destination, ForwardingMethod, Operation, Protocol, Scheduler, Service,
//! };
//!
//! # async fn example() -> netlink_ipvs::Result<()> {
//! // One socket; the IPVS family id is resolved once, here.
//! let (connection, handle) = new_connection().await?;
//! tokio::spawn(connection);
//!
//! // ipvsadm -A -t 10.0.0.1:80 -s rr
//! let svc = Service::new("10.0.0.1".parse().unwrap(), Protocol::Tcp, 80, Scheduler::RoundRobin);
//! match handle.service().add(svc.clone()).execute().await {
//!     Ok(()) => {}
//!     Err(err) if err.is_exists() => {} // already there
//!     Err(err) => return Err(err),      // an unknown scheduler lands here
//! }
//!
//! // ipvsadm -a -t 10.0.0.1:80 -r 192.168.1.10:8080 -g -w 1
//! let dest = Destination::new("192.168.1.10".parse().unwrap(), 8080)
//!     .forwarding(ForwardingMethod::DirectRoute);
//! handle.destination().add(&svc.address, dest.clone()).execute().await?;
//!
//! // ipvsadm -E -t 10.0.0.1:80 -s wlc -p 300: set() replaces every field.
//! let edited = Service { scheduler: Scheduler::WeightedLeastConnection, ..svc.clone() }.persistent(300);
//! handle.service().set(edited).execute().await?;
//!
//! // ipvsadm -e -t 10.0.0.1:80 -r 192.168.1.10:8080 -g -w 5: update() keeps
//! // what it is not told to change (here the forwarding method).
//! handle.destination().update(&svc.address, &dest).weight(5).execute().await?;
//!
//! // ipvsadm -Ln
//! for service in handle.service().get().execute().await? {
//!     println!("{} {}", service.address, service.scheduler);
//!     for dest in handle.destination().get(&service.address).execute().await? {
//!         println!("  -> {}:{} weight {}", dest.addr, dest.port, dest.weight);
//!     }
//! }
//! // The same in one call: every service with its destinations.
//! let table = handle.dump().execute().await?;
//! assert!(!table.is_empty());
//!
//! // Many changes at once: pipelined, one result per operation, in order.
//! let results = handle
//!     .batch(vec![
//!         Operation::DelDestination(svc.address.clone(), dest.addr, dest.port),
//!         Operation::DelService(svc.address.clone()),
//!     ])
//!     .execute()
//!     .await;
//! for result in results {
//!     match result {
//!         Err(err) if err.is_not_found() => {} // already gone
//!         other => other?,
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Errors
//!
//! IPVS answers the same errno for different mistakes (ENOENT is a missing
//! destination and also an unknown scheduler), so [`Error`] classifies a
//! refusal by errno and command, as net/netfilter/ipvs/ip_vs_ctl.c returns
//! them:
//!
//! | Helper                          | errno          | Commands                                        | Meaning |
//! |---------------------------------|----------------|-------------------------------------------------|---------|
//! | [`Error::is_exists`]            | EEXIST         | NEW_SERVICE, NEW_DEST, NEW_DAEMON               | already there |
//! | [`Error::is_not_found`]         | ESRCH          | every command naming a service but NEW_SERVICE  | the service is gone |
//! |                                 | ESRCH          | DEL_DAEMON                                      | the daemon is not running |
//! |                                 | ENOENT         | SET_DEST, DEL_DEST                              | the destination is gone |
//! | [`Error::is_unknown_scheduler`] | ENOENT         | NEW_SERVICE, SET_SERVICE                        | no such scheduler or persistence engine module |
//! | [`Error::is_invalid`]           | EINVAL, ERANGE | any                                             | the request's contents were rejected |
//!
//! "Already there" after an add and "already gone" after a delete are safe
//! to treat as success; none of the helpers overlap, so that idiom never
//! swallows a misspelled scheduler.
//!
//! # Editing
//!
//! The kernel's SET_SERVICE and SET_DEST take a whole object, so
//! [`ServiceHandle::set`] and [`DestinationHandle::set`] replace every
//! editable field: a weight change built from `Destination::new` also
//! resets the forwarding method to masquerading. [`ServiceHandle::update`]
//! and [`DestinationHandle::update`] start from the object as listed and
//! change only what the caller sets; their `into_operation()` feeds a
//! [`Handle::batch`].
//!
//! # Decoding raw bytes
//!
//! [`IpvsMessage`] is a generic netlink family in the rust-netlink manner:
//! the payload of a `GenlMessage` inside a `NetlinkMessage`, parsed with
//! `ParseableParametrized<[u8], GenlHeader>` and emitted with `Emitable`.
//! Those types and traits come from netlink-packet-core 0.9 and
//! netlink-packet-generic 0.5; the crate re-exports both as
//! [`netlink_packet_core`] and [`netlink_packet_generic`], so their versions
//! always match its own. Parsing never panics on malformed input, and
//! emitting a parsed message reproduces its bytes, unknown attributes
//! included.
//!
//! ```
//! use netlink_ipvs::netlink_packet_core::{NetlinkMessage, NetlinkPayload, ParseableParametrized};
//! use netlink_ipvs::netlink_packet_generic::{GenlHeader, GenlMessage};
//! use netlink_ipvs::{IpvsAttr, IpvsCmd, IpvsMessage, ServiceAddress};
//!
//! // `ipvsadm -Ln` asking for the destinations of TCP 10.0.0.1:80, captured
//! // with strace on x86_64 (native byte order is little-endian).
//! #[rustfmt::skip]
//! let bytes: &[u8] = &[
//!     0x44, 0x00, 0x00, 0x00, 0x20, 0x00, 0x05, 0x03, // nlmsg_len 68, type 0x20 (IPVS), flags
//!     0xff, 0x6a, 0x02, 0x6b, 0x51, 0x01, 0x40, 0x7a, // nlmsg_seq, nlmsg_pid
//!     0x08, 0x01, 0x00, 0x00,                         // IPVS_CMD_GET_DEST, version 1
//!     0x30, 0x00, 0x01, 0x80,                         // IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED
//!     0x06, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, // IPVS_SVC_ATTR_AF: AF_INET
//!     0x06, 0x00, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, // IPVS_SVC_ATTR_PROTOCOL: TCP
//!     0x14, 0x00, 0x03, 0x00, 0x0a, 0x00, 0x00, 0x01, // IPVS_SVC_ATTR_ADDR: 10.0.0.1
//!     0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
//!     0x00, 0x00, 0x00, 0x00,
//!     0x06, 0x00, 0x04, 0x00, 0x00, 0x50, 0x00, 0x00, // IPVS_SVC_ATTR_PORT: 80
//! ];
//!
//! // A whole netlink message.
//! let message = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(bytes)?;
//! let NetlinkPayload::InnerMessage(genl) = &message.payload else {
//!     return Err("not an IPVS message".into());
//! };
//! assert_eq!(genl.payload.cmd, IpvsCmd::GetDest);
//! let [IpvsAttr::Service(attrs)] = genl.payload.attrs.as_slice() else {
//!     return Err("expected one service".into());
//! };
//! assert_eq!(ServiceAddress::from_attrs(attrs)?.to_string(), "TCP 10.0.0.1:80");
//!
//! // Emitted again, byte for byte.
//! let mut emitted = vec![0; message.buffer_len()];
//! message.serialize(&mut emitted);
//! assert_eq!(emitted, bytes);
//!
//! // Only the attributes, after the netlink (16 bytes) and generic (4 bytes)
//! // headers.
//! let header = GenlHeader { cmd: bytes[16], version: bytes[17] };
//! assert_eq!(IpvsMessage::parse_with_param(&bytes[20..], header)?, genl.payload);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Speed
//!
//! The [`Connection`] task owns one socket. Everything queued is written
//! with one `sendmsg` per 64 KiB; only the last request of each `sendmsg`
//! asks for an ACK, because the kernel processes a socket's requests in
//! order and reports every failure even unasked. [`Handle::stats`] counts
//! the sends. Dumps run one at a time (the kernel allows one per socket)
//! and are retried when the kernel marks them interrupted.
//!
//! # Layers
//!
//! * [`IpvsMessage`] with [`IpvsCmd`] and one attribute enum per kernel
//!   attribute space ([`ServiceAttr`], [`DestinationAttr`], [`StatsAttr`],
//!   [`DaemonAttr`], [`InfoAttr`]): byte-exact with what ipvsadm and the
//!   kernel exchange.
//! * Typed objects: [`Service`], [`Destination`], [`Timeouts`], [`Info`],
//!   [`Daemon`], converted to and from attributes with errors that name the
//!   missing or invalid attribute.
//! * [`Handle`]: builders ending in `execute()`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// netlink-packet-core 0.9, the version this crate's types implement:
/// `NetlinkMessage`, `Emitable`, `ParseableParametrized`, `DefaultNla`, ...
pub use netlink_packet_core;
/// netlink-packet-generic 0.5, the version this crate's types implement:
/// `GenlMessage`, `GenlHeader`, `GenlFamily`.
pub use netlink_packet_generic;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod address;
mod config;
mod daemon;
mod destination;
mod error;
mod info;
mod message;
mod request;
mod service;
mod stats;

pub use self::address::{AddressFamily, InetAddr, Protocol};
pub use self::config::Timeouts;
pub use self::daemon::{Daemon, DaemonAttr, DaemonState};
pub use self::destination::{
    Destination, DestinationAttr, ForwardingMethod, Tunnel, TunnelFlags, TunnelType,
};
pub use self::error::{Error, Result};
pub use self::info::{Info, InfoAttr};
pub use self::message::{IpvsAttr, IpvsCmd, IpvsMessage};
pub use self::service::{IpvsFlags, Scheduler, Service, ServiceAddress, ServiceAttr, ServiceFlags};
pub use self::stats::{Stats, Stats64, Stats64Attr, StatsAttr};

mod connection;
mod handle;

pub use self::connection::{Connection, ConnectionStats};
pub use self::handle::{
    new_connection, BatchRequest, ConfigGetRequest, ConfigHandle, DaemonGetRequest, DaemonHandle,
    DestinationGetRequest, DestinationHandle, DestinationUpdateRequest, DumpRequest, Handle,
    InfoRequest, Operation, OperationRequest, PreparedBatch, ServiceGetRequest, ServiceHandle,
    ServiceUpdateRequest,
};
