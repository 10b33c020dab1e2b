# shellcheck shell=bash
# A two-node cluster inside the VM, for the packet-path tests
# (tests/vm/packet-path.sh). Sourced; cluster_up builds it, cluster_down
# removes it. Documentation and private ranges only:
#
#   lan        namespace holding bridge br0: the shared L2 segment 192.0.2.0/24
#   node A     the root namespace, where the proxy runs
#                eth-lan  192.0.2.1/24 (to lan)
#                cbr0     10.244.1.1/24, pods pod-a1 10.244.1.11, pod-a2 10.244.1.12
#                route 10.244.2.0/24 via node B; a host-network listener on 0.0.0.0:9999
#   node-b     namespace: a node with no masquerade and no IPVS
#                eth0     192.0.2.2/24 (to lan)
#                cbr0     10.244.2.1/24, pods pod-b1 10.244.2.11, pod-b2 10.244.2.12
#                route 10.244.1.0/24 via node A
#                kube-ipvs0 (dummy) holding every ClusterIP, as its own proxy
#                  would: a reply addressed to a ClusterIP dies here
#                default route via the outside client, so that replies to
#                  outside addresses go straight out, never back through node A
#   outside    namespace: the external client, 192.0.2.100/24 and 192.0.2.101/24,
#                routes 203.0.113.0/24 (ExternalIPs, LoadBalancer IPs) and
#                10.96.0.0/16 via node A; no route to the pods
#
# Every pod runs tests/vm/pod.py: HTTP on 8080 and UDP on 5353, answering
# "NAME CLIENTIP", and logging each client to $CLUSTER_LOGS/NAME.log.
#
# The network is dual-stack. IPv6 mirrors IPv4 with documentation and ULA
# prefixes (addresses added without duplicate address detection):
#   lan        2001:db8::/64: node A ::1, node B ::2, outside ::100 and ::101
#   pods       node A fd00:10:244:1::/64, node B fd00:10:244:2::/64, each pod
#                its IPv4 host number (pod-a1 fd00:10:244:1::11), HTTP on [::]:8080
#   services   ClusterIPs fd00:10:96::/112 (node B holds them too), ExternalIPs
#                and LoadBalancer IPs 2001:db8:203::/64; outside routes both
#                via node A, node B's default route goes via outside

CLUSTER_NODE_A_IP=192.0.2.1
CLUSTER_NODE_B_IP=192.0.2.2
CLUSTER_OUTSIDE_IP=192.0.2.100
CLUSTER_OUTSIDE_IP2=192.0.2.101
declare -A CLUSTER_PODS=([pod-a1]=10.244.1.11 [pod-a2]=10.244.1.12 [pod-b1]=10.244.2.11 [pod-b2]=10.244.2.12)
# Every ClusterIP of tests/vm/packet-path/, plus the one packet-path.sh adds
# later (extra, 10.96.1.20): node B's copy on its kube-ipvs0.
CLUSTER_SERVICE_IPS=(10.96.1.10 10.96.1.11 10.96.1.12 10.96.1.13 10.96.1.14 10.96.1.15 10.96.1.20 10.96.1.40 10.96.1.41 10.96.1.53)
CLUSTER_NODE_A_IP6=2001:db8::1
CLUSTER_NODE_B_IP6=2001:db8::2
CLUSTER_OUTSIDE_IP6=2001:db8::100
CLUSTER_OUTSIDE_IP6_2=2001:db8::101
# The IPv6 ClusterIPs of tests/vm/packet-path/ (node B's copy).
CLUSTER_SERVICE_IP6S=(fd00:10:96::40 fd00:10:96::41)
CLUSTER_LISTENER_PORT=9999
CLUSTER_LOGS=${CLUSTER_LOGS:-/tmp/kip-cluster}

cluster_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cluster_pids=()

# pod_node POD: the namespace of the node a pod runs on.
pod_node() {
    case $1 in
    pod-a*) echo node-a ;;
    *) echo node-b ;;
    esac
}

# in_ns NS CMD...: runs CMD in namespace NS; node-a is the root namespace.
in_ns() {
    local ns=$1
    shift
    if [[ $ns == node-a ]]; then "$@"; else ip netns exec "$ns" "$@"; fi
}

# in_ns_ip NS ARGS...: `ip ARGS` in namespace NS.
in_ns_ip() {
    local ns=$1
    shift
    if [[ $ns == node-a ]]; then ip "$@"; else ip -n "$ns" "$@"; fi
}

# pod_ip6 POD: the pod's IPv6 address (its IPv4 host number in its node's /64).
pod_ip6() {
    local ip=${CLUSTER_PODS[$1]} subnet
    subnet=${ip%.*}
    echo "fd00:10:244:${subnet##*.}::${ip##*.}"
}

# lan_port NS IFNAME ADDR...: a veth from NS (IFNAME there) to the lan bridge;
# IPv4 addresses get /24, IPv6 ones /64.
lan_port() {
    local ns=$1 ifname=$2 address
    shift 2
    ip -n lan link add "to-$ns" type veth peer name "$ifname" netns "${ns/node-a/1}" &&
        ip -n lan link set "to-$ns" master br0 up || return 1
    for address in "$@"; do
        if [[ $address == *:* ]]; then
            in_ns_ip "$ns" addr add "$address/64" dev "$ifname" nodad || return 1
        else
            in_ns_ip "$ns" addr add "$address/24" dev "$ifname" || return 1
        fi
    done
    in_ns_ip "$ns" link set "$ifname" up
}

# pod_up POD: its namespace, a veth to its node's cbr0, and its server.
pod_up() {
    local pod=$1 node gateway
    node=$(pod_node "$pod")
    gateway=${CLUSTER_PODS[$pod]%.*}.1
    ip netns add "$pod" &&
        in_ns_ip "$node" link add "veth-$pod" type veth peer name eth0 netns "$pod" &&
        in_ns_ip "$node" link set "veth-$pod" master cbr0 up &&
        ip -n "$pod" link set lo up &&
        ip -n "$pod" addr add "${CLUSTER_PODS[$pod]}/24" dev eth0 &&
        ip -n "$pod" link set eth0 up &&
        ip -n "$pod" route add default via "$gateway" &&
        ip -n "$pod" addr add "$(pod_ip6 "$pod")/64" dev eth0 nodad &&
        ip -n "$pod" -6 route add default via "$(pod_ip6 "$pod" | sed 's/::[0-9]*$/::1/')" || return 1
    ip netns exec "$pod" python3 "$cluster_dir/pod.py" "$pod" --ipv6 --log "$CLUSTER_LOGS/$pod.log" &
    cluster_pids+=($!)
}

cluster_up() {
    local pod ip attempt
    mkdir -p "$CLUSTER_LOGS" || return 1
    ip netns add lan &&
        ip -n lan link set lo up &&
        ip -n lan link add br0 type bridge &&
        ip -n lan link set br0 up || return 1

    # node A: the root namespace.
    lan_port node-a eth-lan "$CLUSTER_NODE_A_IP" "$CLUSTER_NODE_A_IP6" &&
        ip link add cbr0 type bridge &&
        ip addr add 10.244.1.1/24 dev cbr0 &&
        ip addr add fd00:10:244:1::1/64 dev cbr0 nodad &&
        ip link set cbr0 up &&
        ip route add 10.244.2.0/24 via "$CLUSTER_NODE_B_IP" &&
        ip -6 route add fd00:10:244:2::/64 via "$CLUSTER_NODE_B_IP6" &&
        sysctl -qw net.ipv4.ip_forward=1 &&
        sysctl -qw net.ipv6.conf.all.forwarding=1 || return 1

    # node B.
    local vip
    ip netns add node-b &&
        ip -n node-b link set lo up &&
        lan_port node-b eth0 "$CLUSTER_NODE_B_IP" "$CLUSTER_NODE_B_IP6" &&
        ip -n node-b link add cbr0 type bridge &&
        ip -n node-b addr add 10.244.2.1/24 dev cbr0 &&
        ip -n node-b addr add fd00:10:244:2::1/64 dev cbr0 nodad &&
        ip -n node-b link set cbr0 up &&
        ip -n node-b route add 10.244.1.0/24 via "$CLUSTER_NODE_A_IP" &&
        ip -n node-b -6 route add fd00:10:244:1::/64 via "$CLUSTER_NODE_A_IP6" &&
        ip -n node-b route add default via "$CLUSTER_OUTSIDE_IP" &&
        ip -n node-b -6 route add default via "$CLUSTER_OUTSIDE_IP6" &&
        ip netns exec node-b sysctl -qw net.ipv4.ip_forward=1 &&
        ip netns exec node-b sysctl -qw net.ipv6.conf.all.forwarding=1 &&
        ip -n node-b link add kube-ipvs0 type dummy || return 1
    for vip in "${CLUSTER_SERVICE_IPS[@]}"; do
        ip -n node-b addr add "$vip/32" dev kube-ipvs0 || return 1
    done
    for vip in "${CLUSTER_SERVICE_IP6S[@]}"; do
        ip -n node-b addr add "$vip/128" dev kube-ipvs0 nodad || return 1
    done

    # The external client.
    ip netns add outside &&
        ip -n outside link set lo up &&
        lan_port outside eth0 "$CLUSTER_OUTSIDE_IP" "$CLUSTER_OUTSIDE_IP2" \
        "$CLUSTER_OUTSIDE_IP6" "$CLUSTER_OUTSIDE_IP6_2" &&
        ip -n outside route add 203.0.113.0/24 via "$CLUSTER_NODE_A_IP" &&
        ip -n outside route add 10.96.0.0/16 via "$CLUSTER_NODE_A_IP" &&
        ip -n outside -6 route add 2001:db8:203::/64 via "$CLUSTER_NODE_A_IP6" &&
        ip -n outside -6 route add fd00:10:96::/112 via "$CLUSTER_NODE_A_IP6" || return 1

    for pod in "${!CLUSTER_PODS[@]}"; do pod_up "$pod" || return 1; done
    python3 "$cluster_dir/pod.py" host-listener --tcp "$CLUSTER_LISTENER_PORT" --udp 0 &
    cluster_pids+=($!)

    # Ready when each pod answers its own node, and the listener its own
    # loopback: bounded by attempts.
    for pod in "${!CLUSTER_PODS[@]}"; do
        ip=${CLUSTER_PODS[$pod]}
        for attempt in $(seq 50); do
            [[ $(http_from "$(pod_node "$pod")" "http://$ip:8080/" 2>/dev/null) == "$pod ${ip%.*}.1" ]] && break
            ((attempt == 50)) && { echo "pod $pod ($ip) never answered its node" >&2; return 1; }
            sleep 0.2
        done
        ip=$(pod_ip6 "$pod")
        for attempt in $(seq 50); do
            [[ $(http_from "$(pod_node "$pod")" "http://[$ip]:8080/" 2>/dev/null) == "$pod ${ip%::*}::1" ]] && break
            ((attempt == 50)) && { echo "pod $pod ($ip) never answered its node over IPv6" >&2; return 1; }
            sleep 0.2
        done
    done
    for attempt in $(seq 50); do
        [[ $(http_from node-a "http://127.0.0.1:$CLUSTER_LISTENER_PORT/" 2>/dev/null) == "host-listener 127.0.0.1" ]] && break
        ((attempt == 50)) && { echo "the host-network listener never answered on 127.0.0.1:$CLUSTER_LISTENER_PORT" >&2; return 1; }
        sleep 0.2
    done
}

cluster_down() {
    local pid ns
    for pid in "${cluster_pids[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${cluster_pids[@]}"; do wait "$pid" 2>/dev/null; done
    cluster_pids=()
    for ns in "${!CLUSTER_PODS[@]}" node-b outside lan; do ip netns del "$ns" 2>/dev/null; done
    ip link del cbr0 2>/dev/null
    ip link del eth-lan 2>/dev/null
    ip route del 10.244.2.0/24 2>/dev/null
    ip -6 route del fd00:10:244:2::/64 2>/dev/null
    return 0
}

# sctp_server_up POD PORT: an SCTP server (IPv4 and IPv6) in POD, kept until
# cluster_down. Separate from the pod's own servers so that nothing in the
# bed opens an SCTP socket (which would load the sctp module) before a test
# wants it to.
sctp_server_up() {
    ip netns exec "$1" python3 "$cluster_dir/pod.py" "$1" --tcp 0 --udp 0 --ipv6 --sctp "$2" \
        --log "$CLUSTER_LOGS/$1-sctp.log" &
    cluster_pids+=($!)
}

# sctp_from NS HOST PORT [SOURCE]: one SCTP association from NS; prints the
# server's answer, or how it failed.
sctp_from() {
    in_ns "$1" python3 - "$2" "$3" "${CLUSTER_HTTP_TIMEOUT:-3}" <<'PY'
import socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
s.settimeout(timeout)
try:
    s.connect((host, port))
    print(s.recv(100).decode().strip())
except ConnectionRefusedError:
    print("refused")
except (socket.timeout, TimeoutError):
    print("timeout")
except OSError as err:
    print(err.strerror or str(err))
PY
}

# http_from NS URL [CURL-ARGS...]: the body of one GET on a fresh connection
# from NS, e.g. `http_from outside http://192.0.2.1:30080/ --interface 192.0.2.101`.
http_from() {
    local ns=$1 url=$2
    shift 2
    in_ns "$ns" curl --silent --show-error --fail --max-time "${CLUSTER_HTTP_TIMEOUT:-3}" "$@" "$url"
}

# udp_from NS HOST PORT: one datagram from NS; prints the answer.
udp_from() {
    in_ns "$1" python3 - "$2" "$3" "${CLUSTER_HTTP_TIMEOUT:-3}" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[3]))
s.sendto(b"who?", (sys.argv[1], int(sys.argv[2])))
print(s.recv(100).decode().strip())
PY
}

# tcp_probe NS HOST PORT [SOURCE]: one TCP connect from NS, prints how it went:
# open, refused, timeout or the error.
tcp_probe() {
    in_ns "$1" python3 - "$2" "$3" "${4:-}" "${CLUSTER_PROBE_TIMEOUT:-2}" <<'PY'
import socket, sys
host, port, source, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
try:
    socket.create_connection((host, port), timeout=timeout,
                             source_address=(source, 0) if source else None).close()
    print("open")
except ConnectionRefusedError:
    print("refused")
except (socket.timeout, TimeoutError):
    print("timeout")
except OSError as err:
    print(err.strerror or str(err))
PY
}
