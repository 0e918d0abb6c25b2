package txnnode_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/collocate/grid/client"
	"github.com/collocate/grid/txn"
)

// The client SDK runs the same transactions: a transfer across
// partitions, a conflict, and Get of an absent key.
func TestTransactionsThroughTheClient(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	c, err := client.Dial(ctx, client.Config{Addrs: []string{g.Nodes[1].RPCAddr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cg := txn.Client(c)
	keys := setup(t, g, ctx)
	if err := transfer(ctx, cg, keys[0], keys[1], 25); err != nil {
		t.Fatal(err)
	}
	a, b := g.balances(t, ctx, keys)
	if a != 75 || b != 125 {
		t.Fatalf("balances %d %d, want 75 125", a, b)
	}
	err = txn.Run(ctx, cg, txn.Options{}, func(ctx context.Context, tx *txn.Tx) error {
		_, err := tx.Get(ctx, "acct", "nobody")
		return err
	})
	if !errors.Is(err, txn.ErrNotFound) {
		t.Fatalf("Get of an absent key: %v, want ErrNotFound", err)
	}
	// A conflict through the client.
	tx, _ := txn.Begin(ctx, cg, txn.Options{})
	if _, err := tx.Get(ctx, "acct", keys[0]); err != nil {
		t.Fatal(err)
	}
	if err := c.Map("acct").Put(ctx, keys[0], itob(1)); err != nil {
		t.Fatal(err)
	}
	_ = tx.Put("acct", keys[1], itob(0))
	_ = tx.Put("acct", keys[0], itob(0))
	if err := tx.Commit(ctx); !errors.Is(err, txn.ErrConflict) {
		t.Fatalf("commit over a changed read: %v", err)
	}
	if err := tx.Commit(ctx); !errors.Is(err, txn.ErrDone) {
		t.Fatalf("a second commit: %v, want ErrDone", err)
	}
	g.noTxnState(t, 5*time.Second, false)
}

// A transaction's caller cannot reach the grid's internal maps.
func TestInternalMapsRefused(t *testing.T) {
	g := newTGrid(t, 1)
	ctx := ctxT(t, 30*time.Second)
	tx, _ := txn.Begin(ctx, g.svcs[0], txn.Options{})
	if err := tx.Put("\x00lock", "k", []byte("x")); err == nil {
		t.Fatal("a transaction wrote an internal map")
	}
	if _, err := tx.Get(ctx, "\x00txn.p", "k"); err == nil {
		t.Fatal("a transaction read an internal map")
	}
	if err := tx.Put("m", "", []byte("x")); err == nil {
		t.Fatal("an empty key was accepted")
	}
}
