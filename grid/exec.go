package grid

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
)

// This file serves requests at a partition's primary. A write runs in two
// phases: prepare (under the partition lock: decide, apply, give it the
// next LSN, queue it to every replica) and finish (outside the lock: wait
// for the commit point to pass the write; the replicas' acks raise it from
// callbacks on their connections, see onAck).

const maxTableWait = 2 * time.Second

// partitionFor checks a request's partition id and, when the sender knows a
// newer table than ours, waits briefly for it so that a stale node never
// answers for a partition it may have lost.
func (n *Node) partitionFor(ctx context.Context, id int32, version uint64) (*partition, error) {
	if id < 0 || int(id) >= len(n.parts) {
		return nil, fmt.Errorf("%w: partition %d out of range [0, %d)", api.ErrBadRequest, id, len(n.parts))
	}
	if err := n.checkLease(); err != nil {
		return nil, err
	}
	if t := n.table.Load(); t == nil || t.Version < version {
		wctx, cancel := context.WithTimeout(ctx, maxTableWait)
		err := n.waitVersion(wctx, version)
		cancel()
		if err != nil {
			return nil, err
		}
	}
	return n.parts[id], nil
}

// notOwner builds the NotOwner answer. Caller holds p.mu.
func (p *partition) notOwner() error {
	if p.version == 0 {
		return fmt.Errorf("%w: no partition table yet", api.ErrUnavailable)
	}
	return &api.NotOwnerError{Partition: p.id, Version: p.version, Owner: p.primary}
}

func checkKey(req *wire.MapRequest, partitions int) error {
	if wire.IsMutation(req.Op) && (reserved(req.Map) || (req.Op == wire.OpGroupSet && reserved(req.Key))) {
		return errReservedName()
	}
	if req.Op == wire.OpGroupSet {
		return nil // a group's position is per partition, named by Partition
	}
	if want := affinity.Partition(req.Key, partitions); want != int(req.Partition) {
		return fmt.Errorf("%w: key %q belongs to partition %d, not %d", api.ErrBadRequest, req.Key, want, req.Partition)
	}
	return nil
}

// checkMapWrite refuses a client's write of one of the grid's internal
// maps (multi-key and whole-map writes; checkKey covers the single-key
// ones).
func checkMapWrite(m string) error {
	if reserved(m) {
		return errReservedName()
	}
	return nil
}

func errReservedName() error {
	return fmt.Errorf("%w: names starting with %q are the grid's own", api.ErrBadRequest, ReservedPrefix)
}

// recordOverhead over-estimates the encoding of a record's fixed fields.
const recordOverhead = 128

// checkSize refuses a write whose entries or record would exceed the size
// limits (Config.MaxValueSize; MaxFrame/2 for a whole record), before
// anything is applied: a record larger than a frame could never reach the
// backups and would wedge its partition.
func (n *Node) checkSize(muts []wire.Mutation, result *wire.MapResponse) error {
	total := recordOverhead + len(result.Value)
	for i := range muts {
		mu := &muts[i]
		sz := len(mu.Map) + len(mu.Key) + len(mu.Value)
		if (mu.Kind == wire.MutSet || mu.Kind == wire.MutPublish) && sz > n.cfg.MaxValueSize {
			return fmt.Errorf("%w: entry of %d bytes (map %q, max %d)", api.ErrValueTooLarge, sz, mu.Map, n.cfg.MaxValueSize)
		}
		total += sz + 32
	}
	if total > n.cfg.MaxFrame/2 {
		return fmt.Errorf("%w: one write of %d bytes (max %d)", api.ErrValueTooLarge, total, n.cfg.MaxFrame/2)
	}
	return nil
}

// pendingWrite is a prepared write whose replication is in flight.
type pendingWrite struct {
	p     *partition
	lsn   uint64
	epoch uint64
}

// ship queues rec to every replica whose stream is healthy. Acks are
// collected by callbacks on the replica connections (onAck), never by the
// writer: a caller's deadline must not break a healthy stream, and a caller
// without one must not wait on a replica that stopped answering; it waits
// only for the commit point (finish). Caller holds p.mu.
func (n *Node) ship(p *partition, rec *wire.Record) {
	if len(p.streams) == 0 {
		return
	}
	req := wire.ReplicateRequest{Partition: int32(p.id), Epoch: p.epoch, Record: *rec, From: n.name}
	for _, s := range p.streams {
		if s.broken || s.conn == nil {
			continue
		}
		conn := s.conn
		err := conn.StartFunc(wire.MsgReplicate, &req, func(f wire.Frame, err error) { n.onAck(p, s, conn, f, err) })
		if err != nil {
			n.breakStream(p, s, err)
		}
	}
}

// onAck handles a replica's answer to a record: an ack raises the stream's
// acked LSN and maybe the commit point; an error (the connection failed, or
// the replica refused: a gap, a newer epoch) breaks the stream so that a
// snapshot resyncs it. It runs on the connection's reader goroutine.
func (n *Node) onAck(p *partition, s *stream, conn *transport.Conn, f wire.Frame, err error) {
	var ack wire.Ack
	if err == nil {
		err = transport.DecodeResponse(f, &ack)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.streams[s.node] != s || s.conn != conn {
		return // the stream was replaced or is already resyncing
	}
	if err != nil {
		n.breakStream(p, s, err)
		return
	}
	if ack.LSN > s.acked {
		s.acked = ack.LSN
		p.recomputeCommit()
	}
}

// breakStream marks a stream as needing a snapshot and starts its fill.
// Only replica and transport errors break a stream. Caller holds p.mu.
func (n *Node) breakStream(p *partition, s *stream, err error) {
	if s.broken {
		return
	}
	n.log.Debug("replication failed; resyncing", "partition", p.id, "replica", s.node, "err", err)
	s.broken, s.conn, s.filled = true, nil, false
	n.startSync(p, s)
}

// startSync starts a fill goroutine for a broken stream unless one runs.
// Caller holds p.mu.
func (n *Node) startSync(p *partition, s *stream) {
	if !s.broken || s.syncing || s.addr == "" || p.role != rolePrimary || n.closed.Load() {
		return
	}
	s.syncing = true
	n.wg.Add(1)
	go n.syncStream(p, s, s.addr)
}

// commitRecord applies rec as the next write of p, queues it to the
// replicas and returns the pending write. Caller holds p.mu and has checked
// that p is primary.
func (n *Node) commitRecord(p *partition, rec *wire.Record, now int64) pendingWrite {
	rec.LSN, rec.Epoch, rec.Time = p.lsn+1, p.epoch, now
	p.applyRecord(rec, now)
	p.markPending(rec)
	n.ship(p, rec)
	p.recomputeCommit()
	return pendingWrite{p: p, lsn: rec.LSN, epoch: p.epoch}
}

// finish waits until the write is committed (every in-sync replica acked
// it, or left the in-sync set through the authority), the node lost
// primacy, or ctx ended (then the outcome is unknown).
func (n *Node) finish(ctx context.Context, pw pendingWrite) error {
	return pw.p.waitCommit(ctx, pw.lsn, pw.epoch)
}

// execMap serves a single-key request at the primary.
func (n *Node) execMap(ctx context.Context, req *wire.MapRequest) (wire.MapResponse, error) {
	start := time.Now()
	resp, err := n.execMap1(ctx, req)
	n.metrics.observe(opIndex(req.Op), start, resp.Found || resp.Done || req.Op == wire.OpPut, err)
	return resp, err
}

func (n *Node) execMap1(ctx context.Context, req *wire.MapRequest) (wire.MapResponse, error) {
	if !wire.ValidOp(req.Op) {
		return wire.MapResponse{}, fmt.Errorf("%w: unknown op %d", api.ErrBadRequest, req.Op)
	}
	if err := checkKey(req, len(n.parts)); err != nil {
		return wire.MapResponse{}, err
	}
	p, err := n.partitionFor(ctx, req.Partition, req.Version)
	if err != nil {
		return wire.MapResponse{}, err
	}
	if !wire.IsMutation(req.Op) {
		return n.read(ctx, p, req)
	}
	for {
		p.mu.Lock()
		if p.role != rolePrimary {
			err := p.notOwner()
			p.mu.Unlock()
			return wire.MapResponse{}, err
		}
		now := nowNano()
		if r, err := p.seen(req.Session); err != nil || r != nil {
			epoch := p.epoch
			p.mu.Unlock()
			if err != nil {
				return wire.MapResponse{}, err
			}
			// A retry: answer the first result once it is committed.
			n.metrics.replays.Inc()
			if err := p.waitCommit(ctx, r.lsn, epoch); err != nil {
				return wire.MapResponse{}, err
			}
			return r.resp, nil
		}
		if req.Op != wire.OpPublish && req.Op != wire.OpGroupSet && p.blocks(req.Map, req.Key, true) {
			// A transaction being committed holds the key: wait for its
			// outcome, then decide on top of it.
			epoch := p.epoch
			p.mu.Unlock()
			if err := n.waitLock(ctx, p, epoch, req.Map, req.Key, true); err != nil {
				return wire.MapResponse{}, err
			}
			continue
		}
		resp, muts, err := decide(p, req, now)
		if err == nil {
			err = n.checkSize(muts, &resp)
		}
		if err != nil {
			p.mu.Unlock()
			return wire.MapResponse{}, err
		}
		if len(muts) == 0 && req.Session.Client == 0 {
			// Nothing to write: the answer rests on state that must be
			// committed before we reveal it.
			floor, epoch := p.readFloor(req.Map, req.Key), p.epoch
			if p.commit >= floor {
				p.mu.Unlock()
				return resp, nil
			}
			p.mu.Unlock()
			if err := p.waitCommit(ctx, floor, epoch); err != nil {
				return wire.MapResponse{}, err
			}
			continue
		}
		rec := wire.Record{Muts: muts, Session: req.Session}
		if resp.Done || req.Op == wire.OpPut {
			resp.Version = p.lsn + 1
		}
		rec.Result = resp
		pw := n.commitRecord(p, &rec, now)
		p.mu.Unlock()
		n.publish(&rec)
		return resp, n.finish(ctx, pw)
	}
}

// decide computes a mutation's answer and effects from the current state.
// Caller holds p.mu.
func decide(p *partition, req *wire.MapRequest, now int64) (wire.MapResponse, []wire.Mutation, error) {
	var exp int64
	if req.TTL > 0 {
		if exp = now + req.TTL; exp < now {
			return wire.MapResponse{}, nil, fmt.Errorf("%w: TTL %d overflows", api.ErrBadRequest, req.TTL)
		}
	}
	set := func(v []byte, exp int64) []wire.Mutation {
		return []wire.Mutation{{Kind: wire.MutSet, Map: req.Map, Key: req.Key, Value: v, ExpireAt: exp}}
	}
	del := []wire.Mutation{{Kind: wire.MutDelete, Map: req.Map, Key: req.Key}}
	switch req.Op {
	case wire.OpPublish:
		return p.decidePublish(req)
	case wire.OpGroupSet:
		return p.decideGroup(req)
	}
	e := p.get(req.Map, req.Key, now)
	switch req.Op {
	case wire.OpPut:
		return wire.MapResponse{Done: true, Found: e != nil}, set(req.Value, exp), nil
	case wire.OpPutIfAbsent:
		if e != nil {
			return wire.MapResponse{Found: true, Value: e.value, Version: e.version}, nil, nil
		}
		return wire.MapResponse{Done: true}, set(req.Value, exp), nil
	case wire.OpReplace:
		if e == nil {
			return wire.MapResponse{}, nil, nil
		}
		return wire.MapResponse{Found: true, Done: true}, set(req.Value, exp), nil
	case wire.OpCAS:
		if e == nil || !bytes.Equal(e.value, req.Expected) {
			return wire.MapResponse{Found: e != nil}, nil, nil
		}
		return wire.MapResponse{Found: true, Done: true}, set(req.Value, exp), nil
	case wire.OpCASVersion:
		if e == nil || e.version != req.ExpectedVersion {
			return wire.MapResponse{Found: e != nil}, nil, nil
		}
		return wire.MapResponse{Found: true, Done: true}, set(req.Value, exp), nil
	case wire.OpDelete:
		if e == nil {
			return wire.MapResponse{}, nil, nil
		}
		return wire.MapResponse{Found: true, Done: true}, del, nil
	case wire.OpGetDelete:
		if e == nil {
			return wire.MapResponse{}, nil, nil
		}
		return wire.MapResponse{Found: true, Done: true, Value: e.value}, del, nil
	case wire.OpSet:
		resp := wire.MapResponse{Found: e != nil}
		if e != nil && req.Flags&wire.SetReturnOld != 0 {
			resp.Value = e.value
		}
		if (e != nil && req.Flags&wire.SetIfAbsent != 0) || (e == nil && req.Flags&wire.SetIfPresent != 0) {
			return resp, nil, nil
		}
		if e != nil && req.Flags&wire.SetKeepTTL != 0 {
			exp = e.expireAt
		}
		resp.Done = true
		return resp, set(req.Value, exp), nil
	case wire.OpIncr:
		var cur int64
		if e != nil {
			v, ok := api.ParseInt(e.value)
			if !ok {
				return wire.MapResponse{}, nil, api.ErrNotInteger
			}
			cur = v
		}
		d := req.Delta
		if (d > 0 && cur > math.MaxInt64-d) || (d < 0 && cur < math.MinInt64-d) {
			return wire.MapResponse{}, nil, api.ErrOverflow
		}
		v := cur + d
		var keep int64
		if e != nil {
			keep = e.expireAt
		}
		return wire.MapResponse{Found: e != nil, Done: true, Int: v}, set(strconv.AppendInt(nil, v, 10), keep), nil
	case wire.OpAppend:
		if e == nil {
			return wire.MapResponse{Done: true, Int: int64(len(req.Value))}, set(req.Value, 0), nil
		}
		// Stored values are shared with snapshots and replies: never grow
		// one in place.
		v := make([]byte, 0, len(e.value)+len(req.Value))
		v = append(append(v, e.value...), req.Value...)
		return wire.MapResponse{Found: true, Done: true, Int: int64(len(v))}, set(v, e.expireAt), nil
	case wire.OpExpire:
		if e == nil {
			return wire.MapResponse{}, nil, nil
		}
		at := now + req.TTL
		if (req.TTL > 0 && at < now) || (req.TTL < 0 && at > now) {
			return wire.MapResponse{}, nil, fmt.Errorf("%w: TTL %d overflows", api.ErrBadRequest, req.TTL)
		}
		cur := e.expireAt
		var ok bool
		switch req.Flags {
		case wire.ExpireIfNone:
			ok = cur == 0
		case wire.ExpireIfSet:
			ok = cur != 0
		case wire.ExpireIfGreater:
			ok = cur != 0 && at > cur
		case wire.ExpireIfLess:
			ok = cur == 0 || at < cur
		case wire.ExpireIfSetLess:
			ok = cur != 0 && at < cur
		case 0:
			ok = true
		default:
			return wire.MapResponse{}, nil, fmt.Errorf("%w: expire condition %d", api.ErrBadRequest, req.Flags)
		}
		if !ok {
			return wire.MapResponse{Found: true}, nil, nil
		}
		if at <= now {
			return wire.MapResponse{Found: true, Done: true}, del, nil
		}
		return wire.MapResponse{Found: true, Done: true}, set(e.value, at), nil
	case wire.OpPersist:
		if e == nil || e.expireAt == 0 {
			return wire.MapResponse{Found: e != nil}, nil, nil
		}
		return wire.MapResponse{Found: true, Done: true}, set(e.value, 0), nil
	}
	return wire.MapResponse{}, nil, fmt.Errorf("%w: op %d is not a mutation", api.ErrBadRequest, req.Op)
}

// execMapBatch serves a batch of single-key requests: in order within a
// partition, partitions in parallel on the node's workers.
func (n *Node) execMapBatch(ctx context.Context, req *wire.MapBatchRequest) (*wire.MapBatchResponse, error) {
	if len(req.Reqs) > wire.MaxBatch {
		return nil, fmt.Errorf("%w: batch of %d requests (max %d)", api.ErrBadRequest, len(req.Reqs), wire.MaxBatch)
	}
	resp := &wire.MapBatchResponse{Resps: make([]wire.MapResponse, len(req.Reqs)), Errs: make([]wire.ErrorBody, len(req.Reqs))}
	run := func(idx []int) {
		for k, i := range idx {
			r, err := n.execMap(ctx, &req.Reqs[i])
			resp.Resps[i], resp.Errs[i] = r, wire.ErrBody(err)
			if err != nil && !finalAnswer(err) {
				// The sender will retry this request; had the later ones
				// of its partition run, the retry would land after them
				// (SET k a; SET k b ending with a). Refuse them unapplied.
				skip := wire.ErrBody(fmt.Errorf("%w: not run: an earlier request of partition %d in this batch failed (%v)", api.ErrUnavailable, req.Reqs[i].Partition, err))
				for _, j := range idx[k+1:] {
					resp.Errs[j] = skip
				}
				return
			}
		}
	}
	groups := map[int32][]int{}
	var order []int32
	for i := range req.Reqs {
		p := req.Reqs[i].Partition
		if _, ok := groups[p]; !ok {
			order = append(order, p)
		}
		groups[p] = append(groups[p], i)
	}
	var wg sync.WaitGroup
	for gi, p := range order {
		if gi == len(order)-1 {
			run(groups[p])
			break
		}
		wg.Add(1)
		n.workers.Go(func() {
			defer wg.Done()
			run(groups[p])
		})
	}
	wg.Wait()
	return resp, nil
}

// finalAnswer reports whether err is the request's own answer (the same on
// any retry), rather than a failure the sender retries.
func finalAnswer(err error) bool {
	return errors.Is(err, api.ErrNotInteger) || errors.Is(err, api.ErrOverflow) ||
		errors.Is(err, api.ErrValueTooLarge) || errors.Is(err, api.ErrBadRequest) ||
		errors.Is(err, api.ErrStaleSequence)
}

// read serves Get and GetEntry: only committed values are returned.
func (n *Node) read(ctx context.Context, p *partition, req *wire.MapRequest) (wire.MapResponse, error) {
	for {
		p.mu.Lock()
		if p.role != rolePrimary {
			err := p.notOwner()
			p.mu.Unlock()
			return wire.MapResponse{}, err
		}
		if p.blocks(req.Map, req.Key, false) {
			epoch := p.epoch
			p.mu.Unlock()
			if err := n.waitLock(ctx, p, epoch, req.Map, req.Key, false); err != nil {
				return wire.MapResponse{}, err
			}
			continue
		}
		floor := p.readFloor(req.Map, req.Key)
		if p.commit >= floor {
			var resp wire.MapResponse
			now := nowNano()
			if e := p.get(req.Map, req.Key, now); e != nil {
				resp = wire.MapResponse{Found: true, Version: e.version}
				if req.Op == wire.OpTTL {
					if e.expireAt != 0 {
						resp.TTL = e.expireAt - now
					}
				} else {
					resp.Value = e.value
				}
			}
			p.mu.Unlock()
			return resp, nil
		}
		epoch := p.epoch
		p.mu.Unlock()
		if err := p.waitCommit(ctx, floor, epoch); err != nil {
			return wire.MapResponse{}, err
		}
	}
}

// partFloor is the commit a whole-partition read must wait for. Caller holds p.mu.
func (p *partition) partFloor() uint64 {
	if len(p.pending) > 0 {
		return p.lsn
	}
	return p.ready
}

// primaryLocked locks p if it is primary and committed up to its floor,
// waiting as needed. On success the caller holds p.mu.
func (n *Node) primaryLocked(ctx context.Context, p *partition, floor func() uint64) error {
	for {
		p.mu.Lock()
		if p.role != rolePrimary {
			err := p.notOwner()
			p.mu.Unlock()
			return err
		}
		f := floor()
		if p.commit >= f {
			return nil
		}
		epoch := p.epoch
		p.mu.Unlock()
		if err := p.waitCommit(ctx, f, epoch); err != nil {
			return err
		}
	}
}

func (n *Node) execGetAll(ctx context.Context, req *wire.GetAllRequest) (*wire.GetAllResponse, error) {
	return observed(n, opGetAll, ctx, req, n.execGetAll1)
}

func (n *Node) execGetAll1(ctx context.Context, req *wire.GetAllRequest) (*wire.GetAllResponse, error) {
	if len(req.Partitions) != len(req.Keys) {
		return nil, fmt.Errorf("%w: %d partitions, %d key lists", api.ErrBadRequest, len(req.Partitions), len(req.Keys))
	}
	resp := &wire.GetAllResponse{Parts: make([]wire.GetAllPart, len(req.Partitions))}
	for i, pid := range req.Partitions {
		out := &resp.Parts[i]
		p, err := n.partitionFor(ctx, pid, req.Version)
		if err == nil {
			err = n.unlockedKeys(ctx, p, req.Map, req.Keys[i], func() uint64 {
				f := p.ready
				for _, k := range req.Keys[i] {
					f = max(f, p.readFloor(req.Map, k))
				}
				return f
			})
		}
		if err != nil {
			out.Err = wire.ErrBody(err)
			continue
		}
		now := nowNano()
		out.Found = make([]bool, len(req.Keys[i]))
		out.Values = make([][]byte, len(req.Keys[i]))
		if req.WithVersions {
			out.Versions = make([]uint64, len(req.Keys[i]))
		}
		for j, k := range req.Keys[i] {
			if affinity.Partition(k, len(n.parts)) != int(pid) {
				continue
			}
			if e := p.get(req.Map, k, now); e != nil {
				out.Found[j], out.Values[j] = true, e.value
				if req.WithVersions {
					out.Versions[j] = e.version
				}
			}
		}
		p.mu.Unlock()
	}
	return resp, nil
}

// execPartsWrite prepares one record per partition, then waits for all of
// them: one replication round trip for the whole batch. muts returns a
// partition's mutations and the result remembered for retries; results[i]
// is partition i's (the first attempt's, for a retry).
func (n *Node) execPartsWrite(ctx context.Context, version uint64, parts []int32, sess wire.Session, muts func(i int, p *partition, now int64) ([]wire.Mutation, wire.MapResponse, error)) (resp *wire.PartsResponse, results []wire.MapResponse) {
	resp = &wire.PartsResponse{Errs: make([]wire.ErrorBody, len(parts))}
	results = make([]wire.MapResponse, len(parts))
	type prepared struct {
		i  int
		pw pendingWrite
	}
	var pws []prepared
	for i, pid := range parts {
		p, err := n.partitionFor(ctx, pid, version)
		if err != nil {
			resp.Errs[i] = wire.ErrBody(err)
			continue
		}
		p.mu.Lock()
		if p.role != rolePrimary {
			resp.Errs[i] = wire.ErrBody(p.notOwner())
			p.mu.Unlock()
			continue
		}
		now := nowNano()
		if r, err := p.seen(sess); err != nil || r != nil {
			if err != nil {
				resp.Errs[i] = wire.ErrBody(err)
			} else {
				// A retry: wait for the first attempt's record to commit.
				n.metrics.replays.Inc()
				results[i] = r.resp
				pws = append(pws, prepared{i: i, pw: pendingWrite{p: p, lsn: r.lsn, epoch: p.epoch}})
			}
			p.mu.Unlock()
			continue
		}
		ms, result, err := muts(i, p, now)
		if err == nil {
			err = n.checkSize(ms, &result)
		}
		if err != nil {
			p.mu.Unlock()
			resp.Errs[i] = wire.ErrBody(err)
			continue
		}
		results[i] = result
		rec := wire.Record{Muts: ms, Session: sess, Result: result}
		pws = append(pws, prepared{i: i, pw: n.commitRecord(p, &rec, now)})
		p.mu.Unlock()
		n.publish(&rec)
	}
	for _, pr := range pws {
		if err := n.finish(ctx, pr.pw); err != nil {
			resp.Errs[pr.i] = wire.ErrBody(err)
		}
	}
	return resp, results
}

func (n *Node) execPutAll(ctx context.Context, req *wire.PutAllRequest) (*wire.PartsResponse, error) {
	return observed(n, opPutAll, ctx, req, n.execPutAll1)
}

func (n *Node) execPutAll1(ctx context.Context, req *wire.PutAllRequest) (*wire.PartsResponse, error) {
	if err := checkMapWrite(req.Map); err != nil {
		return nil, err
	}
	if len(req.Partitions) != len(req.Keys) || len(req.Keys) != len(req.Values) {
		return nil, fmt.Errorf("%w: mismatched batch lengths", api.ErrBadRequest)
	}
	for i := range req.Keys {
		if len(req.Keys[i]) != len(req.Values[i]) {
			return nil, fmt.Errorf("%w: %d keys, %d values", api.ErrBadRequest, len(req.Keys[i]), len(req.Values[i]))
		}
	}
	resp, _ := n.execPartsWrite(ctx, req.Version, req.Partitions, req.Session, func(i int, p *partition, now int64) ([]wire.Mutation, wire.MapResponse, error) {
		var exp int64
		if req.TTL > 0 {
			exp = now + req.TTL
		}
		ms := make([]wire.Mutation, len(req.Keys[i]))
		for j, k := range req.Keys[i] {
			if affinity.Partition(k, len(n.parts)) != p.id {
				return nil, wire.MapResponse{}, fmt.Errorf("%w: key %q is not in partition %d", api.ErrBadRequest, k, p.id)
			}
			if p.blocks(req.Map, k, true) {
				return nil, wire.MapResponse{}, lockedErr(p.id, req.Map, k, nil)
			}
			ms[j] = wire.Mutation{Kind: wire.MutSet, Map: req.Map, Key: k, Value: req.Values[i][j], ExpireAt: exp}
		}
		return ms, wire.MapResponse{Done: true}, nil
	})
	return resp, nil
}

func (n *Node) execDeleteAll(ctx context.Context, req *wire.DeleteAllRequest) (*wire.DeleteAllResponse, error) {
	return observed(n, opDeleteAll, ctx, req, n.execDeleteAll1)
}

func (n *Node) execDeleteAll1(ctx context.Context, req *wire.DeleteAllRequest) (*wire.DeleteAllResponse, error) {
	if err := checkMapWrite(req.Map); err != nil {
		return nil, err
	}
	if len(req.Partitions) != len(req.Keys) {
		return nil, fmt.Errorf("%w: %d partitions, %d key lists", api.ErrBadRequest, len(req.Partitions), len(req.Keys))
	}
	parts, results := n.execPartsWrite(ctx, req.Version, req.Partitions, req.Session, func(i int, p *partition, now int64) ([]wire.Mutation, wire.MapResponse, error) {
		var ms []wire.Mutation
		seen := make(map[string]bool, len(req.Keys[i]))
		for _, k := range req.Keys[i] {
			if affinity.Partition(k, len(n.parts)) != p.id {
				return nil, wire.MapResponse{}, fmt.Errorf("%w: key %q is not in partition %d", api.ErrBadRequest, k, p.id)
			}
			if p.blocks(req.Map, k, true) {
				return nil, wire.MapResponse{}, lockedErr(p.id, req.Map, k, nil)
			}
			if !seen[k] && p.get(req.Map, k, now) != nil {
				ms = append(ms, wire.Mutation{Kind: wire.MutDelete, Map: req.Map, Key: k})
			}
			seen[k] = true
		}
		return ms, wire.MapResponse{Done: true, Int: int64(len(ms))}, nil
	})
	resp := &wire.DeleteAllResponse{Errs: parts.Errs, Counts: make([]int64, len(results))}
	for i, r := range results {
		resp.Counts[i] = r.Int
	}
	return resp, nil
}

func (n *Node) execClear(ctx context.Context, req *wire.ClearRequest) (*wire.PartsResponse, error) {
	return observed(n, opClear, ctx, req, n.execClear1)
}

func (n *Node) execClear1(ctx context.Context, req *wire.ClearRequest) (*wire.PartsResponse, error) {
	if err := checkMapWrite(req.Map); err != nil {
		return nil, err
	}
	resp, _ := n.execPartsWrite(ctx, req.Version, req.Partitions, req.Session, func(i int, p *partition, now int64) ([]wire.Mutation, wire.MapResponse, error) {
		if p.mapLocked(req.Map) {
			return nil, wire.MapResponse{}, fmt.Errorf("%w: partition %d: keys of map %q are locked by a transaction being committed", api.ErrBusy, p.id, req.Map)
		}
		return []wire.Mutation{{Kind: wire.MutClear, Map: req.Map}}, wire.MapResponse{Done: true}, nil
	})
	return resp, nil
}

func (n *Node) execScan(ctx context.Context, req *wire.ScanRequest) (*wire.ScanResponse, error) {
	return observed(n, opScan, ctx, req, n.execScan1)
}

func (n *Node) execScan1(ctx context.Context, req *wire.ScanRequest) (*wire.ScanResponse, error) {
	limit := int(req.Limit)
	if limit <= 0 || limit > 10000 {
		limit = 1000
	}
	p, err := n.partitionFor(ctx, req.Partition, req.Version)
	if err != nil {
		return nil, err
	}
	if err := n.primaryLocked(ctx, p, p.partFloor); err != nil {
		return nil, err
	}
	now := nowNano()
	kv := p.maps[req.Map]
	if req.Hashed {
		resp := p.scanHashed(req.Map, req, limit, now)
		p.mu.Unlock()
		return resp, nil
	}
	keys := make([]string, 0, min(len(kv), limit*2))
	for k, e := range kv {
		if k > req.After && e.live(now) {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, strings.Compare)
	resp := &wire.ScanResponse{More: len(keys) > limit}
	keys = keys[:min(len(keys), limit)]
	resp.Keys = keys
	resp.Values = make([][]byte, len(keys))
	for i, k := range keys {
		resp.Values[i] = kv[k].value
	}
	p.mu.Unlock()
	return resp, nil
}

func (n *Node) execSize(ctx context.Context, req *wire.SizeRequest) (*wire.SizeResponse, error) {
	return observed(n, opSize, ctx, req, n.execSize1)
}

func (n *Node) execSize1(ctx context.Context, req *wire.SizeRequest) (*wire.SizeResponse, error) {
	resp := &wire.SizeResponse{Counts: make([]int64, len(req.Partitions)), Errs: make([]wire.ErrorBody, len(req.Partitions))}
	for i, pid := range req.Partitions {
		p, err := n.partitionFor(ctx, pid, req.Version)
		if err == nil {
			err = n.primaryLocked(ctx, p, p.partFloor)
		}
		if err != nil {
			resp.Errs[i] = wire.ErrBody(err)
			continue
		}
		now := nowNano()
		var c int64
		for _, e := range p.maps[req.Map] {
			if e.live(now) {
				c++
			}
		}
		p.mu.Unlock()
		resp.Counts[i] = c
	}
	return resp, nil
}
