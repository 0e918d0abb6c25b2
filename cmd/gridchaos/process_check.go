package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/client"
	"github.com/collocate/grid/process"
	"github.com/collocate/grid/process/builtin"
)

// The process mode's end: wait for the processors to drain, read every
// event's effects back, and compare them with what was published.

// chainRead is what the grid holds at the end.
type chainRead struct {
	s1, s2     []int64       // counts by event (0: absent)
	proj       map[int]int64 // projections by bucket (absent: 0)
	unreadable []string      // entries whose value is not a count
	phantoms   []string      // stage-map keys of no published event
	dead       int           // dead letters, every partition and stream
	deadSample []string
}

// drainChain waits until the processors are drained: no lag on any node,
// and both stage maps' sizes unchanged for 2 s with as many entries at
// stage 2 as at stage 1 and at least acked; or the same state (whatever
// the sizes) unchanged for 15 s. It reports whether it got there within d,
// and the last state seen.
func drainChain(ctx context.Context, h *harness, c *client.Client, acked int, d time.Duration) (bool, string) {
	deadline := time.Now().Add(d)
	s1m, s2m := c.Map(builtin.ChainStage1), c.Map(builtin.ChainStage2)
	var last string
	var since time.Time
	for {
		lag := 0
		for _, p := range h.running() {
			l := processorLag(ctx, p).total
			if l < 0 {
				lag = -1
				break
			}
			lag += l
		}
		n1, err1 := s1m.Size(ctx)
		n2, err2 := s2m.Size(ctx)
		state := fmt.Sprintf("lag %d, stage 1 %d entries, stage 2 %d (acknowledged %d)", lag, n1, n2, acked)
		if err := errors.Join(err1, err2); err != nil {
			state += fmt.Sprintf(" (%v)", err)
			lag = -1
		}
		if state != last || lag != 0 {
			last, since = state, time.Now()
		}
		stable := time.Since(since)
		if lag == 0 && ((stable >= 2*time.Second && n1 == n2 && n2 >= acked) || stable >= 15*time.Second) {
			return true, state
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false, state
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
}

// readChain reads every event's counts, every bucket's projection, the
// stage maps' keys and every partition's dead letters.
func readChain(ctx context.Context, c *client.Client, evs []chainEvent, buckets, partitions int) (*chainRead, error) {
	r := &chainRead{s1: make([]int64, len(evs)), s2: make([]int64, len(evs)), proj: map[int]int64{}}
	k1 := make([]string, len(evs))
	k2 := make([]string, len(evs))
	for i, ev := range evs {
		k1[i], k2[i] = builtin.InKey(ev.id), builtin.MidKey(ev.bucket, ev.id)
	}
	if err := readCounts(ctx, c.Map(builtin.ChainStage1), k1, r.s1, &r.unreadable); err != nil {
		return nil, fmt.Errorf("stage 1: %w", err)
	}
	if err := readCounts(ctx, c.Map(builtin.ChainStage2), k2, r.s2, &r.unreadable); err != nil {
		return nil, fmt.Errorf("stage 2: %w", err)
	}
	pk := make([]string, buckets)
	for b := range buckets {
		pk[b] = builtin.ProjKey(b)
	}
	pv := make([]int64, buckets)
	if err := readCounts(ctx, c.Map(builtin.ChainProj), pk, pv, &r.unreadable); err != nil {
		return nil, fmt.Errorf("projections: %w", err)
	}
	for b, v := range pv {
		r.proj[b] = v
	}
	for _, m := range []struct {
		name string
		keys []string
	}{{builtin.ChainStage1, k1}, {builtin.ChainStage2, k2}, {builtin.ChainProj, pk}} {
		extra, err := unknownKeys(ctx, c.Map(m.name), m.keys)
		if err != nil {
			return nil, fmt.Errorf("scan %s: %w", m.name, err)
		}
		for _, k := range extra {
			r.phantoms = append(r.phantoms, m.name+" "+k)
		}
	}
	for _, stream := range []string{process.DeadLetters("chain1"), process.DeadLetters("chain2"), process.DeadLetters("outbox")} {
		for part := range partitions {
			n, sample, err := readDeadLetters(ctx, c, stream, part)
			if err != nil {
				return nil, fmt.Errorf("%s partition %d: %w", stream, part, err)
			}
			r.dead += n
			if sample != "" && len(r.deadSample) < 5 {
				r.deadSample = append(r.deadSample, fmt.Sprintf("%s partition %d: %s", stream, part, sample))
			}
		}
	}
	return r, nil
}

// readCounts reads the integer values of keys into out (absent: 0), in
// batches, retrying a failed batch a few times.
func readCounts(ctx context.Context, m client.Map, keys []string, out []int64, unreadable *[]string) error {
	const batch = 500
	for lo := 0; lo < len(keys); lo += batch {
		hi := min(lo+batch, len(keys))
		var got map[string][]byte
		var err error
		for try := range 5 {
			if got, err = m.GetAll(ctx, keys[lo:hi]); err == nil {
				break
			}
			sleepCtx(ctx, time.Duration(try+1)*200*time.Millisecond)
		}
		if err != nil {
			return err
		}
		for i := lo; i < hi; i++ {
			v, ok := got[keys[i]]
			if !ok {
				continue
			}
			n, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil {
				*unreadable = append(*unreadable, fmt.Sprintf("%s %q", keys[i], v))
				continue
			}
			out[i] = n
		}
	}
	return nil
}

// unknownKeys scans m and returns its keys that are not among keys.
func unknownKeys(ctx context.Context, m client.Map, keys []string) ([]string, error) {
	want := make(map[string]bool, len(keys))
	for _, k := range keys {
		want[k] = true
	}
	var extra []string
	var err error
	for try := range 3 {
		extra, err = nil, nil
		for k := range m.Scan(ctx, &err) {
			if !want[k] {
				extra = append(extra, k)
			}
		}
		if err == nil {
			return extra, nil
		}
		sleepCtx(ctx, time.Duration(try+1)*500*time.Millisecond)
	}
	return nil, err
}

// readDeadLetters counts stream's events in partition part and describes
// the first.
func readDeadLetters(ctx context.Context, c *client.Client, stream string, part int) (int, string, error) {
	n, sample := 0, ""
	from := uint64(1)
	for range 1000 {
		var evs []client.StreamEvent
		var next uint64
		var err error
		for try := range 5 {
			if evs, next, err = c.ReadStream(ctx, stream, part, from, 4096); err == nil {
				break
			}
			var t *client.TrimmedError
			if errors.As(err, &t) {
				sample = fmt.Sprintf("trimmed before %d", t.Oldest)
				from = t.Oldest
				continue
			}
			sleepCtx(ctx, time.Duration(try+1)*200*time.Millisecond)
		}
		if err != nil {
			return n, sample, err
		}
		if len(evs) == 0 {
			return n, sample, nil
		}
		if sample == "" {
			if dl, err := process.DecodeDeadLetter(evs[0].Value); err == nil {
				sample = fmt.Sprintf("%s %s partition %d position %d, %d events: %s", dl.Processor, dl.Source, dl.Partition, dl.Position, len(dl.Events), dl.Error)
			} else {
				sample = fmt.Sprintf("undecodable %q", evs[0].Value)
			}
		}
		n += len(evs)
		from = next
	}
	return n, sample, fmt.Errorf("more than 1000 pages of dead letters")
}

// chainVerdict is the check of one round's effects.
type chainVerdict struct {
	chainTotals
	Violations []string
	Examples   []string
}

// checkChain compares the effects read back with the publishes: an
// acknowledged event counted exactly once at both stages; one of unknown
// outcome at most once, the same at both stages; one refused (or never
// published) nowhere; no other keys in the stage maps; every projection
// equal to the sum of amount times stage-2 count of its bucket's events;
// no dead letters. partitions places the events for the examples.
func checkChain(evs []chainEvent, pubs []chainPub, r *chainRead, buckets, partitions int) chainVerdict {
	var v chainVerdict
	var lost, dup, phantom []string
	example := func(list *[]string, i int, why string) {
		*list = append(*list, fmt.Sprintf("%s (%s; bucket %d, stage-1 partition %d, stage-2 partition %d; counts %d, %d; %d attempts, last error %q)",
			evs[i].id, why, evs[i].bucket, affinity.Partition(builtin.InKey(evs[i].id), partitions),
			affinity.Partition(builtin.MidKey(evs[i].bucket, evs[i].id), partitions), r.s1[i], r.s2[i], pubs[i].attempts, pubs[i].kind))
	}
	want := map[int]int64{}
	for i, ev := range evs {
		c1, c2 := r.s1[i], r.s2[i]
		want[ev.bucket] += c2 * ev.amount
		if c1 == 1 && c2 == 1 {
			v.Through++
		}
		switch pubs[i].outcome {
		case cAcked:
			v.Events++
			v.Acknowledged++
			if c1 > 1 || c2 > 1 {
				example(&dup, i, "acknowledged, counted more than once")
			} else if c1 != 1 || c2 != 1 {
				example(&lost, i, "acknowledged, not counted at both stages")
			}
		case cUnknown:
			v.Events++
			v.Unknown++
			switch {
			case c1 > 1 || c2 > 1:
				example(&dup, i, "outcome unknown, counted more than once")
			case c1 == 1 && c2 == 0:
				example(&lost, i, "outcome unknown, counted at stage 1 only")
			case c1 == 0 && c2 == 1:
				example(&phantom, i, "outcome unknown, counted at stage 2 only")
			}
		default:
			if pubs[i].outcome == cRefused {
				v.Events++
				v.Refused++
			}
			if c1 != 0 || c2 != 0 {
				example(&phantom, i, "refused or never published, counted")
			}
		}
	}
	v.Lost, v.Duplicated = len(lost), len(dup)
	v.Phantoms = len(phantom) + len(r.phantoms)
	var mismatch []string
	for b := range buckets {
		if r.proj[b] != want[b] {
			mismatch = append(mismatch, fmt.Sprintf("bucket %d (partition %d): projection %d, recomputed %d",
				b, affinity.Partition(builtin.ProjKey(b), partitions), r.proj[b], want[b]))
		}
	}
	v.ProjMismatch = len(mismatch)
	v.DeadLetters = r.dead
	report := func(what string, list []string) {
		if len(list) > 0 {
			v.Violations = append(v.Violations, fmt.Sprintf("%d %s: %s", len(list), what, strings.Join(list[:min(3, len(list))], "; ")))
			v.Examples = append(v.Examples, list[:min(10, len(list))]...)
		}
	}
	report("events lost", lost)
	report("events duplicated", dup)
	report("events counted that must not be", phantom)
	report("keys in the stage maps of no published event", r.phantoms)
	report("projections differ from their recomputation", mismatch)
	report("stage-map values that are no count", r.unreadable)
	if r.dead > 0 {
		v.Violations = append(v.Violations, fmt.Sprintf("%d dead letters: %s", r.dead, strings.Join(r.deadSample, "; ")))
	}
	return v
}

// throughVerdict says why a round's figures show too little to count as
// evidence: nothing acknowledged, or fewer than minThrough of the events
// through both stages.
func throughVerdict(t *chainTotals, minThrough float64) string {
	switch {
	case t.Acknowledged == 0:
		return "no publish was acknowledged"
	case float64(t.Through) < minThrough*float64(t.Events):
		return fmt.Sprintf("only %d of %d events went through both stages (less than %.0f%%)", t.Through, t.Events, 100*minThrough)
	}
	return ""
}
