package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echo answers MsgMap with the request's key as value; key "silent" never.
type echo struct{ wg sync.WaitGroup }

func (e *echo) HandleFrame(c *Conn, f wire.Frame) {
	var req wire.MapRequest
	if err := wire.Decode(f.Body, &req); err != nil {
		c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: %v", api.ErrBadRequest, err))
		return
	}
	if req.Key == "silent" {
		return // never answered
	}
	if req.Key == "notowner" {
		c.ReplyError(f.Type, f.ID, &api.NotOwnerError{Partition: 3, Version: 9, Owner: "x"})
		return
	}
	e.wg.Add(1)
	go func() { // answer out of order
		defer e.wg.Done()
		c.Reply(f.Type, f.ID, &wire.MapResponse{Found: true, Value: []byte(req.Key)})
	}()
}

func setup(t *testing.T, maxFrame int) (*Server, *Pool) {
	h := &echo{}
	srv, err := Listen("127.0.0.1:0", h, maxFrame, nil)
	if err != nil {
		t.Fatal(err)
	}
	pool := NewPool(maxFrame, nil)
	t.Cleanup(func() {
		pool.Close()
		_ = srv.Close()
		h.wg.Wait()
	})
	return srv, pool
}

func TestManyCallsInFlight(t *testing.T) {
	srv, pool := setup(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := pool.Get(ctx, srv.Addr().String())
			if err != nil {
				errs <- err
				return
			}
			for i := range 200 {
				key := fmt.Sprintf("%d-%d", g, i)
				var resp wire.MapResponse
				if err := c.Call(ctx, wire.MsgMap, &wire.MapRequest{Key: key}, &resp); err != nil {
					errs <- err
					return
				}
				if string(resp.Value) != key {
					errs <- fmt.Errorf("response %q for request %q", resp.Value, key)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestRemoteErrorsKeepTheirCode(t *testing.T) {
	srv, pool := setup(t, 0)
	ctx := context.Background()
	c, err := pool.Get(ctx, srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	err = c.Call(ctx, wire.MsgMap, &wire.MapRequest{Key: "notowner"}, &wire.MapResponse{})
	var ne *api.NotOwnerError
	if !errors.As(err, &ne) || ne.Owner != "x" || ne.Version != 9 || !errors.Is(err, api.ErrNotOwner) {
		t.Fatalf("err = %v", err)
	}
}

func TestTimeoutAndClose(t *testing.T) {
	srv, pool := setup(t, 0)
	c, err := pool.Get(context.Background(), srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Call(ctx, wire.MsgMap, &wire.MapRequest{Key: "silent"}, nil); !errors.Is(err, api.ErrTimeout) {
		t.Fatalf("unanswered call: %v, want ErrTimeout", err)
	}
	fut, err := c.Start(wire.MsgMap, &wire.MapRequest{Key: "silent"})
	if err != nil {
		t.Fatal(err)
	}
	waitWritten(t, c)
	_ = c.Close()
	if err := fut.Wait(context.Background(), nil); !errors.Is(err, api.ErrTimeout) || !errors.Is(err, ErrConnLost) {
		t.Fatalf("call sent before close: %v, want ErrTimeout and ErrConnLost", err)
	}
	// The pool notices the dead connection and dials a new one.
	c2, err := pool.Get(context.Background(), srv.Addr().String())
	if err != nil || c2 == c {
		t.Fatalf("pool returned %p (old %p), %v", c2, c, err)
	}
}

// waitWritten waits until c's writer has written everything queued.
func waitWritten(t *testing.T, c *Conn) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		idle := len(c.out) == 0 && c.writing == 0
		c.mu.Unlock()
		if idle {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer did not write its queue")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCallNeverSentIsUnavailable(t *testing.T) {
	// A pipe nobody reads: the writer blocks on the first frame, so the
	// second one stays queued and never reaches the socket.
	near, far := net.Pipe()
	defer far.Close()
	c := NewConnWith(near, nil, ConnConfig{})
	first, err := c.Start(wire.MsgMap, &wire.MapRequest{Key: "a"})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		taken := c.batch == 1
		c.mu.Unlock()
		if taken {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer did not take the first frame")
		}
		time.Sleep(time.Millisecond)
	}
	second, err := c.Start(wire.MsgMap, &wire.MapRequest{Key: "b"})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	if err := first.Wait(context.Background(), nil); !errors.Is(err, api.ErrTimeout) || errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("call handed to the socket: %v, want ErrTimeout (outcome unknown)", err)
	}
	if err := second.Wait(context.Background(), nil); !errors.Is(err, api.ErrUnavailable) || errors.Is(err, api.ErrTimeout) {
		t.Fatalf("call still queued at close: %v, want ErrUnavailable (not sent)", err)
	}
}

func TestOversizedFrameRefused(t *testing.T) {
	srv, pool := setup(t, 1<<16)
	c, err := pool.Get(context.Background(), srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	big := &wire.MapRequest{Key: "k", Value: make([]byte, 1<<17)}
	if err := c.Call(context.Background(), wire.MsgMap, big, nil); !errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("oversized request: %v, want ErrBadRequest", err)
	}
	// The connection still works.
	var resp wire.MapResponse
	if err := c.Call(context.Background(), wire.MsgMap, &wire.MapRequest{Key: "ok"}, &resp); err != nil || string(resp.Value) != "ok" {
		t.Fatalf("after refusal: %q %v", resp.Value, err)
	}
}

// dropper records that a request arrived, then closes the connection
// without answering: the request was delivered and may have been applied.
type dropper struct {
	got chan struct{}
	wg  sync.WaitGroup
}

func (d *dropper) HandleFrame(c *Conn, f wire.Frame) {
	d.got <- struct{}{}
	d.wg.Add(1)
	go func() { // Close waits for this reader goroutine
		defer d.wg.Done()
		_ = c.Close()
	}()
}

func TestCallLostAfterDeliveryIsOutcomeUnknown(t *testing.T) {
	d := &dropper{got: make(chan struct{}, 1)}
	srv, err := Listen("127.0.0.1:0", d, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	pool := NewPool(0, nil)
	defer func() {
		pool.Close()
		_ = srv.Close()
		d.wg.Wait()
	}()
	c, err := pool.Get(context.Background(), srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	err = c.Call(context.Background(), wire.MsgMap, &wire.MapRequest{Key: "k"}, nil)
	<-d.got
	if !errors.Is(err, api.ErrTimeout) || errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("call delivered before its connection died: %v, want ErrTimeout (outcome unknown), not ErrUnavailable", err)
	}
	// Nothing is sent on a dead connection: that failure is ErrUnavailable.
	if _, err := c.Start(wire.MsgMap, &wire.MapRequest{Key: "k"}); !errors.Is(err, api.ErrUnavailable) || errors.Is(err, api.ErrTimeout) {
		t.Fatalf("start on a dead connection: %v, want ErrUnavailable", err)
	}
}

func TestContextErrorsKeepTheirIdentity(t *testing.T) {
	srv, pool := setup(t, 0)
	c, err := pool.Get(context.Background(), srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Call(ctx, wire.MsgMap, &wire.MapRequest{Key: "silent"}, nil); !errors.Is(err, context.Canceled) || !errors.Is(err, api.ErrTimeout) {
		t.Fatalf("cancelled call: %v, want context.Canceled and ErrTimeout", err)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer dcancel()
	if err := c.Call(dctx, wire.MsgMap, &wire.MapRequest{Key: "silent"}, nil); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, api.ErrTimeout) {
		t.Fatalf("expired call: %v, want context.DeadlineExceeded and ErrTimeout", err)
	}
	// A dial that outlives its ctx.
	blocked := NewPoolWith(PoolConfig{Dial: func(ctx context.Context, addr string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}})
	defer blocked.Close()
	if _, err := blocked.Get(dctx, "127.0.0.1:1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("expired dial: %v, want context.DeadlineExceeded", err)
	}
}

// silentPeer accepts grid connections and reads everything, answering
// nothing, as a stopped process whose kernel still accepts would.
func silentPeer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(io.Discard, nc)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, nc := range conns {
			_ = nc.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func TestCallToSilentPeerEnds(t *testing.T) {
	addr := silentPeer(t)
	pool := NewPool(0, nil)
	defer pool.Close()
	c, err := pool.Get(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- c.Call(context.Background(), wire.MsgMap, &wire.MapRequest{Key: "k"}, nil) }()
	select {
	case err := <-done:
		if !errors.Is(err, api.ErrTimeout) || errors.Is(err, api.ErrUnavailable) {
			t.Fatalf("call to a silent peer: %v, want ErrTimeout (outcome unknown)", err)
		}
		t.Logf("call to a silent peer ended after %v: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(15 * time.Second):
		pool.Close()
		<-done
		t.Fatal("a call to a peer that stopped answering was still waiting after 15s")
	}
}

// bigValues answers every MsgMap with a large value, on a goroutine per
// request as grid's workers do, and counts the requests being served.
type bigValues struct {
	value   []byte
	serving atomic.Int64
	most    atomic.Int64
	got     atomic.Int64
	wg      sync.WaitGroup
}

func (b *bigValues) HandleFrame(c *Conn, f wire.Frame) {
	b.got.Add(1)
	n := b.serving.Add(1)
	for m := b.most.Load(); n > m && !b.most.CompareAndSwap(m, n); m = b.most.Load() {
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer b.serving.Add(-1)
		var req wire.MapRequest
		_ = wire.Decode(f.Body, &req)
		v := b.value
		if req.Key == "small" {
			v = []byte("ok")
		}
		c.Reply(f.Type, f.ID, &wire.MapResponse{Found: true, Value: v})
	}()
}

// queuedOf is the bytes c holds for its peer.
func queuedOf(c *Conn) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.queued()
}

func TestClientThatNeverReadsIsBounded(t *testing.T) {
	const (
		limit    = DefaultMaxQueuedBytes
		inflight = DefaultMaxInflight
		requests = 6000
	)
	h := &bigValues{value: make([]byte, 32<<10)}
	srv, err := Listen("127.0.0.1:0", h, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	pool := NewPool(0, nil)
	raw, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = raw.Close()
		pool.Close()
		_ = srv.Close()
		h.wg.Wait()
	}()
	// Pipeline GETs of the large value and never read an answer.
	buf := []byte{PreambleGrid}
	for i := range requests {
		body, err := wire.Marshal(&wire.MapRequest{Op: wire.OpGet, Key: "big"})
		if err != nil {
			t.Fatal(err)
		}
		buf = wire.AppendHeader(buf, wire.MsgMap, 0, uint64(i+1), len(body))
		buf = append(buf, body...)
	}
	writeErr := make(chan error, 1)
	go func() { _, err := raw.Write(buf); writeErr <- err }()

	most := 0
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		srv.mu.Lock()
		for c := range srv.conns {
			most = max(most, queuedOf(c))
		}
		srv.mu.Unlock()
		if most > limit+len(h.value)+1024 {
			t.Fatalf("the server holds %d bytes for a client that never reads (limit %d)", most, limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Other clients are served meanwhile.
	c, err := pool.Get(context.Background(), srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var resp wire.MapResponse
		err := c.Call(ctx, wire.MsgMap, &wire.MapRequest{Key: "small"}, &resp)
		cancel()
		if err != nil || string(resp.Value) != "ok" {
			t.Fatalf("another client: %q, %v", resp.Value, err)
		}
	}
	if m := h.most.Load(); m > inflight+1 {
		t.Fatalf("%d requests served at once for one connection (limit %d)", m, inflight)
	}
	t.Logf("queued at most %d bytes; %d requests read, at most %d served at once", most, h.got.Load(), h.most.Load())
	_ = raw.Close()
	<-writeErr
}

// holder keeps every MsgMap request unanswered until release closes, and
// answers everything else at once.
type holder struct {
	release chan struct{}
	wg      sync.WaitGroup
}

func (h *holder) HandleFrame(c *Conn, f wire.Frame) {
	if f.Type != wire.MsgMap {
		c.Reply(f.Type, f.ID, &wire.Ack{})
		return
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		<-h.release
		c.Reply(f.Type, f.ID, &wire.MapResponse{})
	}()
}

func TestRequestsBeyondMaxInflightAreRefusedBusy(t *testing.T) {
	h := &holder{release: make(chan struct{})}
	srv, err := ListenWith("127.0.0.1:0", h, ServerConfig{MaxInflight: 4})
	if err != nil {
		t.Fatal(err)
	}
	pool := NewPool(0, nil)
	defer func() {
		pool.Close()
		_ = srv.Close()
		h.wg.Wait()
	}()
	c, err := pool.Get(context.Background(), srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	var held []*Future
	for range 4 {
		f, err := c.Start(wire.MsgMap, &wire.MapRequest{Key: "k"})
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, f)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Call(ctx, wire.MsgMap, &wire.MapRequest{Key: "k"}, nil); !errors.Is(err, api.ErrBusy) {
		t.Fatalf("fifth request: %v, want ErrBusy", err)
	}
	// Replication is never refused.
	if err := c.Call(ctx, wire.MsgReplicate, &wire.Ack{}, nil); err != nil {
		t.Fatalf("replication at the limit: %v", err)
	}
	close(h.release)
	for _, f := range held {
		if err := f.Wait(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
	// The answered requests freed their slots.
	for range 8 {
		if err := c.Call(ctx, wire.MsgMap, &wire.MapRequest{Key: "k"}, nil); err != nil {
			t.Fatalf("after release: %v", err)
		}
	}
}

func TestNotifyToPeerThatNeverReadsClosesTheConnection(t *testing.T) {
	accepted := make(chan *Conn, 1)
	srv, err := ListenWith("127.0.0.1:0", handlerFunc(func(c *Conn, f wire.Frame) {
		select {
		case accepted <- c:
		default:
		}
		c.Reply(f.Type, f.ID, &wire.Ack{})
	}), ServerConfig{MaxQueuedBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	raw, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	hello := wire.AppendHeader([]byte{PreambleGrid}, wire.MsgTable, 0, 1, 0)
	if _, err := raw.Write(hello); err != nil {
		t.Fatal(err)
	}
	c := <-accepted
	inv := &wire.Invalidation{Map: "m", Keys: []string{string(make([]byte, 16<<10))}}
	var nerr error
	for i := 0; i < 100000 && nerr == nil; i++ {
		nerr = c.Notify(wire.MsgInvalidate, inv)
	}
	if !errors.Is(nerr, api.ErrUnavailable) || !errors.Is(c.Err(), ErrSlowReader) {
		t.Fatalf("notify to a peer that never reads: %v (conn: %v), want the connection closed with ErrSlowReader", nerr, c.Err())
	}
}

type handlerFunc func(c *Conn, f wire.Frame)

func (h handlerFunc) HandleFrame(c *Conn, f wire.Frame) { h(c, f) }

func TestWaitAbortLeavesTheCallPending(t *testing.T) {
	h := &holder{release: make(chan struct{})}
	srv, err := ListenWith("127.0.0.1:0", h, ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	pool := NewPool(0, nil)
	defer func() {
		pool.Close()
		_ = srv.Close()
		h.wg.Wait()
	}()
	c, err := pool.Get(context.Background(), srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fut, err := c.Start(wire.MsgMap, &wire.MapRequest{Key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	abort := make(chan struct{})
	close(abort)
	if err := fut.WaitAbort(context.Background(), abort, nil); !errors.Is(err, ErrAbandoned) || !errors.Is(err, api.ErrTimeout) {
		t.Fatalf("aborted wait: %v, want ErrAbandoned and ErrTimeout", err)
	}
	close(h.release)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := fut.Wait(ctx, &wire.MapResponse{}); err != nil {
		t.Fatalf("waiting again after an abort: %v", err)
	}
}
