package grid_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
)

// Adversarial tests of the journal (issue 12 review).

// A handler that fails on the third of five records of one partition,
// delivered in one batch: Positions advance past the two it accepted, so
// the resumed Listen hears 3, 4, 5 once each and not 1 and 2 again.
func TestListenerHandlerErrorMidBatchNoDuplicate(t *testing.T) {
	c := gridtest.New(t, 1, nil)
	c.WaitStable(30 * time.Second)
	n := c.Nodes[0]
	ctx := ctxT(t, 30*time.Second)
	ends, err := n.JournalEnds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m := n.Map("mb")
	for v := 1; v <= 5; v++ {
		if err := m.Put(ctx, "k", []byte(strconv.Itoa(v))); err != nil {
			t.Fatal(err)
		}
	}
	part := affinity.Partition("k", n.Partitions())
	errStop := errors.New("stop")
	var mu sync.Mutex
	var heardVals []int
	refused := false
	l := &grid.Listener{Map: "mb", Positions: ends, OnEvent: func(ev grid.Event) error {
		mu.Lock()
		defer mu.Unlock()
		v, _ := strconv.Atoi(string(ev.Value))
		if v == 3 && !refused {
			refused = true
			return errStop
		}
		heardVals = append(heardVals, v)
		return nil
	}}
	if err := n.Listen(ctx, l); !errors.Is(err, errStop) {
		t.Fatalf("Listen: %v", err)
	}
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- n.Listen(lctx, l) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		last := 0
		if len(heardVals) > 0 {
			last = heardVals[len(heardVals)-1]
		}
		mu.Unlock()
		if last == 5 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("resumed Listen: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []int{1, 2, 3, 4, 5}
	if len(heardVals) != len(want) {
		t.Fatalf("partition %d: heard %v, want %v (each once)", part, heardVals, want)
	}
	for i := range want {
		if heardVals[i] != want[i] {
			t.Fatalf("partition %d: heard %v, want %v (each once)", part, heardVals, want)
		}
	}
}

// A listener hears each commit promptly: a journal read that found
// nothing must not miss the wake of a commit that lands between its look
// and its registration as a waiter (it would sleep out its whole poll).
func TestListenerWakesPromptlyOnEachCommit(t *testing.T) {
	c := gridtest.New(t, 1, nil)
	c.WaitStable(30 * time.Second)
	n := c.Nodes[0]
	ctx := ctxT(t, 60*time.Second)
	ends, err := n.JournalEnds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	heardCh := make(chan struct{}, 1)
	l := &grid.Listener{Map: "wake", Positions: ends, OnEvent: func(grid.Event) error {
		heardCh <- struct{}{}
		return nil
	}}
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- n.Listen(lctx, l) }()
	defer func() {
		cancel()
		<-done
	}()
	m := n.Map("wake")
	var slow []time.Duration
	for i := range 300 {
		start := time.Now()
		if err := m.Put(ctx, strconv.Itoa(i), []byte("v")); err != nil {
			t.Fatal(err)
		}
		select {
		case <-heardCh:
		case <-time.After(10 * time.Second):
			t.Fatalf("write %d never heard", i)
		}
		if d := time.Since(start); d > time.Second {
			slow = append(slow, d)
		}
	}
	if len(slow) > 0 {
		t.Fatalf("%d of 300 commits heard only after %v: a journal read missed their wake", len(slow), slow)
	}
}
