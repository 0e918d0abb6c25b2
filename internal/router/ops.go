package router

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// This file holds the Redis-shaped operations: general Set, read-modify-
// write at the primary (Increment, Append), expiry control, multi-key
// delete and cursor scans.

func (m *nodeMap) Set(ctx context.Context, key string, value []byte, args api.SetArgs) (api.SetResult, error) {
	if args.IfAbsent && args.IfPresent {
		return api.SetResult{}, fmt.Errorf("%w: IfAbsent and IfPresent together", api.ErrBadRequest)
	}
	if args.KeepTTL && args.TTL > 0 {
		return api.SetResult{}, fmt.Errorf("%w: KeepTTL with a TTL", api.ErrBadRequest)
	}
	r := m.write(wire.OpSet, key, value, nil)
	r.TTL = int64(args.TTL)
	if args.IfAbsent {
		r.Flags |= wire.SetIfAbsent
	}
	if args.IfPresent {
		r.Flags |= wire.SetIfPresent
	}
	if args.ReturnOld {
		r.Flags |= wire.SetReturnOld
	}
	if args.KeepTTL {
		r.Flags |= wire.SetKeepTTL
	}
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
		if len(resp.Counts) != len(resp.Errs) {
			return nil, fmt.Errorf("%w: malformed DeleteAll response", api.ErrInternal)
		}
		errs := bodyErrs(resp.Errs)
		for i, c := range resp.Counts {
			if errs[i] == nil {
				total.Add(c)
			}
		}
		return errs, nil
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
