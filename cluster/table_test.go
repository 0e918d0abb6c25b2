package cluster

import (
	"fmt"
	"slices"
	"testing"

	"github.com/collocate/grid/internal/wire"
)

func members(names ...string) []wire.Member {
	out := make([]wire.Member, len(names))
	for i, n := range names {
		out[i] = wire.Member{Name: n, RPC: n + ":1"}
	}
	return out
}

// converge steps the table, reporting every pending replica as synced, until
// it stops changing.
func converge(t *testing.T, cur *wire.Table, live []wire.Member, parts, backups int) *wire.Table {
	t.Helper()
	for i := 0; i < 100; i++ {
		var reps []wire.SyncedReport
		if cur != nil {
			for p := range cur.Partitions {
				reps = append(reps, reportsFor(cur, p)...)
			}
		}
		next, res := Step(cur, live, parts, backups, reps, 64, nil)
		if !res.Changed {
			return cur
		}
		if res.Lost > 0 {
			t.Fatalf("step %d lost %d partitions", i, res.Lost)
		}
		if cur != nil && next.Version != cur.Version+1 {
			t.Fatalf("version %d after %d", next.Version, cur.Version)
		}
		cur = next
	}
	t.Fatal("table did not converge in 100 steps")
	return nil
}

// reportsFor is what a partition's primary reports once every replica
// acknowledged its snapshot: its pending replicas are filled and its former
// primary is fenced.
func reportsFor(t *wire.Table, p int) []wire.SyncedReport {
	var reps []wire.SyncedReport
	part := t.Partitions[p]
	for _, n := range part.Pending {
		reps = append(reps, wire.SyncedReport{Partition: int32(p), Epoch: part.Epoch, Node: n, Version: t.Version})
	}
	if part.Former != "" {
		reps = append(reps, wire.SyncedReport{Partition: int32(p), Epoch: part.Epoch, Node: part.Former, Version: t.Version})
	}
	return reps
}

func names(ms []wire.Member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Name)
	}
	return out
}

func TestStepConverges(t *testing.T) {
	live := members("a", "b", "c")
	tab := converge(t, nil, live, 271, 1)
	if !Converged(tab, names(live), 1) {
		t.Fatal("not converged")
	}
	primaries := map[string]int{}
	backups := map[string]int{}
	for p, part := range tab.Partitions {
		if len(part.Backups) != 1 || part.Backups[0] == part.Primary {
			t.Fatalf("partition %d: %+v", p, part)
		}
		primaries[part.Primary]++
		backups[part.Backups[0]]++
	}
	for _, n := range []string{"a", "b", "c"} {
		if primaries[n] < 60 || primaries[n] > 115 || backups[n] < 60 || backups[n] > 115 {
			t.Fatalf("unbalanced: primaries %v backups %v", primaries, backups)
		}
	}
}

func TestBackupsSpreadAcrossNodes(t *testing.T) {
	live := members("a", "b", "c", "d", "e")
	tab := converge(t, nil, live, 271, 1)
	// The backups of a's partitions must not all sit on one node.
	holders := map[string]int{}
	for _, part := range tab.Partitions {
		if part.Primary == "a" {
			holders[part.Backups[0]]++
		}
	}
	if len(holders) < 3 {
		t.Fatalf("backups of a's partitions are on %v: one node would take all of a's load", holders)
	}
}

func TestStepPromotesBackupOnFailure(t *testing.T) {
	live := members("a", "b", "c")
	tab := converge(t, nil, live, 271, 1)
	next, res := Step(tab, members("a", "c"), 271, 1, nil, 64, nil)
	if res.Lost != 0 || res.Promoted == 0 {
		t.Fatalf("result %+v", res)
	}
	for p, part := range next.Partitions {
		old := tab.Partitions[p]
		if part.Primary == "b" || slices.Contains(part.Backups, "b") {
			t.Fatalf("partition %d still uses dead b: %+v", p, part)
		}
		if old.Primary == "b" {
			if part.Primary != old.Backups[0] {
				t.Fatalf("partition %d: primary %s, want promoted backup %s", p, part.Primary, old.Backups[0])
			}
			if part.Epoch != old.Epoch+1 {
				t.Fatalf("partition %d: epoch %d, want %d", p, part.Epoch, old.Epoch+1)
			}
		}
	}
	final := converge(t, next, members("a", "c"), 271, 1)
	if !Converged(final, []string{"a", "c"}, 1) {
		t.Fatal("did not restore backups after failure")
	}
}

func TestJoinMovesAboutOneNth(t *testing.T) {
	for _, n := range []int{3, 4} {
		var ns []string
		for i := range n {
			ns = append(ns, fmt.Sprintf("node-%d", i))
		}
		before := converge(t, nil, members(ns...), 271, 1)
		after := converge(t, before, members(append(ns, "new")...), 271, 1)
		moved := 0
		for p := range before.Partitions {
			if before.Partitions[p].Primary != after.Partitions[p].Primary {
				moved++
			}
		}
		ideal := 271.0 / float64(n+1)
		t.Logf("%d->%d members: %d primaries moved (ideal %.0f)", n, n+1, moved, ideal)
		if float64(moved) > ideal*1.6 {
			t.Fatalf("%d->%d: %d primaries moved, ideal %.0f", n, n+1, moved, ideal)
		}
	}
}

func TestStepBadReportsIgnored(t *testing.T) {
	tab := converge(t, nil, members("a", "b"), 16, 1)
	next, res := Step(tab, members("a", "b"), 16, 1, []wire.SyncedReport{{Partition: -1}, {Partition: 99}, {Partition: 0, Epoch: 999, Node: "zz"}}, 64, nil)
	if res.Changed || next != tab {
		t.Fatalf("bad reports changed the table: %+v", res)
	}
}

func TestDrainingMemberHandsEverythingOver(t *testing.T) {
	live := members("a", "b", "c")
	tab := converge(t, nil, live, 271, 1)
	drain := map[string]bool{"b": true}
	for i := 0; i < 50; i++ {
		var reps []wire.SyncedReport
		for p := range tab.Partitions {
			reps = append(reps, reportsFor(tab, p)...)
		}
		next, res := Step(tab, live, 271, 1, reps, 64, drain)
		if res.Lost > 0 || res.Promoted > 0 {
			t.Fatalf("drain lost or failed over: %+v", res)
		}
		if !res.Changed {
			break
		}
		tab = next
	}
	for p, part := range tab.Partitions {
		if part.Primary == "b" || slices.Contains(part.Backups, "b") || len(part.Backups) != 1 {
			t.Fatalf("partition %d after drain: %+v", p, part)
		}
	}
	if !Converged(tab, []string{"a", "c"}, 1) {
		t.Fatal("not converged without b")
	}
}

func TestPromotionWaitsForLease(t *testing.T) {
	tab := converge(t, nil, members("a", "b", "c"), 64, 1)
	leased := map[string]bool{"b": true}
	next, res := Next(StepInput{Cur: tab, Live: members("a", "c"), Partitions: 64, Backups: 1, MaxInFlight: 64, Leased: leased})
	if res.Promoted != 0 || res.AwaitingLease == 0 {
		t.Fatalf("promoted while b's lease may be valid: %+v", res)
	}
	for p, part := range next.Partitions {
		if tab.Partitions[p].Primary == "b" && (part.Primary != "b" || part.Epoch != tab.Partitions[p].Epoch) {
			t.Fatalf("partition %d moved off leased b: %+v", p, part)
		}
	}
	// Once the lease lapsed, the backups take over.
	final, res := Next(StepInput{Cur: next, Live: members("a", "c"), Partitions: 64, Backups: 1, MaxInFlight: 64})
	if res.Promoted == 0 {
		t.Fatalf("no promotion after the lease lapsed: %+v", res)
	}
	for p, part := range final.Partitions {
		if part.Primary == "b" {
			t.Fatalf("partition %d still on b", p)
		}
	}
}

// Two members failing at once (a partition, a membership blip) must never
// make the authority restart partitions empty while their only copies may
// be alive: they stay unavailable until a replica returns.
func TestNoDataLossWhenPrimaryAndBackupFail(t *testing.T) {
	tab := converge(t, nil, members("a", "b", "c"), 64, 1)
	next, res := Step(tab, members("a"), 64, 1, nil, 64, nil)
	if res.Lost != 0 {
		t.Fatalf("declared %d partitions lost on a membership verdict", res.Lost)
	}
	if res.Unavailable == 0 {
		t.Fatal("expected partitions held unavailable")
	}
	for p, part := range next.Partitions {
		old := tab.Partitions[p]
		if old.Primary != "a" && old.Backups[0] != "a" && (part.Primary != old.Primary || part.Epoch != old.Epoch) {
			t.Fatalf("partition %d with no live copy was reassigned: %+v -> %+v", p, old, part)
		}
	}
	// b and c come back: the kept partitions are served by their old copies.
	back := converge(t, next, members("a", "b", "c"), 64, 1)
	if !Converged(back, []string{"a", "b", "c"}, 1) {
		t.Fatal("not converged after the members returned")
	}
}

// A member restarted with the same name is a new, empty incarnation: its
// predecessor's partitions are promoted from backups, never handed to it.
func TestRestartedIncarnationIsNotItsPredecessor(t *testing.T) {
	live := []wire.Member{{Name: "a", RPC: "a:1", ID: "a-1"}, {Name: "b", RPC: "b:1", ID: "b-1"}, {Name: "c", RPC: "c:1", ID: "c-1"}}
	tab := converge(t, nil, live, 64, 1)
	live[1].ID = "b-2" // b restarted before anyone noticed it died
	next, res := Step(tab, live, 64, 1, nil, 64, nil)
	if res.Lost != 0 || res.Promoted == 0 {
		t.Fatalf("result %+v", res)
	}
	for p, part := range next.Partitions {
		if part.Primary == "b" || slices.Contains(part.Backups, "b") {
			t.Fatalf("partition %d still gives b's old replica to its new incarnation: %+v", p, part)
		}
	}
}

// A planned move (a drain or a join) must never drop the old primary in the
// step that moved primacy away from it: it may serve reads under its lease
// until the new primary fenced it, so it stays an in-sync backup (Former)
// until a report says it was fenced.
func TestPlannedMoveKeepsFormerUntilFenced(t *testing.T) {
	for _, tc := range []struct {
		name  string
		live  []wire.Member
		drain map[string]bool
	}{
		{"drain", members("a", "b", "c"), map[string]bool{"b": true}},
		{"join", members("a", "b", "c", "d"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := converge(t, nil, members("a", "b", "c"), 64, 1)
			switched := 0
			for i := 0; i < 60; i++ {
				// Report pending replicas filled, but no former fenced
				// before the step after its switch.
				var reps []wire.SyncedReport
				for p := range tab.Partitions {
					reps = append(reps, reportsFor(tab, p)...)
				}
				next, res := Step(tab, tc.live, 64, 1, reps, 64, tc.drain)
				if !res.Changed {
					break
				}
				for p, part := range next.Partitions {
					old := tab.Partitions[p]
					if part.Primary == old.Primary {
						continue
					}
					switched++
					if !slices.Contains(part.Backups, old.Primary) || part.Former != old.Primary {
						t.Fatalf("step %d: partition %d moved %s -> %s and dropped the unfenced old primary: %+v", i, p, old.Primary, part.Primary, part)
					}
				}
				tab = next
			}
			if switched == 0 {
				t.Fatal("no planned move happened")
			}
			live := names(tc.live)
			if tc.drain != nil {
				live = []string{"a", "c"}
			}
			if !Converged(tab, live, 1) {
				t.Fatalf("not converged: %+v", tab.Partitions)
			}
		})
	}
}

// A former primary that fails before it was fenced stays counted while its
// lease may be valid, and leaves once the lease lapsed.
func TestFailedFormerHeldWhileLeased(t *testing.T) {
	tab := converge(t, nil, members("a", "b", "c"), 64, 1)
	drain := map[string]bool{"b": true}
	next, res := Step(tab, members("a", "b", "c"), 64, 1, nil, 64, drain)
	if res.Switched == 0 {
		t.Fatalf("no switch: %+v", res)
	}
	held, res := Next(StepInput{Cur: next, Live: members("a", "c"), Partitions: 64, Backups: 1, MaxInFlight: 64, Draining: drain, Leased: map[string]bool{"b": true}})
	n := 0
	for p, part := range held.Partitions {
		if next.Partitions[p].Former == "b" {
			n++
			if part.Former != "b" || !slices.Contains(part.Backups, "b") {
				t.Fatalf("partition %d dropped leased former b: %+v", p, part)
			}
		}
	}
	if n == 0 {
		t.Fatal("no former b")
	}
	gone, _ := Next(StepInput{Cur: held, Live: members("a", "c"), Partitions: 64, Backups: 1, MaxInFlight: 64})
	for p, part := range gone.Partitions {
		if part.Former == "b" || slices.Contains(part.Backups, "b") || part.Primary == "b" {
			t.Fatalf("partition %d keeps failed b after its lease: %+v", p, part)
		}
	}
}

// A report about a predecessor incarnation (the same name, restarted empty)
// must not make its successor an in-sync backup.
func TestReportOfPredecessorIgnored(t *testing.T) {
	live := []wire.Member{{Name: "a", RPC: "a:1", ID: "a-1"}, {Name: "b", RPC: "b:1", ID: "b-1"}, {Name: "c", RPC: "c:1", ID: "c-1"}}
	tab := converge(t, nil, live, 16, 1)
	live[1].ID = "b-2"
	next, _ := Step(tab, live, 16, 1, nil, 64, nil)
	var reps []wire.SyncedReport
	for p, part := range next.Partitions {
		if slices.Contains(part.Pending, "b") {
			reps = append(reps, wire.SyncedReport{Partition: int32(p), Epoch: part.Epoch, Node: "b", ID: "b-1", Version: next.Version})
		}
	}
	if len(reps) == 0 {
		t.Fatal("b's new incarnation got nothing pending")
	}
	after, _ := Step(next, live, 16, 1, reps, 64, nil)
	for p, part := range after.Partitions {
		if slices.Contains(part.Backups, "b") {
			t.Fatalf("partition %d: a report about b-1 made b-2 in-sync: %+v", p, part)
		}
	}
	for i := range reps {
		reps[i].ID = "b-2"
	}
	ok, _ := Step(next, live, 16, 1, reps, 64, nil)
	in := 0
	for _, part := range ok.Partitions {
		if slices.Contains(part.Backups, "b") {
			in++
		}
	}
	if in == 0 {
		t.Fatal("reports about b-2 were ignored")
	}
}

// A member that failed and then restarted under the same name is a new,
// empty incarnation even though the tables in between no longer listed it
// as live: partitions that waited for its lease promote a backup, and a
// partition whose only copy it held is declared lost, never handed to the
// empty successor at the same epoch.
func TestRestartAfterFailureIsNewIncarnation(t *testing.T) {
	ids := func(ids ...string) []wire.Member {
		var out []wire.Member
		for _, id := range ids {
			out = append(out, wire.Member{Name: id[:1], RPC: id[:1] + ":1", ID: id})
		}
		return out
	}
	for _, backups := range []int{1, 0} {
		tab := converge(t, nil, ids("a-1", "b-1", "c-1"), 16, backups)
		// b fails; its lease may still be valid, so its partitions wait.
		held, _ := Next(StepInput{Cur: tab, Live: ids("a-1", "c-1"), Partitions: 16, Backups: backups, MaxInFlight: 16, Leased: map[string]bool{"b": true}})
		// b restarts, empty, before its lease lapsed.
		after, res := Next(StepInput{Cur: held, Live: ids("a-1", "b-2", "c-1"), Partitions: 16, Backups: backups, MaxInFlight: 16})
		n := 0
		for p, part := range after.Partitions {
			old := tab.Partitions[p]
			if old.Primary != "b" {
				continue
			}
			n++
			if part.Epoch == old.Epoch || (part.Primary == "b" && !part.Fresh) {
				t.Fatalf("backups=%d: partition %d handed b-1's primacy to the empty b-2: %+v -> %+v", backups, p, old, part)
			}
		}
		if n == 0 {
			t.Fatalf("backups=%d: b led no partition", backups)
		}
		if backups == 0 && res.Lost != n {
			t.Fatalf("backups=0: lost %d of b's %d partitions: %+v", res.Lost, n, res)
		}
	}
}

// When a primary and its in-sync backup fail together, the backup's copy
// is complete (nothing commits without it). If the primary then comes back
// empty, the partition must wait for the backup, not restart empty: its
// copy is not certainly gone.
func TestFailedBackupKeptWhilePrimaryDown(t *testing.T) {
	ids := func(ids ...string) []wire.Member {
		var out []wire.Member
		for _, id := range ids {
			out = append(out, wire.Member{Name: id[:1], RPC: id[:1] + ":1", ID: id})
		}
		return out
	}
	tab := converge(t, nil, ids("a-1", "b-1", "c-1"), 32, 1)
	var bc []int // partitions led by b with their only backup on c
	for p, part := range tab.Partitions {
		if part.Primary == "b" && slices.Equal(part.Backups, []string{"c"}) {
			bc = append(bc, p)
		}
	}
	if len(bc) == 0 {
		t.Fatal("no partition led by b and backed up by c")
	}
	down, _ := Next(StepInput{Cur: tab, Live: ids("a-1"), Partitions: 32, Backups: 1, MaxInFlight: 32})
	// b restarts empty; c's copy may still come back.
	reborn, res := Next(StepInput{Cur: down, Live: ids("a-1", "b-2"), Partitions: 32, Backups: 1, MaxInFlight: 32})
	for _, p := range bc {
		if part := reborn.Partitions[p]; part.Fresh || part.Primary != "c" {
			t.Fatalf("partition %d restarted empty while c may hold its copy (lost %d): %+v", p, res.Lost, part)
		}
	}
	// c returns: it serves what it held.
	back := converge(t, reborn, ids("a-1", "b-2", "c-1"), 32, 1)
	for _, p := range bc {
		if part := back.Partitions[p]; part.Fresh || part.Epoch <= tab.Partitions[p].Epoch {
			t.Fatalf("partition %d after c returned: %+v", p, part)
		}
	}
}

// A fill report sent under a table older than the one that last added the
// replica as pending describes an earlier fill (before the replica was
// dropped and re-added): writes acknowledged in between may be missing, so
// it must not make the replica in-sync. Found by the model test.
func TestStaleFillReportAfterReAddIgnored(t *testing.T) {
	tab := converge(t, nil, members("a", "b", "c"), 8, 1)
	cur := Clone(tab)
	cur.Version = 20
	part := &cur.Partitions[0]
	r := part.Backups[0] // the target's backup, dropped and re-added
	part.Backups = nil
	part.Pending = []string{r}
	part.PendingSince = map[string]uint64{r: 18}
	stale := wire.SyncedReport{Partition: 0, Epoch: part.Epoch, Node: r, Version: 17}
	next, _ := Step(cur, members("a", "b", "c"), 8, 1, []wire.SyncedReport{stale}, 64, nil)
	if slices.Contains(next.Partitions[0].Backups, r) {
		t.Fatalf("a report from table 17 made %s in-sync; it was re-added at 18", r)
	}
	fresh := stale
	fresh.Version = 18
	next, _ = Step(cur, members("a", "b", "c"), 8, 1, []wire.SyncedReport{fresh}, 64, nil)
	if !slices.Contains(next.Partitions[0].Backups, r) || next.Partitions[0].PendingSince != nil {
		t.Fatalf("a current report was ignored: %+v", next.Partitions[0])
	}
}
