package txnnode_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/client"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/txn/internal/proto"
	"github.com/collocate/grid/txn/txnnode"
)

// newTGridSvc is newTGrid with the services' config adjusted by tune.
func newTGridSvc(t *testing.T, n int, tune func(*txnnode.Config)) *tgrid {
	g := &tgrid{Cluster: gridtest.New(t, n, nil), cfg: txnnode.DefaultConfig()}
	g.cfg.Interval = 100 * time.Millisecond
	g.cfg.Grace = 200 * time.Millisecond
	g.cfg.Keep = time.Second
	g.cfg.Logger = g.Logger(slog.LevelWarn)
	tune(&g.cfg)
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

func encodeT(t *testing.T, v any) []byte {
	t.Helper()
	b, err := proto.Encode(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// records counts partition part's records of internal map m at its primary.
func (g *tgrid) records(t *testing.T, part int, m string) int {
	for _, n := range g.Live() {
		if n.Leads(part) {
			recs, err := n.LocalEntries(part, m, "", 0)
			if err != nil {
				return -1
			}
			return len(recs)
		}
	}
	return -1
}

// A partition that ends more transactions in a collection period than
// MaxPerRound must not pile up tombstones and decisions for ever: a round
// that found a full batch is followed by another at the next Interval,
// not Keep/4 later (at MaxPerRound per Keep/4, 256 per 7.5 s by default,
// one busy participant partition collected 34 tombstones a second
// whatever its rate of transactions).
func TestCollectionKeepsUpWithABacklog(t *testing.T) {
	g := newTGridSvc(t, 3, func(c *txnnode.Config) {
		c.Keep = 8 * time.Second // a collection round every 2 s
		c.MaxPerRound = 4
	})
	ctx := ctxT(t, 60*time.Second)
	const part, n = 5, 120
	past := time.Now().Add(-time.Minute).UnixNano()
	for i := range n {
		id := fmt.Sprintf("backlog-%d", i)
		// A tombstone (an aborted participant) and an abort decision
		// (a coordinator), both long past their deadline.
		if _, err := g.svcs[0].Step(ctx, part, proto.StepFinish, encodeT(t, proto.Finish{ID: id, Deadline: past})); err != nil {
			t.Fatal(err)
		}
		if _, err := g.svcs[0].Step(ctx, part, proto.StepResolve, encodeT(t, proto.IDs{IDs: []string{id}, Deadline: past, Abort: true})); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	deadline := start.Add(15 * time.Second)
	for {
		tombs, decs := g.records(t, part, proto.MapTomb), g.records(t, part, proto.MapDecision)
		if tombs == 0 && decs == 0 {
			t.Logf("%d tombstones and decisions collected in %v", n, time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d tombstones and %d decisions of %d left after %v (MaxPerRound 4, Interval 100ms)", tombs, decs, n, time.Since(start).Round(time.Millisecond))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// StepHeld and StepForget name at most a bounded batch of transactions: an
// internal step runs inline, without a budget, so a forged list of
// millions of ids held the partition for seconds.
func TestHugeIDListsAreRefused(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 30*time.Second)
	ids := make([]string, 100_000)
	for i := range ids {
		ids[i] = fmt.Sprintf("id-%d", i)
	}
	for what, c := range map[string]struct {
		step string
		args proto.IDs
	}{
		"held":            {proto.StepHeld, proto.IDs{IDs: ids}},
		"forget":          {proto.StepForget, proto.IDs{IDs: ids}},
		"forget of tombs": {proto.StepForget, proto.IDs{Tombs: ids}},
	} {
		if _, err := g.svcs[0].Step(ctx, 3, c.step, encodeT(t, c.args)); !errors.Is(err, api.ErrBadArgs) {
			t.Errorf("%s of %d ids: %v, want ErrBadArgs", what, len(ids), err)
		}
	}
	// A batch the collection sends still runs.
	if _, err := g.svcs[0].Step(ctx, 3, proto.StepHeld, encodeT(t, proto.IDs{IDs: ids[:1024]})); err != nil {
		t.Fatalf("held of 1024 ids: %v", err)
	}
	if err := context.Cause(ctx); err != nil {
		t.Fatal(err)
	}
}

// Map.GetEntries (Prefetch's batch read) waits on a write-locked key like
// GetEntry, through a member and through the client SDK, and answers the
// versions GetEntry answers.
func TestGetEntriesWaitsOnALockedKey(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	keys := keysInDistinctPartitions(3, g.Nodes[0].Partitions())
	a, b, c := keys[0], keys[1], keys[2]
	m := g.Nodes[0].Map("acct")
	for _, k := range keys {
		if err := m.Put(ctx, k, itob(10)); err != nil {
			t.Fatal(err)
		}
	}
	cl, err := client.Dial(ctx, client.Config{Addrs: []string{g.Nodes[2].RPCAddr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	lockedByADeadCaller(t, ctx, g, a, c)
	pa := affinity.Partition(a, g.Nodes[0].Partitions())
	leader := g.Nodes[g.leader(t, pa)]
	locked := func() bool {
		ls, _ := leader.LocalEntries(pa, "\x00lock", "", 0)
		return len(ls) > 0
	}
	if !locked() {
		t.Fatal("the dead caller's participant holds no lock")
	}
	type answer struct {
		ents       map[string]api.Entry
		err        error
		lockedThen bool
	}
	readers := map[string]api.Map{"member": g.Nodes[1].Map("acct"), "client": cl.Map("acct")}
	out := make(chan answer, len(readers))
	for _, r := range readers {
		go func() {
			ents, err := r.GetEntries(ctx, []string{a, b})
			out <- answer{ents, err, locked()}
		}()
	}
	for range readers {
		ans := <-out
		if ans.err != nil {
			t.Fatal(ans.err)
		}
		if ans.lockedThen {
			t.Fatal("GetEntries answered while the key was still write-locked")
		}
		for _, k := range []string{a, b} {
			want, err := m.GetEntry(ctx, k)
			if err != nil {
				t.Fatal(err)
			}
			if got := ans.ents[k]; got.Version != want.Version || string(got.Value) != string(want.Value) || string(got.Value) != "10" {
				t.Fatalf("GetEntries of %s: %q version %d; GetEntry: %q version %d", k, got.Value, got.Version, want.Value, want.Version)
			}
		}
	}
}

// blockPartition holds partition part's steps for d (a step that does not
// return: the partition's primary paused, say) and returns when the
// blocking step started.
func (g *tgrid) blockPartition(t *testing.T, part int, d time.Duration) {
	t.Helper()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	started := make(chan struct{})
	var once atomic.Bool
	for _, n := range g.Nodes {
		err := n.SetInternalStep("\x00test.block", func([]byte) (grid.StepFunc, error) {
			return func(context.Context, *grid.StepView) ([]byte, error) {
				if once.CompareAndSwap(false, true) {
					close(started)
					select {
					case <-release:
					case <-time.After(d):
					}
				}
				return nil, nil
			}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), d+10*time.Second)
		defer cancel()
		_, _ = g.Nodes[0].Execute(ctx, grid.StepCall{Partition: part, Name: "\x00test.block"})
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the blocking step did not start")
	}
}

// One participant partition that does not answer (its steps held: a
// primary paused, a partition without one) must not stop a member's whole
// collection: the StepHeld to it shared the round's 10 s with every other
// call of the round, so it ran out and no StepForget of the member went
// out, not even for tombstones, which need no participant's answer.
func TestOneStuckParticipantDoesNotStopTheCollection(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 60*time.Second)
	const coord, stuck, other = 5, 7, 9
	past := time.Now().Add(-time.Minute).UnixNano()
	// At coord: old decisions naming the stuck partition and another,
	// and tombstones.
	for i, parts := range [][]int{{stuck}, {other}} {
		w := proto.Work{H: proto.Header{ID: fmt.Sprintf("dec-%d", i), Coord: coord, Deadline: past}, Parts: parts}
		if _, err := g.svcs[0].Step(ctx, coord, proto.StepCommit, encodeT(t, w)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		if _, err := g.svcs[0].Step(ctx, coord, proto.StepFinish, encodeT(t, proto.Finish{ID: fmt.Sprintf("tomb-%d", i), Deadline: past})); err != nil {
			t.Fatal(err)
		}
	}
	g.blockPartition(t, stuck, 20*time.Second)
	start := time.Now()
	for {
		tombs, decs := g.records(t, coord, proto.MapTomb), g.records(t, coord, proto.MapDecision)
		if tombs == 0 && decs == 1 {
			t.Logf("collected in %v while partition %d was stuck", time.Since(start).Round(time.Millisecond), stuck)
			recs, err := g.Nodes[g.leader(t, coord)].LocalEntries(coord, proto.MapDecision, "", 0)
			if err != nil || len(recs) != 1 || !strings.HasSuffix(recs[0].Key, "dec-0") {
				t.Fatalf("decisions left: %v (%v), want dec-0's, whose participant did not answer", recs, err)
			}
			return
		}
		if time.Since(start) > 8*time.Second {
			t.Fatalf("%v after partition %d got stuck: %d tombstones and %d decisions left at partition %d, want 0 and 1 (the one naming it)", time.Since(start).Round(time.Millisecond), stuck, tombs, decs, coord)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// StepForget drops only tombstones past their deadline and margin by the
// primary's clock, whatever the sender listed (a collector with a stale
// scan, or one whose clock runs ahead).
func TestForgetKeepsALiveTombstone(t *testing.T) {
	g := newTGrid(t, 3)
	ctx := ctxT(t, 30*time.Second)
	const part = 4
	deadline := time.Now().Add(-5 * time.Second).UnixNano() // past, but within the margin
	if _, err := g.svcs[0].Step(ctx, part, proto.StepFinish, encodeT(t, proto.Finish{ID: "live", Deadline: deadline})); err != nil {
		t.Fatal(err)
	}
	if _, err := g.svcs[1].Step(ctx, part, proto.StepForget, encodeT(t, proto.IDs{Tombs: []string{"live"}})); err != nil {
		t.Fatal(err)
	}
	if n := g.records(t, part, proto.MapTomb); n != 1 {
		t.Fatalf("%d tombstones after a forget of one 5 s past its deadline, want 1", n)
	}
}
