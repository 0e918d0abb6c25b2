package cluster

import (
	"slices"

	"github.com/collocate/grid/internal/wire"
)

// Spares: copies left out for silence only.
//
// The lease detector fails over a member whose renewals stopped for a whole
// lease although membership still calls it alive; it may only be starved
// (chaos Finding 6: a member that had just taken 45 primaries, on a loaded
// machine). Its copies were complete when it was left out. If the copy that
// replaced it dies before committing anything without it, that complete copy
// is the partition's data: the partition must neither wait for the dead
// copy nor restart empty when it comes back empty.
//
// So the table remembers the last such copy of each partition (Part.Spare,
// with its incarnation) and the version that left it out (Part.Seat), and
// the partition's primary commits nothing while Seat is set (grid: the
// commit point waits). The leader clears Seat, and the spare with it, once
// the primary renewed its lease bound to Seat or a later table (the primary
// is alive and knows it leads without the spare): from then on writes may be
// acknowledged without the spare. Until then none was, so if the primary
// dies the spare takes over (rule 2). The record lives in the table, so a
// new leader knows it too.

// keepSpare records n as the partition's spare if it left the in-sync
// copies only because its lease lapsed (membership calls it alive). An
// earlier spare it replaces holds no more than n: writes since it left
// needed n.
func (s *stepper) keepSpare(part *wire.Part, n string) {
	if n == "" || !s.in.Silent[n] || s.in.Cur == nil {
		return
	}
	part.Spare, part.SpareID, part.Seat = n, s.tableID(n), s.next
	s.res.Changed = true
}

func (s *stepper) clearSpare(part *wire.Part) {
	if part.Spare != "" || part.Seat != 0 {
		part.Spare, part.SpareID, part.Seat = "", "", 0
		s.res.Changed = true
	}
}

// tableID is the incarnation id the current table names for name.
func (s *stepper) tableID(name string) string {
	if s.in.Cur == nil {
		return ""
	}
	for _, m := range s.in.Cur.Members {
		if m.Name == name {
			return m.ID
		}
	}
	return ""
}

// spareHolds: the partition has a spare and its primary has not been
// confirmed to commit without it, so the spare holds every acknowledged
// write. A planned move in progress (Former) is left alone.
func (s *stepper) spareHolds(part *wire.Part) bool {
	return part.Spare != "" && part.Seat != 0 && part.Former == "" && part.Primary != part.Spare
}

// spareMayTakeOver: the spare holds the data and runs as the same
// incarnation.
func (s *stepper) spareMayTakeOver(part *wire.Part) bool {
	sp := part.Spare
	return s.spareHolds(part) && s.alive[sp] && s.ids[sp] == part.SpareID
}

// spareAwaited: the spare holds the data but is not live itself (silent,
// or declared failed by membership, which may be wrong: a paused process),
// and did not come back as a new incarnation: the partition waits for it
// rather than restart empty.
func (s *stepper) spareAwaited(part *wire.Part) bool {
	sp := part.Spare
	return s.spareHolds(part) && !s.alive[sp] && s.mayHoldCopy(sp) && s.tableID(sp) == part.SpareID
}

// promoteSpare makes the spare the primary at the next epoch; the failed
// copies that replaced it leave.
func (s *stepper) promoteSpare(part *wire.Part) {
	sp := part.Spare
	part.Pending = slices.DeleteFunc(part.Pending, func(n string) bool { return n == sp })
	part.Backups = slices.DeleteFunc(part.Backups, func(n string) bool { return n == sp || !s.alive[n] })
	part.Primary = sp
	part.Since = s.next
	part.Fresh = false
	part.Spare, part.SpareID, part.Seat = "", "", 0
	s.res.Promoted++
	s.res.FromSpare++
}

// settleSpare confirms a live primary's seat once it renewed its lease
// bound to it (the spare is no longer needed: writes may go on without it),
// and drops a spare that is in-sync again (counted for every write once
// more) or whose copy is certainly gone. A spare membership declared failed
// stays: it may only be paused, and the seat's confirmation drops it soon
// anyway if the primary lives.
func (s *stepper) settleSpare(p int) {
	part := &s.t.Partitions[p]
	if part.Seat == 0 && part.Spare == "" {
		return
	}
	if part.Spare == "" {
		s.clearSpare(part)
		return
	}
	sp := part.Spare
	seated := s.alive[part.Primary] && s.in.Granted[s.ids[part.Primary]] >= part.Seat
	back := sp == part.Primary || slices.Contains(part.Backups, sp)
	reborn := s.reborn[sp] || (s.ids[sp] != "" && s.ids[sp] != part.SpareID)
	if seated || back || reborn || s.in.Gone[sp] {
		s.clearSpare(part)
	}
}
