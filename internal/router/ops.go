package router

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/transport"
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
	seq, low := r.seqs.begin()
	defer r.seqs.end(seq)
	sess := wire.Session{Client: r.cfg.ClientID, Seq: seq, Low: low}
	var total atomic.Int64
	err := r.fanoutParts(ctx, r.splitKeys(keys), func(t *wire.Table, g *nodeGroup) ([]error, error) {
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
	fail := func(err error) []api.BatchResult {
		for i := range res {
			if res[i].Err == nil {
				res[i].Err = err
			}
		}
		return res
	}
	if r.closed() {
		return fail(api.ErrClosed)
	}
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	reqs := make([]wire.MapRequest, len(ops))
	valid := make([]bool, len(ops))
	var seqs []uint64
	defer func() {
		for _, s := range seqs {
			r.seqs.end(s)
		}
	}()
	for i, op := range ops {
		rq := &reqs[i]
		rq.Map, rq.Key = m.name, op.Key
		rq.Partition = int32(affinity.Partition(op.Key, r.cfg.Partitions))
		switch op.Kind {
		case api.BatchGet:
			rq.Op = wire.OpGet
		case api.BatchSet:
			f, err := setFlags(op.Set)
			if err != nil {
				res[i].Err = err
				continue
			}
			rq.Op, rq.Flags, rq.TTL = wire.OpSet, f, int64(op.Set.TTL)
			// The caller may reuse its slice: the store keeps its own copy.
			rq.Value = bytes.Clone(op.Value)
			if rq.Value == nil {
				rq.Value = []byte{}
			}
			seq, low := r.seqs.begin()
			seqs = append(seqs, seq)
			rq.Session = wire.Session{Client: r.cfg.ClientID, Seq: seq, Low: low}
		default:
			res[i].Err = fmt.Errorf("%w: batch op kind %d", api.ErrBadRequest, op.Kind)
			continue
		}
		valid[i] = true
	}
	t := r.cfg.Table()
	if t == nil {
		if err := r.cfg.WaitTable(ctx); err != nil {
			return fail(err)
		}
		t = r.cfg.Table()
	}
	addrs := make(map[string]string, len(t.Members))
	for _, mb := range t.Members {
		addrs[mb.Name] = mb.RPC
	}
	groups := map[string][]int{}
	var owners []string
	for i := range reqs {
		if !valid[i] {
			continue
		}
		reqs[i].Version = t.Version
		o := t.Partitions[reqs[i].Partition].Primary
		if _, ok := groups[o]; !ok {
			owners = append(owners, o)
		}
		groups[o] = append(groups[o], i)
	}
	resps := make([]wire.MapResponse, len(ops))
	send := func(owner string, idx []int) {
		breq := &wire.MapBatchRequest{Reqs: reqs}
		if len(idx) != len(reqs) { // else idx is 0..n-1: send reqs as they are
			breq.Reqs = make([]wire.MapRequest, len(idx))
			for j, i := range idx {
				breq.Reqs[j] = reqs[i]
			}
		}
		var bresp *wire.MapBatchResponse
		var err error
		if r.isLocal(owner) {
			bresp, err = r.cfg.Local.ExecMapBatch(ctx, breq)
		} else if addr := addrs[owner]; addr == "" {
			err = fmt.Errorf("%w: no address for %q", api.ErrUnavailable, owner)
		} else {
			var conn *transport.Conn
			if conn, err = r.cfg.Pool.Get(ctx, addr); err == nil {
				bresp = new(wire.MapBatchResponse)
				err = conn.Call(ctx, wire.MsgMapBatch, breq, bresp)
			}
		}
		if err == nil && (len(bresp.Resps) != len(idx) || len(bresp.Errs) != len(idx)) {
			err = fmt.Errorf("%w: %d answers for %d requests", api.ErrInternal, len(bresp.Resps), len(idx))
		}
		for j, i := range idx {
			if err != nil {
				res[i].Err = err
			} else {
				resps[i], res[i].Err = bresp.Resps[j], bresp.Errs[j].Err()
			}
		}
	}
	var wg sync.WaitGroup
	for k, o := range owners {
		if k == len(owners)-1 {
			send(o, groups[o])
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			send(o, groups[o])
		}()
	}
	wg.Wait()
	// Retry what failed retryably, one by one in request order (so a
	// partition's ops keep their order), with the same sessions.
	refreshed := false
	for i := range reqs {
		if !valid[i] || res[i].Err == nil || !api.Retryable(res[i].Err) {
			continue
		}
		if !refreshed {
			r.afterError(ctx, res[i].Err)
			refreshed = true
		}
		resps[i], res[i].Err = r.send(ctx, &reqs[i])
	}
	for i := range res {
		if !valid[i] || res[i].Err != nil {
			continue
		}
		rs := resps[i]
		res[i].Found, res[i].Done = rs.Found, rs.Done
		if rs.Found && (ops[i].Kind == api.BatchGet || ops[i].Set.ReturnOld) {
			res[i].Value = bytes.Clone(rs.Value)
			if res[i].Value == nil {
				res[i].Value = []byte{}
			}
		}
	}
	return res
}
