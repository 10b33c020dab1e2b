#!/usr/bin/env bash
# Guest script: runs the Rust test binaries that need a kernel with IPVS
# (their #[ignore]d tests included), one test at a time because they share
# the kernel's single IPVS table.
#
#   kernel-tests.sh LABEL=BINARY...
set -uo pipefail
source "$(dirname "$0")/report.sh"

if (($# == 0)); then
    fail "kernel-tests" "no kernel test binary was built (netlink-ipvs/tests/kernel.rs missing?)"
fi

for spec in "$@"; do
    label=${spec%%=*}
    binary=${spec#*=}
    log=$KIP_OUT/${label//\//-}.log
    printf '\n--- %s (%s)\n' "$label" "$binary"
    # The binary must not touch the read-only source tree: run it from /tmp.
    (cd /tmp && "$binary" --include-ignored --test-threads=1) 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    summary=$(grep -E '^test result: ' "$log" | tail -n 1)
    passed=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$summary")
    failed=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$summary")
    if [[ -z $summary ]]; then
        fail "$label" "no libtest summary (exit $rc); see $log"
    elif ((rc != 0 || failed > 0)); then
        fail "$label" "$failed failed, $passed passed (exit $rc)"
    elif ((passed == 0)); then
        fail "$label" "zero tests executed: a group that runs nothing is not a pass"
    else
        pass "$label" "$passed passed"
    fi
done

report_status
