# shellcheck shell=bash
# Result lines of the guest scripts: one "PASS|FAIL<TAB>name<TAB>detail" line
# per scenario in $KIP_RESULTS, which tests/run.sh counts. Sourced.

KIP_RESULTS=${KIP_RESULTS:-/dev/null}
kip_failures=0

pass() {
    printf 'PASS\t%s\t%s\n' "$1" "${2:-}" >>"$KIP_RESULTS"
    printf 'PASS  %s  %s\n' "$1" "${2:-}"
}

fail() {
    printf 'FAIL\t%s\t%s\n' "$1" "${2:-}" >>"$KIP_RESULTS"
    printf 'FAIL  %s  %s\n' "$1" "${2:-}"
    kip_failures=$((kip_failures + 1))
}

# The exit status of a guest script: non-zero when any scenario failed.
report_status() {
    ((kip_failures == 0))
}
