package grid

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/router"
	"github.com/collocate/grid/internal/wire"
)

// This file serves named functions (MsgStep, MsgStepParts, MsgCall) and
// gives embedded callers the calls that send them through the router.

// maxPartTasks bounds the steps one StepParts request runs at once.
const maxPartTasks = 8

func (n *Node) execStep(ctx context.Context, req *wire.StepRequest) (wire.StepResponse, error) {
	return observed(n, opStep, ctx, req, n.execStep1)
}

func (n *Node) execStep1(ctx context.Context, req *wire.StepRequest) (wire.StepResponse, error) {
	start := time.Now()
	fn, err := n.resolveStep(req.Name, req.Args)
	resolved := !errors.Is(err, api.ErrNoFunction)
	var resp wire.StepResponse
	if err == nil {
		resp, err = n.stepAt(ctx, req, fn)
	}
	n.fmetrics.observe(req.Name, resolved, start, err)
	return resp, err
}

func (n *Node) stepAt(ctx context.Context, req *wire.StepRequest, fn StepFunc) (wire.StepResponse, error) {
	if req.Key != "" {
		if want := affinity.Partition(req.Key, len(n.parts)); want != int(req.Partition) {
			return wire.StepResponse{}, fmt.Errorf("%w: key %q belongs to partition %d, not %d", api.ErrBadRequest, req.Key, want, req.Partition)
		}
	}
	p, err := n.partitionFor(ctx, req.Partition, req.Version)
	if err != nil {
		return wire.StepResponse{}, err
	}
	c := stepCall{name: req.Name, mapName: req.Map, key: req.Key, fn: fn, sess: req.Session, deadline: n.budget(req.Budget)}
	res, epoch, err := n.runStep(ctx, p, c)
	return wire.StepResponse{Result: res, Epoch: epoch}, err
}

func (n *Node) resolveStep(name string, args []byte) (StepFunc, error) {
	funcs, err := n.functions()
	if err != nil {
		return nil, err
	}
	return funcs.Step(name, args)
}

func (n *Node) execStepParts(ctx context.Context, req *wire.StepPartsRequest) (*wire.StepPartsResponse, error) {
	return observed(n, opStepParts, ctx, req, n.execStepParts1)
}

// execStepParts1 runs one step per listed partition, up to maxPartTasks
// at once; each partition answers its result or error on its own.
func (n *Node) execStepParts1(ctx context.Context, req *wire.StepPartsRequest) (*wire.StepPartsResponse, error) {
	k := len(req.Partitions)
	if k > len(n.parts) {
		return nil, fmt.Errorf("%w: %d partitions requested of %d", api.ErrBadRequest, k, len(n.parts))
	}
	if req.Filter != "" && req.Map == "" {
		return nil, fmt.Errorf("%w: a filter (%q) needs the map it filters", api.ErrBadRequest, req.Filter)
	}
	resp := &wire.StepPartsResponse{Results: make([][]byte, k), Epochs: make([]uint64, k), Errs: make([]wire.ErrorBody, k)}
	deadline := n.budget(req.Budget)
	sem := make(chan struct{}, maxPartTasks)
	var wg sync.WaitGroup
	for i, pid := range req.Partitions {
		sem <- struct{}{}
		wg.Add(1)
		n.workers.Go(func() {
			defer func() { <-sem; wg.Done() }()
			res, epoch, err := n.partTask(ctx, req, pid, deadline)
			resp.Results[i], resp.Epochs[i], resp.Errs[i] = res, epoch, wire.ErrBody(err)
		})
	}
	wg.Wait()
	return resp, nil
}

// partTask runs req's function at partition pid, counted as one call.
func (n *Node) partTask(ctx context.Context, req *wire.StepPartsRequest, pid int32, deadline time.Time) ([]byte, uint64, error) {
	start := time.Now()
	fn, err := n.resolveStep(req.Name, req.Args)
	resolved := !errors.Is(err, api.ErrNoFunction)
	var res []byte
	var epoch uint64
	if err == nil {
		res, epoch, err = n.partTaskAt(ctx, req, pid, fn, deadline)
	}
	n.fmetrics.observe(req.Name, resolved, start, err)
	return res, epoch, err
}

func (n *Node) partTaskAt(ctx context.Context, req *wire.StepPartsRequest, pid int32, fn StepFunc, deadline time.Time) ([]byte, uint64, error) {
	filter, err := n.resolveFilter(req.Filter, req.FilterArgs)
	if err != nil {
		return nil, 0, err
	}
	p, err := n.partitionFor(ctx, pid, req.Version)
	if err != nil {
		return nil, 0, err
	}
	return n.runStep(ctx, p, stepCall{name: req.Name, mapName: req.Map, fn: fn, filter: filter, sess: req.Session, deadline: deadline})
}

// resolveFilter binds a partition task's filter (nil if name is empty).
func (n *Node) resolveFilter(name string, args []byte) (Filter, error) {
	if name == "" {
		return nil, nil
	}
	funcs, err := n.functions()
	if err != nil {
		return nil, err
	}
	return funcs.Filter(name, args)
}

func (n *Node) execCall(ctx context.Context, req *wire.CallRequest) (*wire.CallResponse, error) {
	return observed(n, opCall, ctx, req, n.execCall1)
}

func (n *Node) execCall1(ctx context.Context, req *wire.CallRequest) (*wire.CallResponse, error) {
	start := time.Now()
	fn, err := n.resolveMember(req.Name, req.Args)
	resolved := !errors.Is(err, api.ErrNoFunction)
	var resp *wire.CallResponse
	if err == nil {
		resp, err = n.callMember(ctx, req, fn)
	}
	n.fmetrics.observe(req.Name, resolved, start, err)
	return resp, err
}

func (n *Node) resolveMember(name string, args []byte) (MemberFunc, error) {
	funcs, err := n.functions()
	if err != nil {
		return nil, err
	}
	return funcs.Member(name, args)
}

func (n *Node) callMember(ctx context.Context, req *wire.CallRequest, fn MemberFunc) (*wire.CallResponse, error) {
	fctx, cancel := context.WithDeadline(ctx, n.budget(req.Budget))
	defer cancel()
	res, err := n.guarded(fctx, -1, fn)
	if err != nil {
		return nil, err
	}
	return &wire.CallResponse{Result: res}, nil
}

// StepCall names a function to run at a partition's primary.
type StepCall struct {
	// Map and Key: the function runs at the primary of Key's partition
	// and sees both (ExecuteOnKey). Without Key it runs at Partition's.
	Map, Key  string
	Partition int
	Name      string
	Args      []byte
	// Budget bounds the function's run (0: Config.MaxStepTime, which
	// also caps it).
	Budget time.Duration
}

// Execute runs a named partition step at its primary, wherever that is,
// and returns its result. The step's writes and result apply once, also
// when the call is retried after a failover or a move; its errors:
// ErrNoFunction, ErrBadArgs, ErrFunctionPanic, ErrFunctionBudget,
// ErrFunctionFailed, ErrNotCollocated (nothing applied), and as for any
// mutation ErrTimeout (outcome unknown).
func (n *Node) Execute(ctx context.Context, c StepCall) ([]byte, error) {
	resp, err := n.router.Step(ctx, &wire.StepRequest{Partition: int32(c.Partition), Map: c.Map, Key: c.Key,
		Name: c.Name, Args: c.Args, Budget: int64(c.Budget)})
	return resp.Result, err
}

// PartsCall names a function to run once per partition.
type PartsCall struct {
	Map        string // handed to every task (StepView.Map); optional
	Filter     string // a predicate limiting the entries of Map a task iterates; optional
	FilterArgs []byte
	Name       string
	Args       []byte
	Budget     time.Duration // per request to a member, see StepCall
	Partitions []int         // nil: every partition
}

// PartResult is one partition's answer, with the primary epoch it ran at.
type PartResult = router.PartResult

// ExecutePartitions runs a named step once per partition at its primary
// and hands each partition's answer to each exactly once (calls are
// serialized). A partition that moved while its task ran runs again at
// its new primary. The error is the first partition error that retries
// did not cure; partitions answered before it were handed to each.
func (n *Node) ExecutePartitions(ctx context.Context, c PartsCall, each func(PartResult)) error {
	var parts []int32
	if c.Partitions != nil {
		parts = make([]int32, len(c.Partitions))
		for i, p := range c.Partitions {
			parts[i] = int32(p)
		}
	}
	req := wire.StepPartsRequest{Map: c.Map, Name: c.Name, Args: c.Args, Budget: int64(c.Budget), Filter: c.Filter, FilterArgs: c.FilterArgs}
	return n.router.StepParts(ctx, req, parts, each)
}

// MemberResult is one member's answer to CallMembers.
type MemberResult = api.MemberResult

// CallMembers runs a named member function on every member of the
// current table, concurrently, and returns each member's result or error
// in table order.
func (n *Node) CallMembers(ctx context.Context, name string, args []byte, budget time.Duration) ([]MemberResult, error) {
	return n.router.Broadcast(ctx, &wire.CallRequest{Name: name, Args: args, Budget: int64(budget)})
}
