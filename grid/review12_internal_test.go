package grid

import (
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"testing"
	"time"

	"github.com/collocate/grid/internal/api"
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

// A partition restarted empty (Fresh: every copy lost) begins a new history
// whose positions start above every earlier one: a listener holding a
// position of the lost history is told the gap, never read on in the new
// history from there (found by review: positions restarted at 1, and once
// the new history passed the listener's position it silently missed the
// new history's first records).
func TestPositionFromALostHistoryIsAGap(t *testing.T) {
	p := newPartition(0, time.Second)
	n := bareNode()
	n.parts = []*partition{p}
	promote := func(epoch uint64) {
		p.reset()
		if !n.becomePrimary(p, wire.Part{Primary: "me", Epoch: epoch, Fresh: true}) {
			t.Fatal("a Fresh partition refused primacy")
		}
	}
	write := func(epoch uint64, count int, prefix string) {
		for i := range count {
			p.applyRecord(&wire.Record{LSN: p.lsn + 1, Epoch: epoch, Time: 1, Muts: []wire.Mutation{{Kind: wire.MutSet, Map: "m", Key: "k", Value: []byte(fmt.Sprint(prefix, i))}}}, 1)
		}
		p.commit = p.lsn
	}
	promote(1)
	write(1, 100, "old")
	listenerAt := p.lsn - 39 // it heard the old history up to 60 records in

	// Every copy is lost; the authority restarts the partition empty at a
	// new epoch, and the new history grows past the listener's position
	// count.
	promote(5)
	write(5, 120, "new")
	budget := 1 << 20
	var out wire.JournalPart
	err := p.readJournal(listenerAt, "", 100, &budget, &out)
	if !errors.Is(err, api.ErrJournalTrimmed) {
		t.Fatalf("a position of the lost history: %v, %d records", err, len(out.Records))
	}
	if out.Oldest <= listenerAt {
		t.Fatalf("oldest %d not past the lost position %d", out.Oldest, listenerAt)
	}
	// The new history reads from its own start.
	if err := p.readJournal(out.Oldest, "", 200, &budget, &out); err != nil || len(out.Records) != 120 {
		t.Fatalf("the new history: %d records, %v", len(out.Records), err)
	}
}
