package txn

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/txn/internal/proto"
)

// settleWait bounds how long past its deadline Commit keeps asking an
// unreachable coordinator for a lost commit step's outcome.
const settleWait = 30 * time.Second

// finishTimeout bounds telling the participants the outcome.
const finishTimeout = 5 * time.Second

// call runs step name at part with v as arguments and decodes the result.
func (t *Tx) call(ctx context.Context, part int, name string, v any) (proto.Result, error) {
	var res proto.Result
	args, err := proto.Encode(v)
	if err != nil {
		return res, err
	}
	raw, err := t.g.Step(ctx, part, name, args)
	if err != nil {
		return res, err
	}
	if err := proto.Decode(raw, &res); err != nil {
		return res, fmt.Errorf("txn: step %q answered %d undecodable bytes: %w", name, len(raw), err)
	}
	return res, nil
}

// waitDie runs a validating step (one, prepare, commit) and runs it again
// while it answers Wait (a younger transaction holds a key), for at most
// LockWait; then the answer is Conflict.
func (t *Tx) waitDie(ctx context.Context, part int, name string, w *proto.Work) (proto.Result, error) {
	end := time.Now().Add(t.opts.LockWait)
	pause := 2 * time.Millisecond
	for {
		res, err := t.call(ctx, part, name, w)
		if err != nil || res.Status != proto.Wait {
			return res, err
		}
		if time.Now().After(end) {
			return proto.Result{Status: proto.Conflict, Detail: res.Detail + fmt.Sprintf(" (waited %v)", t.opts.LockWait)}, nil
		}
		if err := sleep(ctx, pause); err != nil {
			return res, err
		}
		pause = min(pause*2, 50*time.Millisecond)
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// outcome turns a final status into Commit's error.
func outcome(res proto.Result) error {
	switch res.Status {
	case proto.Done:
		return nil
	case proto.Conflict:
		return fmt.Errorf("%w: %s", ErrConflict, res.Detail)
	case proto.Condition:
		return fmt.Errorf("%w: %s", ErrCondition, res.Detail)
	case proto.Expired, proto.Aborted, proto.Finished:
		return fmt.Errorf("%w (%s)", ErrExpired, res.Status)
	}
	return fmt.Errorf("%w: unexpected answer %s", ErrConflict, res.Status)
}

// commitOne commits a transaction of one partition with one step.
func (t *Tx) commitOne(ctx context.Context, part int, w *proto.Work) error {
	w.H = t.header(part)
	res, err := t.waitDie(ctx, part, proto.StepOne, w)
	if err != nil {
		if w.Held {
			// The step may have applied or may still: a tombstone
			// settles it, and releases the locks if it did not.
			_ = t.finishOne(ctx, part)
		}
		return err
	}
	if w.Held && res.Status != proto.Done {
		// Not committed: release the locks the Gets took (the step
		// releases them when it commits).
		if err := t.finishOne(ctx, part); err != nil {
			return fmt.Errorf("%w: the transaction answered %s; releasing its locks: %w", ErrUnknown, res.Status, err)
		}
		return outcome(res)
	}
	if res.Status == proto.Conflict || res.Status == proto.Condition {
		// Nothing applied. A copy of the step still on its way could
		// apply once the state allows it: leave a tombstone it finds.
		if err := t.finishOne(ctx, part); err != nil {
			return fmt.Errorf("%w: the transaction answered %s, but a copy of its step could still apply: %w", ErrUnknown, res.Status, err)
		}
	}
	return outcome(res)
}

// finishOne leaves the tombstone of an aborted transaction at part.
func (t *Tx) finishOne(ctx context.Context, part int) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer cancel()
	_, err := t.call(ctx, part, proto.StepFinish, proto.Finish{ID: t.id, Deadline: t.deadline.UnixNano()})
	return err
}

// commitTwoPhase commits across partitions: prepare every participant
// but the coordinator, then the coordinator's step decides and applies
// its own share, then the others finish.
func (t *Tx) commitTwoPhase(ctx context.Context, parts map[int]*proto.Work) error {
	order := sortedParts(parts)
	coord, readOnly := t.coordinator(order, parts)
	others := make([]int, 0, len(order))
	for _, p := range order {
		if p != coord || readOnly {
			others = append(others, p)
		}
	}
	for _, p := range order {
		parts[p].H = t.header(coord)
	}
	if err := t.prepareAll(ctx, others, parts); err != nil {
		return err
	}
	if readOnly {
		// Every read was current while all of them were locked: release.
		t.finishAll(ctx, others, false)
		return nil
	}
	cw := parts[coord]
	cw.Parts = others
	commit, known, err := t.decide(ctx, coord, cw)
	if known {
		t.finishAll(ctx, others, commit)
	}
	return err
}

// decide runs the commit step at coord and learns the transaction's
// decision: known false when it could not be learned (err is ErrUnknown);
// else commit is the decision and err is Commit's answer.
func (t *Tx) decide(ctx context.Context, coord int, cw *proto.Work) (commit, known bool, err error) {
	res, err := t.waitDie(ctx, coord, proto.StepCommit, cw)
	if err != nil || !recorded(res.Status) {
		// No decision is known to exist: decide abort, so that a copy of
		// the commit step still on its way finds it (it would commit the
		// coordinator's share after the others dropped theirs), or learn
		// the commit that a copy made.
		why := err
		if why == nil {
			why = outcome(res)
		}
		res, err = t.decideAbort(ctx, coord)
		if err != nil {
			return false, false, fmt.Errorf("%w: the commit's outcome is not known yet (it is decided at the latest by the transaction's deadline): %w", ErrUnknown, err)
		}
		if res.Status != proto.Done && !errors.Is(why, ErrUnknown) {
			// Aborted: the answer is why (a conflict, a condition, a
			// value too large), not the abort it recorded.
			return false, true, why
		}
	}
	return res.Status == proto.Done, true, outcome(res)
}

// recorded reports whether a commit step's answer is a decision it
// recorded (or found): commit, or abort (past the deadline).
func recorded(st proto.Status) bool {
	return st == proto.Done || st == proto.Aborted || st == proto.Expired
}

// coordinator picks the coordinator partition: one with writes, chosen by
// the transaction's id to spread decisions. readOnly: no partition
// writes; every participant only prepares (locks) and releases.
func (t *Tx) coordinator(order []int, parts map[int]*proto.Work) (coord int, readOnly bool) {
	var writers []int
	for _, p := range order {
		if len(parts[p].Writes) > 0 {
			writers = append(writers, p)
		}
	}
	if len(writers) == 0 {
		return order[0], true
	}
	return writers[int(t.id[0])%len(writers)], false
}

// prepareAll prepares parts in parallel. If any does not prepare, every
// one is told to abort and the error says why.
func (t *Tx) prepareAll(ctx context.Context, ps []int, parts map[int]*proto.Work) error {
	if err := t.prepareEach(ctx, ps, parts); err != nil {
		// Every participant is told to abort: the prepared ones release
		// their locks, the others (a conflict, a lock wait run out, an
		// answer lost) keep a tombstone that refuses a copy of the
		// prepare still on its way.
		t.finishAll(ctx, ps, false)
		return prepareFailed(err)
	}
	return nil
}

// prepareEach prepares parts in parallel; the error says why one did not
// prepare.
func (t *Tx) prepareEach(ctx context.Context, ps []int, parts map[int]*proto.Work) error {
	type answer struct {
		res proto.Result
		err error
	}
	answers := make([]answer, len(ps))
	if len(ps) == 1 {
		// One participant (the usual two-partition transaction): no
		// goroutine.
		answers[0].res, answers[0].err = t.waitDie(ctx, ps[0], proto.StepPrepare, parts[ps[0]])
	} else {
		var wg sync.WaitGroup
		for i, p := range ps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				answers[i].res, answers[i].err = t.waitDie(ctx, p, proto.StepPrepare, parts[p])
			}()
		}
		wg.Wait()
	}
	var first error
	for _, a := range answers {
		err := a.err
		if err == nil && a.res.Status != proto.Done {
			err = outcome(a.res)
		}
		if err != nil && (first == nil || errors.Is(first, ErrExpired)) {
			first = err
		}
	}
	return first
}

// prepareFailed is Commit's error when a prepare failed: no commit step
// was sent, so the transaction aborted, even if a prepare's outcome is
// not known.
func prepareFailed(err error) error {
	if errors.Is(err, ErrUnknown) {
		return fmt.Errorf("%w: a participant's prepare: %v; no commit was sent, nothing applied", api.ErrUnavailable, err)
	}
	return err
}

// decideAbort learns the outcome of a commit step whose answer was lost:
// the coordinator answers the decision, or decides abort now.
func (t *Tx) decideAbort(ctx context.Context, coord int) (proto.Result, error) {
	// Without a deadline of its own the caller is not kept waiting for
	// an unreachable coordinator forever (ErrUnknown after settleWait
	// past the transaction's deadline).
	ctx, cancel := context.WithDeadline(ctx, t.deadline.Add(settleWait))
	defer cancel()
	for {
		res, err := t.call(ctx, coord, proto.StepResolve, proto.IDs{IDs: []string{t.id}, Deadline: t.deadline.UnixNano(), Abort: true})
		if err == nil {
			return res, nil
		}
		if ctx.Err() != nil {
			return res, err
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return res, err
		}
	}
}

// finishAll tells parts the outcome, in parallel. A participant that
// cannot be told now is finished by its member's recovery after the
// deadline.
func (t *Tx) finishAll(ctx context.Context, ps []int, commit bool) {
	if len(ps) == 0 {
		return
	}
	f := proto.Finish{ID: t.id, Commit: commit, Deadline: t.deadline.UnixNano()}
	// Locks are released by this; a caller whose ctx is ending still
	// gets them released now rather than by recovery after the deadline.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer cancel()
	if len(ps) == 1 {
		_, _ = t.call(ctx, ps[0], proto.StepFinish, f)
		return
	}
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = t.call(ctx, p, proto.StepFinish, f)
		}()
	}
	wg.Wait()
}
