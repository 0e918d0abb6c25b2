package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/collocate/grid/cluster"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/process"
)

// The embedded cluster: three grid nodes in this process on loopback, each
// with a processor runtime that registers the same processors. A node is
// killed as a crash would (node.Kill, then its runtime closed) and started
// again under its name and on its addresses, as a process restarted with
// the same flags: a new, empty member that joins the live ones.

// clusterSize is the number of nodes; three keep the partition table's raft
// group a majority when one dies.
const clusterSize = 3

// member is one node slot: the node and its runtime (nil while down).
type member struct {
	name string
	node *grid.Node
	rt   *process.Runtime
	// gossip and rpc are the addresses the first incarnation bound.
	gossip, rpc string
}

// embedded is the cluster. Only the flow's goroutine uses it.
type embedded struct {
	cfg     Config
	log     *slog.Logger
	procs   func() []process.Processor
	members [clusterSize]member
	// retired holds the counts of runtimes that were stopped, so that
	// progress counts do not fall back when a node dies.
	retired map[string]stageProgress
}

// startCluster starts the nodes (the first bootstraps, the others join
// it), waits until the partition table is stable, and starts a runtime on
// each.
func startCluster(ctx context.Context, cfg Config, log *slog.Logger, procs func() []process.Processor) (*embedded, error) {
	c := &embedded{cfg: cfg, log: log, procs: procs, retired: map[string]stageProgress{}}
	for i := range c.members {
		c.members[i].name = fmt.Sprintf("n%d", i+1)
		if err := c.startNode(ctx, i, "127.0.0.1:0", "127.0.0.1:0"); err != nil {
			c.close()
			return nil, err
		}
		m := &c.members[i]
		m.gossip, m.rpc = m.node.GossipAddr(), m.node.RPCAddr()
	}
	if err := c.waitStable(ctx, 30*time.Second); err != nil {
		c.close()
		return nil, err
	}
	for i := range c.members {
		if err := c.startRuntime(i); err != nil {
			c.close()
			return nil, err
		}
	}
	return c, nil
}

// nodeConfig is member i's node config on gossip and rpc, joining seeds.
func (c *embedded) nodeConfig(i int, gossip, rpc string, seeds []string) grid.Config {
	cfg := grid.DefaultConfig() // 1 backup
	cfg.Name = c.members[i].name
	cfg.GossipAddr, cfg.RPCAddr = gossip, rpc
	cfg.Seeds = seeds
	cfg.Partitions = c.cfg.Partitions
	// Every node is on loopback: detect a dead member in about a second.
	cfg.Profile = cluster.ProfileTest
	cfg.RequestTimeout = 5 * time.Second
	cfg.Logger = c.log.With("node", cfg.Name)
	return cfg
}

// startNode starts member i's node on gossip and rpc, joining the live
// nodes (none: it bootstraps the cluster).
func (c *embedded) startNode(ctx context.Context, i int, gossip, rpc string) error {
	var seeds []string
	for _, n := range c.live() {
		seeds = append(seeds, n.GossipAddr())
	}
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	nd, err := grid.Start(sctx, c.nodeConfig(i, gossip, rpc, seeds))
	if err != nil {
		return fmt.Errorf("start %s: %w", c.members[i].name, err)
	}
	c.members[i].node = nd
	return nil
}

// startRuntime starts member i's processor runtime with every processor.
func (c *embedded) startRuntime(i int) error {
	m := &c.members[i]
	cfg := process.DefaultConfig()
	cfg.Logger = c.log.With("node", m.name)
	rt, err := process.Start(m.node, cfg)
	if err != nil {
		return fmt.Errorf("runtime of %s: %w", m.name, err)
	}
	for _, p := range c.procs() {
		if err := rt.Register(p); err != nil {
			rt.Close()
			return fmt.Errorf("register %s at %s: %w", p.Name, m.name, err)
		}
	}
	m.rt = rt
	return nil
}

// kill stops member i as SIGKILL would: the node dies at once (its
// partitions fail over to their backups), then its runtime is closed.
func (c *embedded) kill(i int) {
	m := &c.members[i]
	for _, s := range m.rt.Status() {
		r := c.retired[s.Name]
		r.handled += s.Handled
		r.parked += s.Parked
		c.retired[s.Name] = r
	}
	m.node.Kill()
	m.rt.Close()
	m.node, m.rt = nil, nil
}

// restart starts member i again under its name and on its addresses as
// a fresh, empty member that joins the live nodes, with a new runtime.
// (On new addresses, gossip would refuse the name for as long as it
// remembers the dead incarnation's address: about 15 s.)
func (c *embedded) restart(ctx context.Context, i int) error {
	m := &c.members[i]
	if err := c.startNode(ctx, i, m.gossip, m.rpc); err != nil {
		return err
	}
	return c.startRuntime(i)
}

// close stops every runtime, then kills every node: the example keeps
// nothing, so there is nothing to hand off.
func (c *embedded) close() {
	for i := range c.members {
		m := &c.members[i]
		if m.rt != nil {
			m.rt.Close()
		}
		if m.node != nil {
			m.node.Kill()
		}
		m.node, m.rt = nil, nil
	}
}

// live returns the running nodes.
func (c *embedded) live() []*grid.Node {
	var out []*grid.Node
	for _, m := range c.members {
		if m.node != nil {
			out = append(out, m.node)
		}
	}
	return out
}

// runtimes returns the running runtimes.
func (c *embedded) runtimes() []*process.Runtime {
	var out []*process.Runtime
	for _, m := range c.members {
		if m.rt != nil {
			out = append(out, m.rt)
		}
	}
	return out
}

// waitStable waits until every live node installed the same table, it
// names exactly the live nodes with full backups, and the table's raft
// group has three live voters: only then may a node die without freezing
// the table.
func (c *embedded) waitStable(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		why := c.unstable()
		if why == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster not stable after %v: %s", timeout, why)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *embedded) unstable() string {
	live := c.live()
	var names []string
	ids := map[string]bool{}
	for _, n := range live {
		names = append(names, n.Name())
		ids[n.Cluster().RaftID()] = true
	}
	slices.Sort(names)
	var version uint64
	for _, n := range live {
		t := n.Table()
		switch {
		case t == nil:
			return n.Name() + " has no table yet"
		case version != 0 && t.Version != version:
			return "the nodes have different tables"
		case !cluster.Converged(t, names, n.Config().Backups):
			return fmt.Sprintf("table %d not converged", t.Version)
		}
		version = t.Version
		var members []string
		for _, m := range t.Members {
			members = append(members, m.Name)
		}
		if !slices.Equal(members, names) {
			return fmt.Sprintf("table %d names %v, live %v", t.Version, members, names)
		}
	}
	for _, n := range live {
		if !n.Cluster().IsLeader() {
			continue
		}
		voters := n.Cluster().Voters()
		if len(voters) != min(cluster.MaxVoters, len(live)) {
			return fmt.Sprintf("%d raft voters", len(voters))
		}
		for _, v := range voters {
			if !ids[v] {
				return "a raft voter is not a live node"
			}
		}
		return ""
	}
	return "no raft leader among the live nodes"
}
