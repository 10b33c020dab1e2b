#!/usr/bin/env bash
# Test fixture: programs this node as kube-proxy in IPVS mode would for the
# services of tests/vm/takeover/*.yaml (single-stack IPv4, masquerade bit 14,
# --cluster-cidr 10.244.0.0/16, scheduler rr, strictARP off), with the same
# tools upstream shells out to or the netlink calls they stand for. Read from
# kubernetes/kubernetes pkg/proxy/ipvs/proxier.go (NewProxier's sysctls,
# syncService, syncEndpoint, createAndLinkKubeChain, writeIptablesRules,
# acceptIPVSTraffic), pkg/proxy/ipvs/ipset.go (set names, types, comments)
# and pkg/util/ipset/ipset.go (`ipset create` arguments).
#
# Then it adds what is NOT upstream's and must survive its removal: a user's
# own iptables chain and rule and ipset, and kubelet's KUBE-KUBELET-CANARY
# chains (kubelet owns them, not kube-proxy).
#
#   upstream-seed.sh        exits non-zero, naming the step, if any step fails
#
# A fixture, so shell is fine here; the proxy itself never shells out.
set -euo pipefail

step() { printf 'seed: %s\n' "$*"; }
trap 'echo "seed: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

# --- the services (tests/vm/takeover/*.yaml) -------------------------------
# VIP:port, persistence timeout (0: none), real servers.
services=(
    "10.96.0.10:80 0 10.244.1.11:8080 10.244.1.12:8080"  # web
    "10.96.0.11:80 10800 10.244.1.13:8080"               # sticky (ClientIP 10800)
    "10.96.200.10:80 0 10.244.1.14:8080"                 # kept
)
masquerade_mark=0x4000 # 1 << --iptables-masquerade-bit (14)
cluster_cidr=10.244.0.0/16

# --- sysctls (NewProxier) ---------------------------------------------------
# conn_reuse_mode is left alone on kernels >= 5.9 (connReuseFixedKernelVersion).
step sysctls
sysctl -qw net.ipv4.vs.conntrack=1
sysctl -qw net.ipv4.vs.expire_nodest_conn=1
sysctl -qw net.ipv4.vs.expire_quiescent_template=1
sysctl -qw net.ipv4.ip_forward=1

# --- kube-ipvs0 (EnsureDummyDevice, EnsureAddressBind) ----------------------
# A dummy device, never set up; each VIP as netlink.NewIPNet makes it: /32.
step kube-ipvs0
ip link add kube-ipvs0 type dummy
for service in "${services[@]}"; do
    read -r vip _ <<<"$service"
    ip addr add "${vip%:*}/32" dev kube-ipvs0
done

# --- IPVS (syncService, syncEndpoint) ---------------------------------------
# Scheduler rr, flags 0 but persistent with ClientIP affinity (timeout =
# timeoutSeconds, netmask 255.255.255.255 as moby/ipvs sends for IPv4);
# real servers masquerade (NAT) with weight 1.
step ipvs
for service in "${services[@]}"; do
    read -r vip timeout backends <<<"$service"
    if ((timeout > 0)); then
        ipvsadm -A -t "$vip" -s rr -p "$timeout" -M 255.255.255.255
    else
        ipvsadm -A -t "$vip" -s rr
    fi
    for backend in $backends; do
        ipvsadm -a -t "$vip" -r "$backend" -m -w 1
    done
done

# --- ipsets (ipset.go ipsetInfo; util/ipset CreateSet) ----------------------
# Every set exists whether or not it holds anything: hash types with "family
# inet hashsize 1024 maxelem 65536", bitmap:port with "range 0-65535", all
# with a comment.
step ipsets
for module in ip_set ip_set_hash_ip ip_set_hash_ipport ip_set_hash_ipportip \
    ip_set_hash_ipportnet ip_set_bitmap_port xt_set; do
    modprobe "$module"
done
while read -r name type comment; do
    if [[ $type == bitmap:port ]]; then
        ipset create "$name" "$type" range 0-65535 comment
    else
        ipset create "$name" "$type" family inet hashsize 1024 maxelem 65536 comment
    fi
done <<'EOF'
KUBE-LOOP-BACK hash:ip,port,ip Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose
KUBE-CLUSTER-IP hash:ip,port Kubernetes service cluster ip + port for masquerade purpose
KUBE-EXTERNAL-IP hash:ip,port Kubernetes service external ip + port for masquerade and filter purpose
KUBE-EXTERNAL-IP-LOCAL hash:ip,port Kubernetes service external ip + port with externalTrafficPolicy=local
KUBE-LOAD-BALANCER hash:ip,port Kubernetes service lb portal
KUBE-LOAD-BALANCER-FW hash:ip,port Kubernetes service load balancer ip + port for load balancer with sourceRange
KUBE-LOAD-BALANCER-LOCAL hash:ip,port Kubernetes service load balancer ip + port with externalTrafficPolicy=local
KUBE-LOAD-BALANCER-SOURCE-IP hash:ip,port,ip Kubernetes service load balancer ip + port + source IP for packet filter purpose
KUBE-LOAD-BALANCER-SOURCE-CIDR hash:ip,port,net Kubernetes service load balancer ip + port + source cidr for packet filter purpose
KUBE-NODE-PORT-TCP bitmap:port Kubernetes nodeport TCP port for masquerade purpose
KUBE-NODE-PORT-LOCAL-TCP bitmap:port Kubernetes nodeport TCP port with externalTrafficPolicy=local
KUBE-NODE-PORT-UDP bitmap:port Kubernetes nodeport UDP port for masquerade purpose
KUBE-NODE-PORT-LOCAL-UDP bitmap:port Kubernetes nodeport UDP port with externalTrafficPolicy=local
KUBE-NODE-PORT-SCTP-HASH hash:ip,port Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'
KUBE-NODE-PORT-LOCAL-SCTP-HASH hash:ip,port Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'
KUBE-HEALTH-CHECK-NODE-PORT bitmap:port Kubernetes health check node port
KUBE-IPVS-IPS hash:ip Addresses on the ipvs interface
EOF
# The entries syncProxyRules adds: every ClusterIP:port, every bound address,
# and each local endpoint's hairpin triple (all endpoints are on this node).
for service in "${services[@]}"; do
    read -r vip _ backends <<<"$service"
    ipset add KUBE-CLUSTER-IP "${vip%:*},tcp:${vip#*:}"
    ipset add KUBE-IPVS-IPS "${vip%:*}"
    for backend in $backends; do
        ipset add KUBE-LOOP-BACK "${backend%:*},tcp:${backend#*:},${backend%:*}" -exist
    done
done

# --- iptables (createAndLinkKubeChain, then writeIptablesRules) -------------
# EnsureChain for every chain of iptablesChains, EnsureRule(Prepend) for each
# jump of iptablesJumpChain, in that order.
step iptables
for chain in KUBE-SERVICES KUBE-POSTROUTING KUBE-NODE-PORT KUBE-LOAD-BALANCER KUBE-MARK-MASQ; do
    iptables -w -t nat -N "$chain"
done
for chain in KUBE-FORWARD KUBE-NODE-PORT KUBE-PROXY-FIREWALL KUBE-SOURCE-RANGES-FIREWALL \
    KUBE-IPVS-FILTER KUBE-IPVS-OUT-FILTER; do
    iptables -w -t filter -N "$chain"
done
while read -r table from to comment; do
    iptables -w -t "$table" -I "$from" -m comment --comment "$comment" -j "$to"
done <<'EOF'
nat OUTPUT KUBE-SERVICES kubernetes service portals
nat PREROUTING KUBE-SERVICES kubernetes service portals
nat POSTROUTING KUBE-POSTROUTING kubernetes postrouting rules
filter FORWARD KUBE-FORWARD kubernetes forwarding rules
filter INPUT KUBE-NODE-PORT kubernetes health check rules
filter INPUT KUBE-PROXY-FIREWALL kube-proxy firewall rules
filter FORWARD KUBE-PROXY-FIREWALL kube-proxy firewall rules
filter INPUT KUBE-IPVS-FILTER kubernetes ipvs access filter
filter OUTPUT KUBE-IPVS-OUT-FILTER kubernetes ipvs access filter
EOF
# The rules, as syncProxyRules hands them to iptables-restore --noflush
# --counters: the chain lines flush upstream's chains, nothing else. Only
# the rules of non-empty sets are written (KUBE-LOOP-BACK, KUBE-CLUSTER-IP);
# with a cluster CIDR the local detector masquerades off-cluster sources.
iptables-restore -w --noflush --counters <<EOF
*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN
-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s $cluster_cidr -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-POSTROUTING -m mark ! --mark $masquerade_mark/$masquerade_mark -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark $masquerade_mark
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark $masquerade_mark
COMMIT
*filter
:KUBE-FORWARD - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SOURCE-RANGES-FIREWALL - [0:0]
:KUBE-IPVS-FILTER - [0:0]
:KUBE-IPVS-OUT-FILTER - [0:0]
-A KUBE-SOURCE-RANGES-FIREWALL -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark $masquerade_mark/$masquerade_mark -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT
-A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT
COMMIT
EOF

# --- not upstream's: must survive cleanup-upstream ---------------------------
step "foreign state"
# kubelet's canaries, in both families and the tables kubelet uses.
for tool in iptables ip6tables; do
    for table in mangle nat filter; do
        "$tool" -w -t "$table" -N KUBE-KUBELET-CANARY
    done
done
# A user's allow list: an ipset, a chain that matches it, and a jump from INPUT.
ipset create user-allowlist hash:ip
ipset add user-allowlist 192.0.2.2
iptables -w -N USER-ALLOW
iptables -w -A USER-ALLOW -m set --match-set user-allowlist src -j ACCEPT
iptables -w -A INPUT -j USER-ALLOW
step seeded
