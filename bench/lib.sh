# Shared by the bench scripts (source it).
#
# bench_setup sets what a bench script shares (source this file from the
# repository's root): tmp (a scratch directory removed at exit, with the
# cluster stopped), out (OUT, or a file in tmp for the JSON lines), the
# arrays pids, rpc and http (start_cluster fills them) and bin (BIN, or tmp
# with gridnode and gridbench built from the tree).
bench_setup() {
  tmp=$(mktemp -d)
  out=${OUT:-$tmp/results.jsonl}
  pids=() rpc=() http=()
  trap 'stop_cluster; rm -rf "$tmp"' EXIT
  bin=${BIN:-$tmp}
  if [ -z "${BIN:-}" ]; then
    go build -o "$tmp/gridnode" ./cmd/gridnode
    go build -o "$tmp/gridbench" ./cmd/gridbench
  fi
}

# start_cluster N DIR [FLAGS...] starts N gridnode processes from
# DIR/gridnode on HOST (127.0.0.1), each with FLAGS and 1 backup, logs in
# DIR/n<i>.log, and waits until the table is converged (full backups,
# nothing pending, every node a primary). PORT (17000) places them: RPC
# PORT+70+i, gossip PORT+946+i, HTTP PORT+80+i, RESP PORT-620+i (17070,
# 17946, 17080, 16380 by default). It appends each node's pid, RPC and HTTP
# address to the arrays pids, rpc and http.
start_cluster() {
  local n=$1 dir=$2 host=${HOST:-127.0.0.1} port=${PORT:-17000}
  shift 2
  for i in $(seq 0 $((n - 1))); do
    local join=""
    [ "$i" -gt 0 ] && join="-join $host:$((port + 946))"
    "$dir/gridnode" -name "n$i" -rpc "$host:$((port + 70 + i))" -gossip "$host:$((port + 946 + i))" \
      -http "$host:$((port + 80 + i))" -resp "$host:$((port - 620 + i))" -backups 1 -log-level warn \
      $join "$@" 2>"$dir/n$i.log" &
    pids+=($!) rpc+=("$host:$((port + 70 + i))") http+=("$host:$((port + 80 + i))")
    for _ in $(seq 100); do curl -sf "$host:$((port + 80 + i))/healthz" >/dev/null && break; sleep 0.1; done
  done
  for _ in $(seq 600); do
    if curl -sf "$host:$((port + 80))/v1/cluster" | python3 -c '
import json,sys
c=json.load(sys.stdin); n=int(sys.argv[1])
ok=all(not p["pending"] and len(p["backups"])==min(1,n-1) for p in c["partitions"]) and len({p["primary"] for p in c["partitions"]})==n
sys.exit(0 if ok else 1)' "$n"; then return 0; fi
    sleep 0.2
  done
  echo "cluster of $n did not converge" >&2
  return 1
}

# stop_cluster stops the nodes of pids (a node that does not exit within
# 25 s of SIGTERM is killed).
stop_cluster() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 125); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$p" 2>/dev/null || true
  done
}

# busy prints the machine's busy CPU ticks and those of the nodes (pids).
busy() {
  awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat
  for p in "${pids[@]}"; do awk '{print $14+$15}' "/proc/$p/stat"; done | paste -sd+ | bc
}

# measure NAME ROUND GRIDBENCH-FLAGS...: one gridbench run against the
# cluster (RPC addresses rpc, server pids pids; clients, depth; gridbench
# from $bin; $tmp for scratch), appended to $out as one JSON line with the
# round, the load average and the cores used by the nodes, the client and
# the rest of the machine meanwhile.
measure() {
  local name=$1 round=$2
  shift 2
  local b0 n0 t0 b1 n1 t1 load res
  read -r b0 n0 < <(busy | paste -sd' ')
  t0=$(date +%s.%N)
  res=$(/usr/bin/time -f '%U %S' -o "$tmp/time" "$bin/gridbench" -addrs "$(IFS=,; echo "${rpc[*]}")" \
    -server-pids "$(IFS=,; echo "${pids[*]}")" -clients "$clients" -depth "$depth" -json "$@") || true
  t1=$(date +%s.%N)
  read -r b1 n1 < <(busy | paste -sd' ')
  load=$(cut -d' ' -f1 /proc/loadavg)
  python3 - "$name" "$round" "$res" "$b0" "$b1" "$n0" "$n1" "$t0" "$t1" "$load" "$(cat "$tmp/time")" <<'PY' | tee -a "$out"
import json, sys
name, rnd, res, b0, b1, n0, n1, t0, t1, load, tm = sys.argv[1:]
r = json.loads(res) if res.strip() else {"first_error": "no result"}
secs = float(t1) - float(t0)
client = sum(float(x) for x in tm.split()[-2:])
# CPU ticks are 1/100 s; "others" is what the rest of the machine used.
others = (int(b1) - int(b0) - (int(n1) - int(n0))) / 100 - client
r.update(name=name, round=int(rnd), load1=float(load), wall=round(secs, 1),
         nodes_cores=round((int(n1) - int(n0)) / 100 / secs, 2), client_cores=round(client / secs, 2),
         others_cores=round(others / secs, 2))
print(json.dumps(r))
PY
}

# idle_cores SECONDS: one JSON line {"name": "idle", "nodes_cores": ...},
# the nodes' CPU while nothing runs (raft, leases, polls), appended to $out.
idle_cores() {
  local n0 n1
  read -r _ n0 < <(busy | paste -sd' ')
  sleep "$1"
  read -r _ n1 < <(busy | paste -sd' ')
  python3 -c 'import json,sys; print(json.dumps({"name": "idle", "nodes_cores": (int(sys.argv[2]) - int(sys.argv[1])) / 100 / float(sys.argv[3])}))' "$n0" "$n1" "$1" | tee -a "$out"
}
