package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/collocate/grid/client"
	"github.com/collocate/grid/compute/invoke"
)

// The compute mode's map-reduce data: -entries decimal integers drawn from
// the round's seed, so that the exact answers are known before loading.

const (
	mrMap    = "compute-mr"
	mrPrefix = "a:" // the key.prefix filter's argument: every fourth key
)

// expectation is the exact aggregation of a set of integers.
type expectation struct {
	Count int64 `json:"count"`
	Sum   int64 `json:"sum"`
	Min   int64 `json:"min"`
	Max   int64 `json:"max"`
}

func (e *expectation) add(v int64) {
	if e.Count == 0 || v < e.Min {
		e.Min = v
	}
	if e.Count == 0 || v > e.Max {
		e.Max = v
	}
	e.Count++
	e.Sum += v
}

// mismatch describes how got differs from the exact answer e ("" if it
// is exact): count, integer sum, min and max must match, every value must
// have counted as an integer and none skipped.
func (e expectation) mismatch(got invoke.Agg) string {
	switch {
	case got.Count != e.Count || got.IntSum != e.Sum:
		return fmt.Sprintf("count %d sum %d, want count %d sum %d", got.Count, got.IntSum, e.Count, e.Sum)
	case got.Ints != got.Count || got.Overflow || got.Skipped != 0:
		return fmt.Sprintf("%d of %d values counted as integers, overflow %v, %d skipped", got.Ints, got.Count, got.Overflow, got.Skipped)
	case got.Min != float64(e.Min) || got.Max != float64(e.Max):
		return fmt.Sprintf("min %v max %v, want %d %d", got.Min, got.Max, e.Min, e.Max)
	}
	return ""
}

// mrData is a round's entries: key mrKey(i), value drawn from the seed.
type mrData struct {
	seed   uint64
	n      int
	all    expectation
	prefix expectation // keys starting with mrPrefix
}

func newMRData(seed uint64, n int) *mrData {
	d := &mrData{seed: seed, n: n}
	d.each(func(i int, v int64) {
		d.all.add(v)
		if i%4 == 0 {
			d.prefix.add(v)
		}
	})
	return d
}

// mrKey is entry i's key; i%4 == 0 has mrPrefix.
func mrKey(i int) string { return fmt.Sprintf("%c:%d", "abcd"[i%4], i) }

// each calls f with every entry's index and value, in order (the same
// values on every call).
func (d *mrData) each(f func(i int, v int64)) {
	rng := randNew(d.seed)
	for i := range d.n {
		f(i, rng.Int64N(2_000_001)-1_000_000)
	}
}

// loadMRData writes d through one default client, batch entries per
// PutAll, four batches at a time; a batch that fails is retried (the same
// values: idempotent) up to 5 times.
func loadMRData(ctx context.Context, h *harness, d *mrData, batch int) error {
	c, err := client.Dial(ctx, client.Config{Addrs: h.rpcAddrs()})
	if err != nil {
		return err
	}
	defer c.Close()
	m := c.Map(mrMap)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan map[string][]byte, 2)
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range batches {
				if err := putBatch(lctx, m, b); err != nil {
					errs <- err
					cancel() // the producer stops sending
					return
				}
			}
		}()
	}
	cur := make(map[string][]byte, batch)
	d.each(func(i int, v int64) {
		cur[mrKey(i)] = strconv.AppendInt(nil, v, 10)
		if len(cur) == batch || i == d.n-1 {
			select {
			case batches <- cur:
			case <-lctx.Done():
			}
			cur = make(map[string][]byte, batch)
		}
	})
	close(batches)
	wg.Wait()
	select {
	case err := <-errs:
		return fmt.Errorf("load: %w", err)
	default:
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	n, err := m.Size(ctx)
	if err != nil {
		return fmt.Errorf("load: size: %w", err)
	}
	if n != d.n {
		return fmt.Errorf("load: the map holds %d entries after loading %d (no fault yet)", n, d.n)
	}
	return nil
}

func putBatch(ctx context.Context, m client.Map, b map[string][]byte) error {
	var err error
	for range 5 {
		pctx, cancel := context.WithTimeout(ctx, time.Minute)
		err = m.PutAll(pctx, b)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
	return err
}
