#!/usr/bin/env bash
# Guest script: proves the network fixture of netns.sh with ipvsadm alone (no
# proxy), so that a failing proxy scenario points at the proxy and not at the
# test bed. It sets the sysctls itself; in the proxy scenarios the proxy does.
set -uo pipefail
here=$(dirname "$0")
source "$here/report.sh"
source "$here/netns.sh"

sysctl -qw net.ipv4.ip_forward=1 net.ipv4.vs.conntrack=1

if netns_up; then
    pass "backends" "web-a..web-d answer on their own addresses"
else
    fail "backends" "netns_up failed"
    netns_down
    report_status
    exit
fi

ip link add kube-ipvs0 type dummy
for vip in 10.96.0.10 10.96.0.30 10.96.0.53; do ip addr add "$vip/32" dev kube-ipvs0; done
ipvsadm -A -t 10.96.0.10:80 -s rr
ipvsadm -A -t "$NETNS_NODE_IP:30080" -s rr
ipvsadm -A -u 10.96.0.53:53 -s rr
ipvsadm -A -t 10.96.0.30:80 -s rr -p 10800
for backend in web-a web-b web-c; do
    ipvsadm -a -t 10.96.0.10:80 -r "${NETNS_BACKENDS[$backend]}:8080" -m
    ipvsadm -a -t 10.96.0.30:80 -r "${NETNS_BACKENDS[$backend]}:8080" -m
done
for backend in web-a web-b; do ipvsadm -a -t "$NETNS_NODE_IP:30080" -r "${NETNS_BACKENDS[$backend]}:8080" -m; done
for backend in web-b web-c; do ipvsadm -a -u 10.96.0.53:53 -r "${NETNS_BACKENDS[$backend]}:5353" -m; done
echo "--- ipvsadm -Sn"
ipvsadm -Sn

# expect NAME EXPECTED ACTUAL
expect() {
    if [[ $3 == "$2" ]]; then pass "$1" "$3"; else fail "$1" "expected '$2', got '$3'"; fi
}

expect "clusterip-from-node-rr" "2 web-a:8080 2 web-b:8080 2 web-c:8080" \
    "$(spread 6 http_get http://10.96.0.10/)"
expect "clusterip-from-client-rr" "2 web-a:8080 2 web-b:8080 2 web-c:8080" \
    "$(spread 6 in_client curl -sf --max-time 3 http://10.96.0.10/)"
expect "nodeport-from-client-rr" "2 web-a:8080 2 web-b:8080" \
    "$(spread 4 in_client curl -sf --max-time 3 "http://$NETNS_NODE_IP:30080/")"
expect "udp-from-client-rr" "1 web-b:5353 1 web-c:5353" \
    "$(spread 2 in_client bash -c "$(declare -f udp_ask); udp_ask 10.96.0.53 53")"
sticky=$(spread 4 in_client curl -sf --max-time 3 http://10.96.0.30/)
if [[ $sticky =~ ^4\ web-[abc]:8080$ ]]; then
    pass "persistence-from-client" "$sticky"
else
    fail "persistence-from-client" "expected one backend 4 times, got '$sticky'"
fi

ipvsadm -C
ip link del kube-ipvs0
netns_down
report_status
