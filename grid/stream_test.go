package grid_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
)

// Events published with unique ids while a primary is killed: a consumer
// group gets every acknowledged one, each partition's in publish order,
// and a consumer that stops and comes back gets at most its last batch
// again.
func TestStreamConsumerGroupThroughPrimaryKill(t *testing.T) {
	c := gridtest.New(t, 3, nil)
	c.WaitStable(30 * time.Second)
	ctx := ctxT(t, 90*time.Second)

	var mu sync.Mutex
	acked := map[int]bool{}
	unknown := map[int]bool{}
	got := map[int]int{}
	lastPos := map[int]uint64{}
	var order []string
	handle := func(ev grid.StreamEvent) error {
		id, _ := strconv.Atoi(string(ev.Value))
		mu.Lock()
		defer mu.Unlock()
		if ev.Position <= lastPos[ev.Partition] && got[id] == 0 {
			order = append(order, fmt.Sprintf("partition %d: %d after %d", ev.Partition, ev.Position, lastPos[ev.Partition]))
		}
		lastPos[ev.Partition] = ev.Position
		got[id]++
		return nil
	}
	cctx, stopConsumer := context.WithCancel(ctx)
	consumed := make(chan error, 1)
	go func() {
		consumed <- c.Nodes[0].Consume(cctx, &grid.Consumer{Stream: "orders", Group: "billing", Handle: handle})
	}()

	const writers, each = 8, 150
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := c.Nodes[w%2]
			for i := range each {
				id := w*each + i + 1
				pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				_, err := n.Publish(pctx, "orders", fmt.Sprintf("cust-%d", id%37), []byte(strconv.Itoa(id)))
				cancel()
				mu.Lock()
				if err == nil {
					acked[id] = true
				} else {
					unknown[id] = true
				}
				mu.Unlock()
				if i == each/3 && w == 0 {
					c.Kill(2)
				}
			}
		}()
	}
	wg.Wait()
	// The consumer stops and comes back (a consumer restart) half way.
	stopConsumer()
	if err := <-consumed; !errors.Is(err, context.Canceled) {
		t.Fatalf("Consume: %v", err)
	}
	cctx, stopConsumer = context.WithCancel(ctx)
	defer stopConsumer()
	go func() {
		consumed <- c.Nodes[1].Consume(cctx, &grid.Consumer{Stream: "orders", Group: "billing", Handle: handle})
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		missing := 0
		for id := range acked {
			if got[id] == 0 {
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d acknowledged events never consumed", missing)
		}
		time.Sleep(50 * time.Millisecond)
	}
	stopConsumer()
	<-consumed
	mu.Lock()
	defer mu.Unlock()
	for _, o := range order {
		t.Error("out of order:", o)
	}
	dups := 0
	for id, n := range got {
		if !acked[id] && !unknown[id] {
			t.Fatalf("consumed %d, never published", id)
		}
		dups += n - 1
	}
	if len(acked) < writers*each/2 {
		t.Fatalf("only %d of %d publishes acknowledged", len(acked), writers*each)
	}
	t.Logf("%d acknowledged, %d unknown, %d consumed, %d redelivered", len(acked), len(unknown), len(got), dups)
}

// A registered group that does not keep up holds the stream: publishes
// fail with ErrStreamFull (nothing applied) until it commits, or until it
// is deleted.
func TestStreamFullUntilTheGroupCommits(t *testing.T) {
	c := gridtest.New(t, 2, func(i int, cfg *grid.Config) { cfg.StreamRecords = 8 })
	c.WaitStable(30 * time.Second)
	n := c.Nodes[0]
	ctx := ctxT(t, 30*time.Second)
	// Register the group: a consumer that starts and stops at once.
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	err := n.Consume(rctx, &grid.Consumer{Stream: "s", Group: "slow", Handle: func(grid.StreamEvent) error { return nil }, Partitions: []int{0}})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("registering consumer: %v", err)
	}
	key := keyIn(0, n.Table())
	for i := range 8 {
		if _, err := n.Publish(ctx, "s", key, []byte(strconv.Itoa(i))); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if _, err := n.Publish(ctx, "s", key, []byte("9th")); !errors.Is(err, grid.ErrStreamFull) {
		t.Fatalf("9th publish with a group that committed nothing: %v", err)
	}
	// The group consumes and commits: publishes fit again.
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- n.Consume(cctx, &grid.Consumer{Stream: "s", Group: "slow", Partitions: []int{0}, Handle: func(ev grid.StreamEvent) error { return nil }})
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, err := n.Publish(ctx, "s", key, []byte("9th"))
		if err == nil {
			break
		}
		if !errors.Is(err, grid.ErrStreamFull) || time.Now().After(deadline) {
			t.Fatalf("publish once the group consumes: %v", err)
		}
	}
	cancel()
	<-done
	for i := range 7 {
		if _, err := n.Publish(ctx, "s", key, []byte("more"+strconv.Itoa(i))); err != nil {
			t.Fatalf("publish after the commit %d: %v", i, err)
		}
	}
	if err := n.DeleteGroup(ctx, "s", "slow"); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, err := n.Publish(ctx, "s", key, []byte("free"+strconv.Itoa(i))); err != nil {
			t.Fatalf("publish without groups %d: %v", i, err)
		}
	}
	evs, next, err := n.ReadStream(ctx, "s", 0, 1, 0)
	var te *grid.TrimmedError
	if !errors.As(err, &te) || te.Oldest <= 1 {
		t.Fatalf("reading dropped positions: %d events, next %d, %v", len(evs), next, err)
	}
	evs, _, err = n.ReadStream(ctx, "s", 0, te.Oldest, 0)
	if err != nil || len(evs) != 8 || string(evs[7].Value) != "free19" {
		t.Fatalf("retained tail: %d events, %v", len(evs), err)
	}
}
