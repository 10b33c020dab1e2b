#!/usr/bin/env bash
# Guest script: what a packet goes through on its way to a service, in the
# two-node network of cluster.sh, with the proxy on node A (the root
# namespace) serving the manifests of tests/vm/packet-path/. Node B has no
# proxy: it forwards, holds its own copy of the ClusterIPs, and sends replies
# to outside addresses straight out. So a reply reaches the client only when
# node A translated the connection so that it comes back through node A.
#
# First the test bed proves itself without the proxy (topology-*); then one
# named check per scenario, each its own function, with the feature it
# depends on in its comment. KIP_PACKET_PATH_SELFTEST=1 runs no proxy: after
# the topology checks it shows, with ipvsadm and nft by hand, that the test
# bed tells a masqueraded NodePort from an unmasqueraded one.
#
# KIP_VIP_MODE (address or route, default address) is the proxy's
# --ipvs-vip-mode: tests/run.sh runs this script once in each mode (groups
# packet-path and packet-path-routes), and every check holds in both.
#
# Needs KIP_PROXY_BIN (tests/run.sh builds it and passes it in).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=/tmp/kip-packet-path
manifests=$work/manifests
CLUSTER_LOGS=$work/pods
# shellcheck source=tests/vm/report.sh
source "$here/report.sh"
# shellcheck source=tests/vm/cluster.sh
source "$here/cluster.sh"

proxy=${KIP_PROXY_BIN:-}
table=kube-ipvs-proxy  # in family ip
common=(--manifests "$manifests" --hostname-override node-a
    --cluster-cidr 10.244.0.0/16,fd00:10:244::/56 --nodeport-addresses 192.0.2.0/24,2001:db8::/64
    --ipvs-exclude-cidrs 10.96.200.0/24)
vip_mode=${KIP_VIP_MODE:-address}
# Last, so that check_vip_mode_switch can change it in place.
common+=(--ipvs-vip-mode "$vip_mode")
min_sync=1
sync_period=5
setup_error=  # when set, every scenario fails with it

# shellcheck source=tests/vm/proxy.sh
source "$here/proxy.sh"
# shellcheck source=tests/vm/held.sh
source "$here/held.sh"
# Every kernel write in the logs, so that a check that counts writes can say
# which they were.
export RUST_LOG=kube_ipvs_proxy=debug
source "$here/zone.sh"

# --- checks -----------------------------------------------------------------

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ready NAME: false, after failing NAME with the reason, when the test bed or
# the proxy is not there to test.
ready() {
    if [[ -n $setup_error ]]; then
        fail "$1" "setup failed: $setup_error"
        return 1
    fi
    if ! proxy_alive; then
        fail "$1" "the proxy is not running: $(tail -n 3 "$proxy_log" 2>/dev/null | paste -sd'|')"
        return 1
    fi
}

# expect_answer NAME PATTERN CMD...: passes when CMD prints an answer that
# matches the glob PATTERN. Up to 4 tries a second apart, for TCG and for the
# first sync's rules; fails with the last answer or error.
answer=
expect_answer() {
    local name=$1 pattern=$2 attempt
    shift 2
    for attempt in 1 2 3 4; do
        answer=$("$@" 2>&1 | paste -sd'|')
        # shellcheck disable=SC2053 # PATTERN is a glob on purpose
        if [[ $answer == $pattern ]]; then
            pass "$name" "$answer"
            return 0
        fi
        ((attempt < 4)) && sleep 1
    done
    fail "$name" "expected '$pattern', got '$answer' ($* ; 4 tries)"
    return 1
}

# matches PATTERN CMD...: the same, without reporting: true when CMD's answer
# matches PATTERN within 4 tries; the last answer is left in $answer.
matches() {
    local pattern=$1 attempt
    shift
    for attempt in 1 2 3 4; do
        answer=$("$@" 2>&1 | paste -sd'|')
        # shellcheck disable=SC2053 # PATTERN is a glob on purpose
        [[ $answer == $pattern ]] && return 0
        ((attempt < 4)) && sleep 1
    done
    return 1
}

# ipvs_connections VIP:PORT: the IPVS connection entries to VIP:PORT, one line
# each ("pro expire state source virtual destination").
ipvs_connections() { ipvsadm -Lnc 2>/dev/null | awk -v vip="$1" '$5 == vip' | paste -sd'|'; }

# vips_bound MODE FAMILY: the VIPs bound the MODE way (address: on
# kube-ipvs0; route: the proxy's local routes, protocol 75), as sorted
# ADDR/PREFIX words.
vips_bound() {
    local mode=$1 family=$2 prefix=32
    [[ $family == 6 ]] && prefix=128
    if [[ $mode == address ]]; then
        ip -o "-$family" addr show dev kube-ipvs0 2>/dev/null | awk '{print $4}'
    else
        ip "-$family" route show table local proto 75 | awk -v p="$prefix" '$1 == "local" {print $2 "/" p}'
    fi | sort -V | paste -sd' '
}

other_mode() { if [[ $1 == address ]]; then echo route; else echo address; fi; }

# settled CHECK: polls CHECK (a function) until it holds, for at most 10 s of
# 0.1 s polls. For after wait_syncs: the sync it counts may have begun
# before the proxy saw a manifest's change. The bound only stops a hung
# run; callers assert on the state themselves.
settled() {
    local _
    for _ in $(seq 100); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}

# table_handle: the kernel's handle of the proxy's table; a table deleted and
# made again gets a new one. Empty when there is no table.
table_handle() {
    nft -j list tables 2>/dev/null | python3 -c '
import json, sys
try:
    doc = json.load(sys.stdin)
except ValueError:
    sys.exit()
for obj in doc.get("nftables", []):
    t = obj.get("table")
    if t and t["family"] == "ip" and t["name"] == sys.argv[1]:
        print(t["handle"])' "$table"
}

# edit_manifest FILE CMD...: runs CMD on a copy of FILE and renames it into
# place, so that the proxy never reads a half-written file.
edit_manifest() {
    local file=$manifests/$1
    shift
    cp "$file" "$work/edit.tmp" && "$@" "$work/edit.tmp" && mv "$work/edit.tmp" "$file"
}

# --- the test bed, without the proxy -----------------------------------------

topology_checks() {
    if [[ -n $setup_error ]]; then
        fail "topology" "setup failed: $setup_error"
        return
    fi
    expect_answer "topology-pod-a-to-pod-b" "pod-b1 10.244.1.12" http_from pod-a2 http://10.244.2.11:8080/
    expect_answer "topology-pod-b-to-pod-a" "pod-a1 10.244.2.12" http_from pod-b2 http://10.244.1.11:8080/
    expect_answer "topology-udp-across-nodes" "pod-b2 10.244.1.12" udp_from pod-a2 10.244.2.12 5353
    expect_answer "topology-outside-to-node-a" "host-listener 192.0.2.100" \
        http_from outside "http://$CLUSTER_NODE_A_IP:$CLUSTER_LISTENER_PORT/"
    expect_answer "topology-outside-second-address" "host-listener 192.0.2.101" \
        http_from outside "http://$CLUSTER_NODE_A_IP:$CLUSTER_LISTENER_PORT/" --interface "$CLUSTER_OUTSIDE_IP2"
    # A RST from node B's own stack: the lan carries outside's packets to it.
    expect_answer "topology-outside-to-node-b" "refused" tcp_probe outside "$CLUSTER_NODE_B_IP" 9

    # Node B's two traps: a reply to a ClusterIP is delivered locally there,
    # and a reply to an outside address leaves directly, not via node A.
    local held route
    held=$(ip -n node-b -4 -o addr show dev kube-ipvs0 | awk '{print $4}' | sed 's|/32||' | sort -V | paste -sd' ')
    if [[ $held == "${CLUSTER_SERVICE_IPS[*]}" ]]; then
        route=$(ip -n node-b route get 10.96.1.10 from 10.244.2.11 iif cbr0 | head -n 1)
        if [[ $route == local\ 10.96.1.10* ]]; then
            pass "topology-node-b-holds-cluster-ips" "kube-ipvs0: $held; a pod's reply to 10.96.1.10: $route"
        else
            fail "topology-node-b-holds-cluster-ips" "a pod's reply to 10.96.1.10 is routed '$route', not local"
        fi
    else
        fail "topology-node-b-holds-cluster-ips" "node B's kube-ipvs0 holds '$held'"
    fi
    route=$(ip -n node-b route get "$CLUSTER_OUTSIDE_IP" from 10.244.2.11 iif cbr0 | head -n 1)
    local far
    far=$(ip -n node-b route get 198.51.100.1 from 10.244.2.11 iif cbr0 | head -n 1)
    if [[ $route == "$CLUSTER_OUTSIDE_IP from 10.244.2.11 dev eth0"* && $far == *"via $CLUSTER_OUTSIDE_IP dev eth0"* ]]; then
        pass "topology-node-b-replies-bypass-node-a" "$route | $far"
    else
        fail "topology-node-b-replies-bypass-node-a" "$route | $far"
    fi
    # Outside reaches the pods only through services on node A.
    expect_answer "topology-outside-has-no-pod-route" "Network is unreachable" tcp_probe outside 10.244.2.11 8080
}

# The test bed tells a masqueraded path from an unmasqueraded one (selftest
# mode only; no proxy): a NodePort made by hand with ipvsadm to pod-b1 gets
# no answer until a hand-written nft rule masquerades it.
selftest_masquerade() {
    local unmasqueraded
    if [[ -n $setup_error ]]; then
        fail "selftest-masquerade" "setup failed: $setup_error"
        return
    fi
    sysctl -qw net.ipv4.vs.conntrack=1
    ipvsadm -A -t "$CLUSTER_NODE_A_IP:30080" -s rr &&
        ipvsadm -a -t "$CLUSTER_NODE_A_IP:30080" -r 10.244.2.11:8080 -m
    unmasqueraded=$(CLUSTER_HTTP_TIMEOUT=2 http_from outside "http://$CLUSTER_NODE_A_IP:30080/" 2>&1 | paste -sd'|')
    if [[ $unmasqueraded == pod-* ]]; then
        fail "selftest-unmasqueraded-nodeport-unanswered" "answered: '$unmasqueraded'"
    else
        pass "selftest-unmasqueraded-nodeport-unanswered" "$unmasqueraded"
    fi
    nft -f - <<'NFT'
table ip selftest {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr != 10.244.0.0/16 ip daddr 10.244.2.11 tcp dport 8080 masquerade
    }
}
NFT
    expect_answer "selftest-masqueraded-nodeport-answered" "pod-b1 $CLUSTER_NODE_A_IP" \
        http_from outside "http://$CLUSTER_NODE_A_IP:30080/"
    nft delete table ip selftest
    ipvsadm -C
}

# --- scenarios ----------------------------------------------------------------

# The proxy's set elements after the first sync: the ClusterIPs are in the
# sets that masquerade (cluster-ips) and reject unserved ports (service-ips).
check_ruleset_present() {
    ready "ruleset-present" || return
    local attempt found
    for attempt in $(seq 10); do
        found=$(nft -j list table ip "$table" 2>&1 | python3 -c '
import json, sys
text = sys.stdin.read()
try:
    doc = json.loads(text)
except ValueError:
    print("no table: " + text.strip()[:200]); sys.exit(1)
sets = {o["set"]["name"]: json.dumps(o["set"].get("elem", [])) for o in doc["nftables"] if "set" in o}
missing = [s for s in ("cluster-ips", "service-ips") if "10.96.1.10" not in sets.get(s, "")]
print(("missing 10.96.1.10 in " + ", ".join(missing)) if missing else "sets: " + " ".join(sorted(sets)))
sys.exit(1 if missing else 0)') && break
        sleep 1
    done
    if [[ $found == sets:* ]]; then pass "ruleset-present" "$found"; else fail "ruleset-present" "$found"; fi
}

# Needs the VIPs bound the configured way and only that way: every VIP of
# both families, and nothing left of the other kind.
check_vip_binding() {
    local name="vip-binding-$vip_mode" v4 v6 stray other problems=()
    ready "$name" || return
    other=$(other_mode "$vip_mode")
    v4=$(vips_bound "$vip_mode" 4)
    v6=$(vips_bound "$vip_mode" 6)
    stray="$(vips_bound "$other" 4) $(vips_bound "$other" 6)"
    for want in 10.96.1.10/32 10.96.1.11/32 203.0.113.10/32 203.0.113.20/32; do
        [[ " $v4 " == *" $want "* ]] || problems+=("$want not bound")
    done
    for want in fd00:10:96::40/128 2001:db8:203::40/128; do
        [[ " $v6 " == *" $want "* ]] || problems+=("$want not bound")
    done
    [[ -z ${stray// /} ]] || problems+=("bound the $other way too: $stray")
    if ((${#problems[@]} == 0)); then
        pass "$name" "$(wc -w <<<"$v4") IPv4 and $(wc -w <<<"$v6") IPv6 VIPs, none the $other way"
    else
        fail "$name" "$(printf '%s; ' "${problems[@]}")"
    fi
}

# `plan` names the VIPs as this mode binds them: its `#` lines for them
# ("# kube-ipvs0 ADDR", or "# local ADDR dev lo table local proto 75")
# list exactly the addresses vips_bound finds in the kernel, both families.
# Runs before any check binds an address of the excluded 10.96.200.0/24.
check_plan_vips() {
    local name="plan-vips-$vip_mode" plan planned bound
    ready "$name" || return
    if ! plan=$("$proxy" plan "${common[@]}" 2>"$work/plan-vips.err"); then
        fail "$name" "plan failed: $(tail -n 3 "$work/plan-vips.err" | paste -sd'|')"
        return
    fi
    if [[ $vip_mode == address ]]; then
        planned=$(awk '$1 == "#" && $2 == "kube-ipvs0" && NF == 3 {print $3}' <<<"$plan")
    else
        planned=$(awk '$1 == "#" && $2 == "local" && $4 == "dev" {print $3}' <<<"$plan")
    fi
    planned=$(sort -V <<<"$planned" | paste -sd' ')
    bound=$(printf '%s %s' "$(vips_bound "$vip_mode" 4)" "$(vips_bound "$vip_mode" 6)" |
        tr ' ' '\n' | sed 's|/[0-9]*$||' | grep -v '^$' | sort -V | paste -sd' ')
    if [[ -n $planned && $planned == "$bound" ]]; then
        pass "$name" "plan and kernel: $(wc -w <<<"$planned") VIPs ($vip_mode)"
    else
        fail "$name" "plan lists '$planned' but the kernel holds '$bound' ($vip_mode)"
    fi
}

# ARP as upstream: without --ipvs-strict-arp node A answers who-has for a VIP
# it holds (arp_ignore 0: any local address), and with strict ARP's sysctls
# (arp_ignore 1, arp_announce 2) it does not, since a VIP is no address of
# the interface asked on. 203.0.113.10 (an ExternalIP) is node A's alone;
# node B holds only ClusterIPs.
check_arp() {
    local name="arp-$vip_mode" mac answered strict ignore_before announce_before
    ready "$name" || return
    mac=$(cat /sys/class/net/eth-lan/address)
    answered=$(ip netns exec outside python3 "$here/arp_probe.py" eth0 203.0.113.10 2>&1 | paste -sd' ')
    ignore_before=$(sysctl -n net.ipv4.conf.all.arp_ignore)
    announce_before=$(sysctl -n net.ipv4.conf.all.arp_announce)
    sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
    strict=$(ip netns exec outside python3 "$here/arp_probe.py" eth0 203.0.113.10 2>&1 | paste -sd' ')
    sysctl -qw net.ipv4.conf.all.arp_ignore="$ignore_before" net.ipv4.conf.all.arp_announce="$announce_before"
    if [[ " $answered " != *" $mac "* ]]; then
        fail "$name" "node A ($mac) did not answer who-has 203.0.113.10 with arp_ignore $ignore_before: '$answered'"
    elif [[ " $strict " == *" $mac "* ]]; then
        fail "$name" "node A ($mac) answered who-has 203.0.113.10 under strict ARP: '$strict'"
    else
        pass "$name" "answered by $answered with arp_ignore $ignore_before; by '${strict:-nobody}' under strict ARP"
    fi
}

# Needs the masquerade of external traffic with externalTrafficPolicy Cluster
# (nodeports and external-ips sets): unmasqueraded, pod-b1 answers the client
# directly through node B's default route and the client drops the answer.
check_external_etp_cluster() {
    local name url
    for name in nodeport externalip loadbalancer; do
        case $name in
        nodeport) url=http://$CLUSTER_NODE_A_IP:30080/ ;;
        externalip) url=http://203.0.113.10/ ;;
        loadbalancer) url=http://203.0.113.20/ ;;
        esac
        ready "external-$name-etp-cluster" || continue
        expect_answer "external-$name-etp-cluster" "pod-b1 $CLUSTER_NODE_A_IP" http_from outside "$url"
    done
}

# Needs externalTrafficPolicy Local kept unmasqueraded (not in the nodeports
# set): pod-a1 sees the client's own address.
check_external_etp_local() {
    ready "external-nodeport-etp-local" || return
    expect_answer "external-nodeport-etp-local" "pod-a1 $CLUSTER_OUTSIDE_IP" \
        http_from outside "http://$CLUSTER_NODE_A_IP:30081/"
}

# Needs the NodePort of an externalTrafficPolicy Local service to serve only
# this node's endpoints (none here: dropped, nodeports-no-local-endpoints),
# while its ClusterIP keeps every endpoint. IPVS must not have forwarded the
# connection to pod-b1: no IPVS connection entry for the NodePort.
check_external_etp_local_no_endpoint() {
    local name=external-nodeport-etp-local-no-endpoint probe forwarded
    ready "$name" || return
    probe=$(tcp_probe outside "$CLUSTER_NODE_A_IP" 30082)
    forwarded=$(ipvs_connections "$CLUSTER_NODE_A_IP:30082")
    # Dropped, so a timeout: IPVS alone, with no real server to choose,
    # answers with a port unreachable ("refused") instead.
    if [[ $probe == open ]]; then
        fail "$name" "outside connected to $CLUSTER_NODE_A_IP:30082"
    elif [[ $probe != timeout ]]; then
        fail "$name" "expected the SYN to be dropped (timeout), got: $probe"
    elif [[ -n $forwarded ]]; then
        fail "$name" "no answer ($probe), but IPVS forwarded it: $forwarded"
    elif ! matches "pod-b1 *" http_from pod-a2 http://10.96.1.14/; then
        fail "$name" "NodePort: $probe; but pod-a2 -> 10.96.1.14:80 got '$answer', expected pod-b1"
    else
        pass "$name" "NodePort from outside: $probe, not forwarded; ClusterIP from pod-a2: $answer"
    fi
}

# Needs the masquerade of ClusterIP traffic from outside the cluster CIDR
# (cluster-ips), here the node's own, sent from the ClusterIP itself as its
# source (service-ips): unmasqueraded, pod-b1's reply to 10.96.1.10 is
# delivered locally on node B.
check_node_to_clusterip() {
    ready "node-to-clusterip-remote-pod" || return
    expect_answer "node-to-clusterip-remote-pod" "pod-b1 *" http_from node-a http://10.96.1.10/
}

# Needs --cluster-cidr (local-pod-cidrs): a pod's ClusterIP traffic is not
# masqueraded, so pod-b1 sees pod-a2's own address.
check_pod_to_clusterip() {
    ready "pod-to-clusterip-remote-pod" || return
    expect_answer "pod-to-clusterip-remote-pod" "pod-b1 10.244.1.12" http_from pod-a2 http://10.96.1.10/
}

# Needs the hairpin masquerade (hairpin set): unmasqueraded, pod-a1 receives
# a packet from its own address and drops it as a martian.
check_hairpin() {
    ready "hairpin" || return
    expect_answer "hairpin" "pod-a1 *" http_from pod-a1 http://10.96.1.12/
}

# Needs loadBalancerSourceRanges (firewall-ips, firewall-allow): 192.0.2.101
# is not in them. The allowed client also needs the external masquerade.
check_source_ranges() {
    local name=source-ranges denied forwarded
    ready "$name" || return
    if ! matches "pod-b1 $CLUSTER_NODE_A_IP" http_from outside http://203.0.113.30/; then
        fail "$name" "from $CLUSTER_OUTSIDE_IP: expected 'pod-b1 $CLUSTER_NODE_A_IP', got '$answer'"
        return
    fi
    denied=$(CLUSTER_HTTP_TIMEOUT=2 http_from outside http://203.0.113.30/ --interface "$CLUSTER_OUTSIDE_IP2" 2>&1 | paste -sd'|')
    forwarded=$(ipvs_connections 203.0.113.30:80 | tr '|' '\n' | grep -F " $CLUSTER_OUTSIDE_IP2:" | paste -sd'|')
    if [[ $denied == pod-* ]]; then
        fail "$name" "$CLUSTER_OUTSIDE_IP2 was served: '$denied'"
    elif [[ -n $forwarded ]]; then
        fail "$name" "$CLUSTER_OUTSIDE_IP2 got no answer ($denied) but IPVS forwarded it: $forwarded"
    else
        pass "$name" "$CLUSTER_OUTSIDE_IP: '$answer'; $CLUSTER_OUTSIDE_IP2: '$denied'"
    fi
}

# Needs the rejection of ports no service serves on a service address
# (service-ips): otherwise 10.96.1.10 is just a local address of node A, and
# a pod reaches node A's host-network listener through it.
check_host_listener_not_exposed() {
    local name=host-listener-not-exposed through
    ready "$name" || return
    if ! matches "host-listener 127.0.0.1" http_from node-a "http://127.0.0.1:$CLUSTER_LISTENER_PORT/"; then
        fail "$name" "the listener itself does not answer on 127.0.0.1:$CLUSTER_LISTENER_PORT: '$answer'"
        return
    fi
    through=$(CLUSTER_HTTP_TIMEOUT=2 http_from pod-a2 "http://10.96.1.10:$CLUSTER_LISTENER_PORT/" 2>&1 | paste -sd'|')
    if [[ $through == host-listener* ]]; then
        fail "$name" "pod-a2 -> 10.96.1.10:$CLUSTER_LISTENER_PORT reached the listener: '$through'"
    else
        pass "$name" "127.0.0.1: '$answer'; pod-a2 -> 10.96.1.10:$CLUSTER_LISTENER_PORT: '$through'"
    fi
}

# Needs stale UDP flows to a removed endpoint deleted (conntrack, and IPVS's
# own connection): a client that keeps sending from one source port would
# otherwise stick to pod-b1 for as long as it keeps sending.
check_udp_endpoint_replaced() {
    local name=udp-endpoint-replaced out=$work/udp.out stop=$work/udp-stop pid attempt
    ready "$name" || return
    rm -f "$stop"
    : >"$out"
    in_ns pod-a2 python3 "$here/udp_stream.py" 10.96.1.53 53 40053 60 "$stop" >"$out" 2>&1 &
    pid=$!
    for attempt in $(seq 100); do
        (($(grep -c ' pod-b1 ' "$out") >= 5)) && break
        sleep 0.2
    done
    if (($(grep -c ' pod-b1 ' "$out") < 5)); then
        touch "$stop"
        wait "$pid"
        fail "$name" "fewer than 5 answers from pod-b1 in 20 s before the edit: $(tail -n 3 "$out" | paste -sd'|')"
        return
    fi
    local flows_before flows_after edit_ms
    flows_before=$(conntrack -L -p udp --orig-dst 10.96.1.53 2>/dev/null | grep -c udp)
    edit_ms=$(now_ms)
    edit_manifest dns.yaml sed -i 's/10\.244\.2\.11/10.244.2.12/; s/name: pod-b1}/name: pod-b2}/'
    # Until the first answer from pod-b2 (at most 10 s), then 3 s more.
    for attempt in $(seq 100); do
        grep -q ' pod-b2 ' "$out" && break
        sleep 0.1
    done
    sleep 3
    touch "$stop"
    wait "$pid"
    flows_after=$(conntrack -L -p udp --orig-dst 10.96.1.53 2>/dev/null | grep -c udp)
    local verdict
    verdict=$(python3 - "$out" "$edit_ms" <<'PY'
import sys
edit = int(sys.argv[2])
answers = []
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) >= 2 and parts[0].isdigit():
        answers.append((int(parts[0]), parts[1]))
first_b2 = next((t for t, who in answers if who == "pod-b2"), None)
counts = {}
for _, who in answers:
    counts[who] = counts.get(who, 0) + 1
summary = " ".join(f"{who}={n}" for who, n in sorted(counts.items()))
if first_b2 is None:
    print(f"FAIL no answer from pod-b2 within 13 s of the edit; answers {summary}")
elif first_b2 - edit > 10000:
    print(f"FAIL pod-b2 first answered {first_b2 - edit} ms after the edit (bound 10000); answers {summary}")
else:
    late_b1 = sum(1 for t, who in answers if who == "pod-b1" and t > first_b2)
    verdict = "FAIL" if late_b1 else "PASS"
    print(f"{verdict} pod-b2 from {first_b2 - edit} ms after the edit; {late_b1} pod-b1 answers after it; answers {summary}")
PY
)
    local detail="${verdict#* }; conntrack flows to 10.96.1.53 before/after: $flows_before/$flows_after"
    if [[ $verdict == PASS* ]]; then pass "$name" "$detail"; else fail "$name" "$detail"; fi
}

# flows_to VIP ENDPOINT: how many UDP conntrack flows to VIP have their
# replies coming from ENDPOINT.
flows_to() {
    conntrack -L -p udp --orig-dst "$1" --reply-src "$2" 2>/dev/null | grep -c '^udp'
}

# Feature: conntrack cleanup over ctnetlink (Reconciler::clear_stale_flows).
# A client that has gone quiet leaves a flow to the endpoint the service no
# longer has. Since 5.9, with expire_nodest_conn=1 (which the proxy sets),
# the kernel expires such flows itself soon after the real server goes;
# older kernels, and a node whose operator turned it off, wait for the
# flow's timeout. The check turns it off for its duration, so that only the
# proxy's cleanup can delete the flow: with --conntrack-cleanup=false it
# fails.
check_udp_stale_flow_deleted() {
    local name=udp-stale-flow-deleted out=$work/udp-quiet.out attempt before after deleted
    ready "$name" || return
    sysctl -qw net.ipv4.vs.expire_nodest_conn=0
    # dns is served by pod-b2 (10.244.2.12) since udp-endpoint-replaced.
    in_ns pod-a2 python3 "$here/udp_stream.py" 10.96.1.53 53 40054 1 "$work/never" >"$out" 2>&1
    before=$(flows_to 10.96.1.53 10.244.2.12)
    if ! grep -q ' pod-b2 ' "$out" || ((before < 1)); then
        sysctl -qw net.ipv4.vs.expire_nodest_conn=1
        fail "$name" "no flow to pod-b2 to start from: answers '$(paste -sd'|' "$out")', flows $before"
        return
    fi
    local syncs_before
    syncs_before=$(sync_count)
    edit_manifest dns.yaml sed -i 's/10\.244\.2\.12/10.244.2.11/; s/name: pod-b2}/name: pod-b1}/'
    local why
    why=$(wait_syncs $((syncs_before + 1))) || {
        sysctl -qw net.ipv4.vs.expire_nodest_conn=1
        fail "$name" "$why"
        return
    }
    for attempt in $(seq 50); do
        after=$(flows_to 10.96.1.53 10.244.2.12)
        ((after == 0)) && break
        sleep 0.1
    done
    deleted=$(python3 - "$proxy_log" <<'PY'
import json, sys
total = 0
for line in open(sys.argv[1], errors="replace"):
    try:
        fields = json.loads(line).get("fields", {})
    except ValueError:
        continue
    if fields.get("message") == "sync done":
        total += int(fields.get("conntrack_deleted") or 0)
print(total)
PY
)
    sysctl -qw net.ipv4.vs.expire_nodest_conn=1
    local detail="flows to 10.96.1.53 from pod-b2 before/after the edit: $before/$after; conntrack_deleted logged: $deleted (expire_nodest_conn=0 meanwhile)"
    if ((after == 0 && deleted >= 1)); then pass "$name" "$detail"; else fail "$name" "$detail"; fi
}

extra_manifest() {
    cat <<'YAML'
# Added by packet-path.sh: new set elements while a connection is open.
apiVersion: v1
kind: Service
metadata: {name: extra, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.1.20
  clusterIPs: [10.96.1.20]
  externalIPs: [203.0.113.40]
  selector: {app: extra}
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30084}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: extra-e5v1c
  namespace: default
  labels: {kubernetes.io/service-name: extra}
addressType: IPv4
ports:
- {name: http, protocol: TCP, port: 8080}
endpoints:
- addresses: [10.244.1.12]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-a
  targetRef: {kind: Pod, namespace: default, name: pod-a2}
YAML
}

# Needs a service change to be set elements added in one transaction: the
# table keeps its handle (never deleted and made again), and nothing the
# change does (a transient ruleset, a conntrack cleanup) disturbs an open
# masqueraded connection to another service.
check_tcp_survives_nft_change() {
    local name=tcp-survives-nft-change pid attempt before after syncs_before why handle_before handle_after
    ready "$name" || return
    rm -f "$work/t-ready" "$work/t-go"
    in_ns outside python3 "$here/held_client.py" "$CLUSTER_NODE_A_IP" 30080 "$work" t >"$work/t-client.out" 2>&1 &
    pid=$!
    for attempt in $(seq 150); do
        [[ -e $work/t-ready ]] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [[ ! -e $work/t-ready ]]; then
        touch "$work/t-go"
        wait "$pid"
        fail "$name" "no first answer on the held connection: $(paste -sd'|' "$work/t-client.out")"
        return
    fi
    handle_before=$(table_handle)
    syncs_before=$(sync_count)
    extra_manifest >"$work/extra.tmp" && mv "$work/extra.tmp" "$manifests/extra.yaml"
    why=$(wait_syncs $((syncs_before + 1)))
    local sets
    sets=$(nft list set ip "$table" cluster-ips 2>&1 | grep -c 10.96.1.20)
    handle_after=$(table_handle)
    touch "$work/t-go"
    wait "$pid"
    before=$(sed -n 's/^before //p' "$work/t-client.out")
    after=$(sed -n 's/^after //p' "$work/t-client.out")
    if [[ -n $why ]]; then
        fail "$name" "no sync after adding extra.yaml: $why"
    elif [[ -z $handle_before || $handle_before != "$handle_after" ]]; then
        fail "$name" "the table was made again: handle '$handle_before' before the sync, '$handle_after' after (client: $(paste -sd'|' "$work/t-client.out"))"
    elif [[ $before == "pod-b1 $CLUSTER_NODE_A_IP" && $before == "$after" ]]; then
        pass "$name" "'$before' before and after a sync that added extra (10.96.1.20 in cluster-ips: $sets; table handle $handle_after kept)"
    else
        fail "$name" "client output: $(paste -sd'|' "$work/t-client.out") (10.96.1.20 in cluster-ips: $sets)"
    fi
}

unsafe_manifest() {
    cat <<'YAML'
# Added by packet-path.sh: ExternalIPs that must never be bound, and one
# that is node A's own address.
apiVersion: v1
kind: Service
metadata: {name: unsafe, namespace: default}
spec:
  clusterIP: 10.96.1.21
  clusterIPs: [10.96.1.21]
  externalIPs: [127.0.0.1, 0.0.0.0, 255.255.255.255, 169.254.7.7, 224.0.0.9, 192.0.2.1]
  selector: {app: unsafe}
  ports:
  - {name: http, protocol: TCP, port: 8088, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: unsafe-x1
  namespace: default
  labels: {kubernetes.io/service-name: unsafe}
addressType: IPv4
ports:
- {name: http, protocol: TCP, port: 8080}
endpoints:
- addresses: [10.244.2.11]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-b
YAML
}

# Whether the unsafe service is programmed: its ClusterIP bound, and node
# A's own address serving its port.
unsafe_served() {
    local bound table_now
    bound=$(vips_bound "$vip_mode" 4)
    table_now=$(ipvsadm -Sn)
    [[ " $bound " == *" 10.96.1.21/32 "* && $table_now == *"-A -t 192.0.2.1:8088 "* ]]
}

# Whether the unsafe service's virtual server on node A's address is gone.
unsafe_gone() {
    local table_now
    table_now=$(ipvsadm -Sn)
    [[ $table_now != *"-A -t 192.0.2.1:8088 "* ]]
}

# Feature: safe external addresses (translate's external_addresses). The
# unusable ExternalIPs get no address and no virtual server, each is named
# in a warning, and the service's ClusterIP still works; node A's own
# address is served without being bound again, and deleting the service
# leaves that address and its local route on node A.
check_external_ips_safe() {
    local name=external-ips-safe syncs_before why problems=()
    ready "$name" || return
    syncs_before=$(sync_count)
    unsafe_manifest >"$work/unsafe.tmp" && mv "$work/unsafe.tmp" "$manifests/unsafe.yaml"
    why=$(wait_syncs $((syncs_before + 1))) || { fail "$name" "no sync after adding unsafe.yaml: $why"; return; }
    settled unsafe_served || true
    # Outputs are captured before they are searched: `cmd | grep -q` under
    # pipefail fails when grep stops reading before cmd has written all.
    local bound vs warned table_now
    bound=$(vips_bound "$vip_mode" 4)
    table_now=$(ipvsadm -Sn)
    for addr in 127.0.0.1 0.0.0.0 255.255.255.255 169.254.7.7 224.0.0.9 192.0.2.1; do
        [[ " $bound " == *" $addr/32 "* ]] && problems+=("$addr bound ($vip_mode)")
        [[ $table_now == *"-A -t $addr:8088 "* && $addr != 192.0.2.1 ]] &&
            problems+=("a virtual server on $addr:8088")
    done
    [[ " $bound " == *" 10.96.1.21/32 "* ]] || problems+=("the ClusterIP 10.96.1.21 is not bound")
    [[ $table_now == *"-A -t 192.0.2.1:8088 "* ]] || problems+=("no virtual server on node A's own 192.0.2.1:8088")
    warned=$(grep -cE 'spec.externalIPs: (127.0.0.1|0.0.0.0|255.255.255.255|169.254.7.7|224.0.0.9) is' "$proxy_log")
    ((warned >= 5)) || problems+=("only $warned of 5 refused addresses were logged")
    matches 'pod-b1 *' http_from outside "http://192.0.2.1:8088/" || problems+=("outside -> 192.0.2.1:8088: '$answer'")
    matches 'pod-b1 *' http_from pod-a2 "http://10.96.1.21:8088/" || problems+=("pod-a2 -> ClusterIP: '$answer'")
    # Gone again: node A's address and its local route stay.
    syncs_before=$(sync_count)
    rm -f "$manifests/unsafe.yaml"
    why=$(wait_syncs $((syncs_before + 1))) || problems+=("no sync after removing unsafe.yaml: $why")
    settled unsafe_gone || true
    local addrs routes
    addrs=$(ip -o -4 addr show)
    routes=$(ip route show table local)
    table_now=$(ipvsadm -Sn)
    [[ $addrs == *" 192.0.2.1/24 "* ]] || problems+=("node A lost 192.0.2.1")
    [[ $routes == *"local 192.0.2.1 "* ]] || problems+=("node A lost its local route to 192.0.2.1")
    [[ $table_now == *"-A -t 192.0.2.1:8088 "* ]] && problems+=("the virtual server on 192.0.2.1:8088 stayed")
    vs=$(ipvsadm -Sn | grep -c -- ':8088 ')
    if ((${#problems[@]} == 0)); then
        pass "$name" "none of 5 unusable ExternalIPs bound or served ($warned warnings); 192.0.2.1:8088 served unbound, and kept with its route after the service went ($vs virtual servers left on :8088)"
    else
        fail "$name" "$(printf '%s; ' "${problems[@]}")"
    fi
}

# Feature: drift repair at full syncs (sync_nft reads the sets back): an
# element deleted by hand is back within two sync periods, in a table that
# keeps its handle.
check_drift_repaired() {
    local name=nft-drift-repaired element='10.96.1.10 . tcp . 80' handle attempt back='' listing
    ready "$name" || return
    handle=$(table_handle)
    if ! nft delete element ip "$table" cluster-ips "{ $element }" 2>"$work/drift.err"; then
        fail "$name" "could not delete the element by hand: $(paste -sd'|' "$work/drift.err")"
        return
    fi
    for attempt in $(seq 120); do
        # Captured first: `nft ... | grep -q` under pipefail fails when grep
        # stops reading before nft has written all.
        listing=$(nft list set ip "$table" cluster-ips 2>&1)
        if [[ $listing == *"$element"* ]]; then
            back=yes
            break
        fi
        sleep 0.1
    done
    if [[ -z $back ]]; then
        fail "$name" "$element still missing from cluster-ips 12 s after it was deleted (sync period ${sync_period} s)"
    elif [[ $(table_handle) != "$handle" ]]; then
        fail "$name" "repaired by making the table again (handle $handle -> $(table_handle))"
    else
        pass "$name" "$element back in cluster-ips within $((attempt / 10)) s; table handle $handle kept"
    fi
}

# Needs the proxy to adopt its own table at start: nothing rewritten when
# nothing changed.
check_restart_adopts_table() {
    local name=restart-adopts-table before after first why handle_before handle_after
    ready "$name" || return
    if ! before=$(nft list table ip "$table" 2>&1); then
        fail "$name" "no table before the restart: $before"
        return
    fi
    handle_before=$(table_handle)
    if ! proxy_stop; then
        fail "$name" "$stop_error"
        return
    fi
    proxy_start restart
    if ! why=$(wait_syncs 1); then
        fail "$name" "$why"
        return
    fi
    first=$(syncs "$proxy_log" | head -n 1)
    after=$(nft list table ip "$table" 2>&1)
    handle_after=$(table_handle)
    if [[ $first != "full 0" ]]; then
        local writes
        writes=$(grep -E '"(IPVS|address|nftables) write' "$proxy_log" | head -n 4 | cut -c1-300 | paste -sd'|')
        fail "$name" "the first sync after the restart was '$first', expected 'full 0' (table handle $handle_before before, $handle_after after): $writes"
    elif [[ $handle_before != "$handle_after" ]]; then
        fail "$name" "the table was made again: handle $handle_before before the restart, $handle_after after"
    elif [[ $before != "$after" ]]; then
        fail "$name" "nft list table changed: $(diff <(printf '%s\n' "$before") <(printf '%s\n' "$after") | grep '^[<>]' | paste -sd'|')"
    else
        pass "$name" "first sync 'full 0'; table unchanged ($(grep -c . <<<"$after") lines, handle $handle_after)"
    fi
}

# switch_to MODE STEP: restarts the proxy with --ipvs-vip-mode MODE while a
# pod and outside hold connections through a ClusterIP and an ExternalIP;
# appends to $problems what went wrong, and to $moved what the proxy said.
switch_to() {
    local mode=$1 step=$2 before4 before6 after4 after6 stray why pod_pid outside_pid answer
    before4=$(vips_bound "$(other_mode "$mode")" 4)
    before6=$(vips_bound "$(other_mode "$mode")" 6)
    held_open "switch-$step-pod" 10.96.1.10 in_ns pod-a2 || { problems+=("$held_error"); return; }
    pod_pid=$held_pid
    held_open "switch-$step-outside" 203.0.113.10 in_ns outside || { problems+=("$held_error"); return; }
    outside_pid=$held_pid
    proxy_stop || { problems+=("$step: $stop_error"); return; }
    common[-1]=$mode
    proxy_start "switch-$step"
    why=$(wait_syncs 1) || { problems+=("$step: $why"); return; }
    after4=$(vips_bound "$mode" 4)
    after6=$(vips_bound "$mode" 6)
    stray="$(vips_bound "$(other_mode "$mode")" 4) $(vips_bound "$(other_mode "$mode")" 6)"
    [[ $after4 == "$before4" && $after6 == "$before6" ]] ||
        problems+=("$step: bound $mode-wise '$after4 $after6', the other way before '$before4 $before6'")
    [[ -z ${stray// /} ]] || problems+=("$step: still bound the other way: $stray")
    held_release "switch-$step-pod" "$pod_pid"
    held_release "switch-$step-outside" "$outside_pid"
    answer=$(paste -sd'|' "$work/switch-$step-pod.out")
    [[ $answer == *"|after pod-b1 10.244.1.12" ]] || problems+=("$step: pod-a2's held connection: '$answer'")
    answer=$(paste -sd'|' "$work/switch-$step-outside.out")
    [[ $answer == *"|after pod-b1 $CLUSTER_NODE_A_IP" ]] || problems+=("$step: outside's held connection: '$answer'")
    matches "pod-b1 10.244.1.12" http_from pod-a2 http://10.96.1.10/ ||
        problems+=("$step: a new connection from pod-a2: '$answer'")
    matches "pod-b1 *" http_from node-a http://10.96.1.10/ ||
        problems+=("$step: a new connection from node A: '$answer'")
    moved+=("$step: $(grep -m1 'moved VIPs to the configured mode' "$proxy_log" |
        python3 -c 'import json,sys; f=json.loads(sys.stdin.read() or "{}").get("fields",{}); print(f.get("moved"), "moved,", f.get("failed"), "failed")' 2>&1)")
}

# Switching a running node's --ipvs-vip-mode, both ways: every VIP moves,
# connections held through a ClusterIP (from a pod) and an ExternalIP (from
# outside) carry on on the same socket, new ones work, and nothing of the
# old kind is left. Ends in the mode the script runs in.
check_vip_mode_switch() {
    local name="vip-mode-switch-from-$vip_mode" problems=() moved=()
    ready "$name" || return
    switch_to "$(other_mode "$vip_mode")" there
    ((${#problems[@]} == 0)) && switch_to "$vip_mode" back
    if ((${#problems[@]} == 0)); then
        pass "$name" "$(printf '%s; ' "${moved[@]}")both held connections carried on each way"
    else
        fail "$name" "$(printf '%s; ' "${problems[@]}")"
    fi
}

# The foreign table is made before the proxy starts (see main).
foreign_before=
foreign_error=
make_foreign_table() {
    foreign_error=$({ nft add table inet foreign &&
        nft add chain inet foreign c '{ type filter hook input priority 10; }' &&
        nft add rule inet foreign c tcp dport 1 counter; } 2>&1) || return 1
    foreign_before=$(nft list table inet foreign 2>&1)
}

# Needs cleanup to delete its own table, and only it.
check_cleanup_leaves_foreign_tables() {
    local name=cleanup-leaves-foreign-tables rc tables foreign_after
    if [[ -n $setup_error ]]; then
        fail "$name" "setup failed: $setup_error"
        return
    fi
    if [[ -n $foreign_error || -z $foreign_before ]]; then
        fail "$name" "could not make the foreign table: $foreign_error"
        return
    fi
    if proxy_alive && ! proxy_stop; then
        fail "$name" "$stop_error"
        return
    fi
    tables=$(nft list tables 2>&1 | paste -sd'|')
    if [[ $tables != *"table ip $table"* ]]; then
        fail "$name" "the proxy never made table ip $table, nothing to clean up: $tables"
        return
    fi
    # Handback: an address and a virtual server inside --ipvs-exclude-cidrs
    # are not the proxy's; cleanup keeps both, and kube-ipvs0 for the address.
    local excluded_error=
    { ip addr add 10.96.200.1/32 dev kube-ipvs0 &&
        ipvsadm -A -t 10.96.200.1:80 -s rr; } 2>"$work/excluded.err" ||
        excluded_error=$(paste -sd'|' "$work/excluded.err")
    "$proxy" cleanup "${common[@]}" >"$work/cleanup.log" 2>&1
    rc=$?
    tables=$(nft list tables 2>&1 | paste -sd'|')
    foreign_after=$(nft list table inet foreign 2>&1)
    local held vs
    held=$(ip -o addr show dev kube-ipvs0 2>&1 | awk '{print $4}' | paste -sd' ')
    vs=$(ipvsadm -Sn | paste -sd'|')
    local routes_left
    routes_left=$({ ip route show table local proto 75; ip -6 route show table local proto 75; } | paste -sd'|')
    if ((rc != 0)); then
        fail "$name" "cleanup exited $rc: $(tail -n 3 "$work/cleanup.log" | paste -sd'|')"
    elif [[ $tables == *"table ip $table"* ]]; then
        fail "$name" "table ip $table is still there: $tables"
    elif [[ $foreign_after != "$foreign_before" ]]; then
        fail "$name" "the foreign table changed: $(diff <(printf '%s\n' "$foreign_before") <(printf '%s\n' "$foreign_after") | grep '^[<>]' | paste -sd'|')"
    elif [[ -n $excluded_error ]]; then
        fail "$name" "could not add the excluded address and virtual server: $excluded_error"
    elif [[ -n $routes_left ]]; then
        fail "$name" "the proxy's local routes are still there: $routes_left"
    elif [[ $held != 10.96.200.1/32 || $vs != "-A -t 10.96.200.1:80 -s rr" ]]; then
        fail "$name" "expected only the excluded 10.96.200.1 left on kube-ipvs0 and in IPVS; kube-ipvs0: '$held', ipvsadm -Sn: '$vs'"
    else
        pass "$name" "tables left: $tables; kube-ipvs0 kept with only the excluded $held; no local route of the proxy; IPVS: $vs"
    fi
    ipvsadm -D -t 10.96.200.1:80 2>/dev/null
    ip link del kube-ipvs0 2>/dev/null
}

# The proxy runs with only NET_ADMIN and SYS_MODULE, and /proc/sys read-only
# in its mount namespace: deploy/'s DaemonSet, where `prepare` did the rest.
check_capabilities() {
    local name=capabilities-only effective sysmount
    ready "$name" || return
    effective=$(awk '$1 == "CapEff:" {print $2}' "/proc/$proxy_pid/status")
    sysmount=$(nsenter -t "$proxy_pid" -m awk '$2 == "/proc/sys" {print $4}' /proc/mounts | tail -n 1)
    # CAP_NET_ADMIN is bit 12, CAP_SYS_MODULE bit 16.
    if [[ $effective != 0000000000011000 ]]; then
        fail "$name" "CapEff of the proxy is $effective, expected 0000000000011000 (NET_ADMIN, SYS_MODULE)"
    elif [[ $sysmount != ro* ]]; then
        fail "$name" "/proc/sys is not read-only for the proxy: '$sysmount'"
    else
        pass "$name" "CapEff $effective; /proc/sys $sysmount"
    fi
    # Without CAP_SYS_RESOURCE the default --oom-score-adj (-999) cannot be
    # set: the proxy keeps the value it was started with and says so.
    name=oom-score-adj-without-sys-resource
    local want got
    want=$(cat /proc/self/oom_score_adj)
    got=$(cat "/proc/$proxy_pid/oom_score_adj")
    if [[ $got != "$want" ]]; then
        fail "$name" "oom_score_adj is $got, expected the inherited $want"
    elif ! grep -q '"oom_score_adj not set' "$proxy_log"; then
        fail "$name" "no 'oom_score_adj not set' log line"
    else
        pass "$name" "kept $got; $(grep -o '"error":"[^"]*"' "$proxy_log" | grep -m1 oom_score_adj)"
    fi
}

# --- dual stack (dual.yaml) ----------------------------------------------------

# Needs IPv6 VIPs bound on kube-ipvs0 as /128s and virtual servers of both
# families for a dual-stack service.
check_dual_stack_programmed() {
    local name=dual-stack-programmed held vs missing=() want
    ready "$name" || return
    for _ in $(seq 10); do
        missing=()
        held=$(vips_bound "$vip_mode" 6)
        vs=$(ipvsadm -Ln | paste -sd'|')
        for want in fd00:10:96::40/128 2001:db8:203::40/128; do
            [[ " $held " == *" $want "* ]] || missing+=("VIP $want ($vip_mode)")
        done
        for want in "TCP  10.96.1.40:80" "TCP  [fd00:10:96::40]:80" "TCP  [2001:db8::1]:30090" \
            "TCP  [2001:db8:203::40]:80" "-> [fd00:10:244:2::11]:8080" "-> 10.244.2.11:8080"; do
            [[ $vs == *"$want"* ]] || missing+=("ipvsadm '$want'")
        done
        ((${#missing[@]} == 0)) && break
        sleep 1
    done
    if ((${#missing[@]} == 0)); then
        pass "$name" "IPv6 VIPs ($vip_mode): $held"
    else
        fail "$name" "missing: ${missing[*]}; IPv6 VIPs ($vip_mode): $held"
    fi
}

# The IPv6 side of the masquerade rules (ip6 table): outside's IPv6 traffic
# to a NodePort or LoadBalancer IP is masqueraded to node A's address, or
# pod-b1 answers through node B's default route and the client drops it; a
# pod's is not; the node's own is answered.
check_dual_stack_traffic() {
    ready "ipv6-external-nodeport" || return
    expect_answer "ipv6-external-nodeport" "pod-b1 $CLUSTER_NODE_A_IP6" \
        http_from outside "http://[$CLUSTER_NODE_A_IP6]:30090/"
    # From outside's first address: its source ranges admit only that one
    # (the kernel would pick the newer ::101 by itself).
    expect_answer "ipv6-external-loadbalancer" "pod-b1 $CLUSTER_NODE_A_IP6" \
        http_from outside "http://[2001:db8:203::40]/" --interface "$CLUSTER_OUTSIDE_IP6"
    expect_answer "ipv6-pod-to-clusterip-remote-pod" "pod-b1 $(pod_ip6 pod-a2)" \
        http_from pod-a2 "http://[fd00:10:96::40]/"
    expect_answer "ipv6-node-to-clusterip-remote-pod" "pod-b1 *" \
        http_from node-a "http://[fd00:10:96::40]/"
    # pod-b1 to a NodePort that sends it back to pod-b1: unmasqueraded, it
    # receives a packet from its own address and drops it.
    expect_answer "ipv6-pod-to-nodeport-same-pod" "pod-b1 $CLUSTER_NODE_A_IP6" \
        http_from pod-b1 "http://[$CLUSTER_NODE_A_IP6]:30090/"
    # The same service's IPv4 side, through the same node.
    expect_answer "dual-stack-ipv4-loadbalancer" "pod-b1 $CLUSTER_NODE_A_IP" \
        http_from outside "http://203.0.113.41/"
}

# loadBalancerSourceRanges with an IPv6 range: outside's second IPv6 address
# is not in them, and IPVS must not see its connection at all.
check_ipv6_source_ranges() {
    local name=ipv6-source-ranges denied forwarded
    ready "$name" || return
    if ! matches "pod-b1 $CLUSTER_NODE_A_IP6" http_from outside "http://[2001:db8:203::40]/" \
        --interface "$CLUSTER_OUTSIDE_IP6"; then
        fail "$name" "from $CLUSTER_OUTSIDE_IP6: expected 'pod-b1 $CLUSTER_NODE_A_IP6', got '$answer'"
        return
    fi
    denied=$(CLUSTER_HTTP_TIMEOUT=2 http_from outside "http://[2001:db8:203::40]/" \
        --interface "$CLUSTER_OUTSIDE_IP6_2" 2>&1 | paste -sd'|')
    forwarded=$(ipvsadm -Lnc 2>/dev/null | grep -F "[$CLUSTER_OUTSIDE_IP6_2]" |
        grep -F "[2001:db8:203::40]:80" | paste -sd'|')
    if [[ $denied == pod-* ]]; then
        fail "$name" "$CLUSTER_OUTSIDE_IP6_2 was served: '$denied'"
    elif [[ -n $forwarded ]]; then
        fail "$name" "$CLUSTER_OUTSIDE_IP6_2 got no answer ($denied) but IPVS forwarded it: $forwarded"
    else
        pass "$name" "$CLUSTER_OUTSIDE_IP6 served; $CLUSTER_OUTSIDE_IP6_2 refused ($denied)"
    fi
}

# --- SCTP (sctp.yaml) ------------------------------------------------------------

# Whether the sctp module was loaded before the proxy started (set by main).
sctp_before=

# Needs the proxy to load sctp for an SCTP service: nothing in the bed opens
# an SCTP socket before this check, so the module was absent at start.
check_sctp_module_loaded() {
    local name=sctp-module-loaded
    ready "$name" || return
    if [[ $sctp_before == yes ]]; then
        fail "$name" "sctp was loaded before the proxy started; this run cannot show that the proxy loads it"
    elif [[ ! -d /sys/module/sctp ]]; then
        fail "$name" "the proxy runs an SCTP service but /sys/module/sctp is absent: $(grep -i sctp "$proxy_log" | tail -n 2 | paste -sd'|')"
    else
        pass "$name" "absent before the proxy started, loaded after its first sync"
    fi
}

# SCTP through IPVS, both families: a ClusterIP from a pod (unmasqueraded)
# and a NodePort from outside (masqueraded, or pod-b2 answers through node B).
check_sctp_traffic() {
    ready "sctp-clusterip" || return
    sctp_server_up pod-b2 7777
    if ! matches "pod-b2 10.244.2.1" sctp_from node-b 10.244.2.12 7777; then
        fail "sctp-clusterip" "pod-b2's SCTP server never answered node B: '$answer'"
        return
    fi
    expect_answer "sctp-clusterip" "pod-b2 10.244.1.12" sctp_from pod-a2 10.96.1.41 7777
    expect_answer "sctp-nodeport" "pod-b2 $CLUSTER_NODE_A_IP" sctp_from outside "$CLUSTER_NODE_A_IP" 30777
    expect_answer "sctp-ipv6-clusterip" "pod-b2 $(pod_ip6 pod-a2)" sctp_from pod-a2 fd00:10:96::41 7777
    expect_answer "sctp-ipv6-nodeport" "pod-b2 $CLUSTER_NODE_A_IP6" sctp_from outside "$CLUSTER_NODE_A_IP6" 30777
}

main() {
    rm -rf "$work"
    mkdir -p "$manifests"
    if [[ -z $proxy || ! -x $proxy ]]; then
        setup_error="KIP_PROXY_BIN='$proxy' is not an executable"
    elif ! cp "$here"/packet-path/* "$manifests"/; then
        setup_error="could not copy tests/vm/packet-path"
    elif ! cluster_up; then
        setup_error="cluster_up failed"
    fi
    topology_checks
    if [[ ${KIP_PACKET_PATH_SELFTEST:-0} == 1 ]]; then
        selftest_masquerade
        return
    fi

    if [[ -z $setup_error && $("$proxy" run --help 2>/dev/null) != *--cluster-cidr* ]]; then
        # Reported, and the run goes on without the flag so that the other
        # scenarios still say what they can.
        fail "proxy-flags" "the proxy has no --cluster-cidr; running without it"
        common=(--manifests "$manifests" --hostname-override node-a --nodeport-addresses 192.0.2.0/24
            --ipvs-vip-mode "$vip_mode")
    fi
    make_foreign_table
    if [[ -d /sys/module/sctp ]]; then sctp_before=yes; else sctp_before=no; fi
    if [[ -z $setup_error ]]; then
        # As deploy/ runs it: `prepare` with every privilege, then `run`
        # with NET_ADMIN and SYS_MODULE alone and a read-only /proc/sys, as
        # in an unprivileged container.
        local why prepared
        if prepared=$("$proxy" prepare "${common[@]}" 2>&1); then
            pass "prepare" "$(tail -n 1 <<<"$prepared")"
        else
            fail "prepare" "$(tail -n 3 <<<"$prepared" | paste -sd'|')"
        fi
        # shellcheck disable=SC2016 # expanded by the inner sh
        proxy_wrap=(unshare -m sh -c 'mount -o bind,ro /proc/sys /proc/sys &&
            exec setpriv --inh-caps=-all --bounding-set=-all,+net_admin,+sys_module "$0" "$@"')
        proxy_start run
        if why=$(wait_syncs 1); then
            pass "first-sync" "$(syncs "$proxy_log" | head -n 1)"
        else
            setup_error="the proxy's first sync: $why"
        fi
    fi

    check_capabilities
    check_ruleset_present
    check_vip_binding
    check_plan_vips
    check_arp
    check_external_etp_cluster
    check_external_etp_local
    check_external_etp_local_no_endpoint
    check_node_to_clusterip
    check_pod_to_clusterip
    check_hairpin
    check_source_ranges
    check_host_listener_not_exposed
    check_dual_stack_programmed
    check_dual_stack_traffic
    check_ipv6_source_ranges
    check_sctp_module_loaded
    check_sctp_traffic
    check_zone_routing
    check_udp_endpoint_replaced
    check_udp_stale_flow_deleted
    check_tcp_survives_nft_change
    check_external_ips_safe
    check_drift_repaired
    check_restart_adopts_table
    check_vip_mode_switch
    check_cleanup_leaves_foreign_tables
}

main
proxy_alive && proxy_stop
echo "--- ipvsadm -Sn"
ipvsadm -Sn
echo "--- nft list ruleset"
nft list ruleset
cluster_down
nft delete table inet foreign 2>/dev/null
cp "$work"/*.log "$work"/*.out "$KIP_OUT"/ 2>/dev/null
cp -r "$work/pods" "$KIP_OUT"/ 2>/dev/null
report_status
