package process

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/api"
	"github.com/vmihailenco/msgpack/v5"
)

// A processor's run at one partition (its primary): read the committed
// events after the processor's position, handle a batch of them in one
// step whose record carries the handler's writes, the outbox event and the
// new position, and go on from there. The step checks that the position is
// still the one the batch started from, so a batch commits at most once
// whoever runs it (a deposed primary's late step fails: its epoch is gone),
// and a promoted backup starts after the last committed batch: no event
// skipped, none applied twice.
//
// The unit of a position is a record: a map's change feed may hold several
// events of one record (a PutAll, a function's writes), which share its
// position. Batches, retries and dead letters therefore take whole
// records ("units"): a position never moves past half a record.

// errPositionMoved: the position changed under a batch (a replay, or
// another run of this processor): read it again.
var errPositionMoved = errors.New("process: the processor's position moved")

// handlerError carries the batch index of the unit whose handler failed.
type handlerError struct {
	index int
	err   error
}

func (e *handlerError) Error() string { return e.err.Error() }
func (e *handlerError) Unwrap() error { return e.err }

// batchFault reports whether the failure is the batch's rather than its
// unit's when the unit is not the batch's first: the batch ran out of its
// budget, or the unit published to a stream an earlier unit did (a step
// publishes one event per stream).
func (e *handlerError) batchFault() bool {
	return e.index > 0 && (errors.Is(e.err, api.ErrFunctionBudget) || errors.Is(e.err, grid.ErrPublishedTwice))
}

// unit is the events of one record, and its position.
type unit struct {
	pos    uint64
	events []grid.Event
}

// units groups evs (in position order) by position.
func units(evs []grid.Event) []unit {
	var out []unit
	for _, e := range evs {
		if n := len(out); n > 0 && out[n-1].pos == e.Position {
			out[n-1].events = append(out[n-1].events, e)
			continue
		}
		out = append(out, unit{pos: e.Position, events: []grid.Event{e}})
	}
	return out
}

// read is proc's local read at part from position from.
func (r *Runtime) read(ctx context.Context, proc *registered, part int, from uint64, wait time.Duration) (grid.LocalEvents, error) {
	return r.node.ReadLocal(ctx, grid.LocalRead{Part: part, Name: proc.source(), Feed: proc.Map != "", Group: proc.group(),
		From: from, Max: proc.MaxBatch, Wait: wait})
}

// run handles proc's events of partition part while this node leads it.
// pos is the committed position; cursor is where reading goes on (a
// feed's records of other maps are skipped without a commit).
func (r *Runtime) run(ctx context.Context, proc *registered, part int) {
	pos, err := r.startPosition(ctx, part, grid.LocalRead{Name: proc.source(), Feed: proc.Map != ""}, proc.positions(), proc.group())
	if err != nil {
		r.quiet(ctx, part, proc.Name+" position", err)
		return
	}
	ps := proc.part(part)
	ps.position.Store(pos)
	cursor := pos
	var last time.Time // when the last batch committed
	lastUnits := 0     // its records
	for ctx.Err() == nil {
		if r.paused(proc.Name) {
			if !r.sleep(ctx, r.cfg.Poll) {
				return
			}
			continue
		}
		if lastUnits < proc.MaxBatch {
			// Caught up: let arrivals gather for the next record.
			if wait := proc.Linger - time.Since(last); wait > 0 && !r.sleep(ctx, wait) {
				return
			}
		}
		le, err := r.read(ctx, proc, part, cursor, r.cfg.Poll)
		var trimmed *api.TrimmedError
		if errors.As(err, &trimmed) || errors.Is(err, api.ErrJournalTrimmed) {
			// le: the events after the gap, read before the gap's record
			// could drop them (a full journal drops one per record).
			le, err = r.skipGap(ctx, proc, part, pos, trimmed)
			if err == nil {
				pos, cursor = le.Committed, le.Committed
				ps.position.Store(pos)
			}
		}
		if err != nil {
			r.quiet(ctx, part, proc.Name+" read", err)
			return
		}
		if le.Committed != pos {
			// Replayed, or moved by another run: follow the grid.
			pos, cursor = le.Committed, le.Committed
			ps.position.Store(pos)
			continue
		}
		cursor = le.Next
		if len(le.Events) == 0 {
			if pos, err = r.followQuiet(ctx, proc, part, pos, cursor, le.Oldest); err != nil {
				r.quiet(ctx, part, proc.Name+" quiet position", err)
				return
			}
			ps.position.Store(pos)
			continue
		}
		us := units(le.Events)
		next, err := r.handleUnits(ctx, proc, part, pos, us)
		if errors.Is(err, errPositionMoved) {
			pos, err = r.currentPosition(ctx, part, proc)
			cursor = pos
		} else if err == nil {
			pos = next
		}
		if err != nil {
			r.quiet(ctx, part, proc.Name+" handling", err)
			return
		}
		ps.position.Store(pos)
		last, lastUnits = time.Now(), len(us)
	}
}

// handleUnits handles us (the records from position pos on) in as few
// records as the handler allows: the whole batch in one; on a handler
// failure, the units before the failing one in one, then the failing one
// alone, with retries and finally the dead letters. It returns the new
// position.
func (r *Runtime) handleUnits(ctx context.Context, proc *registered, part int, pos uint64, us []unit) (uint64, error) {
	for len(us) > 0 {
		err := r.commitBatch(ctx, proc, part, pos, us, 1)
		var he *handlerError
		switch {
		case err == nil:
			r.counted(proc, part, us, false)
			return us[len(us)-1].pos + 1, nil
		case errors.As(err, &he):
			if he.index > 0 {
				// Commit those before the failing one (as a batch of
				// their own, split again if need be).
				next, err := r.handleUnits(ctx, proc, part, pos, us[:he.index])
				if err != nil {
					return pos, err
				}
				pos = next
				if he.batchFault() {
					// Not necessarily the unit's failure: it goes on
					// first in a batch of its own.
					us = us[he.index:]
					continue
				}
			}
			// The failing unit's first attempt was this one.
			next, err := r.retryOne(ctx, proc, part, pos, us[he.index], he.err)
			if err != nil {
				return pos, err
			}
			pos = next
			us = us[he.index+1:]
		case (errors.Is(err, api.ErrValueTooLarge) || errors.Is(err, grid.ErrPublishedTwice)) && len(us) > 1:
			// The batch's writes do not fit one record: halve it.
			half := len(us) / 2
			next, err := r.handleUnits(ctx, proc, part, pos, us[:half])
			if err != nil {
				return pos, err
			}
			pos, us = next, us[half:]
		default:
			return pos, err
		}
	}
	return pos, nil
}

// counted adds handled (or parked) units to the statistics.
func (r *Runtime) counted(proc *registered, part int, us []unit, parked bool) {
	n := int64(0)
	for _, u := range us {
		n += int64(len(u.events))
	}
	if parked {
		proc.stats.parked.Add(n)
		proc.part(part).parked.Add(n)
		return
	}
	proc.stats.handled.Add(n)
	proc.part(part).handled.Add(n)
}

// retryOne handles u alone until it commits or its attempts are spent;
// then it parks u in the dead letters, with the position, in one record.
func (r *Runtime) retryOne(ctx context.Context, proc *registered, part int, pos uint64, u unit, last error) (uint64, error) {
	wait := proc.Backoff
	for attempt := 2; attempt <= proc.MaxAttempts; attempt++ {
		proc.stats.retries.Add(1)
		if !r.sleep(ctx, wait) {
			return pos, ctx.Err()
		}
		wait = min(2*wait, proc.MaxBackoff)
		err := r.commitBatch(ctx, proc, part, pos, []unit{u}, attempt)
		var he *handlerError
		if err == nil {
			r.counted(proc, part, []unit{u}, false)
			return u.pos + 1, nil
		}
		if !errors.As(err, &he) {
			return pos, err
		}
		last = he.err
	}
	dl := proc.deadLetter(part, u, last)
	if err := r.parkAndMove(ctx, proc, part, pos, u.pos+1, u.events[0].Key, dl); err != nil {
		return pos, err
	}
	r.counted(proc, part, []unit{u}, true)
	r.log.Warn("processor parked an event in its dead letters", "processor", proc.Name, "partition", part, "position", u.pos, "err", last)
	return u.pos + 1, nil
}

// commitBatch runs the handler over us (from position pos) in one step
// and commits its effects with the outbox event and the new position. A
// handler failure is a *handlerError naming the unit; nothing applied.
func (r *Runtime) commitBatch(ctx context.Context, proc *registered, part int, pos uint64, us []unit, attempt int) error {
	var failed atomic.Int64
	failed.Store(-1)
	fn := func(fctx context.Context, v *grid.StepView) ([]byte, error) {
		if cur, ok := v.Position(proc.positions(), proc.group()); !ok || cur != pos {
			return nil, errPositionMoved
		}
		out := &outbox{limit: r.outboxLimit()}
		for i := range us {
			failed.Store(int64(i))
			for j := range us[i].events {
				e := toEvent(&us[i].events[j], attempt)
				c := &Context{v: v, proc: proc.Name, ev: &e, index: j, out: out}
				if err := proc.Handler(fctx, c, e); err != nil {
					return nil, &ownError{err}
				}
				if c.err != nil {
					return nil, c.err
				}
				if v.Err() != nil {
					return nil, v.Err()
				}
			}
		}
		failed.Store(-1)
		if len(out.events) > 0 {
			b, err := encodeOut(out.events)
			if err != nil {
				return nil, err
			}
			v.Publish(outboxStream, outboxKey(r.node, part), b)
		}
		v.SetPosition(proc.positions(), proc.group(), us[len(us)-1].pos+1)
		return nil, v.Err()
	}
	_, _, err := r.node.StepAt(ctx, part, proc.Name, fn, proc.Budget)
	if err == nil || errors.Is(err, errPositionMoved) {
		return err
	}
	i := failed.Load()
	if errors.Is(err, api.ErrValueTooLarge) || (i < 0 && errors.Is(err, grid.ErrPublishedTwice)) {
		if len(us) > 1 {
			// The batch's writes or emits together do not fit one
			// record (or a handler published to the outbox itself):
			// the caller splits it, blaming no unit.
			return err
		}
		i = 0 // the unit's effects can never commit
	}
	var own *ownError
	if i >= 0 && ctx.Err() == nil && (handlerFault(err) || errors.As(err, &own)) {
		he := &handlerError{index: int(i), err: err}
		if !he.batchFault() {
			proc.stats.failures.Add(1)
		}
		return he
	}
	return err
}

// ownError is an error a handler returned: its failure whatever it wraps
// (a grid code from a call it made, ErrUnavailable say, is not this
// partition's step failing).
type ownError struct{ err error }

func (e *ownError) Error() string { return e.err.Error() }
func (e *ownError) Unwrap() error { return e.err }

// handlerFault reports whether an error met while the handler ran is the
// handler's (its error, panic, budget, bad writes), not the grid's (the
// partition moved, the lease lapsed, the node is closing).
func handlerFault(err error) bool {
	return !errors.Is(err, api.ErrNotOwner) && !errors.Is(err, api.ErrUnavailable) &&
		!errors.Is(err, api.ErrClosed) && !errors.Is(err, api.ErrBusy)
}

func toEvent(ev *grid.Event, attempt int) Event {
	return Event{Stream: ev.Map, Partition: ev.Partition, Position: ev.Position, Kind: ev.Kind, Key: ev.Key, Value: ev.Value, Old: ev.Old,
		Time: ev.Time, Attempt: attempt}
}

// DeadLetter is what a processor gave up on, as parked in its dead-letter
// stream (msgpack): the events of one record, or a gap.
type DeadLetter struct {
	_msgpack  struct{} `msgpack:",as_array"`
	Processor string
	Source    string // the stream or map the events came from
	Partition int
	Position  uint64 // the events' position (for a gap: the first lost one)
	Events    []ParkedEvent
	Error     string
	Gap       uint64 // for a gap past retention: the oldest retained position, where it went on
}

// ParkedEvent is one event of a dead letter.
type ParkedEvent struct {
	_msgpack struct{} `msgpack:",as_array"`
	Kind     grid.EventKind
	Key      string
	Value    []byte
	Old      []byte
}

// DecodeDeadLetter decodes an event of a dead-letter stream.
func DecodeDeadLetter(b []byte) (DeadLetter, error) {
	var d DeadLetter
	err := msgpack.Unmarshal(b, &d)
	return d, err
}

func (p *registered) deadLetter(part int, u unit, cause error) DeadLetter {
	dl := DeadLetter{Processor: p.Name, Source: p.source(), Partition: part, Position: u.pos, Error: cause.Error()}
	for _, e := range u.events {
		dl.Events = append(dl.Events, ParkedEvent{Kind: e.Kind, Key: e.Key, Value: e.Value, Old: e.Old})
	}
	return dl
}

// skipGap records, in the dead letters, that events from pos were dropped
// by retention before the processor handled them (a stream's group holds
// its events, so there only a lost history does that; a map's journal is
// not held), and moves on to the oldest retained one. It answers the
// events from there, read before the gap's record was written (which may
// drop the oldest of them from a full journal: read after it, they were
// a gap again, forever), with Committed the new position.
func (r *Runtime) skipGap(ctx context.Context, proc *registered, part int, pos uint64, t *api.TrimmedError) (grid.LocalEvents, error) {
	oldest := pos
	if t != nil {
		oldest = t.Oldest
	} else if le, err := r.read(ctx, proc, part, 0, 0); err == nil {
		oldest = le.Oldest // the history restarted: go on from its start
	}
	after, err := r.read(ctx, proc, part, oldest, 0)
	if err != nil {
		return after, err
	}
	dl := DeadLetter{Processor: proc.Name, Source: proc.source(), Partition: part, Position: pos, Gap: oldest,
		Error: fmt.Sprintf("events from position %d to %d are gone (past retention, or a lost history) and were not handled", pos, oldest-1)}
	if err := r.parkAndMove(ctx, proc, part, pos, oldest, outboxKey(r.node, part), dl); err != nil {
		return after, err
	}
	proc.stats.gaps.Add(1)
	r.log.Warn("processor skipped a gap past retention", "processor", proc.Name, "partition", part, "from", pos, "to", oldest)
	after.Committed = oldest
	return after, nil
}

// followQuiet moves a map-feed processor's position from pos to cursor
// when its run read past records of other maps only (none of its map in
// between) and pos fell into the older half of the retained journal: the
// journal is not held for processors, so a position left there would be
// found trimmed by the next run (a failover, a restart) and parked as a
// gap in which no change was lost. At most one record per half journal.
func (r *Runtime) followQuiet(ctx context.Context, proc *registered, part int, pos, cursor, oldest uint64) (uint64, error) {
	if proc.Map == "" || cursor <= pos || (pos >= oldest && pos-oldest >= (cursor-oldest)/2) {
		return pos, nil
	}
	err := r.commitPosition(ctx, part, proc.positions(), proc.group(), pos, cursor)
	switch {
	case err == nil:
		return cursor, nil
	case errors.Is(err, errPositionMoved):
		return pos, nil // the next read follows the grid
	}
	return pos, err
}

// parkAndMove publishes dl into proc's dead letters and moves the position
// from pos to next, in one record.
func (r *Runtime) parkAndMove(ctx context.Context, proc *registered, part int, pos, next uint64, key string, dl DeadLetter) error {
	return publishDeadLetter(dl, func(b []byte) error {
		fn := func(_ context.Context, v *grid.StepView) ([]byte, error) {
			if cur, ok := v.Position(proc.positions(), proc.group()); !ok || cur != pos {
				return nil, errPositionMoved
			}
			v.Publish(DeadLetters(proc.Name), key, b)
			v.SetPosition(proc.positions(), proc.group(), next)
			return nil, v.Err()
		}
		_, _, err := r.node.StepAt(ctx, part, proc.Name+".dlq", fn, 0)
		return err
	})
}

// publishDeadLetter encodes dl and publishes it with publish; a dead
// letter too large for the dead-letter stream (the event filled its own
// stream, the error is long) goes without the events' contents, then
// without the events: parking must never fail for size, or the
// partition's processor would retry it forever.
func publishDeadLetter(dl DeadLetter, publish func(b []byte) error) error {
	var err error
	for _, d := range []DeadLetter{dl, dl.withoutValues(), dl.withoutEvents()} {
		b, merr := msgpack.Marshal(&d)
		if merr != nil {
			return merr
		}
		if err = publish(b); !errors.Is(err, api.ErrValueTooLarge) {
			return err
		}
	}
	return err
}

// Bounds of a dead letter's parts once it was too large.
const (
	maxParkedKey   = 256
	maxParkedError = 1024
)

// withoutValues is dl with its events' values left out, keys and error
// cut to a bound.
func (dl DeadLetter) withoutValues() DeadLetter {
	d := dl
	d.Events = make([]ParkedEvent, len(dl.Events))
	for i, e := range dl.Events {
		d.Events[i] = ParkedEvent{Kind: e.Kind, Key: cut(e.Key, maxParkedKey)}
	}
	d.Error = cut(dl.Error, maxParkedError) + " (the events' values were left out: too large for the dead-letter stream)"
	return d
}

// withoutEvents is dl without its events, its error cut to a bound.
func (dl DeadLetter) withoutEvents() DeadLetter {
	d := dl
	d.Events = nil
	d.Error = cut(dl.Error, maxParkedError) + fmt.Sprintf(" (the record's %d events were left out: too large for the dead-letter stream)", len(dl.Events))
	return d
}

// cut returns s cut to at most n bytes.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// park parks an outbox event no target can take in its processor's dead
// letters (the outbox's position moves on with its batch).
func (r *Runtime) park(ctx context.Context, part int, procName, key string, pos uint64, ev ParkedEvent, cause error) error {
	if procName == "" {
		procName = "outbox"
	}
	dl := DeadLetter{Processor: procName, Source: outboxStream, Partition: part, Position: pos, Events: []ParkedEvent{ev}, Error: cause.Error()}
	r.log.Warn("outbox event parked", "processor", procName, "partition", part, "position", pos, "err", cause)
	return publishDeadLetter(dl, func(b []byte) error {
		fn := func(_ context.Context, v *grid.StepView) ([]byte, error) {
			v.Publish(DeadLetters(procName), key, b)
			return nil, v.Err()
		}
		_, _, err := r.node.StepAt(ctx, part, "outbox.dlq", fn, 0)
		return err
	})
}

// currentPosition reads proc's committed position at part.
func (r *Runtime) currentPosition(ctx context.Context, part int, proc *registered) (uint64, error) {
	le, err := r.read(ctx, proc, part, 0, 0)
	if err != nil {
		return 0, err
	}
	return le.Committed, nil
}

// sleep waits d or until ctx ends (false).
func (r *Runtime) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
