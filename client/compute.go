package client

import (
	"context"
	"fmt"
	"strings"

	"github.com/collocate/grid/compute/invoke"
	"github.com/collocate/grid/internal/router"
	"github.com/collocate/grid/internal/wire"
)

// This file runs named functions (package compute) from the client, through
// the same router as the maps: ExecuteOnKey is numbered like a mutation and
// retried with its (clientID, seq) after NotOwner or a lost primary, so it
// applies once and answers its first result; ExecuteOnPartitions counts
// each partition's first answer once and re-runs the partitions that
// moved. The typed helpers of package invoke (Call, MapReduce,
// BroadcastTo, Aggregate) take a *Client as their Executor.

var _ invoke.Executor = (*Client)(nil)

// checkFunction refuses the names of the grid's internal steps (they
// start with "\x00", grid.ReservedPrefix): they write the grid's own
// state (inbox watermarks, processors' positions).
func checkFunction(name string) error {
	if strings.HasPrefix(name, TxnStepPrefix) && name != TxnStepPrefix+"held" && name != TxnStepPrefix+"forget" {
		return nil // the members' recovery alone runs held and forget
	}
	if strings.HasPrefix(name, "\x00") {
		return fmt.Errorf("%w: function %q: names starting with \\x00 are the grid's own", ErrBadRequest, name)
	}
	return nil
}

// TxnStepPrefix starts the names of package txn's steps (prepare, commit,
// finish, resolve): the only internal steps a client may call. They
// check their own arguments (a transaction's id, deadline and keys).
const TxnStepPrefix = "\x00txn."

// ExecuteOnPartition runs the partition step fn at partition part's
// primary, retried like ExecuteOnKey (applied once). Package txn runs its
// steps with it.
func (c *Client) ExecuteOnPartition(ctx context.Context, part int, fn string, args []byte, opts ...invoke.CallOption) ([]byte, error) {
	if err := checkFunction(fn); err != nil {
		return nil, err
	}
	o := invoke.Options(opts)
	resp, err := c.router.Step(ctx, &wire.StepRequest{Partition: int32(part), Name: fn, Args: args, Budget: int64(o.Budget)})
	return resp.Result, err
}

// ExecuteOnKey runs the partition function fn at the primary of key's
// partition with msgpack args and returns its msgpack result. See
// invoke.Executor.
func (c *Client) ExecuteOnKey(ctx context.Context, mapName, key, fn string, args []byte, opts ...invoke.CallOption) ([]byte, error) {
	if key == "" {
		return nil, fmt.Errorf("%w: ExecuteOnKey needs a key", ErrBadRequest)
	}
	if err := checkFunction(fn); err != nil {
		return nil, err
	}
	o := invoke.Options(opts)
	resp, err := c.router.Step(ctx, &wire.StepRequest{Map: mapName, Key: key, Name: fn, Args: args, Budget: int64(o.Budget)})
	return resp.Result, err
}

// ExecuteOnPartitions runs fn once per partition at its primary and hands
// each partition's result to each exactly once, as the members answer
// (one answer per member in flight: memory stays bounded by the members'
// answers, not the whole result). The error is the first partition error
// that retries did not cure; partitions answered before it were handed to
// each.
func (c *Client) ExecuteOnPartitions(ctx context.Context, fn string, args []byte, opts invoke.PartsOptions, each func(part int, result []byte)) error {
	if err := checkFunction(fn); err != nil {
		return err
	}
	var parts []int32
	if opts.Partitions != nil {
		parts = make([]int32, len(opts.Partitions))
		for i, p := range opts.Partitions {
			parts[i] = int32(p)
		}
	}
	req := wire.StepPartsRequest{Map: opts.Map, Name: fn, Args: args, Budget: int64(opts.Budget), Filter: opts.Filter, FilterArgs: opts.FilterArgs}
	return c.router.StepParts(ctx, req, parts, func(r router.PartResult) { each(int(r.Partition), r.Result) })
}

// Broadcast runs the member function fn on every member of the client's
// table and returns each member's result or error, in table order. A
// member function is sent once (not deduplicated).
func (c *Client) Broadcast(ctx context.Context, fn string, args []byte, opts ...invoke.CallOption) ([]invoke.MemberResult, error) {
	o := invoke.Options(opts)
	return c.router.Broadcast(ctx, &wire.CallRequest{Name: fn, Args: args, Budget: int64(o.Budget)})
}
