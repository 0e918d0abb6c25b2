package grid

import (
	"sync"

	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
)

// subscriptions are the client connections that asked for invalidations of
// a map (near caches). Guarded by mu; count lets writers skip the lock when
// nobody subscribed.
type subscriptions struct {
	mu    sync.RWMutex
	byMap map[string]map[*transport.Conn]struct{}
	count int
}

// subscribe registers c for invalidations of m until c closes.
func (n *Node) subscribe(c *transport.Conn, m string) {
	s := &n.subs
	s.mu.Lock()
	if s.byMap == nil {
		s.byMap = map[string]map[*transport.Conn]struct{}{}
	}
	conns := s.byMap[m]
	if conns == nil {
		conns = map[*transport.Conn]struct{}{}
		s.byMap[m] = conns
	}
	_, had := conns[c]
	conns[c] = struct{}{}
	if !had {
		s.count++
	}
	s.mu.Unlock()
	n.subCount.Store(int64(s.count))
	if had {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		select {
		case <-c.Done():
		case <-n.done:
		}
		s.mu.Lock()
		if _, ok := s.byMap[m][c]; ok {
			delete(s.byMap[m], c)
			s.count--
			if len(s.byMap[m]) == 0 {
				delete(s.byMap, m)
			}
		}
		cnt := s.count
		s.mu.Unlock()
		n.subCount.Store(int64(cnt))
	}()
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
