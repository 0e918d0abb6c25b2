#!/usr/bin/env bash
# Runs gridbench against a fresh local cluster of N gridnode processes
# (1 backup) on loopback, for docs/benchmarks.md.
#   bench/cluster.sh 3 -clients 50 -depth 1 -duration 10s
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1}; shift || true
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"' EXIT
go build -o "$tmp/gridnode" ./cmd/gridnode
go build -o "$tmp/gridbench" ./cmd/gridbench
addrs=""
for i in $(seq 0 $((n - 1))); do
  join=""
  [ "$i" -gt 0 ] && join="-join 127.0.0.1:17946"
  "$tmp/gridnode" -name "n$i" -rpc "127.0.0.1:$((17070 + i))" -gossip "127.0.0.1:$((17946 + i))" \
    -http "127.0.0.1:$((17080 + i))" -profile test -log-level warn $join 2>"$tmp/n$i.log" &
  addrs="$addrs${addrs:+,}127.0.0.1:$((17070 + i))"
  for _ in $(seq 100); do curl -sf "127.0.0.1:$((17080 + i))/healthz" >/dev/null && break; sleep 0.1; done
done
# Wait until the table is converged (nothing pending, full backups).
for _ in $(seq 300); do
  if curl -sf 127.0.0.1:17080/v1/cluster | python3 -c '
import json,sys
c=json.load(sys.stdin); n=int(sys.argv[1])
ok=all(not p["pending"] and len(p["backups"])==min(1,n-1) for p in c["partitions"]) and len({p["primary"] for p in c["partitions"]})==n
sys.exit(0 if ok else 1)' "$n"; then break; fi
  sleep 0.1
done
"$tmp/gridbench" -addrs "$addrs" "$@"
