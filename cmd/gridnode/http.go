package main

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"

	"github.com/collocate/grid/cluster"
	"github.com/collocate/grid/compute"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/process"
	"github.com/collocate/grid/txn/txnnode"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type memberJSON struct {
	Name   string `json:"name"`
	RPC    string `json:"rpc"`
	HTTP   string `json:"http,omitempty"`
	Status string `json:"status"`
}

type partitionJSON struct {
	ID      int      `json:"id"`
	Primary string   `json:"primary"`
	Backups []string `json:"backups"`
	Pending []string `json:"pending"`
	Epoch   uint64   `json:"epoch"`
}

type clusterJSON struct {
	Version    uint64          `json:"version"`
	Node       string          `json:"node"`
	Leader     string          `json:"leader"`
	Voters     []string        `json:"voters"`
	Members    []memberJSON    `json:"members"`
	Partitions []partitionJSON `json:"partitions"`
}

func newHTTPHandler(node *grid.Node, reg *prometheus.Registry, funcs *compute.Registry, rt *process.Runtime, txs *txnnode.Service, withPprof bool) http.Handler {
	mux := http.NewServeMux()
	handleProcessors(mux, rt)
	handleTransactions(mux, txs)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if reason := unhealthy(node); reason != "" {
			http.Error(w, reason, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		out := clusterJSON{Node: node.Name(), Leader: node.Cluster().Leader(), Voters: []string{}, Members: []memberJSON{}, Partitions: []partitionJSON{}}
		voters := map[string]bool{}
		for _, id := range node.Cluster().Voters() {
			voters[id] = true
		}
		for _, m := range node.Cluster().Members() {
			out.Members = append(out.Members, memberJSON{Name: m.Name, RPC: m.RPC, HTTP: m.HTTP, Status: m.Status.String()})
			if voters[m.RaftID] {
				out.Voters = append(out.Voters, m.Name)
			}
		}
		if t := node.Table(); t != nil {
			out.Version = t.Version
			for i, p := range t.Partitions {
				out.Partitions = append(out.Partitions, partitionJSON{
					ID: i, Primary: p.Primary, Backups: nonNil(p.Backups), Pending: nonNil(p.Pending), Epoch: p.Epoch,
				})
			}
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
	})
	mux.HandleFunc("GET /v1/partitions", func(w http.ResponseWriter, r *http.Request) {
		// This node's replica of every partition: role, epoch, LSN, entry
		// count and digest, for convergence checks.
		out := make([]grid.PartitionInfo, node.Partitions())
		for i := range out {
			out[i] = node.Inspect(i)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
	mux.HandleFunc("GET /v1/functions", func(w http.ResponseWriter, r *http.Request) {
		// The functions this node runs for callers: name and kind
		// (partition, member, filter).
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(funcs.List())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// unhealthy returns why the node cannot serve, or "".
func unhealthy(node *grid.Node) string {
	if node.Table() == nil {
		return "no committed partition table yet"
	}
	for _, m := range node.Cluster().Members() {
		if m.Name == node.Name() {
			if m.Status != cluster.StatusAlive {
				return "member status " + m.Status.String()
			}
			return ""
		}
	}
	return "not a cluster member"
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
