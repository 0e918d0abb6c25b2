package router

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// This file sends multi-partition requests: one request per owner node,
// concurrently, with the failed partitions grouped again under the newest
// table and retried by the one retry loop (retry.go).

// partKeys is one partition of a multi-partition request, with its keys
// (nil for whole-partition operations) or the indexes of its Batch ops.
type partKeys struct {
	part int32
	keys []string
	ops  []int
}

// nodeGroup is the share of a request that one node owns.
type nodeGroup struct {
	name, addr string
	parts      []int32
	keys       [][]string
	ops        [][]int
}

// splitKeys groups keys by partition.
func (r *Router) splitKeys(keys []string) []partKeys {
	idx := map[int32]int{}
	var out []partKeys
	for _, k := range keys {
		p := int32(affinity.Partition(k, r.cfg.Partitions))
		i, ok := idx[p]
		if !ok {
			i = len(out)
			idx[p] = i
			out = append(out, partKeys{part: p})
		}
		out[i].keys = append(out[i].keys, k)
	}
	return out
}

// allParts lists every partition without keys.
func (r *Router) allParts() []partKeys {
	out := make([]partKeys, r.cfg.Partitions)
	for i := range out {
		out[i].part = int32(i)
	}
	return out
}

// groupByOwner groups parts by their primary in t, in order of first
// appearance.
func groupByOwner(t *wire.Table, parts []partKeys) []nodeGroup {
	addrs := make(map[string]string, len(t.Members))
	for _, m := range t.Members {
		addrs[m.Name] = m.RPC
	}
	idx := map[string]int{}
	var groups []nodeGroup
	for _, pk := range parts {
		owner := t.Partitions[pk.part].Primary
		i, ok := idx[owner]
		if !ok {
			i = len(groups)
			idx[owner] = i
			groups = append(groups, nodeGroup{name: owner, addr: addrs[owner]})
		}
		g := &groups[i]
		g.parts = append(g.parts, pk.part)
		g.keys = append(g.keys, pk.keys)
		g.ops = append(g.ops, pk.ops)
	}
	return groups
}

// groupCall sends (or runs locally) one group's request and returns one
// error per partition of the group, or one error for all of them. It
// records successes itself and runs concurrently with other groups' calls.
type groupCall func(ctx context.Context, t *wire.Table, g *nodeGroup) ([]error, error)

// fanout sends parts as one request per owner node, concurrently, and
// retries the partitions that failed retryably, grouped again under the
// newest table (with the same session: call builds requests from it).
// mutation: see retry. ctx must have its deadline already (withTimeout).
func (r *Router) fanout(ctx context.Context, mutation bool, parts []partKeys, call groupCall) error {
	return r.retry(ctx, mutation, func(tr *try) error {
		t, err := r.table(tr.ctx)
		if err != nil {
			return err
		}
		groups := groupByOwner(t, parts)
		errs := make([][]error, len(groups))
		var wg sync.WaitGroup
		for i := range groups {
			run := func() { errs[i] = runGroup(tr.ctx, t, &groups[i], call) }
			if i == len(groups)-1 {
				run()
				break
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				run()
			}()
		}
		wg.Wait()
		var failed []partKeys
		var first error
		for i := range groups {
			g := &groups[i]
			for j, perr := range errs[i] {
				if perr == nil {
					continue
				}
				if mayHaveApplied(perr) {
					tr.unknown = true
				}
				if first == nil || (retryable(first) && !retryable(perr)) {
					first = perr
				}
				failed = append(failed, partKeys{part: g.parts[j], keys: g.keys[j], ops: g.ops[j]})
			}
		}
		parts = failed
		return first
	})
}

// runGroup calls call for g and returns one error per partition.
func runGroup(ctx context.Context, t *wire.Table, g *nodeGroup, call groupCall) []error {
	errs, err := call(ctx, t, g)
	if err == nil && len(errs) != len(g.parts) {
		err = fmt.Errorf("%w: %d answers for %d partitions", api.ErrInternal, len(errs), len(g.parts))
	}
	if err != nil {
		errs = make([]error, len(g.parts))
		for i := range errs {
			errs[i] = err
		}
	}
	return errs
}

// callGroup runs a group's request locally or sends it to its node.
func callGroup[Resp any](ctx context.Context, r *Router, g *nodeGroup, typ uint8, req any, local func() (*Resp, error)) (*Resp, error) {
	if r.isLocal(g.name) {
		return local()
	}
	resp := new(Resp)
	if err := r.remote(ctx, g.name, g.addr, typ, req, resp, g.parts...); err != nil {
		return nil, err
	}
	return resp, nil
}

func bodyErrs(bodies []wire.ErrorBody) []error {
	errs := make([]error, len(bodies))
	for i := range bodies {
		errs[i] = bodies[i].Err()
	}
	return errs
}

// session numbers a multi-partition mutation; call end when it is answered.
func (r *Router) session() (s wire.Session, end func()) {
	seq, low := r.seqs.begin()
	return wire.Session{Client: r.cfg.ClientID, Seq: seq, Low: low}, func() { r.seqs.end(seq) }
}

func (m *nodeMap) GetAll(ctx context.Context, keys []string) (map[string][]byte, error) {
	out := make(map[string][]byte, len(keys))
	err := m.getAll(ctx, keys, false, func(k string, v []byte, _ uint64) { out[k] = v })
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (m *nodeMap) GetEntries(ctx context.Context, keys []string) (map[string]api.Entry, error) {
	out := make(map[string]api.Entry, len(keys))
	err := m.getAll(ctx, keys, true, func(k string, v []byte, version uint64) { out[k] = api.Entry{Value: v, Version: version} })
	if err != nil {
		return nil, err
	}
	return out, nil
}

// getAll reads keys with one request per node, calling found (one call
// at a time) with a copy of each present key's value and, with
// versions, its version.
func (m *nodeMap) getAll(ctx context.Context, keys []string, versions bool, found func(k string, v []byte, version uint64)) error {
	r := m.r
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	var mu sync.Mutex
	return r.fanout(ctx, false, r.splitKeys(keys), func(ctx context.Context, t *wire.Table, g *nodeGroup) ([]error, error) {
		req := &wire.GetAllRequest{Version: t.Version, Map: m.name, Partitions: g.parts, Keys: g.keys, WithVersions: versions}
		resp, err := callGroup(ctx, r, g, wire.MsgGetAll, req, func() (*wire.GetAllResponse, error) { return r.cfg.Local.ExecGetAll(ctx, req) })
		if err != nil {
			return nil, err
		}
		errs := make([]error, len(resp.Parts))
		mu.Lock()
		defer mu.Unlock()
		for i, part := range resp.Parts {
			if errs[i] = part.Err.Err(); errs[i] != nil || i >= len(g.keys) {
				continue
			}
			if versions && len(part.Versions) != len(g.keys[i]) {
				errs[i] = fmt.Errorf("%w: %d versions for %d keys", api.ErrInternal, len(part.Versions), len(g.keys[i]))
				continue
			}
			for j, k := range g.keys[i] {
				if j < len(part.Found) && j < len(part.Values) && part.Found[j] {
					var ver uint64
					if versions {
						ver = part.Versions[j]
					}
					found(k, bytes.Clone(part.Values[j]), ver)
				}
			}
		}
		return errs, nil
	})
}

func (m *nodeMap) PutAll(ctx context.Context, entries map[string][]byte, opts ...api.Option) error {
	r := m.r
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	o := api.Apply(opts)
	sess, end := r.session()
	defer end()
	keys := make([]string, 0, len(entries))
	for k := range entries {
		keys = append(keys, k)
	}
	return r.fanout(ctx, true, r.splitKeys(keys), func(ctx context.Context, t *wire.Table, g *nodeGroup) ([]error, error) {
		req := &wire.PutAllRequest{Version: t.Version, Map: m.name, Partitions: g.parts, Keys: g.keys, TTL: int64(o.TTL), Session: sess}
		req.Values = make([][][]byte, len(g.keys))
		for i, ks := range g.keys {
			req.Values[i] = make([][]byte, len(ks))
			for j, k := range ks {
				// The caller may reuse its slices: the store keeps copies.
				req.Values[i][j] = append([]byte{}, entries[k]...)
			}
		}
		resp, err := callGroup(ctx, r, g, wire.MsgPutAll, req, func() (*wire.PartsResponse, error) { return r.cfg.Local.ExecPutAll(ctx, req) })
		if err != nil {
			return nil, err
		}
		return bodyErrs(resp.Errs), nil
	})
}

func (m *nodeMap) Size(ctx context.Context) (int, error) {
	r := m.r
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	var total atomic.Int64
	err := r.fanout(ctx, false, r.allParts(), func(ctx context.Context, t *wire.Table, g *nodeGroup) ([]error, error) {
		req := &wire.SizeRequest{Version: t.Version, Map: m.name, Partitions: g.parts}
		resp, err := callGroup(ctx, r, g, wire.MsgSize, req, func() (*wire.SizeResponse, error) { return r.cfg.Local.ExecSize(ctx, req) })
		if err != nil {
			return nil, err
		}
		return addCounts(&total, resp.Counts, resp.Errs, "Size")
	})
	return int(total.Load()), err
}

// addCounts adds the counts of the partitions that succeeded to total and
// returns the per-partition errors.
func addCounts(total *atomic.Int64, counts []int64, bodies []wire.ErrorBody, what string) ([]error, error) {
	if len(counts) != len(bodies) {
		return nil, fmt.Errorf("%w: malformed %s response", api.ErrInternal, what)
	}
	errs := bodyErrs(bodies)
	for i, c := range counts {
		if errs[i] == nil {
			total.Add(c)
		}
	}
	return errs, nil
}

func (m *nodeMap) Clear(ctx context.Context) error {
	r := m.r
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	sess, end := r.session()
	defer end()
	return r.fanout(ctx, true, r.allParts(), func(ctx context.Context, t *wire.Table, g *nodeGroup) ([]error, error) {
		req := &wire.ClearRequest{Version: t.Version, Map: m.name, Partitions: g.parts, Session: sess}
		resp, err := callGroup(ctx, r, g, wire.MsgClear, req, func() (*wire.PartsResponse, error) { return r.cfg.Local.ExecClear(ctx, req) })
		if err != nil {
			return nil, err
		}
		return bodyErrs(resp.Errs), nil
	})
}
