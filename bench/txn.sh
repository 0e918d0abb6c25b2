#!/usr/bin/env bash
# Transaction throughput next to the plain replicated Put rate, in one run
# (docs/benchmarks.md, "Transactions"). Starts 3 gridnode processes
# (default profile, 1 backup) and runs ROUNDS rounds of: Put (kv, get-ratio
# 0, 100-byte values), txn-cross (a transfer between two accounts in
# different partitions: read both, write both; two-phase commit) and
# txn-single (the two accounts share an affinity key: one step), with
# BLIND=1 also the same two as blind 2-key puts (-txn-reads=false,
# 100-byte values: a transactional putAll), all with the same clients;
# with ADDS=1 also the same two as transfers by AddAtLeast(from, -1, 0)
# and Add(to, 1) (-txn-adds: the balances checked where they live, no
# reads); with LOCKING=1 also the transfers with txn.Options.Locking
# (-txn-locking: each Get locks its key at once); every other round in the
# reverse order.
#
# A transaction leaves records behind for a while (its decision 30 s past
# its deadline, its participants' tombstones a minute), which the members'
# recovery scans and the expiry deletes: the cost of a steady load includes
# them. So each transaction measurement follows WARM (60) seconds of the
# same workload, unrecorded, and Put is measured only once the previous
# transactions' records are gone (every node's GET /v1/transactions shows
# no decision and no tombstone; at most 120 s).
#
# Prints one JSON line per measurement (with the load average and the CPU
# the rest of the machine used meanwhile) and a summary: median and range
# per measurement, and its ratio to the Put rate of the same round.
#
#   bench/txn.sh [ROUNDS]
#
# Environment: HOST (127.0.0.1) and PORT (18000) place the nodes (lib.sh's
# start_cluster); CLIENTS and DEPTH (16, 4) the clients; KEYS (100000)
# the accounts; SECS (20) per measurement; WARM (60); NODE_FLAGS more gridnode
# flags (-pprof, say); OUT a file for the JSON lines; BIN a directory with
# prebuilt gridnode and gridbench (default: built here).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
rounds=${1:-5}
clients=${CLIENTS:-16} depth=${DEPTH:-4}
keys=${KEYS:-100000} secs=${SECS:-20} warm=${WARM:-60}
export PORT=${PORT:-18000}
bench_setup
start_cluster 3 "$bin" ${NODE_FLAGS:-}

A=$(IFS=,; echo "${rpc[*]}")
idle_cores 10

# drained waits until no node holds a transaction record (decision,
# tombstone, prepared record, lock), at most 120 s.
drained() {
  for _ in $(seq 240); do
    python3 - "${http[@]}" <<'PY' && return 0
import json, sys, urllib.request
n = 0
for h in sys.argv[1:]:
    r = json.load(urllib.request.urlopen(f"http://{h}/v1/transactions", timeout=5))
    n += r["decisions"] + r["tombstones"] + r["prepared"] + r["locks"]
sys.exit(0 if n == 0 else 1)
PY
    sleep 0.5
  done
  echo "transaction records still there after 120 s" >&2
}
# warmed WORKLOAD FLAGS...: WARM seconds of a transaction workload, unrecorded.
warmed() {
  "$bin/gridbench" -addrs "$A" -clients "$clients" -depth "$depth" -keys "$keys" -duration "${warm}s" "$@" >/dev/null || true
}

names=(put cross single)
[ -n "${BLIND:-}" ] && names+=(cross-blind single-blind)
[ -n "${LOCKING:-}" ] && names+=(cross-locking single-locking)
[ -n "${ADDS:-}" ] && names+=(cross-add single-add)
run() {
  case $1 in
  put) drained; measure put "$2" -workload kv -get-ratio 0 -preload=false -keys "$keys" -duration "${secs}s" ;;
  cross) warmed -workload txn-cross; measure cross "$2" -workload txn-cross -preload=false -keys "$keys" -duration "${secs}s" ;;
  single) warmed -workload txn-single; measure single "$2" -workload txn-single -preload=false -keys "$keys" -duration "${secs}s" ;;
  cross-blind) warmed -workload txn-cross -txn-reads=false; measure cross-blind "$2" -workload txn-cross -txn-reads=false -keys "$keys" -duration "${secs}s" ;;
  cross-locking) warmed -workload txn-cross -txn-locking; measure cross-locking "$2" -workload txn-cross -txn-locking -preload=false -keys "$keys" -duration "${secs}s" ;;
  single-locking) warmed -workload txn-single -txn-locking; measure single-locking "$2" -workload txn-single -txn-locking -preload=false -keys "$keys" -duration "${secs}s" ;;
  single-blind) warmed -workload txn-single -txn-reads=false; measure single-blind "$2" -workload txn-single -txn-reads=false -keys "$keys" -duration "${secs}s" ;;
  cross-add) warmed -workload txn-cross -txn-adds; measure cross-add "$2" -workload txn-cross -txn-adds -preload=false -keys "$keys" -duration "${secs}s" ;;
  single-add) warmed -workload txn-single -txn-adds; measure single-add "$2" -workload txn-single -txn-adds -preload=false -keys "$keys" -duration "${secs}s" ;;
  esac
}
for r in $(seq "$rounds"); do
  order=("${names[@]}")
  if [ $((r % 2)) -eq 0 ]; then order=(); for ((i = ${#names[@]} - 1; i >= 0; i--)); do order+=("${names[$i]}"); done; fi
  for n in "${order[@]}"; do run "$n" "$r"; done
done

bench/summary.py "$out" ops,ratio,lat,cpu,above,client,errors
