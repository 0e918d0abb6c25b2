package grid

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// Unit tests of the partition journal (journal.go, journalread.go).

func setRec(lsn uint64, key, val string) *wire.Record {
	return &wire.Record{LSN: lsn, Epoch: 1, Time: 1, Muts: []wire.Mutation{{Kind: wire.MutSet, Map: "m", Key: key, Value: []byte(val)}}}
}

func TestJournalKeepsItsBounds(t *testing.T) {
	j := newJournal(10, 1<<20)
	for lsn := uint64(1); lsn <= 25; lsn++ {
		j.append(wire.JournalEntry{Record: wire.Record{LSN: lsn}, Events: []wire.JournalEvent{{Kind: wire.EventAdded, Map: "m", Key: "k", Value: []byte("v")}}})
	}
	if j.len() != 10 || j.oldest() != 16 {
		t.Fatalf("len %d oldest %d, want 10 and 16", j.len(), j.oldest())
	}
	if _, ok := j.from(15, 100, 100); ok {
		t.Fatal("a dropped position was answered")
	}
	recs, ok := j.from(16, 20, 100)
	if !ok || len(recs) != 5 || recs[0].Record.LSN != 16 || recs[4].Record.LSN != 20 {
		t.Fatalf("from(16, up to 20): %d records, ok %v", len(recs), ok)
	}
	if recs, ok := j.from(26, 30, 100); !ok || len(recs) != 0 {
		t.Fatalf("from the next position: %d records, ok %v", len(recs), ok)
	}
	if recs, _ := j.from(16, 25, 3); len(recs) != 3 {
		t.Fatalf("max 3: %d records", len(recs))
	}

	// Bytes: a big record pushes older ones out, but the newest stays.
	b := newJournal(100, 1000)
	b.append(wire.JournalEntry{Record: wire.Record{LSN: 1}, Events: []wire.JournalEvent{{Old: make([]byte, 400)}}})
	b.append(wire.JournalEntry{Record: wire.Record{LSN: 2}, Events: []wire.JournalEvent{{Old: make([]byte, 400)}}})
	b.append(wire.JournalEntry{Record: wire.Record{LSN: 3}, Events: []wire.JournalEvent{{Old: make([]byte, 5000)}}})
	if b.len() != 1 || b.oldest() != 3 || b.bytes > 6000 {
		t.Fatalf("len %d oldest %d bytes %d, want only the newest", b.len(), b.oldest(), b.bytes)
	}

	// A gap in positions restarts the journal at the new record.
	b.append(wire.JournalEntry{Record: wire.Record{LSN: 10}})
	if b.len() != 1 || b.oldest() != 10 {
		t.Fatalf("after a gap: len %d oldest %d", b.len(), b.oldest())
	}
}

// Each mutation's event says what it did to the entry, with the old
// value; a delete of a missing key keeps its position with no event.
func TestJournalEventsOfEachKind(t *testing.T) {
	p := newPartition(0, time.Second)
	now := time.Now().UnixNano()
	recs := []*wire.Record{
		{LSN: 1, Time: now, Muts: []wire.Mutation{{Kind: wire.MutSet, Map: "m", Key: "a", Value: []byte("1")}}},
		{LSN: 2, Time: now, Muts: []wire.Mutation{{Kind: wire.MutSet, Map: "m", Key: "a", Value: []byte("2")}}},
		{LSN: 3, Time: now, Muts: []wire.Mutation{{Kind: wire.MutDelete, Map: "m", Key: "a"}}},
		{LSN: 4, Time: now, Muts: []wire.Mutation{{Kind: wire.MutDelete, Map: "m", Key: "missing"}}},
		{LSN: 5, Time: now, Muts: []wire.Mutation{{Kind: wire.MutSet, Map: "m", Key: "t", Value: []byte("x"), ExpireAt: now - 1}}},
		{LSN: 6, Time: now, Muts: []wire.Mutation{{Kind: wire.MutSet, Map: "m", Key: "t", Value: []byte("y"), ExpireAt: now + int64(time.Hour)}}},
		{LSN: 7, Time: now, Muts: []wire.Mutation{{Kind: wire.MutExpire, Map: "m", Key: "t"}}},
		{LSN: 8, Time: now, Muts: []wire.Mutation{{Kind: wire.MutSet, Map: "m", Key: "b", Value: []byte("3")}, {Kind: wire.MutClear, Map: "m"}}},
	}
	for _, r := range recs {
		p.applyRecord(r, now)
	}
	type ev struct {
		lsn      uint64
		kind     uint8
		key      string
		val, old string
	}
	var got []ev
	for _, r := range p.journal.retained() {
		for _, e := range r.Events {
			got = append(got, ev{r.Record.LSN, e.Kind, e.Key, string(e.Value), string(e.Old)})
		}
	}
	want := []ev{
		{1, wire.EventAdded, "a", "1", ""},
		{2, wire.EventUpdated, "a", "2", "1"},
		{3, wire.EventRemoved, "a", "", "2"},
		{5, wire.EventAdded, "t", "x", ""},
		{6, wire.EventAdded, "t", "y", ""}, // over an expired value: added
		{7, wire.EventExpired, "t", "", "y"},
		{8, wire.EventAdded, "b", "3", ""},
		{8, wire.EventCleared, "", "", ""},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("events:\n got %v\nwant %v", got, want)
	}
	if p.journal.len() != 8 {
		t.Fatalf("%d records retained, want 8 (the no-op delete keeps its position)", p.journal.len())
	}
}

// A snapshot carries the journal: the filled replica answers the same
// positions as its primary, even across many small chunks.
func TestSnapshotCarriesTheJournal(t *testing.T) {
	p := newPartition(0, time.Second)
	p.journal = newJournal(50, 1<<20)
	for i := range 120 {
		p.applyRecord(setRec(uint64(i+1), fmt.Sprint(i%30), fmt.Sprint(i)), 1)
	}
	p.epoch = 1
	chunks := p.snapshot("a", 512)
	if len(chunks) < 3 {
		t.Fatalf("%d chunks: the test wants the journal cut across chunks", len(chunks))
	}
	q := newPartition(0, time.Second)
	q.journal = newJournal(50, 1<<20)
	for i := range chunks {
		if _, err := q.receiveChunk(nil, &chunks[i]); err != nil {
			t.Fatal(err)
		}
	}
	if !reflect.DeepEqual(q.journal.retained(), p.journal.retained()) || q.journal.oldest() != p.journal.oldest() {
		t.Fatalf("installed journal: %d records from %d; primary %d from %d", q.journal.len(), q.journal.oldest(), p.journal.len(), p.journal.oldest())
	}
	// The next record follows on.
	q.applyRecord(setRec(121, "x", "y"), 1)
	if q.journal.len() != 50 || q.journal.oldest() != 72 {
		t.Fatalf("after the next record: len %d oldest %d", q.journal.len(), q.journal.oldest())
	}
}

// A primary answers only committed records, a position it no longer
// retains with its oldest one, and one beyond its history explicitly.
func TestReadJournalAnswersCommittedRecordsOnly(t *testing.T) {
	p := newPartition(3, time.Second)
	p.journal = newJournal(10, 1<<20)
	p.role, p.epoch = rolePrimary, 1
	for i := range 30 {
		p.applyRecord(setRec(uint64(i+1), "k", fmt.Sprint(i)), 1)
	}
	p.commit = 25
	budget := 1 << 20
	var out wire.JournalPart
	if err := p.readJournal(21, "", 100, &budget, &out); err != nil {
		t.Fatal(err)
	}
	if len(out.Records) != 5 || out.Records[0].LSN != 21 || out.Next != 26 {
		t.Fatalf("%d records, next %d; want 21..25, next 26", len(out.Records), out.Next)
	}
	if err := p.readJournal(0, "", 100, &budget, &out); err != nil || out.Next != 26 || len(out.Records) != 0 {
		t.Fatalf("from now: next %d, %d records, %v", out.Next, len(out.Records), err)
	}
	err := p.readJournal(5, "", 100, &budget, &out)
	var te *api.TrimmedError
	if !errors.As(err, &te) || te.Oldest != 21 || out.Oldest != 21 {
		t.Fatalf("trimmed position: %v (oldest %d)", err, out.Oldest)
	}
	if err := p.readJournal(40, "", 100, &budget, &out); !errors.Is(err, api.ErrJournalTrimmed) {
		t.Fatalf("a position beyond the history: %v", err)
	}
	if err := p.readJournal(21, "other", 100, &budget, &out); err != nil || len(out.Records) != 0 || out.Next != 26 {
		t.Fatalf("another map's events: %d records, next %d, %v", len(out.Records), out.Next, err)
	}
	p.role = roleBackup
	if err := p.readJournal(21, "", 100, &budget, &out); !errors.Is(err, api.ErrNotOwner) && !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("a backup answered: %v", err)
	}
}

func pubRec(lsn uint64, stream, key string, size int) *wire.Record {
	return &wire.Record{LSN: lsn, Epoch: 1, Time: 1, Muts: []wire.Mutation{{Kind: wire.MutPublish, Map: stream, Key: key, Value: make([]byte, size)}}}
}

func groupRec(lsn uint64, stream, group string, pos uint64) *wire.Record {
	mu := wire.Mutation{Kind: wire.MutGroup, Map: stream, Key: group}
	if pos > 0 {
		mu.Value = wire.EncodePos(pos)
	}
	return &wire.Record{LSN: lsn, Epoch: 1, Time: 1, Muts: []wire.Mutation{mu}}
}

// A stream drops its oldest events past its bounds, but never one a
// consumer group has not committed: the publish is refused instead, until
// the group commits or is deleted.
func TestStreamRetentionWaitsForGroups(t *testing.T) {
	p := newPartition(0, time.Second)
	p.streamRecs = 4
	lsn := uint64(0)
	next := func(r func(uint64) *wire.Record) { lsn++; p.applyRecord(r(lsn), 1) }
	for range 6 {
		next(func(l uint64) *wire.Record { return pubRec(l, "s", "k", 10) })
	}
	s := p.logs["s"]
	if s.events.len() != 4 || s.events.oldest() != 3 {
		t.Fatalf("without groups: %d events from %d, want 4 from 3", s.events.len(), s.events.oldest())
	}
	next(func(l uint64) *wire.Record { return groupRec(l, "s", "g", 5) }) // g still wants 5 and 6
	req := &wire.MapRequest{Op: wire.OpPublish, Map: "s", Key: "k", Value: make([]byte, 10)}
	if _, _, err := p.decidePublish(req); err != nil {
		t.Fatalf("4 events, 2 committed by g: room for one more by dropping 3: %v", err)
	}
	next(func(l uint64) *wire.Record { return pubRec(l, "s", "k", 10) }) // lsn 8
	next(func(l uint64) *wire.Record { return pubRec(l, "s", "k", 10) }) // lsn 9: drops 4
	if s.events.oldest() != 5 {
		t.Fatalf("oldest %d, want 5", s.events.oldest())
	}
	if _, _, err := p.decidePublish(req); !errors.Is(err, api.ErrStreamFull) {
		t.Fatalf("every kept event uncommitted by g: %v", err)
	}
	next(func(l uint64) *wire.Record { return groupRec(l, "s", "g", 9) }) // g committed up to 8
	if _, _, err := p.decidePublish(req); err != nil {
		t.Fatalf("after g's commit: %v", err)
	}
	next(func(l uint64) *wire.Record { return groupRec(l, "s", "g", 0) }) // g deleted
	if s.events.protect != 0 {
		t.Fatalf("protect %d after the group left", s.events.protect)
	}

	// The stream, its trim point and its groups travel in a snapshot.
	next(func(l uint64) *wire.Record { return groupRec(l, "s", "h", 6) })
	p.epoch = 1
	q := newPartition(0, time.Second)
	q.streamRecs = 4
	chunks := p.snapshot("a", 256)
	for i := range chunks {
		if _, err := q.receiveChunk(nil, &chunks[i]); err != nil {
			t.Fatal(err)
		}
	}
	qs := q.logs["s"]
	if qs == nil || !reflect.DeepEqual(qs.events.retained(), s.events.retained()) || qs.events.oldest() != s.events.oldest() ||
		!reflect.DeepEqual(qs.groups, s.groups) || qs.events.protect != 6 {
		t.Fatalf("installed stream differs: %+v vs %+v", qs, s)
	}
}

// A snapshot carries only the newest journal records within its budget
// (at least the newest), ending at the snapshot's position.
func TestSnapshotJournalIsBounded(t *testing.T) {
	j := newJournal(1000, 1<<30)
	for lsn := uint64(1); lsn <= 500; lsn++ {
		j.append(wire.JournalEntry{Record: wire.Record{LSN: lsn, Muts: []wire.Mutation{{Value: make([]byte, 1000)}}}})
	}
	tail := j.snapshotTail(64 << 10)
	if len(tail) == 0 || len(tail) > 64 || tail[len(tail)-1].Record.LSN != 500 {
		t.Fatalf("%d records ending at %d", len(tail), tail[len(tail)-1].Record.LSN)
	}
	total := 0
	for i := range tail {
		total += entrySize(&tail[i])
	}
	if total > 64<<10 {
		t.Fatalf("%d bytes shipped", total)
	}
	if one := j.snapshotTail(10); len(one) != 1 || one[0].Record.LSN != 500 {
		t.Fatalf("a budget below one record: %d records", len(one))
	}
}
