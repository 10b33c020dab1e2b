//! The sysctls upstream kube-proxy sets for IPVS mode, with the same values.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// One sysctl the proxy wants, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    /// Relative to /proc/sys, e.g. `net/ipv4/vs/conntrack`.
    pub key: &'static str,
    pub value: &'static str,
    pub why: &'static str,
}

/// Kernel 5.9 fixed the connection-reuse bug that made upstream force
/// conn_reuse_mode=0 (kubernetes/kubernetes#93297); from then on it is left as is.
const CONN_REUSE_FIXED: (u32, u32) = (5, 9);

/// What IPVS mode needs, for a kernel of `release` (`uname -r`).
pub fn wanted(release: &str, strict_arp: bool) -> Vec<Sysctl> {
    let mut out = vec![
        Sysctl {
            key: "net/ipv4/vs/conntrack",
            value: "1",
            why: "keep conntrack entries for IPVS connections, for masquerade and policy",
        },
        Sysctl {
            key: "net/ipv4/vs/expire_nodest_conn",
            value: "1",
            why: "drop connections to a removed real server at once",
        },
        Sysctl {
            key: "net/ipv4/vs/expire_quiescent_template",
            value: "1",
            why: "let session-affinity templates of weight-0 real servers expire",
        },
        Sysctl {
            key: "net/ipv4/ip_forward",
            value: "1",
            why: "forward NATed packets to real servers",
        },
    ];
    if kernel_version(release).is_some_and(|v| v < CONN_REUSE_FIXED) {
        out.push(Sysctl {
            key: "net/ipv4/vs/conn_reuse_mode",
            value: "0",
            why: "before 5.9, mode 1 stalls reused ports for a second",
        });
    }
    if strict_arp {
        out.push(Sysctl {
            key: "net/ipv4/conf/all/arp_ignore",
            value: "1",
            why: "strict ARP: answer only for addresses on the receiving interface",
        });
        out.push(Sysctl {
            key: "net/ipv4/conf/all/arp_announce",
            value: "2",
            why: "strict ARP: never announce kube-ipvs0's addresses",
        });
    }
    out
}

fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Why a sysctl could not be set, naming it.
#[derive(Debug, thiserror::Error)]
#[error("setting sysctl {key} to {value} ({path}): {source}")]
pub struct SysctlError {
    pub key: &'static str,
    pub value: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Writes each sysctl under `root` (normally /proc/sys) whose value differs.
/// Returns the keys it changed.
pub fn apply(root: &Path, wanted: &[Sysctl]) -> Result<Vec<&'static str>, SysctlError> {
    let mut changed = Vec::new();
    for sysctl in wanted {
        let path = root.join(sysctl.key);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current.trim() == sysctl.value {
            continue;
        }
        std::fs::write(&path, sysctl.value).map_err(|source| SysctlError {
            key: sysctl.key,
            value: sysctl.value,
            path: path.clone(),
            source,
        })?;
        tracing::info!(
            key = sysctl.key,
            value = sysctl.value,
            why = sysctl.why,
            "set sysctl"
        );
        changed.push(sysctl.key);
    }
    Ok(changed)
}

/// Upstream's conntrack settings, its `--conntrack-*` flags: each zero
/// leaves the kernel's value alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConntrackSettings {
    /// nf_conntrack_max is this times the CPUs, at least `min`.
    pub max_per_core: u32,
    pub min: u32,
    pub tcp_timeout_established: Duration,
    pub tcp_timeout_close_wait: Duration,
    pub tcp_be_liberal: bool,
    pub udp_timeout: Duration,
    pub udp_timeout_stream: Duration,
}

/// nf_conntrack's hash table size, which upstream raises to a quarter of
/// nf_conntrack_max.
const CONNTRACK_HASHSIZE: &str = "module/nf_conntrack/parameters/hashsize";

impl ConntrackSettings {
    /// The sysctls (relative to /proc/sys) and values these settings ask
    /// for on a node with `cpus` CPUs, as upstream computes them.
    pub fn wanted(&self, cpus: usize) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(max) = self.max(cpus) {
            out.push(("net/netfilter/nf_conntrack_max", max.to_string()));
        }
        let timeouts = [
            (
                "net/netfilter/nf_conntrack_tcp_timeout_established",
                self.tcp_timeout_established,
            ),
            (
                "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
                self.tcp_timeout_close_wait,
            ),
            ("net/netfilter/nf_conntrack_udp_timeout", self.udp_timeout),
            (
                "net/netfilter/nf_conntrack_udp_timeout_stream",
                self.udp_timeout_stream,
            ),
        ];
        for (key, timeout) in timeouts {
            if timeout.as_secs() > 0 {
                out.push((key, timeout.as_secs().to_string()));
            }
        }
        if self.tcp_be_liberal {
            out.push(("net/netfilter/nf_conntrack_tcp_be_liberal", "1".to_owned()));
        }
        out
    }

    /// nf_conntrack_max: `max_per_core` × `cpus`, at least `min`; `None`
    /// when `max_per_core` is 0.
    fn max(&self, cpus: usize) -> Option<u64> {
        if self.max_per_core == 0 {
            return None;
        }
        let scaled = u64::from(self.max_per_core).saturating_mul(cpus as u64);
        Some(scaled.max(u64::from(self.min)))
    }

    /// Writes what [`ConntrackSettings::wanted`] asks for under `proc_sys`
    /// where it differs, and raises the hash table (under `sys`) to a
    /// quarter of nf_conntrack_max when it is smaller, as upstream does.
    /// Returns one message per failure: a node whose /sys is read-only, or
    /// whose conntrack module is not loaded yet, still runs.
    pub fn apply(&self, proc_sys: &Path, sys: &Path, cpus: usize) -> Vec<String> {
        let mut failures = Vec::new();
        for (key, value) in self.wanted(cpus) {
            let path = proc_sys.join(key);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current.trim() == value {
                continue;
            }
            match std::fs::write(&path, &value) {
                Ok(()) => tracing::info!(key, value, "set conntrack sysctl"),
                Err(error) => failures.push(format!(
                    "setting sysctl {key} to {value} ({}): {error}",
                    path.display()
                )),
            }
        }
        if let Some(max) = self.max(cpus) {
            let path = sys.join(CONNTRACK_HASHSIZE);
            let current: Option<u64> = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            let wanted = max / 4;
            if current.is_some_and(|c| c < wanted) {
                match std::fs::write(&path, wanted.to_string()) {
                    Ok(()) => tracing::info!(hashsize = wanted, "raised the conntrack hash table"),
                    Err(error) => failures.push(format!(
                        "raising {} to {wanted} (a quarter of nf_conntrack_max, as kube-proxy does): {error}; is /sys read-only?",
                        path.display()
                    )),
                }
            }
        }
        failures
    }
}

/// Upstream's warning when the node has bridges but their traffic bypasses
/// netfilter (br_netfilter not loaded, or `bridge-nf-call-iptables` off):
/// replies of a pod to a pod on the same bridge then skip conntrack and
/// IPVS, and ClusterIP traffic between pods of one node breaks. `None` when
/// there is nothing to say. `sys` and `proc_sys` are /sys and /proc/sys.
pub fn bridge_netfilter_warning(sys: &Path, proc_sys: &Path) -> Option<String> {
    let bridges: Vec<String> = std::fs::read_dir(sys.join("class/net"))
        .ok()?
        .flatten()
        .filter(|entry| entry.path().join("bridge").is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    if bridges.is_empty() {
        return None;
    }
    let key = "net/bridge/bridge-nf-call-iptables";
    match std::fs::read_to_string(proc_sys.join(key)) {
        Ok(value) if value.trim() == "1" => None,
        Ok(value) => Some(format!(
            "{key} is {} on a node with bridges ({}): traffic between pods on one bridge bypasses netfilter and IPVS; set it to 1",
            value.trim(),
            bridges.join(", ")
        )),
        Err(_) => Some(format!(
            "{key} is missing (br_netfilter is not loaded) on a node with bridges ({}): traffic between pods on one bridge bypasses netfilter and IPVS; load br_netfilter and set it to 1",
            bridges.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(release: &str, strict_arp: bool) -> Vec<&'static str> {
        wanted(release, strict_arp).iter().map(|s| s.key).collect()
    }

    #[test]
    fn conn_reuse_mode_is_forced_only_before_5_9() {
        assert!(keys("5.4.0-100-generic", false).contains(&"net/ipv4/vs/conn_reuse_mode"));
        assert!(!keys("5.9.0", false).contains(&"net/ipv4/vs/conn_reuse_mode"));
        assert!(!keys("6.1.0-56-amd64", false).contains(&"net/ipv4/vs/conn_reuse_mode"));
        assert!(!keys("garbage", false).contains(&"net/ipv4/vs/conn_reuse_mode"));
    }

    #[test]
    fn strict_arp_adds_arp_ignore_and_announce() {
        let strict = keys("6.1.0", true);
        assert!(strict.contains(&"net/ipv4/conf/all/arp_ignore"));
        assert!(strict.contains(&"net/ipv4/conf/all/arp_announce"));
        assert!(!keys("6.1.0", false).contains(&"net/ipv4/conf/all/arp_ignore"));
    }

    #[test]
    fn bridges_without_bridge_netfilter_are_reported() {
        let root = tempfile::tempdir().unwrap();
        let (sys, proc_sys) = (root.path().join("sys"), root.path().join("proc"));
        std::fs::create_dir_all(sys.join("class/net/eth0")).unwrap();
        assert_eq!(bridge_netfilter_warning(&sys, &proc_sys), None, "no bridge");

        std::fs::create_dir_all(sys.join("class/net/cbr0/bridge")).unwrap();
        let missing = bridge_netfilter_warning(&sys, &proc_sys).unwrap();
        assert!(
            missing.contains("br_netfilter is not loaded") && missing.contains("cbr0"),
            "{missing}"
        );

        std::fs::create_dir_all(proc_sys.join("net/bridge")).unwrap();
        std::fs::write(proc_sys.join("net/bridge/bridge-nf-call-iptables"), "0\n").unwrap();
        let off = bridge_netfilter_warning(&sys, &proc_sys).unwrap();
        assert!(off.contains("is 0"), "{off}");

        std::fs::write(proc_sys.join("net/bridge/bridge-nf-call-iptables"), "1\n").unwrap();
        assert_eq!(bridge_netfilter_warning(&sys, &proc_sys), None, "set to 1");
    }

    #[test]
    fn conntrack_settings_follow_upstream() {
        let defaults = ConntrackSettings {
            max_per_core: 32768,
            min: 131072,
            tcp_timeout_established: Duration::from_secs(86400),
            tcp_timeout_close_wait: Duration::from_secs(3600),
            ..ConntrackSettings::default()
        };
        assert_eq!(
            defaults.wanted(2),
            [
                ("net/netfilter/nf_conntrack_max", "131072".to_owned()),
                (
                    "net/netfilter/nf_conntrack_tcp_timeout_established",
                    "86400".to_owned()
                ),
                (
                    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
                    "3600".to_owned()
                ),
            ],
            "2 CPUs: the floor wins"
        );
        assert_eq!(defaults.wanted(8)[0].1, "262144", "8 CPUs: per core wins");
        let off = ConntrackSettings {
            tcp_be_liberal: true,
            udp_timeout: Duration::from_secs(30),
            udp_timeout_stream: Duration::from_secs(120),
            ..ConntrackSettings::default()
        };
        assert_eq!(
            off.wanted(4),
            [
                ("net/netfilter/nf_conntrack_udp_timeout", "30".to_owned()),
                (
                    "net/netfilter/nf_conntrack_udp_timeout_stream",
                    "120".to_owned()
                ),
                ("net/netfilter/nf_conntrack_tcp_be_liberal", "1".to_owned()),
            ],
            "max_per_core 0 leaves nf_conntrack_max alone"
        );

        let root = tempfile::tempdir().unwrap();
        let (proc_sys, sys) = (root.path().join("proc"), root.path().join("sys"));
        std::fs::create_dir_all(proc_sys.join("net/netfilter")).unwrap();
        std::fs::create_dir_all(sys.join("module/nf_conntrack/parameters")).unwrap();
        std::fs::write(proc_sys.join("net/netfilter/nf_conntrack_max"), "65536\n").unwrap();
        std::fs::write(sys.join(CONNTRACK_HASHSIZE), "16384\n").unwrap();
        let failures = defaults.apply(&proc_sys, &sys, 2);
        assert_eq!(failures, Vec::<String>::new());
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(
            read(proc_sys.join("net/netfilter/nf_conntrack_max")),
            "131072"
        );
        assert_eq!(read(sys.join(CONNTRACK_HASHSIZE)), "32768");

        // A hash table already large enough is left; a failed write is named.
        std::fs::write(sys.join(CONNTRACK_HASHSIZE), "65536").unwrap();
        std::fs::remove_dir_all(proc_sys.join("net/netfilter")).unwrap();
        let failures = defaults.apply(&proc_sys, &sys, 2);
        assert_eq!(read(sys.join(CONNTRACK_HASHSIZE)), "65536");
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(
            failures[0].contains("nf_conntrack_max to 131072"),
            "{}",
            failures[0]
        );
    }

    #[test]
    fn apply_writes_only_what_differs() {
        let root = std::env::temp_dir().join(format!("kip-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(root.join("net/ipv4/vs")).unwrap();
        std::fs::write(root.join("net/ipv4/vs/conntrack"), "1\n").unwrap();
        std::fs::write(root.join("net/ipv4/ip_forward"), "0\n").unwrap();
        let want = [
            Sysctl {
                key: "net/ipv4/vs/conntrack",
                value: "1",
                why: "",
            },
            Sysctl {
                key: "net/ipv4/ip_forward",
                value: "1",
                why: "",
            },
        ];
        let changed = apply(&root, &want).unwrap();
        assert_eq!(changed, ["net/ipv4/ip_forward"]);
        assert_eq!(
            std::fs::read_to_string(root.join("net/ipv4/ip_forward")).unwrap(),
            "1"
        );
        let missing = [Sysctl {
            key: "net/ipv4/vs/nope/x",
            value: "1",
            why: "",
        }];
        let err = apply(&root, &missing).unwrap_err();
        assert!(err.to_string().contains("net/ipv4/vs/nope/x"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
