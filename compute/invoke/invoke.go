// Package invoke is the caller's side of compute: the Executor interface
// that both an embedded node (compute.Compute) and a remote client
// (client.Client) implement, the typed helpers over it (Call, MapReduce,
// BroadcastTo, Aggregate), and the names, arguments and results of the
// built-in functions. It is a leaf: it imports nothing of grid, cluster,
// serf or raft, so a program that only runs a client links none of them.
// Package compute re-exports these names for embedded programs.
//
//	cl, _ := client.Dial(ctx, client.Config{Addrs: addrs})
//	n, err := invoke.Call[invoke.CounterArgs, int64](ctx, cl, "counters", "visits", invoke.FnCounterAdd, invoke.CounterArgs{Delta: 1})
//	sum, err := invoke.Aggregate(ctx, cl, "prices", invoke.AggArgs{})
package invoke

import (
	"context"
	"fmt"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// Executor runs named functions with msgpack-encoded arguments. An error
// matches the sentinels of package grid (and client) with errors.Is:
// ErrNoFunction, ErrBadArgs, ErrFunctionPanic, ErrFunctionBudget,
// ErrFunctionFailed, ErrNotCollocated, ErrBusy (nothing applied),
// ErrTimeout (outcome unknown).
type Executor interface {
	// ExecuteOnKey runs fn at the primary of key's partition; the
	// function sees mapName and key (View.Map, View.Key) and every entry
	// collocated with key (same affinity key, any map). Its writes and
	// result apply once, also when the call is retried after a failover.
	ExecuteOnKey(ctx context.Context, mapName, key, fn string, args []byte, opts ...CallOption) ([]byte, error)
	// ExecuteOnPartitions runs fn once per partition at its primary and
	// hands each partition's result to each exactly once (calls are
	// serialized); a partition whose ownership moved while its task ran
	// runs again at its new primary.
	ExecuteOnPartitions(ctx context.Context, fn string, args []byte, opts PartsOptions, each func(part int, result []byte)) error
	// Broadcast runs the member function fn on every member of the
	// current table and returns each member's result or error.
	Broadcast(ctx context.Context, fn string, args []byte, opts ...CallOption) ([]MemberResult, error)
}

// MemberResult is one member's answer to Broadcast.
type MemberResult = api.MemberResult

// CallOption modifies a call.
type CallOption func(*CallOptions)

// CallOptions are the options of one call (Options collects them).
type CallOptions struct {
	// Budget bounds the function's run (0: the member's
	// grid.Config.MaxStepTime, which also caps it).
	Budget time.Duration
}

// WithBudget bounds the function's run (default and cap: the member's
// grid.Config.MaxStepTime). Past it the call fails with ErrFunctionBudget
// and nothing is applied.
func WithBudget(d time.Duration) CallOption { return func(o *CallOptions) { o.Budget = d } }

// Options applies opts; for Executor implementations.
func Options(opts []CallOption) CallOptions {
	var o CallOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

// PartsOptions select the tasks of ExecuteOnPartitions.
type PartsOptions struct {
	// Map is handed to every task (View.Map): a task over one map.
	Map string
	// Partitions limits the tasks to these partitions; nil: all.
	Partitions []int
	// Budget bounds the tasks a member runs for one request.
	Budget time.Duration
	// Filter names a predicate registered on the members
	// (compute.RegisterFilter; built-ins FilterKeyPrefix, FilterKeyGlob)
	// with its msgpack FilterArgs: each task iterates only the entries of
	// Map for which it is true. Requires Map.
	Filter     string
	FilterArgs []byte
}

// Call runs fn at the primary of key's partition with typed arguments and
// result (ExecuteOnKey).
func Call[A, R any](ctx context.Context, ex Executor, mapName, key, fn string, args A, opts ...CallOption) (R, error) {
	var res R
	raw, err := encodeArgs(fn, args)
	if err != nil {
		return res, err
	}
	out, err := ex.ExecuteOnKey(ctx, mapName, key, fn, raw, opts...)
	if err != nil {
		return res, err
	}
	return decodeResult[R](fn, out)
}

// MapReduce runs fn once per partition (ExecuteOnPartitions), decodes each
// partition's partial result P and folds it into the accumulator with
// reduce as it arrives: the caller holds the accumulator and one member's
// answer at a time, never every partial. Each partition is counted exactly
// once, also when ownership moves.
func MapReduce[A, P, R any](ctx context.Context, ex Executor, fn string, args A, opts PartsOptions, acc R, reduce func(R, P) R) (R, error) {
	raw, err := encodeArgs(fn, args)
	if err != nil {
		return acc, err
	}
	var derr error
	err = ex.ExecuteOnPartitions(ctx, fn, raw, opts, func(part int, result []byte) {
		p, err := decodeResult[P](fn, result)
		if err != nil {
			if derr == nil {
				derr = fmt.Errorf("partition %d: %w", part, err)
			}
			return
		}
		acc = reduce(acc, p)
	})
	if err == nil {
		err = derr
	}
	return acc, err
}

// Typed is one member's typed answer to BroadcastTo.
type Typed[R any] struct {
	Member string
	Result R
	Err    error
}

// BroadcastTo runs the member function fn on every member with typed
// arguments and results.
func BroadcastTo[A, R any](ctx context.Context, ex Executor, fn string, args A, opts ...CallOption) ([]Typed[R], error) {
	raw, err := encodeArgs(fn, args)
	if err != nil {
		return nil, err
	}
	rs, err := ex.Broadcast(ctx, fn, raw, opts...)
	if err != nil {
		return nil, err
	}
	out := make([]Typed[R], len(rs))
	for i, r := range rs {
		out[i] = Typed[R]{Member: r.Member, Err: r.Err}
		if r.Err == nil {
			out[i].Result, out[i].Err = decodeResult[R](fn, r.Result)
		}
	}
	return out, nil
}

func encodeArgs[A any](fn string, args A) ([]byte, error) {
	raw, err := msgpack.Marshal(args)
	if err != nil {
		return nil, fmt.Errorf("invoke: encoding %T arguments of %q: %w", args, fn, err)
	}
	return raw, nil
}

func decodeResult[R any](fn string, raw []byte) (R, error) {
	var r R
	if err := wire.Decode(raw, &r); err != nil {
		return r, fmt.Errorf("invoke: the result of %q does not decode into %T: %w", fn, r, err)
	}
	return r, nil
}
