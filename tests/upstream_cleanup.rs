//! `cleanup-upstream` against the host's real nf_tables and ipset, in a
//! network namespace of its own (`unshare -n`): tests/vm/upstream-seed.sh
//! seeds kube-proxy's IPVS-mode chains, rules and ipsets with iptables-nft
//! and ipset (its IPVS and kube-ipvs0 steps stubbed: the host has neither),
//! beside a user's chain, rule and ipset and kubelet's canaries. Then
//! `--dry-run` must change nothing, and the real run must remove exactly
//! upstream's names.
//!
//! Needs root, `unshare`, `iptables` (nf_tables), `ipset` and the ip_set
//! module (tests/vm/deps.sh installs the tools); a host without them fails
//! this test, naming what is missing, rather than skipping it.

use std::path::Path;
use std::process::Command;

const SCRIPT: &str = r#"
set -euo pipefail
stubs=$(mktemp -d)
for tool in ip ipvsadm sysctl modprobe; do
    printf '#!/bin/sh\nexit 0\n' >"$stubs/$tool"
    chmod +x "$stubs/$tool"
done
PATH=$stubs:$PATH bash "$SEED" >/dev/null
state() { iptables-save | grep -v '^#'; ip6tables-save | grep -v '^#'; ipset list; nft list ruleset; }
before=$(state)
"$PROXY" cleanup-upstream --dry-run >"$stubs/dry-run.out"
[[ $(state) == "$before" ]] || { echo "FAIL: --dry-run changed the state"; exit 1; }
grep -q 'would remove' "$stubs/dry-run.out" || { echo "FAIL: --dry-run listed nothing"; exit 1; }
"$PROXY" cleanup-upstream >"$stubs/run.out"
echo "removed: $(grep -c '^  ' "$stubs/run.out")"
echo "iptables:"; iptables-save | grep -v '^#'
echo "ip6tables:"; ip6tables-save | grep -v '^#'
echo "ipsets:"; ipset list -n
echo "second run: $("$PROXY" cleanup-upstream)"
"#;

#[test]
fn cleanup_upstream_removes_exactly_upstreams_names() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("unshare")
        .args(["-n", "bash", "-c", SCRIPT])
        .env("SEED", repo.join("tests/vm/upstream-seed.sh"))
        .env("PROXY", env!("CARGO_BIN_EXE_kube-ipvs-proxy"))
        .output()
        .expect("running unshare -n (util-linux)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the seed or cleanup-upstream failed (needs root, iptables-nft, ipset and ip_set):\n{stdout}\n{stderr}"
    );
    let section = |name: &str, next: &str| -> String {
        let start = stdout.find(name).map_or(0, |at| at + name.len());
        let end = stdout[start..]
            .find(next)
            .map_or(stdout.len(), |at| start + at);
        stdout[start..end].to_owned()
    };
    let v4 = section("iptables:\n", "ip6tables:\n");
    let v6 = section("ip6tables:\n", "ipsets:\n");
    let ipsets = section("ipsets:\n", "second run:");
    for chain in kube_ipvs_proxy::kernel::upstream::UPSTREAM_CHAINS.map(|(_, c)| c) {
        for saved in [&v4, &v6] {
            assert!(
                !saved.contains(&format!(":{chain} ")) && !saved.contains(&format!("-j {chain}")),
                "{chain} left:\n{saved}"
            );
        }
    }
    for set in kube_ipvs_proxy::kernel::upstream::UPSTREAM_IPSETS {
        assert!(
            !ipsets.lines().any(|l| l == set),
            "ipset {set} left:\n{ipsets}"
        );
    }
    // What is not upstream's stays, in full.
    for line in [
        ":USER-ALLOW - [0:0]",
        "-A INPUT -j USER-ALLOW",
        "-A USER-ALLOW -m set --match-set user-allowlist src -j ACCEPT",
    ] {
        assert!(v4.contains(line), "{line:?} missing:\n{v4}");
    }
    assert_eq!(v4.matches(":KUBE-KUBELET-CANARY ").count(), 3, "{v4}");
    assert_eq!(v6.matches(":KUBE-KUBELET-CANARY ").count(), 3, "{v6}");
    assert_eq!(ipsets.trim(), "user-allowlist");
    // 9 jumps, 11 chains flushed and deleted, 17 ipsets.
    assert!(stdout.contains("removed: 48"), "{stdout}");
    assert!(
        stdout.contains("second run: no leftovers of kube-proxy's IPVS mode found"),
        "{stdout}"
    );
}
