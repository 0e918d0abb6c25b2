package router

import (
	"context"
	"fmt"
	"sync"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// This file sends named functions to where they run: a partition step at
// the partition's primary (Step), one step per partition (StepParts), a
// member function on a member (Call). Steps may write, so they are
// numbered like mutations and retried with the same session: a step whose
// partition moved while it ran (NotOwner, nothing applied) runs again at
// the new primary, and a step that committed answers its first result to
// every retry.

// Step runs req at its partition's primary: the key's partition if
// req.Key is set, else req.Partition. It sets Partition, Version and
// Session.
func (r *Router) Step(ctx context.Context, req *wire.StepRequest) (wire.StepResponse, error) {
	if r.closed() {
		return wire.StepResponse{}, api.ErrClosed
	}
	if req.Key != "" {
		req.Partition = int32(affinity.Partition(req.Key, r.cfg.Partitions))
	}
	if req.Partition < 0 || int(req.Partition) >= r.cfg.Partitions {
		return wire.StepResponse{}, fmt.Errorf("%w: partition %d out of range", api.ErrBadRequest, req.Partition)
	}
	sess, end := r.session()
	defer end()
	req.Session = sess
	var resp wire.StepResponse
	err := r.retry(ctx, true, func(tr *try) error {
		t, name, addr, err := r.owner(tr.ctx, int(req.Partition))
		if err != nil {
			return err
		}
		req.Version = t.Version
		if r.isLocal(name) {
			resp, err = r.cfg.Local.ExecStep(tr.bound(r), req)
			return err
		}
		resp = wire.StepResponse{}
		return r.remote(tr.bound(r), name, addr, wire.MsgStep, req, &resp, req.Partition)
	})
	return resp, err
}

// PartResult is one partition's answer to StepParts.
type PartResult struct {
	Partition int32
	Epoch     uint64
	Result    []byte
}

// StepParts runs req's function once per partition of parts (every
// partition if nil) at its primary, one request per owner node, and hands
// each partition's answer to each exactly once (calls to each are
// serialized; a partition that failed retryably, say because it moved,
// runs again at its new primary; an answer for a partition already
// answered is dropped). It sets Version, Partitions and Session.
func (r *Router) StepParts(ctx context.Context, req wire.StepPartsRequest, parts []int32, each func(PartResult)) error {
	if r.closed() {
		return api.ErrClosed
	}
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	pks := r.allParts()
	if parts != nil {
		pks = make([]partKeys, 0, len(parts))
		for _, p := range parts {
			if p < 0 || int(p) >= r.cfg.Partitions {
				return fmt.Errorf("%w: partition %d out of range", api.ErrBadRequest, p)
			}
			pks = append(pks, partKeys{part: p})
		}
	}
	sess, end := r.session()
	defer end()
	var mu sync.Mutex
	answered := make(map[int32]bool, len(pks))
	return r.fanout(ctx, true, pks, func(ctx context.Context, t *wire.Table, g *nodeGroup) ([]error, error) {
		greq := req
		greq.Version, greq.Partitions, greq.Session = t.Version, g.parts, sess
		resp, err := callGroup(ctx, r, g, wire.MsgStepParts, &greq, func() (*wire.StepPartsResponse, error) { return r.cfg.Local.ExecStepParts(ctx, &greq) })
		if err != nil {
			return nil, err
		}
		if len(resp.Results) != len(g.parts) || len(resp.Epochs) != len(g.parts) || len(resp.Errs) != len(g.parts) {
			return nil, fmt.Errorf("%w: malformed StepParts response", api.ErrInternal)
		}
		errs := bodyErrs(resp.Errs)
		mu.Lock()
		defer mu.Unlock()
		for i, p := range g.parts {
			if errs[i] != nil || answered[p] {
				continue
			}
			answered[p] = true
			each(PartResult{Partition: p, Epoch: resp.Epochs[i], Result: resp.Results[i]})
		}
		return errs, nil
	})
}

// Call runs a member function on member m (locally if m is this node).
// It is sent once: a member function is not deduplicated.
func (r *Router) Call(ctx context.Context, m wire.Member, req *wire.CallRequest) ([]byte, error) {
	if r.closed() {
		return nil, api.ErrClosed
	}
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	if r.isLocal(m.Name) {
		resp, err := r.cfg.Local.ExecCall(ctx, req)
		if err != nil {
			return nil, err
		}
		return resp.Result, nil
	}
	if m.RPC == "" {
		return nil, fmt.Errorf("%w: no address for %q", api.ErrUnavailable, m.Name)
	}
	conn, err := r.cfg.Pool.Get(ctx, m.RPC)
	if err != nil {
		return nil, err
	}
	var resp wire.CallResponse
	if err := conn.Call(ctx, wire.MsgCall, req, &resp); err != nil {
		return nil, err
	}
	return resp.Result, nil
}

// Broadcast runs the member function req on every member of the current
// table, concurrently, and returns each member's result or error in table
// order.
func (r *Router) Broadcast(ctx context.Context, req *wire.CallRequest) ([]api.MemberResult, error) {
	members, err := r.Members(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.MemberResult, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		out[i].Member = m.Name
		wg.Go(func() { out[i].Result, out[i].Err = r.Call(ctx, m, req) })
	}
	wg.Wait()
	return out, nil
}

// Members returns the members of the current table.
func (r *Router) Members(ctx context.Context) ([]wire.Member, error) {
	t, err := r.table(ctx)
	if err != nil {
		return nil, err
	}
	return t.Members, nil
}
