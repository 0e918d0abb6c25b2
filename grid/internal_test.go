package grid

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// Unit tests of the partition's pure parts: snapshot install, promotion
// guard, dedup bounds, snapshot chunk sizes, subscriptions.

func filled(t *testing.T, n int) *partition {
	t.Helper()
	p := newPartition(0, time.Second)
	for i := range n {
		p.applyRecord(&wire.Record{LSN: uint64(i + 1), Muts: []wire.Mutation{{Kind: wire.MutSet, Map: "m", Key: fmt.Sprint(i), Value: []byte("v")}}}, 1)
	}
	p.complete, p.syncedEpoch, p.epoch = true, 1, 1
	return p
}

// Defect 2: the first chunk of a snapshot wiped an in-sync replica's
// complete copy, and a transfer cut short left a partial copy that could be
// promoted. Now the incoming copy is built aside and swapped in whole.
func TestSnapshotCutShortKeepsCompleteCopy(t *testing.T) {
	p := filled(t, 1000)
	p.epoch = 2
	first := wire.SnapshotChunk{Epoch: 2, LSN: 50, First: true, Entries: []wire.SnapEntry{{Map: "m", Key: "x", Value: []byte("partial"), Version: 1}}}
	if _, err := p.receiveChunk(nil, &first); err != nil {
		t.Fatal(err)
	}
	if e := p.get("m", "999", 1); e == nil || p.lsn != 1000 || !p.complete {
		t.Fatalf("first chunk replaced the complete copy: lsn %d, complete %v", p.lsn, p.complete)
	}
	if p.get("m", "x", 1) != nil {
		t.Fatal("partial snapshot data visible before the last chunk")
	}
	// The sender died; this replica is promoted: it serves its complete copy.
	n := &Node{log: slog.New(slog.DiscardHandler)}
	if !n.becomePrimary(p, wire.Part{Epoch: 3}) {
		t.Fatal("a complete replica refused primacy")
	}
	if entries, _ := p.digest(); entries != 1000 {
		t.Fatalf("promoted replica holds %d entries, want 1000", entries)
	}
	// A complete transfer replaces the data at once.
	q := filled(t, 10)
	q.epoch = 2
	for i, ch := range []wire.SnapshotChunk{
		{Epoch: 2, LSN: 7, First: true, Entries: []wire.SnapEntry{{Map: "m", Key: "a", Value: []byte("1"), Version: 3}}},
		{Epoch: 2, LSN: 7, Last: true, Entries: []wire.SnapEntry{{Map: "m", Key: "b", Value: []byte("2"), Version: 7}}},
	} {
		lsn, err := q.receiveChunk(nil, &ch)
		if err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		if ch.Last && lsn != 7 {
			t.Fatalf("ack of last chunk %d", lsn)
		}
	}
	if entries, _ := q.digest(); entries != 2 || q.lsn != 7 || q.syncedEpoch != 2 {
		t.Fatalf("after a whole snapshot: %d entries, lsn %d, synced %d", entries, q.lsn, q.syncedEpoch)
	}
	// A chunk without its first chunk is a gap, never applied.
	if _, err := q.receiveChunk(nil, &wire.SnapshotChunk{Epoch: 2, LSN: 9, Last: true}); err == nil {
		t.Fatal("a chunk without its first chunk was accepted")
	}
}

// A replica without a complete copy never takes primacy of a partition
// the authority did not start empty.
func TestIncompleteReplicaRefusesPrimacy(t *testing.T) {
	n := &Node{log: slog.New(slog.DiscardHandler)}
	p := newPartition(0, time.Second)
	if n.becomePrimary(p, wire.Part{Epoch: 2}) {
		t.Fatal("an empty, never-filled replica took primacy")
	}
	if p.role == rolePrimary {
		t.Fatal("role primary after refusal")
	}
	if !n.becomePrimary(p, wire.Part{Epoch: 2, Fresh: true}) {
		t.Fatal("a Fresh partition was refused")
	}
}

// rec is a record of client's seq written at lsn, each record a second
// after the previous one (so that sessions age past sessionRetryWindow).
func rec(client, seq, low, lsn uint64, value []byte) *wire.Record {
	return &wire.Record{LSN: lsn, Time: int64(lsn) * int64(time.Second), Session: wire.Session{Client: client, Seq: seq, Low: low}, Result: wire.MapResponse{Done: true, Value: value}}
}

// Defect 7a: dedup sessions grew without bound (Low=0 kept every result,
// fresh client ids added sessions, results kept returned values).
func TestSessionsAreBounded(t *testing.T) {
	p := newPartition(0, time.Second)
	lsn := uint64(0)
	// One client that never raises low.
	for seq := uint64(1); seq <= 10000; seq++ {
		lsn++
		p.applyRecord(rec(7, seq, 0, lsn, nil), 1)
	}
	s := p.sessions[7]
	if len(s.results) > maxSessionResults {
		t.Fatalf("%d results kept for one session", len(s.results))
	}
	// A retry of a forgotten result is refused, never applied again.
	if r, err := p.seen(wire.Session{Client: 7, Seq: 1}); err == nil || r != nil {
		t.Fatalf("retry of a forgotten seq: %v, %v", r, err)
	}
	if r, err := p.seen(wire.Session{Client: 7, Seq: 10000}); err != nil || r == nil {
		t.Fatalf("latest result not remembered: %v, %v", r, err)
	}
	// Large returned values.
	for seq := uint64(1); seq <= 100; seq++ {
		lsn++
		p.applyRecord(rec(8, seq, 0, lsn, make([]byte, 64<<10)), 1)
	}
	if p.sessions[8].bytes > maxSessionBytes+64<<10 {
		t.Fatalf("session keeps %d value bytes", p.sessions[8].bytes)
	}
	// Fresh client ids.
	for c := uint64(100); c < 100+5000; c++ {
		lsn++
		p.applyRecord(rec(c, 1, 0, lsn, make([]byte, 1<<10)), 1)
	}
	if len(p.sessions) > maxSessions || p.sessBytes > maxSessionsBytes+1<<10 || p.sessResults > maxSessionsResults+maxSessionResults {
		t.Fatalf("partition keeps %d sessions, %d bytes, %d results", len(p.sessions), p.sessBytes, p.sessResults)
	}
	if p.sessions[100+4999] == nil {
		t.Fatal("the newest session was evicted")
	}
	// Eviction is the same on a replica applying the same records.
	q := newPartition(0, time.Second)
	lsn = 0
	for seq := uint64(1); seq <= 10000; seq++ {
		lsn++
		q.applyRecord(rec(7, seq, 0, lsn, nil), 2)
	}
	for seq := uint64(1); seq <= 100; seq++ {
		lsn++
		q.applyRecord(rec(8, seq, 0, lsn, make([]byte, 64<<10)), 2)
	}
	for c := uint64(100); c < 100+5000; c++ {
		lsn++
		q.applyRecord(rec(c, 1, 0, lsn, make([]byte, 1<<10)), 2)
	}
	if len(q.sessions) != len(p.sessions) || q.sessBytes != p.sessBytes || q.sessResults != p.sessResults {
		t.Fatalf("replicas diverge: %d/%d sessions", len(q.sessions), len(p.sessions))
	}
	for c, s := range p.sessions {
		if qs := q.sessions[c]; qs == nil || qs.low != s.low || len(qs.results) != len(s.results) {
			t.Fatalf("session %d differs between replicas", c)
		}
	}
}

// Defect 4 (snapshots): chunks were cut by a rough count and sessions went
// whole into the last chunk: a snapshot of large values or results could
// exceed the frame limit. Every chunk now encodes within snapshotChunkBytes
// plus one entry.
func TestSnapshotChunksBoundedByEncodedSize(t *testing.T) {
	p := newPartition(0, time.Second)
	lsn := uint64(0)
	for i := range 200 {
		lsn++
		p.applyRecord(&wire.Record{LSN: lsn, Muts: []wire.Mutation{{Kind: wire.MutSet, Map: "m", Key: fmt.Sprint(i), Value: make([]byte, 20<<10)}}}, 1)
	}
	for seq := uint64(1); seq <= 100; seq++ {
		lsn++
		p.applyRecord(rec(1, seq, 0, lsn, make([]byte, 2<<10)), 1)
	}
	for c := uint64(2); c < 900; c++ {
		lsn++
		p.applyRecord(rec(c, 1, 0, lsn, make([]byte, 1<<10)), 1)
	}
	chunks := p.snapshot("n0", snapshotChunkBytes)
	if len(chunks) < 3 {
		t.Fatalf("%d chunks", len(chunks))
	}
	entries, results := 0, 0
	for i := range chunks {
		b, err := msgpack.Marshal(&chunks[i])
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > snapshotChunkBytes+64<<10 {
			t.Fatalf("chunk %d encodes to %d bytes", i, len(b))
		}
		entries += len(chunks[i].Entries)
		for _, s := range chunks[i].Sessions {
			results += len(s.Results)
		}
	}
	if entries != 200 || results != p.sessResults {
		t.Fatalf("snapshot carries %d entries, %d results; want 200, %d", entries, results, p.sessResults)
	}
	// And it installs to the same state.
	q := newPartition(0, time.Second)
	for i := range chunks {
		if _, err := q.receiveChunk(nil, &chunks[i]); err != nil {
			t.Fatal(err)
		}
	}
	if q.sessResults != p.sessResults || q.sessBytes != p.sessBytes || len(q.sessions) != len(p.sessions) {
		t.Fatalf("installed sessions differ: %d/%d results", q.sessResults, p.sessResults)
	}
}

func pipeConn(t *testing.T) *transport.Conn {
	a, b := net.Pipe()
	t.Cleanup(func() { _ = b.Close() })
	return transport.NewConn(a, nil, wire.DefaultMaxFrame, nil)
}

func bareNode() *Node {
	return &Node{log: slog.New(slog.DiscardHandler), done: make(chan struct{})}
}

// Defects 7c and 8: one watcher per connection whatever the number of
// maps, a cap on maps per connection, and a subscriber count that matches
// the subscriptions after connections race with subscribes.
func TestSubscriptionsBoundedAndCounted(t *testing.T) {
	n := bareNode()
	c := pipeConn(t)
	for i := range maxSubscribedMaps {
		if err := n.subscribe(c, fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.subscribe(c, "one-more"); err == nil || !errorsIs(err, api.ErrBusy) {
		t.Fatalf("subscription past the cap: %v", err)
	}
	var conns []*transport.Conn
	var wg sync.WaitGroup
	for range 64 {
		cc := pipeConn(t)
		conns = append(conns, cc)
		wg.Add(2)
		go func() { defer wg.Done(); _ = n.subscribe(cc, "hot") }()
		go func() { defer wg.Done(); _ = cc.Close() }()
	}
	wg.Wait()
	_ = c.Close()
	close(n.done)
	n.wg.Wait() // every watcher exits: their connections closed
	if got := n.subCount.Load(); got != 0 {
		t.Fatalf("subscriber count %d after every connection closed", got)
	}
	n.subs.mu.Lock()
	defer n.subs.mu.Unlock()
	if n.subs.count != 0 || len(n.subs.byConn) != 0 || len(n.subs.byMap) != 0 {
		t.Fatalf("subscriptions left: %d, %d conns, %d maps", n.subs.count, len(n.subs.byConn), len(n.subs.byMap))
	}
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }

// Issue 15 item 8: every SCAN page hashed and sorted the whole partition
// under its lock. With the scan index a page costs O(log n + page): its
// allocations no longer grow with the partition.
func TestScanPageCostIndependentOfPartitionSize(t *testing.T) {
	p := newPartition(0, time.Second)
	const n = 100_000
	for i := range n {
		p.applyMut(&wire.Mutation{Kind: wire.MutSet, Map: "m", Key: fmt.Sprint("key-", i), Value: []byte("v")}, uint64(i+1))
	}
	req := &wire.ScanRequest{Map: "m", Hashed: true, KeysOnly: true}
	_ = p.scanHashed("m", req, 10, 1) // builds the index
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const pages = 200
	for range pages {
		resp := p.scanHashed("m", req, 10, 1)
		req.From = resp.Next
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / pages; per > 8<<10 {
		t.Fatalf("a 10-key page of a %d-key partition allocates %d bytes", n, per)
	}
}

// The index-backed scan visits every key present for the whole scan exactly
// once, while keys are added and deleted between pages.
func TestScanIndexSeesEveryStableKey(t *testing.T) {
	p := newPartition(0, time.Second)
	lsn := uint64(0)
	set := func(k string) {
		lsn++
		p.applyMut(&wire.Mutation{Kind: wire.MutSet, Map: "m", Key: k, Value: []byte("v")}, lsn)
	}
	del := func(k string) {
		lsn++
		p.applyMut(&wire.Mutation{Kind: wire.MutDelete, Map: "m", Key: k}, lsn)
	}
	for i := range 5000 {
		set(fmt.Sprint("stable-", i))
		set(fmt.Sprint("churn-", i))
	}
	seen := map[string]int{}
	req := &wire.ScanRequest{Map: "m", Hashed: true, KeysOnly: true}
	for page := 0; ; page++ {
		resp := p.scanHashed("m", req, 7, 1)
		for _, k := range resp.Keys {
			seen[k]++
		}
		if !resp.More {
			break
		}
		req.From = resp.Next
		del(fmt.Sprint("churn-", page))
		set(fmt.Sprint("new-", page))
	}
	for i := range 5000 {
		if k := fmt.Sprint("stable-", i); seen[k] != 1 {
			t.Fatalf("%s seen %d times", k, seen[k])
		}
	}
	for k, c := range seen {
		if c != 1 {
			t.Fatalf("%s seen %d times", k, c)
		}
	}
}

// BenchmarkScanPage: one 10-key page of a hash-order scan of a partition
// holding 100k keys of one map (the index is built before timing).
func BenchmarkScanPage(b *testing.B) {
	p := newPartition(0, time.Second)
	for i := range 100_000 {
		p.applyMut(&wire.Mutation{Kind: wire.MutSet, Map: "m", Key: fmt.Sprint("key-", i), Value: []byte("v")}, uint64(i+1))
	}
	req := &wire.ScanRequest{Map: "m", Hashed: true, KeysOnly: true}
	_ = p.scanHashed("m", req, 10, 1)
	b.ReportAllocs()
	for b.Loop() {
		resp := p.scanHashed("m", req, 10, 1)
		req.From = resp.Next
	}
}

// A call stuck at a dead primary is retried after the same client's other
// calls went on at the new one: its result (or its absence) must still be
// known, hundreds of results later (gridchaos compute found 128 too few:
// an unapplied call was refused as already acknowledged).
func TestSessionWindowOutlastsAStalledCall(t *testing.T) {
	p := newPartition(0, time.Second)
	p.applyRecord(rec(7, 1, 1, 1, nil), 1)
	lsn := uint64(1)
	// seq 2 is the stalled call: never applied here. Low stays at 1 (the
	// client still waits for seq 1's answer too).
	for seq := uint64(3); seq <= 600; seq++ {
		lsn++
		p.applyRecord(rec(7, seq, 1, lsn, nil), 1)
	}
	if r, err := p.seen(wire.Session{Client: 7, Seq: 1}); err != nil || r == nil {
		t.Fatalf("seq 1's result was forgotten: %v, %v", r, err)
	}
	if r, err := p.seen(wire.Session{Client: 7, Seq: 2}); err != nil || r != nil {
		t.Fatalf("the stalled, unapplied seq 2 is not new: %v, %v", r, err)
	}
}

// Past the partition's result bound the largest session forgets its
// oldest results (its retries are refused, never applied twice) rather
// than a session being dropped whole (its retries would apply again).
func TestResultBoundTrimsTheLargestSession(t *testing.T) {
	p := newPartition(0, time.Second)
	lsn := uint64(0)
	for c := uint64(1); c <= 20; c++ {
		for seq := uint64(1); seq <= maxSessionResults; seq++ {
			lsn++
			p.applyRecord(rec(c, seq, 1, lsn, nil), 1)
		}
	}
	if len(p.sessions) != 20 {
		t.Fatalf("%d sessions left of 20: one was dropped whole", len(p.sessions))
	}
	if p.sessResults > maxSessionsResults {
		t.Fatalf("%d results kept, bound %d", p.sessResults, maxSessionsResults)
	}
	total := 0
	for c, s := range p.sessions {
		total += len(s.results)
		if _, err := p.seen(wire.Session{Client: c, Seq: 1}); len(s.results) < maxSessionResults && !errors.Is(err, api.ErrStaleSequence) {
			t.Fatalf("client %d forgot seq 1 but a retry of it is not refused: %v", c, err)
		}
	}
	if total != p.sessResults {
		t.Fatalf("sessResults %d, counted %d", p.sessResults, total)
	}
}

// Past maxSessions a session is dropped whole only once it has been unused
// for sessionRetryWindow: before that the primary refuses new clients
// (ErrBusy), since a dropped session's retry would apply a second time.
func TestRecentSessionsAreNotEvicted(t *testing.T) {
	p := newPartition(0, time.Second)
	now := nowNano()
	for c := uint64(1); c <= maxSessions; c++ {
		p.applyRecord(&wire.Record{LSN: c, Time: now, Session: wire.Session{Client: c, Seq: 1, Low: 1}, Result: wire.MapResponse{Done: true}}, now)
	}
	if _, err := p.seen(wire.Session{Client: 5000, Seq: 1, Low: 1}); !errors.Is(err, api.ErrBusy) {
		t.Fatalf("a new client when every session is recent: %v", err)
	}
	if r, err := p.seen(wire.Session{Client: 1, Seq: 1, Low: 1}); err != nil || r == nil {
		t.Fatalf("a known client's retry: %v, %v", r, err)
	}
	// A replica applying a record of a new client anyway keeps every
	// recent session.
	p.applyRecord(&wire.Record{LSN: maxSessions + 1, Time: now, Session: wire.Session{Client: 5000, Seq: 1, Low: 1}}, now)
	if p.sessions[1] == nil {
		t.Fatal("a recent session was evicted")
	}
	// Once the oldest is past the window, it makes room.
	later := now + sessionRetryWindow + int64(time.Second)
	p.applyRecord(&wire.Record{LSN: maxSessions + 2, Time: later, Session: wire.Session{Client: 5001, Seq: 1, Low: 1}}, later)
	if len(p.sessions) > maxSessions {
		t.Fatalf("%d sessions: the aged ones were kept", len(p.sessions))
	}
}
