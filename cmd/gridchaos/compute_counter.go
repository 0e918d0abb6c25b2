package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/client"
	"github.com/collocate/grid/compute/invoke"
)

// The compute mode's counter phase: concurrent counter.add increments of
// one key through one default client while the key's primary is SIGKILLed.

const (
	counterMap = "compute-counters"
	counterKey = "hits"
	// dedupMetric counts retries a primary answered from the remembered
	// result of their first attempt.
	dedupMetric = "grid_dedup_replays_total"
)

// counterRound is one round's counter phase. Times are ms since the phase
// started.
type counterRound struct {
	Workers   int     `json:"workers"`
	PerWorker int     `json:"increments_per_worker"`
	Victim    string  `json:"victim"` // the key's primary
	Leader    bool    `json:"victim_was_leader"`
	KillAtMs  float64 `json:"kill_at_ms"`
	// AckedAtKill and InflightAtKill: acknowledged increments and calls in
	// flight when the kill was sent; AckedAfterKill: acknowledged calls
	// that started after it.
	AckedAtKill    int64          `json:"acked_at_kill"`
	InflightAtKill int64          `json:"inflight_at_kill"`
	AckedAfterKill int64          `json:"acked_after_kill"`
	Acked          int64          `json:"acked"`
	Final          int64          `json:"final"`
	Unknown        int            `json:"unknown"` // calls that failed with ErrTimeout (outcome unknown)
	Errors         map[string]int `json:"errors"`  // every failed call by kind (timeouts included)
	// ErrorSamples are the first failed calls: when they started (ms since
	// the phase started), how long they took, and the error.
	ErrorSamples []string `json:"error_samples,omitempty"`
	// Retried is the members' grid_dedup_replays_total during the phase
	// (the members that ran throughout); nil if none exports it.
	Retried       *float64 `json:"retried"`
	RetriedSource string   `json:"retried_source"`
	// SpanningKill: calls in flight when the kill was sent (most were
	// already answered by the primary), and the longest of them.
	SpanningKill  int     `json:"calls_spanning_kill"`
	SpanningMaxMs float64 `json:"spanning_max_ms"`
	// WaitedFailover: acknowledged calls that ended after the kill and took
	// longer than waitedThreshold (each was sent to the dead primary, or
	// waited for the new table, and was answered after the failover), and
	// the longest of them.
	WaitedFailover   int     `json:"calls_waited_failover"`
	WaitedMaxMs      float64 `json:"waited_max_ms"`
	LatencyMs        dist    `json:"latency_ms"` // acknowledged calls
	DuplicateResults int     `json:"duplicate_results"`
	SafeAfterKillMs  float64 `json:"safe_after_kill_ms"`
	ReplicasEqual    bool    `json:"replicas_equal"`

	latencies []float64
}

// ctrCall is one increment call.
type ctrCall struct {
	start, end int64
	value      int64 // the answer of an acknowledged call
	err        error
}

// counterWorkers are the phase's workers; each goroutine appends its calls.
type counterWorkers struct {
	acked    atomic.Int64
	inflight atomic.Int64
	mu       sync.Mutex
	calls    []ctrCall
	wg       sync.WaitGroup
}

// work increments the key until n increments were acknowledged (or n
// calls failed, or ctx ended).
func (w *counterWorkers) work(ctx context.Context, cl *client.Client, n int, now func() int64) {
	defer w.wg.Done()
	for acked, failed := 0, 0; acked < n && failed < n && ctx.Err() == nil; {
		w.inflight.Add(1)
		c := ctrCall{start: now()}
		c.value, c.err = invoke.Call[invoke.CounterArgs, int64](ctx, cl, counterMap, counterKey, invoke.FnCounterAdd, invoke.CounterArgs{Delta: 1})
		c.end = now()
		w.inflight.Add(-1)
		if c.err == nil {
			acked++
			w.acked.Add(1)
		} else {
			failed++
		}
		w.mu.Lock()
		w.calls = append(w.calls, c)
		w.mu.Unlock()
		if c.err != nil && !errors.Is(c.err, client.ErrTimeout) {
			sleepCtx(ctx, 10*time.Millisecond) // an application would retry; not in a tight loop
		}
	}
}

// runCounterPhase runs cfg.Workers increment workers on h's (safe)
// cluster and SIGKILLs the key's primary after a third of the increments.
func runCounterPhase(ctx context.Context, h *harness, cfg computeConfig, violation func(string, ...any)) (*counterRound, error) {
	r := &counterRound{Workers: cfg.Workers, PerWorker: cfg.Increments, Errors: map[string]int{}}
	cl, err := client.Dial(ctx, client.Config{Addrs: h.rpcAddrs()})
	if err != nil {
		return r, err
	}
	defer cl.Close()
	cv, err := h.latest(ctx)
	if err != nil {
		return r, err
	}
	victim := h.primaryOf(ctx, counterKey)
	if victim == nil {
		return r, fmt.Errorf("no running primary for %q", counterKey)
	}
	if why := h.wouldLose(cv, victim.name); why != "" {
		return r, fmt.Errorf("killing %s would lose data: %s", victim.name, why)
	}
	r.Victim, r.Leader = victim.name, h.leaderOf(cv) == victim
	dedupBefore := scrapePerNode(ctx, h, dedupMetric)
	t0 := h.now()
	w := &counterWorkers{}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range cfg.Workers {
		w.wg.Add(1)
		go w.work(wctx, cl, cfg.Increments, h.now)
	}
	done := make(chan struct{})
	go func() {
		w.wg.Wait()
		close(done)
	}()
	total := int64(cfg.Workers * cfg.Increments)
	if !waitAcked(ctx, w, done, total/3) {
		cancel()
		<-done
		return r, fmt.Errorf("the workers stopped at %d of %d increments before the kill", w.acked.Load(), total)
	}
	r.AckedAtKill, r.InflightAtKill = w.acked.Load(), w.inflight.Load()
	killAt := h.now()
	h.logf("counter: kill %s, primary of %q (raft leader %v), at %d of %d increments, %d calls in flight",
		victim.name, counterKey, r.Leader, r.AckedAtKill, total, r.InflightAtKill)
	h.kill(victim)
	r.KillAtMs = msOf(killAt - t0)
	select {
	case <-done:
	case <-time.After(10 * time.Minute):
		cancel()
		<-done
		return r, fmt.Errorf("the counter workers did not finish within 10 min of the kill (%d acknowledged)", w.acked.Load())
	case <-ctx.Done():
		<-done
		return r, ctx.Err()
	}
	final, err := readCounter(ctx, cl)
	if err != nil {
		return r, err
	}
	r.Final = final
	r.tally(w.calls, t0, killAt)
	r.retried(ctx, h, dedupBefore)
	for _, v := range counterVerdict(r.Acked, r.Final, r.Unknown, r.Errors, r.DuplicateResults) {
		violation("counter: %s", v)
	}
	h.logf("counter: %d acknowledged, final %d, %d unknown, errors %v, %d calls waited for the failover (longest %.0f ms), retried: %s",
		r.Acked, r.Final, r.Unknown, r.Errors, r.WaitedFailover, r.WaitedMaxMs, r.RetriedSource)
	if err := h.waitSafe(ctx, 3*time.Minute); err != nil {
		return r, fmt.Errorf("not safe after killing %s: %w", victim.name, err)
	}
	r.SafeAfterKillMs = msOf(h.now() - killAt)
	if err := h.checkReplicas(ctx); err != nil {
		violation("counter: replicas differ after the failover: %v", err)
	} else {
		r.ReplicasEqual = true
	}
	return r, nil
}

// waitAcked waits until the workers acknowledged n increments (false if
// they all stopped first, or ctx ended).
func waitAcked(ctx context.Context, w *counterWorkers, done <-chan struct{}, n int64) bool {
	for w.acked.Load() < n {
		select {
		case <-done:
			return false
		case <-ctx.Done():
			return false
		case <-time.After(time.Millisecond):
		}
	}
	return true
}

// readCounter reads the counter's final value (retrying for 30 s).
func readCounter(ctx context.Context, cl *client.Client) (int64, error) {
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		var b []byte
		if b, err = cl.Map(counterMap).Get(ctx, counterKey); err == nil {
			return strconv.ParseInt(string(b), 10, 64)
		}
		sleepCtx(ctx, 100*time.Millisecond)
	}
	return 0, fmt.Errorf("reading the counter: %w", err)
}

// tally fills r's counts from the calls.
func (r *counterRound) tally(calls []ctrCall, t0, killAt int64) {
	var before []float64
	for _, c := range calls {
		if c.err == nil && c.end < killAt {
			before = append(before, msOf(c.end-c.start))
		}
	}
	threshold := waitedThreshold(before)
	seen := map[int64]bool{}
	for _, c := range calls {
		if c.start < killAt && c.end > killAt {
			r.SpanningKill++
			r.SpanningMaxMs = max(r.SpanningMaxMs, msOf(c.end-c.start))
		}
		if c.err != nil {
			r.Errors[errKind(c.err)]++
			if len(r.ErrorSamples) < 5 {
				r.ErrorSamples = append(r.ErrorSamples, fmt.Sprintf("at %.1f ms, took %.1f ms: %v", msOf(c.start-t0), msOf(c.end-c.start), c.err))
			}
			if errors.Is(c.err, client.ErrTimeout) {
				r.Unknown++
			}
			continue
		}
		r.Acked++
		if c.start > killAt {
			r.AckedAfterKill++
		}
		if ms := msOf(c.end - c.start); c.end > killAt && ms > threshold {
			r.WaitedFailover++
			r.WaitedMaxMs = max(r.WaitedMaxMs, ms)
		}
		if seen[c.value] {
			r.DuplicateResults++
		}
		seen[c.value] = true
		r.latencies = append(r.latencies, msOf(c.end-c.start))
	}
	r.LatencyMs = distOf(r.latencies)
}

// waitedThreshold is the latency above which an acknowledged call that
// ended after the kill counts as having waited for the failover: 50 ms
// plus 10 times the p99 of the acknowledged calls before the kill.
func waitedThreshold(before []float64) float64 {
	return 50 + 10*distOf(before).P99
}

// retried fills r.Retried from the members' dedupMetric since before.
func (r *counterRound) retried(ctx context.Context, h *harness, before map[string]float64) {
	after := scrapePerNode(ctx, h, dedupMetric)
	if len(after) == 0 {
		r.RetriedSource = dedupMetric + " not exported by the members; see calls_waited_failover"
		return
	}
	var n float64
	for name, v := range after {
		if b, ok := before[name]; ok {
			n += v - b
		}
	}
	r.Retried = &n
	r.RetriedSource = fmt.Sprintf("%s on %s", dedupMetric, strings.Join(slices.Sorted(maps.Keys(after)), ","))
}

// counterVerdict returns the violations of a counter phase: any failed
// call, a final value other than the acknowledged increments (with
// unknown outcomes: outside [acked, acked+unknown]), two acknowledged
// calls answering the same value.
func counterVerdict(acked, final int64, unknown int, errs map[string]int, dups int) []string {
	var out []string
	failed := 0
	for _, n := range errs {
		failed += n
	}
	if failed > 0 {
		out = append(out, fmt.Sprintf("%d increment calls failed (%d with outcome unknown): %v", failed, unknown, errs))
	}
	switch {
	case unknown == 0 && final != acked:
		out = append(out, fmt.Sprintf("final value %d, acknowledged increments %d (%+d)", final, acked, final-acked))
	case unknown > 0 && (final < acked || final > acked+int64(unknown)):
		out = append(out, fmt.Sprintf("final value %d outside [%d, %d] (acknowledged, plus unknown)", final, acked, acked+int64(unknown)))
	}
	if dups > 0 {
		out = append(out, fmt.Sprintf("%d acknowledged increments answered a value another one also got", dups))
	}
	return out
}

// scrapePerNode returns, per running member exporting the counter name,
// the sum of its series.
func scrapePerNode(ctx context.Context, h *harness, name string, labels ...string) map[string]float64 {
	out := map[string]float64{}
	for _, p := range h.running() {
		b, err := getBody(ctx, p.httpURL+"/metrics")
		if err != nil {
			continue
		}
		if v, ok := metricSum(string(b), name, labels...); ok {
			out[p.name] = v
		}
	}
	return out
}

// scrapeSum sums the counter name over the running members.
func scrapeSum(ctx context.Context, h *harness, name string, labels ...string) (float64, bool) {
	var sum float64
	per := scrapePerNode(ctx, h, name, labels...)
	for _, v := range per {
		sum += v
	}
	return sum, len(per) > 0
}

// metricSum sums the samples of metric name in a Prometheus text
// exposition whose labels include every one of labels (`k="v"`).
func metricSum(text, name string, labels ...string) (float64, bool) {
	var sum float64
	found := false
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		var lbls string
		if rest[0] == '{' {
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			lbls, rest = rest[:end+1], rest[end+1:]
		}
		if !allIn(lbls, labels) {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	return sum, found
}

func allIn(s string, subs []string) bool {
	for _, x := range subs {
		if !strings.Contains(s, x) {
			return false
		}
	}
	return true
}
