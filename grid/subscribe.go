package grid

import (
	"fmt"
	"sync"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
)

// maxSubscribedMaps bounds the maps one connection may subscribe to: each
// costs an entry in the node's tables until the connection closes.
const maxSubscribedMaps = 256

// subscriptions are the client connections that asked for invalidations of
// a map (near caches). Guarded by mu; the node's subCount mirrors the number
// of (connection, map) pairs, stored under mu, so that writers can skip the
// lock when nobody subscribed. One watcher goroutine per connection forgets
// its subscriptions when it closes.
type subscriptions struct {
	mu     sync.RWMutex
	byMap  map[string]map[*transport.Conn]struct{}
	byConn map[*transport.Conn]map[string]struct{}
	count  int
}

// subscribe registers c for invalidations of m until c closes.
func (n *Node) subscribe(c *transport.Conn, m string) error {
	s := &n.subs
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-c.Done():
		return fmt.Errorf("%w: connection closed", api.ErrClosed)
	case <-n.done:
		return api.ErrClosed
	default:
	}
	if s.byMap == nil {
		s.byMap = map[string]map[*transport.Conn]struct{}{}
		s.byConn = map[*transport.Conn]map[string]struct{}{}
	}
	maps := s.byConn[c]
	if _, had := maps[m]; had {
		return nil
	}
	if len(maps) >= maxSubscribedMaps {
		return fmt.Errorf("%w: a connection may subscribe to at most %d maps", api.ErrBusy, maxSubscribedMaps)
	}
	if maps == nil {
		maps = map[string]struct{}{}
		s.byConn[c] = maps
		n.wg.Add(1)
		go n.watchSubscriber(c)
	}
	maps[m] = struct{}{}
	conns := s.byMap[m]
	if conns == nil {
		conns = map[*transport.Conn]struct{}{}
		s.byMap[m] = conns
	}
	conns[c] = struct{}{}
	s.count++
	n.subCount.Store(int64(s.count))
	return nil
}

// watchSubscriber forgets c's subscriptions once c closes (or the node
// stops).
func (n *Node) watchSubscriber(c *transport.Conn) {
	defer n.wg.Done()
	select {
	case <-c.Done():
	case <-n.done:
	}
	s := &n.subs
	s.mu.Lock()
	defer s.mu.Unlock()
	for m := range s.byConn[c] {
		delete(s.byMap[m], c)
		if len(s.byMap[m]) == 0 {
			delete(s.byMap, m)
		}
		s.count--
	}
	delete(s.byConn, c)
	n.subCount.Store(int64(s.count))
}

// publish pushes the keys a record wrote to the subscribers of their maps.
// Called after the record was applied at the primary: a client that reads
// again after the invalidation gets the new value (reads wait for commit).
func (n *Node) publish(rec *wire.Record) {
	if n.subCount.Load() == 0 {
		return
	}
	var inv map[string]*wire.Invalidation
	s := &n.subs
	s.mu.RLock()
	defer s.mu.RUnlock()
	for i := range rec.Muts {
		mu := &rec.Muts[i]
		if len(s.byMap[mu.Map]) == 0 {
			continue
		}
		if inv == nil {
			inv = map[string]*wire.Invalidation{}
		}
		v := inv[mu.Map]
		if v == nil {
			v = &wire.Invalidation{Map: mu.Map}
			inv[mu.Map] = v
		}
		if mu.Kind == wire.MutClear {
			v.All = true
		} else {
			v.Keys = append(v.Keys, mu.Key)
		}
	}
	for m, v := range inv {
		for c := range s.byMap[m] {
			_ = c.Notify(wire.MsgInvalidate, v)
		}
	}
}
