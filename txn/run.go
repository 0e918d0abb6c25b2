package txn

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/collocate/grid/internal/api"
)

// Retryable reports whether a transaction that failed with err applied
// nothing and may simply run again: a conflict, its timeout, or a
// failover or limit met before its commit.
func Retryable(err error) bool {
	return errors.Is(err, ErrConflict) || errors.Is(err, ErrExpired) ||
		errors.Is(err, api.ErrUnavailable) || errors.Is(err, api.ErrBusy) || errors.Is(err, api.ErrNotOwner)
}

// Run runs fn in a transaction and commits it, again while it fails
// retryably (Retryable), with growing randomized pauses, until ctx ends.
// A retry keeps the first attempt's age, so under wait-die it ends up the
// oldest and wins. fn's own error rolls the transaction back and is
// returned as is. An ErrUnknown commit is not retried.
func Run(ctx context.Context, g Grid, opts Options, fn func(ctx context.Context, tx *Tx) error) error {
	pause := time.Millisecond
	for {
		tx, err := Begin(ctx, g, opts)
		if err != nil {
			return err
		}
		opts.prio = tx.prio
		err = fn(ctx, tx)
		if err == nil {
			err = tx.Commit(ctx)
		} else {
			_ = tx.Rollback(ctx)
			if !Retryable(err) {
				return err
			}
		}
		if err == nil || !Retryable(err) {
			return err
		}
		d := pause/2 + rand.N(pause)
		if sleep(ctx, d) != nil {
			return err
		}
		pause = min(pause*2, 100*time.Millisecond)
	}
}
