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

/// How a Service ranks among those that want one virtual server: the kernel
/// can hold it once, and the older Service (`metadata.creationTimestamp`)
/// keeps it, ties broken by namespace/name; one without a timestamp (a
/// manifest) ranks after every one with. A pure function of the state, so a
/// restart picks the winner the running proxy had, whatever the claim order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimRank {
    undated: bool,
    created: i64,
    pub name: ServiceName,
}

impl ClaimRank {
    /// `created`: the Service's creation time, in seconds since the Unix epoch.
    pub fn new(name: &ServiceName, created: Option<i64>) -> ClaimRank {
        ClaimRank {
            undated: created.is_none(),
            created: created.unwrap_or_default(),
            name: name.clone(),
        }
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
    /// ExternalIPs and LoadBalancer IPs that are already the node's own
    /// addresses: their virtual servers are the proxy's, but the address is
    /// the node's and is never bound on, or removed from, kube-ipvs0.
    pub served_node_addrs: Vec<IpAddr>,
    /// The elements this service puts in the proxy's nftables sets, sorted.
    pub nft_elements: Vec<NftElement>,
    /// The Service's `metadata.creationTimestamp` in seconds since the Unix
    /// epoch: its [`ClaimRank`] for a virtual server another service wants.
    pub created: Option<i64>,
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

/// One of the sets in the proxy's nftables table. The table's chains and
/// rules are fixed (see `kernel::nftables`); everything per service lives in
/// these sets, so a change is an element added or deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NftSet {
    /// `addr . proto . port` of every ClusterIP port: traffic to it from
    /// outside the cluster's pods is masqueraded.
    ClusterIps,
    /// `addr . proto . port` of ExternalIPs and LoadBalancer IPs with
    /// externalTrafficPolicy Cluster: masqueraded.
    ExternalIps,
    /// `addr . proto . port` of ExternalIPs and LoadBalancer IPs with
    /// externalTrafficPolicy Local: served, not masqueraded.
    ExternalIpsLocal,
    /// `addr . proto . port` of external addresses with externalTrafficPolicy
    /// Local and no endpoint on this node: new connections are dropped.
    NoLocalEndpoints,
    /// `proto . port` of NodePorts with externalTrafficPolicy Cluster: masqueraded.
    NodePorts,
    /// `proto . port` of NodePorts with externalTrafficPolicy Local and no
    /// endpoint on this node: new connections are dropped.
    NodePortsNoLocalEndpoints,
    /// Every address bound on kube-ipvs0: new connections to a port no
    /// service serves there are rejected, and traffic the node sends from
    /// one of them is masqueraded.
    ServiceIps,
    /// `addr . proto . port` of LoadBalancer IPs with source ranges.
    FirewallIps,
    /// `addr . proto . port . source range`: who may reach a [`NftSet::FirewallIps`] entry.
    FirewallAllow,
    /// `endpoint . proto . port . endpoint` of this node's endpoints: a pod
    /// reaching itself through its service is masqueraded.
    Hairpin,
    /// The CIDRs whose sources are this cluster's pods (`--detect-local-mode`
    /// ClusterCIDR or NodeCIDR): their ClusterIP traffic is not masqueraded.
    LocalPodCidrs,
}

impl NftSet {
    /// Every set, in the order the table declares them.
    pub const ALL: [NftSet; 11] = [
        NftSet::ClusterIps,
        NftSet::ExternalIps,
        NftSet::ExternalIpsLocal,
        NftSet::NoLocalEndpoints,
        NftSet::NodePorts,
        NftSet::NodePortsNoLocalEndpoints,
        NftSet::ServiceIps,
        NftSet::FirewallIps,
        NftSet::FirewallAllow,
        NftSet::Hairpin,
        NftSet::LocalPodCidrs,
    ];

    /// The set's name in the table, as `nft list table` shows it.
    pub fn name(self) -> &'static str {
        match self {
            NftSet::ClusterIps => "cluster-ips",
            NftSet::ExternalIps => "external-ips",
            NftSet::ExternalIpsLocal => "external-ips-local",
            NftSet::NoLocalEndpoints => "no-local-endpoints",
            NftSet::NodePorts => "nodeports",
            NftSet::NodePortsNoLocalEndpoints => "nodeports-no-local-endpoints",
            NftSet::ServiceIps => "service-ips",
            NftSet::FirewallIps => "firewall-ips",
            NftSet::FirewallAllow => "firewall-allow",
            NftSet::Hairpin => "hairpin",
            NftSet::LocalPodCidrs => "local-pod-cidrs",
        }
    }

    /// The set called `name`, if the proxy has one.
    pub fn from_name(name: &str) -> Option<NftSet> {
        NftSet::ALL.into_iter().find(|set| set.name() == name)
    }
}

/// The key of one set element. Which shape a set takes is fixed per set
/// (see [`NftSet`]); its addresses' family, or for a NodePort key the
/// family it names, picks the table (see [`NftKey::family`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NftKey {
    /// `ipv4_addr . inet_proto . inet_service` (`ipv6_addr` in `ip6`)
    AddrProtoPort(IpAddr, Protocol, u16),
    /// `inet_proto . inet_service`, in the table of the family named: a
    /// NodePort of a dual-stack service is in both.
    ProtoPort(NftFamily, Protocol, u16),
    /// `ipv4_addr`
    Addr(IpAddr),
    /// `ipv4_addr . inet_proto . inet_service . ipv4_addr` with an interval
    /// (a CIDR) in the last field.
    AddrProtoPortSource(IpAddr, Protocol, u16, ipnet::IpNet),
    /// `ipv4_addr . inet_proto . inet_service . ipv4_addr`
    AddrProtoPortAddr(IpAddr, Protocol, u16, IpAddr),
    /// `ipv4_addr`, an interval (a CIDR).
    Cidr(ipnet::IpNet),
}

impl NftKey {
    /// The table the key belongs in: its first address's family.
    pub fn family(&self) -> NftFamily {
        match self {
            NftKey::ProtoPort(family, ..) => *family,
            NftKey::AddrProtoPort(a, ..)
            | NftKey::Addr(a)
            | NftKey::AddrProtoPortSource(a, ..)
            | NftKey::AddrProtoPortAddr(a, ..) => NftFamily::of(*a),
            NftKey::Cidr(net) => NftFamily::of(net.addr()),
        }
    }
}

/// The family of one of the proxy's two nftables tables, `ip` and `ip6`
/// (upstream's nftables proxy also keeps one table per family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NftFamily {
    /// `table ip kube-ipvs-proxy`: IPv4.
    Ip,
    /// `table ip6 kube-ipvs-proxy`: IPv6, only on a node that has IPv6.
    Ip6,
}

impl NftFamily {
    /// Both families, the order tables are created, dumped and sent in.
    pub const ALL: [NftFamily; 2] = [NftFamily::Ip, NftFamily::Ip6];

    /// The family as `nft` names it.
    pub fn name(self) -> &'static str {
        match self {
            NftFamily::Ip => "ip",
            NftFamily::Ip6 => "ip6",
        }
    }

    /// The table an address's elements go in.
    pub fn of(addr: IpAddr) -> NftFamily {
        match addr {
            IpAddr::V4(_) => NftFamily::Ip,
            IpAddr::V6(_) => NftFamily::Ip6,
        }
    }
}

impl fmt::Display for NftFamily {
    /// `ip` or `ip6`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for NftKey {
    /// The key as `nft` writes it: `10.96.0.10 . tcp . 53`, `192.0.2.0/24`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = |p: &Protocol| match p {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        };
        match self {
            NftKey::AddrProtoPort(a, p, port) => write!(f, "{a} . {} . {port}", proto(p)),
            NftKey::ProtoPort(_, p, port) => write!(f, "{} . {port}", proto(p)),
            NftKey::Addr(a) => write!(f, "{a}"),
            NftKey::AddrProtoPortSource(a, p, port, net) => {
                write!(f, "{a} . {} . {port} . {net}", proto(p))
            }
            NftKey::AddrProtoPortAddr(a, p, port, b) => {
                write!(f, "{a} . {} . {port} . {b}", proto(p))
            }
            NftKey::Cidr(net) => write!(f, "{net}"),
        }
    }
}

impl fmt::Display for NftElement {
    /// The `nft` command that adds the element:
    /// `add element ip kube-ipvs-proxy cluster-ips { 10.96.0.10 . tcp . 53 }`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "add element {} {NFT_TABLE} {} {{ {} }}",
            self.key.family(),
            self.set.name(),
            self.key
        )
    }
}

/// One element of one of the proxy's sets, in the table of its key's
/// family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NftElement {
    pub set: NftSet,
    pub key: NftKey,
}

impl NftElement {
    /// The table the element is in.
    pub fn family(&self) -> NftFamily {
        self.key.family()
    }
}

/// One change to the proxy's set elements; a sync sends all of its changes
/// as one nftables transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NftChange {
    Add(NftElement),
    Delete(NftElement),
}

/// The fixed part of the proxy's nftables table: what decides its chains and
/// rules, as opposed to its set elements. Chosen by flags at start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NftRuleset {
    /// `--masquerade-all`: masquerade every ClusterIP connection.
    pub masquerade_all: bool,
    /// How traffic from this cluster's pods is told apart (`--detect-local-mode`).
    pub local_detect: LocalDetect,
    /// Whether the `ip6` table exists beside the `ip` one: the node has
    /// IPv6. A kernel with IPv6 disabled never sees an `ip6` request.
    pub ipv6: bool,
}

impl NftRuleset {
    /// The families whose tables this ruleset has: `ip`, and `ip6` when
    /// [`NftRuleset::ipv6`].
    pub fn families(&self) -> impl Iterator<Item = NftFamily> + '_ {
        NftFamily::ALL
            .into_iter()
            .filter(|f| *f == NftFamily::Ip || self.ipv6)
    }
}

/// How the rules tell a pod's traffic from anything else's
/// (kube-proxy's `--detect-local-mode`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum LocalDetect {
    /// Nothing is known: ClusterIP traffic is masqueraded only under
    /// `--masquerade-all` (and when the node sends it from a service address).
    #[default]
    None,
    /// Sources in [`NftSet::LocalPodCidrs`] (ClusterCIDR and NodeCIDR modes).
    Cidrs,
    /// Packets that came in on this bridge (BridgeInterface mode).
    BridgeInterface(String),
    /// Packets that came in on an interface whose name starts with this
    /// (InterfaceNamePrefix mode).
    InterfaceNamePrefix(String),
}

/// The masquerade mark: the bit kube-proxy uses (`--iptables-masquerade-bit` 14).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// The name of the proxy's nftables tables, one per [`NftFamily`].
pub const NFT_TABLE: &str = "kube-ipvs-proxy";

/// A conntrack flow to delete: those of `protocol` whose original
/// destination is `addr:port` and whose replies come from `endpoint`
/// (`conntrack -D -p udp --orig-dst ADDR --orig-port-dst PORT --reply-src ENDPOINT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowFilter {
    pub protocol: Protocol,
    pub addr: IpAddr,
    pub port: u16,
    pub endpoint: IpAddr,
}
