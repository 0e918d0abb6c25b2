package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/client"
)

// The journal mode's listener workload: writers rewrite keys of their own
// with increasing values ("<key>:<n>", n = 1, 2, ...), one write at a time
// each, so a key's committed history is its applied values in issue
// order; a Listener on the map records what it hears.

const listenMap = "journal-kv"

// Write outcomes of the listener workload's writers.
const (
	wAcked   = iota // acknowledged: must be heard
	wUnknown        // failed with an error that leaves the outcome open: may be heard, once
	wRefused        // ErrUnavailable: nothing applied, must not be heard
)

// jwrite is one issued write of a key.
type jwrite struct {
	outcome int
	kind    string // error kind of a failed write
	at      int64  // when the call returned (Unix ns)
}

// jwriter rewrites one key; only its goroutine appends, the check reads
// after it stopped.
type jwriter struct {
	key    string
	issued []jwrite // issued[n-1] is value n
	acked  atomic.Int64
}

func jvalue(key string, n int) []byte { return []byte(key + ":" + strconv.Itoa(n)) }

// parseJValue returns the n of value "<key>:<n>" (0 if it is not one).
func parseJValue(key string, v []byte) int {
	rest, ok := bytes.CutPrefix(v, []byte(key+":"))
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(string(rest))
	if err != nil || n < 1 {
		return 0
	}
	return n
}

// run writes until stop is closed.
func (w *jwriter) run(ctx context.Context, m client.Map, pace time.Duration, stop <-chan struct{}) {
	for n := 1; ; n++ {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		err := m.Put(ctx, w.key, jvalue(w.key, n))
		at := time.Now().UnixNano()
		switch {
		case err == nil:
			w.issued = append(w.issued, jwrite{outcome: wAcked, at: at})
			w.acked.Add(1)
		case errors.Is(err, client.ErrUnavailable):
			w.issued = append(w.issued, jwrite{outcome: wRefused, kind: errKind(err)})
		default:
			w.issued = append(w.issued, jwrite{outcome: wUnknown, kind: errKind(err)})
		}
		if err != nil && !errors.Is(err, client.ErrTimeout) {
			sleepCtx(ctx, 10*time.Millisecond)
		}
		sleepCtx(ctx, pace)
	}
}

// heard is one event the listener received.
type heard struct {
	n    int    // the value's number (0: not a value of this key)
	kind string // event kind
	old  []byte // the event's old value (nil if the journal kept none)
	pos  uint64
	part int
	at   int64 // when it was heard (Unix ns)
}

// jlistener records the events of listenMap, across its restarts.
type jlistener struct {
	mu       sync.Mutex
	heard    map[string][]heard
	events   int
	trimmed  []trimmedGap // gaps past retention told to OnGap
	restarts int
	errors   []string // Listen calls that ended other than by their ctx
	perRun   []int    // events heard by each Listen call
}

func (l *jlistener) onEvent(ev client.Event) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events++
	l.perRun[len(l.perRun)-1]++
	l.heard[ev.Key] = append(l.heard[ev.Key], heard{n: parseJValue(ev.Key, ev.Value), kind: ev.Kind.String(),
		old: bytes.Clone(ev.Old), pos: ev.Position, part: ev.Partition, at: time.Now().UnixNano()})
	return nil
}

func (l *jlistener) onGap(g *client.TrimmedError) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.trimmed = append(l.trimmed, trimmedGap{part: g.Partition, asked: g.Asked, oldest: g.Oldest})
	return nil
}

// last returns the n of the last event heard for key.
func (l *jlistener) last(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	hs := l.heard[key]
	if len(hs) == 0 {
		return 0
	}
	return hs[len(hs)-1].n
}

// listenRun is one Listen call with its own client, stopped by cancel.
type listenRun struct {
	c      *client.Client
	l      *client.Listener
	cancel context.CancelFunc
	done   chan error
}

// start dials a client and runs Listen from positions (nil: from
// JournalEnds; a slice of ones on a fresh map hears everything too).
func (l *jlistener) start(ctx context.Context, addrs []string, positions []uint64) (*listenRun, error) {
	c, err := client.Dial(ctx, client.Config{Addrs: addrs})
	if err != nil {
		return nil, err
	}
	if positions == nil {
		if positions, err = c.JournalEnds(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("journal ends: %w", err)
		}
	}
	l.mu.Lock()
	l.perRun = append(l.perRun, 0)
	l.mu.Unlock()
	lctx, cancel := context.WithCancel(ctx)
	r := &listenRun{c: c, cancel: cancel, done: make(chan error, 1),
		l: &client.Listener{Map: listenMap, Positions: positions, OnEvent: l.onEvent, OnGap: l.onGap}}
	go func() { r.done <- c.Listen(lctx, r.l) }()
	return r, nil
}

// stop ends the Listen call and returns its saved positions; a Listen
// that had ended on its own is recorded.
func (l *jlistener) stop(r *listenRun) []uint64 {
	r.cancel()
	err := <-r.done
	r.c.Close()
	if err != nil && !errors.Is(err, context.Canceled) {
		l.mu.Lock()
		l.errors = append(l.errors, err.Error())
		l.mu.Unlock()
	}
	return r.l.Positions
}

// ended returns the error of a Listen call that ended on its own, or nil.
func (r *listenRun) ended() (error, bool) {
	select {
	case err := <-r.done:
		r.done <- err
		return err, true
	default:
		return nil, false
	}
}

// listenResult is a round's listener workload.
type listenResult struct {
	From      string `json:"from"` // "journal_ends" or "position_1"
	Keys      int    `json:"keys"`
	Events    int    `json:"events_heard"`
	Acked     int    `json:"acked_writes"`
	Unknown   int    `json:"unknown_outcomes"`
	Refused   int    `json:"refused_writes"` // ErrUnavailable: nothing applied
	UnknownIn int    `json:"unknown_heard"`  // failed writes heard (once, in their place)
	Gaps      int    `json:"gaps"`           // silent: acknowledged values not heard, applied values skipped (kind, old value)
	Announced int    `json:"announced_gaps"` // the same, where OnGap told of a gap past retention
	// HistoryStarts counts the partitions where a listener started at
	// position 1 was told that the history begins later.
	HistoryStarts int   `json:"history_starts,omitempty"`
	Duplicates    int   `json:"duplicates"`
	Disorder      int   `json:"out_of_order"`
	Phantoms      int   `json:"phantoms"` // values never written, or refused ones
	OldChecked    int   `json:"old_values_checked"`
	Restarts      int   `json:"restarts"`
	PerRun        []int `json:"heard_per_listen_call"`
	Trimmed       int   `json:"trimmed_gaps"`
	// CatchUpMs: writers stopped -> every key's final value heard.
	CatchUpMs float64 `json:"catch_up_ms"`
	// DelayMs: acknowledgement -> heard, per acknowledged write heard
	// (the restart's pause included).
	DelayMs dist `json:"delay_ms"`

	delays []float64
}

// listenTotals adds up the rounds' listener workloads.
type listenTotals struct {
	Keys       int `json:"keys"`
	Events     int `json:"events_heard"`
	Acked      int `json:"acked_writes"`
	Unknown    int `json:"unknown_outcomes"`
	Refused    int `json:"refused_writes"`
	UnknownIn  int `json:"unknown_heard"`
	Gaps       int `json:"gaps"`
	Announced  int `json:"announced_gaps"`
	Duplicates int `json:"duplicates"`
	Disorder   int `json:"out_of_order"`
	Phantoms   int `json:"phantoms"`
	OldChecked int `json:"old_values_checked"`
	Restarts   int `json:"restarts"`
}

func (t *listenTotals) add(r *listenResult) {
	t.Keys += r.Keys
	t.Events += r.Events
	t.Acked += r.Acked
	t.Unknown += r.Unknown
	t.Refused += r.Refused
	t.UnknownIn += r.UnknownIn
	t.Gaps += r.Gaps
	t.Announced += r.Announced
	t.Duplicates += r.Duplicates
	t.Disorder += r.Disorder
	t.Phantoms += r.Phantoms
	t.OldChecked += r.OldChecked
	t.Restarts += r.Restarts
}

// trimmedGap is a gap past retention the listener was told of.
type trimmedGap struct {
	part          int
	asked, oldest uint64
}

// announced reports whether one of gaps in partition part lies between
// positions a (heard) and b (heard next; 0: nothing heard after a).
func announced(gaps []trimmedGap, part int, a, b uint64) bool {
	for _, g := range gaps {
		if g.part == part && g.asked > a && (b == 0 || g.asked <= b) {
			return true
		}
	}
	return false
}

// checkKey compares what the listener heard of key with its issued writes
// and adds the findings to r; it returns the violations. The committed
// history of a key is a subsequence of its issued values: the heard n
// must strictly increase (else a duplicate, or out of order), include
// every acknowledged one (else a gap) and nothing refused or never
// issued (a phantom); the first event must be "added" and the others
// "updated", each with the previous heard value as its old value when the
// journal kept one (else an applied write was not heard: a gap). A gap
// the listener was told of (OnGap: past retention) counts as announced,
// not silent; both are violations here, since the workload stays within
// retention.
func checkKey(key string, part int, issued []jwrite, hs []heard, gaps []trimmedGap, r *listenResult) []string {
	var out []string
	bad := func(format string, args ...any) {
		if len(out) < 3 {
			out = append(out, fmt.Sprintf("key %s: ", key)+fmt.Sprintf(format, args...))
		}
	}
	gap := func(a, b uint64, format string, args ...any) {
		if announced(gaps, part, a, b) {
			r.Announced++
			bad("(announced past retention) "+format, args...)
			return
		}
		r.Gaps++
		bad(format, args...)
	}
	// skipped reports acknowledged values in (from, to) not heard.
	skipped := func(from, to int, a, b uint64) {
		for n := from + 1; n < to; n++ {
			if issued[n-1].outcome == wAcked {
				gap(a, b, "acknowledged value %d not heard (between positions %d and %d)", n, a, b)
			}
		}
	}
	last, lastPos := 0, uint64(0)
	for i, h := range hs {
		switch {
		case h.n == 0 || h.n > len(issued):
			r.Phantoms++
			bad("heard a value never written (n %d, %d issued) at position %d", h.n, len(issued), h.pos)
			continue
		case h.n == last:
			r.Duplicates++
			bad("heard value %d twice (position %d)", h.n, h.pos)
			continue
		case h.n < last:
			r.Disorder++
			bad("heard value %d after %d (position %d)", h.n, last, h.pos)
			continue
		}
		w := issued[h.n-1]
		if w.outcome == wAcked {
			r.delays = append(r.delays, msOf(max(0, h.at-w.at)))
		}
		switch w.outcome {
		case wRefused:
			r.Phantoms++
			bad("heard value %d whose write failed with %s (nothing applied)", h.n, w.kind)
		case wUnknown:
			r.UnknownIn++
		}
		skipped(last, h.n, lastPos, h.pos)
		want := "updated"
		if i == 0 {
			want = "added"
		}
		if h.kind != want {
			gap(lastPos, h.pos, "value %d heard as %s, want %s", h.n, h.kind, want)
		}
		if h.old != nil && i > 0 {
			r.OldChecked++
			if prev := jvalue(key, last); !bytes.Equal(h.old, prev) {
				gap(lastPos, h.pos, "value %d replaced %q, but the value heard before it is %q", h.n, h.old, prev)
			}
		}
		last, lastPos = h.n, h.pos
	}
	skipped(last, len(issued)+1, lastPos, 0)
	return out
}

// checkListener fills r from the writers and the listener and returns the
// violations.
func checkListener(writers []*jwriter, l *jlistener, partitions int, r *listenResult) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	r.Keys, r.Events, r.Restarts, r.Trimmed = len(writers), l.events, l.restarts, len(l.trimmed)
	r.PerRun = slices.Clone(l.perRun)
	keys := map[string]bool{}
	for _, w := range writers {
		keys[w.key] = true
		for _, iw := range w.issued {
			switch iw.outcome {
			case wAcked:
				r.Acked++
			case wUnknown:
				r.Unknown++
			case wRefused:
				r.Refused++
			}
		}
		out = append(out, checkKey(w.key, affinity.Partition(w.key, partitions), w.issued, l.heard[w.key], l.trimmed, r)...)
	}
	r.DelayMs = distOf(r.delays)
	for k, hs := range l.heard {
		if !keys[k] {
			r.Phantoms += len(hs)
			out = append(out, fmt.Sprintf("heard %d events of key %q, which no writer wrote", len(hs), k))
		}
	}
	for _, g := range l.trimmed {
		if g.asked == 1 {
			// A listener started at position 1 is told, once per
			// partition, that the partition's history begins later (a
			// partition's positions start at its first epoch's base):
			// nothing was written before, so nothing was lost (the
			// per-key checks above hear every acknowledged value).
			r.HistoryStarts++
			continue
		}
		out = append(out, fmt.Sprintf("listener told of a gap past retention: partition %d asked from %d, oldest retained %d", g.part, g.asked, g.oldest))
	}
	for _, e := range l.errors {
		out = append(out, "Listen ended on its own: "+e)
	}
	return out
}

// writerKeys returns n keys, each in a partition of its own, spread over
// the partitions.
func writerKeys(n, partitions int) []string {
	keys, _ := keysPerPartition("jw", n, partitions)
	return keys
}

// errKinds counts the failed writes by kind.
func errKinds(writers []*jwriter) map[string]int {
	out := map[string]int{}
	for _, w := range writers {
		for _, iw := range w.issued {
			if iw.outcome != wAcked {
				out[iw.kind]++
			}
		}
	}
	return out
}

func ackedTotal(writers []*jwriter) int64 {
	var n int64
	for _, w := range writers {
		n += w.acked.Load()
	}
	return n
}

// describeKinds renders error counts for the log.
func describeKinds(m map[string]int) string {
	var parts []string
	for k, n := range m {
		parts = append(parts, fmt.Sprintf("%s %d", k, n))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
