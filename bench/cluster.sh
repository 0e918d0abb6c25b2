#!/usr/bin/env bash
# Runs gridbench against a fresh local cluster of N gridnode processes
# (1 backup) on loopback, for docs/benchmarks.md.
#   bench/cluster.sh 3 -clients 50 -depth 1 -duration 10s
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
n=${1:-1}; shift || true
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"' EXIT
go build -o "$tmp/gridnode" ./cmd/gridnode
go build -o "$tmp/gridbench" ./cmd/gridbench
start_cluster "$n" "$tmp" -profile test
addrs=""
for i in $(seq 0 $((n - 1))); do addrs="$addrs${addrs:+,}127.0.0.1:$((17070 + i))"; done
"$tmp/gridbench" -addrs "$addrs" "$@"
