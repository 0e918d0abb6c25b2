package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/client"
	"github.com/collocate/grid/process/builtin"
)

// The process mode's input: the planned events and the publishers that
// publish them, as far as the faults let them (the gate), through one
// default client.

// chainEvent is one planned event.
type chainEvent struct {
	id     string
	bucket int
	amount int64
}

// hotRange sends three of every four events from from up to to into one
// bucket: its partition gets a backlog of many batches.
type hotRange struct{ from, to, bucket int }

// chainPlan draws a round's events: unique ids, amounts 1..1000 from seed,
// buckets in turn but for the hot ranges; the last idle buckets only in
// the first tenth and the last fiftieth of the events.
func chainPlan(seed uint64, n, buckets, idle int, hot []hotRange) []chainEvent {
	rng := randNew(seed)
	busy := buckets - idle
	head, tail := n/10, n-n/50
	evs := make([]chainEvent, n)
	for i := range evs {
		b := i % busy
		if i < head || i >= tail {
			b = i % buckets
		}
		for _, r := range hot {
			if i >= r.from && i < r.to && i%4 != 0 {
				b = r.bucket
			}
		}
		evs[i] = chainEvent{id: fmt.Sprintf("e%06d", i), bucket: b, amount: 1 + rng.Int64N(1000)}
	}
	return evs
}

// Outcomes of an event's publish.
const (
	cNone    = iota // not published (the round ended first)
	cAcked          // acknowledged
	cUnknown        // failed with an error that leaves the outcome open
	cRefused        // refused every time (nothing applied)
)

// publishAttempts bounds the attempts at one event refused with "nothing
// applied" (ErrUnavailable, ErrStreamFull, ErrBusy), each with the same id.
const publishAttempts = 100

// chainPub is one event's publish.
type chainPub struct {
	outcome  int
	kind     string // the last error's kind
	attempts int
}

// chainPublishers publish the events of evs in order of their index, up to
// limit (the faults move it on).
type chainPublishers struct {
	evs  []chainEvent
	pubs []chainPub // by event; written only by the publisher that took the index

	next     atomic.Int64 // the next index to take
	limit    atomic.Int64 // indexes below it may be published
	finished atomic.Int64 // events with an outcome
	acked    atomic.Int64
	fast     atomic.Bool // a burst: no pace
	started  atomic.Int64
	wg       sync.WaitGroup

	mu   sync.Mutex
	errs map[string]int // failed attempts by kind
}

func newChainPublishers(evs []chainEvent) *chainPublishers {
	return &chainPublishers{evs: evs, pubs: make([]chainPub, len(evs)), errs: map[string]int{}}
}

// allow lets the events below n be published.
func (p *chainPublishers) allow(n int) {
	n = min(n, len(p.evs))
	for {
		cur := p.limit.Load()
		if int64(n) <= cur || p.limit.CompareAndSwap(cur, int64(n)) {
			return
		}
	}
}

// waitFinished waits until n events (or all allowed ones) have an outcome,
// or ctx ends or d passes; it reports whether they have.
func (p *chainPublishers) waitFinished(ctx context.Context, n int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for p.finished.Load() < int64(min(n, len(p.evs))) {
		if ctx.Err() != nil || time.Now().After(deadline) {
			return false
		}
		sleepCtx(ctx, 5*time.Millisecond)
	}
	return true
}

// run publishes until every event is taken or ctx ends; each publish call
// gets timeout (0: none, the client's RequestTimeout applies).
func (p *chainPublishers) run(ctx context.Context, c *client.Client, pace, timeout time.Duration, now func() int64) {
	defer p.wg.Done()
	for ctx.Err() == nil {
		i := p.next.Add(1) - 1
		if i >= int64(len(p.evs)) {
			return
		}
		for i >= p.limit.Load() {
			if ctx.Err() != nil {
				return
			}
			sleepCtx(ctx, 5*time.Millisecond)
		}
		p.started.CompareAndSwap(0, now())
		p.publish(ctx, c, int(i), timeout)
		if !p.fast.Load() {
			sleepCtx(ctx, pace)
		}
	}
}

// publish publishes event i until it is acknowledged, fails with an open
// outcome, or was refused publishAttempts times.
func (p *chainPublishers) publish(ctx context.Context, c *client.Client, i int, timeout time.Duration) {
	ev, pb := p.evs[i], &p.pubs[i]
	defer p.finished.Add(1)
	for {
		pb.attempts++
		cctx, cancel := ctx, context.CancelFunc(func() {})
		if timeout > 0 {
			cctx, cancel = context.WithTimeout(ctx, timeout)
		}
		_, err := c.Publish(cctx, builtin.ChainIn, builtin.InKey(ev.id), builtin.Value(ev.id, ev.bucket, ev.amount))
		cancel()
		if err == nil {
			pb.outcome = cAcked
			p.acked.Add(1)
			return
		}
		pb.kind = errKind(err)
		if errors.Is(err, client.ErrStreamFull) {
			pb.kind = "stream_full"
		}
		p.mu.Lock()
		p.errs[pb.kind]++
		p.mu.Unlock()
		refused := errors.Is(err, client.ErrUnavailable) || errors.Is(err, client.ErrStreamFull) || errors.Is(err, client.ErrBusy)
		if !refused {
			pb.outcome = cUnknown
			return
		}
		if pb.attempts >= publishAttempts || ctx.Err() != nil {
			pb.outcome = cRefused
			return
		}
		sleepCtx(ctx, time.Duration(min(pb.attempts, 10))*50*time.Millisecond)
	}
}

// errors returns the failed attempts by kind.
func (p *chainPublishers) errors() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.errs)
}
