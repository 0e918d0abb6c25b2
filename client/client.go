// Package client is the Go client SDK of the grid. It learns the partition
// table from any node, sends each request to its partition's primary over
// one multiplexed connection per node, follows NotOwner answers at once
// with one coalesced table reload (and refreshes periodically), groups
// batches per node, and gives every mutation a (clientID, seq) so that a
// retry after a node failure applies once.
//
// The maps it returns implement the same interface as the embedded node's
// (grid.Map): switching between embedded and client/server changes one
// constructor. It never imports grid, cluster, serf or raft.
//
// Functions registered on the members (package compute) run by name with
// ExecuteOnKey, ExecuteOnPartitions and Broadcast, or typed through
// package invoke (a *Client is an invoke.Executor).
//
//	c, err := client.Dial(ctx, client.Config{Addrs: []string{"127.0.0.1:7070"}})
//	defer c.Close()
//	users := c.Map("users")
//	err = users.Put(ctx, "user:{42}", []byte("ann"))
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/router"
	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
)

// Shared API types (the same as package grid's).
type (
	// Map is the byte-level map interface.
	Map = api.Map
	// Option modifies a mutation.
	Option = api.Option
	// Entry is a value with its version.
	Entry = api.Entry
	// NotOwnerError says which node owns a partition.
	NotOwnerError = api.NotOwnerError
	// SetArgs are the conditions and effects of Map.Set.
	SetArgs = api.SetArgs
	// SetResult is what Map.Set did and found.
	SetResult = api.SetResult
	// ExpireCond is Map.Expire's condition.
	ExpireCond = api.ExpireCond
	// BatchOp is one operation of Map.Batch.
	BatchOp = api.BatchOp
	// BatchResult is the outcome of one BatchOp.
	BatchResult = api.BatchResult
	// Typed is a typed view of a Map.
	Typed[K comparable, V any] = api.Typed[K, V]
	// Codec turns values into bytes and back.
	Codec[T any] = api.Codec[T]
	// Listener receives a map's committed changes (Client.Listen).
	Listener = api.Listener
	// Event is one committed change of a map entry.
	Event = api.Event
	// EventKind says what an Event did.
	EventKind = api.EventKind
	// TrimmedError says which positions a partition's journal no longer
	// retains.
	TrimmedError = api.TrimmedError
	// StreamEvent is one event of a stream.
	StreamEvent = api.StreamEvent
	// Consumer is a consumer group's reader of a stream.
	Consumer = api.Consumer
)

// Map change kinds.
const (
	EventAdded   = api.EventAdded
	EventUpdated = api.EventUpdated
	EventRemoved = api.EventRemoved
	EventExpired = api.EventExpired
	EventCleared = api.EventCleared
)

// Errors; match with errors.Is.
var (
	ErrNotFound      = api.ErrNotFound
	ErrNotOwner      = api.ErrNotOwner
	ErrTimeout       = api.ErrTimeout
	ErrUnavailable   = api.ErrUnavailable
	ErrBadRequest    = api.ErrBadRequest
	ErrReplication   = api.ErrReplication
	ErrStaleSequence = api.ErrStaleSequence
	ErrClosed        = api.ErrClosed
	ErrNotInteger    = api.ErrNotInteger
	ErrOverflow      = api.ErrOverflow
	ErrValueTooLarge = api.ErrValueTooLarge
	ErrBusy          = api.ErrBusy
	// Function errors (ExecuteOnKey, ExecuteOnPartitions, Broadcast);
	// nothing was applied.
	ErrNoFunction     = api.ErrNoFunction
	ErrBadArgs        = api.ErrBadArgs
	ErrFunctionPanic  = api.ErrFunctionPanic
	ErrFunctionBudget = api.ErrFunctionBudget
	ErrFunctionFailed = api.ErrFunctionFailed
	ErrNotCollocated  = api.ErrNotCollocated
	// Journal errors.
	ErrJournalTrimmed = api.ErrJournalTrimmed
	ErrStreamFull     = api.ErrStreamFull
)

// Expire conditions (Redis EXPIRE's NX, XX, GT and LT).
const (
	ExpireAlways    = api.ExpireAlways
	ExpireIfNone    = api.ExpireIfNone
	ExpireIfSet     = api.ExpireIfSet
	ExpireIfGreater = api.ExpireIfGreater
	ExpireIfLess    = api.ExpireIfLess
	// Batch operations.
	BatchGet = api.BatchGet
	BatchSet = api.BatchSet
	// ExpireIfSetAndLess is Redis's XX LT.
	ExpireIfSetAndLess = api.ExpireIfSetAndLess
)

// WithTTL makes an entry expire ttl after the write.
func WithTTL(ttl time.Duration) Option { return api.WithTTL(ttl) }

// NewTyped returns a typed view of m whose values are msgpack-encoded.
func NewTyped[K comparable, V any](m Map) *Typed[K, V] { return api.NewTyped[K, V](m) }

// Config configures a client.
type Config struct {
	// Addrs are RPC addresses of any cluster members. At least one.
	Addrs []string
	// RefreshInterval is the period of table refreshes. Default 5s.
	RefreshInterval time.Duration
	// MaxFrame is the largest frame accepted. Default 64 MiB.
	MaxFrame int
	// Logger receives the client's logs; nil discards them.
	Logger *slog.Logger
	// Dial opens a TCP connection to a member's RPC address. Default: a
	// net.Dialer. Tests use it to put a proxy in between.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// RequestTimeout bounds every call whose ctx has no deadline, retries
	// included. Default 10s.
	RequestTimeout time.Duration
	// PeerTimeout closes a connection to a member that sent nothing for
	// this long while calls wait on it (the member is pinged after each
	// quarter of it); the calls are then retried, with their original
	// session, on the primary of the newest table. Default 3s.
	PeerTimeout time.Duration
}

// DefaultConfig returns a config for a node on the default loopback port.
func DefaultConfig() Config {
	return Config{
		Addrs:           []string{"127.0.0.1:7070"},
		RefreshInterval: 5 * time.Second,
		MaxFrame:        wire.DefaultMaxFrame,
		RequestTimeout:  10 * time.Second,
		PeerTimeout:     transport.DefaultPeerTimeout,
	}
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	if len(c.Addrs) == 0 {
		return errors.New("client: Addrs is empty")
	}
	if c.RefreshInterval < 0 || c.MaxFrame < 0 || c.RequestTimeout < 0 || c.PeerTimeout < 0 {
		return errors.New("client: RefreshInterval, MaxFrame, RequestTimeout and PeerTimeout must not be negative")
	}
	return nil
}

// withDefaults fills the zero fields.
func (c *Config) withDefaults() {
	def := DefaultConfig()
	if c.RefreshInterval == 0 {
		c.RefreshInterval = def.RefreshInterval
	}
	if c.MaxFrame == 0 {
		c.MaxFrame = def.MaxFrame
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = def.RequestTimeout
	}
	if c.PeerTimeout == 0 {
		c.PeerTimeout = def.PeerTimeout
	}
}

// Client talks to a cluster. Its methods are safe for concurrent use.
type Client struct {
	cfg    Config
	log    *slog.Logger
	pool   *transport.Pool
	router *router.Router
	table  atomic.Pointer[wire.Table]

	ctx       context.Context // cancelled by Close
	cancel    context.CancelFunc
	refreshCh chan struct{}
	near      nearCaches
	tableMu   sync.Mutex
	tableCh   chan struct{} // closed and replaced when the table changes
	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// Dial connects to the cluster: it fetches the partition table from the
// configured addresses (see fetch) and returns. ctx bounds the whole dial;
// each address gets at most a second.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	c := &Client{
		cfg: cfg,
		log: lg,
		pool: transport.NewPoolWith(transport.PoolConfig{
			MaxFrame: cfg.MaxFrame, Logger: lg, Dial: cfg.Dial, PeerTimeout: cfg.PeerTimeout,
		}),
		refreshCh: make(chan struct{}, 1),
		tableCh:   make(chan struct{}),
		done:      make(chan struct{}),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.near.byMap = map[string]*nearCache{}
	c.near.subscribed = map[*transport.Conn]string{}
	c.pool.SetHandler(c)
	if err := c.fetch(ctx); err != nil {
		c.cancel()
		c.pool.Close()
		return nil, fmt.Errorf("client: no table from %v: %w", cfg.Addrs, err)
	}
	t := c.table.Load()
	c.router = router.New(router.Config{
		Partitions:     len(t.Partitions),
		Pool:           c.pool,
		Table:          c.table.Load,
		WaitTable:      func(context.Context) error { return nil },
		Refresh:        c.refresh,
		TableChanged:   c.tableChanged,
		DefaultTimeout: cfg.RequestTimeout,
		ClientID:       rand.Uint64() | 1,
		Done:           c.done,
	})
	c.wg.Add(1)
	go c.refresher()
	return c, nil
}

// Listen delivers the committed changes of l.Map (every map if "") to l's
// handlers, in each partition's order, from the partitions' primaries,
// until ctx ends or a handler fails. It resumes through failovers and
// reconnections without gap or duplicate while the journals retain the
// positions (api.Listener).
func (c *Client) Listen(ctx context.Context, l *Listener) error { return c.router.Listen(ctx, l) }

// JournalEnds returns every partition's position after its last committed
// record: as a Listener's Positions, it hears exactly the changes
// committed after this call.
func (c *Client) JournalEnds(ctx context.Context) ([]uint64, error) { return c.router.JournalEnds(ctx) }

// Publish appends event to stream at key's partition (ordered within the
// partition, replicated like any write) and returns its position there.
// When the stream's retention there is full of events a consumer group has
// not committed, it fails with ErrStreamFull and applies nothing.
func (c *Client) Publish(ctx context.Context, stream, key string, event []byte) (uint64, error) {
	return c.router.Publish(ctx, stream, key, event)
}

// ReadStream returns up to max (0: a default) committed events of stream
// in partition part from position from, and the position to read next. A
// position older than the partition retains fails with a *TrimmedError
// naming the oldest.
func (c *Client) ReadStream(ctx context.Context, stream string, part int, from uint64, max int) ([]StreamEvent, uint64, error) {
	return c.router.ReadStream(ctx, stream, part, from, max)
}

// Consume runs consumer group con.Group on con.Stream until ctx ends or
// con.Handle fails, with at-least-once delivery and positions committed in
// the grid (api.Consumer).
func (c *Client) Consume(ctx context.Context, con *Consumer) error { return c.router.Consume(ctx, con) }

// DeleteGroup removes a consumer group from every partition of stream, so
// that it no longer holds back the stream's retention.
func (c *Client) DeleteGroup(ctx context.Context, stream, group string) error {
	return c.router.DeleteGroup(ctx, stream, group)
}

// Map returns the map named name. With WithNearCache, Get is served from a
// client-side cache kept coherent by the members' invalidations; creating
// the first near-cached handle of a map subscribes on every member (bounded
// by a 5 s timeout; until all confirm, reads bypass the cache).
func (c *Client) Map(name string, opts ...MapOption) Map {
	var o mapOptions
	for _, f := range opts {
		f(&o)
	}
	if o.near == nil {
		return c.router.Map(name)
	}
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
	defer cancel()
	m, err := c.nearMapFor(ctx, name, *o.near)
	if err != nil {
		c.log.Warn("near cache unavailable; map works without it", "map", name, "err", err)
		return c.router.Map(name)
	}
	return m
}

// TableVersion is the version of the client's partition table.
func (c *Client) TableVersion() uint64 { return c.table.Load().Version }

// Members lists the members of the client's table by name.
func (c *Client) Members() []string {
	t := c.table.Load()
	out := make([]string, len(t.Members))
	for i, m := range t.Members {
		out[i] = m.Name
	}
	return out
}

// Close closes every connection. Calls in flight fail with ErrClosed or
// ErrUnavailable, or with ErrTimeout for a mutation that may have been
// applied. Safe to call twice.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		c.cancel()
		c.wg.Wait()
		c.pool.Close()
		c.near.mu.Lock()
		for _, nc := range c.near.byMap {
			nc.cache.Close()
		}
		c.near.mu.Unlock()
	})
	return nil
}

// refresh asks the refresher for a new table; with version > 0 it waits
// (briefly) until the table has at least that version.
func (c *Client) refresh(ctx context.Context, version uint64) {
	select {
	case c.refreshCh <- struct{}{}:
	default: // a refresh is already pending: coalesced
	}
	if version == 0 {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	for {
		c.tableMu.Lock()
		t, ch := c.table.Load(), c.tableCh
		c.tableMu.Unlock()
		if t.Version >= version {
			return
		}
		select {
		case <-ch:
		case <-wctx.Done():
			return
		case <-c.done:
			return
		}
	}
}

func (c *Client) refresher() {
	defer c.wg.Done()
	tick := time.NewTicker(c.cfg.RefreshInterval)
	defer tick.Stop()
	pulse := time.NewTicker(slowPulse)
	defer pulse.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-tick.C:
		case <-c.refreshCh:
		case <-pulse.C:
			if !c.router.Pulse() {
				continue
			}
		}
		ctx, cancel := context.WithTimeout(c.ctx, 2*time.Second)
		if err := c.fetch(ctx); err != nil {
			c.log.Warn("table refresh failed", "err", err)
		}
		cancel()
		ctx, cancel = context.WithTimeout(c.ctx, 2*time.Second)
		c.ensureSubscriptions(ctx)
		cancel()
	}
}

// slowPulse is how often the refresher checks for requests that have been
// waiting for at least that long; if any, it fetches a table (a primary that
// stopped answering is failed over by the authority within about a lease,
// and only a new table lets those requests move to the new primary).
const slowPulse = 100 * time.Millisecond

// Table fetch timing: a member that has not answered within tableHedge is
// joined by the next one, and no member is waited on longer than
// tableAskTimeout, so one unresponsive member cannot stall a refresh.
const (
	tableHedge      = 100 * time.Millisecond
	tableAskTimeout = time.Second
)

// fetch asks the known members (table members first, then the configured
// addresses) for their table and installs the newest it sees. It asks one
// member at a time, starting the next one when no ask is in flight or
// tableHedge passed without an answer, and stops at the first answer newer
// than the current table, or when every member was asked and one answered
// (without waiting for the others).
func (c *Client) fetch(ctx context.Context) error {
	var addrs []string
	cur := c.table.Load()
	if cur != nil {
		for _, m := range cur.Members {
			addrs = append(addrs, m.RPC)
		}
		rand.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	}
	for _, a := range c.cfg.Addrs {
		if !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	type answer struct {
		t   *wire.Table
		err error
	}
	answers := make(chan answer, len(addrs))
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { // the asks still running give up at once
		cancel()
		wg.Wait()
	}()
	hedge := time.NewTimer(0)
	defer hedge.Stop()
	next, running, answered := 0, 0, false
	var lastErr error
	for next < len(addrs) || running > 0 {
		select {
		case <-hedge.C:
			if next < len(addrs) {
				addr := addrs[next]
				next++
				running++
				wg.Add(1)
				go func() {
					defer wg.Done()
					t, err := c.askTable(ctx, addr)
					answers <- answer{t, err}
				}()
				hedge.Reset(tableHedge)
			}
		case a := <-answers:
			running--
			if running == 0 && next < len(addrs) {
				hedge.Reset(0) // nothing in flight: ask the next one now
			}
			switch {
			case a.err != nil:
				lastErr = a.err
				continue
			case cur != nil && len(a.t.Partitions) != len(cur.Partitions):
				lastErr = fmt.Errorf("%w: table has %d partitions, not %d", api.ErrBadRequest, len(a.t.Partitions), len(cur.Partitions))
				continue
			case cur == nil || a.t.Version > cur.Version:
				c.install(a.t)
				return nil
			}
			answered = true
			if next >= len(addrs) {
				// Every member was asked and one answered with nothing
				// newer: a member that has not answered yet (paused, cut
				// off) is not waited for; the next fetch asks it again.
				return nil
			}
		case <-ctx.Done():
			if answered {
				return nil
			}
			return fmt.Errorf("%w: %w (last error: %v)", api.ErrUnavailable, ctx.Err(), lastErr)
		}
	}
	if answered {
		return nil
	}
	if lastErr == nil {
		lastErr = api.ErrUnavailable
	}
	return lastErr
}

// askTable fetches addr's table within tableAskTimeout.
func (c *Client) askTable(ctx context.Context, addr string) (*wire.Table, error) {
	ctx, cancel := context.WithTimeout(ctx, tableAskTimeout)
	defer cancel()
	conn, err := c.pool.Get(ctx, addr)
	if err != nil {
		return nil, err
	}
	var resp wire.TableResponse
	if err := conn.Call(ctx, wire.MsgTable, &wire.TableRequest{}, &resp); err != nil {
		return nil, err
	}
	if len(resp.Table.Partitions) == 0 {
		return nil, fmt.Errorf("%w: table from %s has no partitions", api.ErrBadRequest, addr)
	}
	return &resp.Table, nil
}

// tableChanged returns a channel that closes when the next table is
// installed.
func (c *Client) tableChanged() <-chan struct{} {
	c.tableMu.Lock()
	defer c.tableMu.Unlock()
	return c.tableCh
}

func (c *Client) install(t *wire.Table) {
	c.tableMu.Lock()
	defer c.tableMu.Unlock()
	if cur := c.table.Load(); cur != nil && cur.Version >= t.Version {
		return
	}
	c.near.onTable(t)
	c.table.Store(t)
	close(c.tableCh)
	c.tableCh = make(chan struct{})
	c.log.Debug("installed table", "version", t.Version, "members", len(t.Members))
}

// Partitions is the cluster's partition count (from the installed table).
func (c *Client) Partitions() int { return len(c.table.Load().Partitions) }
