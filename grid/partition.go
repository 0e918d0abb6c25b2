package grid

import (
	"context"
	"fmt"
	"time"

	"sync"

	"github.com/cespare/xxhash/v2"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
	"github.com/google/btree"
)

type role uint8

const (
	roleNone role = iota
	rolePrimary
	roleBackup
)

func (r role) String() string {
	switch r {
	case rolePrimary:
		return "primary"
	case roleBackup:
		return "backup"
	}
	return "none"
}

// entry is a stored value. Values are never modified in place, so an entry's
// value may be shared with snapshots and replies.
type entry struct {
	value    []byte
	version  uint64
	expireAt int64 // unix nanoseconds; 0: none
}

func (e *entry) live(now int64) bool { return e.expireAt == 0 || now < e.expireAt }

type mapKey struct{ m, k string }

type mapStat struct{ entries, bytes int64 }

func (p *partition) account(m string, entries, bytes int64) {
	st := p.stats[m]
	if st == nil {
		st = &mapStat{}
		p.stats[m] = st
	}
	st.entries += entries
	st.bytes += bytes
	if st.entries == 0 {
		delete(p.stats, m)
	}
}

type sessResult struct {
	resp wire.MapResponse
	lsn  uint64
	// noValue: the returned value (GETDEL, SET GET) was not kept (too
	// large, or over the byte bounds): a retry learns the request was
	// applied, not its answer.
	noValue bool
}

// session is one client's remembered mutation results in a partition.
type session struct {
	low     uint64
	results map[uint64]sessResult
	seen    int64  // wall clock of the last use (idle expiry; local)
	last    uint64 // LSN of the last result (eviction order; same on every replica)
	// lastTime is the writing primary's time of the last result: a
	// session used within sessionRetryWindow is never evicted for room.
	lastTime int64
	bytes    int // remembered value bytes
}

// Dedup state bounds. They are applied inside applyRecord, on the primary
// and on every backup alike, so replicas keep and evict the same results.
const (
	// maxSessionResults bounds one client's remembered results in a
	// partition. Past it the oldest are forgotten and the session's low
	// rises above them: their retries get ErrStaleSequence (outcome
	// unknown), never a second application. The window must outlast a
	// failover: a call stuck at a dead primary for 1-2 s is retried after
	// the client's other calls to the partition went on at the new one
	// (with 128, 8 callers sharing a client overran it within 1.3 s:
	// gridchaos compute, seed 3).
	maxSessionResults = 1024
	// maxKeptValue: a returned value larger than this is not kept with
	// its result (the result is; a retry gets ErrStaleSequence).
	maxKeptValue = 64 << 10
	// maxSessionBytes and maxSessionsBytes bound the returned values kept
	// per session and per partition; past them the oldest values (of the
	// session, then of the least recently used sessions) are dropped, the
	// results themselves stay: a retry is never applied twice.
	maxSessionBytes  = 256 << 10
	maxSessionsBytes = 1 << 20
	// maxSessions and maxSessionsResults bound a partition's sessions.
	// Past maxSessions the least recently used session is dropped whole
	// (a retry of its requests would apply again, as after SessionIdle),
	// but only once it has been unused for sessionRetryWindow: until
	// then the primary refuses new clients with ErrBusy (sessionRoom);
	// past maxSessionsResults the largest session forgets its oldest
	// results (their retries get ErrStaleSequence, never a second
	// application). Worst case per node: partitions x (1 MiB of values +
	// 16384 results).
	maxSessions        = 1024
	maxSessionsResults = 16384
	// sessionRetryWindow is how long a client may retry a mutation and
	// still be answered from its session when the partition is full of
	// clients.
	sessionRetryWindow = int64(time.Minute)
)

func resultBytes(r *wire.MapResponse) int { return len(r.Value) }

// stream is the primary's replication link to one replica of a partition.
type stream struct {
	node   string
	id     string // the replica's incarnation: a new one needs a new stream
	addr   string
	inSync bool            // counted for acknowledgement (a backup, not pending)
	conn   *transport.Conn // nil or dead: the stream needs a snapshot
	broken bool            // records are not being sent: a snapshot must come first
	// syncing: a snapshot goroutine owns this stream's resync.
	syncing bool
	// noTail: the last fill by tail failed; the next one is a snapshot.
	noTail bool
	// acked is the highest LSN the replica acknowledged (records or snapshot).
	acked uint64
	// filled: the replica acknowledged a complete snapshot at the current epoch.
	filled bool
	// counted: a snapshot was queued to this replica, so every later write
	// waits for its ack even while the table still lists it as pending. The
	// authority may make a reported replica a backup, and then the primary,
	// before this node installs that table: a write acknowledged without it
	// in between would be lost.
	counted bool
}

// partition is one partition's replica on this node. All fields are guarded
// by mu, which is never held across network I/O (frames are only queued).
type partition struct {
	id int
	// maxWait bounds commit waits of callers whose ctx has no deadline.
	maxWait time.Duration
	mu      sync.Mutex

	maps     map[string]map[string]*entry
	stats    map[string]*mapStat              // per map entry count and bytes, kept on apply
	scanIdx  map[string]*btree.BTreeG[posKey] // see scanindex.go
	ttlKeys  map[mapKey]struct{}
	sessions map[uint64]*session
	// sessBytes and sessResults count the remembered values and results
	// of all sessions.
	sessBytes, sessResults int
	lsn                    uint64
	// mapLSN is the LSN of the last write to each map (steps validate a
	// map they iterated against it, see step.go). Only compared within one
	// primary term.
	mapLSN map[string]uint64
	// stepSem serializes this partition's steps (step.go). Not guarded
	// by mu.
	stepSem chan struct{}
	// journal retains the applied records with their positions (journal.go).
	journal journal
	// jwaiters counts journal reads waiting for this partition's next
	// commit; jwake wakes them (journalread.go).
	jwaiters int
	jwake    *journalWake
	// streamWaits are the streams local reads wait for (streamLog.wake,
	// streamwait.go).
	streamWaits []*streamLog
	// logs are the partition's streams and consumer groups (stream.go),
	// each bounded by streamRecs events and streamBytes bytes.
	logs                    map[string]*streamLog
	streamRecs, streamBytes int

	// From the installed table.
	role    role
	epoch   uint64 // highest primary epoch seen; replication below it is refused
	primary string
	version uint64
	// seat is the table's Part.Seat: as primary, nothing commits here
	// while it is set (cluster/spare.go).
	seat uint64

	// Backup side: the epoch whose primary gave us a complete snapshot; records
	// of any other epoch mean a gap.
	syncedEpoch uint64
	// syncedConn delivered that snapshot; records are accepted only on it.
	syncedConn *transport.Conn
	// complete: this replica holds a complete copy (it installed a whole
	// snapshot, or was primary); a prefix of some primary's history that,
	// while it is in-sync, holds every acknowledged write. Only a complete
	// replica takes primacy, unless the table says the partition is Fresh.
	complete bool
	// incoming is a snapshot being received; it replaces the data only
	// when its last chunk arrived, so a transfer cut short never leaves a
	// partial copy in place of a complete one.
	incoming *incomingSnapshot
	// orphanSince is when the installed table stopped naming this node as a
	// replica (0: it is one). The data is kept for orphanGrace: a primary that
	// has not installed that table yet may still stream to us and report us
	// filled, and a wiped copy must never be reported as complete.
	orphanSince int64

	// Primary side.
	commit   uint64            // every in-sync replica holds all records <= commit
	ready    uint64            // reads wait for commit >= ready (set on promotion)
	pending  map[mapKey]uint64 // keys whose latest write is not yet committed
	pendq    []pendingKey
	commitCh chan struct{} // closed and replaced when commit grows
	streams  map[string]*stream
	// former is the table's unfenced former primary of this partition: the
	// primary reports it once its snapshot at the current epoch is acked.
	former string
}

type pendingKey struct {
	k   mapKey
	lsn uint64
}

func newPartition(id int, maxWait time.Duration) *partition {
	return &partition{
		id:       id,
		maxWait:  maxWait,
		maps:     map[string]map[string]*entry{},
		stats:    map[string]*mapStat{},
		ttlKeys:  map[mapKey]struct{}{},
		sessions: map[uint64]*session{},
		pending:  map[mapKey]uint64{},
		commitCh: make(chan struct{}),
		streams:  map[string]*stream{},
		mapLSN:   map[string]uint64{},
		stepSem:  make(chan struct{}, 1),
		journal:  newJournal(DefaultJournalRecords, DefaultJournalBytes),

		logs:        map[string]*streamLog{},
		streamRecs:  DefaultStreamRecords,
		streamBytes: DefaultStreamBytes,
	}
}

// reset drops all data (the partition moved away for good).
func (p *partition) reset() {
	p.complete = false
	p.incoming = nil
	p.scanIdx = nil
	p.maps = map[string]map[string]*entry{}
	p.stats = map[string]*mapStat{}
	p.mapLSN = map[string]uint64{}
	p.ttlKeys = map[mapKey]struct{}{}
	p.sessions = map[uint64]*session{}
	p.sessBytes, p.sessResults = 0, 0
	p.pending = map[mapKey]uint64{}
	p.pendq = nil
	p.lsn = 0
	p.commit = 0
	p.ready = 0
	p.journal.restart(0)
	p.wakeStreams()
	p.logs = map[string]*streamLog{}
}

func (p *partition) get(m, k string, now int64) *entry {
	e := p.maps[m][k]
	if e == nil || !e.live(now) {
		return nil
	}
	return e
}

// applyMut applies one mutation at version lsn and returns the entry it
// replaced or removed, if any. The caller holds mu.
func (p *partition) applyMut(mu *wire.Mutation, lsn uint64) (replaced *entry) {
	p.mapLSN[mu.Map] = lsn
	switch mu.Kind {
	case wire.MutSet:
		kv := p.maps[mu.Map]
		if kv == nil {
			kv = map[string]*entry{}
			p.maps[mu.Map] = kv
		}
		if old := kv[mu.Key]; old != nil {
			replaced = old
			p.account(mu.Map, -1, -int64(len(mu.Key)+len(old.value)))
		} else {
			p.indexSet(mu.Map, mu.Key)
		}
		kv[mu.Key] = &entry{value: mu.Value, version: lsn, expireAt: mu.ExpireAt}
		p.account(mu.Map, 1, int64(len(mu.Key)+len(mu.Value)))
		mk := mapKey{mu.Map, mu.Key}
		if mu.ExpireAt != 0 {
			p.ttlKeys[mk] = struct{}{}
		} else {
			delete(p.ttlKeys, mk)
		}
	case wire.MutDelete, wire.MutExpire:
		if kv := p.maps[mu.Map]; kv != nil {
			if old := kv[mu.Key]; old != nil {
				replaced = old
				p.account(mu.Map, -1, -int64(len(mu.Key)+len(old.value)))
				p.indexDelete(mu.Map, mu.Key)
			}
			delete(kv, mu.Key)
			if len(kv) == 0 {
				delete(p.maps, mu.Map)
			}
		}
		delete(p.ttlKeys, mapKey{mu.Map, mu.Key})
	case wire.MutClear:
		for k := range p.maps[mu.Map] {
			delete(p.ttlKeys, mapKey{mu.Map, k})
		}
		delete(p.maps, mu.Map)
		delete(p.stats, mu.Map)
		delete(p.scanIdx, mu.Map)
	}
	return replaced
}

// applyRecord applies a whole record: its mutations and its session result.
// The caller holds mu.
func (p *partition) applyRecord(rec *wire.Record, now int64) {
	jr := wire.JournalEntry{Record: *rec, Events: make([]wire.JournalEvent, 0, len(rec.Muts))}
	for i := range rec.Muts {
		mu := &rec.Muts[i]
		if isStreamMut(mu.Kind) {
			p.applyStreamMut(mu, rec.LSN, rec.Time)
			continue
		}
		old := p.applyMut(mu, rec.LSN)
		if mu.Kind == wire.MutSet && old != nil && !old.live(rec.Time) {
			// It had expired (not yet removed): the set adds the key.
			old = nil
		}
		if ev, ok := eventOf(mu, old); ok {
			jr.Events = append(jr.Events, ev)
		}
	}
	if rec.Session.Client != 0 {
		p.remember(rec, now)
	}
	p.lsn = rec.LSN
	p.journal.append(jr)
}

// remember stores a record's result in its client's session, within the
// dedup bounds. Caller holds mu.
func (p *partition) remember(rec *wire.Record, now int64) {
	s := p.session(rec.Session.Client, now)
	p.sessBytes -= s.bytes
	p.sessResults -= len(s.results)
	s.forget(rec.Session.Low)
	if old, ok := s.results[rec.Session.Seq]; ok {
		s.bytes -= resultBytes(&old.resp)
	}
	r := sessResult{resp: rec.Result, lsn: rec.LSN}
	if len(r.resp.Value) > maxKeptValue {
		r.resp.Value, r.noValue = nil, true
	}
	s.results[rec.Session.Seq] = r
	s.bytes += resultBytes(&r.resp)
	s.last = rec.LSN
	s.lastTime = recordTime(rec, now)
	s.trim(rec.Session.Seq)
	p.sessBytes += s.bytes
	p.sessResults += len(s.results)
	p.trimSessions(rec.Session.Client, rec.Session.Seq, s.lastTime)
}

// recordTime is the writing primary's time of rec (now for a record
// without one).
func recordTime(rec *wire.Record, now int64) int64 {
	if rec.Time != 0 {
		return rec.Time
	}
	return now
}

// sessionRoom admits a new client's first mutation: ErrBusy when the
// partition holds maxSessions sessions and none has been unused for
// sessionRetryWindow (dropping one could make its retry apply twice).
// Caller holds mu.
func (p *partition) sessionRoom(now int64) error {
	if len(p.sessions) < maxSessions {
		return nil
	}
	victim, ok := p.lruSession(0, false)
	if !ok || p.sessions[victim].lastTime <= now-sessionRetryWindow {
		return nil
	}
	return fmt.Errorf("%w: partition %d serves %d clients that wrote within %v; a new client must wait", api.ErrBusy, p.id, len(p.sessions), time.Duration(sessionRetryWindow))
}

// trim forgets s's oldest results beyond maxSessionResults, raising low
// above them, and drops the oldest kept values beyond maxSessionBytes.
func (s *session) trim(keep uint64) {
	for len(s.results) > maxSessionResults {
		oldest := s.oldest(keep, false)
		if oldest == keep {
			return
		}
		r := s.results[oldest]
		s.bytes -= resultBytes(&r.resp)
		delete(s.results, oldest)
		if oldest+1 > s.low {
			s.low = oldest + 1
		}
	}
	for s.bytes > maxSessionBytes && s.dropOldestValue() {
	}
}

// oldest returns the smallest seq of s's results (only those still holding
// a value if withValue), or keep if there is none smaller.
func (s *session) oldest(keep uint64, withValue bool) uint64 {
	oldest := keep
	for seq, r := range s.results {
		if seq < oldest && (!withValue || len(r.resp.Value) > 0) {
			oldest = seq
		}
	}
	return oldest
}

// dropOldestValue drops the value of s's oldest result that holds one;
// false if none does.
func (s *session) dropOldestValue() bool {
	seq := s.oldest(^uint64(0), true)
	r, ok := s.results[seq]
	if !ok || len(r.resp.Value) == 0 {
		return false
	}
	s.bytes -= resultBytes(&r.resp)
	r.resp.Value, r.noValue = nil, true
	s.results[seq] = r
	return true
}

func (p *partition) session(client uint64, now int64) *session {
	s := p.sessions[client]
	if s == nil {
		s = &session{results: map[uint64]sessResult{}}
		p.sessions[client] = s
	}
	s.seen = now
	return s
}

// seen looks up a mutation's session: a result if this (client, seq) was
// applied before, ErrStaleSequence if the client already acknowledged it,
// neither if it is new. Caller holds mu.
func (p *partition) seen(sess wire.Session) (*sessResult, error) {
	if sess.Client == 0 {
		return nil, nil
	}
	s := p.sessions[sess.Client]
	if s == nil {
		return nil, p.sessionRoom(nowNano())
	}
	if sess.Seq < s.low {
		return nil, fmt.Errorf("%w: seq %d < %d", api.ErrStaleSequence, sess.Seq, s.low)
	}
	if r, ok := s.results[sess.Seq]; ok {
		if r.noValue {
			return nil, fmt.Errorf("%w: seq %d was applied; its returned value was too large to keep", api.ErrStaleSequence, sess.Seq)
		}
		return &r, nil
	}
	return nil, nil
}

// forget drops results the client no longer waits for.
func (s *session) forget(low uint64) {
	if low <= s.low {
		return
	}
	s.low = low
	for seq, r := range s.results {
		if seq < low {
			s.bytes -= resultBytes(&r.resp)
			delete(s.results, seq)
		}
	}
}

// trimSessions drops the least recently used sessions (by LSN, so every
// replica drops the same ones) beyond the partition's bounds, never keep.
// Caller holds mu.
func (p *partition) trimSessions(keep, keepSeq uint64, now int64) {
	for len(p.sessions) > maxSessions {
		victim, ok := p.lruSession(keep, false)
		if !ok || p.sessions[victim].lastTime > now-sessionRetryWindow {
			break // the primary refused new clients meanwhile (sessionRoom)
		}
		p.dropSession(victim)
	}
	for p.sessResults > maxSessionsResults && p.trimLargestSession(keep, keepSeq) {
	}
	for p.sessBytes > maxSessionsBytes {
		victim, ok := p.lruSession(0, true)
		if !ok {
			return
		}
		s := p.sessions[victim]
		before := s.bytes
		for s.dropOldestValue() && p.sessBytes-(before-s.bytes) > maxSessionsBytes {
		}
		p.sessBytes -= before - s.bytes
	}
}

// trimLargestSession forgets the oldest result of the session holding the
// most (ties: the smaller client id; never client keep's result keepSeq,
// just applied), raising its low; false if there is nothing to forget.
// Caller holds mu.
func (p *partition) trimLargestSession(keep, keepSeq uint64) bool {
	var victim uint64
	var largest *session
	for c, s := range p.sessions {
		if largest == nil || len(s.results) > len(largest.results) || len(s.results) == len(largest.results) && c < victim {
			victim, largest = c, s
		}
	}
	if largest == nil || len(largest.results) == 0 {
		return false
	}
	limit := ^uint64(0)
	if victim == keep {
		limit = keepSeq
	}
	oldest := largest.oldest(limit, false)
	if oldest == limit {
		return false
	}
	r := largest.results[oldest]
	largest.bytes -= resultBytes(&r.resp)
	p.sessBytes -= resultBytes(&r.resp)
	delete(largest.results, oldest)
	p.sessResults--
	if oldest+1 > largest.low {
		largest.low = oldest + 1
	}
	return true
}

// lruSession returns the least recently used session (by LSN, then client
// id) other than keep, only among sessions holding values if withValues.
func (p *partition) lruSession(keep uint64, withValues bool) (uint64, bool) {
	var victim uint64
	var oldest *session
	for c, s := range p.sessions {
		if c == keep || (withValues && s.bytes == 0) {
			continue
		}
		if oldest == nil || s.last < oldest.last || (s.last == oldest.last && c < victim) {
			victim, oldest = c, s
		}
	}
	return victim, oldest != nil
}

// dropSession forgets a client's session. Caller holds mu.
func (p *partition) dropSession(client uint64) {
	if s := p.sessions[client]; s != nil {
		p.sessBytes -= s.bytes
		p.sessResults -= len(s.results)
		delete(p.sessions, client)
	}
}

// markPending records an uncommitted write of keys at lsn. Caller holds mu.
func (p *partition) markPending(rec *wire.Record) {
	for i := range rec.Muts {
		mu := &rec.Muts[i]
		if mu.Kind == wire.MutClear {
			// A clear is pending for every key of the map: readers wait on
			// the partition's whole log instead (see readFloor).
			k := mapKey{mu.Map, ""}
			p.pending[k] = rec.LSN
			p.pendq = append(p.pendq, pendingKey{k, rec.LSN})
			continue
		}
		k := mapKey{mu.Map, mu.Key}
		p.pending[k] = rec.LSN
		p.pendq = append(p.pendq, pendingKey{k, rec.LSN})
	}
}

// readFloor is the commit a read of (m, k) must wait for so it never sees a
// value that is not on every in-sync backup. Caller holds mu.
func (p *partition) readFloor(m, k string) uint64 {
	floor := p.ready
	if l, ok := p.pending[mapKey{m, k}]; ok && l > floor {
		floor = l
	}
	if l, ok := p.pending[mapKey{m, ""}]; ok && l > floor {
		floor = l
	}
	return floor
}

// setCommit raises the commit point and wakes its waiters. Caller holds mu.
func (p *partition) setCommit(c uint64) {
	if c <= p.commit {
		return
	}
	p.commit = c
	i := 0
	for ; i < len(p.pendq) && p.pendq[i].lsn <= c; i++ {
		pk := p.pendq[i]
		if p.pending[pk.k] == pk.lsn {
			delete(p.pending, pk.k)
		}
	}
	p.pendq = p.pendq[i:]
	close(p.commitCh)
	p.commitCh = make(chan struct{})
	p.wakeStreamsUpTo(c)
	if p.jwaiters > 0 && p.jwake != nil {
		p.jwake.wake()
	}
}

// recomputeCommit derives the commit point from the in-sync streams' acks.
// Caller holds mu.
func (p *partition) recomputeCommit() {
	if p.role != rolePrimary || !p.seated() {
		return
	}
	c := p.lsn
	for _, s := range p.streams {
		if (s.inSync || s.counted) && s.acked < c {
			c = s.acked
		}
	}
	p.setCommit(c)
}

// seated: the authority confirmed that this primary may commit without
// the partition's spare (cluster/spare.go): the table clears Seat once this
// node renewed its lease bound to it. Caller holds mu.
func (p *partition) seated() bool { return p.seat == 0 }

// waitCommit waits until commit >= lsn while this node stays primary at epoch.
// A ctx without deadline waits at most maxWait.
func (p *partition) waitCommit(ctx context.Context, lsn, epoch uint64) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.maxWait)
		defer cancel()
	}
	for {
		p.mu.Lock()
		if p.role != rolePrimary || p.epoch != epoch {
			owner, v := p.primary, p.version
			p.mu.Unlock()
			return fmt.Errorf("%w: lost primacy of partition %d while waiting for backups (owner %q, table %d)", api.ErrReplication, p.id, owner, v)
		}
		if p.commit >= lsn {
			p.mu.Unlock()
			return nil
		}
		ch := p.commitCh
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%w: partition %d waiting for backups to acknowledge lsn %d: %v", api.ErrReplication, p.id, lsn, ctx.Err())
		}
	}
}

// digest summarises the partition's live entries for convergence checks.
func (p *partition) digest() (entries int, sum uint64) {
	for m, kv := range p.maps {
		for k, e := range kv {
			h := xxhash.New()
			_, _ = h.WriteString(m)
			_, _ = h.Write([]byte{0})
			_, _ = h.WriteString(k)
			_, _ = h.Write([]byte{0})
			_, _ = h.Write(e.value)
			sum ^= h.Sum64() ^ e.version*0x9e3779b97f4a7c15
			entries++
		}
	}
	return entries, sum
}

func nowNano() int64 { return time.Now().UnixNano() }
