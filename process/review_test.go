package process_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/process"
	"github.com/prometheus/client_golang/prometheus"
)

// small is a node config for single-node tests: few partitions.
func small(_ int, cfg *grid.Config) { cfg.Partitions = 16 }

// get reads key of map m as a string ("" when absent).
func get(ctx context.Context, nd *grid.Node, m, key string) string {
	v, _ := nd.Map(m).Get(ctx, key)
	return string(v)
}

// deadLetters reads processor name's dead letters at key's partition.
func deadLetters(t *testing.T, ctx context.Context, nd *grid.Node, name, key string) []process.DeadLetter {
	t.Helper()
	part := affinity.Partition(key, nd.Partitions())
	evs, _, err := nd.ReadStream(ctx, process.DeadLetters(name), part, 1, 100)
	var trimmed *api.TrimmedError
	if errors.As(err, &trimmed) {
		evs, _, err = nd.ReadStream(ctx, process.DeadLetters(name), part, trimmed.Oldest, 100)
	}
	if err != nil {
		t.Fatalf("read dead letters: %v", err)
	}
	var out []process.DeadLetter
	for _, e := range evs {
		dl, err := process.DecodeDeadLetter(e.Value)
		if err != nil {
			t.Fatalf("dead letter: %v", err)
		}
		out = append(out, dl)
	}
	return out
}

// waitRunning waits until every processor holds a position at every
// partition (its first runs registered it): events published from then
// on are held for it.
func (g *grid3) waitRunning(t *testing.T) {
	t.Helper()
	waitFor(t, 20*time.Second, "every processor running at every partition", func() bool {
		held := map[string]int{}
		for _, rt := range g.rts {
			if rt == nil {
				continue
			}
			for _, st := range rt.Status() {
				for _, ps := range st.Partitions {
					if ps.Position > 0 {
						held[st.Name]++
					}
				}
			}
		}
		for _, p := range g.procs() {
			if held[p.Name] < g.Live()[0].Partitions() {
				return false
			}
		}
		return true
	})
}

// Replay of a processor bound to a map's change feed moves its position
// (kept in the feed's positions stream): the change is handled again.
func TestReplayOfAMapFeedProcessor(t *testing.T) {
	var at atomic.Uint64
	g := newGridWith(t, 1, small, func() []process.Processor {
		return []process.Processor{{Name: "audit", Map: "accounts", Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			at.Store(e.Position)
			count(c, "audit", e.Key)
			return nil
		}}}
	})
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[0]
	if err := nd.Map("accounts").Put(ctx, "{a}1", []byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the change handled", func() bool { return get(ctx, nd, "audit", "{a}1") == "1" })
	part := affinity.Partition("{a}1", nd.Partitions())
	if err := g.rts[0].Replay(ctx, "audit", part, at.Load()); err != nil {
		t.Fatalf("replay of a map-feed processor: %v", err)
	}
	waitFor(t, 20*time.Second, "the change handled again", func() bool { return get(ctx, nd, "audit", "{a}1") == "2" })
}

// A replay to a position beyond the partition's history is refused: the
// run must not treat it as a lost history and go back to the oldest
// retained event (which handled every retained event again and parked a
// gap that never was).
func TestReplayBeyondTheEndIsRefused(t *testing.T) {
	g := newGridWith(t, 1, small, func() []process.Processor {
		return []process.Processor{{Name: "p", Stream: "s", Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			count(c, "done", "{a}"+string(e.Value))
			return nil
		}}}
	})
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[0]
	if _, err := nd.Publish(ctx, "s", "{a}", []byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "x handled", func() bool { return get(ctx, nd, "done", "{a}x") == "1" })
	part := affinity.Partition("{a}", nd.Partitions())
	if err := g.rts[0].Replay(ctx, "p", part, 1<<62); !errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("replay beyond the partition's end: %v, want ErrBadRequest", err)
	}
	if _, err := nd.Publish(ctx, "s", "{a}", []byte("y")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "y handled", func() bool { return get(ctx, nd, "done", "{a}y") == "1" })
	time.Sleep(500 * time.Millisecond)
	if x := get(ctx, nd, "done", "{a}x"); x != "1" {
		t.Fatalf("x handled %s times, want 1", x)
	}
	if dls := deadLetters(t, ctx, nd, "p", "{a}"); len(dls) != 0 {
		t.Fatalf("dead letters %+v, want none", dls)
	}
}

// An event the stream accepted, whose dead letter (the event plus the
// processor's name and the error) no longer fits the dead-letter stream,
// is still parked (without its contents) and the processor goes on: it
// once failed to park forever, wedging the partition.
func TestEventTooLargeForItsDeadLetterIsParked(t *testing.T) {
	const streamBytes = 16 << 10
	g := newGridWith(t, 1, func(i int, cfg *grid.Config) {
		small(i, cfg)
		cfg.StreamBytes = streamBytes
	}, func() []process.Processor {
		return []process.Processor{{Name: "p", Stream: "s", MaxAttempts: 2, Backoff: time.Millisecond, Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			if len(e.Value) > 100 {
				return errors.New("cannot handle a large event")
			}
			count(c, "done", "{a}"+string(e.Value))
			return nil
		}}}
	})
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[0]
	g.waitRunning(t)
	// The largest event the stream takes.
	size := streamBytes
	for ; size > 0; size -= 8 {
		_, err := nd.Publish(ctx, "s", "{a}", make([]byte, size))
		if err == nil {
			break
		}
		if !errors.Is(err, api.ErrValueTooLarge) {
			t.Fatal(err)
		}
	}
	// The stream holds each large event until the processor moved past
	// it: a second one (the first dead letter created the dead-letter
	// stream) and then a small one.
	for _, ev := range [][]byte{make([]byte, size), []byte("next")} {
		waitFor(t, 20*time.Second, "room after a large event", func() bool {
			_, err := nd.Publish(ctx, "s", "{a}", ev)
			if err != nil && !errors.Is(err, api.ErrStreamFull) {
				t.Fatal(err)
			}
			return err == nil
		})
	}
	waitFor(t, 20*time.Second, "the event after the large one handled", func() bool { return get(ctx, nd, "done", "{a}next") == "1" })
	if st := g.rts[0].Status(); st[0].Parked != 2 {
		t.Fatalf("%d events parked, want the 2 large ones", st[0].Parked)
	}
	// The dead-letter stream keeps its own bytes' worth: the last one.
	dls := deadLetters(t, ctx, nd, "p", "{a}")
	last := dls[len(dls)-1]
	if !strings.Contains(last.Error, "cannot handle a large event") || len(last.Events) != 1 || last.Events[0].Key != "{a}" {
		t.Fatalf("dead letter %q with %d events: want the large event's key and error", last.Error, len(last.Events))
	}
	t.Logf("events of %d bytes parked: %s", size, last.Error)
}

// An event emitted with an empty key is delivered to the empty key's
// partition: Deliver once sent it to partition 0, whose step refused the
// key (not collocated), and retried forever, wedging the outbox.
func TestEmitWithAnEmptyKeyIsDelivered(t *testing.T) {
	g := newGridWith(t, 1, small, func() []process.Processor {
		return []process.Processor{
			{Name: "p", Stream: "s", Handler: func(_ context.Context, c *process.Context, e process.Event) error {
				c.Emit("out", "", e.Value)
				return nil
			}},
			{Name: "q", Stream: "out", Handler: func(_ context.Context, c *process.Context, e process.Event) error {
				c.Set("done", e.Key, e.Value, 0) // the event's key: ""
				return nil
			}},
		}
	})
	if affinity.Partition("", 16) == 0 {
		t.Fatal("the test needs the empty key outside partition 0")
	}
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[0]
	if _, err := nd.Publish(ctx, "s", "{a}", []byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the emitted event handled", func() bool { return get(ctx, nd, "done", "") == "x" })
}

// A handler's own error that wraps a grid error code (here what another
// grid call answered, ErrUnavailable) is the handler's failure: retried
// MaxAttempts times, then parked. It was taken for the grid's (the
// partition moved) and retried forever, wedging the partition.
func TestHandlerErrorWithAGridCodeIsParked(t *testing.T) {
	g := newGridWith(t, 1, small, func() []process.Processor {
		return []process.Processor{{Name: "p", Stream: "s", MaxAttempts: 2, Backoff: time.Millisecond, Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			if string(e.Value) == "bad" {
				return fmt.Errorf("downstream call: %w", api.ErrUnavailable)
			}
			count(c, "done", "{a}"+string(e.Value))
			return nil
		}}}
	})
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[0]
	for _, v := range []string{"bad", "next"} {
		if _, err := nd.Publish(ctx, "s", "{a}", []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 20*time.Second, "the event after the failing one handled", func() bool { return get(ctx, nd, "done", "{a}next") == "1" })
	dls := deadLetters(t, ctx, nd, "p", "{a}")
	if len(dls) != 1 || len(dls[0].Events) != 1 || string(dls[0].Events[0].Value) != "bad" {
		t.Fatalf("dead letters %+v: want the bad event's", dls)
	}
}

// Events published once Register returned are held for the processor
// and handled: the processor's position at a partition was registered
// only by its first run there (up to Config.Supervise later), so an event
// published in between could be dropped by the stream's retention,
// silently.
func TestEventsPublishedAfterRegisterAreHandled(t *testing.T) {
	const streamBytes = 16 << 10
	g := newGridWith(t, 1, func(i int, cfg *grid.Config) {
		small(i, cfg)
		cfg.StreamBytes = streamBytes
	}, func() []process.Processor {
		return []process.Processor{{Name: "p", Stream: "s", Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			count(c, "done", "{a}"+string(e.Value[:1]))
			return nil
		}}}
	})
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[0]
	// Two events that do not fit the stream together: the second waits
	// for room once the processor holds the first.
	for _, v := range []string{"1", "2"} {
		ev := append([]byte(v), make([]byte, streamBytes/2)...)
		waitFor(t, 20*time.Second, "room for event "+v, func() bool {
			_, err := nd.Publish(ctx, "s", "{a}", ev)
			if err != nil && !errors.Is(err, api.ErrStreamFull) {
				t.Fatal(err)
			}
			return err == nil
		})
	}
	waitFor(t, 20*time.Second, "both events handled", func() bool {
		return get(ctx, nd, "done", "{a}1") == "1" && get(ctx, nd, "done", "{a}2") == "1"
	})
}

// A map-feed processor whose map is quiet while other maps of its
// partitions are busy parks no gap when its run starts again (a
// failover, a restart): its position stayed at its last handled change
// while the run read past the other maps' records, so the next run
// found it trimmed and parked a gap in which no change was lost.
func TestQuietFeedParksNoGapOnRestart(t *testing.T) {
	g := newGridWith(t, 1, func(i int, cfg *grid.Config) {
		small(i, cfg)
		cfg.JournalRecords = 32
	}, func() []process.Processor {
		return []process.Processor{{Name: "audit", Map: "accounts", Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			count(c, "audit", e.Key)
			return nil
		}}}
	})
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[0]
	if err := nd.Map("accounts").Put(ctx, "{a}1", []byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the first change handled", func() bool { return get(ctx, nd, "audit", "{a}1") == "1" })
	// Other maps' writes, well past the journal's 32 records, in bursts
	// the run reads past as they come.
	for i := range 16 {
		for j := range 8 {
			if err := nd.Map("other").Put(ctx, "{a}o", []byte(fmt.Sprint(i, j))); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	g.rts[0].Close()
	g.rts[0] = g.startRuntime(t, 0)
	if err := nd.Map("accounts").Put(ctx, "{a}2", []byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the second change handled", func() bool { return get(ctx, nd, "audit", "{a}2") == "1" })
	if dls := deadLetters(t, ctx, nd, "audit", "{a}"); len(dls) != 0 {
		t.Fatalf("dead letters %+v: want none (no change was lost)", dls)
	}
}

// A map-feed processor that fell behind its journal's retention (paused
// while its map changed more than JournalRecords times) parks one gap and
// handles the retained changes and the later ones. With the journal full,
// the gap's own record dropped the oldest change again, so the run parked
// a gap after a gap forever (tens of thousands a second), never handling
// anything.
func TestFeedGapIsParkedOnceAndTheProcessorGoesOn(t *testing.T) {
	g := newGridWith(t, 1, func(i int, cfg *grid.Config) {
		small(i, cfg)
		cfg.JournalRecords = 32
	}, func() []process.Processor {
		return []process.Processor{{Name: "audit", Map: "accounts", Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			c.Set("audit", e.Key, e.Value, 0)
			return nil
		}}}
	})
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[0]
	g.waitRunning(t)
	if err := g.rts[0].Pause(ctx, "audit"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * process.DefaultConfig().Poll)
	const n = 200
	for i := range n {
		if err := nd.Map("accounts").Put(ctx, "{a}k", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.rts[0].Resume(ctx, "audit"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the last change handled", func() bool { return get(ctx, nd, "audit", "{a}k") == fmt.Sprint(n-1) })
	if err := nd.Map("accounts").Put(ctx, "{a}k", []byte("after")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "a later change handled", func() bool { return get(ctx, nd, "audit", "{a}k") == "after" })
	st := g.rts[0].Status()[0]
	if st.Gaps != 1 || st.Handled < 2 {
		t.Fatalf("%d gaps parked, %d changes handled: want 1 gap and the retained changes handled", st.Gaps, st.Handled)
	}
}

// Events flow through the two-stage chain while a node joins (partitions
// move to it, their runs and deliverers start there) and leaves again
// (they move back): every acknowledged event's effects apply once at
// both stages.
func TestExactlyOnceThroughJoinAndLeave(t *testing.T) {
	parts := func(cfg *grid.Config) { cfg.Partitions = 32 }
	g := newGridWith(t, 3, func(_ int, cfg *grid.Config) { parts(cfg) }, twoStage)
	ctx := ctxT(t, 180*time.Second)
	pub := g.Nodes[0]
	var acked, unknown []int
	const n = 600
	for i := range n {
		switch i {
		case n / 3:
			j := g.Add(parts)
			g.rts = append(g.rts, g.startRuntime(t, j))
		case n / 2:
			g.WaitStable(30 * time.Second)
			led := 0
			for p := range 32 {
				if g.Nodes[3].Leads(p) {
					led++
				}
			}
			t.Logf("the new node leads %d partitions", led)
		case 2 * n / 3:
			g.rts[3].Close()
			g.rts[3] = nil
			g.Leave(3)
		}
		id := fmt.Sprint(i)
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

// A runtime closed and started again on the same node with the same
// Prometheus registry starts: Close unregisters its metrics (Start once
// failed with a duplicate registration).
func TestRuntimeRestartsWithTheSameRegistry(t *testing.T) {
	g := newGridWith(t, 1, small, func() []process.Processor { return nil })
	reg := prometheus.NewRegistry()
	cfg := process.DefaultConfig()
	cfg.Registerer = reg
	for range 2 {
		rt, err := process.Start(g.Nodes[0], cfg)
		if err != nil {
			t.Fatalf("start with the registry again: %v", err)
		}
		rt.Close()
	}
}

// The events of one record (a PutAll's entries of one partition, seen by
// a map-feed processor) have different idempotency keys: they shared
// their position's, so an effect outside the grid deduplicated by it
// was made for the first of them only.
func TestIdempotencyKeysDifferWithinARecord(t *testing.T) {
	var mu sync.Mutex
	keys := map[string]string{} // idempotency key -> event key
	g := newGridWith(t, 1, small, func() []process.Processor {
		return []process.Processor{{Name: "audit", Map: "accounts", Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			mu.Lock()
			defer mu.Unlock()
			if k, ok := keys[c.IdempotencyKey()]; ok && k != e.Key {
				return fmt.Errorf("events %q and %q share the idempotency key %q", k, e.Key, c.IdempotencyKey())
			}
			keys[c.IdempotencyKey()] = e.Key
			return nil
		}}}
	})
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[0]
	g.waitRunning(t)
	entries := map[string][]byte{"{a}1": []byte("x"), "{a}2": []byte("x"), "{a}3": []byte("x")}
	if err := nd.Map("accounts").PutAll(ctx, entries); err != nil { // one record
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the record handled or parked", func() bool {
		st := g.rts[0].Status()[0]
		return st.Handled+st.Parked == 3
	})
	mu.Lock()
	defer mu.Unlock()
	if len(keys) != 3 {
		t.Fatalf("idempotency keys %v: want one per event", keys)
	}
}

// A handler that emits in a loop (a bug) does not grow the node's memory
// with everything it emits: once its batch's emitted events can no longer
// fit one outbox event, Emit refuses (the event fails, retried and
// parked) and keeps nothing more. Emit kept a copy of every event until
// the handler returned, up to its whole budget.
func TestEmitsPastTheOutboxLimitAreNotKept(t *testing.T) {
	const streamBytes = 64 << 10
	ev := make([]byte, 4<<10)
	const emits = 25000 // 100 MB of events
	g := newGridWith(t, 1, func(i int, cfg *grid.Config) {
		small(i, cfg)
		cfg.StreamBytes = streamBytes
	}, func() []process.Processor {
		return []process.Processor{{Name: "p", Stream: "s", MaxAttempts: 1, Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			if string(e.Value) == "loop" {
				for range emits {
					c.Emit("out", "{a}", ev)
				}
				return nil
			}
			count(c, "done", "{a}"+string(e.Value))
			return nil
		}}}
	})
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[0]
	g.waitRunning(t)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for _, v := range []string{"loop", "next"} {
		if _, err := nd.Publish(ctx, "s", "{a}", []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 20*time.Second, "the event after the looping one handled", func() bool { return get(ctx, nd, "done", "{a}next") == "1" })
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > emits*uint64(len(ev))/2 {
		t.Fatalf("%d MB allocated while the handler emitted %d MB: Emit kept what could never be committed", grew>>20, emits*len(ev)>>20)
	}
	dls := deadLetters(t, ctx, nd, "p", "{a}")
	if len(dls) != 1 || string(dls[0].Events[0].Value) != "loop" {
		t.Fatalf("dead letters %+v: want the looping event's", dls)
	}
	t.Logf("parked: %s", dls[0].Error)
}

// A batch whose events' emits or writes together do not fit one record is
// split, never blamed on the event that crossed the limit: with
// MaxAttempts 1 that event was parked though it fits alone.
func TestBatchTooLargeTogetherParksNothing(t *testing.T) {
	t.Run("emits", func(t *testing.T) {
		ev := make([]byte, 24<<10)
		testBatchTooLarge(t, func(_ int, cfg *grid.Config) { cfg.StreamBytes = 64 << 10 }, func(c *process.Context, e process.Event) {
			c.Emit("out", "{a}", ev)
		})
	})
	t.Run("writes", func(t *testing.T) {
		val := make([]byte, 48<<10)
		testBatchTooLarge(t, func(_ int, cfg *grid.Config) { cfg.MaxFrame, cfg.MaxValueSize = 256<<10, 64<<10 }, func(c *process.Context, e process.Event) {
			c.Set("big", "{a}"+string(e.Value), val, 0)
		})
	})
}

// testBatchTooLarge handles three events in one batch with effect, which
// fits one record for one event but not for three.
func testBatchTooLarge(t *testing.T, configure func(int, *grid.Config), effect func(*process.Context, process.Event)) {
	g := newGridWith(t, 1, func(i int, cfg *grid.Config) {
		small(i, cfg)
		configure(i, cfg)
	}, func() []process.Processor {
		return []process.Processor{
			{Name: "p", Stream: "s", MaxAttempts: 1, Handler: func(_ context.Context, c *process.Context, e process.Event) error {
				effect(c, e)
				count(c, "done", "{a}"+string(e.Value))
				return nil
			}},
			{Name: "q", Stream: "out", Handler: func(context.Context, *process.Context, process.Event) error { return nil }},
		}
	})
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[0]
	g.waitRunning(t)
	if err := g.rts[0].Pause(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * process.DefaultConfig().Poll)
	for _, v := range []string{"1", "2", "3"} {
		if _, err := nd.Publish(ctx, "s", "{a}", []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.rts[0].Resume(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the three events handled or parked", func() bool {
		st := g.rts[0].Status()
		return st[0].Handled+st[0].Parked == 3
	})
	if st := g.rts[0].Status(); st[0].Parked != 0 {
		t.Fatalf("%d events parked: want none (each fits alone)", st[0].Parked)
	}
}

// A batch that runs out of its budget blames the unit that was running
// only if it ran alone from the batch's start: the units before it
// commit, and it goes on in a batch of its own, not as a failed attempt
// (with MaxAttempts 1 an event whose handler takes 40% of the budget was
// parked whenever it came third in a batch).
func TestBatchOutOfBudgetParksNothing(t *testing.T) {
	g := newGridWith(t, 1, small, func() []process.Processor {
		return []process.Processor{{Name: "p", Stream: "s", MaxAttempts: 1, Budget: time.Second, Handler: func(ctx context.Context, c *process.Context, e process.Event) error {
			select {
			case <-time.After(400 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
			count(c, "done", "{a}"+string(e.Value))
			return nil
		}}}
	})
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[0]
	g.waitRunning(t)
	if err := g.rts[0].Pause(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * process.DefaultConfig().Poll)
	for _, v := range []string{"1", "2", "3", "4"} {
		if _, err := nd.Publish(ctx, "s", "{a}", []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.rts[0].Resume(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the four events handled or parked", func() bool {
		st := g.rts[0].Status()
		return st[0].Handled+st[0].Parked == 4
	})
	if st := g.rts[0].Status(); st[0].Parked != 0 {
		t.Fatalf("%d events parked: want none (each takes 40%% of the budget)", st[0].Parked)
	}
	for _, v := range []string{"1", "2", "3", "4"} {
		if got := get(ctx, nd, "done", "{a}"+v); got != "1" {
			t.Fatalf("event %s applied %q times, want 1", v, got)
		}
	}
}

// Timings so short that the runtime's loops would spin are refused: a
// Poll or Supervise of 1ns was accepted, and the pause watcher and the
// supervisor then ran without pause.
func TestConfigRefusesSpinningTimings(t *testing.T) {
	for _, mod := range []func(*process.Config){
		func(c *process.Config) { c.Poll = time.Nanosecond },
		func(c *process.Config) { c.Supervise = time.Nanosecond },
		func(c *process.Config) { c.Backoff = time.Nanosecond },
	} {
		cfg := process.DefaultConfig()
		mod(&cfg)
		if err := cfg.Validate(); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
	if cfg := process.DefaultConfig(); cfg.Validate() != nil {
		t.Fatalf("the defaults refused: %v", cfg.Validate())
	}
}

// A processor whose emits feed its own stream (a cycle: here stream "a"
// to itself; A -> B -> A alike) while publishers keep that stream full:
// once its outbox is full too, the processor cannot commit (no room in
// the outbox), so it frees no room in "a", so the deliverer cannot
// deliver into "a", so the outbox never drains. Deadlocked for good.
func TestCycleUnderBackpressureDrains(t *testing.T) {
	t.Skip("defect: a cycle of processors through the outbox deadlocks under backpressure: the outbox is full because its target stream is, and the target stream is full because its processor cannot commit into the full outbox (design: deliveries need room that publishers cannot take, or the outbox must not block the commit that frees it)")
	g := newGridWith(t, 1, func(i int, cfg *grid.Config) {
		small(i, cfg)
		cfg.StreamRecords = 4
	}, func() []process.Processor {
		return []process.Processor{{Name: "echo", Stream: "a", Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			if len(e.Value) > 0 && e.Value[0] == 'p' {
				c.Emit("a", "{a}", []byte("echo"))
			}
			return nil
		}}}
	})
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[0]
	g.waitRunning(t)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		_, err := nd.Publish(ctx, "a", "{a}", []byte("p"))
		if err != nil && !errors.Is(err, api.ErrStreamFull) {
			t.Fatal(err)
		}
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		st, ob := g.rts[0].Status()[0], g.rts[0].Outbox()
		if st.Lag == 0 && ob.Lag == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20s: %d events not handled, %d outbox records not delivered (%d delivery retries)", st.Lag, ob.Lag, ob.Retries)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Handlers that each publish an event to a stream of the partition
// through the view (a step publishes at most one event per stream) are
// handled in batches split where the second publish comes, none blamed:
// the second event of every batch failed an attempt (with MaxAttempts 1,
// parked).
func TestViewPublishesOfABatchParkNothing(t *testing.T) {
	g := newGridWith(t, 1, small, func() []process.Processor {
		return []process.Processor{{Name: "p", Stream: "s", MaxAttempts: 1, Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			c.View().Publish("local", "{a}", e.Value)
			return nil
		}}}
	})
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[0]
	g.waitRunning(t)
	if err := g.rts[0].Pause(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * process.DefaultConfig().Poll)
	for _, v := range []string{"1", "2", "3"} {
		if _, err := nd.Publish(ctx, "s", "{a}", []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.rts[0].Resume(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the three events handled or parked", func() bool {
		st := g.rts[0].Status()
		return st[0].Handled+st[0].Parked == 3
	})
	if st := g.rts[0].Status(); st[0].Parked != 0 || st[0].Failures != 0 {
		t.Fatalf("%d events parked, %d failures: want none", st[0].Parked, st[0].Failures)
	}
}

// A handler that publishes to the partition's outbox itself through the
// view (misuse: the batch's record publishes the outbox event) fails its
// event, parked like any failure: the run ended on it and started again
// forever, wedging the partition.
func TestHandlerPublishingToTheOutboxIsParked(t *testing.T) {
	g := newGridWith(t, 1, small, func() []process.Processor {
		return []process.Processor{{Name: "p", Stream: "s", MaxAttempts: 2, Backoff: time.Millisecond, Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			if string(e.Value) == "bad" {
				c.View().Publish(grid.ReservedPrefix+"outbox", e.Key, e.Value)
			}
			c.Emit("out", e.Key, e.Value)
			count(c, "done", "{a}"+string(e.Value))
			return nil
		}}}
	})
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[0]
	g.waitRunning(t)
	for _, v := range []string{"bad", "next"} {
		if _, err := nd.Publish(ctx, "s", "{a}", []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 20*time.Second, "the event after the bad one handled", func() bool { return get(ctx, nd, "done", "{a}next") == "1" })
	if got := get(ctx, nd, "done", "{a}bad"); got != "" {
		t.Fatalf("the bad event applied (%q)", got)
	}
	if st := g.rts[0].Status(); st[0].Parked != 1 {
		t.Fatalf("%d events parked, want the bad one", st[0].Parked)
	}
}
