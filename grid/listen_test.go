package grid_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
)

// keyHistory is what writers did to each key: the values acknowledged,
// and those whose outcome is unknown, in the order they were written.
type keyHistory struct {
	mu      sync.Mutex
	acked   map[string][]int
	unknown map[string]map[int]bool
}

func (h *keyHistory) add(key string, v int, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil {
		h.acked[key] = append(h.acked[key], v)
		return
	}
	if h.unknown[key] == nil {
		h.unknown[key] = map[int]bool{}
	}
	h.unknown[key][v] = true
}

// heard is what a listener received per key, and the positions per
// partition.
type heard struct {
	mu     sync.Mutex
	values map[string][]int
	last   map[int]uint64
	errs   []string
}

func (h *heard) onEvent(ev grid.Event) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ev.Position < h.last[ev.Partition] {
		h.errs = append(h.errs, fmt.Sprintf("partition %d went back from %d to %d", ev.Partition, h.last[ev.Partition], ev.Position))
	}
	h.last[ev.Partition] = ev.Position
	if ev.Kind != grid.EventAdded && ev.Kind != grid.EventUpdated {
		h.errs = append(h.errs, fmt.Sprintf("%s: unexpected %v", ev.Key, ev.Kind))
		return nil
	}
	v, _ := strconv.Atoi(string(ev.Value))
	h.values[ev.Key] = append(h.values[ev.Key], v)
	return nil
}

// check compares, key by key, what was heard with what was written: every
// acknowledged value in order, nothing twice, nothing that was never
// written, and unknown outcomes at most once in their place.
func check(t *testing.T, w *keyHistory, h *heard) {
	t.Helper()
	for _, e := range h.errs {
		t.Error(e)
	}
	for key, acked := range w.acked {
		got := h.values[key]
		i := 0
		for _, v := range got {
			switch {
			case i < len(acked) && v == acked[i]:
				i++
			case w.unknown[key][v]:
			default:
				t.Fatalf("%s: heard %v, acknowledged %v (unknown %v): %d out of place", key, got, acked, w.unknown[key], v)
			}
		}
		if i != len(acked) {
			t.Fatalf("%s: heard %v, missing acknowledged %v", key, got, acked[i:])
		}
		for j := 1; j < len(got); j++ {
			if got[j] <= got[j-1] {
				t.Fatalf("%s: heard %v: duplicate or out of order", key, got)
			}
		}
	}
}

// A listener's sequence per key equals the committed history while the
// primary of half the keys is killed: no gap, no duplicate, in order.
func TestListenerThroughPrimaryKill(t *testing.T) {
	c := gridtest.New(t, 3, nil)
	c.WaitStable(30 * time.Second)
	victim := c.Nodes[2]
	tab := victim.Table()
	var keys []string
	for i := 0; len(keys) < 16; i++ {
		k := fmt.Sprintf("lk%d", i)
		onVictim := tab.Partitions[affinity.Partition(k, victim.Partitions())].Primary == victim.Name()
		if onVictim == (len(keys)%2 == 0) {
			keys = append(keys, k)
		}
	}
	h := &heard{values: map[string][]int{}, last: map[int]uint64{}}
	ends, err := c.Nodes[0].JournalEnds(ctxT(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	l := &grid.Listener{Map: "lm", Positions: ends, OnEvent: h.onEvent}
	lctx, stopListen := context.WithCancel(context.Background())
	listened := make(chan error, 1)
	go func() { listened <- c.Nodes[0].Listen(lctx, l) }()

	w := &keyHistory{acked: map[string][]int{}, unknown: map[string]map[int]bool{}}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for wi, k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := c.Nodes[wi%2].Map("lm")
			for v := 1; ; v++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := m.Put(ctx, k, []byte(strconv.Itoa(v)))
				cancel()
				w.add(k, v, err)
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	c.Kill(2)
	time.Sleep(2500 * time.Millisecond)
	close(stop)
	wg.Wait()

	// Wait until the listener heard the last acknowledged value of every key.
	deadline := time.Now().Add(20 * time.Second)
	for {
		h.mu.Lock()
		caught := true
		for k, acked := range w.acked {
			got := h.values[k]
			if len(got) == 0 || got[len(got)-1] < acked[len(acked)-1] {
				caught = false
			}
		}
		h.mu.Unlock()
		if caught {
			break
		}
		if time.Now().After(deadline) {
			break // check reports what is missing
		}
		time.Sleep(50 * time.Millisecond)
	}
	stopListen()
	if err := <-listened; !errors.Is(err, context.Canceled) {
		t.Fatalf("Listen ended with %v", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	check(t, w, h)
	total := 0
	for _, a := range w.acked {
		total += len(a)
	}
	if total < 100 {
		t.Fatalf("only %d acknowledged writes: the test did not exercise much", total)
	}
	t.Logf("%d acknowledged writes on %d keys, %d unknown outcomes, all heard in order", total, len(keys), len(w.unknown))
}

// A listener whose position is no longer retained is told so: Listen
// fails with the gap (positions kept before it), or OnGap hears it and
// listening goes on from the oldest retained position.
func TestListenerToldOfGap(t *testing.T) {
	c := gridtest.New(t, 2, func(i int, cfg *grid.Config) { cfg.JournalRecords = 8 })
	c.WaitStable(30 * time.Second)
	n := c.Nodes[0]
	ctx := ctxT(t, 30*time.Second)
	m := n.Map("gap")
	ends, err := n.JournalEnds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for v := 1; v <= 50; v++ {
		if err := m.Put(ctx, "k", []byte(strconv.Itoa(v))); err != nil {
			t.Fatal(err)
		}
	}
	part := affinity.Partition("k", n.Partitions())
	from := func() []uint64 { return append([]uint64(nil), ends...) }

	l := &grid.Listener{Map: "gap", Positions: from(), OnEvent: func(grid.Event) error { return nil }}
	err = n.Listen(ctx, l)
	var te *grid.TrimmedError
	if !errors.As(err, &te) || te.Partition != part || te.Asked != ends[part] || te.Oldest <= ends[part] {
		t.Fatalf("Listen without OnGap: %v", err)
	}
	if l.Positions[part] != ends[part] {
		t.Fatalf("position moved past the gap to %d", l.Positions[part])
	}

	var gaps []*grid.TrimmedError
	var got []int
	lctx, cancel := context.WithCancel(ctx)
	l = &grid.Listener{Map: "gap", Positions: from(),
		OnGap: func(g *grid.TrimmedError) error { gaps = append(gaps, g); return nil },
		OnEvent: func(ev grid.Event) error {
			v, _ := strconv.Atoi(string(ev.Value))
			if got = append(got, v); v == 50 {
				cancel()
			}
			return nil
		}}
	if err := n.Listen(lctx, l); !errors.Is(err, context.Canceled) {
		t.Fatalf("Listen with OnGap: %v", err)
	}
	if len(gaps) != 1 || gaps[0].Partition != part {
		t.Fatalf("gaps %v", gaps)
	}
	if len(got) == 0 || len(got) > 8 || got[len(got)-1] != 50 {
		t.Fatalf("after the gap heard %v, want the retained tail ending at 50", got)
	}
	for i := 1; i < len(got); i++ {
		if got[i] != got[i-1]+1 {
			t.Fatalf("after the gap heard %v: not contiguous", got)
		}
	}
}

// A listener started at JournalEnds hears only what is committed after
// that call, and its positions resume a second Listen where the first
// stopped: nothing twice, nothing missed.
func TestListenerFromEndsAndResume(t *testing.T) {
	c := gridtest.New(t, 2, nil)
	c.WaitStable(30 * time.Second)
	n := c.Nodes[1]
	ctx := ctxT(t, 30*time.Second)
	m := c.Nodes[0].Map("now")
	if err := m.Put(ctx, "before", []byte("0")); err != nil {
		t.Fatal(err)
	}
	ends, err := n.JournalEnds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := m.Put(ctx, fmt.Sprint("after", i), []byte("1")); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var keys []string
	var refused bool
	errRefused := errors.New("refused")
	heardN := func() int { mu.Lock(); defer mu.Unlock(); return len(keys) }
	l := &grid.Listener{Map: "now", Positions: ends}
	l.OnEvent = func(ev grid.Event) error {
		mu.Lock()
		defer mu.Unlock()
		if len(keys) == 2 && !refused {
			// Refuse the third: Listen stops, and the refused event
			// comes again on resume.
			refused = true
			return errRefused
		}
		keys = append(keys, ev.Key)
		return nil
	}
	if err := n.Listen(ctx, l); !errors.Is(err, errRefused) {
		t.Fatal(err)
	}
	// Resume with the same positions.
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- n.Listen(lctx, l) }()
	for deadline := time.Now().Add(10 * time.Second); heardN() < 5 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // a duplicate would arrive by now
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("resumed Listen: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	seen := map[string]int{}
	for _, k := range keys {
		seen[k]++
	}
	if seen["before"] != 0 {
		t.Fatalf("heard a write committed before JournalEnds: %v", keys)
	}
	for i := range 5 {
		if k := fmt.Sprint("after", i); seen[k] != 1 {
			t.Fatalf("%s heard %d times: %v", k, seen[k], keys)
		}
	}
}
