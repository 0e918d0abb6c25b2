package resp

import (
	"context"
	"errors"

	"github.com/collocate/grid/internal/api"
)

// Replies to grid errors. Redis clients retry TRYAGAIN by themselves
// (go-redis three times by default), so TRYAGAIN is sent only when the grid
// guarantees that nothing was applied; for a write whose outcome is unknown
// the reply is TIMEOUT, which no client retries blindly. docs/redis.md
// lists the mapping.
const (
	errTooLarge = "ERR string exceeds maximum allowed size (proto-max-bulk-len)" // Redis's checkStringLength
	errOverflow = "ERR increment or decrement would overflow"
)

// errReply appends the Redis error reply for a grid error; write says
// whether the command is a mutation.
func errReply(out []byte, err error, write bool) []byte {
	switch {
	case functionErr(err):
		// The primary's final answer, nothing applied (a budget error
		// also wraps the function's context deadline: not a TIMEOUT).
		return appendError(out, "ERR "+err.Error())
	case errors.Is(err, api.ErrNotInteger):
		return appendError(out, errNotInteger)
	case errors.Is(err, api.ErrOverflow):
		return appendError(out, errOverflow)
	case errors.Is(err, api.ErrValueTooLarge):
		return appendError(out, errTooLarge)
	case write && (outcomeUnknown(err) || retryable(err)):
		return appendError(out, "TIMEOUT "+err.Error())
	case nothingApplied(err), retryable(err):
		return appendError(out, "TRYAGAIN "+err.Error())
	case outcomeUnknown(err):
		return appendError(out, "TIMEOUT "+err.Error())
	}
	return appendError(out, "ERR "+err.Error())
}

// functionErr: a named function's own failure (FCALL).
func functionErr(err error) bool {
	return errors.Is(err, api.ErrNoFunction) || errors.Is(err, api.ErrBadArgs) || errors.Is(err, api.ErrFunctionPanic) ||
		errors.Is(err, api.ErrFunctionBudget) || errors.Is(err, api.ErrFunctionFailed) || errors.Is(err, api.ErrNotCollocated)
}

// nothingApplied: errors whose contract is that the request was not
// applied anywhere and may be sent again (api.ErrUnavailable, api.ErrBusy).
func nothingApplied(err error) bool {
	return errors.Is(err, api.ErrUnavailable) || errors.Is(err, api.ErrBusy)
}

// outcomeUnknown: errors after which a mutation may or may not have been
// applied.
func outcomeUnknown(err error) bool {
	return errors.Is(err, api.ErrTimeout) || errors.Is(err, api.ErrReplication) ||
		errors.Is(err, context.DeadlineExceeded)
}

// retryable: errors that say a node refused or could not finish the
// request (a stale table, a node shutting down, the endpoint closing). A
// read is safe to send again; for a write an earlier attempt of the same
// request may have reached a primary, so its outcome is unknown.
func retryable(err error) bool {
	return errors.Is(err, api.ErrNotOwner) || errors.Is(err, api.ErrStaleEpoch) ||
		errors.Is(err, api.ErrClosed) || errors.Is(err, context.Canceled)
}
