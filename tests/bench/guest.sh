#!/usr/bin/env bash
# Runs inside the VM (tests/bench.sh -> tests/vm/boot.sh -> tests/vm/guest.sh,
# which has loaded ip_vs and dummy): every benchmark phase at every scale,
# one JSON line each into $KIP_OUT/bench.jsonl, the drivers' logs into
# $KIP_OUT/bench.log. A phase that dies without a line gets a failure line
# here, so a crash is never a silent gap in the table.
set -uo pipefail

: "${KIP_OUT:?} ${KIP_BENCH_BIN:?} ${KIP_PROXY_BIN:?} ${KIP_BENCH_SCALES:?}"
results=$KIP_OUT/bench.jsonl
log=$KIP_OUT/bench.log
work=/tmp/kip-bench
mkdir -p "$work"
# The binary starts from the guest's memory, as a node starts it from its
# own disk. Run from the 9p root, each start would first page the
# executable in through the host (about 1.2 s under TCG), and fewer of its
# code pages would be mapped than on a node, so RSS would read low.
proxy_bin=$work/kube-ipvs-proxy
cp "$KIP_PROXY_BIN" "$proxy_bin" || exit 1
: >"$results"
: >"$log"
failures=0
vip_mode=${KIP_BENCH_VIP_MODE:-address}
repeats=${KIP_BENCH_REPEATS:-3}

# The proxy learns which families the node runs from its addresses, and the
# VM has no network: give it one address, as every node has.
if ! ip link show kip-node0 >/dev/null 2>&1; then
    ip link add kip-node0 type dummy || exit 1
    ip addr add 192.0.2.10/24 dev kip-node0 || exit 1
    ip link set kip-node0 up || exit 1
fi

# The schedulers tests/vm/guest.sh loads; they hold ip_vs.
schedulers=(ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_sh ip_vs_sed ip_vs_nq)

# Every phase starts from a freshly loaded IPVS, not just an empty table: a
# flush leaves the real servers in the kernel's destination trash for a
# minute or more, and every real-server add scans that list, so a phase run
# after a flush would pay for the phase before it.
fresh_ipvs() {
    # A phase that failed half way leaves its services behind, which would
    # keep the modules in use and fail every phase after it.
    ipvsadm -C 2>/dev/null
    ip link del kube-ipvs0 2>/dev/null
    ip -4 route flush table local proto 75 2>/dev/null
    ip -6 route flush table local proto 75 2>/dev/null
    modprobe -r "${schedulers[@]}" ip_vs && modprobe -a ip_vs "${schedulers[@]}"
}

# phase SCALE WHAT ARGS...: runs the driver, keeps its line, or writes one.
phase() {
    local scale=$1 what=$2 before after rc start=$SECONDS
    shift 2
    printf '==> %s %s\n' "$what" "$scale"
    before=$(wc -l <"$results")
    printf '\n### %s %s: %s\n' "$what" "$scale" "$*" >>"$log"
    if fresh_ipvs >>"$log" 2>&1; then
        "$KIP_BENCH_BIN" --vip-mode "$vip_mode" "$@" >>"$results" 2>>"$log"
        rc=$?
    else
        printf 'reloading ip_vs failed: the phase would not start from a fresh kernel\n' >>"$log"
        rc=125
    fi
    after=$(wc -l <"$results")
    if ((rc != 0)); then
        failures=$((failures + 1))
        if ((after == before)); then
            printf '{"phase":"failed","scale":{"services":%d,"endpoints":%d},"what":"%s","error":"the driver exited %d without a result (125: ip_vs could not be reloaded); see bench.log"}\n' \
                "${scale%x*}" "${scale#*x}" "$what" "$rc" >>"$results"
        fi
        printf '    FAILED (exit %s): %s\n' "$rc" "$(tail -n 1 "$results")"
    fi
    printf '    %s s\n' "$((SECONDS - start))"
}

# tests/bench.sh --profile PHASE: that one phase at each scale under
# `perf record` of every CPU (the kernel's work happens in the proxy's
# sendmsg calls and in softirqs), its samples written out as text for
# tests/bench/profile.py on the host. Nothing else runs.
if [[ -n ${KIP_BENCH_PROFILE:-} ]]; then
    for scale in $KIP_BENCH_SCALES; do
        printf '==> %s %s under perf\n' "$KIP_BENCH_PROFILE" "$scale"
        if ! fresh_ipvs >>"$log" 2>&1; then
            printf 'reloading ip_vs failed before the profile of %s\n' "$scale" >&2
            exit 1
        fi
        data=$work/perf-$scale.data
        perf record -a -g -F 999 -o "$data" -- \
            "$KIP_BENCH_BIN" --vip-mode "$vip_mode" "$KIP_BENCH_PROFILE" --scale "$scale" \
            >>"$results" 2>>"$log" || exit 1
        perf script -i "$data" -F time,comm,tid,ip,sym 2>>"$log" |
            gzip >"$KIP_OUT/perf-script-$scale.txt.gz" || exit 1
        rm -f "$data"
    done
    exit 0
fi

"$KIP_BENCH_BIN" --vip-mode "$vip_mode" env --cpu-mode "${KIP_BENCH_CPU_MODE:-TCG}" --date "${KIP_BENCH_DATE:-unknown}" \
    >>"$results" 2>>"$log" || failures=$((failures + 1))

for scale in $KIP_BENCH_SCALES; do
    phase "$scale" "ipvsadm -R" ipvsadm --scale "$scale" --rules "$work/rules-$scale"
    rm -f "$work/rules-$scale"
    phase "$scale" "raw floor, VIPs" raw-addresses --scale "$scale"
    phase "$scale" "proxy in-process" proxy --scale "$scale" --trials "${KIP_BENCH_TRIALS:-100}" \
        --idle-runs "${KIP_BENCH_IDLE_RUNS:-3}"
    phase "$scale" "binary RSS, standalone" \
        rss --scale "$scale" --mode manifests --proxy-bin "$proxy_bin" --workdir "$work" \
        --log "$KIP_OUT/proxy-manifests-$scale.log"
    rm -rf "$work/manifests-$scale"
    # Under TCG one sample of a cold path varies by a quarter or more from
    # one run to the next. The goals compare medians: the two raw floors,
    # the cold sync (the full phase above has the first) and the binary's
    # start run again and again, interleaved, so that each set of samples
    # spans the same stretch of the run.
    for ((run = 1; run <= repeats; run++)); do
        phase "$scale" "raw floor" raw --scale "$scale"
        phase "$scale" "raw floor, whole state" raw-state --scale "$scale"
        if ((run > 1)); then
            phase "$scale" "cold sync, again" cold --scale "$scale"
        fi
        phase "$scale" "binary RSS, in-cluster" \
            rss --scale "$scale" --mode cluster --proxy-bin "$proxy_bin" --workdir "$work" \
            --log "$KIP_OUT/proxy-cluster-$scale-$run.log"
    done
done

((failures == 0))
