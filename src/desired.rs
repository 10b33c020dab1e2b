//! The vocabulary shared by translate, reconcile and the kernel layer: what
//! one node wants IPVS to hold, in the proxy's own compact types.
//!
//! These types say nothing about how they reach the kernel; `kernel::netlink`
//! maps them onto `netlink_ipvs` messages.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// A Service's namespace and name: the key of everything per service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceName {
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The transport protocol of a virtual server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The flag `ipvsadm` uses for this protocol: `-t`, `-u` or `--sctp-service`.
    pub fn ipvsadm_flag(self) -> &'static str {
        match self {
            Protocol::Tcp => "-t",
            Protocol::Udp => "-u",
            Protocol::Sctp => "--sctp-service",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// What identifies an IPVS virtual server: `ipvsadm -t ADDR:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VirtualServerKey {
    pub addr: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

impl fmt::Display for VirtualServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{}/{}:{}", self.protocol, a, self.port),
            IpAddr::V6(a) => write!(f, "{}/[{}]:{}", self.protocol, a, self.port),
        }
    }
}

/// A virtual server as the proxy wants it. Always NAT (masquerade) to its
/// real servers, as kube-proxy's IPVS mode does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualServer {
    pub key: VirtualServerKey,
    /// Kernel scheduler name: "rr", "lc", "sh", ... (validated by translate).
    pub scheduler: Arc<str>,
    /// `Some(seconds)` for sessionAffinity ClientIP: the IPVS persistent flag
    /// with this timeout and a host netmask (/32 or /128).
    pub persistence: Option<u32>,
}

/// What identifies a real server within its virtual server: `-r ADDR:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RealServerKey {
    pub addr: IpAddr,
    pub port: u16,
}

impl fmt::Display for RealServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{}:{}", a, self.port),
            IpAddr::V6(a) => write!(f, "[{}]:{}", a, self.port),
        }
    }
}

/// A real server (an endpoint) behind a virtual server, forwarded by masquerade.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RealServer {
    pub key: RealServerKey,
    pub weight: u32,
}

/// One virtual server with the real servers it should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredVirtualServer {
    pub server: VirtualServer,
    pub real_servers: Vec<RealServer>,
}

/// Everything one Service asks of this node: its virtual servers (one per
/// address and port) and the addresses to hold on kube-ipvs0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceDesired {
    pub virtual_servers: Vec<DesiredVirtualServer>,
    /// Addresses to bind on kube-ipvs0 (ClusterIPs, ExternalIPs, LoadBalancer
    /// IPs). NodePort virtual servers use node addresses and bind nothing.
    pub bind_addrs: Vec<IpAddr>,
}

/// One change to the kernel's IPVS table, as the reconciler orders them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddVirtualServer(VirtualServer),
    UpdateVirtualServer(VirtualServer),
    DeleteVirtualServer(VirtualServerKey),
    AddRealServer(VirtualServerKey, RealServer),
    UpdateRealServer(VirtualServerKey, RealServer),
    DeleteRealServer(VirtualServerKey, RealServerKey),
}

impl Op {
    /// The virtual server this operation touches.
    pub fn virtual_server(&self) -> VirtualServerKey {
        match self {
            Op::AddVirtualServer(vs) | Op::UpdateVirtualServer(vs) => vs.key,
            Op::DeleteVirtualServer(key)
            | Op::AddRealServer(key, _)
            | Op::UpdateRealServer(key, _)
            | Op::DeleteRealServer(key, _) => *key,
        }
    }
}
