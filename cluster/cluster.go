package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// MaxVoters is the size of the raft group that agrees on the table.
const MaxVoters = 3

// Config configures a member's cluster layer.
type Config struct {
	// Name is the member name, unique in the cluster. Required.
	Name string
	// GossipAddr is the serf host:port (UDP and TCP); port 0 picks one.
	// Default "127.0.0.1:0".
	GossipAddr string
	// RPCAddr is the advertised grid RPC address; raft shares it. Required.
	RPCAddr string
	// HTTPAddr is gossiped in the member's tags. Optional.
	HTTPAddr string
	// Seeds are gossip addresses to join. Empty: bootstrap a new cluster
	// with this member as its only voter.
	Seeds []string
	// Partitions is the partition count. Default affinity.DefaultPartitionCount.
	Partitions int
	// Backups is the synchronous backup count per partition. Default 1.
	Backups int
	// Profile sets failure detection and raft timing. Default ProfileLAN.
	Profile Profile
	// MaxMigrations bounds the pending replicas in the table at once. Default 64.
	MaxMigrations int
	// LeaseDuration is how long a member may serve after a lease renewal;
	// the leader promotes a failed primary's backup only once the primary's
	// lease must have lapsed, and treats a member that has not renewed for
	// this long as failed (lease.go). Default: see defaultLease.
	LeaseDuration time.Duration
	// Logger receives the layer's logs; nil discards them.
	Logger *slog.Logger
	// RaftLayer carries raft streams (the grid RPC listener's). Required.
	RaftLayer *transport.RaftLayer
	// Pool reaches other members' RPC addresses. Required.
	Pool *transport.Pool
	// OnTable is called with every newly committed table, in version order,
	// on raft's apply goroutine. It must not block and must not modify t.
	OnTable func(t *wire.Table)
	// NewMembership, if set, replaces serf: it is called once with this
	// member's metadata (tests pass FakeNetwork.Add). Optional.
	NewMembership func(meta MemberInfo) (Membership, error)
}

// DefaultConfig returns a config with every default filled in except the
// required fields.
func DefaultConfig() Config {
	return Config{
		GossipAddr:    "127.0.0.1:0",
		Partitions:    affinity.DefaultPartitionCount,
		Backups:       1,
		Profile:       ProfileLAN,
		MaxMigrations: 64,
	}
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	switch {
	case c.Name == "":
		return errors.New("cluster: Name is required")
	case c.RPCAddr == "":
		return errors.New("cluster: RPCAddr is required")
	case c.Partitions < 1 || c.Partitions > 65536:
		return fmt.Errorf("cluster: Partitions %d out of range [1, 65536]", c.Partitions)
	case c.Backups < 0 || c.Backups > 6:
		return fmt.Errorf("cluster: Backups %d out of range [0, 6]", c.Backups)
	case c.Profile != ProfileLAN && c.Profile != ProfileTest:
		return fmt.Errorf("cluster: unknown Profile %q", c.Profile)
	case c.MaxMigrations < 1:
		return fmt.Errorf("cluster: MaxMigrations %d must be positive", c.MaxMigrations)
	case c.LeaseDuration < 0:
		return fmt.Errorf("cluster: LeaseDuration %v must not be negative", c.LeaseDuration)
	case c.RaftLayer == nil || c.Pool == nil:
		return errors.New("cluster: RaftLayer and Pool are required")
	}
	return nil
}

// Cluster is one member's view of the cluster and its share of the table
// authority.
type Cluster struct {
	cfg        Config
	log        *slog.Logger
	ms         Membership
	gossipAddr string
	raftID     string
	raft       *raft.Raft
	trans      *raft.NetworkTransport
	fsm        *fsm

	reports chan wire.SyncedReport
	// draining: members that asked to leave gracefully (leader's memory;
	// a leaving member repeats its request, so a new leader learns it).
	drainMu  sync.Mutex
	draining map[string]string // name -> raft id of the incarnation that asked
	leases   *leaseBook        // the leader's record of renewals (lease.go)
	// beforeCommit, if set, is called with each table the authority is
	// about to commit. For tests.
	beforeCommit atomic.Pointer[func(*wire.Table)]
	// grantMu orders lease grants (readers) with table steps (the
	// writer, from reading membership and renewals to the commit): a
	// grant is either seen by the step, or bound to a table that shows
	// it. Otherwise a member failed over while it renews again would be
	// granted a lease on the table it is still primary in.
	grantMu sync.RWMutex
	// seatWake: a lease grant lets the next step confirm a seat (spare.go).
	seatWake chan struct{}
	beats    heartbeats // followers raft fails to heartbeat (heartbeats.go)
	// granting counts lease grants under way (HandleActivity).
	granting atomic.Int32
	// readyTerm is the raft term in which this member, leading, applied
	// every table committed before (its barrier): only then is its table
	// one a lease may be bound to.
	readyTerm atomic.Uint64
	act       activity // leaders heard from and leases granted (activity.go)
	done      chan struct{}
	wg        sync.WaitGroup
	closeMu   sync.Mutex
	closed    bool
}

// Start joins (or bootstraps) the cluster. It returns once this member is
// part of membership; the first table may arrive later (see WaitTable).
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.LeaseDuration == 0 {
		cfg.LeaseDuration = defaultLease(cfg.Profile)
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	c := &Cluster{
		cfg:      cfg,
		log:      lg,
		raftID:   cfg.Name + "-" + strconv.FormatInt(start.UnixNano(), 36),
		reports:  make(chan wire.SyncedReport, 1024),
		draining: map[string]string{},
		leases:   newLeaseBook(cfg.LeaseDuration, start),
		done:     make(chan struct{}),
		seatWake: make(chan struct{}, 1),
	}
	c.fsm = &fsm{onTable: cfg.OnTable}

	meta := MemberInfo{Name: cfg.Name, RPC: cfg.RPCAddr, HTTP: cfg.HTTPAddr, RaftID: c.raftID, Start: start}
	var ms Membership
	var err error
	c.gossipAddr = cfg.GossipAddr
	if cfg.NewMembership != nil {
		ms, err = cfg.NewMembership(meta)
	} else {
		ms, c.gossipAddr, err = NewSerf(SerfConfig{
			Name: cfg.Name, BindAddr: cfg.GossipAddr, Profile: cfg.Profile, Logger: lg, Meta: meta,
		})
	}
	if err != nil {
		return nil, err
	}
	c.ms = ms

	if err := c.startRaft(len(cfg.Seeds) == 0); err != nil {
		_ = ms.Shutdown()
		return nil, err
	}
	if len(cfg.Seeds) > 0 {
		if err := c.join(ctx); err != nil {
			c.shutdown()
			return nil, err
		}
	}
	c.act.heard = map[string]time.Time{}
	c.beats.failing = map[string]time.Time{}
	c.wg.Add(4)
	go c.run()
	go c.watchPauses()
	go c.trackActivity()
	go c.watchHeartbeats()
	return c, nil
}

func (c *Cluster) join(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	var last error
	for attempt := 1; ; attempt++ {
		n, err := c.ms.Join(ctx, c.cfg.Seeds)
		if err == nil && n > 0 {
			c.log.Info("joined cluster", "seeds", c.cfg.Seeds, "reached", n)
			return nil
		}
		last = err
		if attempt >= 5 {
			return fmt.Errorf("cluster: no seed of %v reachable after %d attempts: %v", c.cfg.Seeds, attempt, last)
		}
		select {
		case <-time.After(backoff):
			backoff *= 2
		case <-ctx.Done():
			return fmt.Errorf("cluster: join %v: %w (last error: %v)", c.cfg.Seeds, ctx.Err(), last)
		}
	}
}

// raftConfig is the raft configuration of incarnation id.
func raftConfig(id string, log hclog.Logger, p Profile) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(id)
	rc.Logger = log
	rc.SnapshotThreshold = 64
	rc.TrailingLogs = 128
	rc.SnapshotInterval = 10 * time.Second
	setRaftTiming(rc, p)
	return rc
}

// raftStores are an incarnation's raft log (and stable) store and its
// snapshot store: in memory, a restarted member starts empty.
func raftStores() (*raft.InmemStore, *raft.InmemSnapshotStore) {
	return raft.NewInmemStore(), raft.NewInmemSnapshotStore()
}

func (c *Cluster) startRaft(bootstrap bool) error {
	hl := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: slogWriter{c.log.With("from", "raft")}})
	rc := raftConfig(c.raftID, hl, c.cfg.Profile)
	c.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: newRaftStream(c.cfg.RaftLayer, c.cfg.RPCAddr, c.raftID), MaxPool: 3, Timeout: 2 * time.Second, Logger: hl,
	})
	logs, snaps := raftStores()
	if bootstrap {
		conf := raft.Configuration{Servers: []raft.Server{{
			Suffrage: raft.Voter, ID: rc.LocalID, Address: raftAddr(c.cfg.RPCAddr, c.raftID),
		}}}
		if err := raft.BootstrapCluster(rc, logs, logs, snaps, c.trans, conf); err != nil {
			_ = c.trans.Close()
			return fmt.Errorf("cluster: bootstrap raft: %w", err)
		}
	}
	r, err := raft.NewRaft(rc, c.fsm, logs, logs, snaps, c.trans)
	if err != nil {
		_ = c.trans.Close()
		return fmt.Errorf("cluster: start raft: %w", err)
	}
	c.raft = r
	return nil
}

// GossipAddr is the bound gossip address (useful with port 0).
func (c *Cluster) GossipAddr() string { return c.gossipAddr }

// Name is this member's name.
func (c *Cluster) Name() string { return c.cfg.Name }

// RaftID is this incarnation's raft server id.
func (c *Cluster) RaftID() string { return c.raftID }

// Table returns the latest committed table known here, or nil.
func (c *Cluster) Table() *wire.Table { return c.fsm.table.Load() }

// Members returns membership's view.
func (c *Cluster) Members() []MemberInfo { return c.ms.Members() }

// IsLeader reports whether this member leads the authority.
func (c *Cluster) IsLeader() bool { return c.raft.State() == raft.Leader }

// Leader returns the leader's RPC address, or "".
func (c *Cluster) Leader() string {
	addr, _ := c.raft.LeaderWithID()
	return rpcOf(addr)
}

// Voters returns the raft server ids of the current voters.
func (c *Cluster) Voters() []string {
	f := c.raft.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	var out []string
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			out = append(out, string(s.ID))
		}
	}
	return out
}

// Report sends a synced report to the authority's leader.
func (c *Cluster) Report(ctx context.Context, r wire.SyncedReport) error {
	addr, id := c.raft.LeaderWithID()
	if id == "" {
		return fmt.Errorf("%w: no table authority leader", api.ErrUnavailable)
	}
	if string(id) == c.raftID {
		return c.HandleSynced(r)
	}
	conn, err := c.cfg.Pool.Get(ctx, rpcOf(addr))
	if err != nil {
		return err
	}
	return conn.Call(ctx, wire.MsgSynced, &r, nil)
}

// HandleSynced queues a synced report if this member leads the authority.
func (c *Cluster) HandleSynced(r wire.SyncedReport) error {
	if !c.IsLeader() {
		return fmt.Errorf("%w: not the table authority leader", api.ErrUnavailable)
	}
	select {
	case c.reports <- r:
		return nil
	default:
		return fmt.Errorf("%w: authority busy", api.ErrUnavailable)
	}
}

// HandleDrain records that node wants to leave gracefully, if this member
// leads the authority.
//
// A drain belongs to the incarnation that asked (id, its raft id): a process
// restarted under the same name right after a graceful leave is a new
// member, not a leaving one.
func (c *Cluster) HandleDrain(node, id string) error {
	if !c.IsLeader() {
		return fmt.Errorf("%w: not the table authority leader", api.ErrUnavailable)
	}
	c.drainMu.Lock()
	prev, had := c.draining[node]
	added := !had || prev != id
	c.draining[node] = id
	staying := 0
	for _, m := range c.liveMembers() {
		if !c.drainingMember(m) {
			staying++
		}
	}
	c.drainMu.Unlock()
	if staying == 0 {
		// Every member is leaving (a whole cluster shut down): nothing can
		// be handed over, so nobody should wait for it.
		return fmt.Errorf("%w: every live member is leaving", api.ErrNoTarget)
	}
	if added {
		c.log.Info("draining member before it leaves", "member", node)
		select {
		case c.reports <- wire.SyncedReport{Partition: -1}: // wake the loop
		default:
		}
	}
	return nil
}

// drainingMember reports whether live member m is the incarnation that
// asked to drain. Caller holds drainMu.
func (c *Cluster) drainingMember(m MemberInfo) bool {
	id, ok := c.draining[m.Name]
	return ok && (id == "" || id == m.RaftID)
}

// requestDrain sends a drain request for this member to the leader.
func (c *Cluster) requestDrain(ctx context.Context) error {
	addr, id := c.raft.LeaderWithID()
	if id == "" {
		return fmt.Errorf("%w: no table authority leader", api.ErrUnavailable)
	}
	if string(id) == c.raftID {
		return c.HandleDrain(c.cfg.Name, c.raftID)
	}
	conn, err := c.cfg.Pool.Get(ctx, rpcOf(addr))
	if err != nil {
		return err
	}
	return conn.Call(ctx, wire.MsgDrain, &wire.DrainRequest{Node: c.cfg.Name, ID: c.raftID}, nil)
}

// holds reports whether the table still places anything on member name.
func holds(t *wire.Table, name string) bool {
	if t == nil {
		return false
	}
	for _, p := range t.Partitions {
		if p.Primary == name || slices.Contains(p.Backups, name) || slices.Contains(p.Pending, name) {
			return true
		}
	}
	return false
}

// Drain asks the authority to hand everything this member holds to others
// and waits until the committed table places nothing here, or ctx ends (then
// the member leaves anyway, and its backups are promoted as on a failure).
func (c *Cluster) Drain(ctx context.Context) error {
	others := 0
	for _, m := range c.liveMembers() {
		if m.Name != c.cfg.Name {
			others++
		}
	}
	if others == 0 {
		return nil // nobody to hand over to
	}
	for {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		err := c.requestDrain(rctx)
		cancel()
		if errors.Is(err, api.ErrNoTarget) {
			return err
		}
		if err != nil {
			c.log.Debug("drain request", "err", err)
		}
		if !holds(c.Table(), c.cfg.Name) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: drain of %s incomplete: %w", c.cfg.Name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// run is the authority loop: on the leader it keeps the voters and the
// table in step with membership and synced reports.
func (c *Cluster) run() {
	defer c.wg.Done()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	// due fires when a silent member's lease lapses: its suspicion must not
	// wait for the next tick.
	due := time.NewTimer(time.Hour)
	defer due.Stop()
	var reports []wire.SyncedReport
	leading := false
	var term uint64 // the raft term this member leads in
	for {
		select {
		case <-c.done:
			return
		case <-c.ms.Notify():
		case <-tick.C:
		case <-due.C:
		case <-c.seatWake:
		case <-c.raft.LeaderCh():
		case r := <-c.reports:
			reports = append(reports, r)
			// Coalesce a burst of reports into one commit.
			coalesce := time.After(20 * time.Millisecond)
		collect:
			for {
				select {
				case r := <-c.reports:
					reports = append(reports, r)
				case <-coalesce:
					break collect
				case <-c.done:
					return
				}
			}
		}
		if c.raft.State() != raft.Leader {
			leading = false
			reports = reports[:0]
			continue
		}
		// A new term is a new leadership even if this loop never saw the
		// one in between (it was busy, and LeaderCh keeps only the last
		// signal): another leader may have granted leases meanwhile.
		if t := c.raft.CurrentTerm(); !leading || t != term {
			// Apply everything earlier leaders committed before deciding.
			if err := c.raft.Barrier(5 * time.Second).Error(); err != nil {
				c.log.Warn("authority barrier failed", "err", err)
				leading = false
				continue
			}
			leading, term = true, t
			c.readyTerm.Store(t)
			lapse := c.predecessorsLapse(context.Background(), time.Now())
			c.leases.lead(time.Now(), lapse, c.predecessor())
			c.log.Info("leading the table authority", "raft_id", c.raftID)
		}
		c.reconcileVoters()
		next := c.reconcileTable(reports, term)
		reports = reports[:0]
		if !next.IsZero() {
			due.Reset(max(time.Until(next), 0) + time.Millisecond)
		}
	}
}

// liveMembers are the members that run: alive, or leaving. A leaving
// member still runs (a graceful leave drains first, through MsgDrain, and
// only then announces its leave); and serf may keep a member that left and
// came back under the same name as "leaving" on some nodes although it is
// alive (a late leave intent). Counting it out would drop its replicas
// from the table while it holds them (a chaos run lost acknowledged writes
// that way after a later kill).
func (c *Cluster) liveMembers() []MemberInfo {
	var live []MemberInfo
	for _, m := range c.ms.Members() {
		if (m.Status == StatusAlive || m.Status == StatusLeaving) && m.RPC != "" && m.RaftID != "" {
			live = append(live, m)
		}
	}
	return live
}

func (c *Cluster) reconcileVoters() {
	f := c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return
	}
	live := c.liveMembers()
	byID := make(map[string]MemberInfo, len(live))
	for _, m := range live {
		byID[m.RaftID] = m
	}
	servers := f.Configuration().Servers
	voters := 0
	known := map[string]raft.ServerSuffrage{}
	for _, s := range servers {
		id := string(s.ID)
		if _, ok := byID[id]; !ok && id != c.raftID {
			if s.Suffrage == raft.Voter && !keepsMajority(servers, s.ID, c.reachableLive(byID), c.raftID) {
				// Membership may wrongly see a live voter as gone (a
				// slow node, a view not yet merged): removing it while
				// another voter is dead would leave a configuration
				// whose majority is dead, and the table frozen for good.
				c.log.Warn("keeping raft voter: removing it would leave no live majority", "id", id)
				known[id] = s.Suffrage
				voters++
				continue
			}
			if err := c.raft.RemoveServer(s.ID, 0, 5*time.Second).Error(); err != nil {
				c.log.Warn("remove raft server", "id", id, "err", err)
				return
			}
			c.log.Info("removed raft server", "id", id, "voter", s.Suffrage == raft.Voter)
			continue
		}
		known[id] = s.Suffrage
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	for _, m := range live {
		suff, ok := known[m.RaftID]
		switch {
		case ok && suff == raft.Voter:
		case voters < MaxVoters:
			if err := c.raft.AddVoter(raft.ServerID(m.RaftID), raftAddr(m.RPC, m.RaftID), 0, 5*time.Second).Error(); err != nil {
				c.log.Warn("add raft voter", "member", m.Name, "err", err)
				return
			}
			voters++
			c.log.Info("added raft voter", "member", m.Name, "id", m.RaftID)
		case !ok:
			if err := c.raft.AddNonvoter(raft.ServerID(m.RaftID), raftAddr(m.RPC, m.RaftID), 0, 5*time.Second).Error(); err != nil {
				c.log.Warn("add raft nonvoter", "member", m.Name, "err", err)
				return
			}
			c.log.Info("added raft nonvoter", "member", m.Name, "id", m.RaftID)
		}
	}
}

// leftIncarnations names the members whose copies are certainly gone
// because they left gracefully: membership says left, and the incarnation
// that left is the one the table knows. A process restarted under the same
// name after its leave may be in the table already (another leader saw it
// join) while this member's membership still shows only the old one's
// leave: that name is failed here, not gone, or its data would be thrown
// away (a chaos run lost acknowledged writes that way).
func leftIncarnations(ms []MemberInfo, live map[string]bool, t *wire.Table) map[string]bool {
	ids := map[string]string{}
	if t != nil {
		for _, m := range t.Members {
			ids[m.Name] = m.ID
		}
	}
	gone := map[string]bool{}
	for _, m := range ms {
		if m.Status != StatusLeft || live[m.Name] {
			continue
		}
		if id, ok := ids[m.Name]; ok && id != "" && m.RaftID != "" && id != m.RaftID {
			continue
		}
		gone[m.Name] = true
	}
	return gone
}

// keepsMajority reports whether the voters left after removing id still
// have a live majority (self counts as live).
func keepsMajority(servers []raft.Server, id raft.ServerID, live map[string]MemberInfo, self string) bool {
	total, alive := 0, 0
	for _, s := range servers {
		if s.Suffrage != raft.Voter || s.ID == id {
			continue
		}
		total++
		if _, ok := live[string(s.ID)]; ok || string(s.ID) == self {
			alive++
		}
	}
	return alive > total/2
}

// dropSuspects leaves out of the live members those whose lease lapsed at
// this leader (lease.go), and returns when the next one would.
func (c *Cluster) dropSuspects(now time.Time, live []wire.Member) ([]wire.Member, time.Time) {
	names := make([]string, len(live))
	for i, m := range live {
		names[i] = m.Name
	}
	sus, next, began, ended := c.leases.suspects(now, names, c.cfg.Name)
	for _, n := range began {
		c.log.Warn("member silent for a whole lease; failing it over", "member", n, "lease", c.cfg.LeaseDuration)
	}
	for _, n := range ended {
		c.log.Info("suspected member renewed its lease again", "member", n)
	}
	if len(sus) == 0 {
		return live, next
	}
	kept := live[:0:0]
	for _, m := range live {
		if !sus[m.Name] {
			kept = append(kept, m)
		}
	}
	return kept, next
}

// reconcileTable commits the next table if it differs, and returns when a
// silent member would next become suspect (zero: none).
func (c *Cluster) reconcileTable(reports []wire.SyncedReport, term uint64) time.Time {
	tbl, res, next, ok := c.stepTable(reports, term)
	if !ok {
		return next
	}
	// Followers learn that the table committed from the next AppendEntries
	// that carries the commit index: send one now (a barrier entry) rather
	// than at the next commit timeout. Nothing waits for it.
	_ = c.raft.Barrier(time.Second)
	lvl := slog.LevelDebug
	if res.Promoted+res.Lost+res.Switched+res.Added > 0 || res.Converged {
		lvl = slog.LevelInfo
	}
	if res.Lost > 0 {
		lvl = slog.LevelError
	}
	c.log.Log(context.Background(), lvl, "committed partition table", "version", tbl.Version,
		"members", len(tbl.Members), "promoted", res.Promoted, "lost", res.Lost, "migrations_started", res.Added,
		"primaries_moved", res.Switched, "replicas_dropped", res.Dropped, "migrations_in_flight", res.InFlight,
		"unavailable", res.Unavailable, "awaiting_lease", res.AwaitingLease, "from_spare", res.FromSpare, "converged", res.Converged)
	return next
}

// stepTable computes the next table and commits it if it differs (ok),
// with lease grants held off (grantMu); next is when a silent member would
// next become suspect (zero: none). It commits nothing if the raft term is
// no longer term: the step was computed from a lease book that does not
// know what the leaders in between granted.
func (c *Cluster) stepTable(reports []wire.SyncedReport, term uint64) (tbl *wire.Table, res StepResult, next time.Time, ok bool) {
	c.grantMu.Lock()
	defer c.grantMu.Unlock()
	live := c.liveMembers()
	wm := make([]wire.Member, 0, len(live))
	c.drainMu.Lock()
	draining := make(map[string]bool, len(c.draining))
	liveNames := map[string]bool{}
	for _, m := range live {
		wm = append(wm, wire.Member{Name: m.Name, RPC: m.RPC, ID: m.RaftID})
		liveNames[m.Name] = true
		if c.drainingMember(m) {
			draining[m.Name] = true
		}
	}
	// Members that left gracefully took their copies with them.
	gone := leftIncarnations(c.ms.Members(), liveNames, c.fsm.table.Load())
	for n := range c.draining {
		if !draining[n] {
			delete(c.draining, n) // gone, or back as a new incarnation: forget it
		}
	}
	c.drainMu.Unlock()
	now := time.Now()
	wm, next = c.dropSuspects(now, wm)
	cur := c.fsm.table.Load()
	leased := c.leased(now)
	for _, m := range wm {
		delete(leased, m.Name) // live members are not waited for
	}
	granted := c.leases.grants(wm)
	tbl, res = Next(StepInput{Cur: cur, Live: wm, Partitions: c.cfg.Partitions, Backups: c.cfg.Backups, Reports: reports,
		MaxInFlight: c.cfg.MaxMigrations, Draining: draining, Leased: leased, Gone: gone,
		Granted: granted})
	if tbl == cur {
		return tbl, res, next, false
	}
	data, err := wire.Marshal(tbl)
	if err != nil {
		c.log.Error("encode table", "err", err)
		return tbl, res, next, false
	}
	if t := c.raft.CurrentTerm(); t != term {
		c.log.Info("leadership changed during a table step; not committing it", "version", tbl.Version, "term", t, "step_term", term)
		return tbl, res, next, false
	}
	if f := c.beforeCommit.Load(); f != nil {
		(*f)(tbl)
	}
	if err := c.raft.Apply(data, 5*time.Second).Error(); err != nil {
		c.log.Warn("commit table", "version", tbl.Version, "err", err)
		return tbl, res, next, false
	}
	return tbl, res, next, true
}

// Leave leaves gracefully: the member drains (see Drain, bounded by ctx),
// leadership moves away, and membership announces the departure.
func (c *Cluster) Leave(ctx context.Context) error {
	if err := c.Drain(ctx); err != nil {
		c.log.Warn("leaving before the handoff completed", "err", err)
	}
	if c.IsLeader() && len(c.Voters()) > 1 {
		if err := c.raft.LeadershipTransfer().Error(); err != nil {
			c.log.Warn("leadership transfer", "err", err)
		}
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := c.ms.Leave(lctx)
	c.shutdown()
	return err
}

// Close stops this member without a graceful leave (others detect it as
// failed). Idempotent.
func (c *Cluster) Close() error {
	c.shutdown()
	return nil
}

func (c *Cluster) shutdown() {
	c.closeMu.Lock()
	if c.closed {
		c.closeMu.Unlock()
		return
	}
	c.closed = true
	close(c.done)
	c.closeMu.Unlock()
	c.wg.Wait()
	// Lease grants under way finish first, and later ones see done
	// closed: raft never answers a verification that reaches it after its
	// shutdown (HandleLease).
	c.grantMu.Lock()
	c.grantMu.Unlock()
	if err := c.raft.Shutdown().Error(); err != nil {
		c.log.Warn("raft shutdown", "err", err)
	}
	_ = c.trans.Close()
	_ = c.ms.Shutdown()
}

// fsm is the authority's state machine: the latest committed table.
type fsm struct {
	table   atomic.Pointer[wire.Table]
	onTable func(*wire.Table)
	mu      sync.Mutex
}

func (f *fsm) set(t *wire.Table) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cur := f.table.Load(); cur != nil && cur.Version >= t.Version {
		return
	}
	f.table.Store(t)
	if f.onTable != nil {
		f.onTable(t)
	}
}

func (f *fsm) Apply(l *raft.Log) any {
	var t wire.Table
	if err := wire.Decode(l.Data, &t); err != nil {
		return err
	}
	f.set(&t)
	return nil
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	t := f.table.Load()
	if t == nil {
		return fsmSnapshot(nil), nil
	}
	data, err := wire.Marshal(t)
	return fsmSnapshot(data), err
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil || len(data) == 0 {
		return err
	}
	var t wire.Table
	if err := wire.Decode(data, &t); err != nil {
		return err
	}
	f.set(&t)
	return nil
}

type fsmSnapshot []byte

func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s fsmSnapshot) Release() {}
