#!/usr/bin/env bash
# Event processor throughput next to the plain replicated Put rate, in one
# run (docs/benchmarks.md, "Event processors"). Starts 3 gridnode processes
# (default profile, 1 backup, -processors chain,single) and runs ROUNDS
# interleaved rounds of: Put (kv, get-ratio 0), process-single end to end,
# process-single drain, process-chain end to end, process-chain drain, all
# with the same writers. Prints one JSON line per measurement (with the
# load average and the CPU the rest of the machine used meanwhile) and a
# summary: median and range per measurement.
#
#   bench/process.sh [ROUNDS]
#
# Environment: HOST (127.0.0.1) and PORT (17000) place the nodes (RPC
# PORT+70+i, gossip PORT+946+i, HTTP PORT+80+i, RESP PORT-620+i; lib.sh's
# start_cluster); CLIENTS and DEPTH (16, 4)
# the writers; N_SINGLE, N_SINGLE_DRAIN, N_CHAIN, N_CHAIN_DRAIN the events
# per measurement; PUT_SECONDS (10); NODE_FLAGS more gridnode flags; OUT a
# file for the JSON lines; BIN a directory with prebuilt gridnode and
# gridbench (default: built here).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
rounds=${1:-3}
clients=${CLIENTS:-16} depth=${DEPTH:-4}
bench_setup
start_cluster 3 "$bin" -processors chain,single ${NODE_FLAGS:-}
A=$(IFS=,; echo "${rpc[*]}") H=$(IFS=,; echo "${http[*]}")

# Warm up (not recorded): the first events create every partition's streams.
"$bin/gridbench" -addrs "$A" -clients "$clients" -depth "$depth" -workload process-single -keys 5000 -duration 60s -http "$H" >/dev/null
"$bin/gridbench" -addrs "$A" -clients "$clients" -depth "$depth" -workload process-chain -keys 5000 -duration 60s -http "$H" >/dev/null

# The nodes' idle CPU (raft, leases, the processors' idle polls), for the
# summary's CPU per operation above idle.
idle_cores 10

for r in $(seq "$rounds"); do
  measure put "$r" -workload kv -get-ratio 0 -preload=false -duration "${PUT_SECONDS:-10}s"
  measure single "$r" -workload process-single -keys "${N_SINGLE:-40000}" -duration 120s -http "$H"
  measure single-drain "$r" -workload process-single -drain -keys "${N_SINGLE_DRAIN:-200000}" -duration 180s -http "$H"
  measure chain "$r" -workload process-chain -keys "${N_CHAIN:-20000}" -duration 120s -http "$H"
  measure chain-drain "$r" -workload process-chain -drain -keys "${N_CHAIN_DRAIN:-40000}" -duration 180s -http "$H"
done

bench/summary.py "$out" ops,ratio,cpu,above,recs,epr,lat,errors
