package grid_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
)

// Tests for the replication safety defects of issue 10, each named after
// the defect it pins.

// writeIdle writes n keys through node nd and returns them.
func writeIdle(t *testing.T, nd *grid.Node, n int) map[string]string {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	m := nd.Map("idle")
	want := make(map[string]string, n)
	for i := range n {
		k, v := fmt.Sprintf("idle-%d", i), fmt.Sprintf("v%d", i)
		if err := m.Put(ctx, k, []byte(v)); err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		want[k] = v
	}
	return want
}

func checkIdle(t *testing.T, nd *grid.Node, want map[string]string) {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	m := nd.Map("idle")
	lost := 0
	for k, v := range want {
		got, err := m.Get(ctx, k)
		if err != nil || string(got) != v {
			if lost < 5 {
				t.Errorf("acknowledged key %s: got %q, %v", k, got, err)
			}
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged idle keys lost", lost, len(want))
	}
}

// Defect 1: a backup killed and restarted with the same name and addresses
// was reported in-sync while empty (the primary kept its old stream, keyed
// by name), so killing another node lost the idle partitions it held.
func TestSameNameRestartIsNotReportedInSync(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 3, nil)
	c.WaitStable(30 * time.Second)
	want := writeIdle(t, c.Nodes[0], 3000)
	c.Kill(1)
	c.RestartSameAddr(1)
	c.WaitStable(60 * time.Second)
	c.Kill(2)
	c.WaitStable(60 * time.Second)
	checkIdle(t, c.Nodes[0], want)
	if err := c.CheckReplicas(30 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// Defect 3 (end to end): a join moves primaries; the old primaries stay
// in-sync backups until fenced, and no acknowledged write is lost when a
// node dies right after the moves.
func TestJoinMovesThenKillKeepsIdleKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 3, nil)
	c.WaitStable(30 * time.Second)
	want := writeIdle(t, c.Nodes[0], 2000)
	c.Add(nil)
	c.WaitStable(60 * time.Second)
	c.Kill(0)
	c.WaitStable(60 * time.Second)
	checkIdle(t, c.Nodes[1], want)
}

// Defect 4: a value larger than the frame limit wedged its partition. Now
// a value above MaxValueSize is refused before anything is applied, and the
// partition keeps serving.
func TestValueTooLargeIsRefusedAndPartitionServes(t *testing.T) {
	c := gridtest.New(t, 1, func(i int, cfg *grid.Config) {
		cfg.MaxFrame = 1 << 20
		cfg.MaxValueSize = 64 << 10
	})
	nd := c.Nodes[0]
	if err := nd.WaitReady(ctxT(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 20*time.Second)
	m := nd.Map("big")
	if err := m.Put(ctx, "k", make([]byte, 65<<10)); !errors.Is(err, grid.ErrValueTooLarge) {
		t.Fatalf("put of 65 KiB with a 64 KiB limit: %v", err)
	}
	chunk := bytes.Repeat([]byte("x"), 16<<10)
	var appendErr error
	for range 8 {
		if _, appendErr = m.Append(ctx, "k", chunk); appendErr != nil {
			break
		}
	}
	if !errors.Is(appendErr, grid.ErrValueTooLarge) {
		t.Fatalf("appends past the limit: %v", appendErr)
	}
	v, err := m.Get(ctx, "k")
	if err != nil || len(v) > 64<<10 {
		t.Fatalf("after refused append: %d bytes, %v", len(v), err)
	}
	if err := m.Put(ctx, "k2", []byte("ok")); err != nil {
		t.Fatalf("partition wedged: %v", err)
	}
	if err := m.PutAll(ctx, map[string][]byte{"a": make([]byte, 60<<10), "b": make([]byte, 60<<10)}); err != nil {
		t.Fatalf("put all of two values under the limit: %v", err)
	}
}

// Defect 6: a caller's short deadline marked healthy replica streams
// broken, forcing full snapshots. Only replica and transport errors may.
func TestCallerDeadlineKeepsStreamsHealthy(t *testing.T) {
	c := threeNodes(t)
	nd := c.Nodes[0]
	m := nd.Map("deadline")
	ctx := ctxT(t, 20*time.Second)
	for i := range 200 {
		if err := m.Put(ctx, fmt.Sprint(i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	before := snapshotsSent(c)
	for i := range 300 {
		short, cancel := context.WithTimeout(context.Background(), time.Microsecond)
		_ = m.Put(short, fmt.Sprint(i), []byte("w"))
		cancel()
	}
	if err := m.Put(ctx, "after", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if after := snapshotsSent(c); after != before {
		t.Fatalf("short caller deadlines broke healthy streams: %d snapshots sent", after-before)
	}
}

func snapshotsSent(c *gridtest.Cluster) int64 {
	var n int64
	for _, nd := range c.Live() {
		n += nd.Stats().SnapshotsSent
	}
	return n
}

// Defect 10: one unauthenticated frame with a huge epoch raised a replica's
// epoch for good, so it refused all real replication.
func TestForgedReplicationFrameRefused(t *testing.T) {
	c := threeNodes(t)
	target := c.Nodes[1]
	tab := target.Table()
	var pid int
	for p, part := range tab.Partitions {
		if len(part.Backups) > 0 && part.Backups[0] == target.Name() {
			pid = p
			break
		}
	}
	nc, err := net.Dial("tcp", target.RPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Write([]byte{transport.PreambleGrid}); err != nil {
		t.Fatal(err)
	}
	conn := transport.NewConn(nc, nil, wire.DefaultMaxFrame, nil)
	defer conn.Close()
	ctx := ctxT(t, 10*time.Second)
	forged := &wire.ReplicateRequest{Partition: int32(pid), Epoch: math.MaxUint64, From: tab.Partitions[pid].Primary, Record: wire.Record{LSN: 1}}
	if err := conn.Call(ctx, wire.MsgReplicate, forged, nil); err == nil {
		t.Fatal("forged replication frame accepted")
	}
	snap := &wire.SnapshotChunk{Partition: int32(pid), Epoch: math.MaxUint64, First: true, Last: true, From: tab.Partitions[pid].Primary}
	if err := conn.Call(ctx, wire.MsgSnapshot, snap, nil); err == nil {
		t.Fatal("forged snapshot accepted")
	}
	if got := target.Inspect(pid).Epoch; got == math.MaxUint64 {
		t.Fatalf("replica epoch raised to %d by a forged frame", got)
	}
	// Real replication still works: writes to that partition commit.
	key := keyIn(pid, tab)
	if err := c.Nodes[0].Map("forged").Put(ctx, key, []byte("v")); err != nil {
		t.Fatalf("write after forged frames: %v", err)
	}
	if err := c.CheckReplicas(20 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// keyIn returns a key of partition pid.
func keyIn(pid int, tab *wire.Table) string {
	for i := 0; ; i++ {
		k := fmt.Sprintf("k%d", i)
		if affinity.Partition(k, len(tab.Partitions)) == pid {
			return k
		}
	}
}

// Defect 5: a write whose ctx has no deadline waited on each backup's reply
// forever when a backup stopped answering with its connection open. Now it
// waits only for the commit point, bounded by RequestTimeout.
func TestWriteWithoutDeadlineReturnsWhenBackupStalls(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 3, func(i int, cfg *grid.Config) { cfg.RequestTimeout = 2 * time.Second })
	c.WaitStable(30 * time.Second)
	nd, backup, _, key := primaryWithBackup(c)
	m := nd.Map("stall")
	if err := m.Put(ctxT(t, 10*time.Second), key, []byte("v0")); err != nil {
		t.Fatal(err)
	}
	backup.StallReplication(true)
	defer backup.StallReplication(false)
	done := make(chan error, 1)
	go func() { done <- m.Put(context.Background(), key, []byte("v1")) }()
	select {
	case err := <-done:
		if err == nil || !errors.Is(err, grid.ErrReplication) && !errors.Is(err, grid.ErrTimeout) {
			t.Fatalf("write with a stalled backup: %v, want outcome unknown", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a write without deadline still waits on a stalled backup after 20 s")
	}
}

// Defect 9: in a batch, a request that failed with a retryable error let
// the later requests of its partition run; the sender's retry then landed
// after them (SET k a; SET k b could end with a). Now the rest of that
// partition's group is refused unapplied.
func TestBatchStopsPartitionAfterRetryableFailure(t *testing.T) {
	c := gridtest.New(t, 1, nil)
	nd := c.Nodes[0]
	if err := nd.WaitReady(ctxT(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	tab := nd.Table()
	pid := affinity.Partition("k", nd.Partitions())
	conn := gridtest.RawConn(t, nd.RPCAddr())
	req := &wire.MapBatchRequest{Reqs: []wire.MapRequest{
		// A table version this node does not have: it waits briefly and
		// answers Unavailable, which the sender retries.
		{Version: tab.Version + 1000, Partition: int32(pid), Op: wire.OpPut, Map: "b", Key: "k", Value: []byte("a")},
		{Version: tab.Version, Partition: int32(pid), Op: wire.OpPut, Map: "b", Key: "k", Value: []byte("b")},
	}}
	var resp wire.MapBatchResponse
	if err := conn.Call(ctxT(t, 20*time.Second), wire.MsgMapBatch, req, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Errs[0].Err() == nil {
		t.Fatal("the first request did not fail")
	}
	if resp.Errs[1].Err() == nil {
		t.Fatal("the second request of the same partition ran after the first failed")
	}
	if _, err := nd.Map("b").Get(ctxT(t, 5*time.Second), "k"); !errors.Is(err, grid.ErrNotFound) {
		t.Fatalf("k was written: %v", err)
	}
}

// Issue 16, part 2: a backup that stops answering and stops renewing its
// lease (a SIGSTOPped process, while membership still finds it alive) holds
// writes up only until the leader fails it over, about one lease; the write
// then succeeds, and the backup is out of the partition's in-sync set.
func TestSilentBackupIsFailedOverWithinALease(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 3, nil)
	c.WaitStable(30 * time.Second)
	nd, backup, pid, key := primaryWithBackup(c)
	m := nd.Map("silent")
	if err := m.Put(ctxT(t, 10*time.Second), key, []byte("v0")); err != nil {
		t.Fatal(err)
	}
	backup.StallReplication(true)
	backup.StallLeases(true)
	defer backup.StallReplication(false)
	defer backup.StallLeases(false)
	start := time.Now()
	if err := m.Put(context.Background(), key, []byte("v1")); err != nil {
		t.Fatalf("write while a backup is silent: %v, want success once it is failed over", err)
	}
	took := time.Since(start)
	t.Logf("write waited %v for the silent backup to be failed over (lease %v)", took.Round(time.Millisecond), time.Second)
	if took > 5*time.Second {
		t.Fatalf("the write waited %v: the silent backup was not failed over within a lease", took)
	}
	tab := nd.Table()
	part := tab.Partitions[pid]
	if slices.Contains(part.Backups, backup.Name()) {
		t.Fatalf("the silent backup %s is still in sync for p%d in table v%d (members %+v): %+v; partition at the primary: %+v",
			backup.Name(), pid, tab.Version, tab.Members, part, nd.Inspect(pid))
	}
	got, err := m.Get(ctxT(t, 5*time.Second), key)
	if err != nil || string(got) != "v1" {
		t.Fatalf("read back %q, %v", got, err)
	}
}

// primaryWithBackup returns the cluster's first node, the backup of the
// first partition it leads, that partition and a key in it.
func primaryWithBackup(c *gridtest.Cluster) (nd, backup *grid.Node, pid int, key string) {
	nd = c.Nodes[0]
	tab := nd.Table()
	for p, part := range tab.Partitions {
		if part.Primary == nd.Name() {
			return nd, c.Node(part.Backups[0]), p, keyIn(p, tab)
		}
	}
	panic("the first node leads no partition")
}

// Chaos Finding 6: a member whose lease renewals stop (starved, not dead)
// is failed over by the lease detector while another member, killed a
// moment earlier, still looks alive; the partitions the killed member took
// over from the starved one, and those the starved one backed up for it,
// have no other copy. The starved member's copies are kept as spares: once
// it renews again it takes those partitions back, and nothing acknowledged
// is lost (before spares, they waited for the dead member for good).
func TestStarvedMemberTakesBackWhatTheKilledOneTookOver(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 3, nil)
	c.WaitStable(30 * time.Second)
	var leader *grid.Node
	var others []int
	for i, nd := range c.Nodes {
		if nd.Cluster().IsLeader() {
			leader = nd
		} else {
			others = append(others, i)
		}
	}
	if leader == nil || len(others) != 2 {
		t.Fatalf("no single leader among %d nodes", len(c.Nodes))
	}
	want := writeIdle(t, leader, 2000)
	starved, killed := c.Nodes[others[0]], others[1]
	victim := c.Nodes[killed].Name()

	// Watch the tables: the scenario needs one where the killed member
	// leads a partition whose spare is the starved one.
	stop := make(chan struct{})
	reached := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if tab := leader.Table(); tab != nil {
				for _, p := range tab.Partitions {
					if p.Primary == victim && slices.ContainsFunc(p.Spares, func(s wire.Spare) bool { return s.Name == starved.Name() }) {
						close(reached)
						return
					}
				}
			}
		}
	}()
	defer close(stop)

	starved.StallLeases(true)
	time.Sleep(500 * time.Millisecond) // the victim keeps renewing meanwhile
	c.Kill(killed)
	select {
	case <-reached:
	case <-time.After(10 * time.Second):
		t.Fatalf("no table made the starved %s a spare of a partition the killed %s leads (the lease detector did not fail the starved member over first)", starved.Name(), victim)
	}
	time.Sleep(time.Second) // the killed member's lease lapses too
	starved.StallLeases(false)
	checkIdle(t, leader, want)
	c.WaitStable(60 * time.Second)
	if err := c.CheckReplicas(30 * time.Second); err != nil {
		t.Fatal(err)
	}
}
