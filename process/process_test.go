package process_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/process"
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

// grid3 is a gridtest cluster with a processor runtime on every node,
// registering the same processors (procs) on each.
type grid3 struct {
	*gridtest.Cluster
	rts   []*process.Runtime
	procs func() []process.Processor
}

func newGrid(t *testing.T, n int, procs func() []process.Processor) *grid3 {
	return newGridWith(t, n, nil, procs)
}

// newGridWith is newGrid with each node's config adjusted by configure.
func newGridWith(t *testing.T, n int, configure func(i int, cfg *grid.Config), procs func() []process.Processor) *grid3 {
	g := &grid3{Cluster: gridtest.New(t, n, configure), procs: procs}
	g.WaitStable(30 * time.Second)
	for i := range n {
		g.rts = append(g.rts, g.startRuntime(t, i))
	}
	t.Cleanup(func() {
		for _, rt := range g.rts {
			if rt != nil {
				rt.Close()
			}
		}
	})
	return g
}

func (g *grid3) startRuntime(t *testing.T, i int) *process.Runtime {
	cfg := process.DefaultConfig()
	cfg.Logger = g.Logger(slog.LevelWarn)
	rt, err := process.Start(g.Nodes[i], cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range g.procs() {
		if err := rt.Register(p); err != nil {
			t.Fatal(err)
		}
	}
	return rt
}

// kill SIGKILLs node i in process: the node dies first, its runtime's
// steps fail with it.
func (g *grid3) kill(i int) {
	g.Kill(i)
	g.rts[i].Close()
	g.rts[i] = nil
}

// count adds one to the counter key of map m: an effect applied twice
// shows as 2.
func count(c *process.Context, m, key string) {
	n := 0
	if v, ok := c.Get(m, key); ok {
		n, _ = strconv.Atoi(string(v))
	}
	c.Set(m, key, []byte(strconv.Itoa(n+1)), 0)
}

// twoStage: "in" -> stage1 (counts in map s1, emits to "mid" under
// another key, in another partition) -> stage2 (counts in map s2).
func twoStage() []process.Processor {
	return []process.Processor{
		{Name: "stage1", Stream: "in", Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			count(c, "s1", e.Key)
			c.Emit("mid", "m-"+string(e.Value), e.Value)
			return nil
		}},
		{Name: "stage2", Stream: "mid", Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			count(c, "s2", e.Key)
			return nil
		}},
	}
}

// Events published with unique ids while a primary is SIGKILLed flow
// through a two-stage chain that crosses partitions through the outbox:
// at the end every acknowledged id's effect is present exactly once at
// both stages.
func TestExactlyOnceThroughPrimaryKill(t *testing.T) {
	g := newGrid(t, 3, twoStage)
	ctx := ctxT(t, 120*time.Second)
	pub := g.Nodes[0]
	var acked []int
	var unknown []int
	const n = 600
	for i := range n {
		if i == n/3 {
			g.kill(2)
		}
		id := strconv.Itoa(i)
		_, err := pub.Publish(ctx, "in", "k-"+id, []byte(id))
		switch {
		case err == nil:
			acked = append(acked, i)
		case errors.Is(err, api.ErrTimeout):
			unknown = append(unknown, i)
		default:
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	waitEffects(t, ctx, pub, acked, unknown)
}

// waitEffects waits until every acknowledged id's effects are present at
// both stages and fails on any applied twice (or an unknown one applied
// twice).
func waitEffects(t *testing.T, ctx context.Context, nd *grid.Node, acked, unknown []int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		missing, dup := checkEffects(ctx, nd, acked, unknown)
		if dup != "" {
			t.Fatal(dup)
		}
		if missing == "" {
			t.Logf("%d acknowledged events, each applied once at both stages (%d unknown outcomes)", len(acked), len(unknown))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 60s: %s", missing)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func checkEffects(ctx context.Context, nd *grid.Node, acked, unknown []int) (missing, dup string) {
	get := func(m, k string) int {
		v, err := nd.Map(m).Get(ctx, k)
		if err != nil {
			return 0
		}
		c, _ := strconv.Atoi(string(v))
		return c
	}
	miss := 0
	first := ""
	for _, i := range acked {
		id := strconv.Itoa(i)
		a, b := get("s1", "k-"+id), get("s2", "m-"+id)
		if a > 1 || b > 1 {
			return "", fmt.Sprintf("event %s applied twice: stage1 %d, stage2 %d", id, a, b)
		}
		if a == 0 || b == 0 {
			miss++
			if first == "" {
				first = fmt.Sprintf("event %s: stage1 %d, stage2 %d", id, a, b)
			}
		}
	}
	for _, i := range unknown {
		id := strconv.Itoa(i)
		if a, b := get("s1", "k-"+id), get("s2", "m-"+id); a > 1 || b > 1 || a < b {
			return "", fmt.Sprintf("unknown event %s: stage1 %d, stage2 %d", id, a, b)
		}
	}
	if miss > 0 {
		return fmt.Sprintf("%d of %d events not yet through both stages (first: %s)", miss, len(acked), first), ""
	}
	return "", ""
}

// A handler that keeps failing for one event: it is tried MaxAttempts
// times, then parked in the dead letters with its error, and the
// processor goes on with the next events of the partition.
func TestFailingEventIsParkedAndTheProcessorGoesOn(t *testing.T) {
	var attempts, maxAttempt atomic.Int64
	procs := func() []process.Processor {
		return []process.Processor{{Name: "p", Stream: "s", MaxAttempts: 3, Backoff: 5 * time.Millisecond,
			Handler: func(_ context.Context, c *process.Context, e process.Event) error {
				if string(e.Value) == "bad" {
					attempts.Add(1)
					if int64(e.Attempt) > maxAttempt.Load() {
						maxAttempt.Store(int64(e.Attempt))
					}
					if e.Attempt == 2 {
						panic("boom")
					}
					return errors.New("cannot handle bad")
				}
				count(c, "done", "{acct}"+string(e.Value))
				return nil
			}}}
	}
	g := newGrid(t, 3, procs)
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[0]
	// Same key: same partition, in order.
	for _, v := range []string{"a", "bad", "b"} {
		if _, err := nd.Publish(ctx, "s", "{acct}", []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, "events a and b handled", func() bool {
		a, _ := nd.Map("done").Get(ctx, "{acct}"+"a")
		b, _ := nd.Map("done").Get(ctx, "{acct}"+"b")
		return string(a) == "1" && string(b) == "1"
	})
	part := affinity.Partition("{acct}", nd.Partitions())
	evs, _, err := nd.ReadStream(ctx, process.DeadLetters("p"), part, 1, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 {
		t.Fatalf("dead letters: %d events, want 1", len(evs))
	}
	dl, err := process.DecodeDeadLetter(evs[0].Value)
	if err != nil || len(dl.Events) != 1 || string(dl.Events[0].Value) != "bad" || dl.Processor != "p" || dl.Error == "" {
		t.Fatalf("dead letter %+v, %v", dl, err)
	}
	// A run that restarts (the partition's table changed under it) counts
	// attempts anew, so there may be more runs than MaxAttempts, but
	// never an attempt numbered above it.
	if got, last := attempts.Load(), maxAttempt.Load(); got < 3 || last != 3 {
		t.Fatalf("bad event tried %d times, last attempt %d: want at least 3, the last numbered 3 (MaxAttempts)", got, last)
	}
	t.Logf("parked: %s", dl.Error)
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Pause stops handling at every partition (events queue up), Resume
// handles them, and Replay handles a partition's events again from a
// position.
func TestPauseResumeReplay(t *testing.T) {
	g := newGrid(t, 3, func() []process.Processor {
		return []process.Processor{{Name: "p", Stream: "s", Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			count(c, "done", "{acct}"+string(e.Value))
			return nil
		}}}
	})
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[1]
	first, err := nd.Publish(ctx, "s", "{acct}", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "x handled", func() bool {
		v, _ := nd.Map("done").Get(ctx, "{acct}"+"x")
		return string(v) == "1"
	})
	if err := g.rts[0].Pause(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * process.DefaultConfig().Poll) // every member sees the pause
	if _, err := nd.Publish(ctx, "s", "{acct}", []byte("y")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if v, _ := nd.Map("done").Get(ctx, "{acct}"+"y"); len(v) != 0 {
		t.Fatalf("y handled while paused: %q", v)
	}
	if err := g.rts[2].Resume(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "y handled after resume", func() bool {
		v, _ := nd.Map("done").Get(ctx, "{acct}"+"y")
		return string(v) == "1"
	})
	part := affinity.Partition("{acct}", nd.Partitions())
	if err := g.rts[1].Replay(ctx, "p", part, first); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "x and y handled again after replay", func() bool {
		x, _ := nd.Map("done").Get(ctx, "{acct}"+"x")
		y, _ := nd.Map("done").Get(ctx, "{acct}"+"y")
		return string(x) == "2" && string(y) == "2"
	})
	if err := g.rts[0].Replay(ctx, "nope", part, 1); !errors.Is(err, process.ErrUnknownProcessor) {
		t.Fatalf("replay of an unknown processor: %v", err)
	}
}
