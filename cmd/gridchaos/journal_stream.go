package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/client"
)

// The journal mode's stream workload: publishers publish events with
// unique ids (the id is the key, so the events spread over the
// partitions; the value is the id) while a consumer group reads them.

const (
	jstream = "journal-events"
	jgroup  = "checker"
	// consumeBatch is the most events one journal read hands a consumer
	// per partition (grid's defaultJournalMax; Consume asks no Max): the
	// "one batch" the docs allow to come again after a consumer crash.
	consumeBatch = 256
)

// Publish outcomes.
const (
	pAcked   = iota
	pUnknown // failed with an error that leaves the outcome open
	pRefused // ErrStreamFull or ErrUnavailable: nothing applied
)

// jpub is one publish call.
type jpub struct {
	id      string
	outcome int
	kind    string
	pos     uint64 // the acknowledged position
}

// jpublishers publish ids "e<n>" until stopped.
type jpublishers struct {
	next  atomic.Int64
	acked atomic.Int64
	mu    sync.Mutex
	pubs  []jpub
	wg    sync.WaitGroup
}

func (p *jpublishers) run(ctx context.Context, c *client.Client, pace time.Duration, stop <-chan struct{}) {
	defer p.wg.Done()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		id := fmt.Sprintf("e%d", p.next.Add(1))
		pos, err := c.Publish(ctx, jstream, id, []byte(id))
		pb := jpub{id: id, pos: pos}
		switch {
		case err == nil:
			pb.outcome = pAcked
			p.acked.Add(1)
		case errors.Is(err, client.ErrStreamFull) || errors.Is(err, client.ErrUnavailable):
			pb.outcome, pb.kind = pRefused, errKind(err)
			if errors.Is(err, client.ErrStreamFull) {
				pb.kind = "stream_full"
			}
		default:
			pb.outcome, pb.kind = pUnknown, errKind(err)
		}
		p.mu.Lock()
		p.pubs = append(p.pubs, pb)
		p.mu.Unlock()
		if err != nil && !errors.Is(err, client.ErrTimeout) {
			sleepCtx(ctx, 10*time.Millisecond)
		}
		sleepCtx(ctx, pace)
	}
}

// consumed is one event a consumer handled.
type consumed struct {
	id   string
	part int
	pos  uint64
}

// jconsumer runs the consumer group, one Consume call (incarnation) at a
// time, each with its own client; incs[i] is what incarnation i handled.
type jconsumer struct {
	addrs []string

	mu     sync.Mutex
	incs   [][]consumed
	errors []string // Consume calls that ended other than by their ctx
	seen   map[string]bool

	crash chan chan struct{} // a crash request; closed reply when the next incarnation runs
	wg    sync.WaitGroup

	// crashIn, when set, crashes the running incarnation (cancels its ctx
	// and closes its client): the next Handle calls it right after
	// recording its event, so the crash lands between handling a batch
	// and committing it.
	crashIn  func()
	inHandle bool // the crash landed in a Handle (not by the fallback)
}

func newJConsumer(addrs []string) *jconsumer {
	return &jconsumer{addrs: addrs, seen: map[string]bool{}, crash: make(chan chan struct{})}
}

// run keeps one Consume call running until ctx ends: a crash request
// cancels the current one abruptly and starts the next; one that ends on
// its own is recorded and replaced.
func (jc *jconsumer) run(ctx context.Context) {
	defer jc.wg.Done()
	var reply chan struct{}
	for ctx.Err() == nil {
		inc := jc.newInc()
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		c, err := client.Dial(cctx, client.Config{Addrs: jc.addrs})
		if err != nil {
			cancel()
			jc.note(fmt.Sprintf("dial: %v", err))
			sleepCtx(ctx, 100*time.Millisecond)
			continue
		}
		go func() {
			done <- c.Consume(cctx, &client.Consumer{Stream: jstream, Group: jgroup, Handle: func(ev client.StreamEvent) error {
				jc.handle(inc, ev)
				return nil
			}})
		}()
		crash := func() {
			jc.mu.Lock()
			jc.crashIn = func() { cancel(); c.Close() } // a dead process: its connections go too
			jc.mu.Unlock()
			select { // the next event crashes it; else, after a second, this
			case <-done:
			case <-time.After(time.Second):
				jc.mu.Lock()
				jc.crashIn = nil
				jc.mu.Unlock()
				cancel()
				<-done
			}
		}
		if reply != nil {
			close(reply)
			reply = nil
		}
		select {
		case reply = <-jc.crash:
			crash()
		case err := <-done:
			cancel()
			if ctx.Err() == nil {
				jc.note(fmt.Sprintf("incarnation %d: %v", inc, err))
				sleepCtx(ctx, 100*time.Millisecond)
			}
		case <-ctx.Done():
			cancel()
			<-done
		}
		c.Close()
	}
	if reply != nil {
		close(reply)
	}
}

func (jc *jconsumer) newInc() int {
	jc.mu.Lock()
	defer jc.mu.Unlock()
	jc.incs = append(jc.incs, nil)
	return len(jc.incs) - 1
}

func (jc *jconsumer) handle(inc int, ev client.StreamEvent) {
	jc.mu.Lock()
	defer jc.mu.Unlock()
	jc.incs[inc] = append(jc.incs[inc], consumed{id: string(ev.Value), part: ev.Partition, pos: ev.Position})
	jc.seen[string(ev.Value)] = true
	if jc.crashIn != nil {
		jc.crashIn()
		jc.crashIn, jc.inHandle = nil, true
	}
}

func (jc *jconsumer) note(s string) {
	jc.mu.Lock()
	defer jc.mu.Unlock()
	jc.errors = append(jc.errors, s)
}

// crashNow cancels the running Consume call and waits until the next one
// started.
func (jc *jconsumer) crashNow(ctx context.Context) {
	reply := make(chan struct{})
	select {
	case jc.crash <- reply:
	case <-ctx.Done():
		return
	}
	select {
	case <-reply:
	case <-ctx.Done():
	}
}

// missing returns how many of ids were not consumed yet.
func (jc *jconsumer) missing(ids []string) int {
	jc.mu.Lock()
	defer jc.mu.Unlock()
	n := 0
	for _, id := range ids {
		if !jc.seen[id] {
			n++
		}
	}
	return n
}

// streamResult is a round's stream workload.
type streamResult struct {
	Published int            `json:"published"` // publish calls
	Acked     int            `json:"acked"`
	Refused   int            `json:"refused"` // ErrStreamFull or ErrUnavailable: nothing applied
	Full      int            `json:"stream_full"`
	Unknown   int            `json:"unknown"`
	Errors    map[string]int `json:"errors,omitempty"`
	Consumed  int            `json:"consumed"` // events handled, redeliveries included
	Distinct  int            `json:"distinct"`
	Lost      int            `json:"lost"`       // acknowledged, never consumed
	Duplicate int            `json:"duplicated"` // redeliveries
	// MaxRedelivered is the most events of one partition delivered again
	// after one consumer restart (at most consumeBatch).
	MaxRedelivered int      `json:"max_redelivered_per_partition"`
	Phantoms       int      `json:"phantoms"` // consumed, never published or refused
	Misplaced      int      `json:"misplaced"`
	Disorder       int      `json:"out_of_order"`
	Incarnations   int      `json:"consumer_incarnations"`
	PerInc         []int    `json:"consumed_per_incarnation"`
	Crashes        int      `json:"consumer_crashes"`
	CrashInHandle  bool     `json:"crash_in_handle"` // the crash cancelled the consumer right after it handled an event
	ConsumerErrors []string `json:"consumer_errors,omitempty"`
	CatchUpMs      float64  `json:"catch_up_ms"` // publishers stopped -> every acknowledged event consumed
	DeleteGroup    string   `json:"delete_group,omitempty"`
}

// streamTotals adds up the rounds' stream workloads.
type streamTotals struct {
	Published      int `json:"published"`
	Acked          int `json:"acked"`
	Refused        int `json:"refused"`
	Unknown        int `json:"unknown"`
	Consumed       int `json:"consumed"`
	Lost           int `json:"lost"`
	Duplicate      int `json:"duplicated"`
	MaxRedelivered int `json:"max_redelivered_per_partition"`
	Phantoms       int `json:"phantoms"`
	Crashes        int `json:"consumer_crashes"`
	ConsumerErrors int `json:"consumer_errors"`
}

func (t *streamTotals) add(r *streamResult) {
	t.Published += r.Published
	t.Acked += r.Acked
	t.Refused += r.Refused
	t.Unknown += r.Unknown
	t.Consumed += r.Consumed
	t.Lost += r.Lost
	t.Duplicate += r.Duplicate
	t.MaxRedelivered = max(t.MaxRedelivered, r.MaxRedelivered)
	t.Phantoms += r.Phantoms
	t.Crashes += r.Crashes
	t.ConsumerErrors += len(r.ConsumerErrors)
}

// checkStream fills r from the publish calls and what each consumer
// incarnation handled, and returns the violations: an acknowledged event
// never consumed (lost), consumed at another position than acknowledged
// or in another partition than its key's, or at two positions; an event
// refused or never published consumed; a partition's events out of
// position order within an incarnation; more than one batch of a
// partition delivered again after a restart.
func checkStream(pubs []jpub, incs [][]consumed, partitions int, r *streamResult) []string {
	var out []string
	bad := func(format string, args ...any) {
		if len(out) < 10 {
			out = append(out, fmt.Sprintf(format, args...))
		}
	}
	byID := map[string]jpub{}
	r.Errors = map[string]int{}
	for _, p := range pubs {
		byID[p.id] = p
		r.Published++
		switch p.outcome {
		case pAcked:
			r.Acked++
		case pRefused:
			r.Refused++
			if p.kind == "stream_full" {
				r.Full++
			}
			r.Errors[p.kind]++
		default:
			r.Unknown++
			r.Errors[p.kind]++
		}
	}
	r.Incarnations = len(incs)
	at := map[string]uint64{}   // id -> position consumed
	handled := map[int]uint64{} // partition -> highest position handled by earlier incarnations
	count := map[string]int{}   // id -> consumptions
	for i, inc := range incs {
		r.PerInc = append(r.PerInc, len(inc))
		last := map[int]uint64{}
		again := map[int]int{}
		for _, c := range inc {
			r.Consumed++
			count[c.id]++
			p, ok := byID[c.id]
			switch {
			case !ok:
				r.Phantoms++
				bad("consumed %q, never published (partition %d position %d)", c.id, c.part, c.pos)
			case p.outcome == pRefused:
				r.Phantoms++
				bad("consumed %q, whose publish failed with %s (nothing applied)", c.id, p.kind)
			case p.outcome == pAcked && p.pos != c.pos:
				r.Misplaced++
				bad("consumed %q at position %d, acknowledged at %d", c.id, c.pos, p.pos)
			}
			if want := affinity.Partition(c.id, partitions); c.part != want {
				r.Misplaced++
				bad("consumed %q from partition %d, its key's is %d", c.id, c.part, want)
			}
			if prev, ok := at[c.id]; ok && prev != c.pos {
				r.Misplaced++
				bad("consumed %q at positions %d and %d (published twice?)", c.id, prev, c.pos)
			}
			at[c.id] = c.pos
			if c.pos <= last[c.part] {
				r.Disorder++
				bad("incarnation %d: partition %d position %d after %d", i, c.part, c.pos, last[c.part])
			}
			last[c.part] = c.pos
			if c.pos <= handled[c.part] {
				again[c.part]++
			}
		}
		for part, n := range again {
			r.MaxRedelivered = max(r.MaxRedelivered, n)
			if n > consumeBatch {
				bad("incarnation %d: %d events of partition %d delivered again (at most one batch, %d)", i, n, part, consumeBatch)
			}
		}
		for part, pos := range last {
			handled[part] = max(handled[part], pos)
		}
	}
	for id, n := range count {
		r.Distinct++
		r.Duplicate += n - 1
		_ = id
	}
	var lost []string
	for _, p := range pubs {
		if p.outcome == pAcked && count[p.id] == 0 {
			r.Lost++
			lost = append(lost, p.id)
		}
	}
	if r.Lost > 0 {
		slices.Sort(lost)
		bad("%d acknowledged events never consumed, e.g. %v", r.Lost, lost[:min(5, len(lost))])
	}
	return out
}
