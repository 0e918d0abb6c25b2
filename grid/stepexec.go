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
	c := stepCall{name: req.Name, mapName: req.Map, key: req.Key, fn: fn, sess: req.Session, budget: n.budget(req.Budget), inline: n.trusted(req.Name)}
	res, epoch, err := n.runStep(ctx, p, c)
	return wire.StepResponse{Result: res, Epoch: epoch}, err
}

// trusted reports whether name is the grid's own step or an internal one
// (run inline, see stepCall.inline).
func (n *Node) trusted(name string) bool {
	if name == deliverStep {
		return true
	}
	_, ok := n.internalStep(name)
	return ok
}

func (n *Node) resolveStep(name string, args []byte) (StepFunc, error) {
	if name == deliverStep {
		return n.bindDeliver(args)
	}
	if bind, ok := n.internalStep(name); ok {
		return bind(args)
	}
	funcs, err := n.functions()
	if err != nil {
		return nil, err
	}
	fn, err := funcs.Step(name, args)
	if err != nil {
		return nil, err
	}
	return asCallers(fn), nil
}

// asCallers marks fn's view as a function callers name: it may not write
// the grid's internal maps, streams and groups (the callers name the map
// many functions write).
func asCallers(fn StepFunc) StepFunc {
	return func(ctx context.Context, v *StepView) ([]byte, error) {
		v.callers = true
		return fn(ctx, v)
	}
}

func (n *Node) execStepParts(ctx context.Context, req *wire.StepPartsRequest) (*wire.StepPartsResponse, error) {
	return observed(n, opStepParts, ctx, req, n.execStepParts1)
}

// execStepParts1 runs one step per listed partition, up to maxPartTasks
// at once; each partition answers its result or error on its own. The
// answers share one frame: see partsReply.
func (n *Node) execStepParts1(ctx context.Context, req *wire.StepPartsRequest) (*wire.StepPartsResponse, error) {
	k := len(req.Partitions)
	if k > len(n.parts) {
		return nil, fmt.Errorf("%w: %d partitions requested of %d", api.ErrBadRequest, k, len(n.parts))
	}
	if req.Filter != "" && req.Map == "" {
		return nil, fmt.Errorf("%w: a filter (%q) needs the map it filters", api.ErrBadRequest, req.Filter)
	}
	out := newPartsReply(k, n.cfg.MaxFrame/2)
	sem := make(chan struct{}, maxPartTasks)
	var wg sync.WaitGroup
	for i, pid := range req.Partitions {
		sem <- struct{}{}
		if err := out.refuse(ctx, pid); err != nil {
			<-sem
			out.set(i, nil, 0, err)
			continue
		}
		wg.Add(1)
		n.workers.Go(func() {
			defer func() { <-sem; wg.Done() }()
			res, epoch, err := n.partTask(ctx, req, pid)
			out.add(i, pid, res, epoch, err)
		})
	}
	wg.Wait()
	return out.resp, nil
}

// partsReply is the answer to one StepParts request. Its results must fit
// in one frame: once they reach limit (Config.MaxFrame/2; one result is at
// most that, checkSize), further answers are left out and their
// partitions fail retryably, and the router runs them again in another
// request (a task that wrote answers its remembered result there). The
// first answer always fits, so every request makes progress.
type partsReply struct {
	mu    sync.Mutex
	resp  *wire.StepPartsResponse
	bytes int
	limit int
	full  bool
}

func newPartsReply(k, limit int) *partsReply {
	return &partsReply{limit: limit, resp: &wire.StepPartsResponse{Results: make([][]byte, k), Epochs: make([]uint64, k), Errs: make([]wire.ErrorBody, k)}}
}

// refuse returns why the task of partition pid must not start: the reply
// is full, or the request's ctx ended (nothing run, retryable).
func (r *partsReply) refuse(ctx context.Context, pid int32) error {
	r.mu.Lock()
	full := r.full
	r.mu.Unlock()
	switch {
	case full:
		return fmt.Errorf("%w: partition %d: this member's answer is full; not run", api.ErrBusy, pid)
	case ctx.Err() != nil:
		return fmt.Errorf("%w: partition %d: the request ended before its task started: %v", api.ErrBusy, pid, ctx.Err())
	}
	return nil
}

// add records task i's answer, or leaves its result out if it does not
// fit: the task ran and may have written, so its partition fails with
// ErrTimeout (outcome unknown, retried with the same session).
func (r *partsReply) add(i int, pid int32, res []byte, epoch uint64, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil && r.bytes > 0 && r.bytes+len(res) > r.limit {
		r.full = true
		err = fmt.Errorf("%w: partition %d: its result (%d bytes) did not fit in this member's answer; it runs again", api.ErrTimeout, pid, len(res))
		res, epoch = nil, 0
	}
	r.bytes += len(res)
	r.setLocked(i, res, epoch, err)
}

func (r *partsReply) set(i int, res []byte, epoch uint64, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.setLocked(i, res, epoch, err)
}

func (r *partsReply) setLocked(i int, res []byte, epoch uint64, err error) {
	r.resp.Results[i], r.resp.Epochs[i], r.resp.Errs[i] = res, epoch, wire.ErrBody(err)
}

// partTask runs req's function at partition pid, counted as one call.
// Its time budget is its own (runStep), not the request's: a member runs
// maxPartTasks at a time.
func (n *Node) partTask(ctx context.Context, req *wire.StepPartsRequest, pid int32) ([]byte, uint64, error) {
	start := time.Now()
	fn, err := n.resolveStep(req.Name, req.Args)
	resolved := !errors.Is(err, api.ErrNoFunction)
	var res []byte
	var epoch uint64
	if err == nil {
		res, epoch, err = n.partTaskAt(ctx, req, pid, fn)
	}
	n.fmetrics.observe(req.Name, resolved, start, err)
	return res, epoch, err
}

func (n *Node) partTaskAt(ctx context.Context, req *wire.StepPartsRequest, pid int32, fn StepFunc) ([]byte, uint64, error) {
	filter, err := n.resolveFilter(req.Filter, req.FilterArgs)
	if err != nil {
		return nil, 0, err
	}
	p, err := n.partitionFor(ctx, pid, req.Version)
	if err != nil {
		return nil, 0, err
	}
	return n.runStep(ctx, p, stepCall{name: req.Name, mapName: req.Map, fn: fn, filter: filter, sess: req.Session, budget: n.budget(req.Budget)})
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
	end := time.Now().Add(n.budget(req.Budget))
	fctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	res, err := n.guarded(fctx, end, -1, fn)
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
	Budget     time.Duration // per partition task, see StepCall
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
