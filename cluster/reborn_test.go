package cluster

import (
	"testing"

	"github.com/collocate/grid/internal/wire"
)

// Found by the chaos suite (run 3 of 2026-11-30): b dies, the leader commits a table without b
// among Members while b's partitions wait for its lease; b restarts (new ID)
// before the lease lapsed. The new incarnation must not keep b's primaries.
func TestRebornAfterDroppedFromMembers(t *testing.T) {
	live := []wire.Member{{Name: "a", RPC: "a:1", ID: "a-1"}, {Name: "b", RPC: "b:1", ID: "b-1"}, {Name: "c", RPC: "c:1", ID: "c-1"}}
	tab := converge(t, nil, live, 64, 1)
	without := []wire.Member{live[0], live[2]}
	waiting, res := Next(StepInput{Cur: tab, Live: without, Partitions: 64, Backups: 1, MaxInFlight: 64, Leased: map[string]bool{"b": true}})
	if res.AwaitingLease == 0 {
		t.Fatalf("no partition waits for b's lease: %+v", res)
	}
	back := []wire.Member{live[0], {Name: "b", RPC: "b:1", ID: "b-2"}, live[2]}
	next, res := Next(StepInput{Cur: waiting, Live: back, Partitions: 64, Backups: 1, MaxInFlight: 64, Leased: map[string]bool{}})
	for p, part := range next.Partitions {
		if tab.Partitions[p].Primary == "b" && part.Primary == "b" {
			t.Fatalf("partition %d: b's new incarnation b-2 kept its predecessor's primacy: %+v (result %+v)", p, part, res)
		}
	}
}
