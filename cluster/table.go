package cluster

import (
	"math"
	"slices"
	"strings"

	"github.com/buraksezer/consistent"
	"github.com/cespare/xxhash/v2"
	"github.com/collocate/grid/internal/wire"
)

// Table functions are pure: no I/O, no clocks, no goroutines. The leader
// calls them; tests call them directly.

type hasher struct{}

func (hasher) Sum64(b []byte) uint64 { return xxhash.Sum64(b) }

type cmember string

func (m cmember) String() string { return string(m) }

// Placement is the layout a table converges on: for each partition the
// desired primary and backups.
type Placement struct {
	Primary []string
	Backups [][]string
}

// Target computes the desired layout for members (sorted, deduplicated) and
// the current table cur (may be nil). Primaries come from consistent
// hashing with bounded loads (load factor 1.25). Backups are placed with
// their own bounded spread: a replica that already holds the partition stays
// while its node is under the bound, the rest go to the least loaded nodes,
// so one node's backups spread over all the others instead of landing on its
// hash-ring successor.
func Target(members []string, partitions, backups int, cur *wire.Table) Placement {
	pl := Placement{Primary: make([]string, partitions), Backups: make([][]string, partitions)}
	if len(members) == 0 || partitions <= 0 {
		return pl
	}
	cms := make([]consistent.Member, len(members))
	for i, m := range members {
		cms[i] = cmember(m)
	}
	ring := consistent.New(cms, consistent.Config{
		PartitionCount:    partitions,
		ReplicationFactor: 40,
		Load:              1.25,
		Hasher:            hasher{},
	})
	for p := range partitions {
		pl.Primary[p] = ring.GetPartitionOwner(p).String()
	}
	want := min(backups, len(members)-1)
	if want <= 0 {
		return pl
	}
	bound := int(math.Ceil(float64(partitions*want) / float64(len(members)) * 1.25))
	load := make(map[string]int, len(members))
	alive := make(map[string]bool, len(members))
	for _, m := range members {
		alive[m] = true
	}
	// Pass 1: keep current replicas as backups where possible.
	for p := range partitions {
		var keep []string
		if cur != nil && p < len(cur.Partitions) {
			cp := cur.Partitions[p]
			cands := append(append([]string{cp.Primary}, cp.Backups...), cp.Pending...)
			for _, n := range cands {
				if len(keep) == want {
					break
				}
				if n == "" || !alive[n] || n == pl.Primary[p] || slices.Contains(keep, n) || load[n] >= bound {
					continue
				}
				keep = append(keep, n)
				load[n]++
			}
		}
		pl.Backups[p] = keep
	}
	// Pass 2: fill the remaining slots from the least loaded nodes.
	for p := range partitions {
		for len(pl.Backups[p]) < want {
			best, bestLoad, bestTie := "", math.MaxInt, uint64(0)
			for _, n := range members {
				if n == pl.Primary[p] || slices.Contains(pl.Backups[p], n) {
					continue
				}
				tie := xxhash.Sum64String(n) ^ uint64(p)*0x9e3779b97f4a7c15
				if load[n] < bestLoad || (load[n] == bestLoad && tie < bestTie) {
					best, bestLoad, bestTie = n, load[n], tie
				}
			}
			if best == "" {
				break
			}
			pl.Backups[p] = append(pl.Backups[p], best)
			load[best]++
		}
	}
	return pl
}

// Clone returns a deep copy of t.
func Clone(t *wire.Table) *wire.Table {
	c := *t
	c.Members = slices.Clone(t.Members)
	c.Partitions = make([]wire.Part, len(t.Partitions))
	for i, p := range t.Partitions {
		c.Partitions[i] = wire.Part{Primary: p.Primary, Backups: slices.Clone(p.Backups), Pending: slices.Clone(p.Pending), Epoch: p.Epoch}
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
	InFlight int // pending replicas after the step
	// AwaitingLease counts partitions whose failed primary may still hold
	// a read lease: promotion waits for it to lapse.
	AwaitingLease int
	// Unavailable counts partitions with no live replica left whose copy
	// may still exist (a failed, not gone, primary): they wait for it.
	Unavailable int
	Converged   bool
}

// Step computes the next table from cur (nil at bootstrap), the live
// members, and the synced reports received since the last step. It returns
// the new table (cur itself, unchanged, if nothing changed). Rules, in order:
//
//  1. Members that are not live leave every replica set.
//  2. A partition whose primary is gone promotes its first in-sync backup
//     (the target primary if it is one) and its epoch grows. With no backup
//     left the partition restarts empty on its target primary: its data is
//     lost (counted in Lost; cannot happen while failures stay within the
//     backup count).
//  3. Synced reports for the current epoch move a pending replica to the
//     in-sync backups.
//  4. A target primary that is an in-sync backup takes over as primary (the
//     old primary stays as a backup, epoch grows).
//  5. Target replicas missing from a partition are added as pending, at most
//     maxInFlight pending at once across the table.
//  6. In-sync backups beyond the wanted count that the target does not want
//     are dropped, as are pending replicas it no longer wants.
//
// Draining members stay in the table and keep serving, but the target leaves
// them out: their primaries move to in-sync backups (rule 4) and their
// replicas are copied elsewhere and then dropped (rules 5 and 6), so that a
// graceful leave hands everything over before the member goes.
func Step(cur *wire.Table, live []wire.Member, partitions, backups int, reports []wire.SyncedReport, maxInFlight int, draining map[string]bool) (*wire.Table, StepResult) {
	return StepLeased(cur, live, partitions, backups, reports, maxInFlight, draining, nil, nil)
}

// StepLeased is Step where leased names failed members whose read lease may
// still be valid: their partitions keep them as primary (and are
// unavailable) until the lease must have lapsed, so that a paused or cut-off
// primary never serves a read after its backup took over.
//
// gone names members whose previous copy is certainly gone (they left, or
// their name came back as a new incarnation, which Step also detects from
// member IDs). A partition whose primary and in-sync backups are all failed
// but not gone stays unavailable with its old primary: membership can
// declare a live node failed (a partition, a pause), and reassigning such a
// partition empty would lose every acknowledged write in it.
func StepLeased(cur *wire.Table, live []wire.Member, partitions, backups int, reports []wire.SyncedReport, maxInFlight int, draining, leased, gone map[string]bool) (*wire.Table, StepResult) {
	var res StepResult
	names := make([]string, 0, len(live))
	alive := make(map[string]bool, len(live))
	reborn := map[string]bool{}
	curIDs := map[string]string{}
	if cur != nil {
		for _, m := range cur.Members {
			curIDs[m.Name] = m.ID
		}
	}
	for _, m := range live {
		if id := curIDs[m.Name]; id != "" && m.ID != "" && id != m.ID {
			// A new incarnation: the replicas the table gives this name
			// belonged to the old one, which is dead.
			reborn[m.Name] = true
		} else {
			alive[m.Name] = true
		}
		if !draining[m.Name] {
			names = append(names, m.Name)
		}
	}
	if len(names) == 0 {
		for _, m := range live {
			names = append(names, m.Name)
		}
	}
	slices.Sort(names)
	var t *wire.Table
	if cur == nil {
		t = &wire.Table{Backups: backups, Partitions: make([]wire.Part, partitions)}
	} else {
		t = Clone(cur)
	}
	members := slices.Clone(live)
	slices.SortFunc(members, func(a, b wire.Member) int { return strings.Compare(a.Name, b.Name) })
	if !slices.Equal(members, t.Members) {
		t.Members = members
		res.Changed = true
	}
	if len(live) == 0 {
		return finish(cur, t, res)
	}
	want := min(backups, len(names)-1)
	tgt := Target(names, partitions, backups, t)

	// 1 and 2: failures.
	for p := range t.Partitions {
		part := &t.Partitions[p]
		nb := filterAlive(part.Backups, alive)
		np := filterAlive(part.Pending, alive)
		if len(nb) != len(part.Backups) || len(np) != len(part.Pending) {
			res.Changed = true
		}
		part.Backups, part.Pending = nb, np
		if part.Primary != "" && (alive[part.Primary] || leased[part.Primary]) {
			if !alive[part.Primary] {
				res.AwaitingLease++
			}
			continue
		}
		switch {
		case len(part.Backups) > 0:
			i := max(0, slices.Index(part.Backups, tgt.Primary[p]))
			part.Primary = part.Backups[i]
			part.Backups = slices.Delete(part.Backups, i, i+1)
			if cur != nil {
				res.Promoted++
			}
		case cur == nil || part.Primary == "" || reborn[part.Primary] || gone[part.Primary]:
			// Bootstrap, or every copy is certainly gone: start empty.
			if cur != nil && part.Primary != "" {
				res.Lost++
			}
			part.Primary = tgt.Primary[p]
			part.Pending = slices.DeleteFunc(part.Pending, func(n string) bool { return n == part.Primary })
		default:
			// The only copy may be on a node membership wrongly thinks dead:
			// stay unavailable until it returns (or is known gone).
			res.Unavailable++
			continue
		}
		res.Changed = true
		part.Epoch++
	}
	// Partitions whose failed primary still holds a lease are left alone
	// until it lapses: no report, switch, migration or drop touches them.
	waiting := func(p int) bool { return !alive[t.Partitions[p].Primary] }
	// 3: synced reports.
	for _, r := range reports {
		if int(r.Partition) < 0 || int(r.Partition) >= len(t.Partitions) || waiting(int(r.Partition)) {
			continue
		}
		part := &t.Partitions[r.Partition]
		if r.Epoch != part.Epoch || !slices.Contains(part.Pending, r.Node) {
			continue
		}
		part.Pending = slices.DeleteFunc(part.Pending, func(n string) bool { return n == r.Node })
		part.Backups = append(part.Backups, r.Node)
		res.Changed = true
	}
	// 4: planned primary moves.
	for p := range t.Partitions {
		if waiting(p) {
			continue
		}
		part := &t.Partitions[p]
		tp := tgt.Primary[p]
		if part.Primary == tp {
			continue
		}
		if i := slices.Index(part.Backups, tp); i >= 0 {
			part.Backups[i] = part.Primary
			part.Primary = tp
			part.Epoch++
			res.Switched++
			res.Changed = true
		}
	}
	// 5: start migrations towards the target.
	inFlight := 0
	for _, part := range t.Partitions {
		inFlight += len(part.Pending)
	}
	for p := range t.Partitions {
		if waiting(p) {
			continue
		}
		part := &t.Partitions[p]
		for _, n := range append([]string{tgt.Primary[p]}, tgt.Backups[p]...) {
			if inFlight >= maxInFlight {
				break
			}
			if n == part.Primary || slices.Contains(part.Backups, n) || slices.Contains(part.Pending, n) {
				continue
			}
			part.Pending = append(part.Pending, n)
			inFlight++
			res.Added++
			res.Changed = true
		}
	}
	// 6: drop what the target no longer wants.
	for p := range t.Partitions {
		if waiting(p) {
			continue
		}
		part := &t.Partitions[p]
		wanted := func(n string) bool { return n == tgt.Primary[p] || slices.Contains(tgt.Backups[p], n) }
		np := slices.DeleteFunc(slices.Clone(part.Pending), func(n string) bool { return !wanted(n) })
		if len(np) != len(part.Pending) {
			res.Dropped += len(part.Pending) - len(np)
			part.Pending = np
			res.Changed = true
		}
		for len(part.Backups) > want {
			i := slices.IndexFunc(part.Backups, func(n string) bool { return !wanted(n) })
			if i < 0 {
				break
			}
			part.Backups = slices.Delete(part.Backups, i, i+1)
			res.Dropped++
			res.Changed = true
		}
	}
	for _, part := range t.Partitions {
		res.InFlight += len(part.Pending)
	}
	res.Converged = Converged(t, names, backups)
	return finish(cur, t, res)
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
// distinct other members, and nothing pending.
func Converged(t *wire.Table, members []string, backups int) bool {
	if t == nil || len(members) == 0 {
		return false
	}
	want := min(backups, len(members)-1)
	for _, p := range t.Partitions {
		if p.Primary == "" || !slices.Contains(members, p.Primary) || len(p.Pending) > 0 || len(p.Backups) != want {
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
