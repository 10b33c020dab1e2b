//! The pure heart of reconciliation: the ops that turn one mirrored virtual
//! server into the desired one.

use std::collections::HashMap;

use crate::desired::{DesiredVirtualServer, Op, RealServer, RealServerKey, VirtualServerKey};

use super::mirror::MirroredVirtualServer;

/// Appends to `ops` what turns `current` into `desired` for the virtual
/// server `key`, in kernel order: a virtual server before its real servers.
///
/// Settings changes are updates (SET), never delete and add, which would drop
/// every connection; deleting a virtual server takes its real servers with it.
/// Real servers are emitted in key order so a sync's ops are deterministic.
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
            let wanted_keys: HashMap<RealServerKey, u32> =
                wanted.iter().map(|rs| (rs.key, rs.weight)).collect();
            let mut extra: Vec<RealServerKey> = have
                .real_servers
                .keys()
                .filter(|rs| !wanted_keys.contains_key(rs))
                .copied()
                .collect();
            extra.sort_unstable();
            ops.extend(extra.into_iter().map(|rs| Op::DeleteRealServer(key, rs)));
            for real_server in wanted {
                match have.real_servers.get(&real_server.key) {
                    None => ops.push(Op::AddRealServer(key, real_server)),
                    Some(&weight) if weight != real_server.weight => {
                        ops.push(Op::UpdateRealServer(key, real_server))
                    }
                    Some(_) => {}
                }
            }
        }
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
    use crate::desired::{Protocol, VirtualServer};

    fn key() -> VirtualServerKey {
        VirtualServerKey {
            addr: "10.96.0.10".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        }
    }

    fn server(scheduler: &str, persistence: Option<u32>) -> VirtualServer {
        VirtualServer {
            key: key(),
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

    fn mirrored(server: VirtualServer, real_servers: &[RealServer]) -> MirroredVirtualServer {
        MirroredVirtualServer {
            server,
            real_servers: real_servers.iter().map(|r| (r.key, r.weight)).collect(),
        }
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
                "real servers: delete extra, update weight, add missing",
                Some(desired(rr.clone(), &[rs(3, 1), rs(2, 5)])),
                Some(mirrored(rr.clone(), &[rs(1, 1), rs(2, 1)])),
                vec![
                    Op::DeleteRealServer(key(), rs(1, 1).key),
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
}
