package router

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/transport"
)

// This file is the router's one retry loop and its error rules.
//
// The outcome rule: once a mutation may have reached its primary (its frame
// was handed to a connection, or a node answered that the outcome is
// unknown), the caller gets its result or ErrTimeout ("outcome unknown"),
// never an error that invites a blind retry (ErrUnavailable, NotOwner,
// ErrClosed, ErrBusy). Inside the loop every retry reuses the request's
// (clientID, seq), so the primary applies it at most once; the rule is about
// what the caller is told when the loop gives up.

// retryable reports whether an attempt that failed with err may be sent
// again: the node refused it without applying it (NotOwner, Unavailable,
// Closed, StaleEpoch, Busy), or its outcome is unknown (ErrTimeout: the
// connection was lost, the caller stopped waiting on a moved primary, or
// the node timed out; ErrReplication). A retry with the same session
// applies once.
func retryable(err error) bool {
	return api.Retryable(err) || errors.Is(err, api.ErrTimeout) || errors.Is(err, api.ErrBusy)
}

// mayHaveApplied reports whether the attempt that failed with err may have
// been applied. ErrStaleSequence: the primary no longer keeps the result of
// this sequence number (it may have been applied once).
func mayHaveApplied(err error) bool {
	return errors.Is(err, api.ErrTimeout) || errors.Is(err, api.ErrReplication) || errors.Is(err, api.ErrStaleSequence)
}

// definitive reports whether err is the primary's own final answer (such
// as ErrBadRequest or ErrNotInteger): not applied, and not worth a retry.
func definitive(err error) bool { return !retryable(err) && !mayHaveApplied(err) }

// outcome is what the caller gets when the attempts end with err. unknown:
// the request is a mutation and some attempt may have been applied.
func outcome(ctx context.Context, err error, unknown bool) error {
	cerr := ctx.Err()
	switch {
	case unknown && !errors.Is(err, api.ErrTimeout) && !definitive(err):
		if cerr != nil {
			return fmt.Errorf("%w: %w; an earlier attempt may have been applied (last error: %v)", api.ErrTimeout, cerr, err)
		}
		return fmt.Errorf("%w: an earlier attempt may have been applied (last error: %v)", api.ErrTimeout, err)
	case cerr != nil && !errors.Is(err, cerr):
		return fmt.Errorf("%w: %w", err, cerr)
	}
	return err
}

// try is the state of one request's attempts.
type try struct {
	ctx     context.Context
	cancel  context.CancelFunc
	bounded bool
	unknown bool // an attempt may have been applied
}

// bound applies DefaultTimeout to the attempts' ctx (once) and returns it.
// It is called when a request leaves the process or is retried, so that a
// local read allocates no timer.
func (tr *try) bound(r *Router) context.Context {
	if !tr.bounded {
		tr.bounded = true
		tr.ctx, tr.cancel = r.withTimeout(tr.ctx)
	}
	return tr.ctx
}

// retry runs attempt until it succeeds, fails for good, or the retries end
// (ctx done, router closed), and returns what the caller gets (outcome).
// mutation says whether the request changes data. attempt may set
// tr.unknown itself (fanout does, for errors it does not return).
func (r *Router) retry(ctx context.Context, mutation bool, attempt func(tr *try) error) error {
	tr := try{ctx: ctx}
	defer func() {
		if tr.cancel != nil {
			tr.cancel()
		}
	}()
	for a := 0; ; a++ {
		err := attempt(&tr)
		if err == nil {
			return nil
		}
		if mayHaveApplied(err) {
			tr.unknown = true
		}
		ctx := tr.bound(r)
		if !retryable(err) || ctx.Err() != nil || r.closed() {
			return outcome(ctx, err, mutation && tr.unknown)
		}
		r.afterError(ctx, err)
		if !r.backoff(ctx, a) {
			return outcome(ctx, err, mutation && tr.unknown)
		}
	}
}

// afterError asks for a newer table when the failure suggests one: a
// NotOwner from a newer table asks for that table (and waits briefly); an
// unreachable node asks for a fresh table without waiting.
func (r *Router) afterError(ctx context.Context, err error) {
	var ne *api.NotOwnerError
	switch {
	case errors.As(err, &ne):
		if t := r.cfg.Table(); t != nil && ne.Version > t.Version {
			r.cfg.Refresh(ctx, ne.Version)
		}
	case errors.Is(err, api.ErrUnavailable), errors.Is(err, api.ErrClosed), errors.Is(err, transport.ErrConnLost):
		r.cfg.Refresh(ctx, 0)
	}
}

// backoff sleeps before retry attempt a, or until the table changes (a
// failover just ended: the retry should go to the new primary at once);
// false if ctx ended or the router closed.
func (r *Router) backoff(ctx context.Context, a int) bool {
	d := time.Duration(min(5<<min(a, 6), 200)) * time.Millisecond
	t := time.NewTimer(d)
	defer t.Stop()
	var changed <-chan struct{}
	if r.cfg.TableChanged != nil {
		changed = r.cfg.TableChanged()
	}
	select {
	case <-t.C:
		return true
	case <-changed:
		return true
	case <-ctx.Done():
		return false
	case <-r.cfg.Done:
		return false
	}
}

// withTimeout applies DefaultTimeout to a ctx without deadline (none if
// DefaultTimeout is zero).
func (r *Router) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || r.cfg.DefaultTimeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, r.cfg.DefaultTimeout)
}

// remote sends req to the primary owner at addr and decodes its answer into
// resp. If a new table moves one of parts away from owner while it waits
// (a failover), it stops waiting: the request may still apply at owner, so
// the error matches ErrTimeout, and the retry goes to the new primary with
// the same session.
func (r *Router) remote(ctx context.Context, owner, addr string, typ uint8, req, resp any, parts ...int32) error {
	if addr == "" {
		return fmt.Errorf("%w: no address for %q", api.ErrUnavailable, owner)
	}
	conn, err := r.cfg.Pool.Get(ctx, addr)
	if err != nil {
		return err
	}
	fut, err := conn.Start(typ, req)
	if err != nil {
		return err
	}
	if r.cfg.TableChanged == nil {
		return fut.Wait(ctx, resp)
	}
	slot := &r.waiting[r.waitGen.Load()&1]
	slot.Add(1)
	defer slot.Add(-1)
	for {
		changed := r.cfg.TableChanged()
		if r.moved(owner, parts) {
			now := make(chan struct{})
			close(now)
			changed = now
		}
		err := fut.WaitAbort(ctx, changed, resp)
		if !errors.Is(err, transport.ErrAbandoned) {
			return err
		}
		if r.moved(owner, parts) {
			fut.Forget()
			return err
		}
	}
}

// moved reports whether the current table names another primary than
// owner for any of parts.
func (r *Router) moved(owner string, parts []int32) bool {
	t := r.cfg.Table()
	if t == nil {
		return false
	}
	for _, p := range parts {
		if t.Partitions[p].Primary != owner {
			return true
		}
	}
	return false
}

// Pulse reports whether a remote request has been waiting since before the
// previous call, and starts a new period. A client whose table is not
// pushed to it calls Pulse periodically and fetches a table when it reports
// true: a primary that stopped answering (paused, cut off) gives no error,
// and the new table the authority commits once it failed that primary over
// is what lets the waiting requests move on (remote). It allocates nothing
// per request: requests count themselves in one of two slots, by the parity
// of the period they started in, and Pulse looks at the slot of the
// previous period before new requests reuse it. A request still waiting
// then counts in the slot of the current period, which the next call does
// not look at: a call after one that reported true reports true as well
// (one spare report once the wait ended).
func (r *Router) Pulse() bool {
	g := r.waitGen.Load()
	slow := r.waiting[(g+1)&1].Load() > 0
	r.waitGen.Store(g + 1)
	return r.pulseSlow.Swap(slow) || slow
}
