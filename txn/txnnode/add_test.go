package txnnode_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/collocate/grid/txn"
)

// transferAdd moves amount from a to b with deferred Adds: no read round
// trip; the debit refuses to overdraw.
func transferAdd(ctx context.Context, g txn.Grid, a, b string, amount int64) error {
	return txn.Run(ctx, g, txn.Options{}, func(ctx context.Context, tx *txn.Tx) error {
		if err := tx.AddAtLeast("acct", a, -amount, 0); err != nil {
			return err
		}
		return tx.Add("acct", b, amount)
	})
}

func TestAddTransfers(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx) // two partitions, 100 each
	one := []string{"{same}a", "{same}b"}
	for _, k := range one {
		if err := g.Nodes[0].Map("acct").Put(ctx, k, itob(100)); err != nil {
			t.Fatal(err)
		}
	}
	for _, ks := range [][]string{keys, one} {
		if err := transferAdd(ctx, g.svcs[1], ks[0], ks[1], 60); err != nil {
			t.Fatal(err)
		}
		// A second debit of 60 would overdraw: refused, nothing applied.
		if err := transferAdd(ctx, g.svcs[2], ks[0], ks[1], 60); !errors.Is(err, txn.ErrCondition) {
			t.Fatalf("an overdraw: %v, want ErrCondition", err)
		}
		a, b := g.balances(t, ctx, ks)
		if a != 40 || b != 160 {
			t.Fatalf("balances %d %d, want 40 160", a, b)
		}
	}
	// Adds on a missing key start at 0; on a non-integer fail.
	if err := transferAdd(ctx, g.svcs[0], keys[0], "fresh", 10); err != nil {
		t.Fatal(err)
	}
	if v, _ := g.Nodes[0].Map("acct").Get(ctx, "fresh"); string(v) != "10" {
		t.Fatalf("fresh = %q", v)
	}
	if err := g.Nodes[0].Map("acct").Put(ctx, "text", []byte("abc")); err != nil {
		t.Fatal(err)
	}
	if err := transferAdd(ctx, g.svcs[0], keys[0], "text", 1); !errors.Is(err, txn.ErrCondition) {
		t.Fatalf("Add to a non-integer: %v, want ErrCondition", err)
	}
	g.noTxnState(t, 5*time.Second, false)
}

// Adds mixed with Get and Put in one transaction see and keep one value.
func TestAddWithReadsAndWrites(t *testing.T) {
	g := newTGrid(t, 1)
	ctx := ctxT(t, 30*time.Second)
	m := g.Nodes[0].Map("acct")
	_ = m.Put(ctx, "x", itob(5))
	tx, _ := txn.Begin(ctx, g.svcs[0], txn.Options{})
	_ = tx.Add("acct", "x", 3)
	_ = tx.AddAtLeast("acct", "x", -2, 0)
	v, err := tx.Get(ctx, "acct", "x")
	if err != nil || string(v) != "6" {
		t.Fatalf("Get after two Adds: %q %v, want 6", v, err)
	}
	if err := tx.AddAtLeast("acct", "x", -7, 0); !errors.Is(err, txn.ErrCondition) {
		t.Fatalf("an Add below its floor on a known value: %v", err)
	}
	_ = tx.Put("acct", "y", itob(1))
	_ = tx.Add("acct", "y", 1)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	x, _ := m.Get(ctx, "x")
	y, _ := m.Get(ctx, "y")
	if string(x) != "6" || string(y) != "2" {
		t.Fatalf("x %q y %q, want 6 2", x, y)
	}
	// Deferred Adds whose combined floor fails at the partition.
	tx, _ = txn.Begin(ctx, g.svcs[0], txn.Options{})
	_ = tx.AddAtLeast("acct", "x", -4, 0) // 6-4 = 2 >= 0
	_ = tx.AddAtLeast("acct", "x", -3, 0) // 2-3 < 0
	if err := tx.Commit(ctx); !errors.Is(err, txn.ErrCondition) {
		t.Fatalf("two debits overdrawing together: %v, want ErrCondition", err)
	}
}

// PutTTL's expiry applies at every participant.
func TestPutTTL(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 30*time.Second)
	keys := keysInDistinctPartitions(2, g.Nodes[0].Partitions())
	err := txn.Run(ctx, g.svcs[0], txn.Options{}, func(ctx context.Context, tx *txn.Tx) error {
		for _, k := range keys {
			if err := tx.PutTTL("acct", k, []byte("v"), 300*time.Millisecond); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	m := g.Nodes[1].Map("acct")
	for _, k := range keys {
		if _, err := m.Get(ctx, k); err != nil {
			t.Fatalf("%s right after the commit: %v", k, err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	for _, k := range keys {
		if _, err := m.Get(ctx, k); !errors.Is(err, txn.ErrNotFound) {
			t.Fatalf("%s after its TTL: %v, want ErrNotFound", k, err)
		}
	}
}
