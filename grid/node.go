// Package grid is the data grid node: partition stores, synchronous
// replication to backups, migration by snapshot, the byte-level and typed map
// APIs, and the embedded entry point (Start).
//
// Invariants: a partition's mutations are applied by its primary only, in LSN
// order, and acknowledged only after every in-sync backup applied them; a
// read never returns a value that is not on every in-sync backup; replication
// from an epoch lower than the partition's is refused. grid never imports
// compute, txn, client or cmd.
package grid

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/cluster"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/router"
	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
	"github.com/collocate/grid/internal/workpool"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a node.
type Config struct {
	// Name is the member name, unique in the cluster. Default: "node-" and a
	// random suffix.
	Name string
	// GossipAddr is the serf host:port; port 0 picks one. Default "127.0.0.1:0".
	GossipAddr string
	// RPCAddr is the host:port for clients, peers and raft; port 0 picks one.
	// Default "127.0.0.1:0".
	RPCAddr string
	// HTTPAddr is advertised to other members. Optional.
	HTTPAddr string
	// Seeds are gossip addresses of members to join. Empty: start a new
	// cluster.
	Seeds []string
	// Partitions is the cluster's partition count; every member must agree.
	// Default 271.
	Partitions int
	// Backups is the synchronous backup count per partition. Default 1.
	Backups int
	// Profile is the failure detection and raft timing preset. Default
	// cluster.ProfileLAN.
	Profile cluster.Profile
	// LeaseDuration is the read lease, which is also how long a member may
	// stay silent before it is failed over (docs/operations.md). Zero: the
	// cluster default (1 s).
	LeaseDuration time.Duration
	// RequestTimeout bounds a request whose ctx has no deadline, and every
	// request served for a peer or client. Default 10s.
	RequestTimeout time.Duration
	// MaxFrame is the largest wire frame accepted. Default 64 MiB.
	MaxFrame int
	// MaxValueSize bounds one stored entry (map name, key and value
	// bytes, also a value grown by Append). A write above it fails with
	// ErrValueTooLarge and applies nothing; so does a record (one write's
	// mutations and its result, such as an old value returned by Set)
	// above MaxFrame/2. At most MaxFrame/4, so that every record and
	// snapshot chunk fits in a frame. Default 16 MiB.
	MaxValueSize int
	// MaxMigrations bounds the partitions being filled at once. Default 64.
	MaxMigrations int
	// ExpiryInterval is the period of TTL sampling. Default 100ms.
	ExpiryInterval time.Duration
	// SessionIdle is how long a client's dedup results are kept after its
	// last mutation. Default 10m.
	SessionIdle time.Duration
	// MaxStepTime is the longest a function (a partition step or a member
	// function) may run; a call's own budget may only be shorter. Past it
	// the caller gets ErrFunctionBudget and nothing is applied. Default 5s.
	MaxStepTime time.Duration
	// MaxRunningFunctions bounds the function goroutines of this member
	// (partition steps and member functions), counting those still
	// running past their budget (user code that ignores its ctx cannot be
	// stopped). A call beyond it fails at once with ErrBusy, nothing
	// applied. Default 1024.
	MaxRunningFunctions int
	// JournalRecords and JournalBytes bound each partition's journal
	// (journal.go): the records it retains, with their positions, for
	// listeners, streams and replicas catching up. The oldest go first.
	// Defaults DefaultJournalRecords and DefaultJournalBytes.
	JournalRecords int
	JournalBytes   int
	// StreamRecords and StreamBytes bound each stream in each partition
	// (stream.go); a publish that would drop an event a consumer group
	// has not committed fails with ErrStreamFull. Defaults
	// DefaultStreamRecords and DefaultStreamBytes.
	StreamRecords int
	StreamBytes   int
	// Functions, if set, are installed before the node serves (see
	// SetFunctions, which may replace them later). Optional.
	Functions Functions
	// InternalSteps, if set, are installed before the node serves (see
	// SetInternalStep): a member never answers a caller that it lacks
	// them (package txnnode's Steps). Optional.
	InternalSteps map[string]func(args []byte) (StepFunc, error)
	// Logger receives the node's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the node's Prometheus metrics; nil registers
	// none. Never the global registry unless you pass it: N nodes in one
	// process each need their own.
	Registerer prometheus.Registerer
	// NewMembership, if set, replaces serf (tests pass
	// cluster.FakeNetwork.Add). Optional.
	NewMembership func(meta cluster.MemberInfo) (cluster.Membership, error)
}

// DefaultConfig returns a config for a single node on loopback.
func DefaultConfig() Config {
	return Config{
		GossipAddr:     "127.0.0.1:0",
		RPCAddr:        "127.0.0.1:0",
		Partitions:     affinity.DefaultPartitionCount,
		Backups:        1,
		Profile:        cluster.ProfileLAN,
		RequestTimeout: 10 * time.Second,
		MaxFrame:       wire.DefaultMaxFrame,
		MaxValueSize:   wire.DefaultMaxFrame / 4,
		MaxMigrations:  64,
		ExpiryInterval: 100 * time.Millisecond,
		SessionIdle:    10 * time.Minute,
		MaxStepTime:    5 * time.Second,

		MaxRunningFunctions: 1024,
		JournalRecords:      DefaultJournalRecords,
		JournalBytes:        DefaultJournalBytes,
		StreamRecords:       DefaultStreamRecords,
		StreamBytes:         DefaultStreamBytes,
	}
}

// Journal retention defaults, per partition.
const (
	DefaultJournalRecords = 1024
	DefaultJournalBytes   = 1 << 20
)

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	switch {
	case c.Partitions < 1 || c.Partitions > 65536:
		return fmt.Errorf("grid: Partitions %d out of range [1, 65536]", c.Partitions)
	case c.Backups < 0 || c.Backups > 6:
		return fmt.Errorf("grid: Backups %d out of range [0, 6]", c.Backups)
	case c.RequestTimeout <= 0:
		return errors.New("grid: RequestTimeout must be positive")
	case c.LeaseDuration < 0 || c.LeaseDuration > 0 && c.LeaseDuration < 100*time.Millisecond:
		return fmt.Errorf("grid: LeaseDuration %v must be zero (default) or at least 100ms", c.LeaseDuration)
	case c.MaxFrame < 1<<16:
		return errors.New("grid: MaxFrame must be at least 64 KiB")
	case c.MaxValueSize < 1 || c.MaxValueSize > c.MaxFrame/4:
		return fmt.Errorf("grid: MaxValueSize %d out of range [1, MaxFrame/4 = %d]", c.MaxValueSize, c.MaxFrame/4)
	case c.MaxMigrations < 1:
		return errors.New("grid: MaxMigrations must be positive")
	case c.ExpiryInterval <= 0 || c.SessionIdle <= 0 || c.MaxStepTime <= 0:
		return errors.New("grid: ExpiryInterval, SessionIdle and MaxStepTime must be positive")
	case c.MaxRunningFunctions < 1:
		return errors.New("grid: MaxRunningFunctions must be positive")
	case c.JournalRecords < 1 || c.JournalBytes < 1 || c.StreamRecords < 1 || c.StreamBytes < 1:
		return errors.New("grid: JournalRecords, JournalBytes, StreamRecords and StreamBytes must be positive")
	case c.RPCAddr == "" || c.GossipAddr == "":
		return errors.New("grid: RPCAddr and GossipAddr are required")
	}
	if _, _, err := net.SplitHostPort(c.RPCAddr); err != nil {
		return fmt.Errorf("grid: RPCAddr %q: %w", c.RPCAddr, err)
	}
	if _, _, err := net.SplitHostPort(c.GossipAddr); err != nil {
		return fmt.Errorf("grid: GossipAddr %q: %w", c.GossipAddr, err)
	}
	return nil
}

// Node is a grid member.
type Node struct {
	cfg  Config
	log  *slog.Logger
	name string

	srv     *transport.Server
	pool    *transport.Pool
	cluster *cluster.Cluster
	parts   []*partition

	table     atomic.Pointer[wire.Table] // installed table
	latest    atomic.Pointer[wire.Table] // newest committed, maybe not installed yet
	tableWake chan struct{}
	tableMu   sync.Mutex
	tableCh   chan struct{} // closed and replaced on each install

	router   *router.Router
	metrics  *metrics
	fmetrics *funcMetrics
	subs     subscriptions
	jwake    journalWake
	subCount atomic.Int64
	tagCache // PartitionTag (local.go)

	base         time.Time    // monotonic reference for the lease
	leaseUntil   atomic.Int64 // nanoseconds since base; see lease.go
	leaseVersion atomic.Uint64
	leaseMu      sync.Mutex    // orders renewals' answers (lease.go)
	leaseKick    chan struct{} // a renewal is wanted now (lease.go)
	leaseSent    time.Duration // when the renewal behind leaseUntil was sent

	snapshotsSent atomic.Int64
	tailsSent     atomic.Int64
	snapshotsIn   atomic.Int64              // complete snapshots installed here
	snapshotsOver atomic.Int64              // of which over a complete, non-empty copy
	tailsIn       atomic.Int64              // tails accepted here
	funcs         atomic.Pointer[Functions] // see SetFunctions
	funcsRunning  atomic.Int64              // function goroutines still running (step.go guarded)
	stepReruns    atomic.Int64              // step runs that conflicted and ran again
	stalled       atomic.Bool               // see StallReplication
	leaseStalled  atomic.Bool               // see StallLeases
	started       atomic.Bool               // n.cluster is set: requests may use it

	ctx     context.Context // cancelled when the node stops
	cancel  context.CancelFunc
	done    chan struct{}
	wg      sync.WaitGroup
	workers *workpool.Pool // runs requests; counted in wg
	closing sync.Once
	closed  atomic.Bool
}

// Start starts a node and joins (or bootstraps) its cluster. It returns once
// the node serves RPC and is a member; use WaitReady for the first table.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	def := DefaultConfig()
	if cfg.GossipAddr == "" {
		cfg.GossipAddr = def.GossipAddr
	}
	if cfg.RPCAddr == "" {
		cfg.RPCAddr = def.RPCAddr
	}
	if cfg.Partitions == 0 {
		cfg.Partitions = def.Partitions
	}
	if cfg.Profile == "" {
		cfg.Profile = def.Profile
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = def.RequestTimeout
	}
	if cfg.MaxFrame == 0 {
		cfg.MaxFrame = def.MaxFrame
	}
	if cfg.MaxValueSize == 0 {
		cfg.MaxValueSize = min(def.MaxValueSize, cfg.MaxFrame/4)
	}
	if cfg.MaxMigrations == 0 {
		cfg.MaxMigrations = def.MaxMigrations
	}
	if cfg.JournalRecords == 0 {
		cfg.JournalRecords = def.JournalRecords
	}
	if cfg.JournalBytes == 0 {
		cfg.JournalBytes = def.JournalBytes
	}
	if cfg.StreamRecords == 0 {
		cfg.StreamRecords = def.StreamRecords
	}
	if cfg.StreamBytes == 0 {
		cfg.StreamBytes = def.StreamBytes
	}
	if cfg.ExpiryInterval == 0 {
		cfg.ExpiryInterval = def.ExpiryInterval
	}
	if cfg.SessionIdle == 0 {
		cfg.SessionIdle = def.SessionIdle
	}
	if cfg.MaxStepTime == 0 {
		cfg.MaxStepTime = def.MaxStepTime
	}
	if cfg.MaxRunningFunctions == 0 {
		cfg.MaxRunningFunctions = def.MaxRunningFunctions
	}
	if cfg.Name == "" {
		cfg.Name = fmt.Sprintf("node-%08x", rand.Uint32())
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	n := &Node{
		cfg:       cfg,
		log:       lg.With("node", cfg.Name),
		name:      cfg.Name,
		parts:     make([]*partition, cfg.Partitions),
		tableWake: make(chan struct{}, 1),
		tableCh:   make(chan struct{}),
		done:      make(chan struct{}),
		leaseKick: make(chan struct{}, 1),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.workers = workpool.New(n.ctx.Done(), &n.wg, 10*time.Second)
	n.base = time.Now()
	n.metrics = newMetrics(n, cfg.Registerer)
	n.fmetrics = newFuncMetrics(cfg.Registerer)
	if cfg.Functions != nil {
		n.SetFunctions(cfg.Functions)
	}
	for name, bind := range cfg.InternalSteps {
		if err := n.SetInternalStep(name, bind); err != nil {
			return nil, err
		}
	}
	for i := range n.parts {
		n.parts[i] = newPartition(i, cfg.RequestTimeout)
		n.parts[i].journal = newJournal(cfg.JournalRecords, cfg.JournalBytes)
		n.parts[i].jwake = &n.jwake
		n.parts[i].streamRecs, n.parts[i].streamBytes = cfg.StreamRecords, cfg.StreamBytes
	}
	srv, err := transport.Listen(cfg.RPCAddr, n, cfg.MaxFrame, n.log)
	if err != nil {
		return nil, fmt.Errorf("grid: listen on %s: %w", cfg.RPCAddr, err)
	}
	n.srv = srv
	n.pool = transport.NewPoolWith(transport.PoolConfig{MaxFrame: cfg.MaxFrame, Logger: n.log, Dial: dialFrom(srv.Addr())})
	n.router = router.New(router.Config{
		Partitions:     cfg.Partitions,
		Pool:           n.pool,
		Table:          n.table.Load,
		WaitTable:      n.WaitReady,
		Refresh:        n.pullTable,
		LocalName:      cfg.Name,
		Local:          exec{n},
		DefaultTimeout: cfg.RequestTimeout,
		ClientID:       rand.Uint64() | 1,
		Done:           n.done,
		TableChanged:   n.tableChanged,
	})
	rpcAddr := srv.Addr().String()

	ccfg := cluster.DefaultConfig()
	ccfg.Name = cfg.Name
	ccfg.GossipAddr = cfg.GossipAddr
	ccfg.RPCAddr = rpcAddr
	ccfg.HTTPAddr = cfg.HTTPAddr
	ccfg.Seeds = cfg.Seeds
	ccfg.Partitions = cfg.Partitions
	ccfg.Backups = cfg.Backups
	ccfg.Profile = cfg.Profile
	ccfg.LeaseDuration = cfg.LeaseDuration
	ccfg.MaxMigrations = cfg.MaxMigrations
	ccfg.Logger = n.log
	ccfg.RaftLayer = srv.RaftLayer(nil)
	ccfg.Pool = n.pool
	ccfg.NewMembership = cfg.NewMembership
	ccfg.OnTable = n.onTable
	c, err := cluster.Start(ctx, ccfg)
	if err != nil {
		n.stop()
		return nil, err
	}
	n.cluster = c
	n.started.Store(true)
	// Started only now: they use n.cluster. A table committed during
	// cluster.Start waits in tableWake.
	n.wg.Add(3)
	go n.tableLoop()
	go n.maintenance()
	go n.leaseLoop()
	n.log.Info("node started", "rpc", rpcAddr, "gossip", c.GossipAddr(), "seeds", cfg.Seeds)
	return n, nil
}

// Name is the node's member name.
func (n *Node) Name() string { return n.name }

// RPCAddr is the bound RPC address.
func (n *Node) RPCAddr() string { return n.srv.Addr().String() }

// GossipAddr is the bound gossip address.
func (n *Node) GossipAddr() string { return n.cluster.GossipAddr() }

// Cluster exposes the node's cluster layer (table, members, authority).
func (n *Node) Cluster() *cluster.Cluster { return n.cluster }

// Table returns the installed partition table, or nil before the first.
func (n *Node) Table() *wire.Table { return n.table.Load() }

// Partitions is the partition count.
func (n *Node) Partitions() int { return n.cfg.Partitions }

// WaitReady waits until the node has installed a table and holds a read
// lease.
func (n *Node) WaitReady(ctx context.Context) error {
	if err := n.waitVersion(ctx, 1); err != nil {
		return err
	}
	for !n.leaseValid() {
		select {
		case <-time.After(10 * time.Millisecond):
		case <-n.done:
			return api.ErrClosed
		case <-ctx.Done():
			return fmt.Errorf("%w: waiting for a read lease: %v", api.ErrUnavailable, ctx.Err())
		}
	}
	return nil
}

// tableChanged returns a channel closed when the next table is installed.
func (n *Node) tableChanged() <-chan struct{} {
	n.tableMu.Lock()
	defer n.tableMu.Unlock()
	return n.tableCh
}

// waitVersion waits until the installed table has at least version v.
func (n *Node) waitVersion(ctx context.Context, v uint64) error {
	for {
		n.tableMu.Lock()
		t, ch := n.table.Load(), n.tableCh
		n.tableMu.Unlock()
		if t != nil && t.Version >= v {
			return nil
		}
		select {
		case <-ch:
		case <-n.done:
			return api.ErrClosed
		case <-ctx.Done():
			return fmt.Errorf("%w: waiting for table version %d: %v", api.ErrUnavailable, v, ctx.Err())
		}
	}
}

// Close leaves the cluster gracefully: the authority promotes this node's
// backups, then the node stops. ctx bounds the leave.
func (n *Node) Close(ctx context.Context) error {
	var err error
	n.closing.Do(func() {
		if n.cluster != nil {
			err = n.cluster.Leave(ctx)
		}
		n.stop()
	})
	return err
}

// Kill stops the node at once, as a crash would: no leave, connections cut.
// Other members detect it as failed. For tests.
func (n *Node) Kill() {
	n.closing.Do(func() {
		if n.cluster != nil {
			_ = n.cluster.Close()
		}
		n.stop()
	})
}

func (n *Node) stop() {
	n.closed.Store(true)
	close(n.done)
	n.cancel()
	if n.cluster != nil {
		_ = n.cluster.Close()
	}
	_ = n.srv.Close()
	n.pool.Close()
	n.wg.Wait()
}

// onTable is called by the authority's FSM: it must not block.
func (n *Node) onTable(t *wire.Table) {
	for {
		cur := n.latest.Load()
		if cur != nil && cur.Version >= t.Version {
			return
		}
		if n.latest.CompareAndSwap(cur, t) {
			break
		}
	}
	select {
	case n.tableWake <- struct{}{}:
	default:
	}
}

// offerTable installs a table learned from a peer if it is newer.
func (n *Node) offerTable(t *wire.Table) {
	if t == nil || len(t.Partitions) != n.cfg.Partitions {
		return
	}
	n.onTable(t)
}

func (n *Node) tableLoop() {
	defer n.wg.Done()
	for {
		select {
		case <-n.tableWake:
		case <-n.done:
			return
		}
		t := n.latest.Load()
		if cur := n.table.Load(); t == nil || (cur != nil && cur.Version >= t.Version) {
			continue
		}
		if len(t.Partitions) != n.cfg.Partitions {
			n.log.Error("ignoring table with a different partition count", "version", t.Version, "partitions", len(t.Partitions))
			continue
		}
		n.install(t)
	}
}

// install applies a committed table to every partition.
func (n *Node) install(t *wire.Table) {
	members := make(map[string]wire.Member, len(t.Members))
	// This node takes roles from t only if t names this incarnation: a
	// table that lists a predecessor with the same name (or leaves this
	// node out while membership thinks it failed) gives it none.
	member := false
	for _, m := range t.Members {
		members[m.Name] = m
		if m.Name == n.name && (m.ID == "" || m.ID == n.cluster.RaftID()) {
			member = true
		}
	}
	if !member {
		n.log.Warn("the table does not name this incarnation as a member: serving nothing until it does", "version", t.Version)
	}
	var primaries, backups int
	unseated := false
	for i, part := range t.Partitions {
		p := n.parts[i]
		p.mu.Lock()
		p.primary = part.Primary
		p.version = t.Version
		p.former = part.Former
		p.seat = part.Seat
		wasPrimary := p.role == rolePrimary
		// A spare's copy may become the partition's data again: keep it.
		named := part.Primary == n.name || contains(part.Backups, n.name) || contains(part.Pending, n.name) ||
			slices.Contains(part.Spares, wire.Spare{Name: n.name, ID: n.cluster.RaftID()})
		switch {
		case !member:
			// Not ours to serve; but if t still attributes this partition
			// to our name, keep the data: it may be the only copy.
			p.role = roleNone
			p.streams = map[string]*stream{}
			if named {
				p.orphanSince = 0
			} else if p.orphanSince == 0 {
				p.orphanSince = nowNano()
			}
			if part.Epoch > p.epoch {
				p.epoch = part.Epoch
			}
		case part.Primary == n.name && part.Epoch >= p.epoch:
			// Epochs are unique per primary term: the same epoch naming us
			// again (after we were left out of a table) is our own term.
			if (!wasPrimary || p.epoch < part.Epoch) && !n.becomePrimary(p, part) {
				break
			}
			primaries++
			n.updateStreams(p, part, members)
		case part.Primary == n.name:
			// The table is older than an epoch this replica has already seen
			// (a newer primary fenced it): stay a backup until a table
			// catches up. Never take primacy at an epoch the authority did
			// not give us.
			p.role = roleBackup
			p.streams = map[string]*stream{}
		case contains(part.Backups, n.name) || contains(part.Pending, n.name):
			backups++
			if wasPrimary {
				n.log.Info("demoted", "partition", i, "epoch", part.Epoch, "primary", part.Primary)
			}
			p.role = roleBackup
			p.streams = map[string]*stream{}
			if part.Epoch > p.epoch {
				p.epoch = part.Epoch
			}
		default:
			switch {
			case named:
				p.orphanSince = 0 // a spare: its copy may be needed
			case p.role != roleNone || p.orphanSince == 0:
				p.orphanSince = nowNano()
			}
			p.streams = map[string]*stream{}
			p.role = roleNone
			if part.Epoch > p.epoch {
				p.epoch = part.Epoch
			}
		}
		if p.role != roleNone {
			p.orphanSince = 0
		}
		if p.role != rolePrimary {
			// Wake writers and readers waiting for commit: they fail fast.
			close(p.commitCh)
			p.commitCh = make(chan struct{})
			p.wakeStreams()
		} else if p.seat != 0 {
			unseated = true
		}
		p.mu.Unlock()
	}
	if unseated {
		// Commits wait until the authority saw a renewal bound to t.
		n.kickLease()
	}
	n.tableMu.Lock()
	n.table.Store(t)
	close(n.tableCh)
	n.tableCh = make(chan struct{})
	n.tableMu.Unlock()
	n.log.Debug("installed table", "version", t.Version, "primaries", primaries, "backups", backups)
	n.jwake.wake() // journal reads of partitions this node lost answer NotOwner now
	n.kickSyncs()
}

// becomePrimary starts a new primary term at part.Epoch. Every replica
// gets a snapshot first: backups may hold records the old primary never
// committed. A replica without a complete copy refuses primacy unless the
// partition is Fresh (the authority started it empty): promoting a partial
// copy would silently lose acknowledged writes, so the partition stays
// unavailable instead, loudly. Caller holds p.mu.
func (n *Node) becomePrimary(p *partition, part wire.Part) bool {
	if !p.complete && !part.Fresh {
		n.log.Error("refusing primacy: this replica holds no complete copy", "partition", p.id, "epoch", part.Epoch, "lsn", p.lsn)
		p.role = roleBackup
		p.streams = map[string]*stream{}
		return false
	}
	if part.Epoch > p.epoch {
		p.epoch = part.Epoch
	}
	if part.Fresh {
		// Also over a complete copy this node kept: it may end before the
		// lost history did, which went on elsewhere from there.
		p.beginHistory(part.Epoch)
	}
	if p.role != rolePrimary {
		n.log.Debug("became primary", "partition", p.id, "epoch", part.Epoch, "lsn", p.lsn)
	}
	p.role = rolePrimary
	p.complete = true
	p.incoming = nil
	p.streams = map[string]*stream{}
	// Everything held now is committed once the replicas acknowledge it.
	p.pending = map[mapKey]uint64{}
	p.pendq = nil
	p.commit = 0
	p.ready = p.lsn
	return true
}

// updateStreams makes p's streams match the table's replicas. A stream
// belongs to one incarnation at one address: a replica restarted under the
// same name (or moved) gets a new stream, which needs a new snapshot before
// it is reported filled. Caller holds p.mu.
func (n *Node) updateStreams(p *partition, part wire.Part, members map[string]wire.Member) {
	want := map[string]bool{}
	for _, b := range part.Backups {
		want[b] = true
	}
	for _, b := range part.Pending {
		if _, ok := want[b]; !ok {
			want[b] = false
		}
	}
	for name, s := range p.streams {
		m := members[name]
		if _, ok := want[name]; !ok || s.id != m.ID || s.addr != m.RPC {
			delete(p.streams, name)
		}
	}
	for name, inSync := range want {
		if name == n.name {
			continue
		}
		s := p.streams[name]
		if s == nil {
			m := members[name]
			s = &stream{node: name, id: m.ID, addr: m.RPC, broken: true}
			p.streams[name] = s
		}
		s.inSync = inSync
	}
	p.recomputeCommit()
}

// dialFrom returns a dialer whose connections leave from the IP this node
// serves on (when it is a specific, non-loopback IP), so that peers see
// replication arrive from the host the table advertises (checkSender) even
// on a multi-homed machine.
func dialFrom(local net.Addr) func(ctx context.Context, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if ta, ok := local.(*net.TCPAddr); ok && !ta.IP.IsUnspecified() && !ta.IP.IsLoopback() {
		d.LocalAddr = &net.TCPAddr{IP: ta.IP}
	}
	return func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// HandleFrame implements transport.Handler. Replication frames are applied
// inline so that a connection's records apply in the order they were sent;
// everything else runs on its own goroutine.
func (n *Node) HandleFrame(c *transport.Conn, f wire.Frame) {
	switch f.Type {
	case wire.MsgReplicate, wire.MsgSnapshot, wire.MsgTail, wire.MsgTailProbe:
		if n.stalled.Load() {
			return // a stalled replica holds the frame forever
		}
	}
	switch f.Type {
	case wire.MsgReplicate:
		n.handleReplicate(c, f)
		return
	case wire.MsgSnapshot:
		n.handleSnapshot(c, f)
		return
	case wire.MsgTail:
		n.handleTail(c, f)
		return
	case wire.MsgTailProbe:
		var req wire.TailProbe
		if err := wire.Decode(f.Body, &req); err != nil {
			c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: %v", api.ErrBadRequest, err))
			return
		}
		st, err := n.handleTailProbe(c, &req)
		if err != nil {
			c.ReplyError(f.Type, f.ID, err)
			return
		}
		c.Reply(f.Type, f.ID, st)
		return
	}
	if n.closed.Load() {
		c.ReplyError(f.Type, f.ID, api.ErrClosed)
		return
	}
	if !n.started.Load() {
		// Peers reach the listener before the cluster layer exists.
		c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: node %s is starting", api.ErrUnavailable, n.name))
		return
	}
	if f.Type == wire.MsgSubscribe {
		var req wire.SubscribeRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: %v", api.ErrBadRequest, err))
			return
		}
		if err := n.subscribe(c, req.Map); err != nil {
			c.ReplyError(f.Type, f.ID, err)
			return
		}
		c.Reply(f.Type, f.ID, &wire.Ack{})
		return
	}
	n.workers.Go(func() {
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.RequestTimeout)
		defer cancel()
		resp, err := n.serve(ctx, f)
		if err != nil {
			c.ReplyError(f.Type, f.ID, err)
			return
		}
		c.Reply(f.Type, f.ID, resp)
	})
}

func (n *Node) serve(ctx context.Context, f wire.Frame) (any, error) {
	bad := func(err error) error { return fmt.Errorf("%w: %v", api.ErrBadRequest, err) }
	switch f.Type {
	case wire.MsgMap:
		var req wire.MapRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			return nil, bad(err)
		}
		resp, err := n.execMap(ctx, &req)
		return &resp, err
	case wire.MsgGetAll:
		var req wire.GetAllRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			return nil, bad(err)
		}
		return n.execGetAll(ctx, &req)
	case wire.MsgPutAll:
		var req wire.PutAllRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			return nil, bad(err)
		}
		return n.execPutAll(ctx, &req)
	case wire.MsgMapBatch:
		var req wire.MapBatchRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			return nil, bad(err)
		}
		return n.execMapBatch(ctx, &req)
	case wire.MsgDeleteAll:
		var req wire.DeleteAllRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			return nil, bad(err)
		}
		return n.execDeleteAll(ctx, &req)
	case wire.MsgScan:
		var req wire.ScanRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			return nil, bad(err)
		}
		return n.execScan(ctx, &req)
	case wire.MsgSize:
		var req wire.SizeRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			return nil, bad(err)
		}
		return n.execSize(ctx, &req)
	case wire.MsgClear:
		var req wire.ClearRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			return nil, bad(err)
		}
		return n.execClear(ctx, &req)
	case wire.MsgSynced:
		var req wire.SyncedReport
		if err := wire.Decode(f.Body, &req); err != nil {
			return nil, bad(err)
		}
		return &wire.Ack{}, n.cluster.HandleSynced(req)
	case wire.MsgDrain:
		var req wire.DrainRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			return nil, bad(err)
		}
		return &wire.Ack{}, n.cluster.HandleDrain(req.Node, req.ID)
	case wire.MsgLease:
		var req wire.LeaseRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			return nil, bad(err)
		}
		v, d, err := n.cluster.HandleLease(req.Node, req.ID)
		if err != nil {
			return nil, err
		}
		return &wire.LeaseResponse{Version: v, Duration: int64(d)}, nil
	case wire.MsgActivity:
		var req wire.ActivityRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			return nil, bad(err)
		}
		resp := n.cluster.HandleActivity(req)
		return &resp, nil
	case wire.MsgStep:
		var req wire.StepRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			return nil, bad(err)
		}
		resp, err := n.execStep(ctx, &req)
		return &resp, err
	case wire.MsgStepParts:
		var req wire.StepPartsRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			return nil, bad(err)
		}
		return n.execStepParts(ctx, &req)
	case wire.MsgJournal:
		var req wire.JournalRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			return nil, bad(err)
		}
		return n.execJournal(ctx, &req)
	case wire.MsgCall:
		var req wire.CallRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			return nil, bad(err)
		}
		return n.execCall(ctx, &req)
	case wire.MsgTable:
		var req wire.TableRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			return nil, bad(err)
		}
		t := n.table.Load()
		if t == nil {
			return nil, fmt.Errorf("%w: no table yet", api.ErrUnavailable)
		}
		return &wire.TableResponse{Table: *t}, nil
	}
	return nil, fmt.Errorf("%w: type %d", api.ErrUnknownMessage, f.Type)
}

// PartitionInfo is one replica's state, for checks and status pages.
type PartitionInfo struct {
	ID      int    `json:"id"`
	Role    string `json:"role"`
	Epoch   uint64 `json:"epoch"`
	LSN     uint64 `json:"lsn"`
	Commit  uint64 `json:"commit"`
	Entries int    `json:"entries"`
	Digest  uint64 `json:"digest"` // order-independent hash of entries and versions
	// The journal: oldest retained position, records and bytes retained.
	JournalOldest  uint64       `json:"journal_oldest"`
	JournalRecords int          `json:"journal_records"`
	JournalBytes   int          `json:"journal_bytes"`
	Streams        []StreamInfo `json:"streams,omitempty"`
}

// StreamInfo is one stream of a partition replica: its retained events
// and its consumer groups' committed positions.
type StreamInfo struct {
	Name   string            `json:"name"`
	Events int               `json:"events"`
	Bytes  int               `json:"bytes"`
	Oldest uint64            `json:"oldest"`
	Last   uint64            `json:"last"`
	Groups map[string]uint64 `json:"groups,omitempty"`
}

// Inspect returns the state of this node's replica of partition id.
func (n *Node) Inspect(id int) PartitionInfo {
	p := n.parts[id]
	p.mu.Lock()
	defer p.mu.Unlock()
	entries, digest := p.digest()
	info := PartitionInfo{ID: id, Role: p.role.String(), Epoch: p.epoch, LSN: p.lsn, Commit: p.commit, Entries: entries, Digest: digest,
		JournalOldest: p.journal.oldest(), JournalRecords: p.journal.len(), JournalBytes: p.journal.bytes}
	for name, s := range p.logs {
		si := StreamInfo{Name: name, Events: s.events.len(), Bytes: s.events.bytes, Oldest: s.events.oldest(), Last: s.events.last()}
		if len(s.groups) > 0 {
			si.Groups = maps.Clone(s.groups)
		}
		info.Streams = append(info.Streams, si)
	}
	slices.SortFunc(info.Streams, func(a, b StreamInfo) int { return strings.Compare(a.Name, b.Name) })
	return info
}

// StallReplication makes this node stop answering replication and snapshot
// frames while keeping its connections open: a SIGSTOPped backup as its
// primary sees it. For tests.
func (n *Node) StallReplication(on bool) { n.stalled.Store(on) }

// StallLeases makes this node stop renewing its lease, as a paused or cut
// off process would; together with StallReplication, a SIGSTOPped node as
// the rest of the cluster sees it, except that membership still finds it
// alive. For tests.
func (n *Node) StallLeases(on bool) { n.leaseStalled.Store(on) }

// Stats are counters for tests and status pages.
type Stats struct {
	// SnapshotsSent counts replica fills by snapshot started by this node
	// as primary; TailsSent those by the missing records only (tail.go).
	SnapshotsSent int64
	TailsSent     int64
	// SnapshotsReceived and TailsReceived count the fills this node took
	// as a replica; SnapshotsOverCopy the snapshots that replaced a
	// complete copy it held (its journal did not match the primary's, or
	// the primary's no longer reached back to it).
	SnapshotsReceived int64
	TailsReceived     int64
	SnapshotsOverCopy int64
	// FunctionsRunning counts function goroutines still running, also
	// those whose caller gave up at their time budget.
	FunctionsRunning int64
	// StepReruns counts partition steps that ran again because what they
	// read changed before they committed.
	StepReruns int64
}

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	return Stats{SnapshotsSent: n.snapshotsSent.Load(), TailsSent: n.tailsSent.Load(),
		SnapshotsReceived: n.snapshotsIn.Load(), TailsReceived: n.tailsIn.Load(), SnapshotsOverCopy: n.snapshotsOver.Load(), FunctionsRunning: n.funcsRunning.Load(), StepReruns: n.stepReruns.Load()}
}

// Config returns the node's effective config.
func (n *Node) Config() Config { return n.cfg }
