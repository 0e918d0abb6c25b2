package grid

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
)

// Backup side. Both handlers run inline on the connection's reader
// goroutine, so records sent in order on one connection apply in order.

// checkSender accepts a replication or snapshot frame only from the member
// that a table this node knows (installed, or committed and not yet
// installed) names as the partition's primary at exactly that epoch, and,
// for snapshots, only over a connection from that member's host. Until
// connections are authenticated this is what keeps one forged frame (say,
// epoch 2^64-1) from raising a replica's epoch for good. A frame whose epoch
// no known table names yet is refused: the sender's stream breaks and its
// fill retries (every 100 ms) until this node has the table, which reaches
// every member through raft. The caller does not hold p.mu.
func (n *Node) checkSender(c *transport.Conn, part int32, epoch uint64, from string, checkHost bool) error {
	var named bool
	for _, t := range []*wire.Table{n.table.Load(), n.latest.Load()} {
		if t == nil || int(part) >= len(t.Partitions) {
			continue
		}
		tp := &t.Partitions[part]
		if tp.Primary != from || tp.Epoch != epoch {
			continue
		}
		if !checkHost {
			return nil
		}
		for _, m := range t.Members {
			if m.Name == from && sameHost(m.RPC, c.RemoteAddr()) {
				return nil
			}
		}
		named = true
	}
	if named {
		return fmt.Errorf("%w: partition %d: replication from %s over a connection from %s, not its host", api.ErrBadRequest, part, from, c.RemoteAddr())
	}
	return fmt.Errorf("%w: partition %d: no known table names %q primary at epoch %d", api.ErrStaleEpoch, part, from, epoch)
}

// sameHost reports whether a member's advertised RPC address and a
// connection's remote address are on the same host. Hostnames (not IPs)
// are not resolved and match any host; members dial from their advertised
// IP (see dialFrom), so a multi-homed host still matches.
func sameHost(advertised, remote string) bool {
	ah, _, err1 := net.SplitHostPort(advertised)
	rh, _, err2 := net.SplitHostPort(remote)
	if err1 != nil || err2 != nil {
		return false
	}
	a, r := net.ParseIP(ah), net.ParseIP(rh)
	if a == nil || a.IsUnspecified() || (a.IsLoopback() && r != nil && r.IsLoopback()) {
		// Loopback members (tests, one-machine clusters) dial from
		// 127.0.0.1 whatever address they advertise.
		return true
	}
	return r != nil && a.Equal(r)
}

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
		p.wakeStreams()
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
	if err := n.checkSender(c, req.Partition, req.Epoch, req.From, false); err != nil {
		c.ReplyError(f.Type, f.ID, err)
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
	case p.syncedEpoch != req.Epoch || p.syncedConn != c:
		// Records follow their epoch's snapshot on the connection that
		// delivered it; any other connection is not that primary's stream.
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

// incomingSnapshot is a snapshot being received, built aside from the
// partition's live data.
type incomingSnapshot struct {
	epoch, lsn uint64
	conn       *transport.Conn
	data       *partition // only its data fields are used
	journal    []wire.JournalEntry
	logs       map[string]*streamLog
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
	if err := n.checkSender(c, ch.Partition, ch.Epoch, ch.From, true); err != nil {
		c.ReplyError(f.Type, f.ID, err)
		return
	}
	p := n.parts[ch.Partition]
	p.mu.Lock()
	if err := n.fence(p, ch.Epoch); err != nil {
		p.mu.Unlock()
		c.ReplyError(f.Type, f.ID, err)
		return
	}
	hadCopy := p.complete && p.lsn > 0
	lsn, err := p.receiveChunk(c, &ch)
	p.mu.Unlock()
	if err != nil {
		c.ReplyError(f.Type, f.ID, err)
		return
	}
	if ch.Last {
		n.snapshotsIn.Add(1)
		if hadCopy {
			n.snapshotsOver.Add(1)
		}
	}
	c.Reply(f.Type, f.ID, &wire.Ack{LSN: lsn})
}

// receiveChunk adds a snapshot chunk to the incoming copy and, on the last
// chunk, swaps the whole copy in at once. Until then the partition keeps its
// previous data (which may be the only complete copy if the sender dies
// mid-transfer). Caller holds p.mu and has fenced the chunk's epoch.
func (p *partition) receiveChunk(c *transport.Conn, ch *wire.SnapshotChunk) (uint64, error) {
	if ch.First {
		p.incoming = &incomingSnapshot{epoch: ch.Epoch, lsn: ch.LSN, conn: c, data: newPartition(p.id, 0)}
	}
	in := p.incoming
	if in == nil || in.epoch != ch.Epoch || in.lsn != ch.LSN || in.conn != c {
		p.incoming = nil
		return 0, fmt.Errorf("%w: partition %d: snapshot chunk without its first chunk", api.ErrGap, p.id)
	}
	d := in.data
	in.journal = append(in.journal, ch.Journal...)
	if in.logs == nil {
		in.logs = map[string]*streamLog{}
	}
	p.receiveStreams(in.logs, ch.Streams)
	if extra := len(in.journal) - p.journal.maxRecs; extra > 0 {
		// More than this replica retains: keep the newest.
		in.journal = append(in.journal[:0], in.journal[extra:]...)
	}
	for i := range ch.Entries {
		e := &ch.Entries[i]
		d.applyMut(&wire.Mutation{Kind: wire.MutSet, Map: e.Map, Key: e.Key, Value: e.Value, ExpireAt: e.ExpireAt}, e.Version)
	}
	for _, ss := range ch.Sessions {
		s := d.sessions[ss.Client]
		if s == nil {
			s = &session{low: ss.Low, seen: ss.Seen, last: ss.Last, lastTime: ss.LastTime, results: make(map[uint64]sessResult, len(ss.Seqs))}
			d.sessions[ss.Client] = s
		}
		for i, seq := range ss.Seqs {
			if i < len(ss.Results) {
				s.results[seq] = sessResult{resp: ss.Results[i], lsn: ch.LSN}
				s.bytes += resultBytes(&ss.Results[i])
			}
		}
		for _, seq := range ss.NoValue {
			if r, ok := s.results[seq]; ok {
				r.noValue = true
				s.results[seq] = r
			}
		}
	}
	if !ch.Last {
		return 0, nil
	}
	p.maps, p.stats, p.ttlKeys, p.sessions = d.maps, d.stats, d.ttlKeys, d.sessions
	p.scanIdx = nil
	p.mapLSN = map[string]uint64{}
	p.sessBytes, p.sessResults = 0, 0
	for _, s := range p.sessions {
		p.sessBytes += s.bytes
		p.sessResults += len(s.results)
	}
	p.pending = map[mapKey]uint64{}
	p.pendq = nil
	p.commit, p.ready = 0, 0
	p.lsn = ch.LSN
	p.journal.install(in.journal, ch.LSN)
	p.wakeStreams()
	p.logs = in.logs
	p.syncedEpoch = ch.Epoch
	p.syncedConn = c
	p.complete = true
	p.incoming = nil
	if p.orphanSince != 0 {
		// The snapshot came before the table naming this node a replica:
		// the data is new, and its grace period starts now, or the next
		// orphan sweep could wipe a copy the primary is about to report
		// filled.
		p.orphanSince = nowNano()
	}
	return ch.LSN, nil
}

// Primary side: filling replicas.

// snapshotChunkBytes is the payload size a snapshot chunk is cut at, at
// most MaxFrame/4 (snapshotChunkLimit). An entry or a result larger than
// the rest of a chunk's room ends that chunk; entries are bounded by
// Config.MaxValueSize (at most MaxFrame/4), so every chunk encodes within
// about MaxFrame/2.
const snapshotChunkBytes = 1 << 20

// snapshotChunkLimit is the chunk size for frames of maxFrame bytes.
func snapshotChunkLimit(maxFrame int) int { return min(snapshotChunkBytes, maxFrame/4) }

// snapEntryOverhead and snapResultOverhead over-estimate the encoding of an
// entry's or a session result's fixed fields.
const (
	snapEntryOverhead  = 48
	snapResultOverhead = 64
)

// snapshotCutter cuts a partition's state into chunks of about
// snapshotChunkBytes, counting encoded sizes of entries and session results.
type snapshotCutter struct {
	p      *partition
	limit  int
	chunks []wire.SnapshotChunk
	cur    wire.SnapshotChunk
	size   int
}

func (c *snapshotCutter) room(n int) {
	if c.size > 0 && c.size+n > c.limit {
		c.chunks = append(c.chunks, c.cur)
		c.cur = wire.SnapshotChunk{Partition: int32(c.p.id), Epoch: c.p.epoch, LSN: c.p.lsn, From: c.cur.From}
		c.size = 0
	}
	c.size += n
}

// snapshot cuts p's state into chunks. Caller holds p.mu. Entries whose
// TTL passed but that the expiry sweep has not removed yet go too: the
// sweep's MutExpire must find them on every replica, or a replica filled
// by this snapshot would journal no expired event at that position.
func (p *partition) snapshot(from string, limit int) []wire.SnapshotChunk {
	c := &snapshotCutter{p: p, limit: limit, cur: wire.SnapshotChunk{Partition: int32(p.id), Epoch: p.epoch, LSN: p.lsn, First: true, From: from}}
	for m, kv := range p.maps {
		for k, e := range kv {
			c.room(len(m) + len(k) + len(e.value) + snapEntryOverhead)
			c.cur.Entries = append(c.cur.Entries, wire.SnapEntry{Map: m, Key: k, Value: e.value, Version: e.version, ExpireAt: e.expireAt})
		}
	}
	for client, s := range p.sessions {
		ss := -1 // index of this session's piece in the current chunk
		for seq, r := range s.results {
			before := len(c.chunks)
			c.room(len(r.resp.Value) + snapResultOverhead)
			if ss < 0 || len(c.chunks) != before {
				c.cur.Sessions = append(c.cur.Sessions, wire.SnapSession{Client: client, Low: s.low, Seen: s.seen, Last: s.last, LastTime: s.lastTime})
				ss = len(c.cur.Sessions) - 1
			}
			c.cur.Sessions[ss].Seqs = append(c.cur.Sessions[ss].Seqs, seq)
			c.cur.Sessions[ss].Results = append(c.cur.Sessions[ss].Results, r.resp)
			if r.noValue {
				c.cur.Sessions[ss].NoValue = append(c.cur.Sessions[ss].NoValue, seq)
			}
		}
		if ss < 0 {
			c.room(snapResultOverhead)
			c.cur.Sessions = append(c.cur.Sessions, wire.SnapSession{Client: client, Low: s.low, Seen: s.seen, Last: s.last, LastTime: s.lastTime})
		}
	}
	c.streams(p)
	for _, r := range p.journal.snapshotTail(snapshotJournalBytes) {
		size := entrySize(&r)
		if size > limit {
			// Too big to ship with its old values: they are only kept
			// where cheap.
			r = withoutOldValues(r)
			size = entrySize(&r)
		}
		c.room(size)
		c.cur.Journal = append(c.cur.Journal, r)
	}
	c.cur.Last = true
	return append(c.chunks, c.cur)
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
				n.startSync(p, s)
			}
		}
		p.mu.Unlock()
	}
}

// syncStream fills one replica: with the records it misses when it holds
// a copy that ends in the primary's journal (tail.go), else with a
// snapshot; records written after either follow on the same connection, so
// the replica is complete once it acks.
func (n *Node) syncStream(p *partition, s *stream, addr string) {
	defer n.wg.Done()
	ctx, cancel := context.WithTimeout(n.ctx, 30*time.Second)
	defer cancel()
	conn, err := n.pool.Get(ctx, addr)
	var st *wire.TailState
	if err == nil {
		p.mu.Lock()
		epoch, tryTail := p.epoch, !s.noTail
		p.mu.Unlock()
		if tryTail {
			// A replica that does not answer would not take a
			// snapshot either: the next attempt probes again.
			st, err = n.probeTail(ctx, conn, p, epoch)
		}
	}
	p.mu.Lock()
	if err != nil || p.streams[s.node] != s || p.role != rolePrimary {
		s.syncing = false
		p.mu.Unlock()
		return
	}
	epoch, lsn := p.epoch, p.lsn
	futs, tail := n.startTail(p, conn, st)
	if !tail {
		chunks := p.snapshot(n.name, snapshotChunkLimit(n.cfg.MaxFrame))
		futs = make([]*transport.Future, 0, len(chunks))
		for i := range chunks {
			fut, err := conn.Start(wire.MsgSnapshot, &chunks[i])
			if err != nil {
				s.syncing = false
				p.mu.Unlock()
				return
			}
			futs = append(futs, fut)
		}
	}
	s.conn, s.broken, s.counted = conn, false, true
	p.mu.Unlock()
	if tail {
		n.tailsSent.Add(1)
	} else {
		n.snapshotsSent.Add(1)
	}

	var werr error
	for _, fut := range futs {
		if err := fut.Wait(ctx, nil); err != nil && werr == nil {
			werr = err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s.syncing = false
	if p.streams[s.node] != s || p.role != rolePrimary {
		return
	}
	if werr != nil {
		n.log.Debug("fill failed", "partition", p.id, "replica", s.node, "tail", tail, "err", werr)
		s.broken, s.conn = true, nil
		// A tail refused: the next fill is a snapshot.
		s.noTail = tail
		return // the maintenance loop retries
	}
	s.noTail = false
	if s.broken || s.conn != conn {
		// A record after the snapshot failed meanwhile: start over.
		n.startSync(p, s)
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
				// A filled pending replica is ready to count; a filled
				// former primary was fenced by our snapshot.
				if s.filled && !s.broken && (!s.inSync || s.node == p.former) {
					reps = append(reps, wire.SyncedReport{Partition: int32(p.id), Epoch: p.epoch, Node: s.node, Version: p.version, ID: s.id})
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
					muts = append(muts, wire.Mutation{Kind: wire.MutExpire, Map: k.m, Key: k.k})
				}
			}
			if len(muts) == 0 {
				p.mu.Unlock()
				break
			}
			rec := wire.Record{Muts: muts}
			n.commitRecord(p, &rec, now)
			p.mu.Unlock()
			n.publish(&rec)
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
				p.dropSession(c)
			}
		}
		p.mu.Unlock()
	}
}
