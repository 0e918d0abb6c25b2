package cluster

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/collocate/grid/internal/wire"
)

// randomTable is a table in any state a cluster may leave: primaries and
// copies on members and on names that are gone, partitions without a
// primary, pending copies, arbitrary Since.
func randomTable(rng *rand.Rand, pool []string, parts int) *wire.Table {
	t := &wire.Table{Partitions: make([]wire.Part, parts)}
	for p := range t.Partitions {
		perm := rng.Perm(len(pool))
		part := &t.Partitions[p]
		if rng.IntN(8) > 0 {
			part.Primary = pool[perm[0]]
		}
		nb, np := rng.IntN(3), rng.IntN(2)
		for _, i := range perm[1:min(len(perm), 1+nb)] {
			part.Backups = append(part.Backups, pool[i])
		}
		for _, i := range perm[min(len(perm), 1+nb):min(len(perm), 1+nb+np)] {
			part.Pending = append(part.Pending, pool[i])
		}
		part.Since = uint64(rng.IntN(5))
	}
	return t
}

// checkPlacement asserts a placement is valid and balanced: every partition
// has a member as primary and want distinct other members as backups, and
// every member holds floor or ceil of the mean of primaries and backups.
func checkPlacement(t *testing.T, what string, members []string, parts, backups int, pl Placement) {
	t.Helper()
	want := min(backups, len(members)-1)
	prim, back := map[string]int{}, map[string]int{}
	for p := range parts {
		if !slices.Contains(members, pl.Primary[p]) {
			t.Fatalf("%s: partition %d: primary %q is not a member", what, p, pl.Primary[p])
		}
		prim[pl.Primary[p]]++
		bs := pl.Backups[p]
		if len(bs) != want {
			t.Fatalf("%s: partition %d: backups %v, want %d", what, p, bs, want)
		}
		for i, b := range bs {
			if !slices.Contains(members, b) || b == pl.Primary[p] || slices.Contains(bs[:i], b) {
				t.Fatalf("%s: partition %d: primary %s, backups %v", what, p, pl.Primary[p], bs)
			}
			back[b]++
		}
	}
	n := len(members)
	for _, m := range members {
		if c := prim[m]; c < parts/n || c > (parts+n-1)/n {
			t.Fatalf("%s: %s leads %d of %d partitions over %d members: %v", what, m, c, parts, n, prim)
		}
		if c := back[m]; c < parts*want/n || c > (parts*want+n-1)/n {
			t.Fatalf("%s: %s backs up %d of %d over %d members: %v", what, m, c, parts*want, n, back)
		}
	}
}

// TestTargetBalancedFromAnyTable: from any current table, Target gives a
// valid placement with every member within floor/ceil of the mean for
// primaries and backups, the same placement every time, and a placement
// that is its own target once the table reaches it (a converged cluster
// moves nothing).
func TestTargetBalancedFromAnyTable(t *testing.T) {
	rng := rand.New(rand.NewPCG(16, 3))
	pool := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "gone1", "gone2"}
	runs := 400
	if testing.Short() {
		runs = 80
	}
	for run := range runs {
		n := 1 + rng.IntN(12)
		members := slices.Sorted(slices.Values(rng.Perm(12)[:n]))
		names := make([]string, n)
		for i, m := range members {
			names[i] = pool[m]
		}
		parts := []int{1, 7, 16, 64, 271}[rng.IntN(5)]
		backups := rng.IntN(4)
		var cur *wire.Table
		if rng.IntN(10) > 0 {
			cur = randomTable(rng, pool, parts)
		}
		what := fmt.Sprintf("run %d: %d members %v, %d partitions, %d backups", run, n, names, parts, backups)
		pl := Target(names, parts, backups, cur)
		checkPlacement(t, what, names, parts, backups, pl)
		again := Target(names, parts, backups, cur)
		if !slices.Equal(pl.Primary, again.Primary) || !slices.EqualFunc(pl.Backups, again.Backups, slices.Equal) {
			t.Fatalf("%s: two calls gave different placements", what)
		}
		reached := &wire.Table{Partitions: make([]wire.Part, parts)}
		for p := range parts {
			reached.Partitions[p] = wire.Part{Primary: pl.Primary[p], Backups: slices.Clone(pl.Backups[p])}
			if cur != nil {
				reached.Partitions[p].Since = cur.Partitions[p].Since
			}
		}
		fixed := Target(names, parts, backups, reached)
		if !slices.Equal(pl.Primary, fixed.Primary) {
			t.Fatalf("%s: the reached placement moves primaries again", what)
		}
		for p := range parts {
			if !sameSet(pl.Backups[p], fixed.Backups[p]) {
				t.Fatalf("%s: partition %d: the reached backups %v move again to %v", what, p, pl.Backups[p], fixed.Backups[p])
			}
		}
	}
}

func sameSet(a, b []string) bool {
	return len(a) == len(b) && !slices.ContainsFunc(a, func(x string) bool { return !slices.Contains(b, x) })
}
