package grid_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/collocate/grid/grid"
)

// A member paused long enough to be failed over comes back holding its
// copies: its primaries send it only the records it missed (a tail), not
// snapshots, and every replica ends equal to its primary with every
// acknowledged write.
func TestPausedMemberCatchesUpByTail(t *testing.T) {
	c := threeNodes(t)
	ctx := ctxT(t, 60*time.Second)
	m := c.Nodes[0].Map("tail")
	for i := range 2000 {
		if err := m.Put(ctx, fmt.Sprint("k", i), []byte("v0")); err != nil {
			t.Fatal(err)
		}
	}
	paused := c.Nodes[2]
	in0 := paused.Stats()
	paused.StallReplication(true)
	paused.StallLeases(true)

	var mu sync.Mutex
	acked := map[string]string{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mm := c.Nodes[w%2].Map("tail")
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k, v := fmt.Sprint("k", w*500+i%500), fmt.Sprint("w", w, "-", i) // each writer its own keys: the last acknowledged value is the last applied
				wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				if err := mm.Put(wctx, k, []byte(v)); err == nil {
					mu.Lock()
					acked[k] = v
					mu.Unlock()
				}
				cancel()
			}
		}()
	}
	time.Sleep(3 * time.Second) // past the lease: failed over
	paused.StallLeases(false)
	paused.StallReplication(false)
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	c.WaitStable(30 * time.Second)
	if err := c.CheckReplicas(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	in := paused.Stats()
	tails, snaps := in.TailsReceived-in0.TailsReceived, in.SnapshotsReceived-in0.SnapshotsReceived
	over := in.SnapshotsOverCopy - in0.SnapshotsOverCopy
	t.Logf("the paused member took %d tails, %d snapshots (%d of them over a copy it held)", tails, snaps, over)
	if tails == 0 || over > tails/20 {
		t.Fatalf("the paused member's copies were refilled by %d snapshots and %d tails: they should take tails", over, tails)
	}
	for k, v := range acked {
		got, err := paused.Map("tail").Get(ctx, k)
		if err != nil || string(got) != v {
			t.Fatalf("%s = %q (%v), want %q", k, got, err, v)
		}
	}
	_ = grid.ErrNotFound
}
