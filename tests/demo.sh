#!/usr/bin/env bash
# The README's demo: boots a VM with Debian's stock kernel, builds a small
# network of namespaces (four HTTP backends, a client), runs kube-ipvs-proxy
# standalone on deploy/examples, and shows real traffic through the
# ClusterIP and the NodePort, with `ipvsadm -Ln` and `plan` beside it.
#
#   tests/demo.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
cargo build --release --bin kube-ipvs-proxy
KIP_PROXY_BIN=$repo/target/release/kube-ipvs-proxy exec tests/vm/boot.sh tests/demo-guest.sh
