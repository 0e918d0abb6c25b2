package txnnode_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/client"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/txn"
	"github.com/collocate/grid/txn/internal/proto"
	"github.com/collocate/grid/txn/txnnode"
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

// newTGridCfg is newTGrid with every node's config adjusted.
func newTGridCfg(t *testing.T, n int, configure func(i int, cfg *grid.Config)) *tgrid {
	g := &tgrid{Cluster: gridtest.New(t, n, configure), cfg: txnnode.DefaultConfig()}
	g.cfg.Interval = 100 * time.Millisecond
	g.cfg.Grace = 200 * time.Millisecond
	g.cfg.Keep = time.Second
	g.cfg.Logger = g.Logger(slog.LevelWarn)
	g.WaitStable(30 * time.Second)
	for i := range n {
		g.svcs = append(g.svcs, g.start(t, i))
	}
	t.Cleanup(func() {
		for _, s := range g.svcs {
			if s != nil {
				s.Close()
			}
		}
	})
	return g
}

// A value too large for the grid is the data's answer wherever it lands:
// at the coordinator as at a participant or in a one-partition
// transaction, Commit fails with ErrValueTooLarge, which Run does not
// retry (as ErrExpired, Run ran the transaction again until its ctx
// ended).
func TestTooLargeValueAtTheCoordinatorIsFinal(t *testing.T) {
	g := newTGridCfg(t, 3, func(_ int, cfg *grid.Config) { cfg.MaxValueSize = 4096 })
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx)
	big := make([]byte, 5000)
	for _, coord := range keys {
		tx := beginWithCoordinator(t, ctx, g.svcs[0], txn.Options{}, coord, keys...)
		for _, k := range keys {
			v := itob(1)
			if k == coord {
				v = big
			}
			_ = tx.Put("acct", k, v)
		}
		err := tx.Commit(ctx)
		if !errors.Is(err, api.ErrValueTooLarge) || txn.Retryable(err) {
			t.Errorf("a value too large at the coordinator: %v, want ErrValueTooLarge, not retryable", err)
		}
	}
	a, b := g.balances(t, ctx, keys)
	if a != 100 || b != 100 {
		t.Fatalf("balances %d %d, want 100 100", a, b)
	}
	g.noTxnState(t, 10*time.Second, false)
}

// commitRecorder keeps the arguments of the last commit (or one-partition)
// step sent.
type commitRecorder struct {
	txn.Grid
	part int
	args []byte
}

func (r *commitRecorder) Step(ctx context.Context, part int, name string, args []byte) ([]byte, error) {
	if name == proto.StepCommit || name == proto.StepOne {
		r.part, r.args = part, args
	}
	return r.Grid.Step(ctx, part, name, args)
}

// A commit step that answered Wait until LockWait ran out leaves no
// decision at the coordinator, and Commit tells the participants to
// abort. A copy of that commit step still on its way (a retransmission
// that arrives after the caller gave up, once the younger holder's lock
// is gone) must then not commit the coordinator's share: the participants
// already dropped theirs, so that would be half a transaction, and one
// whose Commit answered ErrConflict.
func TestLateCommitStepAfterAWaitConflictDoesNotCommit(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	n := g.Nodes[0].Partitions()
	keys := keysInDistinctPartitions(3, n) // a, b, c
	m := g.Nodes[0].Map("acct")
	for _, k := range keys {
		if err := m.Put(ctx, k, itob(100)); err != nil {
			t.Fatal(err)
		}
	}
	a, b, c := keys[0], keys[1], keys[2]
	// T1 (the older) will coordinate at a's partition.
	rec := &commitRecorder{Grid: g.svcs[0]}
	t1 := beginWithCoordinator(t, ctx, rec, txn.Options{Timeout: 30 * time.Second, LockWait: 300 * time.Millisecond}, a, a, b)
	lockedByADeadCaller(t, ctx, g, a, c) // T2, younger
	_ = t1.Put("acct", a, itob(1))
	_ = t1.Put("acct", b, itob(1))
	if err := t1.Commit(ctx); !errors.Is(err, txn.ErrConflict) {
		t.Fatalf("a commit held back by a younger lock for longer than LockWait: %v, want ErrConflict", err)
	}
	if rec.args == nil || rec.part != affinity.Partition(a, n) {
		t.Fatal("no commit step was sent to a's partition")
	}
	g.noTxnState(t, 15*time.Second, false) // T2 resolved: a is free
	raw, err := g.svcs[2].Step(ctx, rec.part, proto.StepCommit, rec.args)
	var res proto.Result
	if err == nil {
		err = proto.Decode(raw, &res)
	}
	t.Logf("the late commit step: %s %v", res.Status, err)
	av, _ := m.Get(ctx, a)
	bv, _ := m.Get(ctx, b)
	if string(av) == "1" || string(bv) == "1" || res.Status == proto.Done {
		t.Fatalf("after Commit answered ErrConflict, a late copy of its commit step answered %s: a=%s b=%s", res.Status, av, bv)
	}
}

// lockedByADeadCaller leaves key a write-locked by a younger transaction
// whose caller died after its prepare (it coordinates at c's partition):
// recovery releases it once its 2 s timeout passed.
func lockedByADeadCaller(t *testing.T, ctx context.Context, g *tgrid, a, c string) {
	t.Helper()
	h := &hook{Grid: g.svcs[1]}
	ctx2, cancel2 := context.WithCancel(ctx)
	defer cancel2()
	h.before = func(_ int, name string) {
		if name == proto.StepCommit {
			h.die()
			cancel2()
		}
	}
	t2 := beginWithCoordinator(t, ctx, h, txn.Options{Timeout: 2 * time.Second}, c, a, c)
	_ = t2.Put("acct", a, itob(2))
	_ = t2.Put("acct", c, itob(2))
	if err := t2.Commit(ctx2); err == nil {
		t.Fatal("the dead caller's transaction committed")
	}
}

// The one-partition step likewise: after Commit answered ErrConflict
// (Wait until LockWait ran out), a late copy of its step must not apply
// (Run would apply the transaction a second time with its retry).
func TestLateOnePartitionStepAfterAWaitConflictDoesNotApply(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	n := g.Nodes[0].Partitions()
	keys := keysInDistinctPartitions(2, n)
	m := g.Nodes[0].Map("acct")
	for _, k := range keys {
		if err := m.Put(ctx, k, itob(100)); err != nil {
			t.Fatal(err)
		}
	}
	a, c := keys[0], keys[1]
	rec := &commitRecorder{Grid: g.svcs[0]}
	t1, err := txn.Begin(ctx, rec, txn.Options{Timeout: 30 * time.Second, LockWait: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	lockedByADeadCaller(t, ctx, g, a, c)
	_ = t1.Add("acct", a, 7)
	if err := t1.Commit(ctx); !errors.Is(err, txn.ErrConflict) {
		t.Fatalf("a commit held back by a younger lock for longer than LockWait: %v, want ErrConflict", err)
	}
	if rec.args == nil {
		t.Fatal("no one-partition step was sent")
	}
	g.noTxnState(t, 15*time.Second, false)
	raw, err := g.svcs[2].Step(ctx, rec.part, proto.StepOne, rec.args)
	var res proto.Result
	if err == nil {
		err = proto.Decode(raw, &res)
	}
	t.Logf("the late step: %s %v", res.Status, err)
	if av, _ := m.Get(ctx, a); string(av) != "100" || res.Status == proto.Done {
		t.Fatalf("after Commit answered ErrConflict, a late copy of its step answered %s: a=%s, want 100", res.Status, av)
	}
}

// lostAnswer runs each step but answers ErrTimeout (outcome unknown) for
// the first one named name, as a router does when a connection drops
// after the step was sent.
type lostAnswer struct {
	txn.Grid
	name string
	lost atomic.Bool
}

func (l *lostAnswer) Step(ctx context.Context, part int, name string, args []byte) ([]byte, error) {
	res, err := l.Grid.Step(ctx, part, name, args)
	if err == nil && name == l.name && l.lost.CompareAndSwap(false, true) {
		return nil, fmt.Errorf("%w: test: the answer was lost", api.ErrTimeout)
	}
	return res, err
}

// A prepare whose answer was lost leaves the outcome known: no commit
// step was sent, so the transaction aborted and nothing applied. Commit
// must say so (retryable), not ErrUnknown, which Run does not retry.
func TestLostPrepareAnswerIsNotAnUnknownOutcome(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx)
	l := &lostAnswer{Grid: g.svcs[0], name: proto.StepPrepare}
	err := transferOnce(ctx, l, keys, 10*time.Second)
	if !l.lost.Load() {
		t.Fatal("no prepare answer was lost")
	}
	if errors.Is(err, txn.ErrUnknown) || !txn.Retryable(err) {
		t.Fatalf("Commit after a lost prepare answer: %v, want a retryable error, not ErrUnknown", err)
	}
	if a, b := g.balances(t, ctx, keys); a != 100 || b != 100 {
		t.Fatalf("balances %d %d, want 100 100", a, b)
	}
	g.noTxnState(t, 5*time.Second, false)
}

// Transfers (read-modify-write and deferred Adds, one partition and
// several) run while a node joins (primaries move: a participant's or a
// coordinator's partition changes hands mid-commit) and then another is
// killed and restarted under its name (filled by snapshot): the total
// never changes, inside transactions or after, and no lock or prepared
// record is left.
func TestTransfersThroughAJoinAndARestart(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	g := newTGrid(t, 3)
	ctx := ctxT(t, 180*time.Second)
	n := g.Nodes[0].Partitions()
	keys := append(keysInDistinctPartitions(6, n), "{same}a", "{same}b")
	m := g.Nodes[0].Map("acct")
	for _, k := range keys {
		if err := m.Put(ctx, k, itob(1000)); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	// Node 1 runs transactions too: its callers die with it, mid-commit.
	grids := []txn.Grid{txnnode.Local(g.Nodes[0]), txnnode.Local(g.Nodes[2]), txnnode.Local(g.Nodes[1])}
	var killed atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var done, unknown atomic.Int64
	var bad atomic.Value
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				mu.Lock()
				gi := (w + i) % len(grids)
				gr := grids[gi]
				mu.Unlock()
				a, b := keys[(w+i)%len(keys)], keys[(w*3+i*5+1)%len(keys)]
				if a == b {
					continue
				}
				cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				var err error
				if i%2 == 0 {
					err = transfer(cctx, gr, a, b, 1+i%5)
				} else {
					err = transferAdd(cctx, gr, a, b, int64(1+i%5))
					if errors.Is(err, txn.ErrCondition) {
						err = nil
					}
				}
				cancel()
				switch {
				case err == nil:
					done.Add(1)
				case errors.Is(err, txn.ErrUnknown):
					unknown.Add(1)
				case gi == 2 && killed.Load():
					// A caller on the killed node.
				default:
					bad.Store(fmt.Sprintf("transfer %s -> %s: %v", a, b, err))
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			sum := 0
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			err := txn.Run(cctx, grids[0], txn.Options{}, func(ctx context.Context, tx *txn.Tx) error {
				sum = 0
				for _, k := range keys {
					v, err := tx.Get(ctx, "acct", k)
					if err != nil {
						return err
					}
					sum += atoi(v)
				}
				return nil
			})
			cancel()
			if err == nil && sum != 8000 {
				bad.Store(fmt.Sprintf("a transaction read a total of %d", sum))
			}
		}
	}()
	waitDone := func(k int64) {
		for start := done.Load(); done.Load() < start+k && ctx.Err() == nil && bad.Load() == nil; {
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitDone(20)
	j := g.Add(nil)
	g.svcs = append(g.svcs, g.start(t, j))
	mu.Lock()
	grids = append(grids, txnnode.Local(g.Nodes[j]))
	mu.Unlock()
	g.WaitStable(60 * time.Second)
	waitDone(20)
	killed.Store(true)
	g.kill(1)
	g.WaitStable(60 * time.Second)
	waitDone(20)
	g.Restart(1)
	g.svcs[1] = g.start(t, 1)
	mu.Lock()
	grids[2] = txnnode.Local(g.Nodes[1])
	mu.Unlock()
	g.WaitStable(60 * time.Second)
	waitDone(20)
	close(stop)
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatal(v)
	}
	g.noTxnState(t, 30*time.Second, false)
	if got := total(t, ctx, g.Nodes[0].Map("acct"), keys); got != 8000 {
		t.Fatalf("total %d after %d transfers (%d unknown), want 8000", got, done.Load(), unknown.Load())
	}
	t.Logf("%d transfers, %d unknown", done.Load(), unknown.Load())
}

// A caller paused (not dead) after its prepares, past its deadline and
// the recovery that aborted its participant, then sends its commit step:
// the coordinator refuses (the abort is decided), Commit answers
// ErrExpired, and nothing applies.
func TestPausedCallerCommitsAfterRecoveryAborted(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx)
	h := &hook{Grid: g.svcs[0]}
	var paused atomic.Bool
	h.before = func(_ int, name string) {
		if name == proto.StepCommit && paused.CompareAndSwap(false, true) {
			if g.txnState(false) == "" {
				t.Error("nothing prepared before the commit step")
			}
			g.noTxnState(t, 20*time.Second, false)
		}
	}
	err := transferOnce(ctx, h, keys, time.Second)
	if !errors.Is(err, txn.ErrExpired) {
		t.Fatalf("a commit sent after recovery aborted the transaction: %v, want ErrExpired", err)
	}
	if a, b := g.balances(t, ctx, keys); a != 100 || b != 100 {
		t.Fatalf("balances %d %d, want 100 100", a, b)
	}
	if resolved(g) == 0 {
		t.Fatal("recovery resolved nothing")
	}
}

// A read-only transaction over two partitions prepares (read locks) at
// both, its coordinator among them; its caller dies before releasing:
// recovery at the coordinator's own partition asks itself, and every
// lock goes; a plain write of a read-locked key then applies.
func TestReadOnlyCallerDiesAfterPrepare(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx)
	h := &hook{Grid: g.svcs[0]}
	h.after = func(_ int, name string, err error) {
		if name == proto.StepPrepare && err == nil {
			h.die()
		}
	}
	tx, _ := txn.Begin(ctx, h, txn.Options{Timeout: time.Second})
	for _, k := range keys {
		if _, err := tx.Get(ctx, "acct", k); err != nil {
			t.Fatal(err)
		}
	}
	err := tx.Commit(ctx)
	t.Logf("commit: %v", err)
	if g.txnState(false) == "" {
		t.Fatal("nothing left prepared: the test did not reach its state")
	}
	if err := g.Nodes[1].Map("acct").Put(ctx, keys[0], itob(5)); err != nil {
		t.Fatal(err)
	}
	g.noTxnState(t, 10*time.Second, false)
}

// A caller whose clock runs a little ahead of the members' (a client
// machine), with the longest Timeout Begin allows (5m): its deadline is
// then a little more than 5 minutes away by the member's clock. The
// caller's clock only shifts when its locks are released; it must not
// make every commit fail with ErrBadArgs (final: Run gives up).
func TestLongestTimeoutFromACallerClockAhead(t *testing.T) {
	g := newTGrid(t, 1)
	ctx := ctxT(t, 30*time.Second)
	part := affinity.Partition("k", g.Nodes[0].Partitions())
	ahead := 2 * time.Second
	w := proto.Work{H: proto.Header{ID: "ahead", Coord: part, Deadline: time.Now().Add(ahead + 5*time.Minute).UnixNano(), Prio: 1},
		Writes: []proto.Write{{Map: "acct", Key: "k", Value: []byte("v")}}}
	args, err := proto.Encode(&w)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := g.svcs[0].Step(ctx, part, proto.StepOne, args)
	if err != nil {
		t.Fatalf("a 5m transaction from a caller whose clock is %v ahead: %v", ahead, err)
	}
	var res proto.Result
	if err := proto.Decode(raw, &res); err != nil || res.Status != proto.Done {
		t.Fatalf("answered %s %v, want done", res.Status, err)
	}
}

// Forged arguments through the client SDK (which lets every "\x00txn."
// step through): each is refused as bad arguments or does no harm, and
// the partition goes on serving transactions. A commit step naming
// participants out of range would leave a decision that collection asks
// about forever (StepHeld of partition -1 fails: kept).
func TestForgedStepsThroughTheClient(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	c, err := client.Dial(ctx, client.Config{Addrs: []string{g.Nodes[1].RPCAddr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	part := affinity.Partition("k", c.Partitions())
	steps := []string{proto.StepOne, proto.StepPrepare, proto.StepCommit, proto.StepFinish, proto.StepResolve, proto.StepHeld, proto.StepForget}
	for _, s := range steps {
		for _, args := range [][]byte{nil, {0xc1}, {0x93, 0x01}, []byte("garbage")} {
			if _, err := c.ExecuteOnPartition(ctx, part, s, args); err == nil || errors.Is(err, api.ErrFunctionPanic) {
				t.Errorf("%q with args %x: %v, want a refusal", s, args, err)
			}
		}
	}
	enc := func(v any) []byte {
		b, err := proto.Encode(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	h := proto.Header{ID: "forged", Coord: part, Deadline: time.Now().Add(time.Minute).UnixNano(), Prio: 1}
	refused := map[string][]byte{
		"resolve of no id":           enc(proto.IDs{}),
		"resolve of two ids":         enc(proto.IDs{IDs: []string{"a", "b"}}),
		"a coordinator out of range": enc(proto.Work{H: proto.Header{ID: "x", Coord: 1 << 20, Deadline: h.Deadline}}),
		"an internal map":            enc(proto.Work{H: h, Writes: []proto.Write{{Map: "\x00lock", Key: "k"}}}),
		"a deadline a year away":     enc(proto.Work{H: proto.Header{ID: "x", Coord: part, Deadline: time.Now().Add(8760 * time.Hour).UnixNano()}}),
		"no id":                      enc(proto.Work{H: proto.Header{Coord: part, Deadline: h.Deadline}}),
		"participants out of range":  enc(proto.Work{H: h, Writes: []proto.Write{{Map: "acct", Key: "k", Value: []byte("1")}}, Parts: []int{-1, 1 << 20}}),
	}
	names := map[string]string{"resolve of no id": proto.StepResolve, "resolve of two ids": proto.StepResolve}
	for what, args := range refused {
		s := names[what]
		if s == "" {
			s = proto.StepCommit
		}
		if _, err := c.ExecuteOnPartition(ctx, part, s, args); !errors.Is(err, api.ErrBadArgs) {
			t.Errorf("%s (%q): %v, want ErrBadArgs", what, s, err)
		}
	}
	// Harmless: a finish or a resolve of an unknown transaction.
	for _, f := range []proto.Finish{{ID: "nobody"}, {ID: "nobody2", Commit: true}} {
		if _, err := c.ExecuteOnPartition(ctx, part, proto.StepFinish, enc(f)); err != nil {
			t.Errorf("finish of an unknown transaction: %v", err)
		}
	}
	if err := transferAdd(ctx, txn.Client(c), "k", "k2", 0); err != nil {
		t.Fatalf("a transaction after the forged steps: %v", err)
	}
	g.noTxnState(t, 5*time.Second, false)
}
