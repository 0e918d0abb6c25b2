package txnnode_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/collocate/grid/txn"
	"github.com/collocate/grid/txn/internal/proto"
	"github.com/collocate/grid/txn/txnnode"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, gridtest.LeakOptions()...)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// tgrid is a gridtest cluster with a transaction service on every node.
type tgrid struct {
	*gridtest.Cluster
	svcs []*txnnode.Service
	cfg  txnnode.Config
}

func newTGrid(t *testing.T, n int) *tgrid { return newTGridB(t, n) }

func newTGridB(t testing.TB, n int) *tgrid {
	g := &tgrid{Cluster: gridtest.New(t, n, nil), cfg: txnnode.DefaultConfig()}
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

func (g *tgrid) start(t testing.TB, i int) *txnnode.Service {
	s, err := txnnode.Start(g.Nodes[i], g.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (g *tgrid) kill(i int) {
	g.Kill(i)
	g.svcs[i].Close()
	g.svcs[i] = nil
}

// svc returns a live node's service.
func (g *tgrid) svc() *txnnode.Service {
	for _, s := range g.svcs {
		if s != nil {
			return s
		}
	}
	return nil
}

// leader returns the index of the node leading part.
func (g *tgrid) leader(t *testing.T, part int) int {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for i, n := range g.Nodes {
			if n != nil && n.Leads(part) {
				return i
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no leader of partition %d", part)
	return -1
}

// keysInDistinctPartitions returns n account keys, each in its own partition.
func keysInDistinctPartitions(n, parts int) []string {
	seen := map[int]bool{}
	var out []string
	for i := 0; len(out) < n; i++ {
		k := "acct-" + strconv.Itoa(i)
		if p := affinity.Partition(k, parts); !seen[p] {
			seen[p] = true
			out = append(out, k)
		}
	}
	return out
}

func itob(v int) []byte { return []byte(strconv.Itoa(v)) }

func btoi(t testing.TB, b []byte) int {
	v, err := strconv.Atoi(string(b))
	if err != nil {
		t.Fatalf("balance %q: %v", b, err)
	}
	return v
}

// transfer moves amount from a to b if a holds enough.
func transfer(ctx context.Context, g txn.Grid, a, b string, amount int) error {
	return txn.Run(ctx, g, txn.Options{}, func(ctx context.Context, tx *txn.Tx) error {
		av, err := tx.Get(ctx, "acct", a)
		if err != nil {
			return err
		}
		bv, err := tx.Get(ctx, "acct", b)
		if err != nil {
			return err
		}
		x, _ := strconv.Atoi(string(av))
		y, _ := strconv.Atoi(string(bv))
		if x < amount {
			return nil
		}
		if err := tx.Put("acct", a, itob(x-amount)); err != nil {
			return err
		}
		return tx.Put("acct", b, itob(y+amount))
	})
}

func total(t testing.TB, ctx context.Context, m grid.Map, keys []string) int {
	sum := 0
	for _, k := range keys {
		v, err := m.Get(ctx, k)
		if err != nil {
			t.Fatalf("get %s: %v", k, err)
		}
		sum += btoi(t, v)
	}
	return sum
}

// noTxnState checks, at every partition's primary, that no lock, no
// prepared record and (with decisions) no decision is left.
func (g *tgrid) noTxnState(t *testing.T, timeout time.Duration, decisions bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		left := g.txnState(decisions)
		if left == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("transaction state left: %s", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (g *tgrid) txnState(decisions bool) string {
	for _, n := range g.Live() {
		for part := range n.Partitions() {
			if !n.Leads(part) {
				continue
			}
			locks, _ := n.LocalEntries(part, "\x00lock", "", 1)
			if len(locks) > 0 {
				return fmt.Sprintf("partition %d: lock %q", part, locks[0].Key)
			}
			if recs, _ := n.LocalEntries(part, "\x00txn.p", "", 1); len(recs) > 0 {
				return fmt.Sprintf("partition %d: prepared %q", part, recs[0].Key)
			}
			if !decisions {
				continue
			}
			if recs, _ := n.LocalEntries(part, "\x00txn.d", "", 1); len(recs) > 0 {
				return fmt.Sprintf("partition %d: decision %q", part, recs[0].Key)
			}
		}
	}
	return ""
}

func TestTransferAcrossPartitions(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := keysInDistinctPartitions(2, g.Nodes[0].Partitions())
	m := g.Nodes[1].Map("acct")
	for _, k := range keys {
		if err := m.Put(ctx, k, itob(100)); err != nil {
			t.Fatal(err)
		}
	}
	if err := transfer(ctx, g.svcs[0], keys[0], keys[1], 30); err != nil {
		t.Fatal(err)
	}
	a, _ := m.Get(ctx, keys[0])
	b, _ := m.Get(ctx, keys[1])
	if btoi(t, a) != 70 || btoi(t, b) != 130 {
		t.Fatalf("after the transfer: %s %s, want 70 130", a, b)
	}
	g.noTxnState(t, 10*time.Second, true)
}

func TestOnePartitionTransaction(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	a, b := "{u7}a", "{u7}b"
	m := g.Nodes[0].Map("acct")
	for _, k := range []string{a, b} {
		if err := m.Put(ctx, k, itob(10)); err != nil {
			t.Fatal(err)
		}
	}
	if err := transfer(ctx, g.svcs[2], a, b, 4); err != nil {
		t.Fatal(err)
	}
	if got := total(t, ctx, m, []string{a, b}); got != 20 {
		t.Fatalf("total %d", got)
	}
	av, _ := m.Get(ctx, a)
	if btoi(t, av) != 6 {
		t.Fatalf("a = %s", av)
	}
	g.noTxnState(t, 5*time.Second, true) // no decision record either
}

func TestChangedReadAborts(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := keysInDistinctPartitions(2, g.Nodes[0].Partitions())
	m := g.Nodes[0].Map("acct")
	for _, k := range keys {
		if err := m.Put(ctx, k, itob(5)); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := txn.Begin(ctx, g.svcs[1], txn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Get(ctx, "acct", keys[0]); err != nil {
		t.Fatal(err)
	}
	if err := m.Put(ctx, keys[0], itob(99)); err != nil {
		t.Fatal(err)
	}
	_ = tx.Put("acct", keys[0], itob(1))
	_ = tx.Put("acct", keys[1], itob(9))
	if err := tx.Commit(ctx); !errors.Is(err, txn.ErrConflict) {
		t.Fatalf("commit over a changed read: %v, want ErrConflict", err)
	}
	a, _ := m.Get(ctx, keys[0])
	b, _ := m.Get(ctx, keys[1])
	if string(a) != "99" || string(b) != "5" {
		t.Fatalf("after an aborted transaction: %s %s, want 99 5", a, b)
	}
	g.noTxnState(t, 5*time.Second, false)
}

func TestConcurrentTransfersConserveTheTotal(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 120*time.Second)
	keys := keysInDistinctPartitions(8, g.Nodes[0].Partitions())
	m := g.Nodes[0].Map("acct")
	for _, k := range keys {
		if err := m.Put(ctx, k, itob(1000)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	var done, failed atomic.Int64
	var snapErr atomic.Value
	stop := make(chan struct{})
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := g.svcs[w%3]
			for i := range 40 {
				a, b := keys[(w+i)%len(keys)], keys[(w*3+i*5+1)%len(keys)]
				if a == b {
					continue
				}
				if err := transfer(ctx, s, a, b, 1+(i%7)); err != nil {
					failed.Add(1)
					t.Errorf("transfer: %v", err)
					return
				}
				done.Add(1)
			}
		}()
	}
	// A reader checks the total inside transactions meanwhile.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			sum := 0
			err := txn.Run(ctx, g.svcs[0], txn.Options{}, func(ctx context.Context, tx *txn.Tx) error {
				sum = 0
				for _, k := range keys {
					v, err := tx.Get(ctx, "acct", k)
					if err != nil {
						return err
					}
					sum += btoi(t, v)
				}
				return nil
			})
			if err == nil && sum != 8000 {
				snapErr.Store(fmt.Sprintf("a transaction read a total of %d", sum))
			}
		}
	}()
	for done.Load()+failed.Load() < 8*35 && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
		if failed.Load() > 0 {
			break
		}
	}
	close(stop)
	wg.Wait()
	if v := snapErr.Load(); v != nil {
		t.Fatal(v)
	}
	if got := total(t, ctx, m, keys); got != 8000 {
		t.Fatalf("total %d after %d transfers, want 8000", got, done.Load())
	}
	g.noTxnState(t, 10*time.Second, false)
	t.Logf("%d transfers", done.Load())
}

// abandoning is a txn.Grid whose caller dies right after its prepares: a
// commit step is never sent, and the transaction's ctx is cancelled.
type abandoning struct {
	txn.Grid
	cancel context.CancelFunc
}

func (a abandoning) Step(ctx context.Context, part int, name string, args []byte) ([]byte, error) {
	if name == proto.StepCommit {
		a.cancel()
		return nil, context.Canceled
	}
	return a.Grid.Step(ctx, part, name, args)
}

// TestReportShowsAnAbandonedTransactionUntilRecovery: a transaction whose
// caller died after its prepares shows in the members' Reports (its
// prepared records and locks, past their deadline), and no longer once
// recovery finished it; Resolved counts it.
func TestReportShowsAnAbandonedTransactionUntilRecovery(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := keysInDistinctPartitions(3, g.Nodes[0].Partitions())
	m := g.Nodes[0].Map("acct")
	for _, k := range keys {
		if err := m.Put(ctx, k, itob(10)); err != nil {
			t.Fatal(err)
		}
	}
	tctx, cancel := context.WithCancel(ctx)
	tx, err := txn.Begin(tctx, abandoning{g.svcs[0], cancel}, txn.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		_ = tx.Put("acct", k, itob(11))
	}
	if err := tx.Commit(tctx); !errors.Is(err, txn.ErrUnknown) {
		t.Fatalf("commit of an abandoned transaction: %v, want ErrUnknown", err)
	}
	sum := func() (r txnnode.Report) {
		for _, s := range g.svcs {
			one := s.Report()
			r.Led += one.Led
			r.Locks += one.Locks
			r.Prepared += one.Prepared
			r.Recovery.Resolved += one.Recovery.Resolved
			r.Partitions = append(r.Partitions, one.Partitions...)
		}
		return r
	}
	r := sum()
	// Two of the three partitions prepared (the third would have been the
	// coordinator), one lock each; recovery waits for the deadline (1 s)
	// and the grace (200 ms).
	if r.Led != g.Nodes[0].Partitions() || r.Prepared != 2 || r.Locks != 2 || r.Recovery.Resolved != 0 {
		t.Fatalf("right after the abandon: led %d, prepared %d, locks %d, resolved %d; want %d, 2, 2, 0",
			r.Led, r.Prepared, r.Locks, r.Recovery.Resolved, g.Nodes[0].Partitions())
	}
	for _, p := range r.Partitions {
		for _, h := range p.Held {
			if h.ID != tx.ID() || h.Keys != 1 || h.PastMs > 0 {
				t.Fatalf("partition %d holds %+v, want %s with 1 key before its deadline", p.Partition, h, tx.ID())
			}
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for r = sum(); r.Prepared+r.Locks > 0 || r.Recovery.Resolved < 2; r = sum() {
		if time.Now().After(deadline) {
			t.Fatalf("not recovered: prepared %d, locks %d, resolved %d", r.Prepared, r.Locks, r.Recovery.Resolved)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, k := range keys {
		if v, _ := m.Get(ctx, k); btoi(t, v) != 10 {
			t.Fatalf("%s = %s after the abandoned transaction was recovered, want 10", k, v)
		}
	}
}

// tombstones counts the tombstones at every partition's primary.
func (g *tgrid) tombstones() int {
	n := 0
	for _, node := range g.Live() {
		for part := range node.Partitions() {
			if node.Leads(part) {
				recs, _ := node.LocalEntries(part, proto.MapTomb, "", 0)
				n += len(recs)
			}
		}
	}
	return n
}

// Tombstones have no TTL: the members' collection rounds drop them (and
// the decisions) in one record per partition, 10 s past their deadline,
// and not before.
func TestTombstonesAndDecisionsAreSwept(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 90*time.Second)
	keys := keysInDistinctPartitions(6, g.Nodes[0].Partitions())
	m := g.Nodes[1].Map("acct")
	for _, k := range keys {
		if err := m.Put(ctx, k, itob(100)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i+1 < len(keys); i += 2 {
		err := txn.Run(ctx, g.svcs[0], txn.Options{Timeout: time.Second}, func(ctx context.Context, tx *txn.Tx) error {
			return errors.Join(tx.Add("acct", keys[i], -1), tx.Add("acct", keys[i+1], 1))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	ended := time.Now()
	if n := g.tombstones(); n < 3 {
		t.Fatalf("%d tombstones after 3 transfers across partitions, want a tombstone per finished participant", n)
	}
	time.Sleep(3 * time.Second) // several collection rounds (Keep/4 = 250ms), before deadline + 10 s
	if n := g.tombstones(); n < 3 {
		t.Fatalf("%d tombstones %v after the transfers: swept before 10 s past the deadline", n, time.Since(ended))
	}
	deadline := time.Now().Add(30 * time.Second)
	for g.tombstones() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d tombstones left %v after the transfers", g.tombstones(), time.Since(ended))
		}
		time.Sleep(100 * time.Millisecond)
	}
	g.noTxnState(t, 10*time.Second, true)
	var swept, collected uint64
	for _, s := range g.svcs {
		st := s.Stats()
		swept, collected = swept+st.Swept, collected+st.Collected
	}
	if swept < 3 || collected < 3 {
		t.Fatalf("recovery swept %d tombstones and collected %d decisions, want at least 3 of each", swept, collected)
	}
}
