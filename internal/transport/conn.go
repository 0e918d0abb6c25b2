// Package transport carries wire frames over TCP: one multiplexed connection
// per peer with many requests in flight, writes coalesced into one syscall
// when busy, and a listener that also hands raft its own streams.
//
// Goroutines: every Conn owns a reader and a writer goroutine, stopped by
// Close; a Server owns its accept loop and the Conns it accepted.
package transport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// Connection preambles: the first byte a dialer sends selects the protocol.
const (
	PreambleGrid byte = 'G'
	PreambleRaft byte = 'R'
)

// Handler serves request frames.
type Handler interface {
	// HandleFrame is called on the connection's reader goroutine for each
	// request frame, in arrival order. It must not block: work that waits
	// moves to a goroutine the handler owns. It may keep f.Body. It answers
	// with c.Reply or c.ReplyError, from any goroutine.
	HandleFrame(c *Conn, f wire.Frame)
}

type result struct {
	f   wire.Frame
	err error
}

// call is a request in flight: its answer goes to ch, or to fn when the
// caller asked for a callback (StartFunc).
type call struct {
	ch chan result
	fn func(wire.Frame, error)
}

func (cl call) deliver(r result) {
	if cl.fn != nil {
		cl.fn(r.f, r.err)
		return
	}
	cl.ch <- r
}

// Conn is a multiplexed connection. Its methods are safe for concurrent use.
type Conn struct {
	nc       net.Conn
	log      *slog.Logger
	h        Handler
	maxFrame int

	nextID atomic.Uint64

	mu      sync.Mutex
	out     []byte // queued frames, written by the writer goroutine
	free    []byte // the writer's spare buffer
	pending map[uint64]call
	err     error // non-nil once the connection failed or closed

	wake chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
}

// NewConn starts serving nc: requests go to h (nil rejects them) and
// responses to the calls waiting for them.
func NewConn(nc net.Conn, h Handler, maxFrame int, log *slog.Logger) *Conn {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if maxFrame <= 0 {
		maxFrame = wire.DefaultMaxFrame
	}
	c := &Conn{
		nc: nc, h: h, maxFrame: maxFrame, log: log,
		pending: make(map[uint64]call),
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	c.wg.Add(2)
	go c.readLoop()
	go c.writeLoop()
	return c
}

// RemoteAddr is the peer's address.
func (c *Conn) RemoteAddr() string { return c.nc.RemoteAddr().String() }

// Done is closed when the connection has failed or was closed.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended, or nil while it is open.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection, fails the calls in flight with ErrClosed and
// waits for the connection's goroutines.
func (c *Conn) Close() error {
	c.fail(api.ErrClosed)
	c.wg.Wait()
	return nil
}

func (c *Conn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	pending := c.pending
	c.pending = nil
	c.out = nil
	c.mu.Unlock()
	close(c.done)
	_ = c.nc.Close()
	for _, cl := range pending {
		cl.deliver(result{err: fmt.Errorf("%w: connection to %s: %v", api.ErrUnavailable, c.RemoteAddr(), err)})
	}
}

// sliceWriter lets msgpack encode straight into the output buffer.
type sliceWriter struct{ b *[]byte }

func (w sliceWriter) Write(p []byte) (int, error) { *w.b = append(*w.b, p...); return len(p), nil }

var encPool = sync.Pool{New: func() any {
	e := msgpack.NewEncoder(nil)
	e.UseCompactInts(true)
	return e
}}

// appendFrame encodes a frame onto c.out. The caller holds c.mu.
func (c *Conn) appendFrame(typ, flags uint8, id uint64, v any) error {
	start := len(c.out)
	c.out = wire.AppendHeader(c.out, typ, flags, id, 0)
	if v != nil {
		enc := encPool.Get().(*msgpack.Encoder)
		enc.Reset(sliceWriter{&c.out})
		err := enc.Encode(v)
		enc.Reset(nil)
		encPool.Put(enc)
		if err != nil {
			c.out = c.out[:start]
			return fmt.Errorf("%w: encode: %v", api.ErrBadRequest, err)
		}
	}
	if len(c.out)-start-4 > c.maxFrame {
		c.out = c.out[:start]
		return fmt.Errorf("%w: %s", api.ErrBadRequest, wire.ErrFrameTooLarge)
	}
	wire.PutLength(c.out[start:])
	return nil
}

func (c *Conn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Send queues a one-way frame. It does not wait for the write.
func (c *Conn) send(typ, flags uint8, id uint64, v any) error {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return fmt.Errorf("%w: %v", api.ErrUnavailable, c.err)
	}
	err := c.appendFrame(typ, flags, id, v)
	c.mu.Unlock()
	if err == nil {
		c.signal()
	}
	return err
}

// Notify sends a one-way frame (id 0) that expects no answer, such as an
// invalidation pushed to a client. It does not wait for the write.
func (c *Conn) Notify(typ uint8, v any) error {
	return c.send(typ, 0, 0, v)
}

// Reply answers request id with v.
func (c *Conn) Reply(typ uint8, id uint64, v any) {
	if err := c.send(typ, wire.FlagResponse, id, v); err != nil && !errors.Is(err, api.ErrUnavailable) {
		c.ReplyError(typ, id, err)
	}
}

// ReplyError answers request id with err, carried as its stable code.
func (c *Conn) ReplyError(typ uint8, id uint64, err error) {
	body := wire.ErrBody(err)
	_ = c.send(typ, wire.FlagResponse|wire.FlagError, id, &body)
}

// Future is a call in flight.
type Future struct {
	c  *Conn
	id uint64
	ch chan result
}

// Start queues a request and returns its future without waiting. Requests
// started on one Conn are written in the order Start was called.
func (c *Conn) Start(typ uint8, req any) (*Future, error) {
	id := c.nextID.Add(1)
	ch := make(chan result, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: connection to %s: %v", api.ErrUnavailable, c.RemoteAddr(), err)
	}
	if err := c.appendFrame(typ, 0, id, req); err != nil {
		c.mu.Unlock()
		return nil, err
	}
	c.pending[id] = call{ch: ch}
	c.mu.Unlock()
	c.signal()
	return &Future{c: c, id: id, ch: ch}, nil
}

// StartFunc queues a request whose answer (or the connection's failure) is
// handed to fn exactly once. fn runs on the connection's reader goroutine,
// or on the goroutine that fails the connection: it must not block and must
// not call methods of c that wait. Requests started on one Conn are written
// in the order they were started, whichever of Start and StartFunc queued
// them. Decode the frame with DecodeResponse.
func (c *Conn) StartFunc(typ uint8, req any, fn func(wire.Frame, error)) error {
	id := c.nextID.Add(1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return fmt.Errorf("%w: connection to %s: %v", api.ErrUnavailable, c.RemoteAddr(), err)
	}
	if err := c.appendFrame(typ, 0, id, req); err != nil {
		c.mu.Unlock()
		return err
	}
	c.pending[id] = call{fn: fn}
	c.mu.Unlock()
	c.signal()
	return nil
}

// Wait waits for the response and decodes it into resp (which may be nil).
// A remote error comes back as *api.NotOwnerError or *api.Error.
func (f *Future) Wait(ctx context.Context, resp any) error {
	select {
	case r := <-f.ch:
		if r.err != nil {
			return r.err
		}
		return DecodeResponse(r.f, resp)
	case <-ctx.Done():
		f.c.mu.Lock()
		if f.c.pending != nil {
			delete(f.c.pending, f.id)
		}
		f.c.mu.Unlock()
		return fmt.Errorf("%w: %v", api.ErrTimeout, ctx.Err())
	}
}

// DecodeResponse decodes a response frame into resp (which may be nil); an
// error frame comes back as *api.NotOwnerError or *api.Error.
func DecodeResponse(f wire.Frame, resp any) error {
	if f.Flags&wire.FlagError != 0 {
		var eb wire.ErrorBody
		if err := wire.Decode(f.Body, &eb); err != nil {
			return fmt.Errorf("%w: bad error body: %v", api.ErrInternal, err)
		}
		if err := eb.Err(); err != nil {
			return err
		}
		return fmt.Errorf("%w: error frame without code", api.ErrInternal)
	}
	if resp == nil {
		return nil
	}
	if err := wire.Decode(f.Body, resp); err != nil {
		return fmt.Errorf("%w: bad response body: %v", api.ErrInternal, err)
	}
	return nil
}

// Call sends a request and waits for its response.
func (c *Conn) Call(ctx context.Context, typ uint8, req, resp any) error {
	f, err := c.Start(typ, req)
	if err != nil {
		return err
	}
	return f.Wait(ctx, resp)
}

func (c *Conn) readLoop() {
	defer c.wg.Done()
	br := bufio.NewReaderSize(c.nc, 64<<10)
	for {
		f, err := wire.ReadFrame(br, c.maxFrame)
		if err != nil {
			select {
			case <-c.done:
			default:
				if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
					c.log.Warn("closing connection", "remote", c.RemoteAddr(), "err", err)
				}
			}
			c.fail(err)
			return
		}
		if f.IsResponse() {
			c.mu.Lock()
			cl, ok := c.pending[f.ID]
			if ok {
				delete(c.pending, f.ID)
			}
			c.mu.Unlock()
			if ok {
				cl.deliver(result{f: f})
			}
			continue
		}
		if c.h == nil {
			if f.ID != 0 {
				c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: this connection takes no requests", api.ErrUnknownMessage))
			}
			continue
		}
		c.h.HandleFrame(c, f)
	}
}

const maxKeptBuffer = 1 << 20

func (c *Conn) writeLoop() {
	defer c.wg.Done()
	for {
		select {
		case <-c.wake:
		case <-c.done:
			return
		}
		c.mu.Lock()
		buf := c.out
		c.out = c.free
		c.free = nil
		c.mu.Unlock()
		if len(buf) == 0 {
			continue
		}
		if _, err := c.nc.Write(buf); err != nil {
			c.fail(err)
			return
		}
		if cap(buf) <= maxKeptBuffer {
			c.mu.Lock()
			if c.err == nil {
				c.free = buf[:0]
			}
			c.mu.Unlock()
		}
	}
}
