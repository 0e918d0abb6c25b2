package cluster

import (
	"slices"

	"github.com/collocate/grid/internal/wire"
)

// Spares: copies left out for a failure that may be false.
//
// The lease detector fails over a member whose renewals stopped for a whole
// lease, and membership one it cannot reach; either may only be starved or
// paused (chaos Finding 6: a member that had just taken 45 primaries, on a
// loaded machine). Its copies were complete when it was left out. If the
// copy that replaced it dies before committing anything without it, that
// complete copy is the partition's data: the partition must neither wait
// for the dead copy nor restart empty when it comes back empty.
//
// So the table remembers the in-sync copies each partition left out for a
// failure (Part.Spares, each with its incarnation) and the version that
// left the last of them out (Part.Seat), and the partition's primary
// commits nothing while Seat is set (grid: the commit point waits; the
// primary renews its lease at once). The leader clears Seat and the spares
// in the first step after the primary renewed its lease bound to Seat or a
// later table: from then on writes commit without them. Until then none
// did, so if the primary dies, a spare takes over (rule 2); while none is
// live, the partition waits for one rather than restart empty. The record
// lives in the table, so a new leader knows it too.

// isSpare reports whether name is one of p's spares.
func isSpare(p wire.Part, name string) bool {
	return slices.ContainsFunc(p.Spares, func(sp wire.Spare) bool { return sp.Name == name })
}

// keepSpare records n, which just left the partition's in-sync copies, as
// a spare if it failed (silent, or declared failed by membership) and its
// copy may still exist (it did not leave, and is not back as a new
// incarnation). The seat moves to this step's version: the primary is
// confirmed only by a renewal bound to a table that no longer counts n
// (nothing committed meanwhile, so every earlier spare stays complete).
func (s *stepper) keepSpare(part *wire.Part, n string) {
	if n == "" || s.in.Cur == nil || s.alive[n] || !s.mayHoldCopy(n) || isSpare(*part, n) {
		return
	}
	part.Spares = append(part.Spares, wire.Spare{Name: n, ID: s.tableID(n)})
	part.Seat = s.next
	s.res.Changed = true
}

func (s *stepper) clearSpares(part *wire.Part) {
	if len(part.Spares) > 0 || part.Seat != 0 {
		part.Spares, part.Seat = nil, 0
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

// sparesHold: the partition has spares and its primary has not been
// confirmed to commit without them, so each holds every acknowledged
// write. A planned move in progress (Former) is left alone.
func (s *stepper) sparesHold(part *wire.Part) bool {
	return len(part.Spares) > 0 && part.Seat != 0 && part.Former == ""
}

// liveSpare returns a spare that runs as the same incarnation ("" if none).
func (s *stepper) liveSpare(part *wire.Part) string {
	if !s.sparesHold(part) {
		return ""
	}
	for _, sp := range part.Spares {
		if sp.Name != part.Primary && s.alive[sp.Name] && s.ids[sp.Name] == sp.ID {
			return sp.Name
		}
	}
	return ""
}

// awaitedSpare returns a spare that may return with its copy (it is silent, or
// declared failed by membership, which may be wrong: a paused process),
// none is live: the partition waits for one rather than restart empty.
func (s *stepper) awaitedSpare(part *wire.Part) string {
	if !s.sparesHold(part) {
		return ""
	}
	for _, sp := range part.Spares {
		if sp.Name != part.Primary && !s.alive[sp.Name] && s.mayHoldCopy(sp.Name) && s.tableID(sp.Name) == sp.ID {
			return sp.Name
		}
	}
	return ""
}

// promoteSpare makes spare sp the primary at the next epoch; the failed
// copies that replaced it leave. The other spares stay, under a new seat:
// they hold as much as sp until sp is confirmed (sp may be the one that
// never returns).
func (s *stepper) promoteSpare(part *wire.Part, sp string) {
	part.Pending = slices.DeleteFunc(part.Pending, func(n string) bool { return n == sp })
	part.Spares = slices.DeleteFunc(part.Spares, func(x wire.Spare) bool { return x.Name == sp })
	for _, n := range part.Backups {
		if n != sp && !s.alive[n] {
			s.keepSpare(part, n) // failed backups kept by rule 1 hold as much
		}
	}
	part.Backups = slices.DeleteFunc(part.Backups, func(n string) bool { return n == sp || !s.alive[n] })
	part.Primary = sp
	part.Since = s.next
	part.Fresh = false
	part.Seat = 0
	if len(part.Spares) > 0 {
		part.Seat = s.next
	} else {
		part.Spares = nil
	}
	s.res.Promoted++
	s.res.FromSpare++
}

// settleSpares confirms a live primary's seat once it renewed its lease
// bound to it (the spares are no longer needed: writes may go on without
// them), and drops spares that are in-sync again (counted for every write
// once more) or whose copy is certainly gone. A spare membership declared
// failed stays: it may only be paused, and the seat's confirmation drops it
// soon anyway if the primary lives.
func (s *stepper) settleSpares(p int) {
	part := &s.t.Partitions[p]
	if part.Seat == 0 && len(part.Spares) == 0 {
		return
	}
	if s.alive[part.Primary] && s.in.Granted[s.ids[part.Primary]] >= part.Seat {
		s.clearSpares(part)
		return
	}
	kept := slices.DeleteFunc(slices.Clone(part.Spares), func(sp wire.Spare) bool {
		back := sp.Name == part.Primary || slices.Contains(part.Backups, sp.Name)
		reborn := s.reborn[sp.Name] || (s.ids[sp.Name] != "" && s.ids[sp.Name] != sp.ID)
		return back || reborn || s.in.Gone[sp.Name]
	})
	if len(kept) == 0 {
		s.clearSpares(part)
		return
	}
	if len(kept) != len(part.Spares) {
		part.Spares = kept
		s.res.Changed = true
	}
}
