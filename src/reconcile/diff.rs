//! The pure heart of reconciliation: the ops that turn one mirrored virtual
//! server into the desired one.

use crate::desired::{DesiredVirtualServer, Op, Protocol, RealServer, VirtualServerKey};

use super::mirror::MirroredVirtualServer;

/// Appends to `ops` what turns `current` into `desired` for the virtual
/// server `key`, in kernel order: a virtual server before its real servers.
///
/// Settings changes are updates (SET), never delete and add, which would drop
/// every connection; deleting a virtual server takes its real servers with it.
/// Real servers are emitted in key order so a sync's ops are deterministic.
///
/// A real server no longer wanted on a TCP virtual server terminates
/// gracefully, as upstream's IPVS mode does: first its weight goes to 0, so
/// it takes no new connections; it is deleted once a dump has shown it idle
/// (no active or inactive connections). A returning endpoint gets its weight
/// back. UDP and SCTP real servers are deleted at once (upstream's
/// `IsRsGracefulTerminationNeeded`).
pub(crate) fn diff_virtual_server(
    key: VirtualServerKey,
    desired: Option<&DesiredVirtualServer>,
    current: Option<&MirroredVirtualServer>,
    ops: &mut Vec<Op>,
) {
    match (desired, current) {
        (None, None) => {}
        (None, Some(_)) => ops.push(Op::DeleteVirtualServer(key)),
        (Some(want), None) => {
            ops.push(Op::AddVirtualServer(want.server.clone()));
            for real_server in wanted_real_servers(want) {
                ops.push(Op::AddRealServer(key, real_server));
            }
        }
        (Some(want), Some(have)) => {
            if want.server != have.server {
                ops.push(Op::UpdateVirtualServer(want.server.clone()));
            }
            let wanted = wanted_real_servers(want);
            // Both in key order: one merge walk finds the extra ones.
            let mut wanted_keys = wanted.iter().map(|rs| rs.key).peekable();
            for rs in have.real_servers() {
                while wanted_keys.next_if(|wanted| *wanted < rs.key).is_some() {}
                if wanted_keys.peek() == Some(&rs.key) {
                    continue;
                }
                if !drains(key) {
                    ops.push(Op::DeleteRealServer(key, rs.key));
                } else if rs.weight > 0 {
                    let draining = RealServer {
                        key: rs.key,
                        weight: 0,
                    };
                    ops.push(Op::UpdateRealServer(key, draining));
                } else if rs.connections == Some(0) {
                    ops.push(Op::DeleteRealServer(key, rs.key));
                }
                // Otherwise still draining, or not dumped since it began.
            }
            for real_server in wanted {
                match have.real_server(&real_server.key) {
                    None => ops.push(Op::AddRealServer(key, real_server)),
                    Some(rs) if rs.weight != real_server.weight => {
                        ops.push(Op::UpdateRealServer(key, real_server))
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

/// Whether real servers leaving `key` drain before they are deleted.
fn drains(key: VirtualServerKey) -> bool {
    match key.protocol {
        Protocol::Tcp => true,
        Protocol::Udp | Protocol::Sctp => false,
    }
}

/// The desired real servers, one per key (the first wins), in key order.
fn wanted_real_servers(want: &DesiredVirtualServer) -> Vec<RealServer> {
    let mut real_servers = want.real_servers.clone();
    // A stable sort keeps the first of duplicates first, so dedup keeps it.
    real_servers.sort_by_key(|rs| rs.key);
    real_servers.dedup_by_key(|rs| rs.key);
    real_servers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{Protocol, RealServerKey, VirtualServer};
    use crate::reconcile::mirror::MirroredRealServer;

    fn key() -> VirtualServerKey {
        key_on(Protocol::Tcp)
    }

    fn key_on(protocol: Protocol) -> VirtualServerKey {
        VirtualServerKey {
            addr: "10.96.0.10".parse().unwrap(),
            protocol,
            port: 80,
        }
    }

    fn server(scheduler: &str, persistence: Option<u32>) -> VirtualServer {
        server_on(Protocol::Tcp, scheduler, persistence)
    }

    fn server_on(protocol: Protocol, scheduler: &str, persistence: Option<u32>) -> VirtualServer {
        VirtualServer {
            key: key_on(protocol),
            scheduler: scheduler.into(),
            persistence,
        }
    }

    fn rs(last_octet: u8, weight: u32) -> RealServer {
        RealServer {
            key: RealServerKey {
                addr: format!("10.244.0.{last_octet}").parse().unwrap(),
                port: 8080,
            },
            weight,
        }
    }

    fn desired(server: VirtualServer, real_servers: &[RealServer]) -> DesiredVirtualServer {
        DesiredVirtualServer {
            server,
            real_servers: real_servers.to_vec(),
        }
    }

    /// Mirrored after writes: connections unknown.
    fn mirrored(server: VirtualServer, real_servers: &[RealServer]) -> MirroredVirtualServer {
        let real_servers = real_servers.iter().map(|r| MirroredRealServer {
            key: r.key,
            weight: r.weight,
            connections: None,
        });
        MirroredVirtualServer::new(server, real_servers)
    }

    /// Mirrored from a dump: each real server with its connection count.
    fn dumped(server: VirtualServer, real_servers: &[(RealServer, u32)]) -> MirroredVirtualServer {
        let real_servers = real_servers.iter().map(|&(r, n)| MirroredRealServer {
            key: r.key,
            weight: r.weight,
            connections: Some(n),
        });
        MirroredVirtualServer::new(server, real_servers)
    }

    #[test]
    fn diff_cases() {
        let rr = server("rr", None);
        type Case = (
            &'static str,
            Option<DesiredVirtualServer>,
            Option<MirroredVirtualServer>,
            Vec<Op>,
        );
        let cases: Vec<Case> = vec![
            ("nothing wanted, nothing there", None, None, vec![]),
            (
                "missing: add it, then its real servers in key order",
                Some(desired(rr.clone(), &[rs(2, 1), rs(1, 1)])),
                None,
                vec![
                    Op::AddVirtualServer(rr.clone()),
                    Op::AddRealServer(key(), rs(1, 1)),
                    Op::AddRealServer(key(), rs(2, 1)),
                ],
            ),
            (
                "unwanted: one delete, its real servers go with it",
                None,
                Some(mirrored(rr.clone(), &[rs(1, 1), rs(2, 1)])),
                vec![Op::DeleteVirtualServer(key())],
            ),
            (
                "identical: nothing",
                Some(desired(rr.clone(), &[rs(1, 1)])),
                Some(mirrored(rr.clone(), &[rs(1, 1)])),
                vec![],
            ),
            (
                "scheduler change: one update, no delete",
                Some(desired(server("lc", None), &[rs(1, 1)])),
                Some(mirrored(rr.clone(), &[rs(1, 1)])),
                vec![Op::UpdateVirtualServer(server("lc", None))],
            ),
            (
                "session affinity on: update",
                Some(desired(server("rr", Some(10800)), &[])),
                Some(mirrored(rr.clone(), &[])),
                vec![Op::UpdateVirtualServer(server("rr", Some(10800)))],
            ),
            (
                "session affinity off: update",
                Some(desired(rr.clone(), &[])),
                Some(mirrored(server("rr", Some(10800)), &[])),
                vec![Op::UpdateVirtualServer(rr.clone())],
            ),
            (
                "real servers: drain extra, update weight, add missing",
                Some(desired(rr.clone(), &[rs(3, 1), rs(2, 5)])),
                Some(mirrored(rr.clone(), &[rs(1, 1), rs(2, 1)])),
                vec![
                    Op::UpdateRealServer(key(), rs(1, 0)),
                    Op::UpdateRealServer(key(), rs(2, 5)),
                    Op::AddRealServer(key(), rs(3, 1)),
                ],
            ),
            (
                "duplicate desired real servers: the first wins",
                Some(desired(rr.clone(), &[rs(1, 3), rs(1, 7)])),
                None,
                vec![
                    Op::AddVirtualServer(rr.clone()),
                    Op::AddRealServer(key(), rs(1, 3)),
                ],
            ),
        ];
        for (name, want, have, expected) in cases {
            let mut ops = Vec::new();
            diff_virtual_server(key(), want.as_ref(), have.as_ref(), &mut ops);
            assert_eq!(ops, expected, "{name}");
        }
    }

    #[test]
    fn leaving_real_servers_drain_on_tcp_only() {
        use Protocol::{Sctp, Tcp, Udp};
        /// Protocol, the endpoints still wanted, the mirror, the ops.
        type Case = (
            &'static str,
            Protocol,
            Vec<RealServer>,
            MirroredVirtualServer,
            Vec<Op>,
        );
        let rr = |protocol| server_on(protocol, "rr", None);
        let cases: Vec<Case> = vec![
            (
                "TCP endpoint removed: weight 0, no new connections, not deleted",
                Tcp,
                vec![rs(2, 1)],
                dumped(rr(Tcp), &[(rs(1, 1), 3), (rs(2, 1), 0)]),
                vec![Op::UpdateRealServer(key_on(Tcp), rs(1, 0))],
            ),
            (
                "TCP endpoint removed while idle: still weight 0 first",
                Tcp,
                vec![],
                dumped(rr(Tcp), &[(rs(1, 1), 0)]),
                vec![Op::UpdateRealServer(key_on(Tcp), rs(1, 0))],
            ),
            (
                "draining with connections: left alone",
                Tcp,
                vec![],
                dumped(rr(Tcp), &[(rs(1, 0), 2)]),
                vec![],
            ),
            (
                "draining, not dumped since it went to weight 0: left alone",
                Tcp,
                vec![],
                mirrored(rr(Tcp), &[rs(1, 0)]),
                vec![],
            ),
            (
                "draining and idle in the last dump: deleted",
                Tcp,
                vec![],
                dumped(rr(Tcp), &[(rs(1, 0), 0)]),
                vec![Op::DeleteRealServer(key_on(Tcp), rs(1, 0).key)],
            ),
            (
                "endpoint back while draining: weight restored",
                Tcp,
                vec![rs(1, 1)],
                dumped(rr(Tcp), &[(rs(1, 0), 2)]),
                vec![Op::UpdateRealServer(key_on(Tcp), rs(1, 1))],
            ),
            (
                "UDP endpoint removed: deleted at once, connections or not",
                Udp,
                vec![],
                dumped(rr(Udp), &[(rs(1, 1), 4)]),
                vec![Op::DeleteRealServer(key_on(Udp), rs(1, 1).key)],
            ),
            (
                "SCTP endpoint removed: deleted at once",
                Sctp,
                vec![],
                mirrored(rr(Sctp), &[rs(1, 1)]),
                vec![Op::DeleteRealServer(key_on(Sctp), rs(1, 1).key)],
            ),
        ];
        for (name, protocol, wanted, have, expected) in cases {
            let want = desired(rr(protocol), &wanted);
            let mut ops = Vec::new();
            diff_virtual_server(key_on(protocol), Some(&want), Some(&have), &mut ops);
            assert_eq!(ops, expected, "{name}");
        }
    }
}
