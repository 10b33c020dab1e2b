#!/usr/bin/env bash
# Guest script: taking a node over from kube-proxy's IPVS mode, and handing
# it back, in the network of netns.sh with the manifests of
# tests/vm/takeover/. In order (each step starts from the state the earlier
# ones left):
#   seed       upstream-seed.sh programs the node as upstream would; a new
#              connection to a VIP works through upstream's state alone, and
#              two long-lived connections are opened through VIPs
#   takeover   the proxy starts on that node: zero IPVS and zero address
#              writes, `ipvsadm -Ln` and kube-ipvs0 unchanged, a held
#              connection still passes data, and upstream's leftovers are
#              reported once, by name
#   upstream   `cleanup-upstream --dry-run` changes nothing;
#              `cleanup-upstream` removes upstream's chains, rules and
#              ipsets and nothing else (a user's chain, rule and ipset and
#              kubelet's canaries stay, IPVS and kube-ipvs0 do not change),
#              the other held connection still passes data, new ones work
#   handback   `cleanup` with --ipvs-exclude-cidrs removes everything the
#              proxy owns and keeps the excluded address and virtual server
#
# Needs KIP_PROXY_BIN (tests/run.sh builds it and passes it in).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/vm/report.sh
source "$here/report.sh"
# shellcheck source=tests/vm/netns.sh
source "$here/netns.sh"

proxy=${KIP_PROXY_BIN:-}
work=/tmp/kip-takeover
min_sync=1
sync_period=5
excluded=10.96.200.0/24
common=(--manifests "$here/takeover" --hostname-override vm-node --nodeport-addresses 192.0.2.0/24
    --cluster-cidr 10.244.0.0/16 --ipvs-exclude-cidrs "$excluded")
# shellcheck source=tests/vm/proxy.sh
source "$here/proxy.sh"
# shellcheck source=tests/vm/held.sh
source "$here/held.sh"
# Every kernel write in the log ("IPVS write", "address write: ...").
export RUST_LOG=kube_ipvs_proxy=debug

# Upstream's names (pkg/proxy/ipvs/proxier.go iptablesChains, ipset.go
# ipsetInfo), as the checks below look for them.
upstream_chains="KUBE-SERVICES KUBE-POSTROUTING KUBE-NODE-PORT KUBE-LOAD-BALANCER KUBE-MARK-MASQ
KUBE-FORWARD KUBE-PROXY-FIREWALL KUBE-SOURCE-RANGES-FIREWALL KUBE-IPVS-FILTER KUBE-IPVS-OUT-FILTER"
upstream_ipsets="KUBE-LOOP-BACK KUBE-CLUSTER-IP KUBE-EXTERNAL-IP KUBE-EXTERNAL-IP-LOCAL
KUBE-LOAD-BALANCER KUBE-LOAD-BALANCER-FW KUBE-LOAD-BALANCER-LOCAL KUBE-LOAD-BALANCER-SOURCE-IP
KUBE-LOAD-BALANCER-SOURCE-CIDR KUBE-NODE-PORT-TCP KUBE-NODE-PORT-LOCAL-TCP KUBE-NODE-PORT-UDP
KUBE-NODE-PORT-LOCAL-UDP KUBE-NODE-PORT-SCTP-HASH KUBE-NODE-PORT-LOCAL-SCTP-HASH
KUBE-HEALTH-CHECK-NODE-PORT KUBE-IPVS-IPS"

# --- state ------------------------------------------------------------------

rules_v4() { iptables-save | grep -v '^#' | sed 's/ \[[0-9]*:[0-9]*\]$//'; }
rules_v6() { ip6tables-save | grep -v '^#' | sed 's/ \[[0-9]*:[0-9]*\]$//'; }
kube_ipvs0() { ip addr show dev kube-ipvs0 2>&1; }
vips() { ip -o -4 addr show dev kube-ipvs0 2>/dev/null | awk '{print $4}' | sort | paste -sd' '; }
# Everything cleanup-upstream could touch, and what it must not.
netfilter_state() {
    rules_v4
    rules_v6
    ipset list | grep -v '^References:'
    ipvsadm -Sn
    vips
    nft list tables
}

# Upstream's names still present in iptables-save, ip6tables-save or ipset.
upstream_left() {
    local name saved
    saved=$(rules_v4; rules_v6)
    for name in $upstream_chains; do
        grep -qE -- "(^:| -j | -g )$name( |$)" <<<"$saved" && printf 'chain %s\n' "$name"
    done
    for name in $upstream_ipsets; do
        ipset list -n | grep -qxF -- "$name" && printf 'ipset %s\n' "$name"
    done
    return 0
}

# client_get URL: the body of one GET from the client, on a fresh connection.
client_get() { in_client curl -sf --max-time 3 "$1"; }

expect_same() { # NAME WHAT BEFORE AFTER
    local difference
    difference=$(diff <(printf '%s\n' "$3") <(printf '%s\n' "$4"))
    if [[ -z $difference ]]; then
        pass "$1" "$2 identical ($(grep -c . <<<"$4") lines)"
    else
        fail "$1" "$2 changed: $(grep '^[<>]' <<<"$difference" | head -n 8 | paste -sd'|')"
    fi
}

# held_check NAME TAG PID PATTERN: releases the held connection and passes
# when its second answer, on the same socket, matches PATTERN.
held_check() {
    held_release "$2" "$3"
    local out
    out=$(paste -sd'|' "$work/$2.out")
    if [[ $out == *"after "$4* ]]; then
        pass "$1" "same connection: $out"
    else
        fail "$1" "expected 'after $4' on the held connection, got '$out'"
    fi
}

# --- steps ------------------------------------------------------------------

setup_error=
h1_pid=
h2_pid=

step_seed() {
    local out
    if ! out=$(bash "$here/upstream-seed.sh" 2>&1); then
        setup_error="upstream-seed.sh failed: $(tail -n 3 <<<"$out" | paste -sd'|')"
        fail seed-upstream "$setup_error"
        return 1
    fi
    pass seed-upstream "$(ipvsadm -Sn | grep -c '^-A') virtual servers, kube-ipvs0: $(vips); $(rules_v4 | grep -c '^-A') iptables rules, $(ipset list -n | wc -l) ipsets"
    local answer
    answer=$(in_client curl -sf --max-time 3 http://10.96.0.10/)
    if [[ $answer == web-[ab]:8080 ]]; then
        pass seed-serves "a new connection to 10.96.0.10:80 through upstream's state alone: $answer"
    else
        fail seed-serves "expected web-a or web-b from 10.96.0.10:80, got '$answer'"
    fi
    held_open h1 10.96.0.10 in_client || { setup_error=$held_error; fail seed-held-connections "$setup_error"; return 1; }
    h1_pid=$held_pid
    held_open h2 10.96.0.11 in_client || { setup_error=$held_error; fail seed-held-connections "$setup_error"; return 1; }
    h2_pid=$held_pid
    pass seed-held-connections "$(paste -sd' ' "$work/h1.out"), $(paste -sd' ' "$work/h2.out")"
}

step_takeover() {
    local ipvs_before addr_before why
    ipvs_before=$(ipvsadm -Ln)
    addr_before=$(kube_ipvs0)
    proxy_start takeover
    # The first sync is full; the second, at --ipvs-sync-period, reads the
    # kernel again and must still find nothing to change.
    if ! why=$(wait_syncs 2); then
        fail takeover-synced "$why"
        return 1
    fi
    pass takeover-synced "syncs (kind writes): $(syncs "$proxy_log" | paste -sd',')"
    local ipvs_writes addr_writes synced
    synced=$(sync_count)
    ipvs_writes=$(grep -c 'IPVS write' "$proxy_log")
    addr_writes=$(grep -c 'address write' "$proxy_log")
    if ((ipvs_writes == 0)); then
        pass takeover-zero-ipvs-writes "0 IPVS writes over $synced syncs"
    else
        fail takeover-zero-ipvs-writes "$ipvs_writes IPVS writes: $(grep 'IPVS write' "$proxy_log" | head -n 4 | paste -sd'|')"
    fi
    if ((addr_writes == 0)); then
        pass takeover-zero-address-writes "0 address writes over $synced syncs"
    else
        fail takeover-zero-address-writes "$addr_writes address writes: $(grep 'address write' "$proxy_log" | head -n 4 | paste -sd'|')"
    fi
    # The first sync creates the proxy's nftables table beside iptables-nft's
    # and fills its sets; every later one must adopt it and write nothing.
    local later_writes recreated
    later_writes=$(syncs "$proxy_log" | tail -n +2 | awk '{s += $2} END {print s + 0}')
    recreated=$(grep -c 'made for another ruleset' "$proxy_log")
    if ((later_writes == 0 && recreated == 0)); then
        pass takeover-nft-adopted "the syncs after the first wrote nothing; the table was made once ($(syncs "$proxy_log" | paste -sd','))"
    else
        fail takeover-nft-adopted "writes after the first sync: $later_writes; table re-created $recreated time(s) ($(syncs "$proxy_log" | paste -sd','))"
    fi
    expect_same takeover-ipvs-unchanged "ipvsadm -Ln" "$ipvs_before" "$(ipvsadm -Ln)"
    expect_same takeover-kube-ipvs0-unchanged "ip addr show kube-ipvs0" "$addr_before" "$(kube_ipvs0)"
    held_check takeover-held-connection h1 "$h1_pid" 'web-[ab]:8080'
    local reports missing=() name
    reports=$(grep -c "kube-proxy's IPVS mode left netfilter state" "$proxy_log")
    for name in KUBE-SERVICES KUBE-POSTROUTING KUBE-MARK-MASQ KUBE-IPVS-FILTER KUBE-FORWARD \
        KUBE-CLUSTER-IP KUBE-IPVS-IPS KUBE-LOOP-BACK "kube-ipvs-proxy cleanup-upstream"; do
        grep "kube-proxy's IPVS mode left netfilter state" "$proxy_log" | grep -qF -- "$name" || missing+=("$name")
    done
    if ((reports == 1 && ${#missing[@]} == 0)); then
        pass takeover-leftovers-reported "one warning: $(grep -o '"chains":"[^"]*"' "$proxy_log" | head -n 1)"
    else
        fail takeover-leftovers-reported "$reports warnings; missing from it: ${missing[*]:-nothing}"
    fi
}

step_cleanup_upstream() {
    local before after out rc
    before=$(netfilter_state)
    out=$("$proxy" cleanup-upstream --dry-run 2>&1)
    rc=$?
    after=$(netfilter_state)
    if ((rc == 0)) && [[ $out == *"would remove"*"KUBE-IPVS-FILTER"*"ipset KUBE-CLUSTER-IP"* ]]; then
        expect_same cleanup-upstream-dry-run "netfilter, ipset, IPVS and kube-ipvs0 after --dry-run listed $(grep -c '^  ' <<<"$out") items:" \
            "$before" "$after"
    else
        fail cleanup-upstream-dry-run "exit $rc, output: $(head -n 4 <<<"$out" | paste -sd'|')"
    fi

    local ipvs_before addr_before
    ipvs_before=$(ipvsadm -Ln)
    addr_before=$(kube_ipvs0)
    out=$("$proxy" cleanup-upstream 2>&1)
    rc=$?
    printf '%s\n' "$out" >"$work/cleanup-upstream.out"
    local left
    left=$(upstream_left | paste -sd' ')
    if ((rc == 0)) && [[ -z $left ]]; then
        pass cleanup-upstream-removes "exit 0, $(grep -c '^  ' <<<"$out") items removed; no upstream chain, jump or ipset left"
    else
        fail cleanup-upstream-removes "exit $rc; left: ${left:-nothing}; output: $(head -n 4 <<<"$out" | paste -sd'|')"
    fi

    local saved missing=() canaries
    saved=$(rules_v4)
    grep -qxF -- '-A INPUT -j USER-ALLOW' <<<"$saved" || missing+=("INPUT's jump to USER-ALLOW")
    grep -qxF -- '-A USER-ALLOW -m set --match-set user-allowlist src -j ACCEPT' <<<"$saved" || missing+=("USER-ALLOW's rule")
    ipset list user-allowlist 2>/dev/null | grep -qx '192.0.2.2' || missing+=("ipset user-allowlist with 192.0.2.2")
    canaries=$( (rules_v4; rules_v6) | grep -c '^:KUBE-KUBELET-CANARY ')
    ((canaries == 6)) || missing+=("KUBE-KUBELET-CANARY in mangle/nat/filter of both families (found $canaries of 6)")
    nft list table ip kube-ipvs-proxy >/dev/null 2>&1 || missing+=("the proxy's table ip kube-ipvs-proxy")
    if ((${#missing[@]} == 0)); then
        pass cleanup-upstream-keeps-foreign "USER-ALLOW chain and jump, ipset user-allowlist, $canaries KUBE-KUBELET-CANARY chains, table ip kube-ipvs-proxy"
    else
        fail cleanup-upstream-keeps-foreign "missing: $(printf '%s; ' "${missing[@]}")"
    fi
    expect_same cleanup-upstream-leaves-ipvs "ipvsadm -Ln" "$ipvs_before" "$(ipvsadm -Ln)"
    expect_same cleanup-upstream-leaves-kube-ipvs0 "ip addr show kube-ipvs0" "$addr_before" "$(kube_ipvs0)"
    held_check cleanup-upstream-held-connection h2 "$h2_pid" 'web-c:8080'
    local web sticky
    web=$(spread 4 client_get http://10.96.0.10/)
    sticky=$(client_get http://10.96.0.11/)
    if [[ $web == "2 web-a:8080 2 web-b:8080" && $sticky == web-c:8080 ]]; then
        pass cleanup-upstream-new-connections "10.96.0.10: $web; 10.96.0.11: $sticky"
    else
        fail cleanup-upstream-new-connections "10.96.0.10: expected '2 web-a:8080 2 web-b:8080', got '$web'; 10.96.0.11: expected web-c:8080, got '$sticky'"
    fi
    out=$("$proxy" cleanup-upstream 2>&1)
    if [[ $out == "no leftovers of kube-proxy's IPVS mode found" ]]; then
        pass cleanup-upstream-idempotent "$out"
    else
        fail cleanup-upstream-idempotent "a second run said: $(head -n 3 <<<"$out" | paste -sd'|')"
    fi
    local writes
    writes=$(grep -c -e 'IPVS write' -e 'address write' "$proxy_log")
    if proxy_alive && ((writes == 0)); then
        pass cleanup-upstream-proxy-unaffected "the proxy runs on, still 0 IPVS and address writes after $(sync_count) syncs"
    else
        fail cleanup-upstream-proxy-unaffected "alive: $(proxy_alive && echo yes || echo no), IPVS and address writes: $writes"
    fi
}

step_handback() {
    if ! proxy_stop; then
        fail handback-stop "$stop_error"
    fi
    local foreign_before rc
    foreign_before=$( (rules_v4; rules_v6) | grep -e USER-ALLOW -e KUBE-KUBELET-CANARY; ipset list user-allowlist)
    "$proxy" cleanup "${common[@]}" >"$work/cleanup.log" 2>&1
    rc=$?
    local vs tables held
    vs=$(ipvsadm -Sn | paste -sd'|')
    tables=$(nft list tables | paste -sd' ')
    held=$(vips)
    if ((rc != 0)); then
        fail handback-cleanup "cleanup exited $rc: $(tail -n 3 "$work/cleanup.log" | paste -sd'|')"
    elif [[ $tables == *kube-ipvs-proxy* || $vs == *10.96.0.1[01]* || $held == *10.96.0.1[01]/* ]]; then
        fail handback-cleanup "left of the proxy's: tables '$tables', IPVS '$vs', kube-ipvs0 '$held'"
    else
        pass handback-cleanup "no table kube-ipvs-proxy (tables: ${tables:-none}), no 10.96.0.10/11 in IPVS or on kube-ipvs0"
    fi
    if [[ $held == 10.96.200.10/32 && $vs == "-A -t 10.96.200.10:80 -s rr|-a -t 10.96.200.10:80 -r 10.244.1.14:8080 -m -w 1" ]]; then
        pass handback-keeps-excluded "kube-ipvs0 kept with $held; IPVS: $vs"
    else
        fail handback-keeps-excluded "expected only 10.96.200.10 (inside $excluded) on kube-ipvs0 and in IPVS; kube-ipvs0: '$held', ipvsadm -Sn: '$vs'"
    fi
    expect_same handback-keeps-foreign "USER-ALLOW, KUBE-KUBELET-CANARY and ipset user-allowlist" \
        "$foreign_before" "$( (rules_v4; rules_v6) | grep -e USER-ALLOW -e KUBE-KUBELET-CANARY; ipset list user-allowlist)"
}

# --- main -------------------------------------------------------------------

mkdir -p "$work"
if [[ ! -x $proxy ]]; then
    fail setup "KIP_PROXY_BIN is not an executable: '$proxy'"
    exit 1
fi
if ! netns_up; then
    fail setup "the test network did not come up"
    netns_down
    exit 1
fi
if step_seed; then
    step_takeover
    step_cleanup_upstream
    step_handback
fi
proxy_alive && proxy_stop
[[ -n $h1_pid ]] && kill "$h1_pid" 2>/dev/null
[[ -n $h2_pid ]] && kill "$h2_pid" 2>/dev/null
cp "$work"/*.log "$work"/*.out "$KIP_OUT/" 2>/dev/null
netns_down
report_status
