package process_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/process"
)

// With Linger, events published one by one shortly after a record share
// the next record: the handler sees them in one step view.
func TestLingerCommitsArrivalsTogether(t *testing.T) {
	var mu sync.Mutex
	views := map[*grid.StepView]int{}
	procs := func() []process.Processor {
		return []process.Processor{{Name: "lingering", Stream: "ling", Linger: time.Second, Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			mu.Lock()
			views[c.View()]++
			mu.Unlock()
			return nil
		}}}
	}
	g := newGrid(t, 2, procs)
	ctx := ctxT(t, 60*time.Second)
	n := g.Nodes[0]
	key := "{ling}"
	handled := func() int {
		mu.Lock()
		defer mu.Unlock()
		total := 0
		for _, k := range views {
			total += k
		}
		return total
	}
	waitHandled := func(want int) {
		for deadline := time.Now().Add(20 * time.Second); handled() < want; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d events handled", handled(), want)
			}
		}
	}
	if _, err := n.Publish(ctx, "ling", key, []byte("0")); err != nil {
		t.Fatal(err)
	}
	waitHandled(1)
	for i := 1; i <= 5; i++ {
		if _, err := n.Publish(ctx, "ling", key, []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitHandled(6)
	mu.Lock()
	defer mu.Unlock()
	if len(views) > 3 {
		t.Fatalf("6 events in %d records (%v): the 5 published within a Linger of the first record should share one", len(views), views)
	}
}
