package grid

import (
	"sort"
	"unsafe"

	"github.com/collocate/grid/internal/wire"
)

// This file is a partition's journal: the records it applied, kept with
// their positions (LSNs) after replication, so that listeners, streams
// and processors can read the partition's history from a position, and a
// replica that fell behind can be sent the missing tail.
//
// Every replica appends the same records in the same order (the primary
// when it commits a record, a backup when it applies it, a snapshot's
// receiver from the journal the snapshot carries), so a position names the
// same record on every replica and survives a failover. Retention is
// bounded per partition by records and bytes (Config.JournalRecords,
// JournalBytes); the oldest records go first. Each record keeps its
// events: what each mutation did to its entry (added, updated, removed,
// expired, cleared) with the new value and the old one. Values are shared
// with the map, not copied: an old value stays alive while its record is
// retained, and counts against the byte bound.

// journalRecordOverhead and journalEventOverhead over-estimate the
// encoding of a record's and an event's fixed fields (what a reader is
// sent, eventsSize).
const (
	journalRecordOverhead = 64
	journalEventOverhead  = 48
)

// What a retained entry costs in memory beyond its strings and values
// (entrySize): the entry in the journal's slice, each mutation and each
// event struct, and the allocation rounding of each decoded string and
// value (a backup decodes every one separately; at least 8 bytes each).
// Measured with records of many small mutations, smaller constants let a
// journal bounded at 4 MiB keep 9.9 MiB alive.
const (
	journalMemRecord = int(unsafe.Sizeof(wire.JournalEntry{})) + 16
	journalMemMut    = int(unsafe.Sizeof(wire.Mutation{})) + 3*8
	journalMemEvent  = int(unsafe.Sizeof(wire.JournalEvent{}))
)

// journal is a partition's retained records, oldest first. Guarded by the
// partition's mu. A stream's events (stream.go) are kept in one too, with
// sparse positions and a floor below which nothing may be dropped.
type journal struct {
	recs  []wire.JournalEntry // recs[head:] are retained, in LSN order
	head  int
	bytes int
	// trimmed is the highest position dropped (or below which this
	// replica never held records): the oldest retained is trimmed+1.
	trimmed  uint64
	maxRecs  int
	maxBytes int
	// sparse: positions need not follow each other (a stream's events).
	sparse bool
	// protect, if not 0: records at or above it are never dropped (the
	// lowest position a stream's consumer groups have not committed).
	protect uint64
}

func newJournal(maxRecs, maxBytes int) journal {
	return journal{maxRecs: maxRecs, maxBytes: maxBytes}
}

// len is the number of retained records.
func (j *journal) len() int { return len(j.recs) - j.head }

// oldest is the oldest position a reader may ask for.
func (j *journal) oldest() uint64 { return j.trimmed + 1 }

// retained returns the retained records, oldest first (not a copy).
func (j *journal) retained() []wire.JournalEntry { return j.recs[j.head:] }

// entrySize over-estimates what a retained entry holds: its mutations,
// result and events (an event's new value is its mutation's, counted
// once; its old value is extra).
func entrySize(r *wire.JournalEntry) int {
	n := journalMemRecord + len(r.Record.Result.Value)
	for i := range r.Record.Muts {
		mu := &r.Record.Muts[i]
		n += journalMemMut + len(mu.Map) + len(mu.Key) + len(mu.Value)
	}
	for i := range r.Events {
		e := &r.Events[i]
		n += journalMemEvent + len(e.Old)
		if len(r.Record.Muts) == 0 {
			n += 3*8 + len(e.Map) + len(e.Key) + len(e.Value) // a stream event
		}
	}
	return n
}

// eventsSize is what a reader is sent of an entry.
func eventsSize(evs []wire.JournalEvent) int {
	n := journalRecordOverhead
	for i := range evs {
		e := &evs[i]
		n += journalEventOverhead + len(e.Map) + len(e.Key) + len(e.Value) + len(e.Old)
	}
	return n
}

// append retains r, whose LSN must follow the last retained one (a gap
// restarts the journal at r), then drops the oldest records beyond the
// bounds.
func (j *journal) append(r wire.JournalEntry) {
	lsn := r.Record.LSN
	switch n := j.len(); {
	case j.sparse:
		if n > 0 && j.last() >= lsn || lsn <= j.trimmed {
			j.restart(lsn - 1)
		}
	case n > 0 && j.last()+1 != lsn, n == 0 && j.trimmed+1 != lsn:
		j.restart(lsn - 1)
	}
	j.recs = append(j.recs, r)
	j.bytes += entrySize(&j.recs[len(j.recs)-1])
	j.trim()
}

// last is the position of the newest retained entry (0: none).
func (j *journal) last() uint64 {
	if j.len() == 0 {
		return 0
	}
	return j.recs[len(j.recs)-1].Record.LSN
}

// trim drops the oldest records beyond the bounds, and compacts the slice
// once half of it is dropped records.
func (j *journal) trim() {
	// The newest record stays whatever its size: it is bounded by the
	// record size limits, and a reader must be able to get past it.
	for j.len() > 1 && (j.len() > j.maxRecs || j.bytes > j.maxBytes) {
		r := &j.recs[j.head]
		if j.protect != 0 && r.Record.LSN >= j.protect {
			break // not yet committed by every consumer group
		}
		j.bytes -= entrySize(r)
		j.trimmed = r.Record.LSN
		*r = wire.JournalEntry{} // release its values
		j.head++
	}
	if j.head > 0 && j.head >= len(j.recs)/2 {
		n := copy(j.recs, j.recs[j.head:])
		clear(j.recs[n:])
		j.recs = j.recs[:n]
		j.head = 0
	}
}

// restart empties the journal: the next record retained is at after+1.
func (j *journal) restart(after uint64) {
	clear(j.recs)
	j.recs = j.recs[:0]
	j.head, j.bytes, j.trimmed = 0, 0, after
}

// from returns the retained records at positions >= pos and <= upTo, at
// most max of them (not a copy), and whether pos is still retained
// (false: it was dropped; see oldest).
func (j *journal) from(pos, upTo uint64, max int) ([]wire.JournalEntry, bool) {
	if pos <= j.trimmed {
		return nil, false
	}
	recs := j.retained()
	if len(recs) == 0 || pos > j.last() {
		return nil, true
	}
	i := sort.Search(len(recs), func(i int) bool { return recs[i].Record.LSN >= pos })
	end := len(recs)
	for end > i && recs[end-1].Record.LSN > upTo {
		end--
	}
	if end-i > max {
		end = i + max
	}
	return recs[i:end], true
}

// install replaces the partition journal with recs (a snapshot's), oldest
// first, ending at position last: the snapshot's LSN. (A stream's events
// arrive with their own trim point: receiveStreams.)
func (j *journal) install(recs []wire.JournalEntry, last uint64) {
	if len(recs) == 0 || recs[len(recs)-1].Record.LSN != last {
		j.restart(last)
		return
	}
	j.restart(recs[0].Record.LSN - 1)
	for _, r := range recs {
		j.append(r)
	}
}

// freshBase is where the positions of a history that starts empty at
// epoch begin: above every position of any history the partition had
// before (a partition's epochs only grow, and a history spans less than
// 2^40 positions), so a reader holding a position of a lost history gets
// the explicit gap instead of reading the new one from there.
func freshBase(epoch uint64) uint64 {
	return min(epoch, 1<<23) << 40
}

// beginHistory starts the positions of a partition restarted Fresh (no
// copy the authority knew of survived) at its epoch's base, also over a
// complete copy this node kept: the lost history may have gone on past
// it. Caller holds mu.
func (p *partition) beginHistory(epoch uint64) {
	if base := freshBase(epoch); p.lsn < base {
		p.lsn = base
		p.journal.restart(base)
	}
}

// snapshotJournalBytes bounds the journal a snapshot carries: the newest
// records within it. A snapshot of freshly loaded data would otherwise
// carry every value twice (once as the entry, once in the journal), and
// its chunks share the connection with the records of every other
// partition replicated to that member (measured: a 1M-entry member's
// rejoin took 3.6 s instead of 2.0 s, writes slowed 15x while it was
// out). A replica filled by snapshot thus retains a shorter history
// until it has applied records of its own: promoted soon after its fill,
// it tells readers of older positions the explicit gap.
const snapshotJournalBytes = 64 << 10

// snapshotTail returns the newest retained entries whose sizes add up to
// at most budget bytes (at least the newest one), oldest first.
func (j *journal) snapshotTail(budget int) []wire.JournalEntry {
	recs := j.retained()
	i := len(recs)
	for i > 0 {
		size := entrySize(&recs[i-1])
		if i < len(recs) && size > budget {
			break
		}
		budget -= size
		i--
	}
	return recs[i:]
}

// withoutOldValues returns r with its events' old values left out.
func withoutOldValues(r wire.JournalEntry) wire.JournalEntry {
	evs := make([]wire.JournalEvent, len(r.Events))
	copy(evs, r.Events)
	for i := range evs {
		evs[i].Old = nil
	}
	r.Events = evs
	return r
}

// eventOf is the journal event of mutation mu, given the entry it
// replaced or removed (nil: none). ok is false when mu changed nothing.
func eventOf(mu *wire.Mutation, old *entry) (ev wire.JournalEvent, ok bool) {
	ev = wire.JournalEvent{Map: mu.Map, Key: mu.Key}
	if old != nil {
		ev.Old = old.value
	}
	switch mu.Kind {
	case wire.MutSet:
		ev.Kind, ev.Value, ev.ExpireAt = wire.EventAdded, mu.Value, mu.ExpireAt
		if old != nil {
			ev.Kind = wire.EventUpdated
		}
	case wire.MutDelete, wire.MutExpire:
		if old == nil {
			return ev, false
		}
		ev.Kind = wire.EventRemoved
		if mu.Kind == wire.MutExpire {
			ev.Kind = wire.EventExpired
		}
	case wire.MutClear:
		ev.Kind = wire.EventCleared
	default:
		return ev, false
	}
	return ev, true
}
