#!/usr/bin/env python3
"""Summarises the JSON lines of a bench script (lib.sh's measure and
idle_cores): per measurement the median and range over the rounds of the
columns named, and the ratio to the Put rate of the same round.

    bench/summary.py RESULTS.jsonl COLUMN[,COLUMN...]

Columns: ops, ratio, lat, cpu, above, client, recs, epr, errors.
"""
import json
import statistics
import sys


def rng(xs, f="{:,.0f}"):
    xs = sorted(xs)
    if not xs:
        return "-"
    return f.format(statistics.median(xs)) + " (" + f.format(xs[0]) + "-" + f.format(xs[-1]) + ")"


def main(path, columns):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    idle = statistics.median(r["nodes_cores"] for r in rows if r["name"] == "idle")
    rows = [r for r in rows if r["name"] != "idle"]
    by = {}
    for r in rows:
        by.setdefault(r["name"], []).append(r)
    put = {r["round"]: r.get("ops_per_sec", 0) for r in by.get("put", [])}

    def ops(r):
        return max(r.get("ops_per_sec", 1), 1)

    cols = {
        "ops": ("ops/s", lambda rs: rng([r.get("ops_per_sec", 0) for r in rs])),
        "ratio": ("x Put (same round)", lambda rs: rng([r.get("ops_per_sec", 0) / put[r["round"]] for r in rs if put.get(r["round"])], "{:.2f}")),
        "lat": ("p50 / p99 ms", lambda rs: "%.2f / %.2f" % (statistics.median(r.get("p50_us", 0) for r in rs) / 1e3,
                                                             statistics.median(r.get("p99_us", 0) for r in rs) / 1e3)),
        "cpu": ("server CPU/op (µs)", lambda rs: rng([r.get("server_cpu_us_per_op", 0) for r in rs])),
        "above": ("above idle (µs)", lambda rs: rng([r.get("server_cpu_us_per_op", 0) - idle * 1e6 / ops(r) for r in rs])),
        # The client's CPU over its whole process (dial included) per operation.
        "client": ("client CPU/op (µs)", lambda rs: rng([r["client_cores"] * r["wall"] * 1e6 / max(r.get("ops", 1), 1) for r in rs])),
        "recs": ("records/event", lambda rs: rng([r["records"] / r["ops"] for r in rs], "{:.2f}") if rs[0].get("records") else "-"),
        "epr": ("events/processor record", lambda rs: rng([r.get("events_per_record", 0) for r in rs], "{:.1f}") if rs[0].get("events_per_record") else "-"),
        "errors": ("errors", lambda rs: str(sum(r.get("errors", 0) for r in rs))),
    }
    print(f"\nnodes idle: {idle:.3f} cores; load average {min(r['load1'] for r in rows)}-{max(r['load1'] for r in rows)}, "
          f"the rest of the machine {rng([r['others_cores'] for r in rows], '{:.2f}')} cores, "
          f"the nodes {rng([r['nodes_cores'] for r in rows], '{:.2f}')} cores")
    print("\n| measurement | " + " | ".join(cols[c][0] for c in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, rs in by.items():
        print(f"| {name} | " + " | ".join(cols[c][1](rs) for c in columns) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","))
