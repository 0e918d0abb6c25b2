package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/collocate/grid/txn"
	"github.com/collocate/grid/txn/txnnode"
	"github.com/prometheus/client_golang/prometheus"
)

// GET /v1/transactions answers the node's transaction state: every
// partition led, no lock or prepared record once a transaction across two
// partitions committed, and its decision kept at the coordinator.
func TestHTTPTransactions(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 1, func(i int, cfg *grid.Config) { cfg.InternalSteps = txnnode.Steps() })
	node := c.Nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := node.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	txs, err := txnnode.Start(node, txnnode.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer txs.Close()
	h := newHTTPHandler(node, prometheus.NewRegistry(), nil, nil, txs, false)
	get := func() txnnode.Report {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/transactions", nil))
		var r txnnode.Report
		if err := json.NewDecoder(rec.Body).Decode(&r); err != nil || rec.Code != http.StatusOK {
			t.Fatalf("GET /v1/transactions: %d, %v", rec.Code, err)
		}
		return r
	}
	if r := get(); r.Led != node.Partitions() || r.Locks+r.Prepared+r.Decisions != 0 || len(r.Partitions) != 0 {
		t.Fatalf("idle node: %+v, want %d partitions led and nothing held", r, node.Partitions())
	}
	a, b := "a", "b"
	if affinity.Partition(a, node.Partitions()) == affinity.Partition(b, node.Partitions()) {
		t.Fatal("a and b share a partition")
	}
	err = txn.Run(ctx, txs, txn.Options{}, func(ctx context.Context, tx *txn.Tx) error {
		_ = tx.Put("m", a, []byte("1"))
		return tx.Put("m", b, []byte("2"))
	})
	if err != nil {
		t.Fatal(err)
	}
	r := get()
	if r.Locks != 0 || r.Prepared != 0 || r.Decisions != 1 || r.Tombstones != 1 || len(r.Partitions) != 1 || r.Partitions[0].Decisions != 1 {
		t.Fatalf("after a committed transaction across two partitions: %+v, want its decision and one tombstone only", r)
	}
}
