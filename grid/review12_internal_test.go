package grid

import (
	"fmt"
	"reflect"
	"runtime"
	"testing"
	"time"

	"github.com/collocate/grid/internal/wire"
)

// A replica filled by a snapshot cut after an entry's TTL passed (but
// before the primary's expiry sweep removed it) must journal the same
// event as its primary when the sweep's MutExpire arrives: promoted, it
// would otherwise answer that position without the expired event, a
// silent loss for every listener reading it there.
func TestSnapshotReplicaJournalsTheSameExpiry(t *testing.T) {
	p := newPartition(0, time.Second)
	p.epoch = 1
	p.applyRecord(&wire.Record{LSN: 1, Epoch: 1, Time: 10, Muts: []wire.Mutation{{Kind: wire.MutSet, Map: "m", Key: "k", Value: []byte("v"), ExpireAt: 100}}}, 10)
	chunks := p.snapshot("a", snapshotChunkBytes) // the TTL (100) has passed, the sweep not run yet
	q := newPartition(0, time.Second)
	for i := range chunks {
		if _, err := q.receiveChunk(nil, &chunks[i]); err != nil {
			t.Fatal(err)
		}
	}
	exp := &wire.Record{LSN: 2, Epoch: 1, Time: 210, Muts: []wire.Mutation{{Kind: wire.MutExpire, Map: "m", Key: "k"}}}
	p.applyRecord(exp, 210)
	q.applyRecord(exp, 210)
	pe, qe := p.journal.retained(), q.journal.retained()
	if !reflect.DeepEqual(pe[len(pe)-1].Events, qe[len(qe)-1].Events) {
		t.Fatalf("position 2: primary journals %+v, the snapshot-filled replica %+v", pe[len(pe)-1].Events, qe[len(qe)-1].Events)
	}
	if pd, qd := fmtDigest(p), fmtDigest(q); pd != qd {
		t.Fatalf("digests differ after the expiry: %v vs %v", pd, qd)
	}
}

func fmtDigest(p *partition) [2]uint64 {
	n, s := p.digest()
	return [2]uint64{uint64(n), s}
}

// The journal's byte bound holds for what it really keeps alive: records
// of many small mutations, as a backup decodes them, retained within
// JournalBytes cost at most a little more than JournalBytes of heap
// (entrySize must over-estimate, as its comment says).
func TestJournalBytesBoundHoldsOnTheHeap(t *testing.T) {
	const maxBytes = 4 << 20
	build := func() *journal {
		j := newJournal(1<<20, maxBytes)
		lsn := uint64(0)
		for range 400 {
			lsn++
			rec := wire.Record{LSN: lsn, Epoch: 1, Time: 1}
			for i := range 100 {
				rec.Muts = append(rec.Muts, wire.Mutation{Kind: wire.MutSet, Map: "m", Key: fmt.Sprintf("k%05d", i), Value: []byte("12345678")})
			}
			b, err := wire.Marshal(&rec)
			if err != nil {
				t.Fatal(err)
			}
			var dec wire.Record
			if err := wire.Unmarshal(b, &dec); err != nil {
				t.Fatal(err)
			}
			jr := wire.JournalEntry{Record: dec, Events: make([]wire.JournalEvent, 0, len(dec.Muts))} // as applyRecord
			for i := range dec.Muts {
				mu := &dec.Muts[i]
				jr.Events = append(jr.Events, wire.JournalEvent{Kind: wire.EventAdded, Map: mu.Map, Key: mu.Key, Value: mu.Value})
			}
			j.append(jr)
		}
		return &j
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	j := build()
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d records retained, %d bytes counted, %d bytes of heap", j.len(), j.bytes, heap)
	if j.bytes > maxBytes {
		t.Fatalf("counted %d bytes, over the bound %d", j.bytes, maxBytes)
	}
	if heap > maxBytes*5/4 {
		t.Fatalf("a journal bounded at %d bytes keeps %d bytes of heap alive (%d counted)", maxBytes, heap, j.bytes)
	}
	runtime.KeepAlive(j)
}

// A position from a history the partition lost (every copy died, the
// authority restarted it empty: Fresh) must be told as a gap, never read
// as a position of the new history. While the new history is shorter the
// read says so ("restarted empty?"); once it has grown past the position,
// the read silently answers the new history from there: the listener
// misses the new records before it and never hears that the old ones
// after its position were lost.
//
// DEFECT (issue 12 review, not fixed): positions are bare LSNs, and a
// Fresh partition restarts its LSNs at 1. A fix needs a position that
// names its history: e.g. the reader sends the epoch of the record before
// its position (raft's prevLogTerm) and the primary answers the gap when
// its record there differs, or a Fresh partition starts its LSNs above
// any position of the history it replaces.
func TestPositionFromALostHistoryIsAGap(t *testing.T) {
	t.Skip("DEFECT: a position from before a Fresh restart reads the new history silently once it is longer; see the comment")
	p := newPartition(0, time.Second)
	p.role, p.epoch = rolePrimary, 1
	for i := range 100 {
		p.applyRecord(&wire.Record{LSN: uint64(i + 1), Epoch: 1, Time: 1, Muts: []wire.Mutation{{Kind: wire.MutSet, Map: "m", Key: "k", Value: []byte(fmt.Sprint("old", i))}}}, 1)
	}
	p.commit = 100
	listenerAt := uint64(61) // it heard the old history up to 60

	// Every copy is lost; the authority restarts the partition empty at a
	// new epoch, and the new history grows past the listener's position.
	p.reset()
	p.role, p.epoch = rolePrimary, 5
	for i := range 120 {
		p.applyRecord(&wire.Record{LSN: uint64(i + 1), Epoch: 5, Time: 2, Muts: []wire.Mutation{{Kind: wire.MutSet, Map: "m", Key: "k", Value: []byte(fmt.Sprint("new", i))}}}, 2)
	}
	p.commit = 120
	budget := 1 << 20
	var out wire.JournalPart
	err := p.readJournal(listenerAt, "", 100, &budget, &out)
	if err == nil {
		t.Fatalf("a position of the lost history answered %d records of the new one (first %q) without a gap", len(out.Records), out.Records[0].Events[0].Value)
	}
}
