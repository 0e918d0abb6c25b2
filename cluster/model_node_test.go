package cluster

// The simulated member of the model test (model_test.go): one incarnation
// of a grid node, reduced to what replication safety depends on. Each
// function names the grid function it imitates; a change there must be
// mirrored here, or the model checks a protocol that no longer exists.
//
// Simplifications: a snapshot is one message (grid installs chunks only on
// the last one, so a transfer cut short is a lost message); a replica
// checks the sender against its installed table only (grid also accepts
// the newest table it has been offered, which it installs at once); the
// host check always passes; data is a set of write ids.

import (
	"math/bits"
	"slices"

	"github.com/collocate/grid/internal/wire"
)

// wset is a set of write ids of one partition (1..modelMaxWrites).
type wset [4]uint64

func (w *wset) add(id int) { w[id>>6] |= 1 << (id & 63) }

// missingFrom returns a write of w that d lacks, or 0.
func (w *wset) missingFrom(d *wset) int {
	for i := range w {
		if m := w[i] &^ d[i]; m != 0 {
			return i*64 + bits.TrailingZeros64(m)
		}
	}
	return 0
}

func (w *wset) count() int {
	n := 0
	for _, x := range w {
		n += bits.OnesCount64(x)
	}
	return n
}

type mrole int

const (
	mNone mrole = iota
	mBackup
	mPrimary
)

// mnode is one incarnation of a member.
type mnode struct {
	name, id  string
	up        bool // the process runs
	cut       bool // isolated from the network (and from the authority)
	suspected bool // membership calls it failed although it runs
	slow      bool // runs, but its lease renewals do not reach the leader
	draining  bool
	table     *wire.Table // installed
	// leaseUntil and leaseVer: the node serves while now < leaseUntil and
	// its table is at least leaseVer (grid/lease.go).
	leaseUntil int
	leaseVer   uint64
	parts      []*mpart
	pool       []*mconn
	waiters    []mwaiter
}

// mwaiter is a client waiting for its write to commit.
type mwaiter struct {
	p, lsn, wid int
	epoch       uint64
}

// mpart is a partition replica on a node (grid/partition.go).
type mpart struct {
	role        mrole
	epoch       uint64
	complete    bool
	syncedEpoch uint64
	data        wset
	lsn         int
	primary     string
	former      string
	version     uint64
	streams     []*mstream
	commit      int
	ready       int
	pend        [modelKeys]int // lsn of each key's latest uncommitted write
	orphanSince int
	seat        uint64 // the table's Part.Seat
}

func (p *mpart) raise(e uint64) {
	if e > p.epoch {
		p.epoch = e
	}
}

func (p *mpart) hasStream(st *mstream) bool { return slices.Contains(p.streams, st) }

func (p *mpart) stream(name string) *mstream {
	for _, st := range p.streams {
		if st.node == name {
			return st
		}
	}
	return nil
}

// mstream is the primary's view of one replica (grid's stream).
type mstream struct {
	node, id, addr                           string
	inSync, broken, syncing, filled, counted bool
	acked                                    int
	conn                                     *mconn
}

// mconn is a connection from one incarnation to an address, bound to the
// incarnation that ran there when it was dialed. Requests and replies are
// FIFO; a broken connection fails every outstanding request.
type mconn struct {
	seq  int
	from *mnode
	to   *mnode
	dead bool
	reqs []mmsg
	reps []mmsg
}

// mmsg is a snapshot or a record, or the reply to one.
type mmsg struct {
	snap  bool
	p     int
	epoch uint64
	from  string
	lsn   int
	wid   int
	data  wset
	s     *mstream
	err   bool
	ack   int
}

type mfill struct {
	n  *mnode
	p  int
	st *mstream
}

// ---- The node: tables (grid/node.go) ----

// install applies a committed table (Node.install).
func (s *msim) install(n *mnode, t *wire.Table) {
	members := make(map[string]wire.Member, len(t.Members))
	member := false
	for _, m := range t.Members {
		members[m.Name] = m
		if m.Name == n.name && (m.ID == "" || m.ID == n.id) {
			member = true
		}
	}
	for i, part := range t.Partitions {
		p := n.parts[i]
		p.primary, p.version, p.former, p.seat = part.Primary, t.Version, part.Former, part.Seat
		wasPrimary := p.role == mPrimary
		named := part.Primary == n.name || slices.Contains(part.Backups, n.name) || slices.Contains(part.Pending, n.name) ||
			slices.Contains(part.Spares, wire.Spare{Name: n.name, ID: n.id})
		switch {
		case !member:
			p.role, p.streams = mNone, nil
			if named {
				p.orphanSince = 0
			} else if p.orphanSince == 0 {
				p.orphanSince = s.now
			}
			p.raise(part.Epoch)
		case part.Primary == n.name && part.Epoch >= p.epoch:
			if (!wasPrimary || p.epoch < part.Epoch) && !s.becomePrimary(n, i, part) {
				break
			}
			s.updateStreams(n, i, part, members)
		case part.Primary == n.name:
			p.role, p.streams = mBackup, nil
		case slices.Contains(part.Backups, n.name) || slices.Contains(part.Pending, n.name):
			p.role, p.streams = mBackup, nil
			p.raise(part.Epoch)
		default:
			switch {
			case named:
				p.orphanSince = 0 // a spare
			case p.role != mNone || p.orphanSince == 0:
				p.orphanSince = s.now
			}
			p.role, p.streams = mNone, nil
			p.raise(part.Epoch)
		}
		if p.role != mNone {
			p.orphanSince = 0
		}
		if p.role != mPrimary {
			s.failWaiters(n, i)
		}
	}
	n.table = t
	s.kickSyncs(n)
}

// becomePrimary starts a primary term (Node.becomePrimary).
func (s *msim) becomePrimary(n *mnode, i int, part wire.Part) bool {
	p := n.parts[i]
	if !p.complete && !part.Fresh {
		s.logf("%s refuses primacy of p%d at e%d: no complete copy", n.id, i, part.Epoch)
		p.role, p.streams = mBackup, nil
		return false
	}
	p.raise(part.Epoch)
	p.role, p.complete, p.streams = mPrimary, true, nil
	p.pend = [modelKeys]int{}
	p.commit, p.ready = 0, p.lsn
	s.failWaiters(n, i)
	s.tookPrimacy(n, i)
	return true
}

// tookPrimacy checks a new primary term: one incarnation per epoch, and a
// copy that holds every acknowledged write.
func (s *msim) tookPrimacy(n *mnode, i int) {
	p := n.parts[i]
	s.logf("%s primary of p%d at e%d (lsn %d)", n.id, i, p.epoch, p.lsn)
	key := [2]uint64{uint64(i), p.epoch}
	if o, ok := s.owner[key]; ok && o != n.id {
		s.fail("two primaries of p%d at epoch %d: %s and %s", i, p.epoch, o, n.id)
	}
	s.owner[key] = n.id
	if p.epoch > s.maxEpoch[i] {
		s.maxEpoch[i] = p.epoch
	}
	if w := s.acked[i].missingFrom(&p.data); w != 0 {
		s.fail("%s took primacy of p%d at e%d without acknowledged write %d", n.id, i, p.epoch, w)
	}
}

// updateStreams matches the streams to the table's replicas
// (Node.updateStreams): one stream per incarnation and address.
func (s *msim) updateStreams(n *mnode, i int, part wire.Part, members map[string]wire.Member) {
	p := n.parts[i]
	wanted := func(name string) bool {
		return slices.Contains(part.Backups, name) || slices.Contains(part.Pending, name)
	}
	p.streams = slices.DeleteFunc(p.streams, func(st *mstream) bool {
		m := members[st.node]
		return !wanted(st.node) || st.id != m.ID || st.addr != m.RPC
	})
	for _, name := range append(slices.Clone(part.Backups), part.Pending...) {
		if name == n.name {
			continue
		}
		st := p.stream(name)
		if st == nil {
			m := members[name]
			st = &mstream{node: name, id: m.ID, addr: m.RPC, broken: true}
			p.streams = append(p.streams, st)
		}
		st.inSync = slices.Contains(part.Backups, name)
	}
	s.recomputeCommit(n, i)
}

func (s *msim) kickSyncs(n *mnode) {
	for i, p := range n.parts {
		if p.role == mPrimary {
			for _, st := range p.streams {
				s.startSync(n, i, st)
			}
		}
	}
}

// ---- The node: the write path (grid/exec.go, grid/partition.go) ----

func (s *msim) leaseValid(n *mnode) bool {
	return s.now < n.leaseUntil && n.table != nil && n.table.Version >= n.leaseVer
}

// servers are the running nodes that would serve partition i as primary.
func (s *msim) servers(i int) []*mnode {
	var out []*mnode
	for _, n := range s.running() {
		if n.parts[i].role == mPrimary && s.leaseValid(n) {
			out = append(out, n)
		}
	}
	return out
}

// write is a client write at a node that serves partition i
// (execMap1 + commitRecord).
func (s *msim) write(i int, n *mnode) {
	if s.wids[i] >= modelMaxWrites {
		return
	}
	s.wids[i]++
	wid := s.wids[i]
	p := n.parts[i]
	p.lsn++
	p.data.add(wid)
	p.pend[wid%modelKeys] = p.lsn
	s.stats.writes++
	s.logf("write w%d to p%d at %s e%d lsn %d", wid, i, n.id, p.epoch, p.lsn)
	n.waiters = append(n.waiters, mwaiter{p: i, lsn: p.lsn, wid: wid, epoch: p.epoch})
	s.ship(n, i, mmsg{p: i, epoch: p.epoch, from: n.name, lsn: p.lsn, wid: wid})
	s.recomputeCommit(n, i)
}

// ship queues a record to every healthy stream (Node.ship).
func (s *msim) ship(n *mnode, i int, m mmsg) {
	p := n.parts[i]
	for _, st := range p.streams {
		if st.broken || st.conn == nil {
			continue
		}
		if st.conn.dead {
			s.breakStream(n, i, st)
			continue
		}
		m.s = st
		st.conn.reqs = append(st.conn.reqs, m)
	}
}

// read is a client read of key k at a node that serves partition i: it
// answers once the key's latest write is committed (Node.read).
func (s *msim) read(i, k int, n *mnode) {
	p := n.parts[i]
	if p.commit < max(p.ready, p.pend[k]) {
		return // it waits
	}
	s.stats.reads++
	if p.epoch < s.maxEpoch[i] {
		s.stats.oldReads++
	}
	if w := s.ackedKey[i][k].missingFrom(&p.data); w != 0 {
		s.fail("stale read: %s served key %d of p%d at e%d without acknowledged write %d (newest epoch %d)", n.id, k, i, p.epoch, w, s.maxEpoch[i])
	}
}

// recomputeCommit derives the commit point from the counted streams' acks
// and answers the clients whose writes it passed.
func (s *msim) recomputeCommit(n *mnode, i int) {
	p := n.parts[i]
	if p.role != mPrimary || p.seat != 0 {
		return // unseated: nothing commits until the authority confirms it
	}
	c := p.lsn
	for _, st := range p.streams {
		if (st.inSync || st.counted) && st.acked < c {
			c = st.acked
		}
	}
	if c <= p.commit {
		return
	}
	p.commit = c
	for k, l := range p.pend {
		if l != 0 && l <= c {
			p.pend[k] = 0
		}
	}
	n.waiters = slices.DeleteFunc(n.waiters, func(w mwaiter) bool {
		if w.p != i || w.epoch != p.epoch || w.lsn > c {
			return false
		}
		s.acked[i].add(w.wid)
		s.ackedKey[i][w.wid%modelKeys].add(w.wid)
		s.stats.acked++
		s.logf("ack w%d of p%d by %s e%d", w.wid, i, n.id, w.epoch)
		return true
	})
}

// failWaiters fails the clients of partition i that can no longer be
// answered: the node is not primary at their epoch any more.
func (s *msim) failWaiters(n *mnode, i int) {
	p := n.parts[i]
	n.waiters = slices.DeleteFunc(n.waiters, func(w mwaiter) bool {
		return w.p == i && (p.role != mPrimary || p.epoch != w.epoch)
	})
}

// ---- The node: filling replicas (grid/replicate.go) ----

func (s *msim) breakStream(n *mnode, i int, st *mstream) {
	if st.broken {
		return
	}
	st.broken, st.conn, st.filled = true, nil, false
	s.startSync(n, i, st)
}

func (s *msim) startSync(n *mnode, i int, st *mstream) {
	if !st.broken || st.syncing || st.addr == "" || n.parts[i].role != mPrimary || !n.up {
		return
	}
	st.syncing = true
	s.fills = append(s.fills, mfill{n: n, p: i, st: st})
}

// dial returns n's healthy connection to addr, or a new one to whatever
// incarnation runs there now, or nil.
func (s *msim) dial(n *mnode, addr string) *mconn {
	n.pool = slices.DeleteFunc(n.pool, func(c *mconn) bool { return c.dead })
	for _, c := range n.pool {
		if c.to.name == addr {
			return c
		}
	}
	to := s.cur[addr]
	if n.cut || to == nil || !to.up || to.cut {
		return nil
	}
	s.connSeq++
	c := &mconn{seq: s.connSeq, from: n, to: to}
	n.pool = append(n.pool, c)
	s.conns = append(s.conns, c)
	return c
}

// fill queues a snapshot to a broken stream (syncStream up to the wait).
func (s *msim) fill(f mfill) {
	n, p, st := f.n, f.n.parts[f.p], f.st
	c := s.dial(n, st.addr)
	if c == nil || !p.hasStream(st) || p.role != mPrimary {
		st.syncing = false
		return
	}
	c.reqs = append(c.reqs, mmsg{snap: true, p: f.p, epoch: p.epoch, from: n.name, lsn: p.lsn, data: p.data, s: st})
	st.conn, st.broken, st.counted = c, false, true
	s.logf("%s snapshot p%d e%d lsn %d -> %s (conn %d to %s)", n.id, f.p, p.epoch, p.lsn, st.node, c.seq, c.to.id)
}

// filled handles the reply to a snapshot (the rest of syncStream).
func (s *msim) filled(n *mnode, c *mconn, m mmsg) {
	p, st := n.parts[m.p], m.s
	st.syncing = false
	if !p.hasStream(st) || p.role != mPrimary {
		return
	}
	if m.err {
		st.broken, st.conn = true, nil
		return
	}
	if st.broken || st.conn != c {
		s.startSync(n, m.p, st)
		return
	}
	if m.lsn > st.acked {
		st.acked = m.lsn
	}
	if p.epoch == m.epoch {
		st.filled = true
	}
	s.recomputeCommit(n, m.p)
}

// onAck handles the reply to a record (Node.onAck).
func (s *msim) onAck(n *mnode, c *mconn, m mmsg) {
	p, st := n.parts[m.p], m.s
	if !p.hasStream(st) || st.conn != c {
		return
	}
	if m.err {
		s.breakStream(n, m.p, st)
		return
	}
	if m.ack > st.acked {
		st.acked = m.ack
		s.recomputeCommit(n, m.p)
	}
}

// receive handles a snapshot or a record at a replica and returns the
// reply (checkSender, fence, handleReplicate, receiveChunk).
func (s *msim) receive(n *mnode, m mmsg) mmsg {
	r := m
	r.err = true
	t := n.table
	if t == nil || t.Partitions[m.p].Primary != m.from || t.Partitions[m.p].Epoch != m.epoch {
		return r // no known table names the sender primary at that epoch
	}
	p := n.parts[m.p]
	if !s.fence(n, m.p, m.epoch) {
		return r
	}
	if m.snap {
		p.data, p.lsn = m.data, m.lsn
		p.pend = [modelKeys]int{}
		p.commit, p.ready = 0, 0
		p.syncedEpoch, p.complete = m.epoch, true
		if p.orphanSince != 0 && !s.orphanAsIs {
			// Not in grid yet (see orphanAsIs): a primary that names
			// this node as a replica just filled it, so its data is
			// no orphan before the grace has run again.
			p.orphanSince = s.now
		}
		r.err, r.ack = false, m.lsn
		return r
	}
	switch {
	case p.syncedEpoch != m.epoch:
		return r
	case m.lsn <= p.lsn: // a duplicate
	case m.lsn != p.lsn+1:
		p.syncedEpoch = 0
		return r
	default:
		p.data.add(m.wid)
		p.lsn = m.lsn
	}
	r.err, r.ack = false, p.lsn
	return r
}

// fence checks a replication message's epoch (Node.fence): a primary that
// sees a newer epoch steps down at once.
func (s *msim) fence(n *mnode, i int, epoch uint64) bool {
	p := n.parts[i]
	if epoch < p.epoch {
		return false
	}
	if p.role == mPrimary {
		if epoch == p.epoch {
			return false
		}
		s.logf("%s superseded as primary of p%d at e%d by e%d", n.id, i, p.epoch, epoch)
		p.role, p.streams = mBackup, nil
		s.failWaiters(n, i)
	}
	p.raise(epoch)
	return true
}

// reportFilled reports filled pending replicas and a fenced former primary.
func (s *msim) reportFilled(n *mnode, lossy bool) {
	for i, p := range n.parts {
		if p.role != mPrimary {
			continue
		}
		for _, st := range p.streams {
			if st.filled && !st.broken && (!st.inSync || st.node == p.former) {
				if lossy && s.rng.IntN(10) == 0 {
					continue // lost
				}
				r := wire.SyncedReport{Partition: int32(i), Epoch: p.epoch, Node: st.node, Version: p.version, ID: st.id}
				s.reports = append(s.reports, mreport{r: r, at: s.now})
			}
		}
	}
}

// dropOrphans frees partitions no table has named n for the grace period.
func (s *msim) dropOrphans(n *mnode) {
	for i, p := range n.parts {
		if p.role == mNone && p.orphanSince != 0 && s.now-p.orphanSince >= modelOrphanGrace {
			if p.complete {
				s.logf("%s drops orphaned p%d (lsn %d)", n.id, i, p.lsn)
			}
			*p = mpart{epoch: p.epoch, primary: p.primary, former: p.former, version: p.version}
		}
	}
}

// maintain is one run of the node's maintenance loop.
func (s *msim) maintain(n *mnode, lossy bool) {
	s.kickSyncs(n)
	if !n.cut {
		s.reportFilled(n, lossy)
	}
	s.dropOrphans(n)
}

func (s *msim) renew(n *mnode) {
	if n.cut || n.slow || s.view[n.name].status != vAlive {
		return // HandleLease: only the leader's live members renew
	}
	s.leases[n.name] = s.now
	n.leaseUntil = s.now + modelLease
	if t := s.newest(); t != nil {
		n.leaseVer = t.Version
		s.granted[n.id] = max(s.granted[n.id], t.Version)
	}
}

// ---- The network ----

// breakConn fails every outstanding request of c: its sender gets errors.
func (s *msim) breakConn(c *mconn) {
	if c.dead {
		c.reqs = nil
		return
	}
	c.dead = true
	var errs []mmsg
	for _, m := range append(c.reps, c.reqs...) {
		m.err = true
		errs = append(errs, m)
	}
	c.reps, c.reqs = errs, nil
}

func (s *msim) deliverable(c *mconn) bool { return len(c.reqs) > 0 && c.to.up && !c.to.cut }
func (s *msim) answerable(c *mconn) bool  { return len(c.reps) > 0 && c.from.up }

func (s *msim) deliver(c *mconn) {
	m := c.reqs[0]
	c.reqs = c.reqs[1:]
	r := s.receive(c.to, m)
	kind := "record"
	if m.snap {
		kind = "snapshot"
	}
	s.logf("conn %d: %s p%d e%d lsn %d from %s at %s: err=%v", c.seq, kind, m.p, m.epoch, m.lsn, c.from.id, c.to.id, r.err)
	if !c.dead {
		c.reps = append(c.reps, r)
	}
}

func (s *msim) answer(c *mconn) {
	m := c.reps[0]
	c.reps = c.reps[1:]
	if m.snap {
		s.filled(c.from, c, m)
	} else {
		s.onAck(c.from, c, m)
	}
}

func (s *msim) gcConns() {
	s.conns = slices.DeleteFunc(s.conns, func(c *mconn) bool {
		return c.dead && !s.deliverable(c) && !s.answerable(c)
	})
}
