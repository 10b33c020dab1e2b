# shellcheck shell=bash
# Topology-aware routing in the packet-path test bed (sourced by
# tests/vm/packet-path.sh, whose helpers it uses): the service of
# packet-path/zone.yaml has one endpoint in each zone, hinted for its own,
# and node-a is in zone-a.

# zone_answers N: who answers N requests from node-a to the zone service, as
# "pod-a1=N" or "pod-a1=7 pod-b1=3"; a failed request counts as "error".
zone_answers() {
    local i who
    declare -A count=()
    for ((i = 0; i < $1; i++)); do
        who=$(http_from node-a http://10.96.1.60/ 2>/dev/null) || who=error
        who=${who%% *}
        count[${who:-error}]=$((${count[${who:-error}]:-0} + 1))
    done
    for who in "${!count[@]}"; do echo "$who=${count[$who]}"; done | sort | paste -sd' '
}

check_zone_routing() {
    local name=zone-hints-keep-traffic-in-zone vs reals answers
    ready "$name" || return
    # The first sync may still be on its way under TCG: wait for the
    # virtual server, then judge what it holds.
    for _ in $(seq 10); do
        vs=$(ipvsadm -Ln -t 10.96.1.60:80 2>/dev/null) && break
        sleep 1
    done
    reals=$(awk '$1 == "->" && $2 != "RemoteAddress:Port" {print $2}' <<<"$vs" | paste -sd' ')
    if [[ $reals != "10.244.1.11:8080" ]]; then
        fail "zone-ipvs-real-servers" "TCP 10.96.1.60:80 has real servers '$reals', expected only pod-a1's 10.244.1.11:8080 (zone-a)"
    else
        pass "zone-ipvs-real-servers" "TCP 10.96.1.60:80 -> $reals only; pod-b1 (zone-b) left out"
    fi
    # Ten requests, round robin over whatever IPVS has: every answer is pod-a1.
    answers=$(zone_answers 10)
    if [[ $answers == "pod-a1=10" ]]; then
        pass "$name" "10 requests from node-a (zone-a): $answers"
    else
        fail "$name" "10 requests from node-a (zone-a): $answers; expected pod-a1=10"
    fi
}
