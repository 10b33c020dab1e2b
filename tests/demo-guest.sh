#!/usr/bin/env bash
# Guest half of tests/demo.sh (runs inside the VM as root).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
source "$repo/tests/vm/report.sh"
source "$repo/tests/vm/netns.sh"
proxy=${KIP_PROXY_BIN:?tests/demo.sh passes the binary}

say() { printf '\n\033[1m### %s\033[0m\n' "$*"; }

netns_up || { fail demo "the namespace fixture did not come up"; exit 1; }
flags=(--manifests "$repo/deploy/examples" --hostname-override vm-node --nodeport-addresses 192.0.2.0/24
    --cluster-cidr 10.244.0.0/16)

say "kube-ipvs-proxy plan (what it will program; touches nothing)"
"$proxy" plan "${flags[@]}" 2>/dev/null

say "kube-ipvs-proxy run (standalone, on deploy/examples)"
"$proxy" run "${flags[@]}" >/tmp/demo-proxy.log 2>&1 &
pid=$!
for _ in $(seq 100); do
    ipvsadm -Ln | grep -q 10.96.0.10:80 && break
    sleep 0.1
done
sleep 1
grep 'sync done' /tmp/demo-proxy.log | head -3

say "ipvsadm -Ln"
ipvsadm -Ln
say "ip addr show kube-ipvs0"
ip -brief addr show kube-ipvs0
say "nft list table ip kube-ipvs-proxy (the packet path)"
nft list table ip kube-ipvs-proxy

ok=0
say "12 requests to the ClusterIP 10.96.0.10:80 from the node (round-robin)"
out=$(spread 12 http_get http://10.96.0.10/) && echo "$out"
[[ $out == *web-a* && $out == *web-b* ]] && ok=$((ok + 1))
say "12 requests from the client namespace"
out=$(spread 12 in_client curl -s --max-time 3 http://10.96.0.10/) && echo "$out"
[[ $out == *web-a* ]] && ok=$((ok + 1))
say "NodePort 192.0.2.1:30080 from the client namespace"
out=$(spread 6 in_client curl -s --max-time 3 http://192.0.2.1:30080/) && echo "$out"
[[ $out == *web-* ]] && ok=$((ok + 1))

kill -TERM "$pid"; wait "$pid"
netns_down
if ((ok == 3)); then pass demo "traffic flowed through IPVS"; else fail demo "only $ok of 3 traffic checks answered"; fi
report_status
