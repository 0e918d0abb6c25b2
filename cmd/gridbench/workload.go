package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"

	"github.com/collocate/grid/client"
	"github.com/collocate/grid/compute/invoke"
	"github.com/collocate/grid/internal/api"
)

// Workloads (-workload).
const (
	workloadKV        = "kv"               // gets and puts of single keys (-get-ratio)
	workloadCollocate = "order-collocated" // a customer's order total summed at its primary
	workloadFetch     = "order-fetched"    // the same total, its lines fetched with GetAll
	workloadPublish   = "publish"          // Publish of -value bytes to stream -map, a random key of -keys
	workloadConsume   = "consume"          // a consumer group reading -keys events published before measuring
)

// workload is what one benchmark operation does, and how the keys it
// uses are written before measuring.
type workload struct {
	name     string
	mapName  string
	keys     int // key space (kv) or customers (order-*)
	lines    int // order lines per customer
	ratio    float64
	value    []byte
	lineKeys [][]string // order-fetched: each customer's line keys
	txnReads bool       // txn-*: read both accounts before writing them
	txnAdds  bool       // txn-*: AddAtLeast and Add instead of reads and writes
	// txnLocking: txn-* with txn.Options.Locking
	txnLocking bool
}

// linesMap holds the order lines of the order-* workloads, one map per
// line count so that runs with different -lines share a cluster.
func (w *workload) linesMap() string { return fmt.Sprintf("lines%d", w.lines) }

func (w *workload) validate() error {
	switch w.name {
	case workloadKV, workloadPublish, workloadConsume, workloadProcSingle, workloadProcChain, workloadTxnCross, workloadTxnSingle:
	case workloadCollocate, workloadFetch:
		if w.lines < 1 {
			return errors.New("-lines must be positive")
		}
	default:
		return fmt.Errorf("unknown -workload %q (kv, %s, %s, %s, %s, %s, %s, %s, %s)", w.name, workloadCollocate, workloadFetch, workloadPublish, workloadConsume, workloadProcSingle, workloadProcChain, workloadTxnCross, workloadTxnSingle)
	}
	return nil
}

// processes reports whether w is a process-* workload.
func (w *workload) processes() bool {
	return w.name == workloadProcSingle || w.name == workloadProcChain
}

func keyName(i int) string { return fmt.Sprintf("key:%d", i) }

// customer names customer i's affinity key; its lines are "{cust:i}:line:j".
func customer(i int) string { return fmt.Sprintf("{cust:%d}", i) }

func lineKey(cust, j int) string { return fmt.Sprintf("{cust:%d}:line:%d", cust, j) }

// orderTotal is the sum of a customer's lines as preload writes them (line
// j holds j+1).
func (w *workload) orderTotal() int64 { return int64(w.lines) * int64(w.lines+1) / 2 }

// preload writes every key the workload reads, in batches of 1000 entries.
func (w *workload) preload(ctx context.Context, c *client.Client, timeout func(context.Context) (context.Context, context.CancelFunc)) error {
	batch := map[string][]byte{}
	flush := func(m client.Map) error {
		if len(batch) == 0 {
			return nil
		}
		pctx, cancel := timeout(ctx)
		defer cancel()
		err := m.PutAll(pctx, batch)
		clear(batch)
		return err
	}
	if w.transactions() {
		m := c.Map(w.mapName)
		err := w.preloadAccounts(func(k string, v []byte) error {
			batch[k] = v
			if len(batch) == 1000 {
				return flush(m)
			}
			return nil
		})
		if err != nil {
			return err
		}
		return flush(m)
	}
	if w.name == workloadKV {
		m := c.Map(w.mapName)
		for i := range w.keys {
			batch[keyName(i)] = w.value
			if len(batch) == 1000 {
				if err := flush(m); err != nil {
					return err
				}
			}
		}
		return flush(m)
	}
	m := c.Map(w.linesMap())
	w.lineKeys = make([][]string, w.keys)
	for cust := range w.keys {
		for j := range w.lines {
			k := lineKey(cust, j)
			w.lineKeys[cust] = append(w.lineKeys[cust], k)
			batch[k] = fmt.Appendf(nil, "%d", j+1)
			if len(batch) == 1000 {
				if err := flush(m); err != nil {
					return err
				}
			}
		}
	}
	return flush(m)
}

// op runs one operation of the workload with c.
func (w *workload) op(ctx context.Context, c *client.Client, rng *rand.Rand) error {
	if w.transactions() {
		return w.transfer(ctx, c, rng)
	}
	i := rng.IntN(w.keys)
	switch w.name {
	case workloadCollocate:
		agg, err := invoke.AggregateKey(ctx, c, w.linesMap(), customer(i), invoke.AggArgs{})
		if err == nil && agg.IntSum != w.orderTotal() {
			err = fmt.Errorf("customer %d: total %d, want %d", i, agg.IntSum, w.orderTotal())
		}
		return err
	case workloadFetch:
		vals, err := c.Map(w.linesMap()).GetAll(ctx, w.lineKeys[i])
		if err != nil {
			return err
		}
		var total int64
		for _, v := range vals {
			n, _ := api.ParseInt(v)
			total += n
		}
		if total != w.orderTotal() {
			return fmt.Errorf("customer %d: total %d, want %d", i, total, w.orderTotal())
		}
		return nil
	}
	if w.name == workloadPublish {
		_, err := c.Publish(ctx, w.mapName, keyName(i), w.value)
		return err
	}
	m := c.Map(w.mapName)
	k := keyName(i)
	if rng.Float64() < w.ratio {
		_, err := m.Get(ctx, k)
		if errors.Is(err, client.ErrNotFound) {
			err = nil
		}
		return err
	}
	return m.Put(ctx, k, w.value)
}
