package cluster

import (
	"maps"
	"slices"
	"strings"

	"github.com/collocate/grid/internal/wire"
)

// Table functions are pure: no I/O, no clocks, no goroutines. The leader
// calls them; tests call them directly.

// Clone returns a deep copy of t.
func Clone(t *wire.Table) *wire.Table {
	c := *t
	c.Members = slices.Clone(t.Members)
	c.Partitions = make([]wire.Part, len(t.Partitions))
	for i, p := range t.Partitions {
		c.Partitions[i] = p
		c.Partitions[i].Backups = slices.Clone(p.Backups)
		c.Partitions[i].Pending = slices.Clone(p.Pending)
		c.Partitions[i].PendingSince = maps.Clone(p.PendingSince)
		c.Partitions[i].Spares = slices.Clone(p.Spares)
	}
	return &c
}

// StepResult describes what Step changed.
type StepResult struct {
	Changed  bool
	Promoted int // partitions whose primary died and a backup took over
	Lost     int // partitions whose every replica died (data lost)
	Added    int // pending replicas added (migrations started)
	Switched int // planned primary moves to an in-sync backup
	Dropped  int // replicas removed because the target no longer wants them
	Fenced   int // former primaries reported fenced by their successor
	InFlight int // pending replicas after the step
	// AwaitingLease counts partitions whose failed primary may still hold
	// a read lease: promotion waits for it to lapse.
	AwaitingLease int
	// Unavailable counts partitions with no live replica left whose copy
	// may still exist (a failed, not gone, primary): they wait for it.
	Unavailable int
	// FromSpare counts partitions whose primary died and whose spare (a
	// copy left out for a failure that may be false, see wire.Part.Spares)
	// took over because no write can have been acknowledged without it.
	FromSpare int
	Converged bool
}

// StepInput is everything the next table depends on.
type StepInput struct {
	Cur         *wire.Table // nil at bootstrap
	Live        []wire.Member
	Partitions  int
	Backups     int
	Reports     []wire.SyncedReport // received since the last step
	MaxInFlight int                 // pending replicas allowed at once
	// Draining members stay and serve, but the target leaves them out.
	Draining map[string]bool
	// Leased names failed members whose read lease may still be valid.
	Leased map[string]bool
	// Gone names members whose previous copy is certainly gone (they left,
	// or came back as a new incarnation; Next also detects the latter).
	Gone map[string]bool
	// Granted is the highest table version of a lease the authority's
	// leader granted each live incarnation (by raft id): a primary whose
	// grant reached its partition's Seat is confirmed (spare.go).
	Granted map[string]uint64
}

// Step is Next without leases, drains' absence aside: for tests and callers
// that hold no lease state. Every live member counts as having renewed
// after any seat (spare.go), so spares last one step.
func Step(cur *wire.Table, live []wire.Member, partitions, backups int, reports []wire.SyncedReport, maxInFlight int, draining map[string]bool) (*wire.Table, StepResult) {
	granted := make(map[string]uint64, len(live))
	for _, m := range live {
		granted[m.ID] = ^uint64(0)
	}
	return Next(StepInput{Cur: cur, Live: live, Partitions: partitions, Backups: backups, Reports: reports, MaxInFlight: maxInFlight, Draining: draining, Granted: granted})
}

// stepper carries one step's working state between its rules.
type stepper struct {
	in     StepInput
	t      *wire.Table
	res    StepResult
	alive  map[string]bool   // live members that are the incarnation the table knows
	reborn map[string]bool   // live names that came back as a new incarnation
	ids    map[string]string // live member name -> incarnation id
	names  []string          // target members (live, not draining)
	want   int               // backups wanted per partition
	tgt    Placement         // the target, after failovers
	pre    *Placement        // the target of in.Cur, for promote's choice
	next   uint64            // the version the next table gets if anything changes
}

// Next computes the next table. It returns in.Cur itself, unchanged, if
// nothing changed. The rules run in this order, each a function below; a
// partition may be touched by several rules in one step, and the comment of
// each rule says what it must not undo of the earlier ones:
//
//  1. dropFailed: members that are not live leave every replica set, except
//     an unfenced Former whose lease may still be valid, and the in-sync
//     backups of a partition whose primary is down (their copies are
//     complete and may be the only ones left).
//  2. promote: a partition whose primary is gone promotes an in-sync backup
//     (epoch+1): a live one, else, if the primary's copy is certainly gone,
//     a failed one, which the partition then waits for. With no backup left
//     it stays unavailable unless every copy is certainly gone (then it
//     restarts empty: Fresh, counted in Lost).
//  3. applyReports: synced reports for the current epoch and incarnation
//     move pending replicas to the backups, and clear a fenced Former.
//  4. switchPlanned: a target primary that is an in-sync backup takes over
//     (epoch+1); the old primary stays as a backup and becomes Former. Not
//     while an earlier Former is unfenced.
//  5. addMigrations: missing target replicas are added as pending, at most
//     MaxInFlight pending across the table.
//  6. dropUnwanted: pending replicas the target no longer wants, and in-sync
//     backups beyond the wanted count, are dropped; never a Former.
//
// Rules 3 to 6 move towards Target, computed on the table as rules 1 and 2
// left it: the next step sees those failovers too, so a migration keeps
// one target from its first step to its last.
//
// The table's Members are the live members plus the failed members it still
// names, with the incarnation id they had (setMembers): a name that comes
// back is its own successor only under the same id.
//
// Partitions whose failed primary may still hold a read lease are left to
// rules 1 and 2 only, which wait for the lease: no report, switch,
// migration or drop touches them, so a paused primary never serves a read
// after its backup took over.
func Next(in StepInput) (*wire.Table, StepResult) {
	s := &stepper{in: in, alive: map[string]bool{}, reborn: map[string]bool{}, ids: map[string]string{}, next: 1}
	if in.Cur != nil {
		s.next = in.Cur.Version + 1
	}
	curIDs := map[string]string{}
	if in.Cur != nil {
		for _, m := range in.Cur.Members {
			curIDs[m.Name] = m.ID
		}
	}
	for _, m := range in.Live {
		s.ids[m.Name] = m.ID
		if id := curIDs[m.Name]; id != "" && m.ID != "" && id != m.ID {
			// A new incarnation: the replicas the table gives this name
			// belonged to the old one, which is dead.
			s.reborn[m.Name] = true
		} else {
			s.alive[m.Name] = true
		}
		if !in.Draining[m.Name] {
			s.names = append(s.names, m.Name)
		}
	}
	if len(s.names) == 0 {
		for _, m := range in.Live {
			s.names = append(s.names, m.Name)
		}
	}
	slices.Sort(s.names)
	if in.Cur == nil {
		s.t = &wire.Table{Backups: in.Backups, Partitions: make([]wire.Part, in.Partitions)}
	} else {
		s.t = Clone(in.Cur)
	}
	if len(in.Live) == 0 {
		s.setMembers()
		return finish(in.Cur, s.t, s.res)
	}
	s.want = min(in.Backups, len(s.names)-1)
	for p := range s.t.Partitions {
		// Spares the primary was confirmed without go first: a copy
		// this step leaves out is a spare under a new seat.
		s.settleSpares(p)
		s.dropFailed(p)
		s.promote(p)
	}
	// The target is computed after the failovers: the next step sees them
	// too, so the migration it starts keeps the same target.
	s.tgt = Target(s.names, in.Partitions, in.Backups, s.t)
	s.applyReports()
	for p := range s.t.Partitions {
		if s.waiting(p) {
			continue
		}
		s.switchPlanned(p)
	}
	inFlight := 0
	for _, part := range s.t.Partitions {
		inFlight += len(part.Pending)
	}
	for p := range s.t.Partitions {
		if s.waiting(p) {
			continue
		}
		inFlight = s.addMigrations(p, inFlight)
	}
	for p := range s.t.Partitions {
		if s.waiting(p) {
			continue
		}
		s.dropUnwanted(p)
	}
	for i := range s.t.Partitions {
		part := &s.t.Partitions[i]
		s.res.InFlight += len(part.Pending)
		prunePendingSince(part)
	}
	s.res.Converged = Converged(s.t, s.names, in.Backups)
	s.setMembers()
	return finish(in.Cur, s.t, s.res)
}

// setMembers lists the live members, and keeps the entry of every failed
// member the table still names (a primary whose lease or return a partition
// waits for, a former primary held under its lease). Without it a name that
// failed and came back would look like the incarnation the table means
// even when it restarted empty: only the kept id tells them apart.
func (s *stepper) setMembers() {
	members := slices.Clone(s.in.Live)
	if s.in.Cur != nil {
		for _, m := range s.in.Cur.Members {
			if _, live := s.ids[m.Name]; !live && named(s.t, m.Name) {
				members = append(members, m)
			}
		}
	}
	slices.SortFunc(members, func(a, b wire.Member) int { return strings.Compare(a.Name, b.Name) })
	if !slices.Equal(members, s.t.Members) {
		s.t.Members = members
		s.res.Changed = true
	}
}

// named reports whether t gives name any role in any partition.
func named(t *wire.Table, name string) bool {
	for _, p := range t.Partitions {
		if p.Primary == name || p.Former == name || isSpare(p, name) || slices.Contains(p.Backups, name) || slices.Contains(p.Pending, name) {
			return true
		}
	}
	return false
}

// prunePendingSince forgets the versions of members no longer pending.
func prunePendingSince(part *wire.Part) {
	for n := range part.PendingSince {
		if !slices.Contains(part.Pending, n) {
			delete(part.PendingSince, n)
		}
	}
	if len(part.PendingSince) == 0 {
		part.PendingSince = nil
	}
}

// waiting: the partition's primary failed and its lease may be valid.
func (s *stepper) waiting(p int) bool { return !s.alive[s.t.Partitions[p].Primary] }

// formerHeld: a partition's unfenced Former that failed but may still serve
// reads under its lease. It stays in Backups so that no write commits
// without it until the lease lapsed.
func (s *stepper) formerHeld(part *wire.Part, n string) bool {
	return n == part.Former && !s.alive[n] && !s.reborn[n] && s.in.Leased[n]
}

// mayHoldCopy: a failed member whose copy may still exist (it did not
// leave, and did not come back as a new incarnation).
func (s *stepper) mayHoldCopy(n string) bool { return !s.reborn[n] && !s.in.Gone[n] }

// keepBackup: a backup that stays in the replica set. Failed ones stay only
// while their copy may be needed: a held former primary, or any backup of
// a partition whose primary is down (nothing commits without the backups
// then, so their copies are complete and may be the only ones left).
func (s *stepper) keepBackup(part *wire.Part, n string) bool {
	return s.alive[n] || s.formerHeld(part, n) || (!s.alive[part.Primary] && s.mayHoldCopy(n))
}

// Rule 1: members that are not live leave every replica set, except the
// backups keepBackup keeps.
func (s *stepper) dropFailed(p int) {
	part := &s.t.Partitions[p]
	nb := slices.DeleteFunc(slices.Clone(part.Backups), func(n string) bool { return !s.keepBackup(part, n) })
	np := slices.DeleteFunc(slices.Clone(part.Pending), func(n string) bool { return !s.alive[n] })
	if len(nb) != len(part.Backups) || len(np) != len(part.Pending) {
		s.res.Changed = true
	}
	for _, n := range part.Backups {
		if !slices.Contains(nb, n) {
			s.keepSpare(part, n)
		}
	}
	part.Backups, part.Pending = nb, np
	if part.Former != "" && part.Former != part.Primary && !slices.Contains(part.Backups, part.Former) {
		part.Former = "" // failed, and its lease lapsed: nothing left to fence
		s.res.Changed = true
	}
}

// Rule 2: a partition whose primary is gone promotes an in-sync backup: a
// live one, or, when the primary's copy is certainly gone, a failed one
// whose copy may return (the partition then waits for it).
func (s *stepper) promote(p int) {
	part := &s.t.Partitions[p]
	if part.Primary != "" && (s.alive[part.Primary] || s.in.Leased[part.Primary]) {
		if !s.alive[part.Primary] {
			s.res.AwaitingLease++
		}
		return
	}
	cands := slices.DeleteFunc(slices.Clone(part.Backups), func(n string) bool { return !s.alive[n] })
	gone := s.in.Cur == nil || part.Primary == "" || !s.mayHoldCopy(part.Primary)
	old := part.Primary
	switch {
	case len(cands) > 0:
		pick := cands[0]
		if len(cands) > 1 && slices.Contains(cands, s.promotionTarget().Primary[p]) {
			pick = s.promotionTarget().Primary[p]
		}
		s.promoteBackup(part, pick)
		// The failed backups kept while the primary was down leave now.
		for _, n := range part.Backups {
			if !s.alive[n] && !s.formerHeld(part, n) {
				s.keepSpare(part, n)
			}
		}
		part.Backups = slices.DeleteFunc(part.Backups, func(n string) bool { return !s.alive[n] && !s.formerHeld(part, n) })
		if s.in.Cur != nil {
			s.res.Promoted++
		}
		s.keepSpare(part, old)
		if len(part.Spares) > 0 {
			// A renewal from before this promotion must not confirm the
			// new primary (it may never have known it leads).
			part.Seat = s.next
		}
	case s.liveSpare(part) != "":
		s.promoteSpare(part, s.liveSpare(part))
		s.keepSpare(part, old)
	case gone && s.awaitedSpare(part) != "":
		// The primary's name came back empty, or left: a spare that may
		// return becomes primary, and the partition waits for it (a
		// successor under the primary's name must not take it over
		// empty).
		s.promoteSpare(part, s.awaitedSpare(part))
		s.res.Unavailable++
	case s.awaitedSpare(part) != "":
		s.res.Unavailable++
		return
	case gone && len(part.Backups) > 0:
		// Only failed backups are left, kept by rule 1 because their
		// copies may return: the first becomes primary and the
		// partition waits for it.
		s.promoteBackup(part, part.Backups[0])
		s.res.Promoted++
		s.res.Unavailable++
	case gone:
		// Bootstrap, or every copy is certainly gone: start empty.
		if s.in.Cur != nil && part.Primary != "" {
			s.res.Lost++
		}
		part.Primary = s.promotionTarget().Primary[p]
		part.Since = s.next
		part.Pending = slices.DeleteFunc(part.Pending, func(n string) bool { return n == part.Primary })
		part.Backups = slices.DeleteFunc(part.Backups, func(n string) bool { return n == part.Primary })
		part.Former = ""
		part.Fresh = true
		part.Spares, part.Seat = nil, 0
	default:
		// The only copy may be on a node membership wrongly thinks dead:
		// stay unavailable until it returns (or is known gone).
		s.res.Unavailable++
		return
	}
	s.res.Changed = true
	part.Epoch++
}

func (s *stepper) promoteBackup(part *wire.Part, pick string) {
	part.Backups = slices.DeleteFunc(part.Backups, func(n string) bool { return n == pick })
	if part.Former == pick {
		part.Former = ""
	}
	part.Primary = pick
	part.Since = s.next
	part.Fresh = false
}

// promotionTarget is the target of the table before this step, computed
// once and only when promote must choose: among several in-sync backups it
// prefers the one the placement wants as primary.
func (s *stepper) promotionTarget() Placement {
	if s.pre == nil {
		pl := Target(s.names, s.in.Partitions, s.in.Backups, s.in.Cur)
		s.pre = &pl
	}
	return *s.pre
}

// Rule 3: synced reports move pending replicas to the backups and clear a
// fenced Former. A report counts only for the current epoch and the
// reported node's current incarnation: a report about a predecessor (the
// same name, restarted empty) must never make its successor in-sync.
func (s *stepper) applyReports() {
	for _, r := range s.in.Reports {
		if int(r.Partition) < 0 || int(r.Partition) >= len(s.t.Partitions) || s.waiting(int(r.Partition)) {
			continue
		}
		part := &s.t.Partitions[r.Partition]
		if r.Epoch != part.Epoch || !s.alive[r.Node] || (r.ID != "" && s.ids[r.Node] != "" && r.ID != s.ids[r.Node]) {
			continue
		}
		if r.Node == part.Former && slices.Contains(part.Backups, r.Node) {
			part.Former = ""
			s.res.Fenced++
			s.res.Changed = true
			continue
		}
		if !slices.Contains(part.Pending, r.Node) || r.Version < part.PendingSince[r.Node] {
			// Not pending, or a report about an earlier fill of this
			// member, sent before the table that last added it: writes
			// acknowledged while it was out of the table may be missing.
			continue
		}
		part.Pending = slices.DeleteFunc(part.Pending, func(n string) bool { return n == r.Node })
		part.Backups = append(part.Backups, r.Node)
		s.res.Changed = true
	}
}

// Rule 4: move the primary to the target where the target is an in-sync
// backup. The old primary stays as a backup and becomes Former: it may
// serve reads under its lease until the new primary fences it, so it must
// stay counted for every write until then (rule 6 keeps it).
func (s *stepper) switchPlanned(p int) {
	part := &s.t.Partitions[p]
	tp := s.tgt.Primary[p]
	if part.Primary == tp || part.Former != "" {
		return
	}
	i := slices.Index(part.Backups, tp)
	if i < 0 {
		return
	}
	part.Backups[i] = part.Primary
	part.Former = part.Primary
	part.Primary = tp
	part.Since = s.next
	part.Fresh = false
	part.Epoch++
	s.res.Switched++
	s.res.Changed = true
}

// Rule 5: start migrations towards the target.
func (s *stepper) addMigrations(p, inFlight int) int {
	part := &s.t.Partitions[p]
	for _, n := range append([]string{s.tgt.Primary[p]}, s.tgt.Backups[p]...) {
		if inFlight >= s.in.MaxInFlight {
			break
		}
		if n == part.Primary || slices.Contains(part.Backups, n) || slices.Contains(part.Pending, n) {
			continue
		}
		part.Pending = append(part.Pending, n)
		if part.PendingSince == nil {
			part.PendingSince = map[string]uint64{}
		}
		part.PendingSince[n] = s.next
		inFlight++
		s.res.Added++
		s.res.Changed = true
	}
	return inFlight
}

// Rule 6: drop what the target no longer wants, never an unfenced Former.
func (s *stepper) dropUnwanted(p int) {
	part := &s.t.Partitions[p]
	wanted := func(n string) bool { return n == s.tgt.Primary[p] || slices.Contains(s.tgt.Backups[p], n) }
	np := slices.DeleteFunc(slices.Clone(part.Pending), func(n string) bool { return !wanted(n) })
	if len(np) != len(part.Pending) {
		s.res.Dropped += len(part.Pending) - len(np)
		part.Pending = np
		s.res.Changed = true
	}
	for len(part.Backups) > s.want {
		i := slices.IndexFunc(part.Backups, func(n string) bool { return !wanted(n) && n != part.Former })
		if i < 0 {
			break
		}
		part.Backups = slices.Delete(part.Backups, i, i+1)
		s.res.Dropped++
		s.res.Changed = true
	}
}

func finish(cur, t *wire.Table, res StepResult) (*wire.Table, StepResult) {
	if !res.Changed && cur != nil {
		return cur, res
	}
	res.Changed = true
	if cur != nil {
		t.Version = cur.Version + 1
	} else {
		t.Version = 1
	}
	return t, res
}

func filterAlive(ns []string, alive map[string]bool) []string {
	out := ns[:0:0]
	for _, n := range ns {
		if alive[n] {
			out = append(out, n)
		}
	}
	return out
}

// Converged reports whether t is complete for members: every partition has
// a live primary, exactly min(backups, members-1) in-sync backups on
// distinct other members, nothing pending, no unfenced former primary, and
// no spare awaiting its primary's seat.
func Converged(t *wire.Table, members []string, backups int) bool {
	if t == nil || len(members) == 0 {
		return false
	}
	want := min(backups, len(members)-1)
	for _, p := range t.Partitions {
		if p.Primary == "" || !slices.Contains(members, p.Primary) || len(p.Pending) > 0 || len(p.Backups) != want || p.Former != "" || p.Seat != 0 {
			return false
		}
		seen := map[string]bool{p.Primary: true}
		for _, b := range p.Backups {
			if seen[b] || !slices.Contains(members, b) {
				return false
			}
			seen[b] = true
		}
	}
	return true
}

// Lookup returns the RPC address of member name in t.
func Lookup(t *wire.Table, name string) (string, bool) {
	for _, m := range t.Members {
		if m.Name == name {
			return m.RPC, true
		}
	}
	return "", false
}
