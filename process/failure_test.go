package process_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/process"
)

// gate blocks handlers of one event value until opened, and reports
// when one is blocked.
type gate struct {
	value   string
	entered chan struct{}
	open    chan struct{}
	once    sync.Once
}

func newGate(value string) *gate {
	return &gate{value: value, entered: make(chan struct{}, 16), open: make(chan struct{})}
}

func (g *gate) wait(ctx context.Context, v string) {
	if v != g.value {
		return
	}
	select {
	case g.entered <- struct{}{}:
	default:
	}
	select {
	case <-g.open:
	case <-ctx.Done():
	}
}

func (g *gate) release() { g.once.Do(func() { close(g.open) }) }

// ownerOf is the index of the node leading key's partition.
func (g *grid3) ownerOf(t *testing.T, key string) int {
	t.Helper()
	part := affinity.Partition(key, g.Nodes[0].Partitions())
	for i, n := range g.Nodes {
		if n != nil && n.Leads(part) {
			return i
		}
	}
	t.Fatalf("no node leads partition %d", part)
	return -1
}

// The primary is SIGKILLed while a handler is in the middle of an event:
// the promoted backup handles it again from the committed position, and
// its effect and everything after it applies once.
func TestKillDuringHandler(t *testing.T) {
	gt := newGate("slow")
	var g *grid3
	g = newGrid(t, 3, func() []process.Processor {
		return []process.Processor{{Name: "p", Stream: "s", Handler: func(ctx context.Context, c *process.Context, e process.Event) error {
			gt.wait(ctx, string(e.Value))
			count(c, "done", "{acct}"+string(e.Value))
			c.Emit("out", "{other}"+string(e.Value), e.Value)
			return nil
		}}, {Name: "q", Stream: "out", Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			count(c, "done2", e.Key)
			return nil
		}}}
	})
	ctx := ctxT(t, 90*time.Second)
	owner := g.ownerOf(t, "{acct}")
	pub := g.Nodes[(owner+1)%3]
	for _, v := range []string{"a", "slow", "b"} {
		if _, err := pub.Publish(ctx, "s", "{acct}", []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-gt.entered:
	case <-ctx.Done():
		t.Fatal("the handler never reached the slow event")
	}
	g.kill(owner)
	gt.release() // the new primary's run goes through
	for _, v := range []string{"a", "slow", "b"} {
		waitFor(t, 40*time.Second, v+" handled at both stages", func() bool {
			x, _ := pub.Map("done").Get(ctx, "{acct}"+v)
			y, _ := pub.Map("done2").Get(ctx, "{other}"+v)
			return len(x) > 0 && len(y) > 0
		})
	}
	time.Sleep(time.Second) // anything applied twice would show by now
	for _, v := range []string{"a", "slow", "b"} {
		x, _ := pub.Map("done").Get(ctx, "{acct}"+v)
		y, _ := pub.Map("done2").Get(ctx, "{other}"+v)
		if string(x) != "1" || string(y) != "1" {
			t.Fatalf("%s: stage 1 %q, stage 2 %q: want 1 and 1", v, x, y)
		}
	}
}

// The primary stops renewing its lease (a paused process as the others
// see it) while its handler is in the middle of an event: it is failed
// over, the new primary handles the event, and when the old one's handler
// returns, its commit fails: the effect applies once.
func TestDeposedPrimaryCommitsNothing(t *testing.T) {
	gt := newGate("slow")
	g := newGrid(t, 3, func() []process.Processor {
		return []process.Processor{{Name: "p", Stream: "s", Handler: func(ctx context.Context, c *process.Context, e process.Event) error {
			gt.wait(ctx, string(e.Value))
			count(c, "done", "{acct}"+string(e.Value))
			return nil
		}}}
	})
	ctx := ctxT(t, 90*time.Second)
	owner := g.ownerOf(t, "{acct}")
	pub := g.Nodes[(owner+1)%3]
	if _, err := pub.Publish(ctx, "s", "{acct}", []byte("slow")); err != nil {
		t.Fatal(err)
	}
	<-gt.entered
	g.Nodes[owner].StallLeases(true)
	g.Nodes[owner].StallReplication(true)
	waitFor(t, 30*time.Second, "another node to lead the partition", func() bool {
		for i, n := range g.Nodes {
			if i != owner && n.Leads(affinity.Partition("{acct}", n.Partitions())) {
				return true
			}
		}
		return false
	})
	gt.release() // both handlers go on: only one may commit
	waitFor(t, 30*time.Second, "slow handled", func() bool {
		v, _ := pub.Map("done").Get(ctx, "{acct}slow")
		return len(v) > 0
	})
	g.Nodes[owner].StallLeases(false)
	g.Nodes[owner].StallReplication(false)
	time.Sleep(2 * time.Second)
	if v, _ := pub.Map("done").Get(ctx, "{acct}slow"); string(v) != "1" {
		t.Fatalf("slow applied %q times, want 1", v)
	}
}

// A processor on a map's change feed handles every change, including the
// several changes of one record (a PutAll's entries of one partition share
// its position), each once.
func TestMapFeedProcessor(t *testing.T) {
	g := newGrid(t, 3, func() []process.Processor {
		return []process.Processor{{Name: "audit", Map: "accounts", MaxBatch: 4, Handler: func(_ context.Context, c *process.Context, e process.Event) error {
			count(c, "audit", e.Key+"/"+e.Kind.String())
			return nil
		}}}
	})
	ctx := ctxT(t, 60*time.Second)
	nd := g.Nodes[0]
	m := nd.Map("accounts")
	entries := map[string][]byte{}
	for i := range 10 {
		entries["{acct}"+strconv.Itoa(i)] = []byte("1")
	}
	if err := m.PutAll(ctx, entries); err != nil { // one record: 10 events at one position
		t.Fatal(err)
	}
	if err := m.Put(ctx, "{acct}0", []byte("2")); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Delete(ctx, "{acct}1"); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"{acct}0/updated": "1", "{acct}1/removed": "1"}
	for i := range 10 {
		want["{acct}"+strconv.Itoa(i)+"/added"] = "1"
	}
	waitFor(t, 30*time.Second, "every change audited", func() bool {
		for k := range want {
			if v, _ := nd.Map("audit").Get(ctx, k); len(v) == 0 {
				return false
			}
		}
		return true
	})
	time.Sleep(500 * time.Millisecond)
	for k, w := range want {
		if v, _ := nd.Map("audit").Get(ctx, k); string(v) != w {
			t.Fatalf("%s audited %q times, want %s", k, v, w)
		}
	}
}
