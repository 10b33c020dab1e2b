#!/usr/bin/env bash
# Runs inside the VM (started by boot.sh): loads the modules every test needs,
# runs the script, records its status in $KIP_OUT and prints the sentinel
# boot.sh looks for. Not meant to be run on a host.
set -uo pipefail

script=$1
shift
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export KIP_RESULTS=$KIP_OUT/results
: >"$KIP_RESULTS"

finish() {
    printf '%s\n' "$1" >"$KIP_OUT/status"
    sync
    printf 'KIP-VM-DONE %s status=%s\n' "$(basename "$script")" "$1"
    exit "$1"
}

# ip_vs pulls in nf_conntrack; the schedulers are modules of their own and
# the kernel loads them lazily, which a scheduler change would race with.
# The nf_tables modules are those of the proxy's table (NAT chains, ct, fib,
# masquerade, reject) and conntrack's netlink interface, which the proxy and
# `conntrack -L` use.
for module in ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_sh ip_vs_sed ip_vs_nq \
    dummy veth bridge \
    nf_tables nft_chain_nat nft_ct nft_fib_ipv4 nft_masq nft_reject_ipv4 nf_conntrack_netlink; do
    if ! modprobe "$module"; then
        printf 'FAIL\tguest\tmodprobe %s failed in %s\n' "$module" "$(uname -r)" >>"$KIP_RESULTS"
        finish 1
    fi
done

bash "$script" "$@"
finish $?
