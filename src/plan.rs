//! The desired state as `ipvsadm -Sn` would print it once synced, so that an
//! operator can check a node with
//! `diff <(kube-ipvs-proxy plan | grep -v '^#' | sort) <(ipvsadm -Sn | sort)`.
//! Real servers draining after their endpoint left (`-w 0`) are in the
//! kernel but not in the plan: add `| grep -v ' -w 0$'` on the kernel side.
//!
//! Every line not starting with `#` is in ipvsadm's save syntax. Captured
//! from Debian bookworm's ipvsadm v1.31 on kernel 6.1.0-56 (`ipvsadm -Sn`
//! after adding these by hand):
//!
//! ```text
//! -A -t 10.0.0.1:80 -s rr -p 10800
//! -a -t 10.0.0.1:80 -r 10.1.0.1:8080 -m -w 1
//! -A -t 10.0.0.3:443 -s rr -p 60 -M 255.255.255.0
//! -A --sctp-service 10.0.0.2:9 -s lc
//! -a --sctp-service 10.0.0.2:9 -r 10.1.0.5:9 -m -w 1
//! -A -t [fd00::3]:443 -s wrr -p 300
//! -A -u [fd00::1]:53 -s sh
//! -a -u [fd00::1]:53 -r [fd00::2]:53 -m -w 1
//! ```
//!
//! `-M` appears only for a netmask other than /32 (/128 for IPv6 prints
//! nothing either); the proxy always uses host netmasks, so never prints it.
//! `#` lines carry what `ipvsadm` cannot show: a header, the service each
//! block belongs to, conflicts, and one line per VIP as the kernel will hold
//! it ([`Vips`]): `# <interface> <address>` for an address on the dummy
//! interface, or `# local <address> dev lo table local proto 75` for a local
//! route, which `ip route show table local proto 75` lists (`ip -6 route`
//! for IPv6).

use std::collections::{BTreeSet, HashMap};
use std::fmt::{self, Write};
use std::net::IpAddr;

use crate::desired::{
    ClaimRank, NftElement, NftFamily, ServiceDesired, ServiceName, VirtualServerKey,
};
use crate::kernel::link::ROUTE_PROTOCOL;

/// Where the VIPs go, as `--ipvs-vip-mode` binds them (see
/// [`crate::kernel::link`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vips<'a> {
    /// Addresses on the dummy interface of this name (`address`).
    OnInterface(&'a str),
    /// `local` routes in table local through `lo` (`route`).
    LocalRoutes,
}

impl Vips<'_> {
    /// What the plan's VIP lines are, for its first line.
    fn heading(self) -> String {
        match self {
            Vips::OnInterface(interface) => format!("the addresses on {interface}"),
            Vips::LocalRoutes => format!(
                "the VIPs as local routes (`ip route show table local proto {ROUTE_PROTOCOL}`, `ip -6` for IPv6)"
            ),
        }
    }

    /// One VIP's `#` line: the interface and the address, or the route as
    /// `ip route` prints it.
    fn write_line(self, addr: IpAddr, out: &mut impl Write) -> fmt::Result {
        match self {
            Vips::OnInterface(interface) => writeln!(out, "# {interface} {addr}"),
            Vips::LocalRoutes => {
                writeln!(
                    out,
                    "# local {addr} dev lo table local proto {ROUTE_PROTOCOL}"
                )
            }
        }
    }
}

impl<'a> From<&'a str> for Vips<'a> {
    fn from(interface: &'a str) -> Self {
        Vips::OnInterface(interface)
    }
}

/// Writes the plan for `desired` (in any order; the output is sorted by
/// service rank (see [`ClaimRank`]), then by virtual server and real server).
///
/// A virtual server wanted by two services is printed for the one that
/// ranks first (the older, see [`ClaimRank`]) and noted as a conflict under
/// the other: the kernel can hold it once.
pub fn render_into<'a>(
    desired: impl IntoIterator<Item = (&'a ServiceName, &'a ServiceDesired)>,
    vips: Vips<'_>,
    out: &mut impl Write,
) -> fmt::Result {
    let mut services: Vec<(&ServiceName, &ServiceDesired)> = desired.into_iter().collect();
    services.sort_by_cached_key(|(name, svc)| ClaimRank::new(name, svc.created));

    writeln!(
        out,
        "# kube-ipvs-proxy plan: IPVS table as `ipvsadm -Sn` prints it, then {}",
        vips.heading()
    )?;
    let mut owners: HashMap<VirtualServerKey, &ServiceName> = HashMap::new();
    let mut addresses: BTreeSet<IpAddr> = BTreeSet::new();
    for (name, svc) in services {
        writeln!(out, "# service {name}")?;
        let mut virtual_servers: Vec<_> = svc.virtual_servers.iter().collect();
        virtual_servers.sort_by_key(|vs| vs.server.key);
        for vs in virtual_servers {
            let key = vs.server.key;
            if let Some(owner) = owners.get(&key) {
                writeln!(out, "# conflict: {key} is already {owner}'s")?;
                continue;
            }
            owners.insert(key, name);
            let service = ServiceArg(key);
            write!(out, "-A {service} -s {}", vs.server.scheduler)?;
            if let Some(timeout) = vs.server.persistence {
                write!(out, " -p {timeout}")?;
            }
            writeln!(out)?;
            let mut real_servers: Vec<_> = vs.real_servers.iter().collect();
            real_servers.sort_by_key(|rs| rs.key);
            for rs in real_servers {
                writeln!(out, "-a {service} -r {} -m -w {}", rs.key, rs.weight)?;
            }
        }
        addresses.extend(&svc.bind_addrs);
    }
    for addr in addresses {
        vips.write_line(addr, out)?;
    }
    Ok(())
}

/// Writes the packet path's side of the plan, on `#` lines: the tables'
/// fixed part (`table`, in `nft` syntax, as `nft list table` prints it less
/// the elements), every element of their sets as the `nft` command that
/// adds it, sorted by table (`ip`, then `ip6`) and set, then translate's
/// warnings (a refused address, a scheduler fallback).
pub fn render_packet_path<'a>(
    table: &str,
    elements: impl IntoIterator<Item = &'a NftElement>,
    warnings: impl IntoIterator<Item = impl fmt::Display>,
    out: &mut impl Write,
) -> fmt::Result {
    let elements: BTreeSet<(NftFamily, &NftElement)> =
        elements.into_iter().map(|e| (e.family(), e)).collect();
    writeln!(out, "# nftables: the proxy's table, without elements")?;
    for line in table.lines() {
        writeln!(out, "# {line}")?;
    }
    writeln!(
        out,
        "# nftables: the elements of the proxy's sets (`nft list table ip {}` shows them; ip6 for IPv6)",
        crate::desired::NFT_TABLE
    )?;
    for (_, element) in elements {
        writeln!(out, "# nft {element}")?;
    }
    for warning in warnings {
        writeln!(out, "# warning: {warning}")?;
    }
    Ok(())
}

/// [`render_into`] a new string.
pub fn render<'a, 'v>(
    desired: impl IntoIterator<Item = (&'a ServiceName, &'a ServiceDesired)>,
    vips: impl Into<Vips<'v>>,
) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = render_into(desired, vips.into(), &mut out);
    out
}

/// A virtual server as ipvsadm names it: `-t 10.0.0.1:80`, `-u [fd00::1]:53`.
struct ServiceArg(VirtualServerKey);

impl fmt::Display for ServiceArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let VirtualServerKey {
            addr,
            protocol,
            port,
        } = self.0;
        let flag = protocol.ipvsadm_flag();
        match addr {
            IpAddr::V4(a) => write!(f, "{flag} {a}:{port}"),
            IpAddr::V6(a) => write!(f, "{flag} [{a}]:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::desired::{
        DesiredVirtualServer, Protocol, RealServer, RealServerKey, VirtualServer,
    };

    fn vs(
        protocol: Protocol,
        addr: &str,
        port: u16,
        scheduler: &str,
        persistence: Option<u32>,
        reals: &[(&str, u16)],
    ) -> DesiredVirtualServer {
        DesiredVirtualServer {
            server: VirtualServer {
                key: VirtualServerKey {
                    addr: addr.parse().unwrap(),
                    protocol,
                    port,
                },
                scheduler: Arc::from(scheduler),
                persistence,
            },
            real_servers: reals
                .iter()
                .map(|(a, p)| RealServer {
                    key: RealServerKey {
                        addr: a.parse().unwrap(),
                        port: *p,
                    },
                    weight: 1,
                })
                .collect(),
        }
    }

    fn bind(addrs: &[&str]) -> Vec<IpAddr> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    /// The same virtual servers as the capture in the module docs (less the
    /// /24 netmask the proxy never uses) render to exactly its lines.
    #[test]
    fn lines_match_the_ipvsadm_capture() {
        let a = ServiceName::new("default", "a");
        let b = ServiceName::new("kube-system", "b");
        let svc_a = ServiceDesired {
            virtual_servers: vec![
                vs(
                    Protocol::Sctp,
                    "10.0.0.2",
                    9,
                    "lc",
                    None,
                    &[("10.1.0.5", 9)],
                ),
                vs(
                    Protocol::Tcp,
                    "10.0.0.1",
                    80,
                    "rr",
                    Some(10800),
                    &[("10.1.0.1", 8080)],
                ),
            ],
            bind_addrs: bind(&["10.0.0.1", "10.0.0.2"]),
            ..Default::default()
        };
        let svc_b = ServiceDesired {
            virtual_servers: vec![
                vs(Protocol::Udp, "fd00::1", 53, "sh", None, &[("fd00::2", 53)]),
                vs(Protocol::Tcp, "fd00::3", 443, "wrr", Some(300), &[]),
            ],
            bind_addrs: bind(&["fd00::1", "fd00::3"]),
            ..Default::default()
        };
        let desired = HashMap::from([(b.clone(), svc_b), (a.clone(), svc_a)]);
        let plan = render(&desired, "kube-ipvs0");
        assert_eq!(
            plan,
            "\
# kube-ipvs-proxy plan: IPVS table as `ipvsadm -Sn` prints it, then the addresses on kube-ipvs0
# service default/a
-A -t 10.0.0.1:80 -s rr -p 10800
-a -t 10.0.0.1:80 -r 10.1.0.1:8080 -m -w 1
-A --sctp-service 10.0.0.2:9 -s lc
-a --sctp-service 10.0.0.2:9 -r 10.1.0.5:9 -m -w 1
# service kube-system/b
-A -u [fd00::1]:53 -s sh
-a -u [fd00::1]:53 -r [fd00::2]:53 -m -w 1
-A -t [fd00::3]:443 -s wrr -p 300
# kube-ipvs0 10.0.0.1
# kube-ipvs0 10.0.0.2
# kube-ipvs0 fd00::1
# kube-ipvs0 fd00::3
"
        );

        // What `diff <(plan | grep -v '^#' | sort) <(ipvsadm -Sn | sort)` compares.
        let mut ours: Vec<&str> = plan.lines().filter(|l| !l.starts_with('#')).collect();
        let mut captured: Vec<&str> = [
            "-A -t 10.0.0.1:80 -s rr -p 10800",
            "-a -t 10.0.0.1:80 -r 10.1.0.1:8080 -m -w 1",
            "-A --sctp-service 10.0.0.2:9 -s lc",
            "-a --sctp-service 10.0.0.2:9 -r 10.1.0.5:9 -m -w 1",
            "-A -t [fd00::3]:443 -s wrr -p 300",
            "-A -u [fd00::1]:53 -s sh",
            "-a -u [fd00::1]:53 -r [fd00::2]:53 -m -w 1",
        ]
        .to_vec();
        ours.sort_unstable();
        captured.sort_unstable();
        assert_eq!(ours, captured);
    }

    #[test]
    fn real_servers_sorted_and_shared_addresses_listed_once() {
        let a = ServiceName::new("default", "a");
        let b = ServiceName::new("default", "b");
        let svc_a = ServiceDesired {
            virtual_servers: vec![vs(
                Protocol::Tcp,
                "203.0.113.7",
                80,
                "rr",
                None,
                &[("10.244.2.1", 80), ("10.244.1.1", 80)],
            )],
            bind_addrs: bind(&["203.0.113.7"]),
            ..Default::default()
        };
        let svc_b = ServiceDesired {
            virtual_servers: vec![vs(Protocol::Tcp, "203.0.113.7", 443, "rr", None, &[])],
            bind_addrs: bind(&["203.0.113.7"]),
            ..Default::default()
        };
        let plan = render([(&b, &svc_b), (&a, &svc_a)], "kube-ipvs0");
        assert_eq!(
            plan,
            "\
# kube-ipvs-proxy plan: IPVS table as `ipvsadm -Sn` prints it, then the addresses on kube-ipvs0
# service default/a
-A -t 203.0.113.7:80 -s rr
-a -t 203.0.113.7:80 -r 10.244.1.1:80 -m -w 1
-a -t 203.0.113.7:80 -r 10.244.2.1:80 -m -w 1
# service default/b
-A -t 203.0.113.7:443 -s rr
# kube-ipvs0 203.0.113.7
"
        );
    }

    #[test]
    fn conflicting_virtual_server_printed_once_and_noted() {
        let a = ServiceName::new("default", "a");
        let b = ServiceName::new("default", "b");
        let want = |real: &str| ServiceDesired {
            virtual_servers: vec![vs(
                Protocol::Udp,
                "203.0.113.7",
                53,
                "rr",
                None,
                &[(real, 53)],
            )],
            bind_addrs: bind(&["203.0.113.7"]),
            ..Default::default()
        };
        let (svc_a, svc_b) = (want("10.244.1.1"), want("10.244.2.2"));
        let plan = render([(&b, &svc_b), (&a, &svc_a)], "ipvs-test");
        assert_eq!(
            plan,
            "\
# kube-ipvs-proxy plan: IPVS table as `ipvsadm -Sn` prints it, then the addresses on ipvs-test
# service default/a
-A -u 203.0.113.7:53 -s rr
-a -u 203.0.113.7:53 -r 10.244.1.1:53 -m -w 1
# service default/b
# conflict: UDP/203.0.113.7:53 is already default/a's
# ipvs-test 203.0.113.7
"
        );

        // Dated, the older holds it whatever its name, as in the kernel.
        let (svc_a, svc_b) = (
            ServiceDesired {
                created: Some(2_000),
                ..svc_a
            },
            ServiceDesired {
                created: Some(1_000),
                ..svc_b
            },
        );
        let plan = render([(&a, &svc_a), (&b, &svc_b)], "ipvs-test");
        assert_eq!(
            plan,
            "\
# kube-ipvs-proxy plan: IPVS table as `ipvsadm -Sn` prints it, then the addresses on ipvs-test
# service default/b
-A -u 203.0.113.7:53 -s rr
-a -u 203.0.113.7:53 -r 10.244.2.2:53 -m -w 1
# service default/a
# conflict: UDP/203.0.113.7:53 is already default/b's
# ipvs-test 203.0.113.7
"
        );
    }

    #[test]
    fn route_mode_lists_each_vip_as_the_local_route_that_holds_it() {
        let name = ServiceName::new("default", "a");
        let svc = ServiceDesired {
            virtual_servers: vec![vs(Protocol::Tcp, "10.0.0.1", 80, "rr", None, &[])],
            bind_addrs: bind(&["10.0.0.1", "fd00::1"]),
            ..Default::default()
        };
        let plan = render([(&name, &svc)], Vips::LocalRoutes);
        assert_eq!(
            plan,
            "\
# kube-ipvs-proxy plan: IPVS table as `ipvsadm -Sn` prints it, then the VIPs as local routes (`ip route show table local proto 75`, `ip -6` for IPv6)
# service default/a
-A -t 10.0.0.1:80 -s rr
# local 10.0.0.1 dev lo table local proto 75
# local fd00::1 dev lo table local proto 75
"
        );
    }

    #[test]
    fn packet_path_elements_are_nft_commands_sorted_by_table_and_set_then_warnings() {
        use crate::desired::{NftKey, NftSet};
        let vip: IpAddr = "10.96.0.10".parse().unwrap();
        let elements = [
            NftElement {
                set: NftSet::ServiceIps,
                key: NftKey::Addr(vip),
            },
            NftElement {
                set: NftSet::FirewallAllow,
                key: NftKey::AddrProtoPortSource(
                    "203.0.113.20".parse().unwrap(),
                    Protocol::Tcp,
                    80,
                    "192.0.2.0/24".parse().unwrap(),
                ),
            },
            NftElement {
                set: NftSet::ClusterIps,
                key: NftKey::AddrProtoPort(vip, Protocol::Udp, 53),
            },
            NftElement {
                set: NftSet::NodePorts,
                key: NftKey::ProtoPort(NftFamily::Ip, Protocol::Sctp, 30001),
            },
            NftElement {
                set: NftSet::NodePorts,
                key: NftKey::ProtoPort(NftFamily::Ip6, Protocol::Sctp, 30001),
            },
            NftElement {
                set: NftSet::ClusterIps,
                key: NftKey::AddrProtoPort("fd00::10".parse().unwrap(), Protocol::Udp, 53),
            },
        ];
        let mut out = String::new();
        let table = "table ip kube-ipvs-proxy {\n}\n";
        render_packet_path(table, &elements, ["Service default/x: a warning"], &mut out).unwrap();
        assert_eq!(
            out,
            "\
# nftables: the proxy's table, without elements
# table ip kube-ipvs-proxy {
# }
# nftables: the elements of the proxy's sets (`nft list table ip kube-ipvs-proxy` shows them; ip6 for IPv6)
# nft add element ip kube-ipvs-proxy cluster-ips { 10.96.0.10 . udp . 53 }
# nft add element ip kube-ipvs-proxy nodeports { sctp . 30001 }
# nft add element ip kube-ipvs-proxy service-ips { 10.96.0.10 }
# nft add element ip kube-ipvs-proxy firewall-allow { 203.0.113.20 . tcp . 80 . 192.0.2.0/24 }
# nft add element ip6 kube-ipvs-proxy cluster-ips { fd00::10 . udp . 53 }
# nft add element ip6 kube-ipvs-proxy nodeports { sctp . 30001 }
# warning: Service default/x: a warning
"
        );
    }

    #[test]
    fn empty_desired_state_is_the_header_alone() {
        let plan = render(std::iter::empty(), "kube-ipvs0");
        assert_eq!(
            plan,
            "# kube-ipvs-proxy plan: IPVS table as `ipvsadm -Sn` prints it, then the addresses on kube-ipvs0\n"
        );
    }
}
