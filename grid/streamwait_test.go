package grid_test

import (
	"context"
	"testing"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
)

// A local read waiting for its stream is woken by that stream's commit,
// not only by its poll timeout, while other streams of the partition commit
// records too; and the partition's primary moving away ends the wait.
func TestReadLocalWakesForItsStream(t *testing.T) {
	c := gridtest.New(t, 2, nil)
	c.WaitStable(30 * time.Second)
	ctx := ctxT(t, 60*time.Second)
	key := keyIn(0, c.Nodes[0].Table())
	li := -1
	for i, n := range c.Nodes {
		if n.Leads(0) {
			li = i
		}
	}
	if li < 0 {
		t.Fatal("no node leads partition 0")
	}
	lead := c.Nodes[li]
	pos, err := lead.Publish(ctx, "a", key, []byte("first"))
	if err != nil {
		t.Fatal(err)
	}
	for round := range 20 {
		type answer struct {
			le  grid.LocalEvents
			err error
			at  time.Duration
		}
		got := make(chan answer, 1)
		start := time.Now()
		go func() {
			le, err := lead.ReadLocal(ctx, grid.LocalRead{Part: 0, Name: "a", From: pos + 1, Max: 10, Wait: 10 * time.Second})
			got <- answer{le, err, time.Since(start)}
		}()
		time.Sleep(20 * time.Millisecond) // let it wait
		// Other streams' commits do not end the wait.
		for i := range 3 {
			if _, err := lead.Publish(ctx, "b", key, []byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
		}
		if pos, err = lead.Publish(ctx, "a", key, []byte("next")); err != nil {
			t.Fatal(err)
		}
		a := <-got
		if a.err != nil || len(a.le.Events) != 1 || string(a.le.Events[0].Value) != "next" || a.le.Events[0].Position != pos {
			t.Fatalf("round %d: read %+v, %v; want the event at %d", round, a.le.Events, a.err, pos)
		}
		if a.at > 5*time.Second {
			t.Fatalf("round %d: the read took %v: not woken by its stream's commit", round, a.at)
		}
	}
	// A read waiting when the node closes returns at once.
	done := make(chan error, 1)
	go func() {
		_, err := lead.ReadLocal(context.Background(), grid.LocalRead{Part: 0, Name: "a", From: pos + 1, Max: 10, Wait: 30 * time.Second})
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	c.Kill(li)
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a read waiting on a killed node returned no error")
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("a read waiting on a killed node still waits after %v", time.Since(start))
	}
}
