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
