package txnnode_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/client"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/txn"
)

// A watched version is validated at commit like a read: a key changed
// after it was watched aborts the transaction, an unchanged one commits,
// and a Get of a changed watched key fails at once.
func TestWatch(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 30*time.Second)
	keys := keysInDistinctPartitions(2, g.Nodes[0].Partitions())
	m := g.Nodes[1].Map("acct")
	if err := m.Put(ctx, keys[0], itob(1)); err != nil {
		t.Fatal(err)
	}
	e, err := m.GetEntry(ctx, keys[0])
	if err != nil {
		t.Fatal(err)
	}
	attempt := func(watchAbsent bool) error {
		tx, err := txn.Begin(ctx, g.svcs[0], txn.Options{})
		if err != nil {
			return err
		}
		if err := tx.Watch("acct", keys[0], e.Version); err != nil {
			return err
		}
		if watchAbsent {
			if err := tx.Watch("acct", keys[1], 0); err != nil {
				return err
			}
		}
		if err := tx.Put("acct", keys[1], itob(2)); err != nil {
			return err
		}
		return tx.Commit(ctx)
	}
	if err := attempt(true); err != nil {
		t.Fatalf("unchanged watched keys: %v", err)
	}
	if err := attempt(true); !errors.Is(err, txn.ErrConflict) {
		t.Fatalf("watched as absent, then written: %v, want ErrConflict", err)
	}
	if err := m.Put(ctx, keys[0], itob(5)); err != nil {
		t.Fatal(err)
	}
	if err := attempt(false); !errors.Is(err, txn.ErrConflict) {
		t.Fatalf("watched key changed: %v, want ErrConflict", err)
	}
	tx, err := txn.Begin(ctx, g.svcs[0], txn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Watch("acct", keys[0], e.Version); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Get(ctx, "acct", keys[0]); !errors.Is(err, txn.ErrConflict) {
		t.Fatalf("Get of a changed watched key: %v, want ErrConflict", err)
	}
	if err := tx.Watch("acct", keys[0], e.Version+1000); !errors.Is(err, txn.ErrConflict) {
		t.Fatalf("Watch of a key read at another version: %v, want ErrConflict", err)
	}
	cur, _ := m.GetEntry(ctx, keys[0])
	tx, _ = txn.Begin(ctx, g.svcs[0], txn.Options{})
	_ = tx.Watch("acct", keys[0], cur.Version)
	if v, err := tx.Get(ctx, "acct", keys[0]); err != nil || string(v) != "5" {
		t.Fatalf("Get of an unchanged watched key: %q %v", v, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// PutKeepTTL keeps the key's expiry, or the one the transaction gave it.
func TestPutKeepTTL(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 30*time.Second)
	keys := keysInDistinctPartitions(4, g.Nodes[0].Partitions())
	m := g.Nodes[1].Map("acct")
	for _, k := range keys[:3] {
		if err := m.Put(ctx, k, itob(1), grid.WithTTL(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	err := txn.Run(ctx, g.svcs[0], txn.Options{}, func(ctx context.Context, tx *txn.Tx) error {
		if err := tx.PutKeepTTL(ctx, "acct", keys[0], itob(2)); err != nil { // keeps the hour
			return err
		}
		if err := tx.Put("acct", keys[1], itob(2)); err != nil { // no expiry, then kept
			return err
		}
		if err := tx.PutKeepTTL(ctx, "acct", keys[1], itob(3)); err != nil {
			return err
		}
		if err := tx.PutTTL("acct", keys[2], itob(2), time.Minute); err != nil { // a minute, then kept
			return err
		}
		if err := tx.PutKeepTTL(ctx, "acct", keys[2], itob(3)); err != nil {
			return err
		}
		return tx.PutKeepTTL(ctx, "acct", keys[3], itob(3)) // absent: none
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []time.Duration{time.Hour, 0, time.Minute, 0} {
		ttl, err := m.TTL(ctx, keys[i])
		if err != nil {
			t.Fatal(err)
		}
		if want == 0 && ttl != 0 || want != 0 && (ttl <= want-10*time.Second || ttl > want) {
			t.Errorf("key %d: TTL %v, want %v", i, ttl, want)
		}
	}
}

// countingGrid counts the reads that cross the network.
type countingGrid struct {
	txn.Grid
	reads atomic.Int64
}

func (g *countingGrid) Read(ctx context.Context, m, key string) (api.Entry, error) {
	g.reads.Add(1)
	return g.Grid.Read(ctx, m, key)
}

// Prefetch reads keys in parallel once; the Gets that follow cost no
// read, and what it read is validated at commit.
func TestPrefetch(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 30*time.Second)
	keys := keysInDistinctPartitions(3, g.Nodes[0].Partitions())
	m := g.Nodes[1].Map("acct")
	if err := m.Put(ctx, keys[0], itob(1)); err != nil {
		t.Fatal(err)
	}
	cg := &countingGrid{Grid: g.svcs[0]}
	tx, err := txn.Begin(ctx, cg, txn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Prefetch(ctx, "acct", []string{keys[0], keys[1], keys[0]}); err != nil {
		t.Fatal(err)
	}
	if v, err := tx.Get(ctx, "acct", keys[0]); err != nil || string(v) != "1" {
		t.Fatalf("Get after Prefetch: %q %v", v, err)
	}
	if _, err := tx.Get(ctx, "acct", keys[1]); !errors.Is(err, txn.ErrNotFound) {
		t.Fatalf("Get of an absent prefetched key: %v", err)
	}
	if n := cg.reads.Load(); n != 2 {
		t.Fatalf("%d reads, want 2 (one per distinct key)", n)
	}
	_ = tx.Put("acct", keys[2], itob(7))
	if err := m.Put(ctx, keys[1], itob(5)); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); !errors.Is(err, txn.ErrConflict) {
		t.Fatalf("commit after a prefetched key changed: %v, want ErrConflict", err)
	}

	old, _ := m.GetEntry(ctx, keys[0])
	if err := m.Put(ctx, keys[0], itob(2)); err != nil {
		t.Fatal(err)
	}
	tx, _ = txn.Begin(ctx, cg, txn.Options{})
	_ = tx.Watch("acct", keys[0], old.Version)
	if err := tx.Prefetch(ctx, "acct", keys[:1]); !errors.Is(err, txn.ErrConflict) {
		t.Fatalf("Prefetch of a changed watched key: %v, want ErrConflict", err)
	}
}

// batchCounting counts a BatchReader's calls and the single reads.
type batchCounting struct {
	txn.Grid
	br           txn.BatchReader
	batches, one atomic.Int64
}

func (g *batchCounting) Read(ctx context.Context, m, key string) (api.Entry, error) {
	g.one.Add(1)
	return g.Grid.Read(ctx, m, key)
}

func (g *batchCounting) ReadAll(ctx context.Context, m string, keys []string) (map[string]api.Entry, error) {
	g.batches.Add(1)
	return g.br.ReadAll(ctx, m, keys)
}

// Through a BatchReader (the member's service, the client SDK) Prefetch
// reads every key in one call (one request per member), with the
// versions that Commit validates: unchanged keys commit, a changed one
// conflicts.
func TestPrefetchInOneBatch(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 30*time.Second)
	c, err := client.Dial(ctx, client.Config{Addrs: []string{g.Nodes[1].RPCAddr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	keys := keysInDistinctPartitions(4, g.Nodes[0].Partitions())
	m := g.Nodes[1].Map("acct")
	for _, k := range keys[:3] {
		if err := m.Put(ctx, k, itob(10)); err != nil {
			t.Fatal(err)
		}
	}
	for name, base := range map[string]txn.Grid{"member": g.svcs[0], "client": txn.Client(c)} {
		bg := &batchCounting{Grid: base, br: base.(txn.BatchReader)}
		for _, change := range []bool{false, true} {
			tx, err := txn.Begin(ctx, bg, txn.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := tx.Prefetch(ctx, "acct", keys); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			sum := 0
			for _, k := range keys[:3] {
				v, err := tx.Get(ctx, "acct", k)
				if err != nil {
					t.Fatalf("%s: Get %s after Prefetch: %v", name, k, err)
				}
				sum += btoi(t, v)
				_ = tx.Put("acct", k, itob(btoi(t, v)))
			}
			if _, err := tx.Get(ctx, "acct", keys[3]); !errors.Is(err, txn.ErrNotFound) {
				t.Fatalf("%s: Get of an absent prefetched key: %v", name, err)
			}
			if sum != 30 || bg.batches.Load() != 1 || bg.one.Load() != 0 {
				t.Fatalf("%s: sum %d, %d batches and %d single reads; want 30, 1 and 0", name, sum, bg.batches.Load(), bg.one.Load())
			}
			if change {
				if err := m.Put(ctx, keys[1], itob(10)); err != nil {
					t.Fatal(err)
				}
			}
			err = tx.Commit(ctx)
			if change && !errors.Is(err, txn.ErrConflict) {
				t.Fatalf("%s: commit after a prefetched key changed: %v, want ErrConflict", name, err)
			}
			if !change && err != nil {
				t.Fatalf("%s: commit of unchanged prefetched keys: %v", name, err)
			}
			bg.batches.Store(0)
		}
	}
}
