# shellcheck shell=bash
# The test network inside the VM, sourced by the guest scripts. Everything
# lives in the VM's own namespaces, in documentation and private ranges that
# deploy/examples uses too:
#
#   root namespace ("the node")
#     kip-pods   bridge, 10.244.1.1/24: gateway of the backends
#     kip-client veth,   192.0.2.1/24:  the node address (NodePort, Node object)
#     kube-ipvs0 (made by the proxy, or by the fixture self-test): service IPs 10.96.0.x
#   backend namespaces web-a, web-b, web-c, web-d: 10.244.1.11 .. .14, default
#     route via 10.244.1.1, each running tests/vm/backend.py (HTTP on 8080 and
#     8081, HTTP and UDP on 5353, answering "NAME:PORT")
#   client namespace "client": 192.0.2.2/24, default route via the node
#
# Replies of the backends go back through the root namespace, where IPVS
# (NAT mode) rewrites them. The sysctls the data path needs are the proxy's
# business; only the fixture self-test sets them itself.

NETNS_NODE_IP=192.0.2.1
NETNS_CLIENT_IP=192.0.2.2
NETNS_GATEWAY_IP=10.244.1.1
declare -A NETNS_BACKENDS=([web-a]=10.244.1.11 [web-b]=10.244.1.12 [web-c]=10.244.1.13 [web-d]=10.244.1.14)
NETNS_BACKEND_TCP=8080,8081,5353
NETNS_BACKEND_UDP=5353

netns_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

netns_up() {
    local name ip
    ip link add kip-pods type bridge &&
        ip addr add "$NETNS_GATEWAY_IP/24" dev kip-pods &&
        ip link set kip-pods up || return 1
    for name in "${!NETNS_BACKENDS[@]}"; do
        ip=${NETNS_BACKENDS[$name]}
        ip netns add "$name" &&
            ip link add "veth-$name" type veth peer name eth0 netns "$name" &&
            ip link set "veth-$name" master kip-pods up &&
            ip -n "$name" link set lo up &&
            ip -n "$name" addr add "$ip/24" dev eth0 &&
            ip -n "$name" link set eth0 up &&
            ip -n "$name" route add default via "$NETNS_GATEWAY_IP" || return 1
        ip netns exec "$name" python3 "$netns_dir/backend.py" "$name" \
            --tcp "$NETNS_BACKEND_TCP" --udp "$NETNS_BACKEND_UDP" &
    done
    ip netns add client &&
        ip link add kip-client type veth peer name eth0 netns client &&
        ip addr add "$NETNS_NODE_IP/24" dev kip-client &&
        ip link set kip-client up &&
        ip -n client link set lo up &&
        ip -n client addr add "$NETNS_CLIENT_IP/24" dev eth0 &&
        ip -n client link set eth0 up &&
        ip -n client route add default via "$NETNS_NODE_IP" || return 1
    # The backends are ready when each answers directly: bounded by attempts.
    for name in "${!NETNS_BACKENDS[@]}"; do
        ip=${NETNS_BACKENDS[$name]}
        local attempt
        for attempt in $(seq 50); do
            [[ $(http_get "http://$ip:8080/" 2>/dev/null) == "$name:8080" ]] && break
            ((attempt == 50)) && { echo "backend $name ($ip) never answered" >&2; return 1; }
            sleep 0.2
        done
    done
}

netns_down() {
    local name
    kill $(jobs -p) 2>/dev/null
    for name in "${!NETNS_BACKENDS[@]}" client; do ip netns del "$name" 2>/dev/null; done
    ip link del kip-pods 2>/dev/null
    ip link del kip-client 2>/dev/null
    return 0
}

# http_get URL: the body of one GET on a fresh connection, from where we are.
http_get() {
    curl --silent --show-error --fail --max-time 3 "$1"
}

# in_client CMD...: runs CMD in the client namespace.
in_client() {
    ip netns exec client "$@"
}

# udp_ask HOST PORT: sends one datagram and prints the answer.
udp_ask() {
    python3 - "$1" "$2" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(b"who?", (sys.argv[1], int(sys.argv[2])))
print(s.recv(100).decode().strip())
PY
}

# spread N CMD...: runs CMD N times (each a fresh connection) and prints
# "count answer" lines, sorted by answer: round-robin shows as equal counts.
spread() {
    local n=$1 i
    shift
    for i in $(seq "$n"); do "$@" 2>/dev/null || echo "error"; done | sort | uniq -c | awk '{print $1, $2}' | paste -sd' '
}
