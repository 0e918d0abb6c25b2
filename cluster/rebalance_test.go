package cluster

// End-to-end rebalancing through Next: a converged table for N members is
// grown from one member by joins, then one member joins, fails or drains,
// and Next runs with simulated fill reports until nothing changes. Movement
// is counted between the first and the last table; balance on the last.
//
// GRID_REBALANCE_TABLE=1 prints the table of docs/benchmarks.md
// ("Rebalancing: movement and balance"):
//
//	GRID_REBALANCE_TABLE=1 go test -count=1 -run TestRebalanceTable ./cluster

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/collocate/grid/internal/wire"
)

const rebalanceParts = 271

// rbMember is member i (1-based) of a rebalancing scenario. Names do not
// sort in joining order.
func rbMember(i int) wire.Member {
	fruit := []string{"kiwi", "apple", "mango", "fig", "date", "lime", "pear", "plum", "yuzu", "cherry", "banana", "olive"}
	name := fmt.Sprintf("%s-%d", fruit[(i-1)%len(fruit)], i)
	return wire.Member{Name: name, RPC: name + ":1", ID: name + "-1"}
}

func rbMembers(n int) []wire.Member {
	out := make([]wire.Member, n)
	for i := range out {
		out[i] = rbMember(i + 1)
	}
	return out
}

// rbRun is one membership change driven through Next to the end.
type rbRun struct {
	kind    string // "join", "fail", "drain"
	from    int    // members before the change
	backups int
	leaving string

	start, end *wire.Table
	steps      int
	added      int // pending replicas Next started
	switched   int

	primMoved    int // partitions whose primary differs between start and end
	backupCopies int // end backups that held no copy of their partition at start
	allCopies    int // end replicas (any role) that held no copy at start
	movedOther   int // primaries moved that the leaving member did not lead
	leavingPrim  int // primaries the leaving member led at start
	leavingHeld  int // replicas (any role) the leaving member held at start

	prim, back []int // per remaining member at the end, in name order
	want       int   // backups per partition at the end
}

// rbSettle runs Next from cur, reporting every pending replica filled and
// every former primary fenced (with the member's incarnation id), until the
// table stops changing.
func rbSettle(t *testing.T, r *rbRun, cur *wire.Table, live []wire.Member, backups, maxInFlight int, draining map[string]bool) *wire.Table {
	t.Helper()
	ids := map[string]string{}
	for _, m := range live {
		ids[m.Name] = m.ID
	}
	for i := 0; i < 2000; i++ {
		var reps []wire.SyncedReport
		if cur != nil {
			for p, part := range cur.Partitions {
				for _, n := range part.Pending {
					reps = append(reps, wire.SyncedReport{Partition: int32(p), Epoch: part.Epoch, Node: n, ID: ids[n], Version: cur.Version})
				}
				if part.Former != "" {
					reps = append(reps, wire.SyncedReport{Partition: int32(p), Epoch: part.Epoch, Node: part.Former, ID: ids[part.Former], Version: cur.Version})
				}
			}
		}
		next, res := Next(StepInput{Cur: cur, Live: live, Partitions: rebalanceParts, Backups: backups, Reports: reps, MaxInFlight: maxInFlight, Draining: draining})
		if res.Lost > 0 {
			t.Fatalf("step %d lost %d partitions", i, res.Lost)
		}
		if !res.Changed {
			return cur
		}
		if r != nil {
			r.steps++
			r.added += res.Added
			r.switched += res.Switched
		}
		cur = next
	}
	t.Fatal("table did not settle in 2000 steps")
	return nil
}

// holders is every member holding a copy of the partition (no pending).
func holders(part wire.Part) []string {
	return append([]string{part.Primary}, part.Backups...)
}

// measure fills r's counts from r.start and r.end for the members names.
func (r *rbRun) measure(names []string) {
	idx := map[string]int{}
	for i, n := range names {
		idx[n] = i
	}
	r.prim, r.back = make([]int, len(names)), make([]int, len(names))
	r.want = min(r.backups, len(names)-1)
	for p := range r.start.Partitions {
		s, e := r.start.Partitions[p], r.end.Partitions[p]
		if s.Primary == r.leaving {
			r.leavingPrim++
		}
		if slices.Contains(holders(s), r.leaving) {
			r.leavingHeld++
		}
		if s.Primary != e.Primary {
			r.primMoved++
			if s.Primary != r.leaving {
				r.movedOther++
			}
		}
		for _, n := range holders(e) {
			if !slices.Contains(holders(s), n) {
				r.allCopies++
				if n != e.Primary {
					r.backupCopies++
				}
			}
		}
		r.prim[idx[e.Primary]]++
		for _, b := range e.Backups {
			r.back[idx[b]]++
		}
	}
}

// balanced: every count is within 5% of the mean, or is its floor or ceil.
func balanced(counts []int) bool {
	total := 0
	for _, c := range counts {
		total += c
	}
	mean := float64(total) / float64(len(counts))
	for _, c := range counts {
		f := float64(c)
		if math.Abs(f-mean) > 0.05*mean && (f < math.Floor(mean) || f > math.Ceil(mean)) {
			return false
		}
	}
	return true
}

func maxOverMean(counts []int) float64 {
	total, hi := 0, 0
	for _, c := range counts {
		total += c
		hi = max(hi, c)
	}
	if total == 0 {
		return 1
	}
	return float64(hi) * float64(len(counts)) / float64(total)
}

// idealPrim and idealBackups are what the change must move at least: a
// joining member's share, or what the leaving member held.
func (r *rbRun) idealPrim() float64 {
	if r.kind == "join" {
		return float64(rebalanceParts) / float64(r.from+1)
	}
	return float64(r.leavingPrim)
}

func (r *rbRun) idealBackups() float64 {
	if r.kind == "join" {
		return float64(r.want*rebalanceParts) / float64(r.from+1)
	}
	// Each partition the leaver held lost a replica: it must be made
	// again unless the replica count fell with the member count.
	return float64(r.leavingHeld * max(0, 1+r.want-min(r.backups, r.from-1)))
}

// idealCopies is the fewest copies the change needs: the joining member's
// share of primaries and backups, or the replicas the leaver held.
func (r *rbRun) idealCopies() float64 {
	if r.kind == "join" {
		return float64((1+r.want)*rebalanceParts) / float64(r.from+1)
	}
	return r.idealBackups()
}

// rebalanceRuns grows a table from 1 to maxN members by joins (measuring
// each join), and from each converged size makes every member fail and
// drain in turn (measuring each leave).
func rebalanceRuns(t *testing.T, backups, maxN, maxInFlight int) []*rbRun {
	t.Helper()
	var runs []*rbRun
	cur := rbSettle(t, nil, nil, rbMembers(1), backups, maxInFlight, nil)
	for n := 2; n <= maxN; n++ {
		r := &rbRun{kind: "join", from: n - 1, backups: backups, start: cur}
		r.end = rbSettle(t, r, cur, rbMembers(n), backups, maxInFlight, nil)
		r.measure(names(rbMembers(n)))
		runs = append(runs, r)
		cur = r.end
		for _, kind := range []string{"fail", "drain"} {
			for _, leaving := range rbMembers(n) {
				r := &rbRun{kind: kind, from: n, backups: backups, start: cur, leaving: leaving.Name}
				rest := slices.DeleteFunc(rbMembers(n), func(m wire.Member) bool { return m.Name == leaving.Name })
				if kind == "fail" {
					r.end = rbSettle(t, r, cur, rest, backups, maxInFlight, nil)
				} else {
					r.end = rbSettle(t, r, cur, rbMembers(n), backups, maxInFlight, map[string]bool{leaving.Name: true})
				}
				r.measure(names(rest))
				runs = append(runs, r)
			}
		}
	}
	return runs
}

func (r *rbRun) String() string {
	what := fmt.Sprintf("%s %d->%d", r.kind, r.from, r.from+1)
	if r.kind != "join" {
		what = fmt.Sprintf("%s of %s %d->%d", r.kind, r.leaving, r.from, r.from-1)
	}
	return fmt.Sprintf("backups=%d %s: primaries moved %d (ideal %.1f, %d not the leaver's), backup copies %d (ideal %.1f), all copies %d, pending added %d, max/mean primaries %.3f backups %.3f",
		r.backups, what, r.primMoved, r.idealPrim(), r.movedOther, r.backupCopies, r.idealBackups(), r.allCopies, r.added, maxOverMean(r.prim), maxOverMean(r.back))
}

// check asserts the requirement of issue 16 part 3 on one run.
func (r *rbRun) check(t *testing.T) {
	t.Helper()
	share := float64(rebalanceParts) / float64(r.from)
	if r.kind == "join" {
		share = float64(rebalanceParts) / float64(r.from+1)
	}
	if float64(r.primMoved) > 1.05*share {
		t.Errorf("%v: more than 1.05x the share of %.1f primaries moved", r, share)
	}
	switch r.kind {
	case "join":
		if float64(r.backupCopies) > 1.05*r.idealBackups() {
			t.Errorf("%v: more than 1.05x the ideal backup copies", r)
		}
	default:
		if r.movedOther > 0 {
			t.Errorf("%v: a leave moved primaries the leaving member did not lead", r)
		}
		if float64(r.allCopies) > r.idealBackups() {
			t.Errorf("%v: a leave made more copies than the %.0f replicas the leaving member held", r, r.idealBackups())
		}
	}
	if r.added != r.allCopies {
		t.Errorf("%v: %d copies started for %d kept: the target changed during the migration", r, r.added, r.allCopies)
	}
	if !balanced(r.prim) || !balanced(r.back) {
		t.Errorf("%v: unbalanced: primaries %v backups %v", r, r.prim, r.back)
	}
}

// TestRebalanceMovesOnlyItsShareAndBalances: a join of the Nth member moves
// at most 1.05x its share of primaries and backup copies, a leave (failure
// or drain) moves only the leaving member's partitions and copies only what
// it held, no copy is started and thrown away, and afterwards every member
// holds within 5% of the mean or within one partition, for N from 2 to 10.
func TestRebalanceMovesOnlyItsShareAndBalances(t *testing.T) {
	for _, tc := range []struct{ backups, maxInFlight int }{{1, 64}, {2, 64}, {1, 4}} {
		t.Run(fmt.Sprintf("backups=%d,maxInFlight=%d", tc.backups, tc.maxInFlight), func(t *testing.T) {
			for _, r := range rebalanceRuns(t, tc.backups, 10, tc.maxInFlight) {
				if tc.backups == 2 && (r.kind == "join" && r.from < 2 || r.kind != "join" && r.from < 3) {
					continue // backups=2 is asked of three members and more
				}
				r.check(t)
			}
		})
	}
}

// TestRebalanceTable prints the movement and balance table of
// docs/benchmarks.md when GRID_REBALANCE_TABLE=1.
func TestRebalanceTable(t *testing.T) {
	if os.Getenv("GRID_REBALANCE_TABLE") == "" {
		t.Skip("GRID_REBALANCE_TABLE=1 prints the table")
	}
	var b strings.Builder
	for _, backups := range []int{1, 2} {
		fmt.Fprintf(&b, "\nbackups=%d (MaxInFlight 64; leaves: the worst member of each size)\n\n", backups)
		b.WriteString("| change | primaries moved (ideal) | backup copies (ideal) | copies started (ideal) | max/mean primaries | max/mean backups |\n")
		b.WriteString("|---|---|---|---|---|---|\n")
		runs := rebalanceRuns(t, backups, 10, 64)
		for _, kind := range []string{"join", "fail", "drain"} {
			for n := 2; n <= 10; n++ {
				var worst *rbRun
				for _, r := range runs {
					if r.kind != kind || (kind == "join" && r.from != n-1) || (kind != "join" && r.from != n) {
						continue
					}
					if worst == nil || rbWorse(r, worst) {
						worst = r
					}
				}
				what := fmt.Sprintf("join %d->%d", n-1, n)
				if kind != "join" {
					what = fmt.Sprintf("%s %d->%d", kind, n, n-1)
				}
				fmt.Fprintf(&b, "| %s | %d (%.1f) | %d (%.1f) | %d (%.1f) | %.3f | %.3f |\n", what, worst.primMoved, worst.idealPrim(),
					worst.backupCopies, worst.idealBackups(), worst.added, worst.idealCopies(), maxOverMean(worst.prim), maxOverMean(worst.back))
			}
		}
	}
	fmt.Print(b.String())
}

// rbWorse orders runs by excess movement, then by imbalance.
func rbWorse(a, b *rbRun) bool {
	ea := float64(a.primMoved)/a.idealPrim() + float64(a.added)/max(1, a.idealCopies())
	eb := float64(b.primMoved)/b.idealPrim() + float64(b.added)/max(1, b.idealCopies())
	if ea != eb {
		return ea > eb
	}
	return maxOverMean(a.prim)+maxOverMean(a.back) > maxOverMean(b.prim)+maxOverMean(b.back)
}

// BenchmarkNextStep10 is one step of Next with 10 members and 1 backup: on
// a converged table (the leader's every step when nothing changes), and on
// the first step of a join of the 10th member.
func BenchmarkNextStep10(b *testing.B) {
	t := &testing.T{}
	nine := rbSettle(t, nil, nil, rbMembers(1), 1, 64, nil)
	for n := 2; n <= 9; n++ {
		nine = rbSettle(t, nil, nine, rbMembers(n), 1, 64, nil)
	}
	ten := rbSettle(t, nil, nine, rbMembers(10), 1, 64, nil)
	for _, bc := range []struct {
		name string
		cur  *wire.Table
	}{{"converged", ten}, {"join", nine}} {
		b.Run(bc.name, func(b *testing.B) {
			in := StepInput{Cur: bc.cur, Live: rbMembers(10), Partitions: rebalanceParts, Backups: 1, MaxInFlight: 64}
			b.ReportAllocs()
			for b.Loop() {
				Next(in)
			}
		})
	}
}
