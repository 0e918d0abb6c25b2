package txnnode_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/client"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/txn"
	"github.com/collocate/grid/txn/internal/proto"
)

var locking = txn.Options{Locking: true}

// lockedTransfer moves amount from a to b with Locking: both Gets lock.
// Between the Gets and the commit, during(tx) runs (nil: nothing).
func lockedTransfer(ctx context.Context, g txn.Grid, a, b string, amount int, during func(tx *txn.Tx)) error {
	return txn.Run(ctx, g, locking, func(ctx context.Context, tx *txn.Tx) error {
		av, err := tx.Get(ctx, "acct", a)
		if err != nil {
			return err
		}
		bv, err := tx.Get(ctx, "acct", b)
		if err != nil {
			return err
		}
		if during != nil {
			during(tx)
		}
		if err := tx.Put("acct", a, itob(atoi(av)-amount)); err != nil {
			return err
		}
		return tx.Put("acct", b, itob(atoi(bv)+amount))
	})
}

// locksOn returns the owners of the locks held on keys of map acct, read
// at their partitions' primaries.
func (g *tgrid) locksOn(t *testing.T, keys ...string) []string {
	t.Helper()
	parts := g.Nodes[0].Partitions()
	var owners []string
	for _, k := range keys {
		part := affinity.Partition(k, parts)
		n := g.Nodes[g.leader(t, part)]
		ents, err := n.LocalEntries(part, "\x00lock", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if e.Key == "acct\x00"+k {
				owners = append(owners, string(e.Value[9:]))
			}
		}
	}
	return owners
}

// A Locking transfer across partitions: the Gets lock both keys at once
// (the lock is there before Commit), the commit applies both writes and
// leaves no lock and no prepared record.
func TestLockingTransferAcrossPartitions(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx)
	var during []string
	err := lockedTransfer(ctx, g.svcs[0], keys[0], keys[1], 30, func(tx *txn.Tx) {
		during = g.locksOn(t, keys...)
		if len(during) == 2 && (during[0] != tx.ID() || during[1] != tx.ID()) {
			t.Errorf("locks held by %v, want %s", during, tx.ID())
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(during) != 2 {
		t.Fatalf("after both Gets, %d of the 2 keys locked", len(during))
	}
	if a, b := g.balances(t, ctx, keys); a != 70 || b != 130 {
		t.Fatalf("after the transfer: %d %d, want 70 130", a, b)
	}
	if s := g.txnState(false); s != "" {
		t.Fatalf("right after the commit: %s", s)
	}
}

// A Locking transfer within one partition: one commit step, which
// releases the Gets' locks and drops their record itself, and leaves no
// decision.
func TestLockingTransferWithinOnePartition(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	a, b := "{u7}a", "{u7}b"
	m := g.Nodes[0].Map("acct")
	for _, k := range []string{a, b} {
		if err := m.Put(ctx, k, itob(10)); err != nil {
			t.Fatal(err)
		}
	}
	rec := &stepLog{Grid: g.svcs[1]}
	var during []string
	if err := lockedTransfer(ctx, rec, a, b, 4, func(*txn.Tx) { during = g.locksOn(t, a, b) }); err != nil {
		t.Fatal(err)
	}
	if len(during) != 2 {
		t.Fatalf("after both Gets, %d of the 2 keys locked", len(during))
	}
	if got := strings.Join(rec.names(), " "); got != "lock lock one" {
		t.Fatalf("steps %q, want lock lock one", got)
	}
	if s := g.txnState(true); s != "" {
		t.Fatalf("right after the commit: %s", s)
	}
	if got := total(t, ctx, m, []string{a, b}); got != 20 {
		t.Fatalf("total %d", got)
	}
	if av, _ := m.Get(ctx, a); btoi(t, av) != 6 {
		t.Fatalf("a = %s", av)
	}
}

// stepLog is a Grid that records the names of the steps sent through it.
type stepLog struct {
	txn.Grid
	mu    sync.Mutex
	steps []string
}

func (l *stepLog) Step(ctx context.Context, part int, name string, args []byte) ([]byte, error) {
	l.mu.Lock()
	l.steps = append(l.steps, strings.TrimPrefix(name, "\x00txn."))
	l.mu.Unlock()
	return l.Grid.Step(ctx, part, name, args)
}

// names lists the steps recorded, without their "\x00txn." prefix.
func (l *stepLog) names() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.steps...)
}

// A key a Locking Get locked: plain reads go on; a plain write waits (and
// gives up with ErrBusy when its ctx ends); a younger transaction dies at
// once, whether it locks (Get) or commits optimistically; an older one
// waits and reads the holder's committed value.
func TestLockingGetBlocksConflictingWriters(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx)
	k := keys[0]
	m := g.Nodes[1].Map("acct")
	older, _ := txn.Begin(ctx, g.svcs[1], txn.Options{Locking: true, LockWait: 20 * time.Second})
	time.Sleep(time.Millisecond) // distinct ages
	holder, _ := txn.Begin(ctx, g.svcs[0], locking)
	time.Sleep(time.Millisecond)
	if _, err := holder.Get(ctx, "acct", k); err != nil {
		t.Fatal(err)
	}
	if v, err := m.Get(ctx, k); err != nil || btoi(t, v) != 100 {
		t.Fatalf("a plain read of a key a transaction read-locked: %q, %v; want 100", v, err)
	}
	pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err := m.Put(pctx, k, itob(7))
	cancel()
	if !errors.Is(err, api.ErrBusy) {
		t.Fatalf("a plain write of a locked key: %v, want ErrBusy after waiting", err)
	}
	younger, _ := txn.Begin(ctx, g.svcs[2], locking)
	if _, err := younger.Get(ctx, "acct", k); !errors.Is(err, txn.ErrConflict) {
		t.Fatalf("a younger transaction's Get of the key: %v, want ErrConflict (die)", err)
	}
	_ = younger.Rollback(ctx)
	opt, _ := txn.Begin(ctx, g.svcs[2], txn.Options{})
	_ = opt.Put("acct", k, itob(8))
	_ = opt.Put("acct", keys[1], itob(8))
	if err := opt.Commit(ctx); !errors.Is(err, txn.ErrConflict) {
		t.Fatalf("a younger optimistic transaction writing the key: %v, want ErrConflict (die)", err)
	}
	got := make(chan []byte, 1)
	go func() {
		v, err := older.Get(ctx, "acct", k)
		if err != nil {
			t.Errorf("the older transaction's Get: %v", err)
		}
		got <- v
	}()
	select {
	case v := <-got:
		t.Fatalf("the older transaction's Get answered %q while the younger one held the key", v)
	case <-time.After(300 * time.Millisecond):
	}
	_ = holder.Put("acct", k, itob(55))
	if err := holder.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if v := <-got; btoi(t, v) != 55 {
		t.Fatalf("the older transaction waited and read %q, want the holder's 55", v)
	}
	if err := older.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	g.noTxnState(t, 5*time.Second, false)
}

// audits reads every key of keys in one transaction (Prefetch, then Get),
// n times, and reports how many attempts read them all (and so reached
// Commit) and how many committed; a committed audit must see want.
func audits(ctx context.Context, t *testing.T, g txn.Grid, opts txn.Options, keys []string, n, want int) (reached, committed int) {
	for range n {
		actx, cancel := context.WithTimeout(ctx, 15*time.Second)
		sum := 0
		err := txn.Run(actx, g, opts, func(ctx context.Context, tx *txn.Tx) error {
			if err := tx.Prefetch(ctx, "acct", keys); err != nil {
				return err
			}
			sum = 0
			for _, k := range keys {
				v, err := tx.Get(ctx, "acct", k)
				if err != nil {
					return err
				}
				sum += atoi(v)
			}
			reached++
			return nil
		})
		cancel()
		if err != nil {
			if opts.Locking {
				t.Errorf("a Locking audit: %v", err)
			}
			continue
		}
		committed++
		if sum != want {
			t.Errorf("an audit (Locking %v) read a total of %d, want %d", opts.Locking, sum, want)
		}
	}
	return reached, committed
}

// An audit reading many keys under concurrent transfers: optimistic, its
// validation fails again and again; with Locking every attempt that read
// every key commits (an attempt fails only at a Get, by wait-die), every
// audit commits within Run, and all of them see the same total.
func TestLockingAuditUnderConcurrentTransfers(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 180*time.Second)
	keys := keysInDistinctPartitions(32, g.Nodes[0].Partitions())
	m := g.Nodes[0].Map("acct")
	for _, k := range keys {
		if err := m.Put(ctx, k, itob(1000)); err != nil {
			t.Fatal(err)
		}
	}
	want := 1000 * len(keys)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var transfers atomic.Int64
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for {
				select {
				case <-stop:
					return
				default:
				}
				a, b := keys[r.IntN(len(keys))], keys[r.IntN(len(keys))]
				if a == b {
					continue
				}
				if err := transfer(ctx, g.svcs[w%3], a, b, 1); err == nil {
					transfers.Add(1)
				} else if ctx.Err() == nil {
					t.Errorf("transfer: %v", err)
					return
				}
			}
		}()
	}
	for transfers.Load() < 20 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	const n = 4
	optReached, optCommitted := audits(ctx, t, g.svcs[0], txn.Options{}, keys, n, want)
	lockReached, lockCommitted := audits(ctx, t, g.svcs[0], locking, keys, n, want)
	close(stop)
	wg.Wait()
	t.Logf("%d transfers meanwhile; audits of %d keys: optimistic %d of %d committed, %d commits of %d attempts that read every key; Locking %d of %d committed, %d commits of %d attempts that read every key",
		transfers.Load(), len(keys), optCommitted, n, optCommitted, optReached, lockCommitted, n, lockCommitted, lockReached)
	if lockCommitted != n {
		t.Fatalf("%d of %d Locking audits committed", lockCommitted, n)
	}
	if lockReached != lockCommitted {
		t.Fatalf("Locking: %d attempts read every key, %d committed: a Locking commit failed", lockReached, lockCommitted)
	}
	if got := total(t, ctx, m, keys); got != want {
		t.Fatalf("total %d, want %d", got, want)
	}
	g.noTxnState(t, 10*time.Second, false)
}

// A caller that dies after its Gets locked keys in two partitions (the
// coordinator's and a participant's): recovery releases both about the
// deadline plus the grace, and the plain write that waited applies.
func TestLockingCallerDiesAfterLocking(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx)
	h := &hook{Grid: g.svcs[0]}
	const timeout = time.Second
	begun := time.Now()
	tx, err := txn.Begin(ctx, h, txn.Options{Locking: true, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if _, err := tx.Get(ctx, "acct", k); err != nil {
			t.Fatal(err)
		}
	}
	h.die() // and never commits nor rolls back
	if owners := g.locksOn(t, keys...); len(owners) != 2 {
		t.Fatalf("after the caller died, %d of 2 keys locked", len(owners))
	}
	if err := g.Nodes[1].Map("acct").Put(ctx, keys[0], itob(500)); err != nil {
		t.Fatalf("a plain write of a locked key: %v", err)
	}
	waited := time.Since(begun)
	t.Logf("the plain write applied %v after Begin (Timeout %v, grace %v, interval %v)", waited, timeout, g.cfg.Grace, g.cfg.Interval)
	if waited < timeout {
		t.Fatalf("the locks were released %v after Begin, before the deadline", waited)
	}
	g.noTxnState(t, 5*time.Second, false)
	if since := time.Since(begun); since > timeout+g.cfg.Grace+5*time.Second {
		t.Fatalf("the locks were released %v after Begin", since)
	}
	if r := resolved(g); r < 2 {
		t.Fatalf("recovery resolved %d records, want 2 (the coordinator's own and the participant's)", r)
	}
	if a, b := g.balances(t, ctx, keys); a != 500 || b != 100 {
		t.Fatalf("balances %d %d, want 500 100", a, b)
	}
}

// The coordinator (the first key's partition) only reads: its commit step
// records the decision and releases its lock, the participant applies its
// write.
func TestLockingCoordinatorOnlyReads(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx)
	rec := &stepLog{Grid: g.svcs[2]}
	var id string
	err := txn.Run(ctx, rec, locking, func(ctx context.Context, tx *txn.Tx) error {
		id = tx.ID()
		a, err := tx.Get(ctx, "acct", keys[0])
		if err != nil {
			return err
		}
		if _, err := tx.Get(ctx, "acct", keys[1]); err != nil {
			return err
		}
		return tx.Put("acct", keys[1], itob(atoi(a)+1))
	})
	if err != nil {
		t.Fatal(err)
	}
	if a, b := g.balances(t, ctx, keys); a != 100 || b != 101 {
		t.Fatalf("balances %d %d, want 100 101", a, b)
	}
	coord := affinity.Partition(keys[0], g.Nodes[0].Partitions())
	ds, _ := g.Nodes[g.leader(t, coord)].LocalEntries(coord, "\x00txn.d", "", 0)
	found := false
	for _, d := range ds {
		found = found || strings.HasSuffix(d.Key, id)
	}
	if !found {
		t.Fatalf("no decision of %s at the first key's partition %d (steps %v)", id, coord, rec.names())
	}
	if s := g.txnState(false); s != "" {
		t.Fatalf("right after the commit: %s", s)
	}
}

// A Locking commit that fails at a participant (an Add's condition), and
// a Rollback, release every lock the Gets took at once.
func TestLockingAbortReleasesLocks(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := keysInDistinctPartitions(3, g.Nodes[0].Partitions())
	for _, k := range keys {
		if err := g.Nodes[0].Map("acct").Put(ctx, k, itob(5)); err != nil {
			t.Fatal(err)
		}
	}
	tx, _ := txn.Begin(ctx, g.svcs[0], locking)
	for _, k := range keys[:2] {
		if _, err := tx.Get(ctx, "acct", k); err != nil {
			t.Fatal(err)
		}
	}
	_ = tx.Put("acct", keys[0], itob(6))
	_ = tx.AddAtLeast("acct", keys[2], -10, 0)
	if err := tx.Commit(ctx); !errors.Is(err, txn.ErrCondition) {
		t.Fatalf("commit: %v, want ErrCondition", err)
	}
	if s := g.txnState(false); s != "" {
		t.Fatalf("right after the failed commit: %s", s)
	}
	tx, _ = txn.Begin(ctx, g.svcs[1], locking)
	if err := tx.Prefetch(ctx, "acct", keys); err != nil {
		t.Fatal(err)
	}
	if owners := g.locksOn(t, keys...); len(owners) != 3 {
		t.Fatalf("after Prefetch, %d of 3 keys locked", len(owners))
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if s := g.txnState(false); s != "" {
		t.Fatalf("right after the rollback: %s", s)
	}
	for _, k := range keys {
		if v, _ := g.Nodes[0].Map("acct").Get(ctx, k); btoi(t, v) != 5 {
			t.Fatalf("%s = %s, want 5", k, v)
		}
	}
}

// The client SDK runs Locking transactions too: the locks are there
// after the Gets, and the transfer commits.
func TestLockingThroughTheClient(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	c, err := client.Dial(ctx, client.Config{Addrs: []string{g.Nodes[2].RPCAddr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	keys := setup(t, g, ctx)
	var during []string
	if err := lockedTransfer(ctx, txn.Client(c), keys[0], keys[1], 25, func(*txn.Tx) { during = g.locksOn(t, keys...) }); err != nil {
		t.Fatal(err)
	}
	if len(during) != 2 {
		t.Fatalf("after both Gets, %d of 2 keys locked", len(during))
	}
	if a, b := g.balances(t, ctx, keys); a != 75 || b != 125 {
		t.Fatalf("balances %d %d, want 75 125", a, b)
	}
	if s := g.txnState(false); s != "" {
		t.Fatalf("right after the commit: %s", s)
	}
}

// Locking and optimistic transfers between the same accounts, many at
// once, in both directions: wait-die never deadlocks, every transfer
// commits within Run, and the total is kept.
func TestLockingConcurrentTransfersConserveTheTotal(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 120*time.Second)
	keys := keysInDistinctPartitions(4, g.Nodes[0].Partitions())
	keys = append(keys, "{"+keys[0]+"}b") // one pair within a partition
	m := g.Nodes[0].Map("acct")
	for _, k := range keys {
		if err := m.Put(ctx, k, itob(1000)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	var done atomic.Int64
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := g.svcs[w%3]
			for i := range 15 {
				a, b := keys[(w+i)%len(keys)], keys[(w*3+i*7+1)%len(keys)]
				if a == b {
					continue
				}
				var err error
				if w%4 == 3 {
					err = transfer(ctx, s, a, b, 1+i%5)
				} else {
					err = lockedTransfer(ctx, s, a, b, 1+i%5, nil)
				}
				if err != nil {
					t.Errorf("transfer: %v", err)
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	if got := total(t, ctx, m, keys); got != 1000*len(keys) {
		t.Fatalf("total %d after %d transfers, want %d", got, done.Load(), 1000*len(keys))
	}
	g.noTxnState(t, 10*time.Second, false)
	t.Logf("%d transfers", done.Load())
}

// A lock step whose answer was lost may have locked: Run's rollback
// releases it at once (not recovery, after the deadline).
func TestLockingLostLockAnswerIsReleased(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx)
	l := &lostAnswer{Grid: g.svcs[0], name: proto.StepLock}
	err := txn.Run(ctx, l, txn.Options{Locking: true, Timeout: 30 * time.Second}, func(ctx context.Context, tx *txn.Tx) error {
		_, err := tx.Get(ctx, "acct", keys[0])
		return err
	})
	if !l.lost.Load() || !errors.Is(err, api.ErrTimeout) {
		t.Fatalf("a Get whose lock answer was lost: %v (lost %v), want ErrTimeout", err, l.lost.Load())
	}
	if s := g.txnState(false); s != "" {
		t.Fatalf("right after Run returned: %s", s)
	}
}

// replayer is a Grid that keeps the arguments of every step named name,
// and runs each of them a second time right after the first (dup), as a
// copy of the step would.
type replayer struct {
	txn.Grid
	name string
	dup  bool
	mu   sync.Mutex
	sent []sentStep
}

type sentStep struct {
	part int
	args []byte
	res  proto.Result
}

func (r *replayer) Step(ctx context.Context, part int, name string, args []byte) ([]byte, error) {
	raw, err := r.Grid.Step(ctx, part, name, args)
	if err != nil || name != r.name {
		return raw, err
	}
	s := sentStep{part: part, args: append([]byte(nil), args...)}
	if r.dup {
		again, err := r.Grid.Step(ctx, part, name, args)
		if err != nil {
			return nil, err
		}
		_ = proto.Decode(again, &s.res)
	}
	r.mu.Lock()
	r.sent = append(r.sent, s)
	r.mu.Unlock()
	return raw, nil
}

// Copies of a Locking transaction's lock steps that arrive after it
// committed are refused (a decision at the coordinator, a tombstone at
// the participant) and lock nothing.
func TestLockingLateLockStepIsRefused(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx)
	r := &replayer{Grid: g.svcs[0], name: proto.StepLock}
	if err := lockedTransfer(ctx, r, keys[0], keys[1], 10, nil); err != nil {
		t.Fatal(err)
	}
	if len(r.sent) != 2 {
		t.Fatalf("%d lock steps, want 2", len(r.sent))
	}
	for _, s := range r.sent {
		raw, err := g.svcs[1].Step(ctx, s.part, proto.StepLock, s.args)
		var res proto.Result
		if err == nil {
			err = proto.Decode(raw, &res)
		}
		if err != nil || res.Status != proto.Finished {
			t.Fatalf("a late lock step at partition %d: %s, %v; want finished", s.part, res.Status, err)
		}
	}
	if s := g.txnState(false); s != "" {
		t.Fatalf("after the late lock steps: %s", s)
	}
}

// A prepare that adds to the record of a participant's locks, run twice
// (a copy), answers Done both times and prepares the same writes once:
// the transfer applies once, and nothing stays locked.
func TestLockingDuplicatePrepare(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx)
	r := &replayer{Grid: g.svcs[0], name: proto.StepPrepare, dup: true}
	if err := lockedTransfer(ctx, r, keys[0], keys[1], 10, nil); err != nil {
		t.Fatal(err)
	}
	if len(r.sent) != 1 || r.sent[0].res.Status != proto.Done {
		t.Fatalf("prepares %+v, want one, its copy answered done", r.sent)
	}
	if a, b := g.balances(t, ctx, keys); a != 90 || b != 110 {
		t.Fatalf("balances %d %d, want 90 110", a, b)
	}
	if s := g.txnState(false); s != "" {
		t.Fatalf("right after the commit: %s", s)
	}
}

// replayLocks runs every lock step r recorded again, as a late copy would
// arrive, and wants each refused (Finished) with nothing left locked.
func replayLocks(t *testing.T, ctx context.Context, g *tgrid, r *replayer, want int) {
	t.Helper()
	if len(r.sent) != want {
		t.Fatalf("%d lock steps, want %d", len(r.sent), want)
	}
	for _, s := range r.sent {
		raw, err := g.svcs[1].Step(ctx, s.part, proto.StepLock, s.args)
		var res proto.Result
		if err == nil {
			err = proto.Decode(raw, &res)
		}
		if err != nil || res.Status != proto.Finished {
			t.Errorf("a late lock step at partition %d: %s, %v; want finished", s.part, res.Status, err)
		}
	}
	if s := g.txnState(false); s != "" {
		t.Fatalf("after the late lock steps: %s", s)
	}
}

// A late copy of a lock step of a Locking transaction that committed in
// one partition (StepOne, which drops the lock record) is refused.
func TestLockingLateLockStepAfterOneIsRefused(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	a, b := "{u7}a", "{u7}b"
	m := g.Nodes[0].Map("acct")
	for _, k := range []string{a, b} {
		if err := m.Put(ctx, k, itob(10)); err != nil {
			t.Fatal(err)
		}
	}
	r := &replayer{Grid: g.svcs[0], name: proto.StepLock}
	if err := lockedTransfer(ctx, r, a, b, 4, nil); err != nil {
		t.Fatal(err)
	}
	replayLocks(t, ctx, g, r, 2)
}

// A late copy of the lock step at a participant that only read (it never
// prepares; the finish that releases its locks commits) is refused.
func TestLockingLateLockStepAtReadOnlyParticipantIsRefused(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx)
	r := &replayer{Grid: g.svcs[0], name: proto.StepLock}
	err := txn.Run(ctx, r, locking, func(ctx context.Context, tx *txn.Tx) error {
		av, err := tx.Get(ctx, "acct", keys[0])
		if err != nil {
			return err
		}
		bv, err := tx.Get(ctx, "acct", keys[1])
		if err != nil {
			return err
		}
		return tx.Put("acct", keys[0], itob(atoi(av)+atoi(bv)))
	})
	if err != nil {
		t.Fatal(err)
	}
	replayLocks(t, ctx, g, r, 2)
}

// A late copy of the lock step of a Locking transaction that only read,
// in one partition, is refused.
func TestLockingLateLockStepOfReadOnlyIsRefused(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := setup(t, g, ctx)
	r := &replayer{Grid: g.svcs[0], name: proto.StepLock}
	err := txn.Run(ctx, r, locking, func(ctx context.Context, tx *txn.Tx) error {
		_, err := tx.Get(ctx, "acct", keys[0])
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	replayLocks(t, ctx, g, r, 1)
}
