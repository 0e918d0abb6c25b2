package client

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid/gridtest"
)

// proxiedCluster starts n nodes and a client that reaches every node
// through its own stallProxy.
func proxiedCluster(t *testing.T, n int, cfg Config) (*gridtest.Cluster, *Client, map[string]*stallProxy) {
	t.Helper()
	c := gridtest.New(t, n, nil)
	c.WaitStable(30 * time.Second)
	proxies := map[string]*stallProxy{}
	cfg.Addrs = nil
	for _, nd := range c.Nodes {
		proxies[nd.RPCAddr()] = newStallProxy(t, nd.RPCAddr())
		cfg.Addrs = append(cfg.Addrs, nd.RPCAddr())
	}
	cfg.Dial = proxiedDial(proxies)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	return c, cl, proxies
}

// keyOwnedBy returns a key whose primary in cl's table is node.
func keyOwnedBy(t *testing.T, cl *Client, node, salt string) string {
	t.Helper()
	tb := cl.table.Load()
	for i := range 100000 {
		k := fmt.Sprintf("%s-%d", salt, i)
		if tb.Partitions[affinity.Partition(k, len(tb.Partitions))].Primary == node {
			return k
		}
	}
	t.Fatalf("no key owned by %s", node)
	return ""
}

func TestCallsToStoppedPrimaryCompleteAfterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	// The calls have no deadline of their own; RequestTimeout is raised
	// from its 10 s default so that a failover slowed by a loaded CI
	// machine (seen: 6 s under -race with other packages running) is
	// waited out: the test is about the calls moving to the new primary.
	c, cl, proxies := proxiedCluster(t, 3, Config{RequestTimeout: 25 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := cl.Map("m")
	getKey, putKey := keyOwnedBy(t, cl, "n2", "get"), keyOwnedBy(t, cl, "n2", "put")
	if err := m.Put(ctx, getKey, []byte("before")); err != nil {
		t.Fatal(err)
	}
	// n2 stops answering the client (its connections stay open) and the
	// cluster loses it.
	proxies[c.Nodes[2].RPCAddr()].Stall()
	c.Kill(2)
	start := time.Now()
	type result struct {
		v   []byte
		err error
		at  time.Duration
	}
	gets, puts := make(chan result, 1), make(chan result, 1)
	go func() {
		v, err := m.Get(context.Background(), getKey)
		gets <- result{v, err, time.Since(start)}
	}()
	go func() {
		err := m.Put(context.Background(), putKey, []byte("after"))
		puts <- result{nil, err, time.Since(start)}
	}()
	var g, p result
	for got := 0; got < 2; got++ {
		select {
		case g = <-gets:
		case p = <-puts:
		case <-time.After(30 * time.Second):
			t.Fatalf("calls to a primary that stopped answering still blocked 30s after it stopped (table v%d)", cl.TableVersion())
		}
	}
	t.Logf("get returned after %v, put after %v", g.at.Round(time.Millisecond), p.at.Round(time.Millisecond))
	if g.err != nil || string(g.v) != "before" {
		t.Fatalf("get after failover: %q, %v", g.v, g.err)
	}
	if p.err != nil {
		t.Fatalf("put after failover: %v", p.err)
	}
	if v, err := c.Nodes[0].Map("m").Get(ctx, putKey); err != nil || string(v) != "after" {
		t.Fatalf("the put is not in the cluster: %q, %v", v, err)
	}
}

func TestTableRefreshSkipsUnresponsiveMember(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c, cl, proxies := proxiedCluster(t, 3, Config{})
	proxies[c.Nodes[1].RPCAddr()].Stall() // alive for the cluster, silent for the client
	for i := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		start := time.Now()
		err := cl.fetch(ctx)
		cancel()
		took := time.Since(start)
		t.Logf("refresh %d took %v", i, took.Round(time.Millisecond))
		if err != nil || took > 1900*time.Millisecond {
			t.Fatalf("refresh %d with one member unresponsive: %v after %v (budget 2s)", i, err, took.Round(time.Millisecond))
		}
	}
}
