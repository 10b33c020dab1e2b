#!/usr/bin/env bash
# The project's one test command, locally and in CI:
#
#   tests/run.sh
#
# 1. installs what the VM test bed needs if it is missing (Debian packages,
#    virtme-ng in a virtualenv), 2. runs the host checks (rustfmt, clippy,
#    cargo test), 3. builds everything the VM runs (the guest sees the host
#    filesystem read-only), 4. boots a VM with the stock Debian kernel once per
#    group in VM_GROUPS and runs that group's tests inside, then prints a
#    summary: every check, the failed ones again, and "N passed, N failed".
#    Exits non-zero if anything failed, including a VM that did not start or
#    a group that ran zero tests.
#
# Environment: KIP_VM_GROUPS overrides VM_GROUPS below; KIP_SKIP_HOST_CHECKS=1
# skips step 2 (for iterating on VM tests); KIP_HOST_TEST_TIMEOUT (seconds,
# default 1200) bounds cargo test; KIP_VM_KVM=1 uses KVM instead of TCG; see
# tests/vm/boot.sh for the other KIP_VM_* knobs.
set -uo pipefail

# One boot per group, in this order.
#   netlink-ipvs  the Rust tests that need a real IPVS (every test target named kernel*)
#   fixture       the network fixture of tests/vm/netns.sh, proven with ipvsadm alone
#   proxy-e2e     the proxy end to end on deploy/examples (tests/vm/proxy-e2e.sh)
#   packet-path   a two-node network with an outside client: masquerade, traffic
#                 policy, source ranges, stale flows, ARP, switching VIP modes
#                 (tests/vm/packet-path.sh), with VIPs as addresses on kube-ipvs0
#   packet-path-routes  the same with VIPs as local routes (--ipvs-vip-mode route)
#   takeover      a node seeded as kube-proxy's IPVS mode leaves it: adopted with
#                 zero IPVS writes, cleanup-upstream, handback (tests/vm/takeover.sh)
VM_GROUPS=${KIP_VM_GROUPS:-"netlink-ipvs fixture proxy-e2e packet-path packet-path-routes takeover"}

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 1
# shellcheck source=tests/vm/deps.sh
source "$repo/tests/vm/deps.sh"

results=()  # "PASS|FAIL<TAB>name<TAB>detail"
timings=()  # "phase<TAB>seconds"

record() { results+=("$1"$'\t'"$2"$'\t'"${3:-}"); }

# Runs one command as a named check and records its outcome and duration.
check() {
    local name=$1 start=$SECONDS rc
    shift
    kip_log "$name: $*"
    "$@"
    rc=$?
    timings+=("$name"$'\t'"$((SECONDS - start))")
    if ((rc == 0)); then record PASS "$name"; else record FAIL "$name" "exit $rc: $*"; fi
    return "$rc"
}

phase_start=$SECONDS
kip_ensure_vm_deps
timings+=("install VM dependencies"$'\t'"$((SECONDS - phase_start))")

# --- host checks ------------------------------------------------------------
if [[ ${KIP_SKIP_HOST_CHECKS:-0} != 1 ]]; then
    check "host: cargo fmt" cargo fmt --all -- --check
    check "host: cargo clippy" cargo clippy --workspace --all-targets --quiet -- -D warnings
    check "host: cargo doc" env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
    # A hung test must fail the run, not eat CI's 90 minutes.
    check "host: cargo test" timeout --kill-after=30 "${KIP_HOST_TEST_TIMEOUT:-1200}" cargo test --workspace --quiet
fi

# --- build what the guest runs --------------------------------------------
# Test executables of targets named kernel* ("package/target=path"), and the
# proxy binary, picked from cargo's JSON messages rather than guessed paths.
kernel_tests=()
proxy_bin=
pick_executables() { # $1: target kind, $2: name pattern
    python3 -c '
import json, re, sys
kind, pattern = sys.argv[1], re.compile(sys.argv[2])
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    target = msg["target"]
    if kind in target["kind"] and pattern.fullmatch(target["name"]):
        # "path+file:///src/netlink-ipvs#0.1.0" or "path+file:///src#name@0.1.0"
        source, _, fragment = msg["package_id"].partition("#")
        package = fragment.split("@")[0] if "@" in fragment else source.rsplit("/", 1)[-1]
        print(f"{package}/{target['"'"'name'"'"']}={msg['"'"'executable'"'"']}")
' "$1" "$2"
}
build_kernel_tests() {
    local json
    json=$(cargo test --workspace --no-run --message-format=json-render-diagnostics) || return 1
    mapfile -t kernel_tests < <(pick_executables test 'kernel.*' <<<"$json")
    kip_log "kernel test binaries: ${kernel_tests[*]:-none}"
}
build_proxy() {
    local json
    json=$(cargo build --bin kube-ipvs-proxy --message-format=json-render-diagnostics) || return 1
    proxy_bin=$(pick_executables bin kube-ipvs-proxy <<<"$json" | cut -d= -f2-)
    [[ -x $proxy_bin ]] || { kip_log "cargo did not report a kube-ipvs-proxy executable"; return 1; }
    kip_log "proxy binary: $proxy_bin"
}
check "build: kernel test binaries" build_kernel_tests
kernel_build=$?
check "build: proxy binary" build_proxy
proxy_build=$?

# --- VM groups ------------------------------------------------------------
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])') || target_dir=$repo/target

# Boots one group and folds the guest's result lines into ours. A group whose
# VM failed, or that reported nothing, is a failure of its own.
run_group() {
    local group=$1 script=$2 start=$SECONDS rc line count=0 failed=0
    shift 2
    local out=$target_dir/vm-results/$group
    rm -rf "$out"
    mkdir -p "$out"
    "$repo/tests/vm/boot.sh" --out "$out" "$repo/tests/vm/$script" "$@"
    rc=$?
    timings+=("VM: $group"$'\t'"$((SECONDS - start))")
    if [[ -r $out/results ]]; then
        while IFS=$'\t' read -r verdict name detail; do
            [[ $verdict == PASS || $verdict == FAIL ]] || continue
            record "$verdict" "$group: $name" "$detail"
            count=$((count + 1))
            [[ $verdict == FAIL ]] && failed=$((failed + 1))
        done <"$out/results"
    fi
    if ((rc == 125)); then
        record FAIL "$group" "the VM did not start or did not report completion; see $out/console.log"
    elif ((count == 0)); then
        record FAIL "$group" "zero tests executed (exit $rc); see $out/console.log"
    elif ((rc != 0 && failed == 0)); then
        record FAIL "$group" "the guest script exited $rc without a failing scenario; see $out/console.log"
    fi
}

# One test bed at a time per target dir: concurrent runs in one checkout
# would share vm-results/ and starve each other's emulators.
mkdir -p "$target_dir"
exec 9>"$target_dir/vm-results.lock"
if ! flock -n 9; then
    kip_log "waiting for another tests/run.sh to finish its VMs"
    flock 9
fi

for group in $VM_GROUPS; do
    case $group in
    netlink-ipvs)
        if ((kernel_build != 0)); then
            record FAIL "$group" "not run: the kernel test binaries did not build"
            continue
        fi
        if ! printf '%s\n' "${kernel_tests[@]}" | grep -q '^netlink-ipvs/kernel'; then
            record FAIL "$group" "netlink-ipvs has no kernel* test target (netlink-ipvs/tests/kernel.rs missing)"
            ((${#kernel_tests[@]} > 0)) || continue
        fi
        run_group "$group" kernel-tests.sh "${kernel_tests[@]}"
        ;;
    fixture) run_group "$group" fixture.sh ;;
    proxy-e2e)
        if ((proxy_build != 0)); then
            record FAIL "$group" "not run: the proxy binary did not build"
            continue
        fi
        KIP_PROXY_BIN=$proxy_bin run_group "$group" proxy-e2e.sh
        ;;
    packet-path)
        if ((proxy_build != 0)); then
            record FAIL "$group" "not run: the proxy binary did not build"
            continue
        fi
        KIP_PROXY_BIN=$proxy_bin KIP_VIP_MODE=address run_group "$group" packet-path.sh
        ;;
    packet-path-routes)
        # The same checks with VIPs bound as local routes (--ipvs-vip-mode route).
        if ((proxy_build != 0)); then
            record FAIL "$group" "not run: the proxy binary did not build"
            continue
        fi
        KIP_PROXY_BIN=$proxy_bin KIP_VIP_MODE=route run_group "$group" packet-path.sh
        ;;
    takeover)
        if ((proxy_build != 0)); then
            record FAIL "$group" "not run: the proxy binary did not build"
            continue
        fi
        KIP_PROXY_BIN=$proxy_bin run_group "$group" takeover.sh
        ;;
    *) record FAIL "$group" "unknown VM group (VM_GROUPS=$VM_GROUPS)" ;;
    esac
done

# --- summary --------------------------------------------------------------
passed=0
printf '\n==================== summary ====================\n'
for row in "${timings[@]}"; do
    IFS=$'\t' read -r name seconds <<<"$row"
    printf '  %-32s %5s s\n' "$name" "$seconds"
done
printf '\n'
failures=()
for row in "${results[@]}"; do
    IFS=$'\t' read -r verdict name detail <<<"$row"
    line="$name${detail:+  ($detail)}"
    printf '%s  %s\n' "$verdict" "$line"
    if [[ $verdict == PASS ]]; then passed=$((passed + 1)); else failures+=("$line"); fi
done
failed=${#failures[@]}
# The failures again, last: a log cut to its head and tail still names them.
if ((failed > 0)); then
    printf '\nFailed:\n'
    printf '  %s\n' "${failures[@]}"
fi
printf '\n%s passed, %s failed\n' "$passed" "$failed"
((failed == 0 && passed > 0))
