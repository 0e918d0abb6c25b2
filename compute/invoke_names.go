package compute

import (
	"context"
	"time"

	"github.com/collocate/grid/compute/invoke"
)

// The caller's side of compute lives in package invoke (a leaf that a
// client-only program can import without linking grid, serf or raft);
// these are the same names for embedded programs.

// Executor runs named functions by name with msgpack-encoded arguments:
// Compute (an embedded node) and client.Client implement it.
type Executor = invoke.Executor

type (
	// CallOption modifies a call.
	CallOption = invoke.CallOption
	// PartsOptions select the tasks of ExecuteOnPartitions.
	PartsOptions = invoke.PartsOptions
	// MemberResult is one member's answer to Broadcast.
	MemberResult = invoke.MemberResult
	// Typed is one member's typed answer to BroadcastTo.
	Typed[R any] = invoke.Typed[R]
	// Agg is an aggregation of numeric values (invoke.Agg).
	Agg = invoke.Agg
	// CounterArgs are FnCounterAdd's arguments.
	CounterArgs = invoke.CounterArgs
	// CASArgs are FnCAS's arguments.
	CASArgs = invoke.CASArgs
	// CASResult is FnCAS's answer.
	CASResult = invoke.CASResult
	// AppendArgs are FnListAppend's arguments.
	AppendArgs = invoke.AppendArgs
	// AggArgs are FnAggKey's and FnAggMap's arguments.
	AggArgs = invoke.AggArgs
)

// Built-in function names (see package invoke).
const (
	FnCounterAdd = invoke.FnCounterAdd
	FnCAS        = invoke.FnCAS
	FnListAppend = invoke.FnListAppend
	FnAggMap     = invoke.FnAggMap
	FnAggKey     = invoke.FnAggKey
	FnEcho       = invoke.FnEcho

	FilterKeyPrefix = invoke.FilterKeyPrefix
	FilterKeyGlob   = invoke.FilterKeyGlob
)

// WithBudget bounds the function's run; see invoke.WithBudget.
func WithBudget(d time.Duration) CallOption { return invoke.WithBudget(d) }

// Call is invoke.Call: fn at the primary of key's partition, typed.
func Call[A, R any](ctx context.Context, ex Executor, mapName, key, fn string, args A, opts ...CallOption) (R, error) {
	return invoke.Call[A, R](ctx, ex, mapName, key, fn, args, opts...)
}

// MapReduce is invoke.MapReduce: fn once per partition, each partial
// folded into acc as it arrives.
func MapReduce[A, P, R any](ctx context.Context, ex Executor, fn string, args A, opts PartsOptions, acc R, reduce func(R, P) R) (R, error) {
	return invoke.MapReduce(ctx, ex, fn, args, opts, acc, reduce)
}

// BroadcastTo is invoke.BroadcastTo: fn on every member, typed.
func BroadcastTo[A, R any](ctx context.Context, ex Executor, fn string, args A, opts ...CallOption) ([]Typed[R], error) {
	return invoke.BroadcastTo[A, R](ctx, ex, fn, args, opts...)
}

// Aggregate is invoke.Aggregate: count, sum, min, max, avg of a map.
func Aggregate(ctx context.Context, ex Executor, mapName string, args AggArgs) (Agg, error) {
	return invoke.Aggregate(ctx, ex, mapName, args)
}

// AggregateKey is invoke.AggregateKey: the aggregation of the values
// collocated with key, at key's primary.
func AggregateKey(ctx context.Context, ex Executor, valuesMap, key string, args AggArgs) (Agg, error) {
	return invoke.AggregateKey(ctx, ex, valuesMap, key, args)
}
