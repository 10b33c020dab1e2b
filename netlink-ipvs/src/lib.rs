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
//!     Err(err) => return Err(err),
//! }
//!
//! // ipvsadm -a -t 10.0.0.1:80 -r 192.168.1.10:8080 -m -w 1
//! let dest = Destination::new("192.168.1.10".parse().unwrap(), 8080);
//! handle.destination().add(&svc.address, dest.clone()).execute().await?;
//!
//! // ipvsadm -E -t 10.0.0.1:80 -s wlc -p 300
//! let edited = Service { scheduler: Scheduler::WeightedLeastConnection, ..svc.clone() }.persistent(300);
//! handle.service().set(edited).execute().await?;
//!
//! // ipvsadm -e -t 10.0.0.1:80 -r 192.168.1.10:8080 -g -w 5
//! let heavier = dest.clone().weight(5).forwarding(ForwardingMethod::DirectRoute);
//! handle.destination().set(&svc.address, heavier).execute().await?;
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

mod address;
mod config;
mod daemon;
mod destination;
mod error;
mod info;
mod message;
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
    DestinationGetRequest, DestinationHandle, DumpRequest, Handle, InfoRequest, Operation,
    OperationRequest, ServiceGetRequest, ServiceHandle,
};
