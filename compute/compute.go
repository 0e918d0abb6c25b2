package compute

import (
	"context"
	"fmt"

	"github.com/collocate/grid/compute/invoke"
	"github.com/collocate/grid/grid"
)

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
	o := invoke.Options(opts)
	return c.node.Execute(ctx, grid.StepCall{Map: mapName, Key: key, Name: fn, Args: args, Budget: o.Budget})
}

func (c *Compute) ExecuteOnPartitions(ctx context.Context, fn string, args []byte, opts PartsOptions, each func(part int, result []byte)) error {
	call := grid.PartsCall{Map: opts.Map, Filter: opts.Filter, FilterArgs: opts.FilterArgs, Name: fn, Args: args, Budget: opts.Budget, Partitions: opts.Partitions}
	return c.node.ExecutePartitions(ctx, call, func(r grid.PartResult) { each(int(r.Partition), r.Result) })
}

func (c *Compute) Broadcast(ctx context.Context, fn string, args []byte, opts ...CallOption) ([]MemberResult, error) {
	o := invoke.Options(opts)
	return c.node.CallMembers(ctx, fn, args, o.Budget)
}
