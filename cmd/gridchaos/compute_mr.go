package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/client"
	"github.com/collocate/grid/compute/invoke"
	"github.com/vmihailenco/msgpack/v5"
)

// The compute mode's map-reduce phase: agg.map back to back while a
// member joins and another is SIGKILLed in the middle of a call.

// mrRound is one round's map-reduce phase. Times are ms since the phase
// started.
type mrRound struct {
	Calls      int            `json:"calls"`
	Exact      int            `json:"exact"`
	Wrong      int            `json:"wrong"`
	Errors     map[string]int `json:"errors"`
	BaselineMs float64        `json:"baseline_p50_ms"` // exact calls before the join
	LatencyMs  dist           `json:"latency_ms"`      // every exact call
	Join       faultPoint     `json:"join"`
	Joiner     string         `json:"joiner"`
	Kill       faultPoint     `json:"kill"`
	Victim     string         `json:"victim"`
	Leader     bool           `json:"victim_was_leader"`
	// PendingAtKill and JoinerAtKill come from the table right after the
	// kill: partitions with a replica being filled, and partitions naming
	// the joiner (primary, backup or pending).
	PendingAtKill int          `json:"pending_partitions_at_kill"`
	JoinerAtKill  int          `json:"joiner_partitions_at_kill"`
	JoinCall      *callOutcome `json:"join_call"`
	KillCall      *callOutcome `json:"kill_call"`
	// ExactAfterFaults counts the exact calls started after the kill (the
	// join came first); RecoveredMs is from the kill to the end of the
	// first of them.
	ExactAfterFaults int          `json:"exact_after_faults"`
	RecoveredMs      float64      `json:"recovered_ms"`
	SafeAfterKillMs  float64      `json:"safe_after_kill_ms"`
	RestartSafeMs    float64      `json:"restart_safe_ms"` // from the victim's restart until safe again
	Final            *callOutcome `json:"final_call"`      // after the restart, alone
	JoinerAtEnd      int          `json:"joiner_partitions_at_end"`
	// RerunsMoved sums grid_function_reruns_total{function="agg.map",
	// reason="moved"} over the members at the end (the victim's count
	// before its kill is lost).
	RerunsMoved float64 `json:"reruns_moved"`

	latencies, baseline []float64
}

// faultPoint is when a fault landed relative to the call in flight.
type faultPoint struct {
	AtMs       float64 `json:"at_ms"`
	CallID     int     `json:"call"`
	IntoCallMs float64 `json:"into_call_ms"`
	// Fraction is the seeded fraction of the previous call's duration the
	// fault waited after its call started.
	Fraction   float64 `json:"fraction"`
	DuringCall bool    `json:"during_call"` // the call started before and ended after it

	at int64
}

// callOutcome is one call's result: "exact", "wrong", or its error kind.
type callOutcome struct {
	ID        int     `json:"id"`
	Filtered  bool    `json:"filtered"`
	LatencyMs float64 `json:"latency_ms"`
	Outcome   string  `json:"outcome"`
	Detail    string  `json:"detail,omitempty"`
}

// mrCall is one map-reduce call; end is 0 while it runs.
type mrCall struct {
	id         int
	filtered   bool
	start, end int64
	outcome    string
	detail     string
}

func (c mrCall) describe() *callOutcome {
	return &callOutcome{ID: c.id, Filtered: c.filtered, LatencyMs: msOf(c.end - c.start), Outcome: c.outcome, Detail: c.detail}
}

// mrLoop runs map-reduce calls back to back (every third with the
// key.prefix filter) until halted. Its goroutine appends to calls; the
// phase's driver reads them under mu.
type mrLoop struct {
	cl      *client.Client
	data    *mrData
	now     func() int64
	timeout time.Duration
	filter  []byte

	mu    sync.Mutex
	calls []mrCall

	stop atomic.Bool
	done chan struct{}
}

func (l *mrLoop) run(ctx context.Context) {
	defer close(l.done)
	for i := 0; !l.stop.Load() && ctx.Err() == nil; i++ {
		l.call(ctx, i%3 == 2)
	}
}

// halt stops the loop after the call in flight.
func (l *mrLoop) halt() {
	l.stop.Store(true)
	<-l.done
}

// call runs one aggregation under the loop's timeout and records it.
func (l *mrLoop) call(ctx context.Context, filtered bool) mrCall {
	l.mu.Lock()
	c := mrCall{id: len(l.calls), filtered: filtered, start: l.now()}
	l.calls = append(l.calls, c)
	l.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, l.timeout)
	var got invoke.Agg
	var err error
	want := l.data.all
	if filtered {
		want = l.data.prefix
		got, err = invoke.MapReduce(cctx, l.cl, invoke.FnAggMap, invoke.AggArgs{},
			invoke.PartsOptions{Map: mrMap, Filter: invoke.FilterKeyPrefix, FilterArgs: l.filter}, invoke.Agg{}, invoke.Agg.Merge)
	} else {
		got, err = invoke.Aggregate(cctx, l.cl, mrMap, invoke.AggArgs{})
	}
	cancel()
	c.end = l.now()
	switch {
	case err != nil:
		c.outcome, c.detail = errKind(err), err.Error()
	default:
		if c.detail = want.mismatch(got); c.detail == "" {
			c.outcome = "exact"
		} else {
			c.outcome = "wrong"
		}
	}
	l.mu.Lock()
	l.calls[c.id] = c
	l.mu.Unlock()
	return c
}

func (l *mrLoop) snapshot() []mrCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]mrCall(nil), l.calls...)
}

// poll calls f with the calls every millisecond until it returns true,
// ctx ends or d passes (false).
func (l *mrLoop) poll(ctx context.Context, d time.Duration, f func([]mrCall) bool) bool {
	deadline := time.Now().Add(d)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		if f(l.snapshot()) {
			return true
		}
		time.Sleep(time.Millisecond)
	}
	return false
}

// timedFault fires fire in the middle of a call: it waits for the first
// call numbered above after, then frac of the previous call's duration
// into it, and fires if that call still runs; otherwise it tries the next
// call with half the fraction (up to 5 times).
func (l *mrLoop) timedFault(ctx context.Context, after int, frac float64, fire func()) (faultPoint, error) {
	for range 5 {
		var cur, prev mrCall
		if !l.poll(ctx, 2*l.timeout, func(cs []mrCall) bool {
			if n := len(cs); n > after+1 && n >= 2 && cs[n-2].end != 0 {
				cur, prev = cs[n-1], cs[n-2]
				return true
			}
			return false
		}) {
			return faultPoint{}, fmt.Errorf("no map-reduce call started after call %d", after)
		}
		target := cur.start + int64(frac*float64(prev.end-prev.start))
		if d := time.Duration(target - l.now()); d > 0 {
			sleepCtx(ctx, d)
		}
		if ctx.Err() != nil {
			return faultPoint{}, ctx.Err()
		}
		cs := l.snapshot()
		if last := cs[len(cs)-1]; last.id != cur.id || last.end != 0 {
			after, frac = last.id, frac/2 // the call ended early: aim at the next one
			continue
		}
		at := l.now()
		fire()
		return faultPoint{CallID: cur.id, at: at, IntoCallMs: msOf(at - cur.start), Fraction: frac}, nil
	}
	return faultPoint{}, fmt.Errorf("5 calls in a row ended before the fault could land in them")
}

// runMRPhase runs the map-reduce phase on h's 3 members: it joins a
// fourth, kills one of the three, restarts it, and checks every answer.
func runMRPhase(ctx context.Context, h *harness, cfg computeConfig, seed uint64, data *mrData, violation func(string, ...any)) (*mrRound, error) {
	cl, err := client.Dial(ctx, client.Config{Addrs: h.rpcAddrs()})
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	filter, _ := msgpack.Marshal(mrPrefix)
	l := &mrLoop{cl: cl, data: data, now: h.now, timeout: cfg.CallTimeout, filter: filter, done: make(chan struct{})}
	r := &mrRound{Errors: map[string]int{}}
	t0 := h.now()
	go l.run(ctx)
	defer func() {
		if !l.stop.Load() {
			l.halt()
		}
		r.tally(l.snapshot(), t0, cfg.CallTimeout, violation)
	}()
	if err := r.faults(ctx, h, l, seed); err != nil {
		return r, err
	}
	limit := max(2*time.Minute, 20*time.Duration(r.BaselineMs)*time.Millisecond)
	var first mrCall
	if !l.poll(ctx, limit, func(cs []mrCall) bool {
		for _, c := range cs[r.Kill.CallID+1:] {
			if c.outcome == "exact" {
				first = c
				return true
			}
		}
		return false
	}) {
		if ctx.Err() != nil {
			return r, ctx.Err()
		}
		violation("map-reduce: no call started after the join and the kill was exact within %s", limit)
		return r, nil
	}
	r.RecoveredMs = msOf(first.end - r.Kill.at)
	h.logf("map-reduce: first exact call after the kill (%d) ended %.0f ms after it", first.id, r.RecoveredMs)
	if err := h.waitSafe(ctx, 3*time.Minute); err != nil {
		return r, fmt.Errorf("not safe after killing %s: %w", r.Victim, err)
	}
	r.SafeAfterKillMs = msOf(h.now() - r.Kill.at)
	rs := h.now()
	if err := h.restart(ctx, h.byName(r.Victim)); err != nil {
		return r, err
	}
	if err := h.waitSafe(ctx, 3*time.Minute); err != nil {
		return r, fmt.Errorf("not safe after restarting %s: %w", r.Victim, err)
	}
	r.RestartSafeMs = msOf(h.now() - rs)
	l.halt()
	r.Final = l.call(ctx, false).describe()
	if r.Final.Outcome != "exact" {
		violation("map-reduce after the restart of %s: %s %s", r.Victim, r.Final.Outcome, r.Final.Detail)
	}
	if cv, err := h.latest(ctx); err == nil {
		r.JoinerAtEnd = holdingCount(cv, r.Joiner)
	}
	r.RerunsMoved, _ = scrapeSum(ctx, h, "grid_function_reruns_total", `function="agg.map"`, `reason="moved"`)
	return r, nil
}

// faults runs the warm-up, then joins a fourth member and kills one of
// the first three, each in the middle of a call.
func (r *mrRound) faults(ctx context.Context, h *harness, l *mrLoop, seed uint64) error {
	var warm []mrCall
	if !l.poll(ctx, 4*l.timeout, func(cs []mrCall) bool {
		warm = warm[:0]
		for _, c := range cs {
			if c.outcome == "exact" {
				warm = append(warm, c)
			}
		}
		return len(warm) >= 2
	}) {
		return fmt.Errorf("no 2 exact map-reduce calls before the faults: %v", l.snapshot())
	}
	var base []float64
	for _, c := range warm {
		base = append(base, msOf(c.end-c.start))
	}
	r.BaselineMs = distOf(base).P50
	joiner := h.slot(3)
	r.Joiner = joiner.name
	var startErr error
	jp, err := l.timedFault(ctx, warm[len(warm)-1].id, 0.2+0.6*h.rng.Float64(), func() {
		h.logf("join %s", joiner.name)
		startErr = h.start(joiner)
	})
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	if startErr != nil {
		return startErr
	}
	r.Join = jp
	cv, err := h.latest(ctx)
	if err != nil {
		return err
	}
	victim := computeVictim(h, cv, seed)
	r.Victim, r.Leader = victim.name, h.leaderOf(cv) == victim
	if why := h.wouldLose(cv, victim.name); why != "" {
		h.logf("waiting to kill %s: %s", victim.name, why)
		if h.safeVictim(ctx, []*proc{victim}, time.Minute) == nil {
			return fmt.Errorf("killing %s would lose data for a minute: %s", victim.name, why)
		}
	}
	skip := h.rng.IntN(2)
	kp, err := l.timedFault(ctx, jp.CallID+skip, 0.2+0.6*h.rng.Float64(), func() {
		h.logf("kill %s (raft leader %v)", victim.name, r.Leader)
		h.kill(victim)
	})
	if err != nil {
		return fmt.Errorf("kill: %w", err)
	}
	r.Kill = kp
	if cv, err := h.latest(ctx); err == nil {
		r.PendingAtKill, r.JoinerAtKill = len(cv.pending()), holdingCount(cv, r.Joiner)
	}
	h.logf("map-reduce: joined %s %.0f ms into call %d, killed %s %.0f ms into call %d (%d partitions pending, %d name %s)",
		r.Joiner, r.Join.IntoCallMs, r.Join.CallID, r.Victim, r.Kill.IntoCallMs, r.Kill.CallID, r.PendingAtKill, r.JoinerAtKill, r.Joiner)
	return nil
}

// computeVictim is the member to kill among the first three: the raft
// leader on even seeds, a follower chosen by the seed on odd ones (a
// follower if no leader is known).
func computeVictim(h *harness, cv *clusterView, seed uint64) *proc {
	leader := h.leaderOf(cv)
	if seed%2 == 0 && leader != nil {
		return leader
	}
	var followers []*proc
	for _, p := range h.procs[:3] {
		if p != leader {
			followers = append(followers, p)
		}
	}
	return followers[h.rng.IntN(len(followers))]
}

// holdingCount counts the partitions of cv naming name (primary, backup or
// pending).
func holdingCount(cv *clusterView, name string) int {
	n := 0
	for _, p := range victimRoles(cv, name) {
		if p != "none" {
			n++
		}
	}
	return n
}

// tally fills r's counts from the calls (the final one included) and
// reports every wrong answer, every call that ran into timeout (a hang:
// the members answer within a lease or two after a fault) and every error
// that is none of the client's sentinels (unclear to the caller).
func (r *mrRound) tally(calls []mrCall, t0 int64, timeout time.Duration, violation func(string, ...any)) {
	var wrong, hung, unclear []string
	for _, c := range calls {
		if c.end == 0 {
			continue
		}
		r.Calls++
		switch c.outcome {
		case "exact":
			r.Exact++
			ms := msOf(c.end - c.start)
			r.latencies = append(r.latencies, ms)
			if r.Join.at == 0 || c.end < r.Join.at {
				r.baseline = append(r.baseline, ms)
			}
			if r.Kill.at != 0 && c.start > r.Kill.at {
				r.ExactAfterFaults++
			}
		case "wrong":
			r.Wrong++
			wrong = append(wrong, fmt.Sprintf("call %d (filtered %v, %.0f-%.0f ms): %s", c.id, c.filtered, msOf(c.start-t0), msOf(c.end-t0), c.detail))
		default:
			r.Errors[c.outcome]++
			desc := fmt.Sprintf("call %d (%.0f-%.0f ms): %s", c.id, msOf(c.start-t0), msOf(c.end-t0), c.detail)
			if time.Duration(c.end-c.start) >= timeout {
				hung = append(hung, desc)
			}
			if strings.HasPrefix(c.outcome, "other") {
				unclear = append(unclear, desc)
			}
		}
	}
	r.LatencyMs = distOf(r.latencies)
	r.JoinCall, r.Join.DuringCall = landing(calls, r.Join)
	r.KillCall, r.Kill.DuringCall = landing(calls, r.Kill)
	r.Join.AtMs, r.Kill.AtMs = msOf(r.Join.at-t0), msOf(r.Kill.at-t0)
	for _, v := range []struct {
		what  string
		calls []string
	}{{"wrong answers", wrong}, {"calls ran into -call-timeout", hung}, {"calls failed with an error that is no client sentinel", unclear}} {
		if len(v.calls) > 0 {
			violation("map-reduce: %d %s: %v", len(v.calls), v.what, v.calls[:min(5, len(v.calls))])
		}
	}
}

// landing returns the call fault p landed in and whether it ran across
// p's instant.
func landing(calls []mrCall, p faultPoint) (*callOutcome, bool) {
	if p.at == 0 || p.CallID >= len(calls) {
		return nil, false
	}
	c := calls[p.CallID]
	return c.describe(), c.start < p.at && (c.end == 0 || c.end > p.at)
}
