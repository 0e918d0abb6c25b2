package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/client"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/process/builtin"
)

// The process-* workloads measure gridnode's built-in event processors
// (gridnode -processors chain,single; package process/builtin): -keys
// events are published to the processors' input stream by the -clients x
// -depth writers, and the run ends when every stage has handled them all:
// after the last Publish, no member reports lag for any stage (GET
// /v1/processors on every member, -http) and, for the chain, the sum of its
// projections (every event adds 1 to its bucket's) grew by exactly -keys.
// The members' handled counts are not used: a step whose outcome was
// unknown to its run (a timeout) may have committed without being counted.
//
//   - end to end (default): from the first Publish to the poll that sees
//     every event handled; with the event latency of the first stage, from
//     a Publish call to the first poll that sees its partition's position
//     past it (so it is rounded up to the poll interval, -poll).
//   - -drain: the first stage is paused on every member, the events are
//     published, then it is resumed and the drain alone is timed (from the
//     resume to the poll that sees every event handled): processing
//     throughput without publishing.
//
// Both report the replicated records written in the measured window (the
// growth of every partition's journal end), hence the events handled per
// record a processor achieved.

// Process workloads.
const (
	workloadProcSingle = "process-single" // builtin "single": one stage, counts each event under its key
	workloadProcChain  = "process-chain"  // builtin "chain": two stages through the outbox
)

// chainBuckets spreads the chain's second stage: event i goes to bucket
// i % chainBuckets, a projection key in the bucket's partition.
const chainBuckets = 1024

// procSpec is what a process workload publishes and which processors
// handle it.
type procSpec struct {
	stream string
	first  string   // reads stream (paused for -drain)
	stages []string // every processor an event passes through, in order
	// event returns event i's key and value.
	event func(i int) (string, []byte)
	// projections, for the chain, sums its projections (nil: none).
	projections func(ctx context.Context, c *client.Client) (int64, error)
}

func procSpecFor(w *workload) procSpec {
	if w.name == workloadProcChain {
		return procSpec{stream: builtin.ChainIn, first: "chain1", stages: []string{"chain1", "chain2"},
			event: func(i int) (string, []byte) {
				id := "e" + strconv.Itoa(i)
				return builtin.InKey(id), builtin.Value(id, i%chainBuckets, 1)
			},
			projections: chainProjections}
	}
	return procSpec{stream: builtin.SingleIn, first: "single", stages: []string{"single"},
		event: func(i int) (string, []byte) { return keyName(i), w.value }}
}

// chainProjections sums the chain's projections: every event stage 2
// handled added its amount (1 here) to its bucket's.
func chainProjections(ctx context.Context, c *client.Client) (int64, error) {
	keys := make([]string, chainBuckets)
	for b := range keys {
		keys[b] = builtin.ProjKey(b)
	}
	vals, err := c.Map(builtin.ChainProj).GetAll(ctx, keys)
	if err != nil {
		return 0, fmt.Errorf("reading the chain's projections: %w", err)
	}
	var sum int64
	for k, v := range vals {
		n, ok := api.ParseInt(v)
		if !ok {
			return 0, fmt.Errorf("projection %s: %q is not an integer", k, v)
		}
		sum += n
	}
	return sum, nil
}

// published is one event as published: its partition and position, and
// when its Publish call started (ns since the run's start).
type published struct {
	part  int
	pos   uint64
	start int64
}

// measureProcess runs a process-* workload (see above).
func measureProcess(ctx context.Context, o *options, cls []*client.Client) (result, error) {
	spec := procSpecFor(&o.w)
	pc := newProcClient(o.httpAddrs)
	ends, err := cls[0].JournalEnds(ctx)
	if err != nil {
		return result{}, err
	}
	if err := pc.setPaused(ctx, spec.first, o.drain); err != nil {
		return result{}, err
	}
	if o.drain {
		defer func() { _ = pc.setPaused(context.WithoutCancel(ctx), spec.first, false) }()
	}
	base, err := pc.totals(ctx)
	if err != nil {
		return result{}, err
	}
	if err := base.has(spec.stages, len(o.httpAddrs)); err != nil {
		return result{}, err
	}
	var baseSum int64
	if spec.projections != nil {
		if baseSum, err = spec.projections(ctx, cls[0]); err != nil {
			return result{}, err
		}
	}
	limit := o.duration
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	m := &procMeasure{o: o, spec: spec, pc: pc, cls: cls, parts: len(ends), base: base, baseSum: baseSum, events: make([]published, o.w.keys)}
	if o.drain {
		err = m.drain(cctx)
	} else {
		err = m.endToEnd(cctx)
	}
	if err != nil {
		return result{}, err
	}
	return m.result(), nil
}

// procMeasure is one process-* run.
type procMeasure struct {
	o       *options
	spec    procSpec
	pc      *procClient
	cls     []*client.Client
	parts   int
	base    procTotals
	baseSum int64 // chain: the projections' sum before the run
	events  []published
	// published is when the last Publish returned (ns since start; 0:
	// not yet).
	published atomic.Int64

	start                time.Time
	publishSecs, seconds float64
	cpuTicks             int64
	publishTicks         int64 // -drain: the servers' CPU while publishing (the processors paused)
	records              uint64
	final                procTotals
	obs                  [][]posObs // end to end: the first stage's positions seen, per partition
	lats                 []int64
	unseen               int
	peakLag              float64 // the oldest unhandled event's age, the most any poll saw
	lastSum              int64   // chain: the projections' sum the last poll saw
}

// endToEnd publishes while polling, and times from the first Publish to
// the poll that sees every event handled.
func (m *procMeasure) endToEnd(ctx context.Context) error {
	w, err := m.window(ctx)
	if err != nil {
		return err
	}
	m.start = time.Now()
	m.obs = make([][]posObs, m.parts)
	var wg sync.WaitGroup
	var pollErr error
	var doneAt time.Time
	pctx, stopPoll := context.WithCancel(ctx)
	defer stopPoll()
	wg.Add(1)
	go func() {
		defer wg.Done()
		doneAt, m.final, pollErr = m.waitHandled(pctx, m.obs)
	}()
	if err := m.publish(ctx); err != nil {
		stopPoll()
		wg.Wait()
		return err
	}
	m.publishSecs = time.Since(m.start).Seconds()
	m.published.Store(max(time.Since(m.start).Nanoseconds(), 1))
	wg.Wait()
	if pollErr != nil {
		return pollErr
	}
	m.seconds = doneAt.Sub(m.start).Seconds()
	m.lats, m.unseen = latencies(m.events, m.obs, m.start)
	return w.close(ctx, m)
}

// drain publishes with the first stage paused, then resumes it and times
// the drain.
func (m *procMeasure) drain(ctx context.Context) error {
	if err := m.pc.waitPaused(ctx, m.spec.first, len(m.o.httpAddrs)); err != nil {
		return err
	}
	base, err := m.pc.totals(ctx)
	if err != nil {
		return err
	}
	m.base = base
	cpu0, err := serverCPU(m.o.pids)
	if err != nil {
		return err
	}
	m.start = time.Now()
	if err := m.publish(ctx); err != nil {
		return err
	}
	m.publishSecs = time.Since(m.start).Seconds()
	cpu1, err := serverCPU(m.o.pids)
	if err != nil {
		return err
	}
	m.publishTicks = cpu1 - cpu0
	m.published.Store(max(time.Since(m.start).Nanoseconds(), 1))
	held, err := m.pc.totals(ctx)
	if err != nil {
		return err
	}
	if d := held.handled[m.spec.first] - base.handled[m.spec.first]; d != 0 {
		return fmt.Errorf("%s handled %d events while paused: the pause did not hold", m.spec.first, d)
	}
	w, err := m.window(ctx)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := m.pc.setPaused(ctx, m.spec.first, false); err != nil {
		return err
	}
	doneAt, final, err := m.waitHandled(ctx, nil)
	if err != nil {
		return err
	}
	m.final = final
	m.seconds = doneAt.Sub(t0).Seconds()
	return w.close(ctx, m)
}

// procWindow holds the servers' CPU time and journal ends at the start of
// the measured window.
type procWindow struct {
	cpu  int64
	ends []uint64
}

func (m *procMeasure) window(ctx context.Context) (*procWindow, error) {
	ends, err := m.cls[0].JournalEnds(ctx)
	if err != nil {
		return nil, err
	}
	cpu, err := serverCPU(m.o.pids)
	if err != nil {
		return nil, err
	}
	return &procWindow{cpu: cpu, ends: ends}, nil
}

// close records the window's CPU time and records into m.
func (w *procWindow) close(ctx context.Context, m *procMeasure) error {
	cpu, err := serverCPU(m.o.pids)
	if err != nil {
		return err
	}
	ends, err := m.cls[0].JournalEnds(ctx)
	if err != nil {
		return err
	}
	m.cpuTicks = cpu - w.cpu
	for i := range ends {
		m.records += ends[i] - w.ends[i]
	}
	return nil
}

// publish publishes every event from every client, depth calls in flight
// each, recording where each landed.
func (m *procMeasure) publish(ctx context.Context) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, len(m.cls)*m.o.depth)
	for _, c := range m.cls {
		for range m.o.depth {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1)) - 1; i < len(m.events); i = int(next.Add(1)) - 1 {
					key, value := m.spec.event(i)
					t0 := time.Since(m.start).Nanoseconds()
					pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					pos, err := c.Publish(pctx, m.spec.stream, key, value)
					cancel()
					if err != nil {
						errc <- fmt.Errorf("publishing event %d: %w", i, err)
						return
					}
					m.events[i] = published{part: affinity.Partition(key, m.parts), pos: pos, start: t0}
				}
			}()
		}
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// posObs is a partition's position of the first stage as one poll saw it
// (ns since the run's start).
type posObs struct {
	at  int64
	pos uint64
}

// waitHandled polls every member until every event is handled (see
// the top of this file); it returns when the last poll finished and what
// it saw. With obs it records the first stage's positions.
func (m *procMeasure) waitHandled(ctx context.Context, obs [][]posObs) (time.Time, procTotals, error) {
	t := time.NewTicker(m.o.poll)
	defer t.Stop()
	for {
		began := time.Since(m.start).Nanoseconds()
		tot, err := m.pc.poll(ctx, func(node []procStatus, at time.Time) {
			if obs != nil {
				recordPositions(obs, node, m.spec.first, at.Sub(m.start).Nanoseconds())
			}
		})
		if err != nil {
			return time.Time{}, procTotals{}, err
		}
		m.peakLag = max(m.peakLag, tot.maxLagAge)
		pub := m.published.Load()
		done, err := m.handledAll(ctx, &tot, pub != 0 && began > pub)
		if err != nil || done {
			return time.Now(), tot, err
		}
		select {
		case <-ctx.Done():
			return time.Time{}, procTotals{}, fmt.Errorf("waiting for %d events to be handled: %w (lag: %v; handled: %v, at start: %v; chain projections +%d)",
				len(m.events), ctx.Err(), tot.lag, tot.handled, m.base.handled, m.lastSum-m.baseSum)
		case <-t.C:
		}
	}
}

// handledAll reports whether every event was handled, given a poll that
// began after the last Publish returned (published) and saw tot.
func (m *procMeasure) handledAll(ctx context.Context, tot *procTotals, published bool) (bool, error) {
	if !published || !tot.caughtUp(m.spec.stages) {
		return false, nil
	}
	if m.spec.projections == nil {
		return true, nil
	}
	sum, err := m.spec.projections(ctx, m.cls[0])
	if err != nil {
		return false, err
	}
	m.lastSum = sum
	n := int64(len(m.events))
	if sum-m.baseSum > n {
		return false, fmt.Errorf("the chain's projections grew by %d for %d events: an event applied twice", sum-m.baseSum, n)
	}
	return sum-m.baseSum == n, nil
}

func recordPositions(obs [][]posObs, node []procStatus, proc string, at int64) {
	for _, s := range node {
		if s.Name != proc {
			continue
		}
		for _, p := range s.Partitions {
			if p.Partition >= 0 && p.Partition < len(obs) {
				obs[p.Partition] = append(obs[p.Partition], posObs{at: at, pos: p.Position})
			}
		}
	}
}

// latencies returns each event's latency, from its Publish call to the
// first poll that saw its partition's position past it, and how many
// events no poll saw handled.
func latencies(evs []published, obs [][]posObs, start time.Time) ([]int64, int) {
	out := make([]int64, 0, len(evs))
	unseen := 0
	for _, e := range evs {
		o := obs[e.part]
		i, _ := slices.BinarySearchFunc(o, e.pos, func(x posObs, pos uint64) int {
			if x.pos > pos {
				return 1
			}
			return -1
		})
		if i == len(o) {
			unseen++
			continue
		}
		out = append(out, max(o[i].at-e.start, 0))
	}
	return out, unseen
}

func (m *procMeasure) result() result {
	o := m.o
	r := summarize(o, m.lats, m.seconds)
	n := int64(len(m.events))
	r.Ops, r.OpsPerSec = n, float64(n)/m.seconds
	r.Drain = o.drain
	r.PublishPerSec = float64(n) / m.publishSecs
	r.Records = m.records
	procRecords := m.records
	if !o.drain {
		procRecords -= uint64(n) // one record per Publish in the window
	}
	if o.w.name == workloadProcSingle && procRecords > 0 {
		r.EventsPerRecord = float64(n) / float64(procRecords)
	}
	if len(o.pids) > 0 {
		r.ServerCPUusPerOp = float64(m.cpuTicks) * (1e6 / clockTicks) / float64(n)
		r.PublishCPUusPerEvent = float64(m.publishTicks) * (1e6 / clockTicks) / float64(n)
	}
	r.Errors = m.final.failures - m.base.failures + m.final.parked - m.base.parked
	if r.Errors > 0 {
		r.FirstError = fmt.Sprintf("%d handler failures and dead letters during the run", r.Errors)
	}
	if m.unseen > 0 {
		r.FirstError = fmt.Sprintf("%d events handled but no poll saw their position (no latency)", m.unseen)
	}
	r.MaxLagSeconds = m.peakLag
	return r
}

// errProcessors: the members do not run the workload's processors.
var errProcessors = errors.New("start every gridnode with -processors chain,single and give every member's HTTP address in -http")
