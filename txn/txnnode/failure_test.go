package txnnode_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/txn"
	"github.com/collocate/grid/txn/internal/proto"
)

// hook wraps a Grid to act around each step a transaction sends: kill a
// node, or play a caller that dies (every later step fails).
type hook struct {
	txn.Grid
	mu     sync.Mutex
	dead   bool
	before func(part int, name string)
	after  func(part int, name string, err error)
}

var errCallerDied = errors.New("test: the caller died")

func (h *hook) Step(ctx context.Context, part int, name string, args []byte) ([]byte, error) {
	h.mu.Lock()
	dead := h.dead
	h.mu.Unlock()
	if dead {
		return nil, errCallerDied
	}
	if h.before != nil {
		h.before(part, name)
		h.mu.Lock()
		dead = h.dead
		h.mu.Unlock()
		if dead {
			return nil, errCallerDied
		}
	}
	res, err := h.Grid.Step(ctx, part, name, args)
	if h.after != nil {
		h.after(part, name, err)
	}
	return res, err
}

func (h *hook) die() {
	h.mu.Lock()
	h.dead = true
	h.mu.Unlock()
}

// setup opens two accounts in distinct partitions with 100 each.
func setup(t *testing.T, g *tgrid, ctx context.Context) []string {
	keys := keysInDistinctPartitions(2, g.Nodes[0].Partitions())
	for _, k := range keys {
		if err := g.Live()[0].Map("acct").Put(ctx, k, itob(100)); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

// transferOnce is one attempt of a transfer of 10 from keys[0] to keys[1].
func transferOnce(ctx context.Context, g txn.Grid, keys []string, timeout time.Duration) error {
	tx, err := txn.Begin(ctx, g, txn.Options{Timeout: timeout})
	if err != nil {
		return err
	}
	a, err := tx.Get(ctx, "acct", keys[0])
	if err != nil {
		return err
	}
	b, err := tx.Get(ctx, "acct", keys[1])
	if err != nil {
		return err
	}
	_ = tx.Put("acct", keys[0], itob(atoi(a)-10))
	_ = tx.Put("acct", keys[1], itob(atoi(b)+10))
	return tx.Commit(ctx)
}

func atoi(b []byte) int {
	v := 0
	for _, c := range b {
		v = v*10 + int(c-'0')
	}
	return v
}

func (g *tgrid) balances(t *testing.T, ctx context.Context, keys []string) (int, int) {
	m := g.Live()[0].Map("acct")
	a, err := m.Get(ctx, keys[0])
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Get(ctx, keys[1])
	if err != nil {
		t.Fatal(err)
	}
	return btoi(t, a), btoi(t, b)
}

// A caller that dies after its participants prepared, before the
// decision: recovery aborts after the deadline, releases the locks, and
// a plain write that waited for a lock then applies.
func TestCallerDiesBeforeTheDecision(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx)
	h := &hook{Grid: g.svcs[0]}
	h.before = func(_ int, name string) {
		if name == proto.StepCommit {
			h.die()
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	h.after = func(int, string, error) {}
	go func() { <-time.After(300 * time.Millisecond); cancel() }()
	err := transferOnce(cctx, h, keys, time.Second)
	if err == nil {
		t.Fatal("a transaction whose caller died committed")
	}
	if g.txnState(false) == "" {
		t.Fatal("the dead caller's participant holds nothing prepared: the test did not reach its state")
	}
	// A plain write of the prepared (locked) key waits for the outcome.
	locked := -1
	for i, k := range keys {
		part := affinity.Partition(k, g.Nodes[0].Partitions())
		n := g.Nodes[g.leader(t, part)]
		if l, _ := n.LocalEntries(part, "\x00lock", "", 0); len(l) > 0 {
			locked = i
		}
	}
	if locked < 0 {
		t.Fatal("no key is locked")
	}
	start := time.Now()
	if err := g.Nodes[1].Map("acct").Put(ctx, keys[locked], itob(500)); err != nil {
		t.Fatalf("a plain write after the recovery: %v", err)
	}
	waited := time.Since(start)
	t.Logf("the plain write waited %v", waited)
	if waited < 200*time.Millisecond {
		t.Fatalf("a plain write of a locked key applied after %v, before the transaction was resolved", waited)
	}
	a, b := g.balances(t, ctx, keys)
	if a+b != 500+100 {
		t.Fatalf("balances %d %d: the aborted transfer applied in part", a, b)
	}
	g.noTxnState(t, 10*time.Second, true)
	if r := resolved(g); r == 0 {
		t.Fatal("no member's recovery resolved a prepared participant")
	}
}

func resolved(g *tgrid) uint64 {
	var n uint64
	for _, s := range g.svcs {
		if s != nil {
			n += s.Stats().Resolved
		}
	}
	return n
}

// A caller that dies right after the decision: recovery commits the
// participants; a plain read meanwhile waits and sees the committed
// value, never the half before it.
func TestCallerDiesAfterTheDecision(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx)
	h := &hook{Grid: g.svcs[0]}
	h.after = func(_ int, name string, err error) {
		if name == proto.StepCommit && err == nil {
			h.die()
		}
	}
	err := transferOnce(ctx, h, keys, time.Second)
	if err != nil {
		// The decision is commit; the caller just could not finish.
		t.Logf("commit answered %v", err)
	}
	if g.txnState(false) == "" {
		t.Fatal("nothing left prepared: the test did not reach its state")
	}
	a, b := g.balances(t, ctx, keys)
	if a != 90 || b != 110 {
		t.Fatalf("balances %d %d after a committed transfer, want 90 110 (a read saw half of it)", a, b)
	}
	g.noTxnState(t, 10*time.Second, true)
}

// The coordinator partition's primary is killed as the commit step is
// sent; the router runs it at the promoted backup.
func TestCoordinatorKilledMidCommit(t *testing.T) {
	for _, when := range []string{"before", "after"} {
		t.Run(when, func(t *testing.T) {
			g := newTGrid(t, 3)
			ctx := ctxT(t, 90*time.Second)
			keys := setup(t, g, ctx)
			var killed atomic.Bool
			var client int
			h := &hook{}
			kill := func(part int, name string) {
				if name != proto.StepCommit || killed.Load() {
					return
				}
				i := g.leader(t, part)
				if i == client {
					return
				}
				killed.Store(true)
				g.kill(i)
			}
			// The caller runs on a node that does not lead either partition.
			client = -1
			for i := range g.Nodes {
				if !g.Nodes[i].Leads(affinity.Partition(keys[0], g.Nodes[i].Partitions())) && !g.Nodes[i].Leads(affinity.Partition(keys[1], g.Nodes[i].Partitions())) {
					client = i
				}
			}
			if client < 0 {
				t.Skip("no node leads neither partition")
			}
			h.Grid = g.svcs[client]
			if when == "before" {
				h.before = kill
			} else {
				h.after = func(part int, name string, _ error) { kill(part, name) }
			}
			if err := transferOnce(ctx, h, keys, 20*time.Second); err != nil {
				t.Fatalf("commit through a kill of the coordinator: %v", err)
			}
			if !killed.Load() {
				t.Fatal("nothing was killed")
			}
			a, b := g.balances(t, ctx, keys)
			if a != 90 || b != 110 {
				t.Fatalf("balances %d %d, want 90 110", a, b)
			}
			g.noTxnState(t, 30*time.Second, false)
		})
	}
}

// A participant's primary is killed right after it prepared: its
// promoted backup holds the prepared record and the locks, and finishes.
func TestParticipantKilledAfterPrepare(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 90*time.Second)
	keys := setup(t, g, ctx)
	var killed atomic.Bool
	client := -1
	for i := range g.Nodes {
		if !g.Nodes[i].Leads(affinity.Partition(keys[0], g.Nodes[i].Partitions())) && !g.Nodes[i].Leads(affinity.Partition(keys[1], g.Nodes[i].Partitions())) {
			client = i
		}
	}
	if client < 0 {
		t.Skip("no node leads neither partition")
	}
	h := &hook{Grid: g.svcs[client]}
	h.after = func(part int, name string, err error) {
		if name == proto.StepPrepare && err == nil && !killed.Load() {
			killed.Store(true)
			g.kill(g.leader(t, part))
		}
	}
	if err := transferOnce(ctx, h, keys, 20*time.Second); err != nil {
		t.Fatalf("commit through a kill of a prepared participant: %v", err)
	}
	if !killed.Load() {
		t.Fatal("nothing was killed")
	}
	a, b := g.balances(t, ctx, keys)
	if a != 90 || b != 110 {
		t.Fatalf("balances %d %d, want 90 110", a, b)
	}
	g.noTxnState(t, 30*time.Second, false)
}

// A prepare arriving after its transaction finished (a delayed retry)
// is refused by the tombstone and locks nothing.
func TestLatePrepareIsRefused(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx)
	var prepArgs []byte
	var prepPart int
	h := &hook{Grid: g.svcs[0]}
	rec := &recorder{Grid: g.svcs[0], onPrepare: func(part int, args []byte) { prepPart, prepArgs = part, args }}
	h.Grid = rec
	if err := transferOnce(ctx, h, keys, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if prepArgs == nil {
		t.Fatal("no prepare was sent")
	}
	raw, err := g.svcs[1].Step(ctx, prepPart, proto.StepPrepare, prepArgs)
	if err != nil {
		t.Fatal(err)
	}
	var res proto.Result
	if err := proto.Decode(raw, &res); err != nil {
		t.Fatal(err)
	}
	if res.Status != proto.Finished {
		t.Fatalf("a late prepare answered %s, want finished", res.Status)
	}
	g.noTxnState(t, 5*time.Second, false)
}

type recorder struct {
	txn.Grid
	onPrepare func(part int, args []byte)
}

func (r *recorder) Step(ctx context.Context, part int, name string, args []byte) ([]byte, error) {
	if name == proto.StepPrepare {
		r.onPrepare(part, args)
	}
	return r.Grid.Step(ctx, part, name, args)
}

// Transfers in both directions between the same two accounts, many at
// once: wait-die never deadlocks and every transfer commits.
func TestOpposedTransfersDoNotDeadlock(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 120*time.Second)
	keys := setup(t, g, ctx)
	var wg sync.WaitGroup
	var errs atomic.Int64
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, b := keys[0], keys[1]
			if w%2 == 1 {
				a, b = b, a
			}
			for range 25 {
				if err := transfer(ctx, g.svcs[w%3], a, b, 1); err != nil {
					errs.Add(1)
					t.Errorf("transfer: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if errs.Load() > 0 {
		return
	}
	a, b := g.balances(t, ctx, keys)
	if a+b != 200 || a != 100 {
		t.Fatalf("balances %d %d after as many transfers each way, want 100 100", a, b)
	}
	g.noTxnState(t, 10*time.Second, false)
}

// A participant that did not prepare (it answered Wait until LockWait ran
// out: a younger transaction holds its key) is told to abort too, so it
// keeps a tombstone: a copy of the prepare still on its way is refused
// instead of locking the key until recovery.
func TestUnpreparedParticipantGetsATombstone(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := keysInDistinctPartitions(3, g.Nodes[0].Partitions())
	parts := g.Nodes[0].Partitions()
	locked := affinity.Partition(keys[1], parts)
	// x, the older transaction, must have keys[1]'s partition as a
	// participant, not as its coordinator (writers[id[0] % 2], sorted).
	var x *txn.Tx
	for x == nil || coordOf(x.ID(), keys[0], keys[1], parts) == locked {
		var err error
		if x, err = txn.Begin(ctx, g.svcs[0], txn.Options{LockWait: 100 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
	}
	// y, younger, prepares keys[1] (and keys[2]) and is abandoned.
	yctx, cancel := context.WithCancel(ctx)
	y, err := txn.Begin(yctx, abandoning{g.svcs[0], cancel}, txn.Options{Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_ = y.Put("acct", keys[1], itob(1))
	_ = y.Put("acct", keys[2], itob(1))
	_ = y.Put("acct", keys[0]+"-y", itob(1))
	if err := y.Commit(yctx); !errors.Is(err, txn.ErrUnknown) {
		t.Fatalf("abandoned commit: %v", err)
	}
	_ = x.Put("acct", keys[0], itob(2))
	_ = x.Put("acct", keys[1], itob(2))
	if err := x.Commit(ctx); !errors.Is(err, txn.ErrConflict) {
		t.Fatalf("older transaction against a younger one's lock past LockWait: %v, want ErrConflict", err)
	}
	leader := g.Nodes[g.leader(t, locked)]
	tombs, err := leader.LocalEntries(locked, proto.MapTomb, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range tombs {
		if strings.HasSuffix(e.Key, x.ID()) {
			return
		}
	}
	t.Fatalf("no tombstone of %s at partition %d, which did not prepare it (%d tombstones there)", x.ID(), locked, len(tombs))
}

// coordOf is the coordinator partition Commit picks for a transaction id
// writing keys a and b (in different partitions).
func coordOf(id, a, b string, parts int) int {
	pa, pb := affinity.Partition(a, parts), affinity.Partition(b, parts)
	writers := []int{min(pa, pb), max(pa, pb)}
	return writers[int(id[0])%len(writers)]
}
