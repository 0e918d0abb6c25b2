package router_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/router"
	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
)

// This file is the router's fake cluster: members are real transport
// servers speaking the wire protocol, each answering as its script says, and
// the partition table is whatever the test installs.

const testPartitions = 4

// action is a fake member's answer to one request.
type action int

const (
	reply   action = iota // answer as a healthy primary
	drop                  // close the connection without answering (the request may have applied)
	silence               // never answer, keep the connection open (a paused process)
	refuse                // answer with the error in script's second result
	late                  // answer as a healthy primary, 200ms later
)

// script decides a member's answer to the i-th request (from 0) of its
// kind it received.
type script func(i int) (action, error)

func always(a action, err error) script { return func(int) (action, error) { return a, err } }

// then answers the first n requests with first and the rest with rest.
func then(n int, first, rest script) script {
	return func(i int) (action, error) {
		if i < n {
			return first(i)
		}
		return rest(i - n)
	}
}

// fakeNode is one member.
type fakeNode struct {
	name string
	srv  *transport.Server

	mu       sync.Mutex
	script   script
	opErr    func(wire.MapRequest) error // per-op answer inside a MapBatch
	maps     []wire.MapRequest           // MsgMap requests received
	batches  []wire.MapBatchRequest      // MsgMapBatch requests received
	putAlls  []wire.PutAllRequest        // MsgPutAll requests received
	received chan struct{}               // one token per request received (buffered)
	wg       sync.WaitGroup              // connection closers
}

func (n *fakeNode) setScript(s script) {
	n.mu.Lock()
	n.script = s
	n.mu.Unlock()
}

func (n *fakeNode) setOpErr(f func(wire.MapRequest) error) {
	n.mu.Lock()
	n.opErr = f
	n.mu.Unlock()
}

func (n *fakeNode) mapRequests() []wire.MapRequest {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]wire.MapRequest(nil), n.maps...)
}

func (n *fakeNode) batchRequests() []wire.MapBatchRequest {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]wire.MapBatchRequest(nil), n.batches...)
}

func (n *fakeNode) putAllRequests() []wire.PutAllRequest {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]wire.PutAllRequest(nil), n.putAlls...)
}

func (n *fakeNode) HandleFrame(c *transport.Conn, f wire.Frame) {
	var (
		resp any
		i    int
	)
	n.mu.Lock()
	switch f.Type {
	case wire.MsgMap:
		var req wire.MapRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			panic(err)
		}
		i = len(n.maps)
		n.maps = append(n.maps, req)
		resp = &wire.MapResponse{Found: true, Done: true, Value: []byte(n.name + ":" + req.Key)}
	case wire.MsgMapBatch:
		var req wire.MapBatchRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			panic(err)
		}
		i = len(n.batches)
		n.batches = append(n.batches, req)
		br := &wire.MapBatchResponse{Resps: make([]wire.MapResponse, len(req.Reqs)), Errs: make([]wire.ErrorBody, len(req.Reqs))}
		for j, r := range req.Reqs {
			if n.opErr != nil {
				if err := n.opErr(r); err != nil {
					br.Errs[j] = wire.ErrBody(err)
					continue
				}
			}
			br.Resps[j] = wire.MapResponse{Found: true, Done: true, Value: []byte(n.name + ":" + r.Key)}
		}
		resp = br
	case wire.MsgPutAll:
		var req wire.PutAllRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			panic(err)
		}
		i = len(n.putAlls)
		n.putAlls = append(n.putAlls, req)
		resp = &wire.PartsResponse{Errs: make([]wire.ErrorBody, len(req.Partitions))}
	default:
		n.mu.Unlock()
		c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: fake node takes no type %d", api.ErrUnknownMessage, f.Type))
		return
	}
	s := n.script
	n.mu.Unlock()
	select {
	case n.received <- struct{}{}:
	default:
	}
	a, err := reply, error(nil)
	if s != nil {
		a, err = s(i)
	}
	switch a {
	case reply:
		c.Reply(f.Type, f.ID, resp)
	case refuse:
		c.ReplyError(f.Type, f.ID, err)
	case drop:
		n.wg.Add(1)
		go func() { // Close waits for this reader goroutine
			defer n.wg.Done()
			_ = c.Close()
		}()
	case late:
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			time.Sleep(200 * time.Millisecond)
			c.Reply(f.Type, f.ID, resp)
		}()
	case silence:
	}
}

// harness is a router over fake members n1 and n2 and a table it controls.
type harness struct {
	t     *testing.T
	nodes map[string]*fakeNode
	pool  *transport.Pool
	r     *router.Router
	done  chan struct{}

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced by install
	table     atomic.Pointer[wire.Table]
	onRefresh func(version uint64) // called by Refresh; may install a table
	refreshes []uint64
}

func newHarness(t *testing.T) *harness {
	h := &harness{t: t, nodes: map[string]*fakeNode{}, done: make(chan struct{}), changed: make(chan struct{})}
	var members []wire.Member
	for _, name := range []string{"n1", "n2"} {
		n := &fakeNode{name: name, received: make(chan struct{}, 1024)}
		srv, err := transport.Listen("127.0.0.1:0", n, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		n.srv = srv
		h.nodes[name] = n
		members = append(members, wire.Member{Name: name, RPC: srv.Addr().String(), ID: name})
	}
	h.pool = transport.NewPool(0, nil)
	t.Cleanup(func() {
		close(h.done)
		h.pool.Close()
		for _, n := range h.nodes {
			_ = n.srv.Close()
			n.wg.Wait()
		}
	})
	h.install(1, members, "n1")
	h.r = router.New(h.config())
	return h
}

func (h *harness) config() router.Config {
	return router.Config{
		Partitions: testPartitions,
		Pool:       h.pool,
		Table:      h.table.Load,
		WaitTable:  func(context.Context) error { return nil },
		Refresh:    h.refresh,
		TableChanged: func() <-chan struct{} {
			h.mu.Lock()
			defer h.mu.Unlock()
			return h.changed
		},
		ClientID: 7,
		Done:     h.done,
	}
}

// install makes version the current table, with every partition's primary
// given by owner (partition -> name; a single name for all).
func (h *harness) install(version uint64, members []wire.Member, owners ...string) {
	if members == nil {
		members = h.table.Load().Members
	}
	t := &wire.Table{Version: version, Members: members, Partitions: make([]wire.Part, testPartitions)}
	for p := range t.Partitions {
		t.Partitions[p].Primary = owners[min(p, len(owners)-1)]
	}
	h.mu.Lock()
	h.table.Store(t)
	close(h.changed)
	h.changed = make(chan struct{})
	h.mu.Unlock()
}

func (h *harness) refresh(_ context.Context, version uint64) {
	h.mu.Lock()
	h.refreshes = append(h.refreshes, version)
	f := h.onRefresh
	h.mu.Unlock()

	if f != nil {
		f(version)
	}
}

func (h *harness) node(name string) *fakeNode { return h.nodes[name] }

// keyIn returns a key of partition p.
func keyIn(p int, salt string) string {
	for i := 0; ; i++ {
		k := fmt.Sprintf("%s-%d", salt, i)
		if affinity.Partition(k, testPartitions) == p {
			return k
		}
	}
}

// sameSession checks that every request carries the first one's session,
// and that it is a real one.
func sameSession(t *testing.T, reqs []wire.MapRequest) {
	t.Helper()
	if len(reqs) == 0 {
		t.Fatal("no requests")
	}
	s := reqs[0].Session
	if s.Client != 7 || s.Seq == 0 {
		t.Fatalf("session %+v: want client 7 and a sequence number", s)
	}
	for i, r := range reqs {
		if r.Session != s {
			t.Fatalf("request %d has session %+v, the first had %+v", i, r.Session, s)
		}
	}
}
