package txnnode_test

import (
	"context"
	"errors"
	"math"
	"sort"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/txn"
	"github.com/collocate/grid/txn/internal/proto"
)

// coordinatorOf is the partition txn picks as tx's coordinator when it
// writes keys (one partition each): a writer chosen by the id.
func coordinatorOf(tx *txn.Tx, parts int, keys ...string) int {
	var ps []int
	for _, k := range keys {
		ps = append(ps, affinity.Partition(k, parts))
	}
	sort.Ints(ps)
	return ps[int(tx.ID()[0])%len(ps)]
}

// beginWithCoordinator begins transactions until one would coordinate at
// coord's partition when it writes keys.
func beginWithCoordinator(t *testing.T, ctx context.Context, g txn.Grid, opts txn.Options, coord string, keys ...string) *txn.Tx {
	t.Helper()
	for {
		tx, err := txn.Begin(ctx, g, opts)
		if err != nil {
			t.Fatal(err)
		}
		if coordinatorOf(tx, g.Partitions(), keys...) == affinity.Partition(coord, g.Partitions()) {
			return tx
		}
	}
}

// A TTL whose expiry overflows at the participant that must apply it:
// the coordinator commits its share, the participant's finish can never
// apply (the step fails every time), so the transaction stays half
// applied and its locks are held forever. It must be refused before
// anything is prepared.
func TestOverflowingTTLNeverHalfApplies(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx)
	tx := beginWithCoordinator(t, ctx, g.svcs[0], txn.Options{Timeout: 2 * time.Second}, keys[0], keys...)
	_ = tx.Put("acct", keys[0], itob(90))
	err := tx.PutTTL("acct", keys[1], itob(110), time.Duration(math.MaxInt64))
	if err == nil {
		err = tx.Commit(ctx)
	}
	t.Logf("PutTTL/Commit: %v", err)
	g.noTxnState(t, 10*time.Second, false)
	a, b := g.balances(t, ctx, keys)
	if (a == 90) != (b == 110) {
		t.Fatalf("balances %d %d: half of the transaction applied", a, b)
	}
	if err == nil && a != 90 {
		t.Fatalf("Commit returned nil, balances %d %d", a, b)
	}
}

// The steps refuse the same TTL from a caller that skipped PutTTL's check
// (another build, or forged arguments): a prepare must not accept a write
// its finish cannot apply.
func TestStepsRefuseAnOverflowingTTL(t *testing.T) {
	g := newTGrid(t, 1)
	ctx := ctxT(t, 30*time.Second)
	part := affinity.Partition("k", g.Nodes[0].Partitions())
	w := proto.Work{H: proto.Header{ID: "forged", Coord: part, Deadline: time.Now().Add(time.Minute).UnixNano(), Prio: 1},
		Writes: []proto.Write{{Map: "acct", Key: "k", Value: []byte("v"), TTL: math.MaxInt64}}}
	args, err := proto.Encode(&w)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []string{proto.StepPrepare, proto.StepOne, proto.StepCommit} {
		_, err := g.svcs[0].Step(ctx, part, step, args)
		if !errors.Is(err, api.ErrBadArgs) {
			t.Errorf("%q with a TTL of MaxInt64: %v, want ErrBadArgs", step, err)
		}
	}
}

// Two deferred Adds merge into one with the floor both imply; a floor
// near the top must not wrap around and vanish: AddAtLeast(-1, MaxInt64-1)
// on 100 fails, whatever Add follows; a floor shifted below MinInt64 is none.
func TestMergedAddKeepsAFloorNearTheTop(t *testing.T) {
	g := newTGrid(t, 1)
	ctx := ctxT(t, 30*time.Second)
	m := g.Nodes[0].Map("acct")
	if err := m.Put(ctx, "k", itob(100)); err != nil {
		t.Fatal(err)
	}
	tx, _ := txn.Begin(ctx, g.svcs[0], txn.Options{})
	err := tx.AddAtLeast("acct", "k", -1, math.MaxInt64-1)
	if err == nil {
		err = tx.Add("acct", "k", 5)
	}
	if err == nil {
		err = tx.Commit(ctx)
	}
	if !errors.Is(err, txn.ErrCondition) {
		v, _ := m.Get(ctx, "k")
		t.Errorf("AddAtLeast(-1, MaxInt64-1) then Add(5) on 100: %v (k = %s), want ErrCondition", err, v)
	}
	// A floor shifted below MinInt64 is no floor, not one near the top.
	tx, _ = txn.Begin(ctx, g.svcs[0], txn.Options{})
	if err := tx.AddAtLeast("acct", "k", 10, math.MinInt64); err != nil {
		t.Fatal(err)
	}
	if err := tx.Add("acct", "k", -20); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("AddAtLeast(10, MinInt64) then Add(-20) on 100: %v, want 90", err)
	}
	if v, _ := m.Get(ctx, "k"); string(v) != "90" {
		t.Fatalf("k = %s, want 90", v)
	}
}
