#!/usr/bin/env bash
# The benchmark command (issues 4 and 10):
#
#   tests/bench.sh [--scale default|full|huge|NxE[,NxE...]] [--vip-mode address|route]
#                  [--profile raw|raw-state|cold]
#
# Builds the proxy and the benchmark driver (release), boots the stock Debian
# kernel once in a VM (tests/vm/boot.sh) and measures, per scale of N
# synthetic ClusterIP services with E ready endpoints each:
#   - ipvsadm -R loading the state from a file of -A/-a lines;
#   - the raw floor: netlink-ipvs alone, the same operations in one batch;
#   - the VIPs bound as the proxy batches them (addresses on kube-ipvs0, or
#     local routes with --vip-mode route), alone and at the same time as
#     that batch;
#   - the floor of the whole kernel state, in the order a cold sync sends it:
#     the state's nftables set elements in one transaction (also timed
#     alone), then the IPVS batch and the addresses at the same time;
#   - the proxy's pipeline in-process (model -> translate -> reconciler ->
#     nftables, IPVS and kube-ipvs0 over netlink): cold sync from an empty
#     kernel, single-change latency (one endpoint added then removed,
#     --trials times), idle resync, each with its nftables transactions;
#   - the kube-ipvs-proxy binary's peak and steady RSS, standalone
#     (--manifests) and with its in-cluster watchers fed by the test API server.
# Then prints one table, with the kernel, the CPU mode and the date, and
# each goal of issues 4 and 10 as met or missed. Results stay in
# target/bench-results/<date>/ (bench.jsonl, table.txt, console.log).
#
# Scales: default = 100x10 and 1000x10 (CI: about 15 minutes under TCG with
# the build cached); full = 100x10, 1000x10, 10000x10 and 50000x2; huge =
# 50000x2 and 100000x2, the scales of issue 12's goals (with --vip-mode route).
#
# --vip-mode is the proxy's --ipvs-vip-mode in every phase that binds VIPs
# (default address); the table says which mode a run used.
#
# --profile PHASE runs only that phase at each scale, under `perf record`
# of both guest CPUs (Debian's linux-perf, installed on demand), and prints
# where its time went: CPU by thread and by kind of work (the kernel's IPVS
# handling, its service lookups, nftables, routes, serializing, ...), and a
# timeline, from the samples inside the phase's own clock
# (tests/bench/profile.py). Under perf a phase runs about a fifth slower.
#
# Exits 0 when every phase ran (goals missed are reported, not failed),
# 1 when a phase failed, 125 when the VM did not start.
#
# Environment: KIP_VM_KVM=1 uses KVM instead of TCG; KIP_VM_MEMORY (default
# 4G, 8G for full), KIP_VM_CPUS (2), KIP_VM_TIMEOUT (seconds) as in
# tests/vm/boot.sh; KIP_BENCH_TRIALS (100) single-change trials per scale;
# KIP_BENCH_IDLE_RUNS (3) idle resyncs per scale; KIP_BENCH_REPEATS (3)
# runs per scale of the raw IPVS and whole-state floors, the in-process cold
# sync and the binary's in-cluster start, whose medians the goals compare.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
# shellcheck source=tests/vm/deps.sh
source "$repo/tests/vm/deps.sh"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

scale=default
vip_mode=address
profile=
while (($# > 0)); do
    case $1 in
    --scale)
        (($# >= 2)) || usage
        scale=$2
        shift 2
        ;;
    --scale=*)
        scale=${1#--scale=}
        shift
        ;;
    --vip-mode)
        (($# >= 2)) || usage
        vip_mode=$2
        shift 2
        ;;
    --vip-mode=*)
        vip_mode=${1#--vip-mode=}
        shift
        ;;
    --profile)
        (($# >= 2)) || usage
        profile=$2
        shift 2
        ;;
    --profile=*)
        profile=${1#--profile=}
        shift
        ;;
    -h | --help) usage ;;
    *)
        printf 'ERROR: unknown argument %q\n' "$1" >&2
        usage
        ;;
    esac
done

case $scale in
default)
    scales="100x10 1000x10"
    memory=4G
    timeout=1800
    ;;
full)
    scales="100x10 1000x10 10000x10 50000x2"
    memory=8G
    timeout=14400
    ;;
huge)
    scales="50000x2 100000x2"
    memory=12G
    timeout=21600
    ;;
*)
    scales=${scale//,/ }
    memory=8G
    timeout=14400
    ;;
esac

export KIP_VM_MEMORY=${KIP_VM_MEMORY:-$memory}
export KIP_VM_CPUS=${KIP_VM_CPUS:-2}
export KIP_VM_TIMEOUT=${KIP_VM_TIMEOUT:-$timeout}
case $vip_mode in
address | route) ;;
*)
    printf 'ERROR: --vip-mode must be address or route, not %q\n' "$vip_mode" >&2
    usage
    ;;
esac
case $profile in
'' | raw | raw-state | cold) ;;
*)
    printf 'ERROR: --profile must be raw, raw-state or cold, not %q\n' "$profile" >&2
    usage
    ;;
esac
export KIP_BENCH_SCALES=$scales
export KIP_BENCH_PROFILE=$profile
export KIP_BENCH_VIP_MODE=$vip_mode
export KIP_BENCH_TRIALS=${KIP_BENCH_TRIALS:-100}
export KIP_BENCH_IDLE_RUNS=${KIP_BENCH_IDLE_RUNS:-3}
export KIP_BENCH_REPEATS=${KIP_BENCH_REPEATS:-3}
if [[ ! $KIP_BENCH_REPEATS =~ ^[1-9][0-9]*$ ]]; then
    printf 'ERROR: KIP_BENCH_REPEATS must be a number of runs, 1 or more, not %q\n' "$KIP_BENCH_REPEATS" >&2
    exit 2
fi
if [[ ${KIP_VM_KVM:-0} == 1 ]]; then
    export KIP_BENCH_CPU_MODE=KVM
else
    export KIP_BENCH_CPU_MODE=TCG
fi
KIP_BENCH_DATE=$(date -u '+%Y-%m-%d %H:%M')
export KIP_BENCH_DATE

if [[ -n $profile ]]; then
    # perf for the guest's kernel: the guest runs the host's root filesystem.
    KIP_APT_PACKAGES+=(linux-perf)
fi
kip_ensure_vm_deps

# The executable of one target, from cargo's JSON messages rather than a
# guessed path: $1 target kind (bin, bench), $2 target name.
pick_executable() {
    python3 -c '
import json, sys
kind, name = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    target = msg.get("target") or {}
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
            and kind in target.get("kind", []) and target.get("name") == name:
        print(msg["executable"])
' "$1" "$2"
}

build_env=()
if [[ -n $profile ]]; then
    # Frame pointers, so that perf can walk the proxy's own call chains;
    # in a target directory of their own, so that the benchmark's build
    # stays as it is.
    build_env=(RUSTFLAGS="${RUSTFLAGS:-} -C force-frame-pointers=yes"
        CARGO_TARGET_DIR="$repo/target/profiling")
fi
kip_log "building kube-ipvs-proxy and the benchmark driver (release)"
proxy_json=$(env "${build_env[@]}" cargo build --release --bin kube-ipvs-proxy --message-format=json-render-diagnostics) ||
    kip_die "cargo build --release --bin kube-ipvs-proxy failed"
bench_json=$(env "${build_env[@]}" cargo bench --bench ipvs --no-run --message-format=json-render-diagnostics) ||
    kip_die "cargo bench --bench ipvs --no-run failed"
KIP_PROXY_BIN=$(pick_executable bin kube-ipvs-proxy <<<"$proxy_json")
KIP_BENCH_BIN=$(pick_executable bench ipvs <<<"$bench_json")
[[ -x $KIP_PROXY_BIN ]] || kip_die "cargo did not report a kube-ipvs-proxy executable"
[[ -x $KIP_BENCH_BIN ]] || kip_die "cargo did not report the ipvs bench executable"
export KIP_PROXY_BIN KIP_BENCH_BIN

target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
out=$target_dir/bench-results/$(date -u '+%Y%m%dT%H%M%SZ')
mkdir -p "$out"

# One VM at a time per target dir, shared with tests/run.sh: a second
# emulator on the same cores would skew every number.
exec 9>"$target_dir/vm-results.lock"
if ! flock -n 9; then
    kip_log "waiting for another VM run (tests/run.sh or tests/bench.sh) to finish"
    flock 9
fi

kip_log "scales: $scales; VIPs: $vip_mode; VM: $KIP_BENCH_CPU_MODE, $KIP_VM_CPUS CPUs, $KIP_VM_MEMORY; results in $out"
set +e
"$repo/tests/vm/boot.sh" --out "$out" "$repo/tests/bench/guest.sh"
vm_rc=$?
set -e
if ((vm_rc == 125)); then
    printf 'ERROR: the benchmark VM did not start or did not finish; see %s/console.log\n' "$out" >&2
    exit 125
fi
[[ -s $out/bench.jsonl ]] || kip_die "the VM wrote no results (guest exit $vm_rc); see $out/console.log"

if [[ -n $profile ]]; then
    ((vm_rc == 0)) || kip_die "the profile of $profile failed (guest exit $vm_rc); see $out/bench.log"
    for s in $scales; do
        printf '\n'
        python3 "$repo/tests/bench/profile.py" "$out/bench.jsonl" "$s" "$out/perf-script-$s.txt.gz" |
            tee "$out/profile-$s.txt"
    done
    printf '\n(results: %s)\n' "$out"
    exit 0
fi

printf '\n'
set +e
"$KIP_BENCH_BIN" table "$out/bench.jsonl" | tee "$out/table.txt"
table_rc=${PIPESTATUS[0]}
set -e
printf '\n(results: %s)\n' "$out"
if ((vm_rc != 0 || table_rc != 0)); then
    printf 'ERROR: a benchmark phase failed (guest exit %s); see %s/bench.log\n' "$vm_rc" "$out" >&2
    exit 1
fi
