package cluster

import (
	"testing"

	"github.com/collocate/grid/internal/wire"
)

func idm(n, id string) wire.Member { return wire.Member{Name: n, RPC: n + ":1", ID: id} }

// C is starved (spare, seat S1); A restarts fast under the same name
// (reborn: no spare, seat not moved); B is promoted and confirmed in the
// next step by a renewal it made as a backup, before its promotion. If B
// then dies before installing the confirming table (it committed nothing
// without C), the partition restarts empty although C holds every
// acknowledged write.
func TestPromotedBackupIsNotConfirmedByAnEarlierRenewal(t *testing.T) {
	cur := &wire.Table{Version: 10, Backups: 2,
		Members:    []wire.Member{idm("a", "a-1"), idm("b", "b-1"), idm("c", "c-1"), idm("d", "d-1")},
		Partitions: []wire.Part{{Primary: "a", Backups: []string{"b", "c"}, Epoch: 1}}}
	step := func(cur *wire.Table, live []wire.Member, granted map[string]uint64) (*wire.Table, StepResult) {
		return Next(StepInput{Cur: cur, Live: live, Partitions: 1, Backups: 2, MaxInFlight: 0, Granted: granted})
	}
	// 1: c silent.
	t1, _ := step(cur, []wire.Member{idm("a", "a-1"), idm("b", "b-1"), idm("d", "d-1")}, map[string]uint64{"a-1": 10, "b-1": 10, "d-1": 10})
	t.Logf("v%d %+v", t1.Version, t1.Partitions[0])
	// b renews as a backup, bound to t1.
	g := map[string]uint64{"b-1": t1.Version, "d-1": t1.Version}
	// 2: a restarted as a-2 before renewing bound to t1.
	t2, _ := step(t1, []wire.Member{idm("a", "a-2"), idm("b", "b-1"), idm("d", "d-1")}, g)
	t.Logf("v%d %+v", t2.Version, t2.Partitions[0])
	// 3: no renewal by b since its promotion.
	t3, _ := step(t2, []wire.Member{idm("a", "a-2"), idm("b", "b-1"), idm("d", "d-1")}, g)
	t.Logf("v%d %+v", t3.Version, t3.Partitions[0])
	if t3.Partitions[0].Seat == 0 {
		t.Errorf("seat cleared at v%d by a renewal b made at v%d, before it became primary at v%d", t3.Version, g["b-1"], t2.Version)
	}
	// 4: b restarts (crash) before installing t3: it committed nothing without c.
	t4, res := step(t3, []wire.Member{idm("a", "a-2"), idm("b", "b-2"), idm("d", "d-1")}, map[string]uint64{})
	t.Logf("v%d %+v lost=%d", t4.Version, t4.Partitions[0], res.Lost)
	if res.Lost > 0 {
		t.Errorf("restarted empty while spare c (c-1) may return with every acknowledged write")
	}
}
