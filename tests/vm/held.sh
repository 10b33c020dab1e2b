# shellcheck shell=bash
# shellcheck disable=SC2154,SC2034 # here and work: set by the sourcing script; held_pid and held_error: read by it
# Connections held open through a VIP across a change (tests/vm/held_client.py),
# sourced by packet-path.sh and takeover.sh. Both functions run in the
# sourcing shell, never in $(...), which could not wait for the client.

held_pid=
held_error=

# held_open TAG HOST RUNNER...: a held connection to HOST:80, started through
# RUNNER (a command prefix, such as `ip netns exec client`), its pid left in
# held_pid. False, with the reason in held_error, when no first answer came.
held_open() {
    local tag=$1 host=$2 _
    shift 2
    "$@" python3 "$here/held_client.py" "$host" 80 "$work" "$tag" >"$work/$tag.out" 2>&1 &
    held_pid=$!
    for _ in $(seq 100); do
        [[ -e $work/$tag-ready ]] && return 0
        kill -0 "$held_pid" 2>/dev/null || break
        sleep 0.1
    done
    held_error="$tag to $host: no first answer: $(paste -sd'|' "$work/$tag.out")"
    return 1
}

# held_release TAG PID: lets the client send its second request on the same
# socket and waits for it; its answers are then in $work/TAG.out ("before
# BODY", then "after BODY").
held_release() {
    touch "$work/$1-go"
    wait "$2"
}
