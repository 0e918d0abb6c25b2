// Package gridtest runs in-process clusters of grid nodes for tests: real
// serf gossip and real TCP on loopback with random ports, the test failure
// detection profile, and logs to t.Log.
package gridtest

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/collocate/grid/cluster"
	"github.com/collocate/grid/grid"
)

// Cluster is a set of in-process nodes. Nodes[i] is nil while node i is down.
type Cluster struct {
	T     testing.TB
	Nodes []*grid.Node
	cfgs  []grid.Config
	addrs [][2]string // gossip and RPC address each node first bound
	logs  logGate
}

// logGate stops log lines once the test ended: goroutines that outlive a
// node's shutdown (raft's transport) may still log, and t.Log after the
// test completed panics. The check and the write hold mu, so no line slips
// in after end.
type logGate struct {
	mu   sync.Mutex
	done bool
}

func (g *logGate) end() {
	g.mu.Lock()
	g.done = true
	g.mu.Unlock()
}

// tWriter sends log lines to t.Log until the test ends.
type tWriter struct {
	t    testing.TB
	gate *logGate
}

func (w tWriter) Write(p []byte) (int, error) {
	w.gate.mu.Lock()
	defer w.gate.mu.Unlock()
	if !w.gate.done {
		w.t.Log(string(p[:len(p)-1]))
	}
	return len(p), nil
}

// Logger returns a logger writing to t.Log at level.
func (c *Cluster) Logger(level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{c.T, &c.logs}, &slog.HandlerOptions{Level: level}))
}

// New starts n nodes: node 0 bootstraps, the others join it. configure,
// if not nil, adjusts each node's config. Cleanup kills every node.
func New(t testing.TB, n int, configure func(i int, cfg *grid.Config)) *Cluster {
	t.Helper()
	c := &Cluster{T: t}
	t.Cleanup(func() {
		c.Close()
		c.logs.end()
	})
	for i := range n {
		cfg := grid.DefaultConfig()
		cfg.Name = fmt.Sprintf("n%d", i)
		cfg.Profile = cluster.ProfileTest
		cfg.RequestTimeout = 5 * time.Second
		cfg.Logger = c.Logger(slog.LevelWarn)
		if i > 0 {
			cfg.Seeds = []string{c.Nodes[0].GossipAddr()}
		}
		if configure != nil {
			configure(i, &cfg)
		}
		c.cfgs = append(c.cfgs, cfg)
		nd := c.start(cfg)
		c.Nodes = append(c.Nodes, nd)
		c.addrs = append(c.addrs, [2]string{nd.GossipAddr(), nd.RPCAddr()})
	}
	return c
}

func (c *Cluster) start(cfg grid.Config) *grid.Node {
	c.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	nd, err := grid.Start(ctx, cfg)
	if err != nil {
		c.T.Fatalf("start %s: %v", cfg.Name, err)
	}
	return nd
}

// Live returns the running nodes.
func (c *Cluster) Live() []*grid.Node {
	var out []*grid.Node
	for _, n := range c.Nodes {
		if n != nil {
			out = append(out, n)
		}
	}
	return out
}

// Kill stops node i at once, as SIGKILL would.
func (c *Cluster) Kill(i int) {
	c.Nodes[i].Kill()
	c.Nodes[i] = nil
}

// Leave stops node i gracefully.
func (c *Cluster) Leave(i int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Nodes[i].Close(ctx); err != nil {
		c.T.Logf("leave n%d: %v", i, err)
	}
	c.Nodes[i] = nil
}

// Restart starts node i again with the same name, as a fresh empty member
// joining a live node, on new addresses.
func (c *Cluster) Restart(i int) {
	c.T.Helper()
	c.restart(i, "127.0.0.1:0", "127.0.0.1:0")
}

// RestartSameAddr starts node i again with the same name and the same RPC
// and gossip addresses (a process restarted with the same flags): a new,
// empty incarnation that peers reach where its predecessor was.
func (c *Cluster) RestartSameAddr(i int) {
	c.T.Helper()
	c.restart(i, c.addrs[i][0], c.addrs[i][1])
}

func (c *Cluster) restart(i int, gossip, rpc string) {
	c.T.Helper()
	cfg := c.cfgs[i]
	cfg.Seeds = nil
	for _, n := range c.Live() {
		cfg.Seeds = append(cfg.Seeds, n.GossipAddr())
	}
	cfg.GossipAddr, cfg.RPCAddr = gossip, rpc
	c.Nodes[i] = c.start(cfg)
}

// Add starts one more node, named n<index>, joining the live nodes, and
// returns its index.
func (c *Cluster) Add(configure func(cfg *grid.Config)) int {
	c.T.Helper()
	i := len(c.Nodes)
	cfg := grid.DefaultConfig()
	cfg.Name = fmt.Sprintf("n%d", i)
	cfg.Profile = cluster.ProfileTest
	cfg.RequestTimeout = 5 * time.Second
	cfg.Logger = c.Logger(slog.LevelWarn)
	for _, n := range c.Live() {
		cfg.Seeds = append(cfg.Seeds, n.GossipAddr())
	}
	if configure != nil {
		configure(&cfg)
	}
	c.cfgs = append(c.cfgs, cfg)
	nd := c.start(cfg)
	c.Nodes = append(c.Nodes, nd)
	c.addrs = append(c.addrs, [2]string{nd.GossipAddr(), nd.RPCAddr()})
	return i
}

// Close kills every node.
func (c *Cluster) Close() {
	for i, n := range c.Nodes {
		if n != nil {
			n.Kill()
			c.Nodes[i] = nil
		}
	}
}

// votersSeen lists each live node's raft voters (its latest configuration):
// a table that never converges is often an authority without a quorum.
func (c *Cluster) votersSeen() string {
	var b strings.Builder
	for i, n := range c.Nodes {
		if n == nil || n.Cluster() == nil {
			continue
		}
		fmt.Fprintf(&b, "n%d %v; ", i, n.Cluster().Voters())
	}
	return b.String()
}

// WaitStable waits until every live node has installed the same table, that
// table names exactly the live nodes, and it is converged (full backups,
// nothing pending).
func (c *Cluster) WaitStable(timeout time.Duration) {
	c.T.Helper()
	if err := c.waitStable(timeout); err != nil {
		c.T.Fatal(err)
	}
}

func (c *Cluster) waitStable(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var why string
	for time.Now().Before(deadline) {
		why = c.unstable()
		if why == "" {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("cluster not stable after %v: %s; raft voters per node: %s", timeout, why, c.votersSeen())
}

func (c *Cluster) unstable() string {
	live := c.Live()
	var names []string
	for _, n := range live {
		names = append(names, n.Name())
	}
	slices.Sort(names)
	var version uint64
	for i, n := range live {
		t := n.Table()
		if t == nil {
			return n.Name() + " has no table"
		}
		if i == 0 {
			version = t.Version
		} else if t.Version != version {
			return fmt.Sprintf("%s has table %d, %s has %d", live[0].Name(), version, n.Name(), t.Version)
		}
		var members []string
		for _, m := range t.Members {
			members = append(members, m.Name)
		}
		if !slices.Equal(members, names) {
			return fmt.Sprintf("table %d members %v, live %v", t.Version, members, names)
		}
		if !cluster.Converged(t, names, n.Config().Backups) {
			return fmt.Sprintf("table %d not converged", t.Version)
		}
	}
	return c.votersUnstable(live)
}

// votersUnstable reports a raft voter set that is not yet made of live
// incarnations only (min(3, live) of them): killing a node before the
// authority replaced a dead voter can cost the table its majority.
func (c *Cluster) votersUnstable(live []*grid.Node) string {
	ids := map[string]bool{}
	for _, n := range live {
		ids[n.Cluster().RaftID()] = true
	}
	for _, n := range live {
		if !n.Cluster().IsLeader() {
			continue
		}
		voters := n.Cluster().Voters()
		for _, v := range voters {
			if !ids[v] {
				return fmt.Sprintf("voter %s is not a live incarnation", v)
			}
		}
		if want := min(cluster.MaxVoters, len(live)); len(voters) != want {
			return fmt.Sprintf("%d voters, want %d", len(voters), want)
		}
		return ""
	}
	return "no authority leader among the live nodes"
}

// Node returns the live node named name, or nil.
func (c *Cluster) Node(name string) *grid.Node {
	for _, n := range c.Live() {
		if n.Name() == name {
			return n
		}
	}
	return nil
}

// CheckReplicas compares every partition's backups with its primary (LSN,
// entry count, digest) and returns the first difference, polling until
// timeout for replication in flight to land.
func (c *Cluster) CheckReplicas(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := c.checkReplicas()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *Cluster) checkReplicas() error {
	live := c.Live()
	if len(live) == 0 {
		return fmt.Errorf("no live nodes")
	}
	t := live[0].Table()
	for p, part := range t.Partitions {
		pn := c.Node(part.Primary)
		if pn == nil {
			return fmt.Errorf("partition %d: primary %s not live", p, part.Primary)
		}
		pi := pn.Inspect(p)
		if pi.Role != "primary" {
			return fmt.Errorf("partition %d: %s is %s, table says primary", p, part.Primary, pi.Role)
		}
		for _, b := range part.Backups {
			bn := c.Node(b)
			if bn == nil {
				return fmt.Errorf("partition %d: backup %s not live", p, b)
			}
			bi := bn.Inspect(p)
			if bi.LSN != pi.LSN || bi.Entries != pi.Entries || bi.Digest != pi.Digest {
				return fmt.Errorf("partition %d: backup %s (lsn %d, %d entries, digest %x) differs from primary %s (lsn %d, %d entries, digest %x)",
					p, b, bi.LSN, bi.Entries, bi.Digest, part.Primary, pi.LSN, pi.Entries, pi.Digest)
			}
		}
	}
	return nil
}

// LeakOptions are the goleak options for packages that run clusters:
// goroutines of raft's network transport and of memberlist that end on
// their own timeouts after Shutdown returns.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("github.com/hashicorp/raft.(*NetworkTransport).listen"),
		goleak.IgnoreTopFunction("github.com/hashicorp/raft.(*netPipeline).decodeResponses"),
		// memberlist's Shutdown does not wait for a probe in flight.
		goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"),
	}
}
