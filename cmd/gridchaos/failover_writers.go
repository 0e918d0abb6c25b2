package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/client"
)

// fwriter is one failover writer: it rewrites its key, in a partition of
// its own, as fast as the grid acknowledges. Its goroutine appends; the
// measurement reads under mu.
type fwriter struct {
	key       string
	partition int

	mu   sync.Mutex
	acks []int64   // acknowledged writes, ns since the harness' t0
	errs []errStat // failed writes
}

type errStat struct {
	at   int64
	kind string
}

// writerPool is the failover writers and the default client they share
// (client.Config{Addrs: ...}, calls without deadline: the client's
// RequestTimeout applies).
type writerPool struct {
	writers []*fwriter
	c       *client.Client
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// keysPerPartition returns, for each of n targets spread evenly over the
// partitions, a key of prefix in that partition.
func keysPerPartition(prefix string, n, partitions int) ([]string, []int) {
	keys := make([]string, n)
	parts := make([]int, n)
	want := map[int]int{}
	for i := range n {
		parts[i] = i * partitions / n
		want[parts[i]] = i
	}
	left := n
	for j := 0; left > 0; j++ {
		k := fmt.Sprintf("%s-%d", prefix, j)
		if i, ok := want[affinity.Partition(k, partitions)]; ok && keys[i] == "" {
			keys[i] = k
			left--
		}
	}
	return keys, parts
}

// startWriters dials one default client and starts n writers.
func startWriters(ctx context.Context, h *harness, n, partitions int) (*writerPool, error) {
	c, err := client.Dial(ctx, client.Config{Addrs: h.rpcAddrs()})
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	wp := &writerPool{c: c, cancel: cancel}
	keys, parts := keysPerPartition("w", n, partitions)
	m := c.Map("failover")
	for i := range n {
		w := &fwriter{key: keys[i], partition: parts[i]}
		wp.writers = append(wp.writers, w)
		wp.wg.Add(1)
		go func() {
			defer wp.wg.Done()
			w.run(wctx, m, h.now)
		}()
	}
	return wp, nil
}

// stop ends the writers (a call in flight is cancelled) and the client.
func (wp *writerPool) stop() {
	wp.cancel()
	wp.wg.Wait()
	wp.c.Close()
}

func (w *fwriter) run(ctx context.Context, m client.Map, now func() int64) {
	for i := 0; ctx.Err() == nil; i++ {
		err := m.Put(ctx, w.key, []byte(strconv.Itoa(i)))
		t := now()
		if ctx.Err() != nil {
			return
		}
		w.mu.Lock()
		if err == nil {
			w.acks = append(w.acks, t)
		} else {
			w.errs = append(w.errs, errStat{at: t, kind: errKind(err)})
		}
		w.mu.Unlock()
		if err != nil {
			// An application would retry; not in a tight loop.
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
}

// errKind names an error for the per-kind counts.
func errKind(err error) string {
	for _, k := range []struct {
		err  error
		name string
	}{
		{client.ErrTimeout, "timeout"}, {client.ErrUnavailable, "unavailable"}, {client.ErrBusy, "busy"},
		{client.ErrNotOwner, "not_owner"}, {client.ErrReplication, "replication"}, {client.ErrClosed, "closed"},
		{context.DeadlineExceeded, "deadline"}, {context.Canceled, "canceled"},
	} {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	s := err.Error()
	if len(s) > 60 {
		s = s[:60]
	}
	return "other: " + s
}

// writerWindow is what the writers saw in [from, to].
type writerWindow struct {
	maxGap  int64          // longest wait between acknowledged writes spanning the window
	gaps    []int64        // per writer
	acks    int            // acknowledged writes in the window
	errs    map[string]int // errors by kind in the window
	stalled []int          // writers whose wait passed stallThreshold (unavail.go, 0.5 s)
}

// window measures the writers over [from, to]: per writer, the longest
// interval between consecutive acknowledged writes that ends after from
// (the first one starts at the last acknowledgement before from), up to the
// first acknowledgement after to (or now, for a writer still waiting).
func (wp *writerPool) window(from, to, now int64) writerWindow {
	ww := writerWindow{errs: map[string]int{}}
	for i, w := range wp.writers {
		w.mu.Lock()
		g, n := gapIn(w.acks, from, to, now)
		for _, e := range w.errs {
			if e.at > from && e.at <= to {
				ww.errs[e.kind]++
			}
		}
		w.mu.Unlock()
		ww.gaps = append(ww.gaps, g)
		ww.acks += n
		ww.maxGap = max(ww.maxGap, g)
		if g > int64(stallThreshold) {
			ww.stalled = append(ww.stalled, i)
		}
	}
	return ww
}

// gapIn returns the longest gap of acks (ascending) over [from, to] as
// window describes it, and the acknowledgements in the window.
func gapIn(acks []int64, from, to, now int64) (int64, int) {
	i, _ := slices.BinarySearch(acks, from+1) // first ack after from
	prev := from
	if i > 0 {
		prev = acks[i-1]
	}
	var best int64
	n := 0
	for ; i < len(acks); i++ {
		best = max(best, acks[i]-prev)
		prev = acks[i]
		if acks[i] > to {
			return best, n
		}
		n++
	}
	return max(best, now-prev), n
}

// trim forgets what happened before t, keeping the last acknowledgement
// before it (the start of a gap that spans t).
func (wp *writerPool) trim(t int64) {
	for _, w := range wp.writers {
		w.mu.Lock()
		i, _ := slices.BinarySearch(w.acks, t)
		if i > 1 {
			w.acks = slices.Delete(w.acks, 0, i-1)
		}
		j := 0
		for j < len(w.errs) && w.errs[j].at < t {
			j++
		}
		w.errs = slices.Delete(w.errs, 0, j)
		w.mu.Unlock()
	}
}

// idleSince returns how many writers have no acknowledged write after t.
func (wp *writerPool) idleSince(t int64) int {
	n := 0
	for _, w := range wp.writers {
		w.mu.Lock()
		if len(w.acks) == 0 || w.acks[len(w.acks)-1] <= t {
			n++
		}
		w.mu.Unlock()
	}
	return n
}
