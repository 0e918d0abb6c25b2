package cluster

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/collocate/grid/internal/wire"
)

// TestTargetOddTables: tables no correct step produces but a bug or an
// older version might (a primary also listed as a backup or pending, a
// name twice, fewer partitions than configured, more backups than
// members) still give a valid, balanced placement, without a panic.
func TestTargetOddTables(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 16))
	pool := []string{"a", "b", "c", "d", "e", "gone"}
	for run := range 3000 {
		n := 1 + rng.IntN(5)
		names := slices.Sorted(slices.Values(pool[:5]))[:n]
		parts := 1 + rng.IntN(12)
		backups := rng.IntN(8)
		cur := &wire.Table{Partitions: make([]wire.Part, rng.IntN(parts+1))}
		for p := range cur.Partitions {
			part := &cur.Partitions[p]
			part.Primary = pool[rng.IntN(len(pool))]
			for range rng.IntN(4) {
				part.Backups = append(part.Backups, pool[rng.IntN(len(pool))])
			}
			for range rng.IntN(3) {
				part.Pending = append(part.Pending, pool[rng.IntN(len(pool))])
			}
			part.Since = uint64(rng.IntN(3))
		}
		what := fmt.Sprintf("run %d: members %v, %d partitions, %d backups, table %+v", run, names, parts, backups, cur.Partitions)
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("%s: panic %v", what, r)
				}
			}()
			checkPlacement(t, what, names, parts, backups, Target(names, parts, backups, cur))
		}()
	}
}
