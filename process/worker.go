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

// errPositionMoved: the position changed under a batch (a replay, or
// another run of this processor): read it again.
var errPositionMoved = errors.New("process: the processor's position moved")

// handlerError carries the batch index of the event whose handler failed.
type handlerError struct {
	index int
	err   error
}

func (e *handlerError) Error() string { return e.err.Error() }
func (e *handlerError) Unwrap() error { return e.err }

// run handles proc's events of partition part while this node leads it.
func (r *Runtime) run(ctx context.Context, proc *registered, part int) {
	pos, err := r.startPosition(ctx, part, proc.Stream, proc.group())
	if err != nil {
		r.quiet(ctx, part, proc.Name+" position", err)
		return
	}
	ps := proc.part(part)
	ps.position.Store(pos)
	for ctx.Err() == nil {
		if r.paused(proc.Name) {
			if !r.sleep(ctx, r.cfg.Poll) {
				return
			}
			continue
		}
		le, err := r.node.ReadLocal(ctx, part, proc.Stream, proc.group(), pos, proc.MaxBatch, r.cfg.Poll)
		var trimmed *api.TrimmedError
		if errors.As(err, &trimmed) {
			pos, err = r.skipGap(ctx, proc, part, pos, trimmed)
			if err == nil {
				ps.position.Store(pos)
				continue
			}
		}
		if err != nil {
			r.quiet(ctx, part, proc.Name+" read", err)
			return
		}
		if le.Committed != pos {
			// Replayed, or moved by another run: follow the grid.
			pos = le.Committed
			ps.position.Store(pos)
			continue
		}
		if len(le.Events) == 0 {
			continue
		}
		next, err := r.handleEvents(ctx, proc, part, pos, le.Events)
		if errors.Is(err, errPositionMoved) {
			pos, err = r.currentPosition(ctx, part, proc)
		}
		if err != nil {
			r.quiet(ctx, part, proc.Name+" handling", err)
			return
		}
		pos = next
		ps.position.Store(pos)
	}
}

// handleEvents handles evs (the events from position pos on) in as few
// records as the handler allows: the whole batch in one; on a handler
// failure, the events before the failing one in one, then the failing one
// alone, with retries and finally the dead letters. It returns the new
// position.
func (r *Runtime) handleEvents(ctx context.Context, proc *registered, part int, pos uint64, evs []grid.StreamEvent) (uint64, error) {
	for len(evs) > 0 {
		_, err := r.commitBatch(ctx, proc, part, pos, evs, 1)
		var he *handlerError
		switch {
		case err == nil:
			pos = evs[len(evs)-1].Position + 1
			proc.stats.handled.Add(int64(len(evs)))
			proc.part(part).handled.Add(int64(len(evs)))
			return pos, nil
		case errors.As(err, &he):
			if he.index > 0 {
				// Commit those before the failing one together.
				if _, err := r.commitBatch(ctx, proc, part, pos, evs[:he.index], 1); err != nil {
					return pos, err
				}
				pos = evs[he.index-1].Position + 1
				proc.stats.handled.Add(int64(he.index))
				proc.part(part).handled.Add(int64(he.index))
			}
			// The failing event's first attempt was this one.
			next, err := r.retryOne(ctx, proc, part, pos, evs[he.index])
			if err != nil {
				return pos, err
			}
			pos = next
			evs = evs[he.index+1:]
		case errors.Is(err, api.ErrValueTooLarge) && len(evs) > 1:
			// The batch's writes do not fit one record: halve it.
			half := len(evs) / 2
			next, err := r.handleEvents(ctx, proc, part, pos, evs[:half])
			if err != nil {
				return pos, err
			}
			pos, evs = next, evs[half:]
		default:
			return pos, err
		}
	}
	return pos, nil
}

// retryOne handles ev alone until it commits or its attempts are spent;
// then it parks ev in the dead letters, with the position, in one record.
func (r *Runtime) retryOne(ctx context.Context, proc *registered, part int, pos uint64, ev grid.StreamEvent) (uint64, error) {
	wait := proc.Backoff
	var last error
	for attempt := 2; attempt <= proc.MaxAttempts; attempt++ {
		proc.stats.retries.Add(1)
		if !r.sleep(ctx, wait) {
			return pos, ctx.Err()
		}
		wait = min(2*wait, proc.MaxBackoff)
		_, err := r.commitBatch(ctx, proc, part, pos, []grid.StreamEvent{ev}, attempt)
		var he *handlerError
		if err == nil {
			proc.stats.handled.Add(1)
			proc.part(part).handled.Add(1)
			return ev.Position + 1, nil
		}
		if !errors.As(err, &he) {
			return pos, err
		}
		last = he.err
	}
	if last == nil {
		last = errors.New("failed on its only attempt")
	}
	if err := r.parkEvent(ctx, proc, part, pos, ev, last); err != nil {
		return pos, err
	}
	proc.stats.parked.Add(1)
	proc.part(part).parked.Add(1)
	return ev.Position + 1, nil
}

// commitBatch runs the handler over evs (from position pos) in one step
// and commits its effects with the outbox event and the new position. A
// handler failure is a *handlerError naming the event; nothing applied.
func (r *Runtime) commitBatch(ctx context.Context, proc *registered, part int, pos uint64, evs []grid.StreamEvent, attempt int) (int, error) {
	var failed atomic.Int64
	failed.Store(-1)
	fn := func(fctx context.Context, v *grid.StepView) ([]byte, error) {
		if cur, ok := v.Position(proc.Stream, proc.group()); !ok || cur != pos {
			return nil, errPositionMoved
		}
		var out []outEvent
		for i := range evs {
			e := toEvent(&evs[i], attempt)
			c := &Context{v: v, proc: proc.Name, ev: &e, out: &out, index: i}
			failed.Store(int64(i))
			if err := proc.Handler(fctx, c, e); err != nil {
				return nil, err
			}
			if v.Err() != nil {
				return nil, v.Err()
			}
		}
		failed.Store(-1)
		if len(out) > 0 {
			b, err := encodeOut(out)
			if err != nil {
				return nil, err
			}
			v.Publish(outboxStream, outboxKey(r.node, part), b)
		}
		v.SetPosition(proc.Stream, proc.group(), evs[len(evs)-1].Position+1)
		return nil, v.Err()
	}
	_, _, err := r.node.StepAt(ctx, part, proc.Name, fn, proc.Budget)
	if err == nil {
		return len(evs), nil
	}
	if errors.Is(err, errPositionMoved) {
		return 0, errPositionMoved
	}
	i := failed.Load()
	if i < 0 && len(evs) == 1 && errors.Is(err, api.ErrValueTooLarge) {
		i = 0 // the event's writes can never fit one record
	}
	if i >= 0 && ctx.Err() == nil && handlerFault(err) {
		proc.stats.failures.Add(1)
		return 0, &handlerError{index: int(i), err: err}
	}
	return 0, err
}

// handlerFault reports whether an error met while the handler ran is the
// handler's (its error, panic, budget, bad writes), not the grid's (the
// partition moved, the lease lapsed, the node is closing).
func handlerFault(err error) bool {
	return !errors.Is(err, api.ErrNotOwner) && !errors.Is(err, api.ErrUnavailable) &&
		!errors.Is(err, api.ErrClosed) && !errors.Is(err, api.ErrBusy)
}

func toEvent(ev *grid.StreamEvent, attempt int) Event {
	return Event{Stream: ev.Stream, Partition: ev.Partition, Position: ev.Position, Key: ev.Key, Value: ev.Value, Time: ev.Time, Attempt: attempt}
}

// DeadLetter is an event a processor gave up on, as parked in its
// dead-letter stream (msgpack).
type DeadLetter struct {
	_msgpack  struct{} `msgpack:",as_array"`
	Processor string
	Stream    string
	Partition int
	Position  uint64 // the event's position (for a gap: the first lost one)
	Key       string
	Value     []byte
	Error     string
	Gap       uint64 // for a gap past retention: the oldest retained position, where it went on
}

// DecodeDeadLetter decodes an event of a dead-letter stream.
func DecodeDeadLetter(b []byte) (DeadLetter, error) {
	var d DeadLetter
	err := msgpack.Unmarshal(b, &d)
	return d, err
}

// parkEvent publishes ev with its error into proc's dead letters and moves
// the position past it, in one record.
func (r *Runtime) parkEvent(ctx context.Context, proc *registered, part int, pos uint64, ev grid.StreamEvent, cause error) error {
	dl := DeadLetter{Processor: proc.Name, Stream: ev.Stream, Partition: part, Position: ev.Position, Key: ev.Key, Value: ev.Value, Error: cause.Error()}
	return r.parkAndMove(ctx, proc, part, pos, ev.Position+1, ev.Key, dl)
}

// skipGap records, in the dead letters, that events from pos were dropped
// by retention before the processor handled them (its group holds them, so
// only a lost history does that), and moves on to the oldest retained one.
func (r *Runtime) skipGap(ctx context.Context, proc *registered, part int, pos uint64, t *api.TrimmedError) (uint64, error) {
	dl := DeadLetter{Processor: proc.Name, Stream: proc.Stream, Partition: part, Position: pos, Gap: t.Oldest,
		Error: fmt.Sprintf("events from position %d to %d are gone (retention or a lost history) and were not handled", pos, t.Oldest-1)}
	if err := r.parkAndMove(ctx, proc, part, pos, t.Oldest, outboxKey(r.node, part), dl); err != nil {
		return pos, err
	}
	proc.stats.gaps.Add(1)
	r.log.Warn("processor skipped a gap past retention", "processor", proc.Name, "partition", part, "from", pos, "to", t.Oldest)
	return t.Oldest, nil
}

func (r *Runtime) parkAndMove(ctx context.Context, proc *registered, part int, pos, next uint64, key string, dl DeadLetter) error {
	b, err := msgpack.Marshal(&dl)
	if err != nil {
		return err
	}
	fn := func(_ context.Context, v *grid.StepView) ([]byte, error) {
		if cur, ok := v.Position(proc.Stream, proc.group()); !ok || cur != pos {
			return nil, errPositionMoved
		}
		v.Publish(DeadLetters(proc.Name), key, b)
		v.SetPosition(proc.Stream, proc.group(), next)
		return nil, v.Err()
	}
	_, _, err = r.node.StepAt(ctx, part, proc.Name+".dlq", fn, 0)
	return err
}

// park parks an outbox event no target can take in proc's dead letters
// (the outbox's position moves on with the batch).
func (r *Runtime) park(ctx context.Context, part int, procName, key string, pos uint64, value []byte, cause error) error {
	if procName == "" {
		procName = "outbox"
	}
	dl := DeadLetter{Processor: procName, Stream: outboxStream, Partition: part, Position: pos, Value: value, Error: cause.Error()}
	b, err := msgpack.Marshal(&dl)
	if err != nil {
		return err
	}
	r.log.Warn("outbox event parked", "processor", procName, "partition", part, "position", pos, "err", cause)
	fn := func(_ context.Context, v *grid.StepView) ([]byte, error) {
		v.Publish(DeadLetters(procName), key, b)
		return nil, v.Err()
	}
	_, _, err = r.node.StepAt(ctx, part, "outbox.dlq", fn, 0)
	return err
}

// currentPosition reads proc's committed position at part.
func (r *Runtime) currentPosition(ctx context.Context, part int, proc *registered) (uint64, error) {
	le, err := r.node.ReadLocal(ctx, part, proc.Stream, proc.group(), 0, 1, 0)
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
