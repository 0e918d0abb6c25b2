package client

import (
	"context"
	"iter"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
	"github.com/dgraph-io/ristretto/v2"
)

// NearCacheConfig enables a client-side cache of one map's values.
//
// Guarantees: a client always reads its own writes; another client's write
// becomes visible once its invalidation arrives (pushed by the key's
// primary when it applies the write; measured in docs/benchmarks.md), and
// at the latest after MaxStaleness if an invalidation is ever lost. When a
// connection to a member drops, the cache is cleared and not filled again
// until every member has confirmed the subscription.
type NearCacheConfig struct {
	// MaxBytes bounds the cached values. Default 64 MiB.
	MaxBytes int64
	// MaxStaleness is the longest an entry is served without revalidation.
	// Default 30s.
	MaxStaleness time.Duration
}

// MapOption configures a map handle.
type MapOption func(*mapOptions)

type mapOptions struct {
	near *NearCacheConfig
}

// WithNearCache serves Get from a client-side cache (see NearCacheConfig).
// The cache holds copies: it never holds the primary or a backup copy of
// any data, and its admission policy may decline to keep an entry.
func WithNearCache(cfg NearCacheConfig) MapOption {
	return func(o *mapOptions) { o.near = &cfg }
}

type nearCache struct {
	cache *ristretto.Cache[string, []byte]
	ttl   time.Duration
	gen   atomic.Uint64 // bumped by every invalidation
	ready atomic.Bool   // every member confirmed the subscription

	hits, misses atomic.Uint64
}

func newNearCache(cfg NearCacheConfig) (*nearCache, error) {
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 64 << 20
	}
	if cfg.MaxStaleness <= 0 {
		cfg.MaxStaleness = 30 * time.Second
	}
	c, err := ristretto.NewCache(&ristretto.Config[string, []byte]{
		NumCounters: max(1000, cfg.MaxBytes/100), // about 10 per expected entry of ~1 KiB
		MaxCost:     cfg.MaxBytes,
		BufferItems: 64,
	})
	if err != nil {
		return nil, err
	}
	return &nearCache{cache: c, ttl: cfg.MaxStaleness}, nil
}

func (nc *nearCache) invalidate(keys []string, all bool) {
	nc.gen.Add(1)
	if all {
		nc.cache.Clear()
		return
	}
	for _, k := range keys {
		nc.cache.Del(k)
	}
}

func (nc *nearCache) clear() {
	nc.gen.Add(1)
	nc.cache.Clear()
}

// nearMap serves Get from the near cache and passes everything else on,
// invalidating its own writes before and after they are sent.
type nearMap struct {
	Map
	nc *nearCache
}

func (m *nearMap) Get(ctx context.Context, key string) ([]byte, error) {
	if v, ok := m.nc.cache.Get(key); ok {
		m.nc.hits.Add(1)
		return append([]byte(nil), v...), nil
	}
	m.nc.misses.Add(1)
	gen := m.nc.gen.Load()
	v, err := m.Map.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	// Cache only if no invalidation arrived while the read was in flight.
	if m.nc.ready.Load() && m.nc.gen.Load() == gen {
		m.nc.cache.SetWithTTL(key, append([]byte(nil), v...), int64(len(key)+len(v)), m.nc.ttl)
	}
	return v, nil
}

func (m *nearMap) write(keys []string, all bool, f func() error) error {
	m.nc.invalidate(keys, all)
	err := f()
	m.nc.invalidate(keys, all)
	return err
}

func (m *nearMap) Put(ctx context.Context, key string, value []byte, opts ...Option) error {
	return m.write([]string{key}, false, func() error { return m.Map.Put(ctx, key, value, opts...) })
}

func (m *nearMap) PutIfAbsent(ctx context.Context, key string, value []byte, opts ...Option) (old []byte, stored bool, err error) {
	err = m.write([]string{key}, false, func() error {
		old, stored, err = m.Map.PutIfAbsent(ctx, key, value, opts...)
		return err
	})
	return old, stored, err
}

func (m *nearMap) Replace(ctx context.Context, key string, value []byte, opts ...Option) (ok bool, err error) {
	err = m.write([]string{key}, false, func() error {
		ok, err = m.Map.Replace(ctx, key, value, opts...)
		return err
	})
	return ok, err
}

func (m *nearMap) CompareAndSwap(ctx context.Context, key string, expected, value []byte, opts ...Option) (ok bool, err error) {
	err = m.write([]string{key}, false, func() error {
		ok, err = m.Map.CompareAndSwap(ctx, key, expected, value, opts...)
		return err
	})
	return ok, err
}

func (m *nearMap) CompareAndSwapVersion(ctx context.Context, key string, version uint64, value []byte, opts ...Option) (ok bool, err error) {
	err = m.write([]string{key}, false, func() error {
		ok, err = m.Map.CompareAndSwapVersion(ctx, key, version, value, opts...)
		return err
	})
	return ok, err
}

func (m *nearMap) Delete(ctx context.Context, key string) (ok bool, err error) {
	err = m.write([]string{key}, false, func() error {
		ok, err = m.Map.Delete(ctx, key)
		return err
	})
	return ok, err
}

func (m *nearMap) PutAll(ctx context.Context, entries map[string][]byte, opts ...Option) error {
	keys := make([]string, 0, len(entries))
	for k := range entries {
		keys = append(keys, k)
	}
	return m.write(keys, false, func() error { return m.Map.PutAll(ctx, entries, opts...) })
}

func (m *nearMap) Clear(ctx context.Context) error {
	return m.write(nil, true, func() error { return m.Map.Clear(ctx) })
}

func (m *nearMap) Set(ctx context.Context, key string, value []byte, args SetArgs) (res SetResult, err error) {
	err = m.write([]string{key}, false, func() error {
		res, err = m.Map.Set(ctx, key, value, args)
		return err
	})
	return res, err
}

func (m *nearMap) GetAndDelete(ctx context.Context, key string) (old []byte, err error) {
	err = m.write([]string{key}, false, func() error {
		old, err = m.Map.GetAndDelete(ctx, key)
		return err
	})
	return old, err
}

func (m *nearMap) DeleteAll(ctx context.Context, keys []string) (n int, err error) {
	err = m.write(keys, false, func() error {
		n, err = m.Map.DeleteAll(ctx, keys)
		return err
	})
	return n, err
}

func (m *nearMap) Increment(ctx context.Context, key string, delta int64) (v int64, err error) {
	err = m.write([]string{key}, false, func() error {
		v, err = m.Map.Increment(ctx, key, delta)
		return err
	})
	return v, err
}

func (m *nearMap) Append(ctx context.Context, key string, suffix []byte) (n int, err error) {
	err = m.write([]string{key}, false, func() error {
		n, err = m.Map.Append(ctx, key, suffix)
		return err
	})
	return n, err
}

func (m *nearMap) Expire(ctx context.Context, key string, ttl time.Duration, cond ExpireCond) (ok bool, err error) {
	err = m.write([]string{key}, false, func() error {
		ok, err = m.Map.Expire(ctx, key, ttl, cond)
		return err
	})
	return ok, err
}

// Batch passes through the near cache: it neither reads from nor fills it,
// and it invalidates the keys it writes.
func (m *nearMap) Batch(ctx context.Context, ops []BatchOp) (res []BatchResult) {
	var keys []string
	for _, op := range ops {
		if op.Kind != BatchGet {
			keys = append(keys, op.Key)
		}
	}
	_ = m.write(keys, false, func() error {
		res = m.Map.Batch(ctx, ops)
		return nil
	})
	return res
}

func (m *nearMap) Scan(ctx context.Context, errp *error) iter.Seq2[string, []byte] {
	return m.Map.Scan(ctx, errp)
}

// nearCaches are a client's near caches and their subscriptions.
type nearCaches struct {
	mu         sync.Mutex
	byMap      map[string]*nearCache
	subscribed map[*transport.Conn]bool
}

// HandleFrame receives invalidations pushed by members.
func (c *Client) HandleFrame(_ *transport.Conn, f wire.Frame) {
	if f.Type != wire.MsgInvalidate {
		return
	}
	var inv wire.Invalidation
	if err := wire.Decode(f.Body, &inv); err != nil {
		c.log.Warn("bad invalidation", "err", err)
		c.near.clearAll()
		return
	}
	c.near.mu.Lock()
	nc := c.near.byMap[inv.Map]
	c.near.mu.Unlock()
	if nc != nil {
		nc.invalidate(inv.Keys, inv.All)
	}
}

func (n *nearCaches) clearAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, nc := range n.byMap {
		nc.ready.Store(false)
		nc.clear()
	}
}

// nearMapFor returns the near-cached view of name, creating the cache and
// subscribing on first use.
func (c *Client) nearMapFor(ctx context.Context, name string, cfg NearCacheConfig) (Map, error) {
	c.near.mu.Lock()
	nc := c.near.byMap[name]
	created := false
	if nc == nil {
		var err error
		if nc, err = newNearCache(cfg); err != nil {
			c.near.mu.Unlock()
			return nil, err
		}
		c.near.byMap[name] = nc
		// Existing subscriptions do not cover this map yet.
		c.near.subscribed = map[*transport.Conn]bool{}
		created = true
	}
	c.near.mu.Unlock()
	if created {
		c.ensureSubscriptions(ctx)
	}
	return &nearMap{Map: c.router.Map(name), nc: nc}, nil
}

// subscribe subscribes names on the connection to addr, within
// tableAskTimeout (an unresponsive member does not hold up the others). It
// returns the connection if this call subscribed it (nil if it already
// was, or failed), and whether the connection is subscribed.
func (c *Client) subscribe(ctx context.Context, addr string, names []string) (*transport.Conn, bool) {
	ctx, cancel := context.WithTimeout(ctx, tableAskTimeout)
	defer cancel()
	conn, err := c.pool.Get(ctx, addr)
	if err != nil {
		return nil, false
	}
	c.near.mu.Lock()
	done := c.near.subscribed[conn]
	c.near.mu.Unlock()
	if done {
		return nil, true
	}
	for _, name := range names {
		if err := conn.Call(ctx, wire.MsgSubscribe, &wire.SubscribeRequest{Map: name}, nil); err != nil {
			return nil, false
		}
	}
	c.near.mu.Lock()
	c.near.subscribed[conn] = true
	c.near.mu.Unlock()
	return conn, true
}

// ensureSubscriptions subscribes every near-cached map on the connection to
// every member; a cache is filled only while all members confirmed. A
// subscribed connection that drops clears every near cache.
func (c *Client) ensureSubscriptions(ctx context.Context) {
	c.near.mu.Lock()
	names := make([]string, 0, len(c.near.byMap))
	for n := range c.near.byMap {
		names = append(names, n)
	}
	c.near.mu.Unlock()
	if len(names) == 0 {
		return
	}
	t := c.table.Load()
	all := true
	for _, m := range t.Members {
		conn, ok := c.subscribe(ctx, m.RPC, names)
		if !ok {
			all = false
		}
		if conn == nil {
			continue
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			select {
			case <-conn.Done():
				c.near.mu.Lock()
				delete(c.near.subscribed, conn)
				c.near.mu.Unlock()
				c.near.clearAll() // invalidations may have been lost
				c.refresh(context.Background(), 0)
			case <-c.done:
			}
		}()
	}
	c.near.mu.Lock()
	for _, nc := range c.near.byMap {
		if nc.ready.Load() != all {
			nc.clear()
		}
		nc.ready.Store(all)
	}
	c.near.mu.Unlock()
}

var _ api.Map = (*nearMap)(nil)

// NearCacheStats returns the hits and misses of map name's near cache.
func (c *Client) NearCacheStats(name string) (hits, misses uint64) {
	c.near.mu.Lock()
	nc := c.near.byMap[name]
	c.near.mu.Unlock()
	if nc == nil {
		return 0, 0
	}
	return nc.hits.Load(), nc.misses.Load()
}
