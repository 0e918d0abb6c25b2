package cluster

import (
	"cmp"
	"slices"

	"github.com/cespare/xxhash/v2"
	"github.com/collocate/grid/internal/wire"
)

// Placement is the layout a table converges on: for each partition the
// desired primary and backups.
type Placement struct {
	Primary []string
	Backups [][]string
}

// Target computes the desired layout for members (sorted, deduplicated) and
// the current table cur (may be nil). It is a pure function: the leader
// calls it at every step of a migration, on tables that still show the old
// primaries, backups and pending copies, so the same migration must keep
// the same target from its first step to its last.
//
// Each member gets a quota of floor or ceil of partitions/members primaries
// (and of partitions*backups/members backups). A member keeps its current
// primaries up to its quota, its oldest first (Part.Since, then a hash of
// partition and member); every other partition goes to a member under
// quota, one that holds a copy first (an in-sync backup, so the move is a
// switch, then a pending copy), else by the hash. Backups likewise: the
// members holding a copy (the current primary included, when the primary
// moves) keep it while under their backup quota, the rest is filled from
// members under quota. A join therefore moves only the new member's share,
// a leave only the leaving member's partitions, and every member ends
// within one partition of the mean.
func Target(members []string, partitions, backups int, cur *wire.Table) Placement {
	pl := Placement{Primary: make([]string, partitions), Backups: make([][]string, partitions)}
	if len(members) == 0 || partitions <= 0 {
		return pl
	}
	a := newAssigner(members, partitions, cur)
	a.placePrimaries()
	if want := min(backups, len(members)-1); want > 0 {
		a.placeBackups(want)
	}
	for p := range partitions {
		pl.Primary[p] = members[a.primary[p]]
		if a.backups != nil && len(a.backups[p]) > 0 {
			pl.Backups[p] = make([]string, len(a.backups[p]))
			for i, m := range a.backups[p] {
				pl.Backups[p][i] = members[m]
			}
		}
	}
	return pl
}

// holding is what a member holds of a partition in the current table.
type holding uint8

const (
	holdsNothing holding = iota
	holdsPending
	holdsInSync // an in-sync backup, or the primary
)

// assigner is one Target computation. Members are indices into names.
type assigner struct {
	names   []string
	ids     map[string]int // index of each name
	seeds   []uint64       // hash of each member's name
	parts   int
	cur     []wire.Part // the current partitions, len parts (zero where cur had none)
	primary []int       // target primary of each partition
	quota   []int       // primary quota of each member
	backups [][]int     // target backups of each partition
}

func newAssigner(members []string, partitions int, cur *wire.Table) *assigner {
	a := &assigner{names: members, parts: partitions, cur: make([]wire.Part, partitions)}
	a.seeds = make([]uint64, len(members))
	a.ids = make(map[string]int, len(members))
	for i, m := range members {
		a.seeds[i] = xxhash.Sum64String(m)
		a.ids[m] = i
	}
	if cur != nil {
		copy(a.cur, cur.Partitions)
	}
	return a
}

// index returns the member index of name, or -1.
func (a *assigner) index(name string) int {
	if i, ok := a.ids[name]; ok {
		return i
	}
	return -1
}

// score is a rendezvous hash of partition p and member m; salt separates
// the primary and backup orders.
func (a *assigner) score(p, m int, salt uint64) uint64 {
	return mix64(a.seeds[m] ^ (uint64(p)+salt)*0x9e3779b97f4a7c15)
}

// mix64 is splitmix64's finalizer.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

const backupSalt = 0x5bd1e9955bd1e995

// holds reports what member m holds of partition p now.
func (a *assigner) holds(p, m int) holding {
	part := &a.cur[p]
	name := a.names[m]
	switch {
	case part.Primary == name || slices.Contains(part.Backups, name):
		return holdsInSync
	case slices.Contains(part.Pending, name):
		return holdsPending
	}
	return holdsNothing
}

// quotas splits total over the members: floor or ceil of the mean each. The
// extra ones go first to members not in avoid, then to members that hold at
// least the ceil now (so a member shedding its surplus keeps the extra all
// through the migration, and a member filling up never reaches it), then
// by the hash of the name. Every criterion stays true while a migration
// towards the result runs, so the quotas do not change under it.
func (a *assigner) quotas(total int, held []int, avoid []bool) []int {
	n := len(a.names)
	base, extra := total/n, total%n
	q := make([]int, n)
	order := make([]int, n)
	for m := range n {
		q[m] = base
		order[m] = m
	}
	rank := func(m int) (int, int) {
		r0, r1 := 0, 0
		if avoid != nil && avoid[m] {
			r0 = 1
		}
		if held[m] < base+1 {
			r1 = 1
		}
		return r0, r1
	}
	slices.SortFunc(order, func(x, y int) int {
		x0, x1 := rank(x)
		y0, y1 := rank(y)
		return cmp.Or(cmp.Compare(x0, y0), cmp.Compare(x1, y1), cmp.Compare(a.seeds[x], a.seeds[y]), cmp.Compare(x, y))
	})
	for _, m := range order[:extra] {
		q[m]++
	}
	return q
}

// placePrimaries keeps each member's oldest primaries up to its quota and
// gives the rest, in partition order, to members under quota.
func (a *assigner) placePrimaries() {
	n := len(a.names)
	held := make([]int, n)
	led := make([][]int, n)
	for p := range a.parts {
		if m := a.index(a.cur[p].Primary); m >= 0 {
			held[m]++
			led[m] = append(led[m], p)
		}
	}
	a.quota = a.quotas(a.parts, held, nil)
	a.primary = make([]int, a.parts)
	for p := range a.primary {
		a.primary[p] = -1
	}
	load := make([]int, n)
	for m, ps := range led {
		slices.SortFunc(ps, func(x, y int) int {
			return cmp.Or(cmp.Compare(a.cur[x].Since, a.cur[y].Since), cmp.Compare(a.score(y, m, 0), a.score(x, m, 0)))
		})
		for _, p := range ps[:min(len(ps), a.quota[m])] {
			a.primary[p] = m
			load[m]++
		}
	}
	for p := range a.parts {
		if a.primary[p] < 0 {
			a.primary[p] = a.newPrimary(p, load)
			load[a.primary[p]]++
		}
	}
}

// newPrimary picks the primary of a partition whose primary does not stay:
// a member under quota, preferring one with an in-sync copy (the move is a
// switch), then one with a pending copy, then the highest hash. A member
// that took a partition keeps it first in its preference, so the choice
// holds at every step of the migration.
func (a *assigner) newPrimary(p int, load []int) int {
	best, bestHold, bestScore := -1, holdsNothing, uint64(0)
	for m := range a.names {
		if load[m] >= a.quota[m] {
			continue
		}
		h, sc := a.holds(p, m), a.score(p, m, 0)
		if best < 0 || h > bestHold || (h == bestHold && sc > bestScore) {
			best, bestHold, bestScore = m, h, sc
		}
	}
	return best
}

// bpair is a member holding a copy of a partition, a candidate to keep it
// as a backup.
type bpair struct {
	p, m  int
	score uint64
}

// placeBackups keeps current copies as backups while their members are
// under backup quota, as many as fit, then fills the missing backups from
// members under quota.
func (a *assigner) placeBackups(want int) {
	n := len(a.names)
	held := make([]int, n)
	copies := make([][]int, n) // partitions each member holds a copy of, not as their target primary
	pairs := make([]bpair, 0, a.parts*(want+1))
	for p := range a.parts {
		for m := range n {
			if m != a.primary[p] && a.holds(p, m) != holdsNothing {
				held[m]++
				copies[m] = append(copies[m], p)
				pairs = append(pairs, bpair{p, m, a.score(p, m, backupSalt)})
			}
		}
	}
	// The extra backups go to members without an extra primary first:
	// with two members, or with every other member backing up each
	// partition, nothing else fits.
	avoid := make([]bool, n)
	for m := range n {
		avoid[m] = a.quota[m] > a.parts/n
	}
	quota := a.quotas(a.parts*want, held, avoid)
	a.backups = make([][]int, a.parts)
	load := make([]int, n)
	a.keepCopies(pairs, want, quota, load)
	a.augmentCopies(copies, want, quota, load)
	for p := range a.parts {
		for len(a.backups[p]) < want {
			m := a.newBackup(p, load, quota)
			if m < 0 {
				m = a.swapBackup(p, load, quota)
			}
			if m < 0 {
				m = a.overBackup(p, load)
			}
			a.backups[p] = append(a.backups[p], m)
			load[m]++
		}
	}
}

// keepCopies keeps copies as backups in a fixed order (a hash of partition
// and member) while the member is under quota and the partition short of
// backups. Copies a migration adds are the target's, so they fit in at
// every later step without pushing out one kept before.
func (a *assigner) keepCopies(pairs []bpair, want int, quota, load []int) {
	slices.SortFunc(pairs, func(x, y bpair) int {
		return cmp.Or(cmp.Compare(y.score, x.score), cmp.Compare(x.p, y.p), cmp.Compare(x.m, y.m))
	})
	for _, pr := range pairs {
		if load[pr.m] < quota[pr.m] && len(a.backups[pr.p]) < want {
			a.backups[pr.p] = append(a.backups[pr.p], pr.m)
			load[pr.m]++
		}
	}
}

// augmentCopies keeps more copies where the fixed order left a member
// under quota only because the partitions it holds were full: a member
// with room takes a partition it holds from a member that moves on to
// another partition it holds, and so on to a partition short of backups
// (an augmenting path; breadth first, in member and partition order).
func (a *assigner) augmentCopies(copies [][]int, want int, quota, load []int) {
	n := len(a.names)
	for m := range n {
		for load[m] < quota[m] && a.augmentFrom(m, copies, want) {
			load[m]++
		}
	}
}

// augmentFrom finds and applies one augmenting path from member m.
func (a *assigner) augmentFrom(m int, copies [][]int, want int) bool {
	n := len(a.names)
	fromMember := make([]int, a.parts) // member that reaches each partition; -1 unvisited
	for p := range fromMember {
		fromMember[p] = -1
	}
	fromPart := make([]int, n) // partition each member is pushed out of; -1 unvisited
	for i := range fromPart {
		fromPart[i] = -1
	}
	fromPart[m] = a.parts // the root
	queue := []int{m}
	for len(queue) > 0 {
		x := queue[0]
		queue = queue[1:]
		for _, q := range copies[x] {
			if fromMember[q] >= 0 || slices.Contains(a.backups[q], x) {
				continue
			}
			fromMember[q] = x
			if len(a.backups[q]) < want {
				a.applyPath(q, fromMember, fromPart)
				return true
			}
			for _, y := range a.backups[q] {
				if fromPart[y] < 0 {
					fromPart[y] = q
					queue = append(queue, y)
				}
			}
		}
	}
	return false
}

// applyPath adds the path's member to partition q, which pushes out the
// member that reached q's predecessor, back to the root.
func (a *assigner) applyPath(q int, fromMember, fromPart []int) {
	for {
		x := fromMember[q]
		a.backups[q] = append(a.backups[q], x)
		prev := fromPart[x]
		if prev == a.parts {
			return
		}
		a.backups[prev] = slices.DeleteFunc(a.backups[prev], func(y int) bool { return y == x })
		q = prev
	}
}

// canBackup: member m may back up partition p.
func (a *assigner) canBackup(p, m int) bool {
	return m != a.primary[p] && !slices.Contains(a.backups[p], m)
}

// newBackup picks a member under quota for a missing backup of p: the one
// with the most room left, then the highest hash (members holding a copy
// were all considered already). Filling the roomiest first leaves room on
// several members to the end, so the last partitions still find one that
// is not their primary.
func (a *assigner) newBackup(p int, load, quota []int) int {
	best, bestRoom, bestScore := -1, 0, uint64(0)
	for m := range a.names {
		room := quota[m] - load[m]
		if room <= 0 || !a.canBackup(p, m) {
			continue
		}
		if sc := a.score(p, m, backupSalt); best < 0 || room > bestRoom || (room == bestRoom && sc > bestScore) {
			best, bestRoom, bestScore = m, room, sc
		}
	}
	return best
}

// swapBackup handles a partition that only members unable to back it up
// have room for (its own primary, or its backups): a member h backing up
// another partition q moves to p, and a member u with room takes h's place
// at q. It prefers moves onto copies that exist (h holds p, u holds q), so
// that the swap, once its copies exist, is what the keep pass finds. It
// returns h, with load updated for u, or -1 if no swap exists.
func (a *assigner) swapBackup(p int, load, quota []int) int {
	bestCost, bq, bi, bu := 3, -1, -1, -1 // cost: copies made beyond the one p needs
	for q := range a.parts {
		if q == p {
			continue
		}
		for i, h := range a.backups[q] {
			if !a.canBackup(p, h) {
				continue
			}
			for u := range a.names {
				if load[u] >= quota[u] || !a.canBackup(q, u) {
					continue
				}
				// Copies the swap makes (h at p, u at q) less the one
				// it saves (h at q) and the one p needs anyway.
				cost := 0
				if a.holds(p, h) != holdsNothing {
					cost--
				}
				if a.holds(q, u) == holdsNothing {
					cost++
				}
				if a.holds(q, h) == holdsNothing {
					cost--
				}
				if cost < bestCost {
					bestCost, bq, bi, bu = cost, q, i, u
				}
			}
		}
	}
	if bq < 0 {
		return -1
	}
	h := a.backups[bq][bi]
	a.backups[bq][bi] = bu
	load[bu]++
	load[h]--
	return h
}

// overBackup is the last resort: the least loaded member that may back up
// p, over its quota. The balance tests show it is not reached for up to
// ten members.
func (a *assigner) overBackup(p int, load []int) int {
	best := -1
	for m := range a.names {
		if a.canBackup(p, m) && (best < 0 || load[m] < load[best]) {
			best = m
		}
	}
	return best
}
