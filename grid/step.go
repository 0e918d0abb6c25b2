package grid

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// This file is the partition step: the primitive that compute (functions,
// entry processors, map-reduce), and later event processors and
// transactions, build on. A step is a function run at a partition's
// primary with a StepView of the partition; it returns a result and the
// view holds its writes. The writes and the result become ONE record
// (applied and replicated all or nothing, the result remembered under the
// caller's (clientID, seq) like any mutation's), so a retry after a
// failover answers the first result and never applies twice.
//
// User code never runs under the partition lock: the function runs on its
// own goroutine, reading through the view (the lock taken per access); the
// commit then takes the lock, checks that this node still leads the
// partition at the epoch the step started in and that nothing the step
// read changed (optimistic validation), and appends the record. A
// conflict runs the function again (at most maxStepAttempts times, then
// ErrBusy). Steps of one partition are serialized by a per-partition
// semaphore (partition.stepSem), so they never conflict with each other,
// only with plain map writes. A function that outlives its time budget
// leaves its caller with ErrFunctionBudget; its goroutine may go on running
// user code, but only the caller commits, so it can never apply anything.

// StepFunc is a partition step: it reads and writes through v and returns
// its result (for a remote caller: msgpack bytes). An error applies
// nothing. ctx ends at the step's time budget.
type StepFunc func(ctx context.Context, v *StepView) ([]byte, error)

// MemberFunc is a member function (broadcast): it runs outside any
// partition.
type MemberFunc func(ctx context.Context) ([]byte, error)

// Filter is a predicate over a map's entries: a partition task with a
// filter iterates (StepView.Range of the task's map) only the entries for
// which it is true. It runs on the function's goroutine, within its
// budget; it must not modify value.
type Filter func(key string, value []byte) bool

// Functions resolves named functions for requests arriving at this node
// (package compute implements it). Resolve errors should match
// ErrNoFunction or ErrBadArgs. Methods are called concurrently.
type Functions interface {
	// Step binds the partition function name to args.
	Step(name string, args []byte) (StepFunc, error)
	// Member binds the member function name to args.
	Member(name string, args []byte) (MemberFunc, error)
	// Filter binds the predicate name to args.
	Filter(name string, args []byte) (Filter, error)
}

// SetFunctions installs the functions this node runs for callers (local
// and remote). Every member should install the same ones.
func (n *Node) SetFunctions(f Functions) { n.funcs.Store(&f) }

func (n *Node) functions() (Functions, error) {
	f := n.funcs.Load()
	if f == nil || *f == nil {
		return nil, fmt.Errorf("%w: member %s has no functions installed", api.ErrNoFunction, n.name)
	}
	return *f, nil
}

// maxStepAttempts bounds a step's runs when its reads keep changing.
const maxStepAttempts = 8

// stepCall is one step to run at a partition's primary.
type stepCall struct {
	name         string // the function's name, for metrics
	mapName, key string
	fn           StepFunc
	filter       Filter // limits Range(mapName); nil: none
	sess         wire.Session
	budget       time.Duration // the function's time budget (see budget)
	// inline: the grid's own step or an internal one (SetInternalStep):
	// trusted code that neither blocks nor outlives its budget, run on
	// the caller's goroutine (no function goroutine, no budget timer).
	inline bool
}

// budget returns a function's time budget given the requested one
// (nanoseconds, 0: the maximum): at most MaxStepTime.
func (n *Node) budget(req int64) time.Duration {
	d := n.cfg.MaxStepTime
	if req > 0 && time.Duration(req) < d {
		d = time.Duration(req)
	}
	return d
}

// runStep runs c at partition p, which must be led by this node, and
// answers its result and the epoch it ran under.
func (n *Node) runStep(ctx context.Context, p *partition, c stepCall) ([]byte, uint64, error) {
	if res, epoch, done, err := n.stepSeen(ctx, p, c.sess); done || err != nil {
		return res, epoch, err
	}
	if err := n.acquireStep(ctx, p, c.budget); err != nil {
		return nil, 0, err
	}
	// The budget starts once the step holds its partition.
	end := time.Now().Add(c.budget)
	fctx := ctx
	if !c.inline {
		var cancel context.CancelFunc
		fctx, cancel = context.WithDeadline(ctx, end)
		defer cancel()
	}
	released := false
	release := func() {
		if !released {
			released = true
			<-p.stepSem
		}
	}
	defer release()
	for range maxStepAttempts {
		res, pw, floor, err := n.stepAttempt(fctx, end, p, c)
		if errors.Is(err, errConflict) {
			n.stepReruns.Add(1)
			n.fmetrics.rerun(c.name, rerunConflict)
			continue
		}
		release()
		if err != nil {
			return nil, 0, err
		}
		if pw.p != nil {
			err = n.finish(ctx, pw)
		} else if floor.lsn > 0 {
			err = p.waitCommit(ctx, floor.lsn, floor.epoch)
		}
		if err != nil {
			return nil, 0, err
		}
		return res, max(pw.epoch, floor.epoch), nil
	}
	return nil, 0, fmt.Errorf("%w: partition %d: the step's reads changed under it %d times in a row", api.ErrBusy, p.id, maxStepAttempts)
}

// acquireStep takes p's step semaphore, waiting at most budget (then
// ErrBusy: nothing ran) or until ctx ends.
func (n *Node) acquireStep(ctx context.Context, p *partition, budget time.Duration) error {
	select {
	case p.stepSem <- struct{}{}:
		return nil
	default:
	}
	wctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	select {
	case p.stepSem <- struct{}{}:
		return nil
	case <-wctx.Done():
		return fmt.Errorf("%w: partition %d: waiting for the partition's running step: %v", api.ErrBusy, p.id, wctx.Err())
	}
}

// stepSeen answers a step whose session already has a result (a retry),
// once that result is committed. done reports that it did.
func (n *Node) stepSeen(ctx context.Context, p *partition, sess wire.Session) (res []byte, epoch uint64, done bool, err error) {
	p.mu.Lock()
	if p.role != rolePrimary {
		err := p.notOwner()
		p.mu.Unlock()
		return nil, 0, false, err
	}
	r, err := p.seen(sess)
	epoch = p.epoch
	p.mu.Unlock()
	if err != nil || r == nil {
		return nil, 0, false, err
	}
	n.metrics.replays.Inc()
	if err := p.waitCommit(ctx, r.lsn, epoch); err != nil {
		return nil, 0, false, err
	}
	return r.resp.Value, epoch, true, nil
}

// commitFloor is what a read-only step's answer waits for.
type commitFloor struct{ lsn, epoch uint64 }

// stepAttempt runs the function once and commits its effects. It returns
// errConflict if the step must run again; on success either pw (a record
// was queued) or floor (nothing to write: wait for what was read) is set.
func (n *Node) stepAttempt(ctx context.Context, end time.Time, p *partition, c stepCall) ([]byte, pendingWrite, commitFloor, error) {
	var none pendingWrite
	p.mu.Lock()
	if p.role != rolePrimary {
		err := p.notOwner()
		p.mu.Unlock()
		return nil, none, commitFloor{}, err
	}
	epoch := p.epoch
	p.mu.Unlock()
	v := newStepView(n, p, epoch, c.mapName, c.key)
	v.filter = c.filter
	var res []byte
	var err error
	if c.inline {
		res, err = runInline(ctx, v, c.fn)
	} else {
		res, err = n.guarded(ctx, end, p.id, func(ctx context.Context) ([]byte, error) { return c.fn(ctx, v) })
	}
	v.close()
	if ab := (abandonedError{}); errors.As(err, &ab) || errors.Is(err, api.ErrFunctionBudget) {
		// The function may still be running and using v: never touch
		// it again (v.close only sets an atomic flag). Whatever ended
		// the wait (its budget, the member going down, the request),
		// nothing was applied.
		return nil, none, commitFloor{}, err
	}
	if v.err != nil {
		// The view's error comes first: a function that ignored it may
		// have returned nonsense.
		err = v.err
	}
	var pw pendingWrite
	var floor commitFloor
	if err == nil {
		res, pw, floor, err = n.stepCommit(p, v, c.sess, res)
	}
	if errors.Is(err, api.ErrNotOwner) {
		// The partition moved under the function: its run is discarded
		// and the router runs it again at the new primary.
		n.fmetrics.rerun(c.name, rerunMoved)
	}
	if err != nil {
		return nil, none, commitFloor{}, err
	}
	return res, pw, floor, nil
}

// stepCommit validates v and appends its writes and result as one record.
func (n *Node) stepCommit(p *partition, v *StepView, sess wire.Session, res []byte) ([]byte, pendingWrite, commitFloor, error) {
	var none pendingWrite
	result := wire.MapResponse{Done: true, Value: res}
	if err := n.checkSize(v.writes, &result); err != nil {
		return nil, none, commitFloor{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.role != rolePrimary || p.epoch != v.epoch {
		// The partition moved while the function ran: nothing applies
		// here; the router runs the call again at the new primary.
		return nil, none, commitFloor{}, p.notOwner()
	}
	if err := n.checkLease(); err != nil {
		return nil, none, commitFloor{}, err
	}
	if r, err := p.seen(sess); err != nil || r != nil {
		if err != nil {
			return nil, none, commitFloor{}, err
		}
		// A duplicate of this session committed meanwhile.
		n.metrics.replays.Inc()
		return r.resp.Value, none, commitFloor{lsn: r.lsn, epoch: p.epoch}, nil
	}
	now := nowNano()
	if !v.validate(now) || !v.validateStreams() {
		return nil, none, commitFloor{}, errConflict
	}
	if err := v.checkStreamWrites(); err != nil {
		return nil, none, commitFloor{}, err
	}
	if err := v.checkLocks(); err != nil {
		return nil, none, commitFloor{}, err
	}
	if len(v.writes) == 0 {
		// Nothing to record: the answer rests only on what was read.
		return res, none, commitFloor{lsn: v.readFloor(), epoch: p.epoch}, nil
	}
	rec := wire.Record{Muts: v.writes, Session: sess, Result: result}
	pw := n.commitRecord(p, &rec, now)
	n.publish(&rec)
	return res, pw, commitFloor{epoch: p.epoch}, nil
}

// guarded runs fn on its own goroutine and returns its answer, or an
// error when Config.MaxRunningFunctions already run (ErrBusy, fn not
// started), fn panics (ErrFunctionPanic), fails (ErrFunctionFailed,
// unless its error already carries a grid code) or outlives ctx
// (ErrFunctionBudget if ctx ended at end, fn's budget; see budgetErr: fn
// may go on running, but its caller has moved on). part names the
// partition in errors (-1: a member function).
func (n *Node) guarded(ctx context.Context, end time.Time, part int, fn func(ctx context.Context) ([]byte, error)) ([]byte, error) {
	type answer struct {
		res []byte
		err error
	}
	if err := n.reserveFunction(); err != nil {
		return nil, err
	}
	ch := make(chan answer, 1)
	go func() {
		defer n.funcsRunning.Add(-1)
		var a answer
		defer func() {
			if r := recover(); r != nil {
				a = answer{err: fmt.Errorf("%w: %v", api.ErrFunctionPanic, r)}
				n.log.Warn("function panicked", "partition", part, "panic", r)
			}
			ch <- a
		}()
		a.res, a.err = fn(ctx)
	}()
	select {
	case a := <-ch:
		if a.err == nil {
			return a.res, nil
		}
		if ctx.Err() != nil {
			return nil, n.budgetErr(ctx, end, part)
		}
		return nil, functionErr(a.err)
	case <-ctx.Done():
		return nil, abandonedError{n.budgetErr(ctx, end, part)}
	}
}

// runInline runs a trusted step on the caller's goroutine; a panic fails
// the step (ErrFunctionPanic), and its errors keep their codes.
func runInline(ctx context.Context, v *StepView, fn StepFunc) (res []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			res, err = nil, fmt.Errorf("%w: %v", api.ErrFunctionPanic, r)
		}
	}()
	res, err = fn(ctx, v)
	if err != nil {
		err = functionErr(err)
	}
	return res, err
}

// abandonedError wraps the error of a function its caller stopped waiting
// for: the function may still be running, and using its view.
type abandonedError struct{ err error }

func (e abandonedError) Error() string { return e.err.Error() }
func (e abandonedError) Unwrap() error { return e.err }

// reserveFunction counts one more function goroutine, or fails with
// ErrBusy when Config.MaxRunningFunctions already run.
func (n *Node) reserveFunction() error {
	limit := int64(n.cfg.MaxRunningFunctions)
	for {
		cur := n.funcsRunning.Load()
		if cur >= limit {
			return fmt.Errorf("%w: member %s already runs %d functions (MaxRunningFunctions; those past their budget that ignore their ctx count until they return)", api.ErrBusy, n.name, cur)
		}
		if n.funcsRunning.CompareAndSwap(cur, cur+1) {
			return nil
		}
	}
}

// budgetErr is the error of a function whose ctx ended before it
// answered (nothing was applied). Only reaching end is its budget running
// out: otherwise this member is going down, or the request ended first
// (the caller left, or its deadline or the member's RequestTimeout came
// before the budget's end), and the call is safe to run again.
func (n *Node) budgetErr(ctx context.Context, end time.Time, part int) error {
	switch {
	case n.ctx.Err() != nil:
		return fmt.Errorf("%w: member %s is going down; partition %d: the function's run was discarded", api.ErrClosed, n.name, part)
	case time.Now().Before(end):
		return fmt.Errorf("%w: partition %d: the call ended before the function's budget (%v); nothing applied", api.ErrUnavailable, part, context.Cause(ctx))
	}
	return fmt.Errorf("%w: partition %d: %w", api.ErrFunctionBudget, part, ctx.Err())
}

// functionErr keeps an error that carries a grid code (a view's NotOwner,
// ErrNotCollocated, a resolver's ErrBadArgs) and wraps any other as
// ErrFunctionFailed.
func functionErr(err error) error {
	if errors.Is(err, errConflict) || api.CodeOf(err) != api.CodeInternal {
		return err
	}
	return fmt.Errorf("%w: %w", api.ErrFunctionFailed, err)
}
