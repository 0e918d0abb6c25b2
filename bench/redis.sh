#!/usr/bin/env bash
# Side by side: the same redis-benchmark runs against Redis and against a
# 3-node grid (1 synchronous backup) serving RESP, all on loopback, for
# docs/benchmarks.md. Installs redis-server and redis-tools from Debian if
# they are missing (needs root).
#
#   bench/redis.sh                 # 200000 requests per run
#   REQUESTS=500000 bench/redis.sh
#   NODES=1 bench/redis.sh         # one grid node: one copy, like Redis
#
# redis-benchmark connects to one grid node, which forwards the keys it
# does not own; SPREAD=1 adds runs with three redis-benchmark processes,
# one per node, splitting the 50 clients.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
requests=${REQUESTS:-200000}
nodes=${NODES:-3}
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"' EXIT
go build -o "$tmp/gridnode" ./cmd/gridnode

redis_port=16379
redis-server --port $redis_port --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$tmp/redis.log" 2>&1 &
start_cluster "$nodes" "$tmp"
redis-cli -p $redis_port ping >/dev/null

# bench PORT PIPELINE CLIENTS -> "SET_rps SET_p50 SET_p99 GET_rps GET_p50 GET_p99"
bench() {
  redis-benchmark -h 127.0.0.1 -p "$1" -t set,get -c "$3" -d 100 -r 100000 -n "$requests" -P "$2" --csv 2>/dev/null |
    python3 -c '
import csv,sys
rows={r[0]:r for r in csv.reader(sys.stdin) if r and r[0] in ("SET","GET")}
print(" ".join(f"{float(rows[t][1]):.0f} {rows[t][4]} {rows[t][6]}" for t in ("SET","GET")))'
}

# spread PIPELINE: three redis-benchmark processes, one per grid node.
spread() {
  for i in 0 1 2; do bench $((16380 + i)) "$1" 17 >"$tmp/spread$i" & done
  wait_pids=$(jobs -p | tail -3)
  for p in $wait_pids; do wait "$p" || true; done
  cat "$tmp"/spread0 "$tmp"/spread1 "$tmp"/spread2 | python3 -c '
import sys
rows=[l.split() for l in sys.stdin if l.strip()]
s=sum(float(r[0]) for r in rows); g=sum(float(r[3]) for r in rows)
print(f"{s:.0f} - {max(float(r[2]) for r in rows)} {g:.0f} - {max(float(r[5]) for r in rows)}")'
}

printf "%s grid node(s); redis-benchmark -t set,get -c 50 -d 100 -r 100000 -n %s (rps; p50/p99 ms)\n\n" "$nodes" "$requests"
printf "| test | pipeline | Redis rps | grid rps | grid/Redis | Redis p50/p99 ms | grid p50/p99 ms |\n"
printf "|---|---|---|---|---|---|---|\n"
for p in 1 16; do
  r=($(bench $redis_port $p 50))
  g=($(bench 16380 $p 50))
  for t in 0 1; do
    name=SET; [ $t -eq 1 ] && name=GET
    o=$((t * 3))
    ratio=$(python3 -c "print(f'{${g[$o]}/${r[$o]}:.2f}')")
    printf "| %s | %s | %s | %s | %s | %s / %s | %s / %s |\n" "$name" "$p" "${r[$o]}" "${g[$o]}" "$ratio" \
      "${r[$((o + 1))]}" "${r[$((o + 2))]}" "${g[$((o + 1))]}" "${g[$((o + 2))]}"
  done
done
if [ "${SPREAD:-0}" = 1 ] && [ "$nodes" = 3 ]; then
  echo
  echo "Spread: three redis-benchmark processes (17 clients each), one per grid node; p99 is the worst of the three."
  echo
  printf "| test | pipeline | grid rps | grid p99 ms |\n|---|---|---|---|\n"
  for p in 1 16; do
    g=($(spread $p))
    printf "| SET | %s | %s | %s |\n| GET | %s | %s | %s |\n" "$p" "${g[0]}" "${g[2]}" "$p" "${g[3]}" "${g[5]}"
  done
fi
