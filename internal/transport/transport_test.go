package transport

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echo answers MsgMap with the request's key as value; MsgPing never.
type echo struct{ wg sync.WaitGroup }

func (e *echo) HandleFrame(c *Conn, f wire.Frame) {
	if f.Type == wire.MsgPing {
		return // never answered: the caller must time out
	}
	var req wire.MapRequest
	if err := wire.Decode(f.Body, &req); err != nil {
		c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: %v", api.ErrBadRequest, err))
		return
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
	if err := c.Call(ctx, wire.MsgPing, &wire.Ack{}, nil); !errors.Is(err, api.ErrTimeout) {
		t.Fatalf("unanswered call: %v, want ErrTimeout", err)
	}
	fut, err := c.Start(wire.MsgPing, &wire.Ack{})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	if err := fut.Wait(context.Background(), nil); !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("call pending at close: %v, want ErrUnavailable", err)
	}
	// The pool notices the dead connection and dials a new one.
	c2, err := pool.Get(context.Background(), srv.Addr().String())
	if err != nil || c2 == c {
		t.Fatalf("pool returned %p (old %p), %v", c2, c, err)
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
