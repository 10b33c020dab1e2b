# shellcheck shell=bash
# shellcheck disable=SC2154 # proxy, work, common, min_sync and sync_period: set by the sourcing script
# The proxy as a background process in a guest script, sourced by
# proxy-e2e.sh and packet-path.sh. The script sets, before calling these:
#   proxy        the kube-ipvs-proxy binary (KIP_PROXY_BIN)
#   work         where logs go
#   common       the flags of every run (an array)
#   min_sync     --ipvs-min-sync-period, in seconds
#   sync_period  --ipvs-sync-period, in seconds
# KIP_PROXY_EXTRA_ARGS, from the host, adds flags to every run, for example
# --conntrack-cleanup=false to see the check that needs it fail. A script
# may set proxy_wrap (an array) to a command that runs the proxy, such as a
# capability-limited one.

proxy_pid=
proxy_log=
proxy_wrap=()
# When the last proxy_start launched the proxy, in seconds since the epoch.
proxy_started_at=

proxy_start() { # NAME [FLAGS...]: starts `run` in the background, logging to $work/NAME.log
    proxy_log=$work/$1.log
    proxy_started_at=$(date +%s)
    # shellcheck disable=SC2086 # KIP_PROXY_EXTRA_ARGS is split on purpose
    "${proxy_wrap[@]}" "$proxy" run "${common[@]}" --ipvs-min-sync-period "${min_sync}s" \
        --ipvs-sync-period "${sync_period}s" --log-format json ${KIP_PROXY_EXTRA_ARGS:-} "${@:2}" \
        >"$proxy_log" 2>&1 &
    proxy_pid=$!
}

proxy_alive() { [[ -n $proxy_pid ]] && kill -0 "$proxy_pid" 2>/dev/null; }

# proxy_stop: SIGTERM, then a bounded wait. Runs in this shell (never in a
# $(...) subshell, which could not reap the process); on failure it leaves
# the reason in $stop_error.
stop_error=
proxy_stop() {
    stop_error=
    proxy_alive || { stop_error="the proxy was not running"; return 1; }
    kill -TERM "$proxy_pid"
    local rc
    for _ in $(seq 100); do
        proxy_alive || break
        sleep 0.1
    done
    if proxy_alive; then
        kill -KILL "$proxy_pid"
        stop_error="the proxy ignored SIGTERM for 10 s"
    fi
    wait "$proxy_pid" 2>/dev/null
    rc=$?
    proxy_pid=
    [[ -z $stop_error ]] || return 1
    ((rc == 0)) || { stop_error="the proxy exited $rc on SIGTERM"; return 1; }
}

# syncs LOG: one "KIND WRITES" line per completed sync ("sync done" JSON lines).
syncs() {
    python3 - "$1" <<'PY'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    try:
        fields = json.loads(line).get("fields", {})
    except ValueError:
        continue
    if fields.get("message") == "sync done":
        print(fields.get("kind"), fields.get("writes"))
PY
}

# sync_field LOG FIELD: that field of every "sync done" line, one a line
# (0 where a line lacks it), e.g. nft_elements or conntrack_deleted.
sync_field() {
    python3 - "$1" "$2" <<'PY'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    try:
        fields = json.loads(line).get("fields", {})
    except ValueError:
        continue
    if fields.get("message") == "sync done":
        print(fields.get(sys.argv[2]) or 0)
PY
}

sync_count() { syncs "$proxy_log" | wc -l; }

# wait_syncs N: waits until the log shows N completed syncs. The bound (60 s
# of 0.1 s polls) only stops a hung run; it asserts nothing about speed.
wait_syncs() {
    for _ in $(seq 600); do
        (($(sync_count) >= $1)) && return 0
        proxy_alive || { echo "the proxy exited: $(tail -n 3 "$proxy_log" | paste -sd'|')"; return 1; }
        sleep 0.1
    done
    echo "no sync $1 logged in 60 s: $(tail -n 3 "$proxy_log" | paste -sd'|')"
    return 1
}
