package router

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// This file holds the Redis-shaped operations: general Set, read-modify-
// write at the primary (Increment, Append), expiry control, multi-key
// delete and cursor scans.

func (m *nodeMap) Set(ctx context.Context, key string, value []byte, args api.SetArgs) (api.SetResult, error) {
	flags, err := setFlags(args)
	if err != nil {
		return api.SetResult{}, err
	}
	r := m.write(wire.OpSet, key, value, nil)
	r.TTL, r.Flags = int64(args.TTL), flags
	resp, err := m.r.doMap(ctx, r)
	if err != nil {
		return api.SetResult{}, err
	}
	out := api.SetResult{Done: resp.Done, Found: resp.Found}
	if args.ReturnOld && resp.Found {
		out.Old = bytes.Clone(resp.Value)
		if out.Old == nil {
			out.Old = []byte{}
		}
	}
	return out, nil
}

func (m *nodeMap) GetAndDelete(ctx context.Context, key string) ([]byte, error) {
	resp, err := m.r.doMap(ctx, m.req(wire.OpGetDelete, key))
	if err != nil {
		return nil, err
	}
	if !resp.Found {
		return nil, api.ErrNotFound
	}
	v := bytes.Clone(resp.Value)
	if v == nil {
		v = []byte{}
	}
	return v, nil
}

func (m *nodeMap) Increment(ctx context.Context, key string, delta int64) (int64, error) {
	r := m.req(wire.OpIncr, key)
	r.Delta = delta
	resp, err := m.r.doMap(ctx, r)
	return resp.Int, err
}

func (m *nodeMap) Append(ctx context.Context, key string, suffix []byte) (int, error) {
	r := m.write(wire.OpAppend, key, suffix, nil)
	resp, err := m.r.doMap(ctx, r)
	return int(resp.Int), err
}

func (m *nodeMap) Expire(ctx context.Context, key string, ttl time.Duration, cond api.ExpireCond) (bool, error) {
	if cond > api.ExpireIfSetAndLess {
		return false, fmt.Errorf("%w: expire condition %d", api.ErrBadRequest, cond)
	}
	r := m.req(wire.OpExpire, key)
	r.TTL = int64(ttl)
	r.Flags = uint8(cond)
	resp, err := m.r.doMap(ctx, r)
	return resp.Done, err
}

func (m *nodeMap) Persist(ctx context.Context, key string) (bool, error) {
	resp, err := m.r.doMap(ctx, m.req(wire.OpPersist, key))
	return resp.Done, err
}

func (m *nodeMap) TTL(ctx context.Context, key string) (time.Duration, error) {
	resp, err := m.r.doMap(ctx, m.req(wire.OpTTL, key))
	if err != nil {
		return 0, err
	}
	if !resp.Found {
		return 0, api.ErrNotFound
	}
	return time.Duration(resp.TTL), nil
}

func (m *nodeMap) DeleteAll(ctx context.Context, keys []string) (int, error) {
	r := m.r
	if len(keys) == 0 {
		return 0, nil
	}
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	sess, end := r.session()
	defer end()
	var total atomic.Int64
	err := r.fanout(ctx, true, r.splitKeys(keys), func(ctx context.Context, t *wire.Table, g *nodeGroup) ([]error, error) {
		req := &wire.DeleteAllRequest{Version: t.Version, Map: m.name, Partitions: g.parts, Keys: g.keys, Session: sess}
		resp, err := callGroup(ctx, r, g, wire.MsgDeleteAll, req, func() (*wire.DeleteAllResponse, error) { return r.cfg.Local.ExecDeleteAll(ctx, req) })
		if err != nil {
			return nil, err
		}
		return addCounts(&total, resp.Counts, resp.Errs, "DeleteAll")
	})
	return int(total.Load()), err
}

// maxScanParts bounds the partitions one ScanKeys call visits, so that a
// page over a sparse map costs a bounded number of round trips.
const maxScanParts = 32

func (m *nodeMap) ScanKeys(ctx context.Context, cursor uint64, count int, match string) ([]string, uint64, error) {
	r := m.r
	if count <= 0 {
		count = 10
	}
	count = min(count, 100_000)
	part, pos := api.SplitScanCursor(cursor)
	if part >= r.cfg.Partitions {
		return nil, 0, fmt.Errorf("%w: cursor %d names partition %d of %d", api.ErrBadRequest, cursor, part, r.cfg.Partitions)
	}
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	var keys []string
	examined := 0
	for visited := 0; visited < maxScanParts; visited++ {
		req := &wire.ScanRequest{Map: m.name, Partition: int32(part), Limit: int32(count - examined),
			Hashed: true, From: pos, Match: match, KeysOnly: true}
		resp, err := r.scan(ctx, req)
		if err != nil {
			return nil, 0, err
		}
		keys = append(keys, resp.Keys...)
		if resp.More {
			// The partition has more: resume inside it.
			return keys, api.ScanCursor(part, resp.Next), nil
		}
		examined += max(len(resp.Keys), 1)
		part, pos = part+1, 0
		if part == r.cfg.Partitions {
			return keys, 0, nil
		}
		if examined >= count || len(keys) >= count {
			break
		}
	}
	return keys, api.ScanCursor(part, 0), nil
}

func setFlags(args api.SetArgs) (uint8, error) {
	if args.IfAbsent && args.IfPresent {
		return 0, fmt.Errorf("%w: IfAbsent and IfPresent together", api.ErrBadRequest)
	}
	if args.KeepTTL && args.TTL > 0 {
		return 0, fmt.Errorf("%w: KeepTTL with a TTL", api.ErrBadRequest)
	}
	var f uint8
	if args.IfAbsent {
		f |= wire.SetIfAbsent
	}
	if args.IfPresent {
		f |= wire.SetIfPresent
	}
	if args.ReturnOld {
		f |= wire.SetReturnOld
	}
	if args.KeepTTL {
		f |= wire.SetKeepTTL
	}
	return f, nil
}

func (m *nodeMap) Batch(ctx context.Context, ops []api.BatchOp) []api.BatchResult {
	r := m.r
	res := make([]api.BatchResult, len(ops))
	if len(ops) == 0 {
		return res
	}
	if r.closed() {
		for i := range res {
			res[i].Err = api.ErrClosed
		}
		return res
	}
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	b := batch{r: r, ops: ops, res: res,
		reqs:  make([]wire.MapRequest, len(ops)),
		resps: make([]wire.MapResponse, len(ops)),
		done:  make([]bool, len(ops)),
		maybe: make([]bool, len(ops)),
	}
	defer b.end()
	parts := b.prepare(m.name)
	err := r.fanout(ctx, false, parts, b.call)
	if err == nil {
		err = fmt.Errorf("%w: batch op left without an answer", api.ErrInternal)
	}
	for i := range res {
		switch {
		case !b.done[i]:
			res[i].Err = outcome(ctx, err, b.reqs[i].Session.Seq != 0 && b.maybe[i])
		case res[i].Err == nil:
			b.result(i)
		}
	}
	return res
}

// batch is one Map.Batch call: its requests, grouped per partition in
// request order, sent by fanout; an op is done once it has its answer.
// Calls for different groups touch different ops, so the slices need no
// lock.
type batch struct {
	r     *Router
	ops   []api.BatchOp
	res   []api.BatchResult
	reqs  []wire.MapRequest
	resps []wire.MapResponse
	done  []bool // answered (res[i].Err set if refused)
	maybe []bool // an attempt may have been applied
	seqs  []uint64
}

// prepare builds the requests, numbering the mutations, and groups the
// valid ones by partition in request order. Invalid ops are done.
func (b *batch) prepare(name string) []partKeys {
	idx := map[int32]int{}
	var parts []partKeys
	for i, op := range b.ops {
		rq := &b.reqs[i]
		rq.Map, rq.Key = name, op.Key
		rq.Partition = int32(affinity.Partition(op.Key, b.r.cfg.Partitions))
		switch op.Kind {
		case api.BatchGet:
			rq.Op = wire.OpGet
		case api.BatchSet:
			f, err := setFlags(op.Set)
			if err != nil {
				b.res[i].Err, b.done[i] = err, true
				continue
			}
			rq.Op, rq.Flags, rq.TTL = wire.OpSet, f, int64(op.Set.TTL)
			// The caller may reuse its slice: the store keeps its own copy.
			rq.Value = bytes.Clone(op.Value)
			if rq.Value == nil {
				rq.Value = []byte{}
			}
			seq, low := b.r.seqs.begin()
			b.seqs = append(b.seqs, seq)
			rq.Session = wire.Session{Client: b.r.cfg.ClientID, Seq: seq, Low: low}
		default:
			b.res[i].Err, b.done[i] = fmt.Errorf("%w: batch op kind %d", api.ErrBadRequest, op.Kind), true
			continue
		}
		p, ok := idx[rq.Partition]
		if !ok {
			p = len(parts)
			idx[rq.Partition] = p
			parts = append(parts, partKeys{part: rq.Partition})
		}
		parts[p].ops = append(parts[p].ops, i)
	}
	return parts
}

func (b *batch) end() {
	for _, s := range b.seqs {
		b.r.seqs.end(s)
	}
}

// call sends the group's ops that are not done yet as one MapBatch request
// and records their answers. A partition fails (and is retried) with the
// first retryable error of its ops; other errors are final for their op.
func (b *batch) call(ctx context.Context, t *wire.Table, g *nodeGroup) ([]error, error) {
	breq := &wire.MapBatchRequest{}
	var idx []int
	for _, ops := range g.ops {
		for _, i := range ops {
			if !b.done[i] {
				b.reqs[i].Version = t.Version
				breq.Reqs = append(breq.Reqs, b.reqs[i])
				idx = append(idx, i)
			}
		}
	}
	bresp, err := callGroup(ctx, b.r, g, wire.MsgMapBatch, breq, func() (*wire.MapBatchResponse, error) { return b.r.cfg.Local.ExecMapBatch(ctx, breq) })
	if err == nil && (len(bresp.Resps) != len(idx) || len(bresp.Errs) != len(idx)) {
		err = fmt.Errorf("%w: %d answers for %d requests", api.ErrInternal, len(bresp.Resps), len(idx))
	}
	if err != nil {
		for _, i := range idx {
			b.maybe[i] = b.maybe[i] || mayHaveApplied(err)
		}
		return nil, err
	}
	errs := make([]error, len(g.parts))
	j := 0
	for p, ops := range g.ops {
		for _, i := range ops {
			if b.done[i] {
				continue
			}
			e := bresp.Errs[j].Err()
			b.resps[i] = bresp.Resps[j]
			j++
			switch {
			case e == nil || !retryable(e):
				b.res[i].Err, b.done[i] = e, true
			default:
				b.maybe[i] = b.maybe[i] || mayHaveApplied(e)
				if errs[p] == nil {
					errs[p] = e
				}
			}
		}
	}
	return errs, nil
}

// result fills op i's result from its answer.
func (b *batch) result(i int) {
	rs, r := b.resps[i], &b.res[i]
	r.Found, r.Done = rs.Found, rs.Done
	if rs.Found && (b.ops[i].Kind == api.BatchGet || b.ops[i].Set.ReturnOld) {
		r.Value = bytes.Clone(rs.Value)
		if r.Value == nil {
			r.Value = []byte{}
		}
	}
}
