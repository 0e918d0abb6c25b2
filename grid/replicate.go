package grid

import (
	"context"
	"fmt"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
)

// Backup side. Both handlers run inline on the connection's reader
// goroutine, so records sent in order on one connection apply in order.

// fence checks a replication message's epoch against p. Caller holds p.mu.
func (n *Node) fence(p *partition, epoch uint64) error {
	if epoch < p.epoch {
		return fmt.Errorf("%w: partition %d: epoch %d < %d", api.ErrStaleEpoch, p.id, epoch, p.epoch)
	}
	if p.role == rolePrimary {
		if epoch == p.epoch {
			return fmt.Errorf("%w: partition %d: this node is primary at epoch %d", api.ErrStaleEpoch, p.id, epoch)
		}
		// A newer primary exists: this node was superseded and must stop
		// acting as primary at once, before its table catches up.
		n.log.Warn("superseded as primary", "partition", p.id, "epoch", p.epoch, "newer", epoch)
		p.role = roleBackup
		p.streams = map[string]*stream{}
		close(p.commitCh)
		p.commitCh = make(chan struct{})
	}
	if epoch > p.epoch {
		p.epoch = epoch
	}
	return nil
}

func (n *Node) handleReplicate(c *transport.Conn, f wire.Frame) {
	var req wire.ReplicateRequest
	if err := wire.Decode(f.Body, &req); err != nil {
		c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: %v", api.ErrBadRequest, err))
		return
	}
	if req.Partition < 0 || int(req.Partition) >= len(n.parts) {
		c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: partition %d", api.ErrBadRequest, req.Partition))
		return
	}
	p := n.parts[req.Partition]
	p.mu.Lock()
	if err := n.fence(p, req.Epoch); err != nil {
		p.mu.Unlock()
		c.ReplyError(f.Type, f.ID, err)
		return
	}
	rec := &req.Record
	switch {
	case p.syncedEpoch != req.Epoch:
		p.mu.Unlock()
		c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: partition %d has no snapshot of epoch %d", api.ErrGap, p.id, req.Epoch))
		return
	case rec.LSN <= p.lsn:
		// A duplicate: already applied.
	case rec.LSN != p.lsn+1:
		p.syncedEpoch = 0
		p.mu.Unlock()
		c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: partition %d at lsn %d got %d", api.ErrGap, p.id, p.lsn, rec.LSN))
		return
	default:
		p.applyRecord(rec, nowNano())
	}
	lsn := p.lsn
	p.mu.Unlock()
	c.Reply(f.Type, f.ID, &wire.Ack{LSN: lsn})
}

func (n *Node) handleSnapshot(c *transport.Conn, f wire.Frame) {
	var ch wire.SnapshotChunk
	if err := wire.Decode(f.Body, &ch); err != nil {
		c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: %v", api.ErrBadRequest, err))
		return
	}
	if ch.Partition < 0 || int(ch.Partition) >= len(n.parts) {
		c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: partition %d", api.ErrBadRequest, ch.Partition))
		return
	}
	p := n.parts[ch.Partition]
	p.mu.Lock()
	if err := n.fence(p, ch.Epoch); err != nil {
		p.mu.Unlock()
		c.ReplyError(f.Type, f.ID, err)
		return
	}
	if ch.First {
		p.reset()
		p.syncedEpoch = 0
	}
	for i := range ch.Entries {
		e := &ch.Entries[i]
		p.applyMut(&wire.Mutation{Kind: wire.MutSet, Map: e.Map, Key: e.Key, Value: e.Value, ExpireAt: e.ExpireAt}, e.Version)
	}
	for _, ss := range ch.Sessions {
		s := &session{low: ss.Low, seen: ss.Seen, results: make(map[uint64]sessResult, len(ss.Seqs))}
		for i, seq := range ss.Seqs {
			if i < len(ss.Results) {
				s.results[seq] = sessResult{resp: ss.Results[i], lsn: ch.LSN}
			}
		}
		p.sessions[ss.Client] = s
	}
	var lsn uint64
	if ch.Last {
		p.lsn = ch.LSN
		p.syncedEpoch = ch.Epoch
		lsn = ch.LSN
	}
	p.mu.Unlock()
	c.Reply(f.Type, f.ID, &wire.Ack{LSN: lsn})
}

// Primary side: filling replicas.

const snapshotChunkBytes = 1 << 20

// snapshot cuts p's state into chunks. Caller holds p.mu.
func (p *partition) snapshot(now int64) []wire.SnapshotChunk {
	var chunks []wire.SnapshotChunk
	cur := wire.SnapshotChunk{Partition: int32(p.id), Epoch: p.epoch, LSN: p.lsn, First: true}
	size := 0
	for m, kv := range p.maps {
		for k, e := range kv {
			if !e.live(now) {
				continue
			}
			cur.Entries = append(cur.Entries, wire.SnapEntry{Map: m, Key: k, Value: e.value, Version: e.version, ExpireAt: e.expireAt})
			size += len(m) + len(k) + len(e.value) + 24
			if size >= snapshotChunkBytes {
				chunks = append(chunks, cur)
				cur = wire.SnapshotChunk{Partition: int32(p.id), Epoch: p.epoch, LSN: p.lsn}
				size = 0
			}
		}
	}
	for client, s := range p.sessions {
		ss := wire.SnapSession{Client: client, Low: s.low, Seen: s.seen}
		for seq, r := range s.results {
			ss.Seqs = append(ss.Seqs, seq)
			ss.Results = append(ss.Results, r.resp)
		}
		cur.Sessions = append(cur.Sessions, ss)
	}
	cur.Last = true
	return append(chunks, cur)
}

// kickSyncs starts a fill for every broken stream of every partition this
// node leads that has no fill running.
func (n *Node) kickSyncs() {
	if n.closed.Load() {
		return
	}
	for _, p := range n.parts {
		p.mu.Lock()
		if p.role == rolePrimary {
			for _, s := range p.streams {
				if s.broken && !s.syncing && s.addr != "" {
					s.syncing = true
					n.wg.Add(1)
					go n.syncStream(p, s, s.addr)
				}
			}
		}
		p.mu.Unlock()
	}
}

// syncStream sends a snapshot to one replica; records written after it
// follow on the same connection, so the replica is complete once it acks.
func (n *Node) syncStream(p *partition, s *stream, addr string) {
	defer n.wg.Done()
	ctx, cancel := context.WithTimeout(n.ctx, 30*time.Second)
	defer cancel()
	conn, err := n.pool.Get(ctx, addr)
	p.mu.Lock()
	if err != nil || p.streams[s.node] != s || p.role != rolePrimary {
		s.syncing = false
		p.mu.Unlock()
		return
	}
	epoch, lsn := p.epoch, p.lsn
	chunks := p.snapshot(nowNano())
	futs := make([]*transport.Future, 0, len(chunks))
	for i := range chunks {
		fut, err := conn.Start(wire.MsgSnapshot, &chunks[i])
		if err != nil {
			s.syncing = false
			p.mu.Unlock()
			return
		}
		futs = append(futs, fut)
	}
	s.conn, s.broken, s.counted = conn, false, true
	p.mu.Unlock()

	var werr error
	for _, fut := range futs {
		if err := fut.Wait(ctx, nil); err != nil && werr == nil {
			werr = err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s.syncing = false
	if p.streams[s.node] != s {
		return
	}
	if werr != nil {
		n.log.Debug("snapshot failed", "partition", p.id, "replica", s.node, "err", werr)
		s.broken, s.conn = true, nil
		return
	}
	if lsn > s.acked {
		s.acked = lsn
	}
	if p.epoch == epoch {
		s.filled = true
	}
	p.recomputeCommit()
}

// reportFilled tells the authority about filled pending replicas.
func (n *Node) reportFilled() {
	var reps []wire.SyncedReport
	for _, p := range n.parts {
		p.mu.Lock()
		if p.role == rolePrimary {
			for _, s := range p.streams {
				if s.filled && !s.inSync && !s.broken {
					reps = append(reps, wire.SyncedReport{Partition: int32(p.id), Epoch: p.epoch, Node: s.node, Version: p.version})
				}
			}
		}
		p.mu.Unlock()
	}
	if len(reps) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, 2*time.Second)
	defer cancel()
	for _, r := range reps {
		if err := n.cluster.Report(ctx, r); err != nil {
			n.log.Debug("synced report failed; will retry", "partition", r.Partition, "err", err)
			return
		}
	}
}

// maintenance runs TTL sampling, fill retries, synced reports and session
// expiry. It is the node's only timer goroutine.
func (n *Node) maintenance() {
	defer n.wg.Done()
	tick := time.NewTicker(n.cfg.ExpiryInterval)
	defer tick.Stop()
	lastSlow := time.Now()
	lastSessions := time.Now()
	for {
		select {
		case <-n.done:
			return
		case <-tick.C:
		}
		n.expire()
		if time.Since(lastSlow) >= 100*time.Millisecond {
			lastSlow = time.Now()
			n.kickSyncs()
			n.reportFilled()
		}
		if time.Since(lastSessions) >= time.Second {
			lastSessions = time.Now()
			n.expireSessions()
			n.dropOrphans()
		}
	}
}

const (
	expireSample = 20
	expireRounds = 4
)

// expire samples keys with a TTL in every partition this node leads and
// deletes the expired ones through the replicated write path, repeating a
// partition while more than a quarter of its sample had expired (the Redis
// active-expiry rule). Reads also hide expired entries lazily.
func (n *Node) expire() {
	if !n.leaseValid() {
		return
	}
	for _, p := range n.parts {
		for range expireRounds {
			p.mu.Lock()
			if p.role != rolePrimary || len(p.ttlKeys) == 0 {
				p.mu.Unlock()
				break
			}
			now := nowNano()
			var muts []wire.Mutation
			seen := 0
			for k := range p.ttlKeys {
				if seen++; seen > expireSample {
					break
				}
				if e := p.maps[k.m][k.k]; e == nil || !e.live(now) {
					muts = append(muts, wire.Mutation{Kind: wire.MutDelete, Map: k.m, Key: k.k})
				}
			}
			if len(muts) == 0 {
				p.mu.Unlock()
				break
			}
			rec := wire.Record{Muts: muts}
			pw := p.commitRecord(&rec, now)
			p.mu.Unlock()
			n.publish(&rec)
			n.finishAsync(pw)
			if len(muts)*4 <= min(seen, expireSample) {
				break
			}
		}
	}
}

// orphanGrace is how long a partition's data outlives the table that stopped
// naming this node as a replica.
const orphanGrace = 30 * time.Second

// dropOrphans frees the data of partitions this node has not been a replica
// of for orphanGrace.
func (n *Node) dropOrphans() {
	cutoff := nowNano() - orphanGrace.Nanoseconds()
	for _, p := range n.parts {
		p.mu.Lock()
		if p.role == roleNone && p.orphanSince != 0 && p.orphanSince < cutoff {
			p.reset()
			p.syncedEpoch = 0
			p.orphanSince = 0
		}
		p.mu.Unlock()
	}
}

func (n *Node) expireSessions() {
	cutoff := nowNano() - n.cfg.SessionIdle.Nanoseconds()
	for _, p := range n.parts {
		p.mu.Lock()
		for c, s := range p.sessions {
			if s.seen < cutoff {
				delete(p.sessions, c)
			}
		}
		p.mu.Unlock()
	}
}
