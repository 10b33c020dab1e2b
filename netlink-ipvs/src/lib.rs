//! Linux IPVS over generic netlink.

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
