package process

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/api"
)

// Event is one event a processor handles.
type Event struct {
	Stream    string // the stream, or the map of a change feed
	Partition int
	Position  uint64         // the event's position in its partition (a record's events share one)
	Kind      grid.EventKind // EventPublished for a stream's events; a map change's kind for a feed
	Key       string
	Value     []byte
	Old       []byte    // a feed's replaced or removed value, when the journal kept it
	Time      time.Time // when the grid committed it
	Attempt   int       // 1 on the first try, then each retry
}

// Handler handles one event at its partition's primary. Its writes (through
// c) and its emitted events apply together with the processor's new
// position, as one replicated record, only if it returns nil. It may run
// more than once for an event (a retry after an error, a conflicting
// write, a failover before the commit), but its effects inside the grid
// apply once. Effects outside the grid should be made idempotent with
// c.IdempotencyKey().
type Handler func(ctx context.Context, c *Context, e Event) error

// Processor is an event processor: Handler runs for every event of
// Stream (or every change of map Map), at the primary of the event's
// partition, one event at a time in the partition's order.
type Processor struct {
	Name string
	// Stream binds the processor to a stream: its consumer group holds
	// the stream's retention, so no event is ever dropped before it was
	// handled (a publisher gets ErrStreamFull instead).
	Stream string
	// Map, instead of Stream, binds it to the map's change feed (the
	// partition journal's events of Map). The journal's retention is not
	// held for processors: a processor that falls behind it by more than
	// Config.JournalRecords records parks the gap in its dead letters and
	// goes on. Its handler must not write Map, or it handles its own
	// writes.
	Map     string
	Handler Handler
	// MaxAttempts is how often an event is tried before it is parked in
	// the dead-letter stream Name+".dlq" (0: DefaultMaxAttempts).
	MaxAttempts int
	// Backoff is the wait before the first retry, doubled for each next
	// one up to MaxBackoff (0: defaults).
	Backoff, MaxBackoff time.Duration
	// MaxBatch is the most queued events handled in one record (0:
	// DefaultMaxBatch; 1: one record per event).
	MaxBatch int
	// Budget bounds one record's handler runs (0: the node's MaxStepTime).
	Budget time.Duration
	// Linger is the least time between two records of the processor at
	// one partition once it has caught up with its stream (0: none):
	// events that arrive meanwhile share the next record, which costs
	// them up to Linger of latency and saves a replicated record each.
	// A full batch (MaxBatch records queued) never waits. Kafka Streams'
	// exactly-once mode commits every 100 ms by default.
	Linger time.Duration
}

// Processor defaults.
const (
	DefaultMaxAttempts = 5
	DefaultBackoff     = 50 * time.Millisecond
	DefaultMaxBackoff  = 2 * time.Second
	DefaultMaxBatch    = 32
	// maxBatch bounds MaxBatch: a record holds every write of its batch.
	maxBatch = 1024
)

// ErrBadProcessor marks an invalid Processor.
var ErrBadProcessor = errors.New("process: invalid processor")

func (p *Processor) withDefaults() Processor {
	q := *p
	if q.MaxAttempts == 0 {
		q.MaxAttempts = DefaultMaxAttempts
	}
	if q.Backoff == 0 {
		q.Backoff = DefaultBackoff
	}
	if q.MaxBackoff == 0 {
		q.MaxBackoff = DefaultMaxBackoff
	}
	if q.MaxBatch == 0 {
		q.MaxBatch = DefaultMaxBatch
	}
	return q
}

// Validate reports whether p can run.
func (p *Processor) Validate() error {
	switch {
	case p.Name == "" || len(p.Name) > 200:
		return fmt.Errorf("%w: a name of 1 to 200 bytes", ErrBadProcessor)
	case p.Name[0] == grid.ReservedPrefix[0]:
		return fmt.Errorf("%w: name %q starts with the grid's reserved prefix", ErrBadProcessor, p.Name)
	case (p.Stream == "") == (p.Map == ""):
		return fmt.Errorf("%w: %s needs a Stream or a Map, not both", ErrBadProcessor, p.Name)
	case p.source()[0] == grid.ReservedPrefix[0]:
		return fmt.Errorf("%w: %s: %q is one of the grid's own names", ErrBadProcessor, p.Name, p.source())
	case p.Handler == nil:
		return fmt.Errorf("%w: %s has no handler", ErrBadProcessor, p.Name)
	case p.MaxAttempts < 0 || p.MaxBatch < 0 || p.MaxBatch > maxBatch:
		return fmt.Errorf("%w: %s: MaxAttempts %d, MaxBatch %d (max %d)", ErrBadProcessor, p.Name, p.MaxAttempts, p.MaxBatch, maxBatch)
	case p.Backoff < 0 || p.MaxBackoff < 0 || p.Budget < 0 || p.Linger < 0:
		return fmt.Errorf("%w: %s: negative durations", ErrBadProcessor, p.Name)
	}
	return nil
}

// group is the consumer group that holds the processor's position.
func (p *Processor) group() string { return grid.ReservedPrefix + "proc:" + p.Name }

// source is the stream or map the processor reads.
func (p *Processor) source() string {
	if p.Map != "" {
		return p.Map
	}
	return p.Stream
}

// positions is the stream whose groups hold the processor's position.
func (p *Processor) positions() string {
	if p.Map != "" {
		return grid.FeedStream(p.Map)
	}
	return p.Stream
}

// DeadLetters is the stream where a processor parks the events it gave up
// on (in the event's own partition, keyed like the event).
func DeadLetters(processor string) string { return processor + ".dlq" }

// Context is a handler's access to the event's partition: map reads and
// writes of entries collocated with the event's key, and events to emit.
// It is valid only during the handler call.
type Context struct {
	v     *grid.StepView
	proc  string
	ev    *Event
	index int // the event's index among its record's (a feed's record may hold several)
	out   *outbox
	err   error // the first misuse (a reserved name, too much emitted): fails the event
}

// outbox is what a batch's handlers emitted, and its bound: the encoded
// events must fit one outbox event.
type outbox struct {
	events []outEvent
	bytes  int // the encoding's size, over-estimated
	limit  int
}

// refuse records a misuse; the handler's event fails with it.
func (c *Context) refuse(what, name string) bool {
	if name != "" && name[0] != grid.ReservedPrefix[0] {
		return false
	}
	if c.err == nil {
		c.err = fmt.Errorf("%w: %s %q: empty or one of the grid's own names", api.ErrBadRequest, what, name)
	}
	return true
}

// Get returns the value of key in map m (key must be collocated with the
// event's key: the same affinity key, or any key of the partition).
func (c *Context) Get(m, key string) ([]byte, bool) { return c.v.Get(m, key) }

// Set writes key in map m (collocated, see Get), expiring after ttl (0:
// never).
func (c *Context) Set(m, key string, value []byte, ttl time.Duration) {
	if !c.refuse("map", m) {
		c.v.Set(m, key, value, ttl)
	}
}

// Delete deletes key in map m (collocated, see Get).
func (c *Context) Delete(m, key string) {
	if !c.refuse("map", m) {
		c.v.Delete(m, key)
	}
}

// View is the whole step view of the partition (ranges, entries with
// versions and TTLs).
func (c *Context) View() *grid.StepView { return c.v }

// Emit sends event to stream at key's partition, anywhere in the grid: it
// goes into this partition's outbox with the handler's other effects, and
// is delivered once to its stream, after the commit, whatever fails in
// between.
//
// What a batch emits must fit one outbox event (the node's MaxValueSize
// and StreamBytes): an Emit past that fails the event (retried alone, then
// parked) and keeps nothing, so a handler that emits in a loop does not
// grow the node's memory for its whole budget.
func (c *Context) Emit(stream, key string, event []byte) {
	if c.refuse("stream", stream) || c.err != nil {
		return
	}
	o := c.out
	o.bytes += len(c.proc) + len(stream) + len(key) + len(event) + outEventOverhead
	if o.bytes > o.limit {
		c.err = fmt.Errorf("%w: the batch's emitted events reached %d bytes, more than one outbox event holds (%d)", api.ErrValueTooLarge, o.bytes, o.limit)
		return
	}
	o.events = append(o.events, outEvent{Proc: c.proc, Stream: stream, Key: key, Value: append([]byte(nil), event...)})
}

// outEventOverhead over-estimates an emitted event's encoding besides its
// strings and value.
const outEventOverhead = 24

// IdempotencyKey names this event's handling for effects outside the grid:
// the same for every attempt, different for every event
// (processor/stream/partition/position, and "/i" for the i-th event, from
// 0, of a record past its first: a feed's record may hold several).
func (c *Context) IdempotencyKey() string {
	k := c.proc + "/" + c.ev.Stream + "/" + strconv.Itoa(c.ev.Partition) + "/" + strconv.FormatUint(c.ev.Position, 10)
	if c.index > 0 {
		k += "/" + strconv.Itoa(c.index)
	}
	return k
}
