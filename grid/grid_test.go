package grid_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, gridtest.LeakOptions()...)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func threeNodes(t *testing.T) *gridtest.Cluster {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 3, nil)
	c.WaitStable(30 * time.Second)
	return c
}

func TestThreeNodesServeEverywhere(t *testing.T) {
	c := threeNodes(t)
	ctx := ctxT(t, 30*time.Second)
	const keys = 300
	for i, n := range c.Nodes {
		m := n.Map("users")
		for k := range keys {
			key := fmt.Sprintf("k-%d-%d", i, k)
			if err := m.Put(ctx, key, []byte("v-"+key)); err != nil {
				t.Fatalf("put %s via %s: %v", key, n.Name(), err)
			}
		}
	}
	for _, n := range c.Nodes {
		m := n.Map("users")
		for i := range c.Nodes {
			for k := range keys {
				key := fmt.Sprintf("k-%d-%d", i, k)
				v, err := m.Get(ctx, key)
				if err != nil || string(v) != "v-"+key {
					t.Fatalf("get %s via %s: %q, %v", key, n.Name(), v, err)
				}
			}
		}
		size, err := m.Size(ctx)
		if err != nil || size != 3*keys {
			t.Fatalf("size via %s = %d, %v; want %d", n.Name(), size, err, 3*keys)
		}
	}
	if _, err := c.Nodes[1].Map("users").Get(ctx, "missing"); !errors.Is(err, grid.ErrNotFound) {
		t.Fatalf("missing key: %v, want ErrNotFound", err)
	}
}

func TestReplicasOnDistinctNodes(t *testing.T) {
	c := threeNodes(t)
	tab := c.Nodes[0].Table()
	if len(tab.Partitions) != affinity.DefaultPartitionCount {
		t.Fatalf("%d partitions", len(tab.Partitions))
	}
	load := map[string]int{}
	for p, part := range tab.Partitions {
		if len(part.Backups) != 1 || part.Backups[0] == part.Primary || part.Primary == "" || len(part.Pending) != 0 {
			t.Fatalf("partition %d: %+v", p, part)
		}
		load[part.Primary]++
	}
	if len(load) != 3 {
		t.Fatalf("primaries on %v", load)
	}
}

func TestBackupsEqualPrimariesAfterBurst(t *testing.T) {
	c := threeNodes(t)
	ctx := ctxT(t, 60*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for w := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := c.Nodes[w%3]
			m := n.Map("burst")
			for i := range 200 {
				key := fmt.Sprintf("w%d-%d", w, i%50)
				var err error
				switch i % 4 {
				case 0, 1:
					err = m.Put(ctx, key, []byte(fmt.Sprint(i)))
				case 2:
					_, err = m.Delete(ctx, key)
				case 3:
					_, _, err = m.PutIfAbsent(ctx, key, []byte("x"))
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := c.CheckReplicas(5 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// rawCall sends one request straight to a node's RPC address.
func rawCall(t *testing.T, addr string, typ uint8, req, resp any) error {
	pool := transport.NewPool(wire.DefaultMaxFrame, nil)
	defer pool.Close()
	ctx := ctxT(t, 5*time.Second)
	conn, err := pool.Get(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	return conn.Call(ctx, typ, req, resp)
}

func TestStaleTableVersionGetsNotOwner(t *testing.T) {
	c := threeNodes(t)
	tab := c.Nodes[0].Table()
	key := "stale-key"
	p := affinity.Partition(key, len(tab.Partitions))
	owner := tab.Partitions[p].Primary
	var other *grid.Node
	for _, n := range c.Nodes {
		if n.Name() != owner && !contains(tab.Partitions[p].Backups, n.Name()) {
			other = n
		}
	}
	if other == nil {
		for _, n := range c.Nodes {
			if n.Name() != owner {
				other = n
			}
		}
	}
	req := &wire.MapRequest{Version: 1, Partition: int32(p), Op: wire.OpPut, Map: "m", Key: key, Value: []byte("v")}
	err := rawCall(t, other.RPCAddr(), wire.MsgMap, req, &wire.MapResponse{})
	var ne *api.NotOwnerError
	if !errors.As(err, &ne) || !errors.Is(err, grid.ErrNotOwner) {
		t.Fatalf("stale request to %s: %v, want NotOwner", other.Name(), err)
	}
	if ne.Owner != owner || ne.Partition != p || ne.Version < tab.Version {
		t.Fatalf("NotOwner %+v, want owner %s partition %d version >= %d", ne, owner, p, tab.Version)
	}
	// The same stale request at the owner is served: the owner is right.
	if err := rawCall(t, c.Node(owner).RPCAddr(), wire.MsgMap, req, &wire.MapResponse{}); err != nil {
		t.Fatalf("request at owner: %v", err)
	}
	// A request naming a partition its key does not belong to is refused.
	bad := *req
	bad.Partition = int32((p + 1) % len(tab.Partitions))
	if err := rawCall(t, c.Node(owner).RPCAddr(), wire.MsgMap, &bad, &wire.MapResponse{}); !errors.Is(err, grid.ErrBadRequest) {
		t.Fatalf("wrong partition: %v, want ErrBadRequest", err)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestRetriedMutationAppliesOnce(t *testing.T) {
	c := threeNodes(t)
	ctx := ctxT(t, 10*time.Second)
	tab := c.Nodes[0].Table()
	key := "once"
	p := affinity.Partition(key, len(tab.Partitions))
	owner := c.Node(tab.Partitions[p].Primary)
	sess := wire.Session{Client: 99, Seq: 1, Low: 1}
	put := &wire.MapRequest{Version: tab.Version, Partition: int32(p), Op: wire.OpPutIfAbsent, Map: "m", Key: key, Value: []byte("first"), Session: sess}
	var r1, r2 wire.MapResponse
	if err := rawCall(t, owner.RPCAddr(), wire.MsgMap, put, &r1); err != nil || !r1.Done {
		t.Fatalf("first put: %+v %v", r1, err)
	}
	if _, err := c.Nodes[0].Map("m").Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	// The retry of seq 1 must return the first answer and not store again.
	if err := rawCall(t, owner.RPCAddr(), wire.MsgMap, put, &r2); err != nil || !r2.Done || r2.Version != r1.Version {
		t.Fatalf("retried put: %+v %v, want first answer %+v", r2, err, r1)
	}
	if _, err := c.Nodes[1].Map("m").Get(ctx, key); !errors.Is(err, grid.ErrNotFound) {
		t.Fatalf("retry applied twice: get = %v", err)
	}
	// The session is replicated: the backup answers the retry the same way
	// once it becomes primary.
	backup := c.Node(tab.Partitions[p].Backups[0])
	if bi := backup.Inspect(p); bi.LSN != owner.Inspect(p).LSN {
		t.Fatalf("backup lsn %d, primary %d", bi.LSN, owner.Inspect(p).LSN)
	}
	// A seq below the acknowledged watermark is refused.
	old := *put
	old.Session = wire.Session{Client: 99, Seq: 5, Low: 5}
	old.Op = wire.OpPut
	if err := rawCall(t, owner.RPCAddr(), wire.MsgMap, &old, &wire.MapResponse{}); err != nil {
		t.Fatal(err)
	}
	if err := rawCall(t, owner.RPCAddr(), wire.MsgMap, put, &wire.MapResponse{}); !errors.Is(err, grid.ErrStaleSequence) {
		t.Fatalf("seq below watermark: %v, want ErrStaleSequence", err)
	}
}

func TestRetryAfterFailoverAppliesOnce(t *testing.T) {
	c := threeNodes(t)
	tab := c.Nodes[0].Table()
	// A key whose primary is not n0, so n0 can keep talking.
	var key string
	var p int
	for i := 0; ; i++ {
		key = fmt.Sprintf("fo-%d", i)
		p = affinity.Partition(key, len(tab.Partitions))
		if tab.Partitions[p].Primary != "n0" && tab.Partitions[p].Backups[0] != "n0" {
			break
		}
	}
	primary := tab.Partitions[p].Primary
	backupName := tab.Partitions[p].Backups[0]
	sess := wire.Session{Client: 7, Seq: 1, Low: 1}
	req := &wire.MapRequest{Version: tab.Version, Partition: int32(p), Op: wire.OpPutIfAbsent, Map: "m", Key: key, Value: []byte("a"), Session: sess}
	var r1 wire.MapResponse
	if err := rawCall(t, c.Node(primary).RPCAddr(), wire.MsgMap, req, &r1); err != nil || !r1.Done {
		t.Fatalf("put: %+v %v", r1, err)
	}
	for i, n := range c.Nodes {
		if n != nil && n.Name() == primary {
			c.Kill(i)
		}
	}
	// Wait for the backup to be promoted.
	deadline := time.Now().Add(15 * time.Second)
	for c.Node(backupName).Inspect(p).Role != "primary" {
		if time.Now().After(deadline) {
			t.Fatal("backup not promoted")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx := ctxT(t, 10*time.Second)
	if v, err := c.Nodes[0].Map("m").Get(ctx, key); err != nil || string(v) != "a" {
		t.Fatalf("acknowledged write after failover: %q %v", v, err)
	}
	var r2 wire.MapResponse
	req.Version = c.Node(backupName).Table().Version
	if err := rawCall(t, c.Node(backupName).RPCAddr(), wire.MsgMap, req, &r2); err != nil || !r2.Done || r2.Version != r1.Version {
		t.Fatalf("retry at new primary: %+v %v, want the first answer %+v", r2, err, r1)
	}
}

func TestTTLExpiry(t *testing.T) {
	c := threeNodes(t)
	ctx := ctxT(t, 10*time.Second)
	m := c.Nodes[0].Map("ttl")
	for i := range 50 {
		if err := m.Put(ctx, fmt.Sprint("short-", i), []byte("x"), grid.WithTTL(300*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Put(ctx, "long", []byte("y"), grid.WithTTL(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(ctx, "short-1"); err != nil {
		t.Fatalf("fresh entry: %v", err)
	}
	time.Sleep(400 * time.Millisecond)
	if _, err := m.Get(ctx, "short-1"); !errors.Is(err, grid.ErrNotFound) {
		t.Fatalf("expired entry read: %v, want ErrNotFound", err)
	}
	// Active expiry removes the entries from primaries and backups alike.
	deadline := time.Now().Add(5 * time.Second)
	for {
		total := 0
		for _, n := range c.Nodes {
			for p := range n.Partitions() {
				total += n.Inspect(p).Entries
			}
		}
		if total == 2 { // "long" on its primary and its backup
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d entries remain, want 2", total)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := c.CheckReplicas(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if v, err := m.Get(ctx, "long"); err != nil || string(v) != "y" {
		t.Fatalf("long-lived entry: %q %v", v, err)
	}
}

func TestMalformedFramesCloseOnlyThatConnection(t *testing.T) {
	c := threeNodes(t)
	addr := c.Nodes[0].RPCAddr()
	inputs := [][]byte{
		{'G', 0xff, 0xff, 0xff, 0xff}, // length beyond max
		{'G', 0, 0, 0, 2, 1, 2},       // shorter than a header
		append([]byte{'G', 0, 0, 0, 14, wire.MsgMap, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 0xdd, 0xff, 0xff, 0xff), // array claiming 4G elements
		{'X', 1, 2, 3}, // unknown preamble
	}
	for i, in := range inputs {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := nc.Write(in); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 256)
		n, err := nc.Read(buf)
		if i == 2 {
			// A bad body is answered with an error frame; the connection stays usable.
			if err != nil || n < 4+wire.HeaderSize || buf[5]&wire.FlagError == 0 {
				t.Fatalf("input %d: read %d bytes, %v; want an error frame", i, n, err)
			}
		} else if err == nil {
			t.Fatalf("input %d: connection not closed (read %d bytes)", i, n)
		}
		nc.Close()
	}
	ctx := ctxT(t, 5*time.Second)
	if err := c.Nodes[0].Map("m").Put(ctx, "still", []byte("serving")); err != nil {
		t.Fatalf("node stopped serving after bad input: %v", err)
	}
}

func TestBatchScanClear(t *testing.T) {
	c := threeNodes(t)
	ctx := ctxT(t, 30*time.Second)
	m := c.Nodes[1].Map("batch")
	entries := map[string][]byte{}
	for i := range 2000 {
		entries[fmt.Sprintf("b-%04d", i)] = []byte(fmt.Sprint(i))
	}
	if err := m.PutAll(ctx, entries); err != nil {
		t.Fatal(err)
	}
	keys := []string{"b-0000", "b-0999", "b-1999", "nope"}
	got, err := c.Nodes[2].Map("batch").GetAll(ctx, keys)
	if err != nil || len(got) != 3 || string(got["b-0999"]) != "999" {
		t.Fatalf("GetAll = %v, %v", got, err)
	}
	seen := map[string]bool{}
	var serr error
	for k, v := range c.Nodes[0].Map("batch").Scan(ctx, &serr) {
		if seen[k] || !bytes.Equal(v, entries[k]) {
			t.Fatalf("scan: dup or bad value at %s", k)
		}
		seen[k] = true
	}
	if serr != nil || len(seen) != len(entries) {
		t.Fatalf("scan saw %d of %d, err %v", len(seen), len(entries), serr)
	}
	// Stopping early stops fetching.
	count := 0
	for range m.Scan(ctx, &serr) {
		if count++; count == 10 {
			break
		}
	}
	if count != 10 {
		t.Fatalf("early stop yielded %d", count)
	}
	if err := m.Clear(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := m.Size(ctx); err != nil || n != 0 {
		t.Fatalf("size after clear %d %v", n, err)
	}
	if err := c.CheckReplicas(5 * time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestConditionalOps(t *testing.T) {
	c := threeNodes(t)
	ctx := ctxT(t, 10*time.Second)
	m := c.Nodes[0].Map("cas")
	if _, ok, err := m.PutIfAbsent(ctx, "k", []byte("a")); !ok || err != nil {
		t.Fatal("PutIfAbsent on absent key", ok, err)
	}
	if old, ok, err := m.PutIfAbsent(ctx, "k", []byte("b")); ok || err != nil || string(old) != "a" {
		t.Fatal("PutIfAbsent on present key", string(old), ok, err)
	}
	if ok, _ := m.Replace(ctx, "absent", []byte("x")); ok {
		t.Fatal("Replace on absent key stored")
	}
	if ok, _ := m.CompareAndSwap(ctx, "k", []byte("zz"), []byte("c")); ok {
		t.Fatal("CAS with wrong expected value swapped")
	}
	if ok, err := m.CompareAndSwap(ctx, "k", []byte("a"), []byte("c")); !ok || err != nil {
		t.Fatal("CAS with right expected value", ok, err)
	}
	e, err := m.GetEntry(ctx, "k")
	if err != nil || string(e.Value) != "c" {
		t.Fatal(e, err)
	}
	if ok, _ := m.CompareAndSwapVersion(ctx, "k", e.Version+100, []byte("d")); ok {
		t.Fatal("CAS with wrong version swapped")
	}
	if ok, err := m.CompareAndSwapVersion(ctx, "k", e.Version, []byte("d")); !ok || err != nil {
		t.Fatal("CAS with right version", ok, err)
	}
	if ok, err := m.Delete(ctx, "k"); !ok || err != nil {
		t.Fatal("delete present", ok, err)
	}
	if ok, _ := m.Delete(ctx, "k"); ok {
		t.Fatal("delete absent reported present")
	}
}

type orderKey struct {
	Customer string
	Order    int
}

func (k orderKey) AffinityKey() string { return k.Customer }

type order struct {
	Items []string
	Total int
}

func TestTypedMapCollocates(t *testing.T) {
	c := threeNodes(t)
	ctx := ctxT(t, 10*time.Second)
	orders := grid.NewTyped[orderKey, order](c.Nodes[0].Map("orders"))
	customers := grid.NewTyped[string, string](c.Nodes[1].Map("customers"))
	if err := customers.Put(ctx, "{alice}", "Alice"); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := orders.Put(ctx, orderKey{"alice", i}, order{Items: []string{"x"}, Total: i}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := grid.NewTyped[orderKey, order](c.Nodes[2].Map("orders")).Get(ctx, orderKey{"alice", 3})
	if err != nil || got.Total != 3 {
		t.Fatalf("typed get: %+v %v", got, err)
	}
	want := affinity.Partition("{alice}", affinity.DefaultPartitionCount)
	for i := range 5 {
		k, _ := orders.Key(orderKey{"alice", i})
		if p := affinity.Partition(k, affinity.DefaultPartitionCount); p != want {
			t.Fatalf("order %d in partition %d, customer in %d", i, p, want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	bad := []func(*grid.Config){
		func(c *grid.Config) { c.Partitions = 0 },
		func(c *grid.Config) { c.Backups = -1 },
		func(c *grid.Config) { c.RPCAddr = "nonsense" },
		func(c *grid.Config) { c.RequestTimeout = 0 },
		func(c *grid.Config) { c.MaxRunningFunctions = 0 },
	}
	for i, f := range bad {
		cfg := grid.DefaultConfig()
		f(&cfg)
		if err := cfg.Validate(); err == nil {
			t.Errorf("case %d: invalid config accepted", i)
		}
	}
	cfg := grid.DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}
