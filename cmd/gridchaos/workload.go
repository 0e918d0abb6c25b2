package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/collocate/grid/client"
)

// progress is one worker's record of successes (ns since t0, ascending).
// Only the worker's goroutine appends; the checks read it after the worker
// stopped.
type progress struct {
	name      string
	wantReads bool    // register workers must show successful reads too
	writes    []int64 // acknowledged writes
	reads     []int64 // successful reads
	ops       int     // attempts of any kind
}

// outcome is what a mutation's answer says about its effect.
type outcome uint8

const (
	acked   outcome = iota // applied exactly once
	unknown                // may or may not have been applied (ErrTimeout, a cut connection, ...)
	refused                // the answer promises nothing was applied
)

func (o outcome) String() string {
	switch o {
	case acked:
		return "acknowledged"
	case unknown:
		return "unknown"
	default:
		return "refused"
	}
}

// classify maps a mutation's error to its outcome. The "nothing applied"
// answers are those the API documents as such (rule 7 of the design:
// never answer them once a mutation may have reached its primary).
func classify(err error) outcome {
	switch {
	case err == nil:
		return acked
	case errors.Is(err, client.ErrUnavailable), errors.Is(err, client.ErrBusy),
		errors.Is(err, client.ErrValueTooLarge), errors.Is(err, client.ErrBadRequest),
		errors.Is(err, client.ErrNotInteger), errors.Is(err, client.ErrOverflow):
		return refused
	default:
		return unknown
	}
}

// workloads are the concurrent workers of a run and their records.
type workloads struct {
	workers  []*progress
	register *registerLog
	set      *setLog
	appends  *appendLog
	counters *counterLog

	stop    chan struct{}
	cancel  context.CancelFunc // ends calls without deadline at stop
	wg      sync.WaitGroup
	clients []*client.Client
}

func (w *workloads) add(name string, wantReads bool) *progress {
	p := &progress{name: name, wantReads: wantReads}
	w.workers = append(w.workers, p)
	return p
}

// stopped reports whether the workloads were told to stop.
func (w *workloads) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

// startWorkloads starts every concurrent workload. Registers and the set
// use clients with a 1 s table refresh and 3 s per call; half the
// appenders and counters use a client with default settings and calls
// without deadline (only the end of the run cancels them): what an
// application gets out of the box.
func (h *harness) startWorkloads(ctx context.Context) (*workloads, error) {
	addrs := h.rpcAddrs()
	wctx, cancel := context.WithCancel(ctx)
	w := &workloads{
		register: &registerLog{},
		set:      &setLog{acked: map[string]string{}},
		appends:  &appendLog{},
		counters: &counterLog{keys: 4, acked: map[string]int{}, unknown: map[string]int{}},
		stop:     make(chan struct{}),
		cancel:   cancel,
	}
	tuned := client.Config{Addrs: addrs, RefreshInterval: time.Second}
	for _, cfg := range []client.Config{tuned, tuned, tuned, {Addrs: addrs}} {
		c, err := client.Dial(ctx, cfg)
		if err != nil {
			w.close()
			return nil, err
		}
		w.clients = append(w.clients, c)
	}
	// Half the appenders and counters use the default client without
	// deadlines; the other half the tuned clients with 3 s per call, whose
	// calls can end on an error (for the honest-outcome check).
	def := w.clients[3]
	for i := range h.cfg.Writers {
		reg := w.add(fmt.Sprintf("register-%d", i), true)
		set := w.add(fmt.Sprintf("set-%d", i), false)
		w.goWorker(func() { h.registerWorker(wctx, w, w.clients[i%3].Map("reg"), i, reg) })
		w.goWorker(func() { h.setWorker(wctx, w, w.clients[(i+1)%3].Map("set"), i, set) })
	}
	pick := func(i int) (*client.Client, time.Duration) {
		if i%2 == 0 {
			return def, 0
		}
		return w.clients[i%3], 3 * time.Second
	}
	for i := range max(2, h.cfg.Writers/2) {
		p := w.add(fmt.Sprintf("append-%d", i), false)
		c, d := pick(i)
		w.goWorker(func() { h.appendWorker(wctx, w, c.Map("append"), i, d, p) })
	}
	for i := range max(2, h.cfg.Writers/4) {
		p := w.add(fmt.Sprintf("counter-%d", i), false)
		c, d := pick(i)
		w.goWorker(func() { h.counterWorker(wctx, w, c.Map("counter"), i, d, p) })
	}
	return w, nil
}

// withDeadline bounds ctx by d (0: not at all).
func withDeadline(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d == 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}

func (w *workloads) goWorker(f func()) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		f()
	}()
}

// halt stops every worker and waits for them: calls without deadline are
// cancelled (their outcome is unknown).
func (w *workloads) halt() {
	close(w.stop)
	w.cancel()
	w.wg.Wait()
	w.close()
}

func (w *workloads) close() {
	for _, c := range w.clients {
		c.Close()
	}
	w.cancel()
}
