package grid_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
)

// setWorkload writes unique keys through every live node until stop closes,
// remembering every acknowledged write.
type setWorkload struct {
	mu    sync.Mutex
	acked map[string]string
	fails atomic.Int64
	wg    sync.WaitGroup
}

func (w *setWorkload) run(c *gridtest.Cluster, nodes []*grid.Node, writers int, stop <-chan struct{}) {
	w.acked = map[string]string{}
	for i := range writers {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			m := nodes[i%len(nodes)].Map("set")
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				key, val := fmt.Sprintf("w%d-%d", i, j), fmt.Sprint(j)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := m.Put(ctx, key, []byte(val))
				cancel()
				if err != nil {
					w.fails.Add(1)
					continue
				}
				w.mu.Lock()
				w.acked[key] = val
				w.mu.Unlock()
			}
		}()
	}
}

func (w *setWorkload) verify(t *testing.T, n *grid.Node) {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	keys := make([]string, 0, len(w.acked))
	for k := range w.acked {
		keys = append(keys, k)
	}
	got, err := n.Map("set").GetAll(ctx, keys)
	if err != nil {
		t.Fatal(err)
	}
	lost := 0
	for k, v := range w.acked {
		if string(got[k]) != v {
			lost++
			if lost < 5 {
				t.Errorf("acknowledged write %s=%s lost (read %q)", k, v, got[k])
			}
		}
	}
	t.Logf("%d acknowledged writes, %d failed attempts, %d lost", len(w.acked), w.fails.Load(), lost)
	if lost > 0 {
		t.Fatalf("%d acknowledged writes lost", lost)
	}
}

func TestKillNodeDuringWritesLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 3, nil)
	c.WaitStable(30 * time.Second)
	// Writers on n0 and n1; n2 is killed mid-stream (it is a primary for
	// about a third of the partitions and a backup for another third).
	stop := make(chan struct{})
	var w setWorkload
	w.run(c, []*grid.Node{c.Nodes[0], c.Nodes[1]}, 8, stop)
	time.Sleep(500 * time.Millisecond)
	c.Kill(2)
	time.Sleep(3 * time.Second)
	close(stop)
	w.wg.Wait()
	c.WaitStable(30 * time.Second)
	w.verify(t, c.Nodes[0])
	if err := c.CheckReplicas(10 * time.Second); err != nil {
		t.Fatal(err)
	}

	// The killed node comes back with the same name as a fresh member and is
	// filled by migration; nothing is lost on the way.
	c.Restart(2)
	c.WaitStable(30 * time.Second)
	w.verify(t, c.Nodes[2])
	if err := c.CheckReplicas(10 * time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestKillAuthorityLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 4, nil)
	c.WaitStable(30 * time.Second)
	leader := -1
	for i, n := range c.Nodes {
		if n.Cluster().IsLeader() {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no authority leader")
	}
	ctx := ctxT(t, 30*time.Second)
	other := c.Nodes[(leader+1)%4]
	for i := range 200 {
		if err := other.Map("m").Put(ctx, fmt.Sprint(i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	c.Kill(leader)
	c.WaitStable(30 * time.Second)
	for i := range 200 {
		if v, err := other.Map("m").Get(ctx, fmt.Sprint(i)); err != nil || string(v) != "v" {
			t.Fatalf("key %d after leader kill: %q %v", i, v, err)
		}
	}
	if err := c.CheckReplicas(10 * time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestGracefulLeaveHandsOverWithoutErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 3, nil)
	c.WaitStable(30 * time.Second)
	stop := make(chan struct{})
	var w setWorkload
	w.run(c, []*grid.Node{c.Nodes[0], c.Nodes[2]}, 8, stop)
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	c.Leave(1)
	t.Logf("graceful leave took %v", time.Since(start))
	time.Sleep(300 * time.Millisecond)
	close(stop)
	w.wg.Wait()
	if f := w.fails.Load(); f != 0 {
		t.Fatalf("%d writes failed during a graceful leave", f)
	}
	c.WaitStable(30 * time.Second)
	w.verify(t, c.Nodes[2])
	if err := c.CheckReplicas(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 10*time.Second)
	if _, err := c.Nodes[0].Map("set").Get(ctx, "missing"); !errors.Is(err, grid.ErrNotFound) {
		t.Fatal(err)
	}
}

// A node cut off from the authority (here: the other two are dead, so no
// raft majority) stops serving once its read lease lapses: a minority side
// neither reads nor writes.
func TestMinorityStopsServingWhenLeaseLapses(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 3, nil)
	c.WaitStable(30 * time.Second)
	ctx := ctxT(t, 30*time.Second)
	m := c.Nodes[0].Map("m")
	keys := keysOwnedBy(c.Nodes[0], 2) // n0 is their primary: only the lease stops it
	if err := m.Put(ctx, keys[0], []byte("v")); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, keys[0]); err != nil {
		t.Fatal(err)
	}
	c.Kill(1)
	c.Kill(2)
	lease := c.Nodes[0].Cluster().LeaseDuration()
	deadline := time.Now().Add(lease + 2*time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		_, gerr := m.Get(rctx, keys[0])
		perr := m.Put(rctx, keys[1], []byte("v"))
		cancel()
		if gerr != nil && perr != nil {
			if !strings.Contains(gerr.Error(), "lease") || !strings.Contains(perr.Error(), "lease") {
				t.Fatalf("refused, but not for want of a lease: get %v; put %v", gerr, perr)
			}
			t.Logf("refusing: get %v; put %v", gerr, perr)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("minority node still serves %v after its lease (%v) should have lapsed", time.Since(deadline.Add(-lease-2*time.Second)), lease)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
