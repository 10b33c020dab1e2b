//! Virtual services: the typed [`Service`] and its attributes.

mod attr;
mod flags;
mod scheduler;

use std::fmt;
use std::net::IpAddr;

pub use self::attr::ServiceAttr;
pub use self::flags::{IpvsFlags, ServiceFlags};
pub use self::scheduler::Scheduler;

use crate::address::{AddressFamily, InetAddr, Protocol};
use crate::error::{Error, Result};
use crate::request::AttrSink;
use crate::stats::{Stats, Stats64};

const OBJECT: &str = "service";

/// What identifies a virtual service: an address, protocol and port, or a
/// firewall mark.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceAddress {
    /// `-t`, `-u` or `--sctp-service` `addr:port`.
    Inet {
        /// The virtual IP.
        addr: IpAddr,
        /// The transport protocol.
        protocol: Protocol,
        /// The virtual port.
        port: u16,
    },
    /// `-f mark`: packets marked by netfilter.
    Fwmark {
        /// IPv4 or IPv6 packets.
        family: AddressFamily,
        /// The firewall mark.
        mark: u32,
    },
}

impl ServiceAddress {
    /// The address family of the service.
    pub fn family(&self) -> AddressFamily {
        match self {
            Self::Inet { addr, .. } => AddressFamily::of(addr),
            Self::Fwmark { family, .. } => *family,
        }
    }

    /// The attributes that identify the service, as a delete, a
    /// destination request or a dump of destinations sends them.
    pub fn to_attrs(&self) -> Vec<ServiceAttr> {
        let mut attrs = Vec::with_capacity(4);
        self.push_attrs(&mut attrs);
        attrs
    }

    pub(crate) fn push_attrs(&self, attrs: &mut impl AttrSink<ServiceAttr>) {
        attrs.put(ServiceAttr::AddressFamily(self.family()));
        match self {
            Self::Inet {
                addr,
                protocol,
                port,
            } => {
                attrs.put(ServiceAttr::Protocol(*protocol));
                attrs.put(ServiceAttr::Address(InetAddr::from(*addr)));
                attrs.put(ServiceAttr::Port(*port));
            }
            Self::Fwmark { mark, .. } => attrs.put(ServiceAttr::Fwmark(*mark)),
        }
    }

    /// Reads the identifying attributes. Like the kernel, a firewall mark
    /// wins over an address.
    pub fn from_attrs(attrs: &[ServiceAttr]) -> Result<Self> {
        let mut family = None;
        let mut protocol = None;
        let mut address = None;
        let mut port = None;
        let mut fwmark = None;
        for attr in attrs {
            match attr {
                ServiceAttr::AddressFamily(v) => family = Some(*v),
                ServiceAttr::Protocol(v) => protocol = Some(*v),
                ServiceAttr::Address(v) => address = Some(*v),
                ServiceAttr::Port(v) => port = Some(*v),
                ServiceAttr::Fwmark(v) => fwmark = Some(*v),
                _ => {}
            }
        }
        let family = family.ok_or(Error::MissingAttribute {
            object: OBJECT,
            attribute: "IPVS_SVC_ATTR_AF",
        })?;
        if let Some(mark) = fwmark {
            return Ok(Self::Fwmark { family, mark });
        }
        let missing = |attribute| Error::MissingAttribute {
            object: OBJECT,
            attribute,
        };
        let protocol = protocol.ok_or_else(|| missing("IPVS_SVC_ATTR_PROTOCOL"))?;
        let address = address.ok_or_else(|| missing("IPVS_SVC_ATTR_ADDR"))?;
        let port = port.ok_or_else(|| missing("IPVS_SVC_ATTR_PORT"))?;
        let addr = address
            .to_ip(family)
            .ok_or_else(|| Error::InvalidAttribute {
                object: OBJECT,
                attribute: "IPVS_SVC_ATTR_AF",
                value: u16::from(family).to_string(),
            })?;
        Ok(Self::Inet {
            addr,
            protocol,
            port,
        })
    }

    /// The persistence netmask ipvsadm uses when none is given: a host
    /// mask (255.255.255.255, or /128).
    pub fn default_netmask(&self) -> u32 {
        match self.family() {
            AddressFamily::Inet6 => 128,
            _ => u32::MAX,
        }
    }

    fn netmask_to_wire(&self, netmask: u32) -> u32 {
        match self.family() {
            AddressFamily::Inet => u32::from_ne_bytes(netmask.to_be_bytes()),
            _ => netmask,
        }
    }

    fn netmask_from_wire(&self, raw: u32) -> u32 {
        match self.family() {
            AddressFamily::Inet => u32::from_be_bytes(raw.to_ne_bytes()),
            _ => raw,
        }
    }
}

impl fmt::Display for ServiceAddress {
    /// ipvsadm's notation: `TCP 10.0.0.1:80`, `UDP [2001:db8::1]:53`,
    /// `FWM 42`, `FWM 42 IPv6`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inet {
                addr: IpAddr::V4(addr),
                protocol,
                port,
            } => write!(f, "{protocol} {addr}:{port}"),
            Self::Inet {
                addr: IpAddr::V6(addr),
                protocol,
                port,
            } => write!(f, "{protocol} [{addr}]:{port}"),
            Self::Fwmark {
                family: AddressFamily::Inet,
                mark,
            } => write!(f, "FWM {mark}"),
            Self::Fwmark {
                family: AddressFamily::Inet6,
                mark,
            } => write!(f, "FWM {mark} IPv6"),
            Self::Fwmark { family, mark } => write!(f, "FWM {mark} {family}"),
        }
    }
}

/// A virtual service, as `ipvsadm -A` creates it and `ipvsadm -Ln` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// What identifies the service.
    pub address: ServiceAddress,
    /// The scheduler (`-s`).
    pub scheduler: Scheduler,
    /// `IP_VS_SVC_F_*` (`-p` sets PERSISTENT, `-o` ONEPACKET, `-b` the
    /// scheduler flags). The kernel adds HASHED to every service it holds.
    pub flags: ServiceFlags,
    /// Persistence timeout in seconds (`-p`).
    pub timeout: u32,
    /// Persistence netmask (`-M`): for IPv4 the mask as an integer
    /// (255.255.255.0 is `0xffff_ff00`), for IPv6 a prefix length.
    pub netmask: u32,
    /// Persistence engine (`--pe`), e.g. "sip".
    pub pe_name: Option<String>,
    /// 32-bit counters, in dumps only.
    pub stats: Option<Stats>,
    /// 64-bit counters, in dumps only.
    pub stats64: Option<Stats64>,
}

impl Service {
    /// A service on `addr:port` with no persistence.
    pub fn new(addr: IpAddr, protocol: Protocol, port: u16, scheduler: Scheduler) -> Self {
        Self::with_address(
            ServiceAddress::Inet {
                addr,
                protocol,
                port,
            },
            scheduler,
        )
    }

    /// A firewall-mark service with no persistence.
    pub fn fwmark(family: AddressFamily, mark: u32, scheduler: Scheduler) -> Self {
        Self::with_address(ServiceAddress::Fwmark { family, mark }, scheduler)
    }

    /// A service with ipvsadm's defaults: no flags, no timeout, a host
    /// netmask.
    pub fn with_address(address: ServiceAddress, scheduler: Scheduler) -> Self {
        let netmask = address.default_netmask();
        Self {
            address,
            scheduler,
            flags: ServiceFlags::empty(),
            timeout: 0,
            netmask,
            pe_name: None,
            stats: None,
            stats64: None,
        }
    }

    /// Makes the service persistent for `timeout` seconds (ipvsadm `-p`).
    pub fn persistent(mut self, timeout: u32) -> Self {
        self.flags |= ServiceFlags::PERSISTENT;
        self.timeout = timeout;
        self
    }

    /// The attributes in the order the kernel and ipvsadm write them.
    pub fn to_attrs(&self) -> Vec<ServiceAttr> {
        let mut attrs = Vec::with_capacity(12);
        self.push_attrs(&mut attrs);
        attrs
    }

    /// [`Service::to_attrs`], into a vector or straight into a request.
    pub(crate) fn push_attrs(&self, attrs: &mut impl AttrSink<ServiceAttr>) {
        self.address.push_attrs(attrs);
        attrs.put(ServiceAttr::SchedulerName(
            self.scheduler.as_str().to_owned(),
        ));
        if let Some(pe_name) = &self.pe_name {
            attrs.put(ServiceAttr::PersistenceEngine(pe_name.clone()));
        }
        attrs.put(ServiceAttr::Flags(IpvsFlags::all(self.flags)));
        attrs.put(ServiceAttr::Timeout(self.timeout));
        attrs.put(ServiceAttr::Netmask(
            self.address.netmask_to_wire(self.netmask),
        ));
        if let Some(stats) = &self.stats {
            attrs.put(ServiceAttr::Stats(stats.to_attrs()));
        }
        if let Some(stats64) = &self.stats64 {
            attrs.put(ServiceAttr::Stats64(stats64.to_attrs()));
        }
    }

    /// Builds a service from a full set of attributes (a dump entry or an
    /// add request); a missing or inconsistent attribute is an error that
    /// names it.
    pub fn from_attrs(attrs: &[ServiceAttr]) -> Result<Self> {
        let address = ServiceAddress::from_attrs(attrs)?;
        let mut scheduler = None;
        let mut flags = None;
        let mut timeout = None;
        let mut netmask = None;
        let mut pe_name = None;
        let mut stats = None;
        let mut stats64 = None;
        for attr in attrs {
            match attr {
                ServiceAttr::SchedulerName(name) => {
                    scheduler = Some(Scheduler::from(name.as_str()))
                }
                ServiceAttr::Flags(v) => flags = Some(v.flags & v.mask),
                ServiceAttr::Timeout(v) => timeout = Some(*v),
                ServiceAttr::Netmask(v) => netmask = Some(address.netmask_from_wire(*v)),
                ServiceAttr::PersistenceEngine(name) => pe_name = Some(name.clone()),
                ServiceAttr::Stats(v) => stats = Some(Stats::from_attrs(v)),
                ServiceAttr::Stats64(v) => stats64 = Some(Stats64::from_attrs(v)),
                _ => {}
            }
        }
        let missing = |attribute| Error::MissingAttribute {
            object: OBJECT,
            attribute,
        };
        Ok(Self {
            scheduler: scheduler.ok_or_else(|| missing("IPVS_SVC_ATTR_SCHED_NAME"))?,
            flags: flags.ok_or_else(|| missing("IPVS_SVC_ATTR_FLAGS"))?,
            timeout: timeout.ok_or_else(|| missing("IPVS_SVC_ATTR_TIMEOUT"))?,
            netmask: netmask.ok_or_else(|| missing("IPVS_SVC_ATTR_NETMASK"))?,
            address,
            pe_name,
            stats,
            stats64,
        })
    }
}

impl TryFrom<&[ServiceAttr]> for Service {
    type Error = Error;

    fn try_from(attrs: &[ServiceAttr]) -> Result<Self> {
        Self::from_attrs(attrs)
    }
}

impl From<&Service> for Vec<ServiceAttr> {
    fn from(service: &Service) -> Self {
        service.to_attrs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_ipvsadm() {
        let v4 = Service::new(
            "10.0.0.1".parse().unwrap(),
            Protocol::Tcp,
            80,
            Scheduler::RoundRobin,
        );
        assert_eq!(v4.netmask, 0xffff_ffff);
        let v6 = Service::new(
            "2001:db8::1".parse().unwrap(),
            Protocol::Tcp,
            80,
            Scheduler::RoundRobin,
        );
        assert_eq!(v6.netmask, 128);
        assert_eq!(v6.flags, ServiceFlags::empty());
        assert_eq!(v6.timeout, 0);
    }

    #[test]
    fn ipv4_netmask_is_network_order_on_the_wire() {
        let mut service = Service::new(
            "10.0.0.2".parse().unwrap(),
            Protocol::Udp,
            53,
            Scheduler::WeightedRoundRobin,
        );
        service.netmask = 0xffff_ff00;
        let raw = service
            .to_attrs()
            .into_iter()
            .find_map(|attr| match attr {
                ServiceAttr::Netmask(raw) => Some(raw),
                _ => None,
            })
            .unwrap();
        assert_eq!(raw.to_ne_bytes(), [0xff, 0xff, 0xff, 0x00]);
    }

    #[test]
    fn missing_attributes_are_named() {
        struct Case {
            name: &'static str,
            drop: fn(&ServiceAttr) -> bool,
            attribute: &'static str,
        }
        let cases = [
            Case {
                name: "no family",
                drop: |a| matches!(a, ServiceAttr::AddressFamily(_)),
                attribute: "IPVS_SVC_ATTR_AF",
            },
            Case {
                name: "no protocol",
                drop: |a| matches!(a, ServiceAttr::Protocol(_)),
                attribute: "IPVS_SVC_ATTR_PROTOCOL",
            },
            Case {
                name: "no address",
                drop: |a| matches!(a, ServiceAttr::Address(_)),
                attribute: "IPVS_SVC_ATTR_ADDR",
            },
            Case {
                name: "no port",
                drop: |a| matches!(a, ServiceAttr::Port(_)),
                attribute: "IPVS_SVC_ATTR_PORT",
            },
            Case {
                name: "no scheduler",
                drop: |a| matches!(a, ServiceAttr::SchedulerName(_)),
                attribute: "IPVS_SVC_ATTR_SCHED_NAME",
            },
            Case {
                name: "no flags",
                drop: |a| matches!(a, ServiceAttr::Flags(_)),
                attribute: "IPVS_SVC_ATTR_FLAGS",
            },
            Case {
                name: "no timeout",
                drop: |a| matches!(a, ServiceAttr::Timeout(_)),
                attribute: "IPVS_SVC_ATTR_TIMEOUT",
            },
            Case {
                name: "no netmask",
                drop: |a| matches!(a, ServiceAttr::Netmask(_)),
                attribute: "IPVS_SVC_ATTR_NETMASK",
            },
        ];
        let service = Service::new(
            "10.0.0.1".parse().unwrap(),
            Protocol::Tcp,
            80,
            Scheduler::RoundRobin,
        );
        for case in cases {
            let attrs: Vec<_> = service
                .to_attrs()
                .into_iter()
                .filter(|a| !(case.drop)(a))
                .collect();
            match Service::from_attrs(&attrs) {
                Err(Error::MissingAttribute { attribute, .. }) => {
                    assert_eq!(attribute, case.attribute, "{}", case.name)
                }
                other => panic!("{}: expected a missing attribute, got {other:?}", case.name),
            }
        }
    }

    #[test]
    fn an_inet_service_of_an_unknown_family_is_invalid() {
        let attrs = [
            ServiceAttr::AddressFamily(AddressFamily::Other(7)),
            ServiceAttr::Protocol(Protocol::Tcp),
            ServiceAttr::Address(InetAddr::default()),
            ServiceAttr::Port(80),
        ];
        assert!(matches!(
            ServiceAddress::from_attrs(&attrs),
            Err(Error::InvalidAttribute {
                attribute: "IPVS_SVC_ATTR_AF",
                ..
            })
        ));
    }

    #[test]
    fn display_matches_ipvsadm() {
        let cases = [
            (
                Service::new(
                    "10.0.0.1".parse().unwrap(),
                    Protocol::Tcp,
                    80,
                    Scheduler::RoundRobin,
                )
                .address,
                "TCP 10.0.0.1:80",
            ),
            (
                Service::new(
                    "2001:db8::1".parse().unwrap(),
                    Protocol::Udp,
                    53,
                    Scheduler::RoundRobin,
                )
                .address,
                "UDP [2001:db8::1]:53",
            ),
            (
                ServiceAddress::Fwmark {
                    family: AddressFamily::Inet,
                    mark: 42,
                },
                "FWM 42",
            ),
            (
                ServiceAddress::Fwmark {
                    family: AddressFamily::Inet6,
                    mark: 42,
                },
                "FWM 42 IPv6",
            ),
        ];
        for (address, text) in cases {
            assert_eq!(address.to_string(), text);
        }
    }
}
