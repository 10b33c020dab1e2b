#!/usr/bin/env bash
# Guest script: kube-ipvs-proxy end to end, on a copy of deploy/examples in
# the network of netns.sh. Scenarios, in order (each later one starts from the
# state the earlier ones left):
#   a  traffic: ClusterIP from the node and from a client, round-robin; NodePort;
#      UDP; multi-port; mirrored Endpoints; ClientIP affinity; exact IPVS state
#   b  manifest edits converge within --ipvs-min-sync-period + 1 s
#   h  a LoadBalancer with externalTrafficPolicy Local answers on its
#      healthCheckNodePort: 200 with its local endpoint count, 503 with none,
#      and the port closes when the service goes (leaves no state behind)
#   c  a restart makes zero writes (but for a drain that finished meanwhile)
#      and a long-lived connection survives it
#   d  a virtual server, and then a set element, deleted behind the proxy's
#      back return within --ipvs-sync-period
#   g  graceful termination: a removed TCP endpoint drains at weight 0, keeps
#      its open connection, takes no new ones, and goes once idle (runs
#      before e, so that e compares a table that has drained)
#   e  `plan` equals `ipvsadm -Sn`, draining (-w 0) real servers apart
#   f  `cleanup` removes exactly what the proxy owns
#
# Needs KIP_PROXY_BIN (tests/run.sh builds it and passes it in).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
source "$here/report.sh"
source "$here/netns.sh"

proxy=${KIP_PROXY_BIN:-}
work=/tmp/kip-e2e
manifests=$work/manifests
min_sync=1
sync_period=5
common=(--manifests "$manifests" --hostname-override vm-node --nodeport-addresses 192.0.2.0/24)

# shellcheck source=tests/vm/proxy.sh
source "$here/proxy.sh"

# --- the kernel -------------------------------------------------------------

ipvs_state() { ipvsadm -Sn | sort; }
kube_ipvs0_addresses() { ip -o -4 addr show dev kube-ipvs0 2>/dev/null | awk '{print $4}' | sort | paste -sd' '; }
has_line() { ipvsadm -Sn | grep -qxF -- "$1"; }
lacks_match() { ! ipvsadm -Sn | grep -qF -- "$1"; }

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# converge_within SECONDS CMD...: polls CMD every 100 ms for up to SECONDS.
# On failure it keeps polling for 10 s more, only to tell in $converge_note
# whether the state was late or wrong.
converge_note=
converge_within() {
    local bound=$1 start deadline
    shift
    start=$(now_ms)
    deadline=$((start + bound * 1000))
    while (($(now_ms) < deadline)); do
        "$@" && return 0
        sleep 0.1
    done
    "$@" && return 0
    deadline=$((start + (bound + 10) * 1000))
    while (($(now_ms) < deadline)); do
        if "$@"; then
            converge_note="late: converged after $(($(now_ms) - start)) ms"
            return 1
        fi
        sleep 0.1
    done
    converge_note="still not converged after $((bound + 10)) s"
    return 1
}

# converge CMD...: the bound of manifest edits, --ipvs-min-sync-period + 1 s.
converge() { converge_within $((min_sync + 1)) "$@"; }

# edit_manifest FILE CMD...: runs CMD on a copy of FILE and renames it into
# place, so that the proxy never reads a half-written file.
edit_manifest() {
    local file=$manifests/$1
    shift
    cp "$file" "$work/edit.tmp" && "$@" "$work/edit.tmp" && mv "$work/edit.tmp" "$file"
}

# expect_lines NAME EXPECTED ACTUAL: multi-line states, reported as a diff.
expect_lines() {
    local difference
    difference=$(diff <(printf '%s\n' "$2") <(printf '%s\n' "$3"))
    if [[ -z $difference ]]; then
        pass "$1" "$(grep -c . <<<"$3") lines as expected"
    else
        fail "$1" "diff expected actual: $(grep '^[<>]' <<<"$difference" | paste -sd'|')"
    fi
}

expect() { # NAME EXPECTED ACTUAL
    if [[ $3 == "$2" ]]; then pass "$1" "$3"; else fail "$1" "expected '$2', got '$3'"; fi
}

client_get() { in_client curl -sf --max-time 3 "$1"; }

# scrape SERIES: the value of one series of /metrics (empty if absent).
scrape() { curl -s http://127.0.0.1:10249/metrics | grep -F -- "$1 " | awk '{print $NF}' | head -n 1; }
full_sync_count() { syncs "$proxy_log" | grep -c '^full '; }
full_syncs_above() { (($(full_sync_count) > $1)); }
# The per-virtual-server series of web's cluster IP (read at each full sync).
web_vs='namespace="default",service="web",protocol="TCP",address="10.96.0.10",port="80"'

# web's port: 8000 once scenario b changed it, else 80, so that a failure in b
# does not cascade into c and d.
current_web_port() {
    if has_line "-A -t 10.96.0.10:8000 -s rr"; then echo 8000; else echo 80; fi
}

# --- scenarios --------------------------------------------------------------

initial_state='-A -t 10.96.0.10:80 -s rr
-a -t 10.96.0.10:80 -r 10.244.1.11:8080 -m -w 1
-a -t 10.96.0.10:80 -r 10.244.1.12:8080 -m -w 1
-a -t 10.96.0.10:80 -r 10.244.1.13:8080 -m -w 1
-A -t 10.96.0.11:80 -s rr
-a -t 10.96.0.11:80 -r 10.244.1.11:8080 -m -w 1
-a -t 10.96.0.11:80 -r 10.244.1.12:8080 -m -w 1
-A -t 192.0.2.1:30080 -s rr
-a -t 192.0.2.1:30080 -r 10.244.1.11:8080 -m -w 1
-a -t 192.0.2.1:30080 -r 10.244.1.12:8080 -m -w 1
-A -u 10.96.0.53:53 -s rr
-a -u 10.96.0.53:53 -r 10.244.1.12:5353 -m -w 1
-a -u 10.96.0.53:53 -r 10.244.1.13:5353 -m -w 1
-A -t 10.96.0.53:53 -s rr
-a -t 10.96.0.53:53 -r 10.244.1.12:5353 -m -w 1
-a -t 10.96.0.53:53 -r 10.244.1.13:5353 -m -w 1
-A -t 10.96.0.20:80 -s rr
-a -t 10.96.0.20:80 -r 10.244.1.13:8080 -m -w 1
-A -t 10.96.0.30:80 -s rr -p 10800
-a -t 10.96.0.30:80 -r 10.244.1.11:8080 -m -w 1
-a -t 10.96.0.30:80 -r 10.244.1.12:8080 -m -w 1
-a -t 10.96.0.30:80 -r 10.244.1.13:8080 -m -w 1'

scenario_a() {
    local why
    # The guest preloads IPVS for every group; unload it so that the proxy
    # has to load ip_vs and its scheduler itself (finit_module, no modprobe).
    modprobe -r ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_sh ip_vs_sed ip_vs_nq ip_vs 2>/dev/null
    if [[ -e /sys/module/ip_vs ]]; then
        fail "a-modules-unloaded" "ip_vs could not be unloaded before the proxy started"
    fi
    proxy_start a
    if ! why=$(wait_syncs 1); then
        fail "a-first-sync" "$why"
        return 1
    fi
    local first
    first=$(syncs "$proxy_log" | head -n 1)
    if [[ $first =~ ^full\ [1-9][0-9]*$ ]]; then
        pass "a-first-sync" "kind and writes: $first"
    else
        fail "a-first-sync" "expected a full sync with writes > 0, got '$first'"
    fi
    if [[ -e /sys/module/ip_vs && -e /sys/module/ip_vs_rr ]] && grep -q '"loaded kernel module"' "$proxy_log"; then
        pass "a-modules-loaded-by-proxy" "$(grep -o '"module":"[a-z_]*"' "$proxy_log" | paste -sd' ')"
    else
        fail "a-modules-loaded-by-proxy" "ip_vs or ip_vs_rr missing, or no 'loaded kernel module' log line"
    fi
    # kube-proxy's default, set by the proxy itself (root here).
    expect "a-oom-score-adj" "-999" "$(cat "/proc/$proxy_pid/oom_score_adj")"
    expect_lines "a-ipvs-state" "$(sort <<<"$initial_state")" "$(ipvs_state)"
    expect "a-kube-ipvs0" "10.96.0.10/32 10.96.0.11/32 10.96.0.20/32 10.96.0.30/32 10.96.0.53/32" \
        "$(kube_ipvs0_addresses)"
    expect "a-sysctls" "1 1" "$(sysctl -n net.ipv4.ip_forward) $(sysctl -n net.ipv4.vs.conntrack)"
    expect "a-healthz" "200" "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:10256/healthz)"
    local families
    families=$(curl -s http://127.0.0.1:10249/metrics |
        grep -oE '^(kubeproxy_sync_proxy_rules_last_timestamp_seconds|kube_ipvs_proxy_virtual_servers_desired) [0-9]' |
        cut -d' ' -f1 | sort | paste -sd' ')
    expect "a-metrics" "kube_ipvs_proxy_virtual_servers_desired kubeproxy_sync_proxy_rules_last_timestamp_seconds" "$families"
    expect "a-clusterip-from-node-rr" "2 web-a:8080 2 web-b:8080 2 web-c:8080" \
        "$(spread 6 http_get http://10.96.0.10/)"
    expect "a-clusterip-from-client-rr" "2 web-a:8080 2 web-b:8080 2 web-c:8080" \
        "$(spread 6 client_get http://10.96.0.10/)"
    expect "a-nodeport-from-client-rr" "2 web-a:8080 2 web-b:8080" \
        "$(spread 4 client_get "http://$NETNS_NODE_IP:30080/")"
    expect "a-udp-from-client-rr" "1 web-b:5353 1 web-c:5353" \
        "$(spread 2 in_client bash -c "$(declare -f udp_ask); udp_ask 10.96.0.53 53")"
    expect "a-multiport-tcp-from-client-rr" "1 web-b:5353 1 web-c:5353" \
        "$(spread 2 client_get http://10.96.0.53:53/)"
    expect "a-mirrored-endpoints" "2 web-c:8080" "$(spread 2 client_get http://10.96.0.20/)"
    local sticky
    sticky=$(spread 4 client_get http://10.96.0.30/)
    if [[ $sticky =~ ^4\ web-[abc]:8080$ ]]; then
        pass "a-client-ip-affinity" "$sticky"
    else
        fail "a-client-ip-affinity" "expected one backend 4 times, got '$sticky'"
    fi
    scenario_a_traffic_metrics
}

# The 12 requests to 10.96.0.10:80 above (6 from the node, 6 from the client)
# show in web's IPVS counters once a full sync has dumped them.
scenario_a_traffic_metrics() {
    local fulls conns packets_in bytes_out
    fulls=$(full_sync_count)
    if ! converge_within $((sync_period + 2)) full_syncs_above "$fulls"; then
        fail "a-vs-counters" "no full sync within $((sync_period + 2)) s ($converge_note)"
        return 1
    fi
    conns=$(scrape "kube_ipvs_proxy_virtual_server_connections_total{$web_vs}")
    packets_in=$(scrape "kube_ipvs_proxy_virtual_server_packets_total{$web_vs,direction=\"in\"}")
    bytes_out=$(scrape "kube_ipvs_proxy_virtual_server_bytes_total{$web_vs,direction=\"out\"}")
    if [[ $conns =~ ^[0-9]+$ && $packets_in =~ ^[0-9]+$ && $bytes_out =~ ^[0-9]+$ ]] &&
        ((conns >= 12 && packets_in > conns && bytes_out > 0)); then
        pass "a-vs-counters" "web 10.96.0.10:80: $conns connections, $packets_in packets in, $bytes_out bytes out"
    else
        fail "a-vs-counters" "expected >= 12 connections and packets and bytes for web, got connections='$conns' packets_in='$packets_in' bytes_out='$bytes_out'"
    fi
    local healthz livez
    healthz=$(curl -s -w ' %{http_code}' http://127.0.0.1:10256/healthz)
    livez=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:10256/livez)
    if [[ $healthz == *'"nodeEligible":true'*' 200' && $livez == 200 ]]; then
        pass "a-healthz-livez" "healthz 200 with nodeEligible true, livez 200"
    else
        fail "a-healthz-livez" "healthz '$healthz', livez '$livez'"
    fi
    # What operators ask kube-proxy for its mode and its configuration.
    expect "a-proxy-mode" "ipvs" "$(curl -s http://127.0.0.1:10249/proxyMode)"
    local configz
    configz=$(curl -s http://127.0.0.1:10249/configz)
    expect "a-configz" "ipvs ${sync_period}s -999" "$(python3 -c '
import json, sys
c = json.load(sys.stdin)["kubeproxy.config.k8s.io"]
print(c["mode"], c["ipvs"]["syncPeriod"], c["oomScoreAdj"])' <<<"$configz" 2>&1)"
    # The process_* families every Kubernetes component exports (the
    # "Kubernetes / Proxy" dashboard plots memory and CPU from them),
    # against what the kernel says of the process.
    curl -s http://127.0.0.1:10249/metrics >"$work/metrics-a.txt"
    expect "a-process-metrics" "ok" "$(python3 - "$work/metrics-a.txt" "$proxy_pid" "$proxy_started_at" 2>&1 <<'PY'
import os, sys, time
path, pid, launched = sys.argv[1], sys.argv[2], float(sys.argv[3])
m = {}
for line in open(path):
    if line.startswith("process_"):
        name, value = line.split()[:2]
        m[name] = float(value)
names = ["process_cpu_seconds_total", "process_resident_memory_bytes",
         "process_virtual_memory_bytes", "process_start_time_seconds",
         "process_open_fds", "process_max_fds", "process_virtual_memory_max_bytes"]
missing = [n for n in names if n not in m]
if missing:
    sys.exit(f"missing {missing}; have {sorted(m)}")
problems = []
status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status"))
rss = int(status["VmRSS"].split()[0]) * 1024
if abs(m["process_resident_memory_bytes"] - rss) > 4 << 20:
    problems.append(f"resident {m['process_resident_memory_bytes']:.0f} against VmRSS {rss}")
if not launched - 2 <= m["process_start_time_seconds"] <= time.time():
    problems.append(f"start time {m['process_start_time_seconds']} against launch at {launched}")
fds = len(os.listdir(f"/proc/{pid}/fd"))
if abs(m["process_open_fds"] - fds) > 3:
    problems.append(f"open fds {m['process_open_fds']:.0f} against {fds} in /proc")
soft = next(l for l in open(f"/proc/{pid}/limits") if l.startswith("Max open files")).split()[3]
if m["process_max_fds"] != float(soft):
    problems.append(f"max fds {m['process_max_fds']:.0f} against the soft limit {soft}")
if not 0 < m["process_cpu_seconds_total"] < time.time() - launched + 60:
    problems.append(f"cpu seconds {m['process_cpu_seconds_total']}")
print("; ".join(problems) or "ok")
PY
)"
}

append_web_d() {
    cat >>"$1" <<'YAML'
- addresses: [10.244.1.14]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: vm-node
  targetRef: {kind: Pod, namespace: default, name: web-d}
YAML
}

web_d_programmed() { has_line "-a -t 10.96.0.10:80 -r 10.244.1.14:8080 -m -w 1"; }
web_port_changed() {
    has_line "-A -t 10.96.0.10:8000 -s rr" && lacks_match "-t 10.96.0.10:80 " &&
        (($(ipvsadm -Sn | grep -c -- "^-a -t 10.96.0.10:8000 ") == 4))
}
# The old real server drains at weight 0 rather than going: scenario a's
# requests to 10.96.0.20 left connections in TIME_WAIT (2 min in IPVS).
legacy_after_port_change='-A -t 10.96.0.20:80 -s rr
-a -t 10.96.0.20:80 -r 10.244.1.13:8080 -m -w 0
-a -t 10.96.0.20:80 -r 10.244.1.13:8081 -m -w 1'
legacy_port_changed() { [[ $(ipvsadm -Sn | grep -F -- "10.96.0.20:80") == "$legacy_after_port_change" ]]; }
sticky_gone() { lacks_match "10.96.0.30:" && [[ $(kube_ipvs0_addresses) != *10.96.0.30/* ]]; }

scenario_b() {
    proxy_alive || { fail "b-edits" "the proxy is not running"; return 1; }
    local before writes nft

    before=$(sync_count)
    edit_manifest web.yaml append_web_d
    if converge web_d_programmed; then
        pass "b-add-endpoint" "web-d programmed"
        # The sync that programmed it is logged right after the kernel acked.
        wait_syncs $((before + 1)) >/dev/null
        writes=$(syncs "$proxy_log" | tail -n +$((before + 1)) | awk '{sum += $2} END {print sum + 0}')
        nft=$(sync_field "$proxy_log" nft_elements | tail -n +$((before + 1)) | awk '{sum += $1} END {print sum + 0}')
        # web-d runs on this node: its hairpin element is the one nftables write.
        expect "b-add-endpoint-writes" "1 IPVS + 1 nftables" "$((writes - nft)) IPVS + $nft nftables"
        expect "b-add-endpoint-rr" "2 web-a:8080 2 web-b:8080 2 web-c:8080 2 web-d:8080" \
            "$(spread 8 client_get http://10.96.0.10/)"
    else
        fail "b-add-endpoint" "no real server 10.244.1.14:8080 under 10.96.0.10:80 within $((min_sync + 1)) s ($converge_note)"
    fi

    edit_manifest web.yaml sed -i 's/port: 80, targetPort: 8080}/port: 8000, targetPort: 8080}/'
    if converge web_port_changed; then
        pass "b-change-service-port" "10.96.0.10:80 became 10.96.0.10:8000"
        expect "b-change-service-port-traffic" "1 web-a:8080 1 web-b:8080 1 web-c:8080 1 web-d:8080" \
            "$(spread 4 client_get http://10.96.0.10:8000/)"
    else
        fail "b-change-service-port" "10.96.0.10:80 did not become :8000 within $((min_sync + 1)) s ($converge_note): $(ipvsadm -Sn | grep 10.96.0.10 | paste -sd'|')"
    fi

    edit_manifest legacy.yaml sed -i 's/{name: http, protocol: TCP, port: 8080}/{name: http, protocol: TCP, port: 8081}/'
    if converge legacy_port_changed; then
        pass "b-change-endpoint-port" "legacy's real server moved to 10.244.1.13:8081; :8080 drains at weight 0"
        expect "b-change-endpoint-port-traffic" "1 web-c:8081" "$(spread 1 client_get http://10.96.0.20/)"
    else
        fail "b-change-endpoint-port" "expected 10.244.1.13:8081 and a draining 10.244.1.13:8080 -w 0 under 10.96.0.20:80 within $((min_sync + 1)) s ($converge_note): $(ipvsadm -Sn | grep 10.96.0.20 | paste -sd'|')"
    fi

    rm "$manifests/sticky.yaml"
    if converge sticky_gone; then
        pass "b-delete-service" "10.96.0.30 gone from IPVS and kube-ipvs0"
        local fulls
        fulls=$(full_sync_count)
        if converge_within $((sync_period + 2)) full_syncs_above "$fulls" &&
            ! curl -s http://127.0.0.1:10249/metrics | grep -qF 'address="10.96.0.30"'; then
            pass "b-delete-service-series" "no virtual_server series of 10.96.0.30 after the next full sync"
        else
            fail "b-delete-service-series" "10.96.0.30 still has series: $(curl -s http://127.0.0.1:10249/metrics | grep -F 'address="10.96.0.30"' | head -n 2 | paste -sd'|')"
        fi
    else
        fail "b-delete-service" "10.96.0.30 still present after $((min_sync + 1)) s ($converge_note): $(ipvsadm -Sn | grep 10.96.0.30 | paste -sd'|') / $(kube_ipvs0_addresses)"
    fi
}

# --- h: healthCheckNodePort --------------------------------------------------

hc_port=32100
hc_url=http://$NETNS_NODE_IP:$hc_port/

write_lb_local() {
    cat >"$1" <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: lb-local, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.40
  clusterIPs: [10.96.0.40]
  externalTrafficPolicy: Local
  healthCheckNodePort: 32100
  selector: {app: web}
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30090}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: lb-local-x7k2p
  namespace: default
  labels: {kubernetes.io/service-name: lb-local}
addressType: IPv4
ports:
- {name: http, protocol: TCP, port: 8080}
endpoints:
- addresses: [10.244.1.11]
  conditions: {ready: true}
  nodeName: vm-node
- addresses: [10.244.1.12]
  conditions: {ready: true}
  nodeName: vm-node
- addresses: [10.244.2.11]
  conditions: {ready: true}
  nodeName: other-node
YAML
}

# hc_reply: the health check's body, content type and status on one line.
hc_reply() { curl -s --max-time 2 -w ' %{content_type} %{http_code}' "$hc_url" | tr -d '\n\t'; }
# hc_answers STATUS COUNT
hc_answers() { [[ $(hc_reply) == *"\"localEndpoints\": $2,"*" application/json $1" ]]; }
hc_closed() { curl -s --max-time 2 -o /dev/null "$hc_url"; (($? == 7)); }

scenario_h() {
    proxy_alive || { fail "h-health-check" "the proxy is not running"; return 1; }
    write_lb_local "$work/edit.tmp" && mv "$work/edit.tmp" "$manifests/lb-local.yaml"
    if converge hc_answers 200 2; then
        pass "h-health-check-local-endpoints" "200 with localEndpoints 2 (the third endpoint is another node's): $(hc_reply)"
    else
        fail "h-health-check-local-endpoints" "expected 200 with localEndpoints 2 within $((min_sync + 1)) s ($converge_note): '$(hc_reply)'"
    fi
    edit_manifest lb-local.yaml sed -i 's/nodeName: vm-node/nodeName: other-node/'
    if converge hc_answers 503 0; then
        pass "h-health-check-no-local-endpoint" "503 with localEndpoints 0: $(hc_reply)"
    else
        fail "h-health-check-no-local-endpoint" "expected 503 with localEndpoints 0 within $((min_sync + 1)) s ($converge_note): '$(hc_reply)'"
    fi
    rm "$manifests/lb-local.yaml"
    if converge hc_closed; then
        pass "h-health-check-closed" "port $hc_port refuses connections once the service is gone"
    else
        fail "h-health-check-closed" "port $hc_port still open $((min_sync + 1)) s after the service went ($converge_note): '$(hc_reply)'"
    fi
}

scenario_c() {
    proxy_alive || { fail "c-restart" "the proxy is not running"; return 1; }
    local why attempt client_pid state_before web_port
    rm -f "$work/c-ready" "$work/c-go"
    web_port=$(current_web_port)
    in_client python3 "$here/held_client.py" 10.96.0.10 "$web_port" "$work" c >"$work/c-client.out" 2>&1 &
    client_pid=$!
    for attempt in $(seq 100); do
        [[ -e $work/c-ready ]] && break
        sleep 0.1
    done
    [[ -e $work/c-ready ]] || fail "c-connection-before" "the client got no answer: $(cat "$work/c-client.out")"

    state_before=$(ipvs_state)
    if proxy_stop; then
        pass "c-stop" "exited 0 on SIGTERM"
    else
        fail "c-stop" "$stop_error"
    fi
    expect_lines "c-stop-keeps-state" "$state_before" "$(ipvs_state)"

    # Restarted with kube-proxy's own flags, as a kOps static pod passes
    # them: the mode, -v, an oom_score_adj, and a flag of iptables mode that
    # is accepted with a warning.
    proxy_start c --proxy-mode=ipvs --v=2 --oom-score-adj=-998 --iptables-sync-period=30s
    if why=$(wait_syncs 1); then
        local oom
        oom=$(cat "/proc/$proxy_pid/oom_score_adj")
        if [[ $oom == -998 ]] && grep -q '"--iptables-sync-period=30s: a kube-proxy flag' "$proxy_log"; then
            pass "c-kube-proxy-flags" "oom_score_adj $oom; $(grep -o '"message":"--iptables-sync-period[^"]*"' "$proxy_log")"
        else
            fail "c-kube-proxy-flags" "oom_score_adj $oom (expected -998); warnings: $(grep -o '"level":"WARN"[^}]*' "$proxy_log" | paste -sd'|')"
        fi
        # Scenario b left a real server draining at weight 0. Its TIME_WAIT
        # connections (2 min) may expire while the proxy is down, and then
        # the first full sync deletes it: that is the drain finishing, not
        # the restart. So the restart may delete exactly the weight-0 real
        # servers that are gone, one write each, and nothing else changes.
        local state_after gone added
        state_after=$(ipvs_state)
        gone=$(comm -23 <(printf '%s\n' "$state_before") <(printf '%s\n' "$state_after"))
        added=$(comm -13 <(printf '%s\n' "$state_before") <(printf '%s\n' "$state_after"))
        if [[ -n $added ]] || { [[ -n $gone ]] && grep -qv -- ' -w 0$' <<<"$gone"; }; then
            fail "c-restart-keeps-state" "only drained (-w 0) real servers may go: gone $(paste -sd'|' <<<"$gone"), added $(paste -sd'|' <<<"$added")"
        else
            pass "c-restart-keeps-state" "unchanged but for $(grep -c . <<<"$gone") drained real server(s) deleted"
        fi
        expect "c-restart-zero-writes" "full $(grep -c . <<<"$gone")" "$(syncs "$proxy_log" | head -n 1)"
    else
        fail "c-restart-zero-writes" "$why"
    fi
    touch "$work/c-go"
    wait "$client_pid"
    local before after
    before=$(sed -n 's/^before //p' "$work/c-client.out")
    after=$(sed -n 's/^after //p' "$work/c-client.out")
    if [[ -n $before && $before == "$after" ]]; then
        pass "c-connection-survives" "same socket answered by $before before and after"
    else
        fail "c-connection-survives" "client output: $(paste -sd'|' "$work/c-client.out")"
    fi
}

expected_state=
state_is_expected() { [[ $(ipvs_state) == "$expected_state" ]]; }

scenario_d() {
    proxy_alive || { fail "d-repair" "the proxy is not running"; return 1; }
    local vip=10.96.0.10:$(current_web_port)
    expected_state=$(ipvs_state)
    ipvsadm -D -t "$vip"
    if converge_within $((sync_period + 1)) state_is_expected; then
        pass "d-repair" "$vip and its real servers are back"
    else
        fail "d-repair" "not restored within --ipvs-sync-period ${sync_period}s + 1 s ($converge_note): $(ipvsadm -Sn | grep 10.96.0.10 | paste -sd'|')"
    fi

    # The same for a set element. Full syncs read the sets only when the
    # nf_tables generation moved past the proxy's own transactions (or
    # every --ipvs-verify-period): deleting the element moves it.
    local element="10.96.0.10 . tcp . ${vip##*:}"
    # Read whole, then matched: `grep -q` would close the pipe early, and
    # pipefail would count nft's SIGPIPE as a miss.
    nft_holds_element() {
        local set
        set=$(nft list set ip kube-ipvs-proxy cluster-ips) && [[ $set == *"$element"* ]]
    }
    if ! nft_holds_element; then
        fail "d-nft-repair" "cluster-ips does not hold $element to begin with: $(nft list set ip kube-ipvs-proxy cluster-ips | paste -sd' ')"
        return 1
    fi
    nft delete element ip kube-ipvs-proxy cluster-ips "{ $element }"
    if nft_holds_element; then
        fail "d-nft-repair" "$element was not deleted by hand"
    elif converge_within $((sync_period + 1)) nft_holds_element; then
        pass "d-nft-repair" "cluster-ips holds $element again"
    else
        fail "d-nft-repair" "$element not restored within --ipvs-sync-period ${sync_period}s + 1 s ($converge_note)"
    fi
}

# --- g: graceful termination -------------------------------------------------

# A service of its own, so that its real servers carry no connections from
# earlier scenarios: web-a and web-b behind 10.96.0.40:80.
drain_manifest() { # ENDPOINT-NAMES...
    cat <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: drain, namespace: default}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.40
  clusterIPs: [10.96.0.40]
  selector: {app: drain}
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: drain-q4m8z
  namespace: default
  labels: {kubernetes.io/service-name: drain}
addressType: IPv4
ports:
- {name: http, protocol: TCP, port: 8080}
endpoints:
YAML
    local name
    for name in "$@"; do
        cat <<YAML
- addresses: [$(backend_ip "$name")]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: vm-node
  targetRef: {kind: Pod, namespace: default, name: $name}
YAML
    done
}

backend_ip() { # NAME: web-a .. web-d are 10.244.1.11 .. 14 (netns.sh)
    case $1 in
    web-a) echo 10.244.1.11 ;; web-b) echo 10.244.1.12 ;;
    web-c) echo 10.244.1.13 ;; web-d) echo 10.244.1.14 ;;
    *) echo "unknown-backend-$1" ;;
    esac
}

# write_drain_manifest NAMES...: atomically, as edit_manifest does.
write_drain_manifest() {
    drain_manifest "$@" >"$work/drain.tmp" && mv "$work/drain.tmp" "$manifests/drain.yaml"
}

drain_rs=
drain_other=
drain_serving() { has_line "-a -t 10.96.0.40:80 -r 10.244.1.11:8080 -m -w 1" && has_line "-a -t 10.96.0.40:80 -r 10.244.1.12:8080 -m -w 1"; }
drain_started() { has_line "-a -t 10.96.0.40:80 -r $drain_rs -m -w 0" && has_line "-a -t 10.96.0.40:80 -r $drain_other -m -w 1"; }
# Only under 10.96.0.40: the same backend serves other services.
drain_finished() { lacks_match "-a -t 10.96.0.40:80 -r $drain_rs " && has_line "-a -t 10.96.0.40:80 -r $drain_other -m -w 1"; }
full_syncs() { syncs "$proxy_log" | grep -c '^full '; }

scenario_g() {
    proxy_alive || { fail "g-graceful" "the proxy is not running"; return 1; }
    local attempt client_pid held other full_before
    write_drain_manifest web-a web-b
    if ! converge drain_serving; then
        fail "g-service" "10.96.0.40:80 with web-a and web-b not programmed within $((min_sync + 1)) s ($converge_note)"
        return 1
    fi
    rm -f "$work/g-ready" "$work/g-go"
    in_client python3 "$here/held_client.py" 10.96.0.40 80 "$work" g --reset >"$work/g-client.out" 2>&1 &
    client_pid=$!
    for attempt in $(seq 100); do
        [[ -e $work/g-ready ]] && break
        sleep 0.1
    done
    held=$(sed -n 's/^before \(web-[ab]\):8080$/\1/p' "$work/g-client.out")
    if [[ -z $held ]]; then
        fail "g-held-connection" "the client got no answer from web-a or web-b: $(paste -sd'|' "$work/g-client.out")"
        touch "$work/g-go"
        wait "$client_pid"
        return 1
    fi
    if [[ $held == web-a ]]; then other=web-b; else other=web-a; fi
    drain_rs=$(backend_ip "$held"):8080
    drain_other=$(backend_ip "$other"):8080

    write_drain_manifest "$other"
    if converge drain_started; then
        pass "g-removed-endpoint-weight-0" "$drain_rs drains at -w 0, $drain_other serves"
    else
        fail "g-removed-endpoint-weight-0" "expected $drain_rs at -w 0 within $((min_sync + 1)) s ($converge_note): $(ipvsadm -Sn | grep 10.96.0.40 | paste -sd'|')"
    fi
    expect "g-no-new-connections" "4 $other:8080" "$(spread 4 client_get http://10.96.0.40/)"

    # Two full syncs (each dumps the connection counts) while the connection is open.
    full_before=$(full_syncs)
    for attempt in $(seq $(((2 * sync_period + 5) * 10))); do
        (($(full_syncs) >= full_before + 2)) && break
        sleep 0.1
    done
    if (($(full_syncs) < full_before + 2)); then
        fail "g-draining-survives-full-syncs" "fewer than 2 full syncs logged in $((2 * sync_period + 5)) s"
    elif drain_started; then
        pass "g-draining-survives-full-syncs" "$drain_rs still at -w 0 after 2 full syncs, $(ipvsadm -Ln -t 10.96.0.40:80 | grep -F -- "$drain_rs" | awk '{print "active " $5 ", inactive " $6}')"
    else
        fail "g-draining-survives-full-syncs" "$(ipvsadm -Sn | grep 10.96.0.40 | paste -sd'|')"
    fi

    touch "$work/g-go"
    wait "$client_pid"
    expect "g-held-connection-survives" "before $held:8080|after $held:8080|reset" "$(paste -sd'|' "$work/g-client.out")"

    # IPVS keeps a reset connection for its CLOSE timeout (10 s); the next
    # full sync after that sees the real server idle.
    local bound=$((10 + sync_period + 2))
    if converge_within "$bound" drain_finished; then
        pass "g-idle-real-server-deleted" "$drain_rs gone within ${bound} s of the reset"
    else
        fail "g-idle-real-server-deleted" "$drain_rs not deleted within 10 s + --ipvs-sync-period ${sync_period}s + 2 s ($converge_note): $(ipvsadm -Sn | grep 10.96.0.40 | paste -sd'|')"
    fi
}

scenario_e() {
    local plan rc
    plan=$("$proxy" plan "${common[@]}" 2>"$work/plan.err")
    rc=$?
    printf '%s\n' "$plan" >"$work/plan.out"
    if ((rc != 0)); then
        fail "e-plan-equals-kernel" "plan exited $rc: $(tail -n 3 "$work/plan.err")"
        return 1
    fi
    # A draining real server (-w 0) is in the kernel but not desired: the
    # rest must equal the plan, and the plan must not want any draining one.
    local difference planned serving draining line wanted_again=
    planned=$(grep -v '^#' <<<"$plan" | grep -v '^$' | sort)
    serving=$(ipvs_state | grep -v -- ' -w 0$')
    draining=$(ipvs_state | grep -- ' -w 0$')
    difference=$(diff <(printf '%s\n' "$planned") <(printf '%s\n' "$serving"))
    if [[ -z $planned ]]; then
        fail "e-plan-equals-kernel" "plan printed no ipvsadm lines"
    elif [[ -z $difference ]]; then
        pass "e-plan-equals-kernel" "$(grep -c '^-' <<<"$planned") lines identical, $(grep -c . <<<"$draining") draining apart"
    else
        fail "e-plan-equals-kernel" "diff plan kernel-without-draining: $(paste -sd'|' <<<"$difference")"
    fi
    while IFS= read -r line; do
        [[ -n $line ]] || continue
        grep -qF -- "${line% -w 0} " <<<"$planned" && wanted_again+="$line|"
    done <<<"$draining"
    if [[ -z $wanted_again ]]; then
        pass "e-draining-not-planned" "$(grep -c . <<<"$draining") draining real servers, none in the plan"
    else
        fail "e-draining-not-planned" "draining yet desired: $wanted_again"
    fi
}

scenario_f() {
    local rc
    if proxy_alive && ! proxy_stop; then fail "f-stop" "$stop_error"; fi
    # A virtual server that is not the proxy's: not on kube-ipvs0, no node port.
    ipvsadm -A -t 198.51.100.7:80 -s wrr
    ipvsadm -a -t 198.51.100.7:80 -r 10.244.1.11:8080 -m -w 3
    local foreign
    foreign=$(ipvsadm -Sn | grep 198.51.100.7 | sort)
    "$proxy" cleanup "${common[@]}" >"$work/cleanup.log" 2>&1
    rc=$?
    expect "f-cleanup-exit" "0" "$rc"
    expect_lines "f-cleanup-keeps-foreign" "$foreign" "$(ipvs_state)"
    if ip link show kube-ipvs0 >/dev/null 2>&1; then
        fail "f-cleanup-removes-kube-ipvs0" "kube-ipvs0 still exists: $(kube_ipvs0_addresses)"
    else
        pass "f-cleanup-removes-kube-ipvs0" "gone"
    fi
    ipvsadm -D -t 198.51.100.7:80
}

main() {
    if [[ -z $proxy || ! -x $proxy ]]; then
        fail "proxy-binary" "KIP_PROXY_BIN='$proxy' is not an executable"
        return
    fi
    rm -rf "$work"
    mkdir -p "$manifests"
    cp "$repo"/deploy/examples/* "$manifests"/
    if ! netns_up; then
        fail "network" "netns_up failed"
        return
    fi
    scenario_a
    scenario_b
    scenario_h
    scenario_c
    scenario_d
    scenario_g
    scenario_e
    scenario_f
    proxy_alive && proxy_stop
    netns_down
}

main
cp "$work"/*.log "$work"/*.out "$KIP_OUT"/ 2>/dev/null
report_status
