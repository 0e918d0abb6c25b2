package compute

import (
	"context"
	"fmt"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// Executor runs named functions by name with msgpack-encoded arguments:
// the byte-level interface the embedded node (Compute) and a client
// implement alike. The typed helpers (Call, MapReduce, BroadcastTo) work
// over any Executor.
type Executor interface {
	// ExecuteOnKey runs fn at the primary of key's partition; the
	// function sees mapName and key (View.Map, View.Key) and every entry
	// collocated with key (same affinity key, any map).
	ExecuteOnKey(ctx context.Context, mapName, key, fn string, args []byte, opts ...CallOption) ([]byte, error)
	// ExecuteOnPartitions runs fn once per partition at its primary and
	// hands each partition's result to each exactly once (calls are
	// serialized).
	ExecuteOnPartitions(ctx context.Context, fn string, args []byte, opts PartsOptions, each func(part int, result []byte)) error
	// Broadcast runs the member function fn on every member.
	Broadcast(ctx context.Context, fn string, args []byte, opts ...CallOption) ([]MemberResult, error)
}

// CallOption modifies a call.
type CallOption func(*callOptions)

type callOptions struct{ budget time.Duration }

// WithBudget bounds the function's run (default and cap: the member's
// grid.Config.MaxStepTime). Past it the call fails with ErrFunctionBudget
// and nothing is applied.
func WithBudget(d time.Duration) CallOption { return func(o *callOptions) { o.budget = d } }

func applyOpts(opts []CallOption) callOptions {
	var o callOptions
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
}

// MemberResult is one member's answer to Broadcast.
type MemberResult = grid.MemberResult

// Compute runs functions from an embedded node.
type Compute struct {
	node *grid.Node
	reg  *Registry
}

var _ Executor = (*Compute)(nil)

// New installs reg's functions on node (for calls arriving from any
// member or client) and returns the node's executor. Every member must
// install a registry holding the same functions.
func New(node *grid.Node, reg *Registry) *Compute {
	node.SetFunctions(reg)
	return &Compute{node: node, reg: reg}
}

// Registry is the registry installed on the node.
func (c *Compute) Registry() *Registry { return c.reg }

func (c *Compute) ExecuteOnKey(ctx context.Context, mapName, key, fn string, args []byte, opts ...CallOption) ([]byte, error) {
	if key == "" {
		return nil, fmt.Errorf("%w: ExecuteOnKey needs a key", grid.ErrBadRequest)
	}
	o := applyOpts(opts)
	return c.node.Execute(ctx, grid.StepCall{Map: mapName, Key: key, Name: fn, Args: args, Budget: o.budget})
}

func (c *Compute) ExecuteOnPartitions(ctx context.Context, fn string, args []byte, opts PartsOptions, each func(part int, result []byte)) error {
	call := grid.PartsCall{Map: opts.Map, Name: fn, Args: args, Budget: opts.Budget, Partitions: opts.Partitions}
	return c.node.ExecutePartitions(ctx, call, func(r grid.PartResult) { each(int(r.Partition), r.Result) })
}

func (c *Compute) Broadcast(ctx context.Context, fn string, args []byte, opts ...CallOption) ([]MemberResult, error) {
	o := applyOpts(opts)
	return c.node.CallMembers(ctx, fn, args, o.budget)
}

// Call runs fn at the primary of key's partition with typed arguments and
// result (ExecuteOnKey).
func Call[A, R any](ctx context.Context, ex Executor, mapName, key, fn string, args A, opts ...CallOption) (R, error) {
	var res R
	raw, err := msgpack.Marshal(args)
	if err != nil {
		return res, fmt.Errorf("compute: encoding %T arguments of %q: %w", args, fn, err)
	}
	out, err := ex.ExecuteOnKey(ctx, mapName, key, fn, raw, opts...)
	if err != nil {
		return res, err
	}
	return decodeResult[R](fn, out)
}

// MapReduce runs fn once per partition (ExecuteOnPartitions), decodes each
// partition's partial result P and folds it into the accumulator with
// reduce as it arrives: memory stays bounded by one partial at a time.
// Each partition is counted exactly once, also when ownership moves.
func MapReduce[A, P, R any](ctx context.Context, ex Executor, fn string, args A, opts PartsOptions, acc R, reduce func(R, P) R) (R, error) {
	raw, err := msgpack.Marshal(args)
	if err != nil {
		return acc, fmt.Errorf("compute: encoding %T arguments of %q: %w", args, fn, err)
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
	raw, err := msgpack.Marshal(args)
	if err != nil {
		return nil, fmt.Errorf("compute: encoding %T arguments of %q: %w", args, fn, err)
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

func decodeResult[R any](fn string, raw []byte) (R, error) {
	var r R
	if err := wire.Decode(raw, &r); err != nil {
		return r, fmt.Errorf("compute: the result of %q does not decode into %T: %w", fn, r, err)
	}
	return r, nil
}
