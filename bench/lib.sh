# Shared by the bench scripts (source it). start_cluster N DIR [FLAGS...]
# starts N gridnode processes from DIR/gridnode on loopback (RPC 17070+i,
# gossip 17946+i, HTTP 17080+i, RESP 16380+i), each with FLAGS and 1
# backup, logs in DIR/n<i>.log, and waits until the table is converged
# (full backups, nothing pending, every node a primary).
start_cluster() {
  local n=$1 dir=$2
  shift 2
  for i in $(seq 0 $((n - 1))); do
    local join=""
    [ "$i" -gt 0 ] && join="-join 127.0.0.1:17946"
    "$dir/gridnode" -name "n$i" -rpc "127.0.0.1:$((17070 + i))" -gossip "127.0.0.1:$((17946 + i))" \
      -http "127.0.0.1:$((17080 + i))" -resp "127.0.0.1:$((16380 + i))" -backups 1 -log-level warn \
      $join "$@" 2>"$dir/n$i.log" &
    for _ in $(seq 100); do curl -sf "127.0.0.1:$((17080 + i))/healthz" >/dev/null && break; sleep 0.1; done
  done
  for _ in $(seq 300); do
    if curl -sf 127.0.0.1:17080/v1/cluster | python3 -c '
import json,sys
c=json.load(sys.stdin); n=int(sys.argv[1])
ok=all(not p["pending"] and len(p["backups"])==min(1,n-1) for p in c["partitions"]) and len({p["primary"] for p in c["partitions"]})==n
sys.exit(0 if ok else 1)' "$n"; then return 0; fi
    sleep 0.1
  done
  echo "cluster of $n did not converge" >&2
  return 1
}
