package grid_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/collocate/grid/internal/wire"
)

// Review attacks (h-review): tests that try to break the replication
// guarantees. A test that fails here pins a defect; see its comment.

// bigPartitions writes keys values of about size bytes through nd (into a
// cluster with few partitions, so each partition is large) and returns them.
func bigPartitions(t *testing.T, nd *grid.Node, keys, size int) map[string]string {
	t.Helper()
	ctx := ctxT(t, 120*time.Second)
	m := nd.Map("big")
	want := make(map[string]string, keys)
	for i := range keys {
		k := fmt.Sprintf("big-%d", i)
		v := fmt.Sprintf("%s-%0*d", k, size, i)
		if err := m.Put(ctx, k, []byte(v)); err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		want[k] = v
	}
	return want
}

func checkMap(t *testing.T, nd *grid.Node, name string, want map[string]string) {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	// In small batches: a GetAll answer larger than MaxFrame fails (the
	// router does not split answers by size).
	got := map[string][]byte{}
	for i := 0; i < len(keys); i += 8 {
		part, err := nd.Map(name).GetAll(ctx, keys[i:min(i+8, len(keys))])
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range part {
			got[k] = v
		}
	}
	lost := 0
	for k, v := range want {
		if string(got[k]) != v {
			if lost < 5 {
				t.Errorf("acknowledged %s: got %d bytes, want %d", k, len(got[k]), len(v))
			}
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged keys lost", lost, len(want))
	}
}

// Found in review, fixed: snapshot chunks are cut at a fixed 1 MiB (snapshotChunkBytes in
// grid/replicate.go) whatever Config.MaxFrame is. Validate accepts any
// MaxFrame >= 64 KiB, so with MaxFrame below ~1.1 MiB a partition holding
// more than MaxFrame of data can never be copied: conn.Start refuses the
// chunk (ErrFrameTooLarge), syncStream gives up and the fill retries every
// 100 ms forever. A join never converges and a lost backup is never
// replaced.
func TestBreakSnapshotChunkExceedsSmallMaxFrame(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	small := func(cfg *grid.Config) {
		cfg.Partitions = 4
		cfg.MaxFrame = 256 << 10 // valid: >= 64 KiB
		cfg.MaxValueSize = 64 << 10
	}
	c := gridtest.New(t, 2, func(_ int, cfg *grid.Config) { small(cfg) })
	c.WaitStable(30 * time.Second)
	// 2 MiB of 16 KiB values: every write is far below the limits.
	want := bigPartitions(t, c.Nodes[0], 128, 16<<10)
	c.Add(small)
	// Failed before the fix: the new member's fills never complete (a control run with
	// the default MaxFrame converges in a few seconds).
	c.WaitStable(60 * time.Second)
	checkMap(t, c.Nodes[2], "big", want)
}

// Found in review, fixed: a replication record is checked only by the sender name it
// claims (checkSender with checkHost=false, and no tie to the connection
// that delivered the epoch's snapshot). One forged record naming the real
// primary at the current epoch with the next LSN is applied by the backup;
// the primary's real record at that LSN is then taken as a duplicate and
// acknowledged without being applied, so the backup silently diverges and
// the acknowledged write is lost when the primary fails.
// Expected: the forged frame is refused (not over the primary's stream).
// Observed before the fix: accepted; CheckReplicas reports a digest difference.
func TestBreakForgedRecordAtCurrentEpoch(t *testing.T) {
	c := threeNodes(t)
	target := c.Nodes[1]
	tab := target.Table()
	pid := -1
	for p, part := range tab.Partitions {
		if len(part.Backups) > 0 && part.Backups[0] == target.Name() && part.Primary != c.Nodes[0].Name() {
			pid = p
			break
		}
	}
	if pid < 0 {
		t.Fatal("no partition backed up by n1 and led by n2")
	}
	primary := c.Node(tab.Partitions[pid].Primary)
	bi := target.Inspect(pid)
	conn := gridtest.RawConn(t, target.RPCAddr())
	forged := &wire.ReplicateRequest{Partition: int32(pid), Epoch: bi.Epoch, From: primary.Name(), Record: wire.Record{
		LSN:  bi.LSN + 1,
		Muts: []wire.Mutation{{Kind: wire.MutSet, Map: "forged", Key: keyIn(pid, tab), Value: []byte("evil")}},
	}}
	ferr := conn.Call(ctxT(t, 10*time.Second), wire.MsgReplicate, forged, nil)
	// The real write at that LSN, acknowledged by the primary.
	key := keyIn(pid, tab)
	if err := primary.Map("real").Put(ctxT(t, 10*time.Second), key, []byte("acked")); err != nil {
		t.Fatal(err)
	}
	if ferr == nil {
		t.Errorf("forged record from a non-member connection accepted (partition %d epoch %d lsn %d)", pid, bi.Epoch, bi.LSN+1)
	}
	if err := c.CheckReplicas(5 * time.Second); err != nil {
		t.Errorf("after a forged record: %v", err)
	}
	// The primary fails: the backup takes over without the acknowledged write.
	for j, nd := range c.Nodes {
		if nd == primary {
			c.Kill(j)
		}
	}
	c.WaitStable(60 * time.Second)
	if v, err := target.Map("real").Get(ctxT(t, 10*time.Second), key); err != nil || string(v) != "acked" {
		t.Fatalf("acknowledged write after failover: %q, %v", v, err)
	}
}

// Attack: a join moves primaries; the former primaries are stalled (they
// never ack the new primary's fencing snapshot), the new member is killed
// before any former was fenced, then the formers wake up. No acknowledged
// write may be lost, no write may be acknowledged while a former is
// unfenced, and the cluster converges.
func TestBreakJoinKillNewPrimaryBeforeFormerFenced(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	cfg := func(cfg *grid.Config) { cfg.Partitions = 16; cfg.RequestTimeout = 2 * time.Second }
	c := gridtest.New(t, 2, func(_ int, c *grid.Config) { cfg(c) })
	c.WaitStable(30 * time.Second)
	want := writeIdle(t, c.Nodes[0], 400)
	c.Nodes[0].StallReplication(true)
	c.Nodes[1].StallReplication(true)
	stalled := true
	defer func() {
		if stalled {
			c.Nodes[0].StallReplication(false)
			c.Nodes[1].StallReplication(false)
		}
	}()
	i := c.Add(cfg)
	newName := c.Nodes[i].Name()
	// Wait until the authority moved some primary to the new member with an
	// unfenced former.
	var moved []int
	deadline := time.Now().Add(30 * time.Second)
	for len(moved) == 0 && time.Now().Before(deadline) {
		tab := c.Nodes[0].Cluster().Table()
		for p, part := range tab.Partitions {
			if part.Primary == newName && part.Former != "" {
				moved = append(moved, p)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(moved) == 0 {
		t.Fatal("no primary moved to the new member")
	}
	// A write to a moved partition must not be acknowledged while its
	// former is unfenced (the former is an in-sync backup).
	tab := c.Nodes[0].Cluster().Table()
	pid := moved[0]
	key := keyIn(pid, tab)
	deadlineCtx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	perr := c.Nodes[i].Map("idle").Put(deadlineCtx, key, []byte("during"))
	cancel()
	if perr == nil {
		t.Logf("write to partition %d acknowledged while former %s is stalled", pid, tab.Partitions[pid].Former)
		want[key] = "during"
	} else if !errors.Is(perr, grid.ErrTimeout) && !errors.Is(perr, grid.ErrReplication) {
		t.Errorf("write during unfenced former: %v, want outcome unknown", perr)
	}
	c.Kill(i)
	c.Nodes[0].StallReplication(false)
	c.Nodes[1].StallReplication(false)
	stalled = false
	c.WaitStable(60 * time.Second)
	checkIdle(t, c.Nodes[0], want)
	if err := c.CheckReplicas(30 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// Attack: a large partition is being copied to a joining member when its
// source (the primary) is killed mid-transfer. The joiner must not be
// promoted with a partial copy; every acknowledged key survives. The kill
// follows the first table naming the joiner pending, so it usually lands
// during the transfer, but nothing guarantees it.
func TestBreakKillSourceMidSnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	cfg := func(cfg *grid.Config) { cfg.Partitions = 4; cfg.Backups = 1 }
	c := gridtest.New(t, 2, func(_ int, c *grid.Config) { cfg(c) })
	c.WaitStable(30 * time.Second)
	// 4 partitions x ~6 MiB: several chunks each.
	want := bigPartitions(t, c.Nodes[0], 384, 64<<10)
	i := c.Add(cfg)
	newName := c.Nodes[i].Name()
	var victim string
	deadline := time.Now().Add(30 * time.Second)
	for victim == "" && time.Now().Before(deadline) {
		for _, part := range c.Nodes[0].Cluster().Table().Partitions {
			for _, pn := range part.Pending {
				if pn == newName {
					victim = part.Primary
				}
			}
		}
		if victim == "" {
			time.Sleep(time.Millisecond)
		}
	}
	if victim == "" {
		t.Fatal("no fill towards the new member seen")
	}
	for j, nd := range c.Nodes {
		if nd != nil && nd.Name() == victim {
			c.Kill(j)
			break
		}
	}
	c.WaitStable(90 * time.Second)
	checkMap(t, c.Nodes[i], "big", want)
	if err := c.CheckReplicas(30 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// Attack: a primary dies; its backup is promoted and starts the
// promotion snapshot of the other backup (a large partition); the new
// primary is killed as soon as the table names it, mid-transfer. The last
// backup must keep (and be promoted with) its previous complete copy.
// Five nodes, and the first victim is not a raft voter (n3 or n4), so the
// authority keeps its majority after the two kills.
func TestBreakKillNewPrimaryMidPromotionSnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	cfg := func(_ int, cfg *grid.Config) { cfg.Partitions = 8; cfg.Backups = 2 }
	c := gridtest.New(t, 5, cfg)
	c.WaitStable(60 * time.Second)
	want := bigPartitions(t, c.Nodes[0], 512, 64<<10)
	tab := c.Nodes[0].Table()
	pid := -1
	for p, part := range tab.Partitions {
		if part.Primary == "n3" || part.Primary == "n4" {
			pid = p
			break
		}
	}
	if pid < 0 {
		t.Skip("no partition led by a non-voter")
	}
	first := tab.Partitions[pid].Primary
	idx := map[string]int{}
	for j, nd := range c.Nodes {
		idx[nd.Name()] = j
	}
	c.Kill(idx[first])
	watcher := c.Nodes[0]
	var second string
	deadline := time.Now().Add(30 * time.Second)
	for second == "" && time.Now().Before(deadline) {
		if tb := watcher.Cluster().Table(); tb != nil && tb.Partitions[pid].Primary != first {
			second = tb.Partitions[pid].Primary
			break
		}
		time.Sleep(time.Millisecond)
	}
	if second == "" {
		t.Fatal("partition never promoted")
	}
	t.Logf("partition %d: killed %s, then the promoted %s", pid, first, second)
	c.Kill(idx[second])
	c.WaitStable(90 * time.Second)
	checkMap(t, c.Live()[0], "big", want)
	if err := c.CheckReplicas(30 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// Attack on the dedup bounds: client X's INCR is applied, its answer is
// lost, and before X retries (same session, as the router does) another
// client's SET ... GET returns an old value above the partition's 1 MiB
// session budget. trimSessions then drops every other session of the
// partition, so X's retry applies a second time and answers success.
// ARCHITECTURE.md documents that a dropped session's retry "would apply
// again", but here one ordinary write (a 1.1 MiB value, far below
// MaxValueSize) suffices to wipe every client's dedup state at once: the
// budget is spent by the newest session, and the others pay.
// Expected: the retry answers the first result (INCR = 1). Observed before the fix: 2.
func TestBreakLargeResultEvictsOtherSessions(t *testing.T) {
	c := gridtest.New(t, 1, nil)
	nd := c.Nodes[0]
	if err := nd.WaitReady(ctxT(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	tab := nd.Table()
	pid := 3
	key := keyIn(pid, tab)
	var big string
	for i := 0; big == ""; i++ {
		if k := fmt.Sprintf("big%d", i); affinity.Partition(k, len(tab.Partitions)) == pid {
			big = k
		}
	}
	incr := &wire.MapRequest{Version: tab.Version, Partition: int32(pid), Op: wire.OpIncr, Map: "ctr", Key: key, Delta: 1,
		Session: wire.Session{Client: 7, Seq: 1, Low: 1}}
	var r1 wire.MapResponse
	if err := rawCall(t, nd.RPCAddr(), wire.MsgMap, incr, &r1); err != nil || r1.Int != 1 {
		t.Fatalf("first incr: %+v %v", r1, err)
	}
	// Another client: put a 1.1 MiB value, then SET ... GET it.
	val := make([]byte, 1100<<10)
	put := &wire.MapRequest{Version: tab.Version, Partition: int32(pid), Op: wire.OpPut, Map: "ctr", Key: big, Value: val,
		Session: wire.Session{Client: 8, Seq: 1, Low: 1}}
	if err := rawCall(t, nd.RPCAddr(), wire.MsgMap, put, &wire.MapResponse{}); err != nil {
		t.Fatal(err)
	}
	setGet := &wire.MapRequest{Version: tab.Version, Partition: int32(pid), Op: wire.OpSet, Flags: wire.SetReturnOld, Map: "ctr", Key: big, Value: []byte("x"),
		Session: wire.Session{Client: 8, Seq: 2, Low: 2}}
	if err := rawCall(t, nd.RPCAddr(), wire.MsgMap, setGet, &wire.MapResponse{}); err != nil {
		t.Fatal(err)
	}
	var r2 wire.MapResponse
	err := rawCall(t, nd.RPCAddr(), wire.MsgMap, incr, &r2)
	if err == nil && r2.Int != r1.Int {
		t.Fatalf("retry of (client 7, seq 1) applied twice: first answer %d, retry %d", r1.Int, r2.Int)
	}
	if err != nil && !errors.Is(err, grid.ErrStaleSequence) {
		t.Fatalf("retry: %v", err)
	}
}
