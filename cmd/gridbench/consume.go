package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/client"
)

// The consume workload: -keys events are published to a new stream (named
// after -map and the time) before measuring; then one consumer group reads
// them all, its partitions split between the -clients clients (one
// Consume each; Consume commits the group's position after each batch).
// An operation is one event handled.

// consumeStream names the workload's stream: new on every run, so the
// group reads exactly the events this run published.
func consumeStream(base string) string { return fmt.Sprintf("%s-%d", base, time.Now().UnixNano()) }

// publishAll publishes n events of value to stream from every client, depth
// calls in flight each.
func publishAll(ctx context.Context, cls []*client.Client, depth int, stream string, n int, value []byte) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, len(cls)*depth)
	for _, c := range cls {
		for range depth {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := next.Add(1); i <= int64(n); i = next.Add(1) {
					pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					_, err := c.Publish(pctx, stream, keyName(int(i)), value)
					cancel()
					if err != nil {
						errc <- err
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// measureConsume publishes o.w.keys events, then consumes them with one
// group over every client and returns the consumption's figures (no
// per-operation latency: the events are handed over in batches).
func measureConsume(ctx context.Context, o *options, cls []*client.Client) (result, error) {
	ends, err := cls[0].JournalEnds(ctx)
	if err != nil {
		return result{}, err
	}
	parts := len(ends)
	stream := consumeStream(o.w.mapName)
	if err := publishAll(ctx, cls, o.depth, stream, o.w.keys, o.w.value); err != nil {
		return result{}, fmt.Errorf("publishing %d events: %w", o.w.keys, err)
	}
	limit := o.duration
	if limit <= 0 {
		limit = time.Minute
	}
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var handled atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, len(cls))
	cpu0, err := serverCPU(o.pids)
	if err != nil {
		return result{}, err
	}
	start := time.Now()
	for ci, c := range cls {
		var mine []int
		for p := ci; p < parts; p += len(cls) {
			mine = append(mine, p)
		}
		if len(mine) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c.Consume(cctx, &client.Consumer{Stream: stream, Group: "bench", Partitions: mine, Handle: func(client.StreamEvent) error {
				if handled.Add(1) >= int64(o.w.keys) {
					cancel()
				}
				return nil
			}})
			if err != nil && cctx.Err() == nil {
				errc <- err
				cancel()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	cpu1, err := serverCPU(o.pids)
	if err != nil {
		return result{}, err
	}
	close(errc)
	r := summarize(o, nil, elapsed)
	r.Ops = handled.Load()
	r.OpsPerSec = float64(r.Ops) / elapsed
	if err := <-errc; err != nil {
		r.Errors, r.FirstError = 1, err.Error()
	} else if r.Ops < int64(o.w.keys) {
		r.Errors, r.FirstError = 1, fmt.Sprintf("consumed %d of %d events within %v", r.Ops, o.w.keys, limit)
	}
	if len(o.pids) > 0 && r.Ops > 0 {
		r.ServerCPUusPerOp = float64(cpu1-cpu0) * (1e6 / clockTicks) / float64(r.Ops)
	}
	_ = cls[0].DeleteGroup(ctx, stream, "bench") // release the stream's retention
	return r, nil
}
