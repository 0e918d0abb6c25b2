package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/collocate/grid/client"
)

// Non-idempotent workloads: an append or an increment applied twice (a
// retry that dedup failed to catch) or lost shows in the final values.

type appendRec struct {
	key, token string
	out        outcome
}

// appendLog records every append of a unique token and its outcome.
type appendLog struct {
	mu   sync.Mutex
	recs []appendRec
}

// appendWorker appends unique tokens ("worker.seq;") to a few shared keys,
// renamed every 5 s so that values stay small. Each call gets the given
// deadline (0: none).
func (h *harness) appendWorker(ctx context.Context, w *workloads, m client.Map, id int, deadline time.Duration, pr *progress) {
	rng := randNew(h.cfg.Seed ^ uint64(id+1)*0x2545f4914f6cdd1d)
	for i := 0; !w.stopped(); i++ {
		key := fmt.Sprintf("ap%d-%d", rng.IntN(8), time.Since(h.t0)/(5*time.Second))
		token := fmt.Sprintf("%d.%d;", id, i)
		opCtx, cancel := withDeadline(ctx, deadline)
		_, err := m.Append(opCtx, key, []byte(token))
		cancel()
		out := classify(err)
		if err != nil && w.stopped() {
			out = unknown // cancelled by the harness
		}
		pr.ops++
		if out == acked {
			pr.writes = append(pr.writes, h.now())
		}
		w.appends.mu.Lock()
		w.appends.recs = append(w.appends.recs, appendRec{key, token, out})
		w.appends.mu.Unlock()
	}
}

// appendResult is what the append check found.
type appendResult struct {
	acked, unknown, lost, duplicated, phantom, foreign int
	examples                                           []string
}

func (r *appendResult) example(format string, args ...any) {
	if len(r.examples) < 10 {
		r.examples = append(r.examples, fmt.Sprintf(format, args...))
	}
}

// appendKeys returns the keys the records touched, in first-use order.
func appendKeys(recs []appendRec) []string {
	seen := map[string]bool{}
	var keys []string
	for _, rec := range recs {
		if !seen[rec.key] {
			seen[rec.key] = true
			keys = append(keys, rec.key)
		}
	}
	return keys
}

// tallyAppends compares the final values with the records: an
// acknowledged token must appear exactly once, an unknown one at most
// once, a refused one never, and no token may appear that was not
// appended to that key.
func tallyAppends(recs []appendRec, values map[string][]byte) appendResult {
	var r appendResult
	byToken := make(map[string]appendRec, len(recs))
	for _, rec := range recs {
		byToken[rec.token] = rec
		switch rec.out {
		case acked:
			r.acked++
		case unknown:
			r.unknown++
		}
	}
	seen := map[string]int{}
	for k, v := range values {
		for _, tok := range strings.SplitAfter(string(v), ";") {
			if tok == "" {
				continue
			}
			seen[tok]++
			if rec, ok := byToken[tok]; !ok || rec.key != k {
				r.foreign++
				r.example("key %s holds %q, which was never appended to it", k, tok)
			}
		}
	}
	for tok, rec := range byToken {
		switch n := seen[tok]; {
		case n > 1:
			r.duplicated++
			r.example("token %q appears %d times in %s (outcome %s)", tok, n, rec.key, rec.out)
		case n == 0 && rec.out == acked:
			r.lost++
			r.example("acknowledged token %q missing from %s", tok, rec.key)
		case n == 1 && rec.out == refused:
			r.phantom++
			r.example("token %q was answered as not applied but is in %s", tok, rec.key)
		}
	}
	return r
}

// checkAppends reads every appended key once and tallies the tokens.
func (h *harness) checkAppends(ctx context.Context, c *client.Client, l *appendLog) appendResult {
	got := h.readBack(ctx, c.Map("append"), appendKeys(l.recs), 16)
	r := tallyAppends(l.recs, got)
	for _, e := range r.examples {
		h.logf("append: %s", e)
	}
	return r
}

// counterLog counts, per counter key, increments by outcome.
type counterLog struct {
	keys    int
	mu      sync.Mutex
	acked   map[string]int
	unknown map[string]int
}

// counterWorker increments random counters by 1. Each call gets the given
// deadline (0: none).
func (h *harness) counterWorker(ctx context.Context, w *workloads, m client.Map, id int, deadline time.Duration, pr *progress) {
	rng := randNew(h.cfg.Seed ^ uint64(id+1)*0x9e3779b97f4a7c15)
	for !w.stopped() {
		key := fmt.Sprintf("ctr%d", rng.IntN(w.counters.keys))
		opCtx, cancel := withDeadline(ctx, deadline)
		_, err := m.Increment(opCtx, key, 1)
		cancel()
		out := classify(err)
		if err != nil && w.stopped() {
			out = unknown
		}
		pr.ops++
		if out == acked {
			pr.writes = append(pr.writes, h.now())
		}
		l := w.counters
		l.mu.Lock()
		switch out {
		case acked:
			l.acked[key]++
		case unknown:
			l.unknown[key]++
		}
		l.mu.Unlock()
	}
}

// counterBounds returns the counters whose value (absent: 0) is outside
// [acknowledged, acknowledged + unknown], described.
func counterBounds(l *counterLog, values map[string][]byte) []string {
	var bad []string
	for k := range l.keys {
		key := fmt.Sprintf("ctr%d", k)
		v := int64(0)
		if b, ok := values[key]; ok {
			var err error
			if v, err = strconv.ParseInt(string(b), 10, 64); err != nil {
				bad = append(bad, fmt.Sprintf("counter %s holds %q", key, b))
				continue
			}
		}
		lo, hi := int64(l.acked[key]), int64(l.acked[key]+l.unknown[key])
		if v < lo || v > hi {
			bad = append(bad, fmt.Sprintf("counter %s = %d, want %d..%d (acknowledged %d, unknown %d)", key, v, lo, hi, l.acked[key], l.unknown[key]))
		}
	}
	return bad
}

// checkCounters returns the acknowledged increments and how many counters
// are out of bounds.
func (h *harness) checkCounters(ctx context.Context, c *client.Client, l *counterLog) (int, int) {
	var keys []string
	total := 0
	for k := range l.keys {
		key := fmt.Sprintf("ctr%d", k)
		keys = append(keys, key)
		total += l.acked[key]
	}
	bad := counterBounds(l, h.readBack(ctx, c.Map("counter"), keys, 16))
	for _, b := range bad {
		h.logf("%s", b)
	}
	return total, len(bad)
}
