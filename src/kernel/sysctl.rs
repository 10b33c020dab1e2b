//! The sysctls upstream kube-proxy sets for IPVS mode, with the same values.

use std::path::{Path, PathBuf};

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
