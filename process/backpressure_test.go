package process_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/process"
)

// With tiny streams and the second stage paused, backpressure runs all
// the way back: the second stage's stream fills (its group holds it), the
// deliveries into it fail with ErrStreamFull and are retried, the first
// stage's outbox fills and its commits wait, the input stream fills and
// publishers get ErrStreamFull. Nothing is dropped: once the second stage
// resumes, every accepted event comes through both stages exactly once.
func TestBackpressureThroughTheOutbox(t *testing.T) {
	const limit = 16
	g := &grid3{Cluster: gridtest.New(t, 3, func(_ int, cfg *grid.Config) { cfg.StreamRecords = limit }), procs: func() []process.Processor {
		return []process.Processor{
			{Name: "stage1", Stream: "in", MaxBatch: 4, Handler: func(_ context.Context, c *process.Context, e process.Event) error {
				count(c, "s1", "{in}"+string(e.Value))
				c.Emit("mid", "{mid}"+string(e.Value), e.Value)
				return nil
			}},
			{Name: "stage2", Stream: "mid", Handler: func(_ context.Context, c *process.Context, e process.Event) error {
				count(c, "s2", e.Key)
				return nil
			}},
		}
	}}
	g.WaitStable(30 * time.Second)
	for i := range 3 {
		g.rts = append(g.rts, g.startRuntime(t, i))
	}
	t.Cleanup(func() {
		for _, rt := range g.rts {
			rt.Close()
		}
	})
	ctx := ctxT(t, 120*time.Second)
	nd := g.Nodes[0]
	if err := g.rts[0].Pause(ctx, "stage2"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * process.DefaultConfig().Poll)
	accepted, full := 0, 0
	for i := 0; full < 20 && i < 500; i++ {
		_, err := nd.Publish(ctx, "in", "{in}", []byte(strconv.Itoa(accepted)))
		switch {
		case err == nil:
			accepted++
		case errors.Is(err, api.ErrStreamFull):
			full++
			time.Sleep(20 * time.Millisecond)
		default:
			t.Fatalf("publish: %v", err)
		}
	}
	if full == 0 {
		t.Fatalf("%d events accepted and none refused: no backpressure reached the publisher", accepted)
	}
	// Stage 2's stream holds at most limit events, the outbox at most limit
	// batches, the input at most limit events: the publisher was stopped
	// long before 500.
	if accepted > 4*limit+2*limit*4 {
		t.Fatalf("%d events accepted past streams of %d: retention did not hold them back", accepted, limit)
	}
	t.Logf("%d events accepted, then ErrStreamFull %d times", accepted, full)
	// Every stage is held back at its stream's bound: stage 2's input,
	// the outbox, and stage 1's input.
	waitFor(t, 10*time.Second, "lags at the bounds", func() bool {
		lag := map[string]int{}
		for _, rt := range g.rts {
			for _, st := range rt.Status() {
				lag[st.Name] += st.Lag
			}
			lag["outbox"] += rt.Outbox().Lag
		}
		t.Logf("lags %v", lag)
		return lag["stage1"] == limit && lag["stage2"] == limit && lag["outbox"] == limit
	})
	if err := g.rts[1].Resume(ctx, "stage2"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "every accepted event through both stages", func() bool {
		for i := range accepted {
			v, _ := nd.Map("s2").Get(ctx, "{mid}"+strconv.Itoa(i))
			if len(v) == 0 {
				return false
			}
		}
		return true
	})
	for i := range accepted {
		a, _ := nd.Map("s1").Get(ctx, "{in}"+strconv.Itoa(i))
		b, _ := nd.Map("s2").Get(ctx, "{mid}"+strconv.Itoa(i))
		if string(a) != "1" || string(b) != "1" {
			t.Fatalf("event %d: stage 1 %q, stage 2 %q: want 1 and 1", i, a, b)
		}
	}
}
