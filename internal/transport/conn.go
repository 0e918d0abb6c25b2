// Package transport carries wire frames over TCP: one multiplexed connection
// per peer with many requests in flight, writes coalesced into one syscall
// when busy, and a listener that also hands raft its own streams.
//
// Goroutines: every Conn owns a reader and a writer goroutine, and a
// heartbeat goroutine when it has a PeerTimeout, all stopped by Close; a
// Server owns its accept loop and the Conns it accepted.
//
// Errors of a call (Call, Start, Future.Wait, StartFunc):
//   - api.ErrUnavailable: the request was not sent (the connection was
//     already dead, or died before the request was handed to the socket).
//   - api.ErrTimeout together with ErrConnLost: the connection died (or its
//     peer stopped answering) after the request was handed to the socket;
//     the peer may have received and applied it: outcome unknown.
//   - api.ErrTimeout together with ctx.Err(): the caller stopped waiting;
//     the request may still be applied.
//   - api.ErrTimeout together with ErrAbandoned: WaitAbort's abort fired.
//   - api.ErrBadRequest: the request could not be encoded or is too large;
//     nothing was sent.
//   - the peer's own answer (*api.NotOwnerError, *api.Error).
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
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// Connection preambles: the first byte a dialer sends selects the protocol.
const (
	PreambleGrid byte = 'G'
	PreambleRaft byte = 'R'
)

// Errors that a call can match besides the api sentinels (see the package
// comment).
var (
	// ErrConnLost: the connection failed after the request was handed to
	// the socket. Always wrapped together with api.ErrTimeout.
	ErrConnLost = errors.New("transport: connection lost with the request in flight")
	// ErrAbandoned: the caller stopped waiting (WaitAbort). Always wrapped
	// together with api.ErrTimeout.
	ErrAbandoned = errors.New("transport: request abandoned by its caller")
	// ErrPeerUnresponsive is why a connection whose peer sent nothing for
	// PeerTimeout while calls waited was closed.
	ErrPeerUnresponsive = errors.New("transport: peer unresponsive")
	// ErrSlowReader is why an accepted connection whose peer does not read
	// was closed: its queue passed twice MaxQueuedBytes.
	ErrSlowReader = errors.New("transport: peer does not read its replies")
)

// Handler serves request frames.
type Handler interface {
	// HandleFrame is called on the connection's reader goroutine for each
	// request frame, in arrival order. It must not block: work that waits
	// moves to a goroutine the handler owns. It may keep f.Body. It answers
	// every request with an id exactly once, with c.Reply or c.ReplyError,
	// from any goroutine (MsgPing is answered by the transport and never
	// reaches it).
	HandleFrame(c *Conn, f wire.Frame)
}

// ConnConfig tunes one connection. The zero value has no limits and no
// heartbeat.
type ConnConfig struct {
	// MaxFrame is the largest frame accepted. Zero: wire.DefaultMaxFrame.
	MaxFrame int
	// Logger receives the connection's logs; nil discards them.
	Logger *slog.Logger
	// PeerTimeout closes the connection when calls are waiting and nothing
	// at all was received for PeerTimeout; a ping (MsgPing) goes out after
	// each quarter of it without input. Zero: no heartbeat.
	PeerTimeout time.Duration
	// MaxQueuedBytes bounds the replies queued for the peer: while the
	// queue is at the bound the connection reads no more requests and
	// Reply waits. Zero: no bound.
	MaxQueuedBytes int
	// MaxInflight bounds the requests the handler is serving (read, not
	// yet answered); a request beyond it is answered ErrBusy without
	// reaching the handler. Replication, pings and the cluster's control
	// messages are never refused. Zero: no bound.
	MaxInflight int
}

type result struct {
	f   wire.Frame
	err error
}

// call is a request in flight: its answer goes to ch, or to fn when the
// caller asked for a callback (StartFunc). batch is the writer batch its
// frame was queued in (Conn.batch at the time).
type call struct {
	ch    chan result
	fn    func(wire.Frame, error)
	batch uint64
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
	nc          net.Conn
	log         *slog.Logger
	h           Handler
	maxFrame    int
	peerTimeout time.Duration
	maxQueued   int
	maxInflight int

	nextID   atomic.Uint64
	received atomic.Uint64 // bytes read: the heartbeat's sign of life

	mu      sync.Mutex
	room    sync.Cond // broadcast when queued bytes fall and when the conn fails
	out     []byte    // queued frames, written by the writer goroutine
	free    []byte    // the writer's spare buffer
	writing int       // bytes the writer took and is writing
	batch   uint64    // buffers the writer took: frames queued now go out in batch+1
	pending map[uint64]call
	serving map[uint64]struct{} // requests counted against maxInflight, not yet answered
	err     error               // non-nil once the connection failed or closed

	wake chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
}

// NewConn starts serving nc with the zero ConnConfig but for maxFrame and
// log (no limits, no heartbeat).
func NewConn(nc net.Conn, h Handler, maxFrame int, log *slog.Logger) *Conn {
	return NewConnWith(nc, h, ConnConfig{MaxFrame: maxFrame, Logger: log})
}

// NewConnWith starts serving nc: requests go to h (nil rejects them) and
// responses to the calls waiting for them.
func NewConnWith(nc net.Conn, h Handler, cfg ConnConfig) *Conn {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxFrame <= 0 {
		cfg.MaxFrame = wire.DefaultMaxFrame
	}
	c := &Conn{
		nc: nc, h: h, maxFrame: cfg.MaxFrame, log: cfg.Logger,
		peerTimeout: cfg.PeerTimeout,
		maxQueued:   max(cfg.MaxQueuedBytes, 0),
		maxInflight: max(cfg.MaxInflight, 0),
		pending:     make(map[uint64]call),
		serving:     make(map[uint64]struct{}),
		wake:        make(chan struct{}, 1),
		done:        make(chan struct{}),
	}
	c.room.L = &c.mu
	c.wg.Add(2)
	go c.readLoop()
	go c.writeLoop()
	if c.peerTimeout > 0 {
		c.wg.Add(1)
		go c.heartbeat()
	}
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
	c.serving = nil
	c.out = nil
	unsent := c.batch + 1 // frames of this batch never reached the socket
	c.mu.Unlock()
	c.room.Broadcast()
	close(c.done)
	_ = c.nc.Close()
	for _, cl := range pending {
		cl.deliver(result{err: c.lostErr(cl.batch == unsent, err)})
	}
}

// lostErr is the error of a call whose connection failed with cause.
func (c *Conn) lostErr(unsent bool, cause error) error {
	if unsent {
		return fmt.Errorf("%w: connection to %s failed before the request was sent: %v", api.ErrUnavailable, c.RemoteAddr(), cause)
	}
	return fmt.Errorf("%w: %w: %s: %v", api.ErrTimeout, ErrConnLost, c.RemoteAddr(), cause)
}

// queued is the bytes held for the peer. The caller holds c.mu.
func (c *Conn) queued() int { return len(c.out) + c.writing }

// waitRoom waits while the queue is at MaxQueuedBytes. It reports false if
// the connection failed. The caller holds c.mu.
func (c *Conn) waitRoom() bool {
	for c.maxQueued > 0 && c.err == nil && c.queued() >= c.maxQueued {
		c.room.Wait()
	}
	return c.err == nil
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

// reply queues the answer to request id, waiting while the queue is at
// MaxQueuedBytes, and releases the request's MaxInflight slot.
func (c *Conn) reply(typ, flags uint8, id uint64, v any) error {
	c.mu.Lock()
	if !c.waitRoom() {
		err := c.err
		c.mu.Unlock()
		return fmt.Errorf("%w: %v", api.ErrUnavailable, err)
	}
	err := c.appendFrame(typ, flags|wire.FlagResponse, id, v)
	if err == nil && c.serving != nil {
		delete(c.serving, id)
	}
	c.mu.Unlock()
	if err == nil {
		c.signal()
	}
	return err
}

// Notify sends a one-way frame (id 0) that expects no answer, such as an
// invalidation pushed to a client. It never waits: if the peer lets the
// queue grow past twice MaxQueuedBytes, the connection is closed with
// ErrSlowReader instead (the peer then knows it may have missed frames).
func (c *Conn) Notify(typ uint8, v any) error {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return fmt.Errorf("%w: %v", api.ErrUnavailable, err)
	}
	if c.maxQueued > 0 && c.queued() >= 2*c.maxQueued {
		n := c.queued()
		c.mu.Unlock()
		err := fmt.Errorf("%w: %d bytes queued", ErrSlowReader, n)
		c.fail(err)
		return fmt.Errorf("%w: %v", api.ErrUnavailable, err)
	}
	err := c.appendFrame(typ, 0, 0, v)
	c.mu.Unlock()
	if err == nil {
		c.signal()
	}
	return err
}

// Reply answers request id with v. While the connection's queue is at
// MaxQueuedBytes it waits until the peer has read enough (or the
// connection fails): do not call it holding a lock the peer's progress
// needs.
func (c *Conn) Reply(typ uint8, id uint64, v any) {
	if err := c.reply(typ, 0, id, v); err != nil && !errors.Is(err, api.ErrUnavailable) {
		c.ReplyError(typ, id, err)
	}
}

// ReplyError answers request id with err, carried as its stable code. It
// waits as Reply does.
func (c *Conn) ReplyError(typ uint8, id uint64, err error) {
	body := wire.ErrBody(err)
	_ = c.reply(typ, wire.FlagError, id, &body)
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
	ch := make(chan result, 1)
	id, err := c.queueCall(typ, req, call{ch: ch})
	if err != nil {
		return nil, err
	}
	return &Future{c: c, id: id, ch: ch}, nil
}

// queueCall queues a request frame and registers cl for its answer.
func (c *Conn) queueCall(typ uint8, req any, cl call) (uint64, error) {
	id := c.nextID.Add(1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, fmt.Errorf("%w: connection to %s: %v", api.ErrUnavailable, c.RemoteAddr(), err)
	}
	if err := c.appendFrame(typ, 0, id, req); err != nil {
		c.mu.Unlock()
		return 0, err
	}
	cl.batch = c.batch + 1
	c.pending[id] = cl
	c.mu.Unlock()
	c.signal()
	return id, nil
}

// StartFunc queues a request whose answer (or the connection's failure) is
// handed to fn exactly once. fn runs on the connection's reader goroutine,
// or on the goroutine that fails the connection: it must not block and must
// not call methods of c that wait. Requests started on one Conn are written
// in the order they were started, whichever of Start and StartFunc queued
// them. Decode the frame with DecodeResponse.
func (c *Conn) StartFunc(typ uint8, req any, fn func(wire.Frame, error)) error {
	_, err := c.queueCall(typ, req, call{fn: fn})
	return err
}

// Wait waits for the response and decodes it into resp (which may be nil).
// A remote error comes back as *api.NotOwnerError or *api.Error; the
// transport's errors are listed in the package comment.
func (f *Future) Wait(ctx context.Context, resp any) error {
	return f.WaitAbort(ctx, nil, resp)
}

// WaitAbort is Wait that also returns when abort closes, with an error
// matching api.ErrTimeout and ErrAbandoned. The call then stays pending:
// wait for it again, or Forget it (the request may still be applied).
func (f *Future) WaitAbort(ctx context.Context, abort <-chan struct{}, resp any) error {
	select {
	case r := <-f.ch:
		if r.err != nil {
			return r.err
		}
		return DecodeResponse(r.f, resp)
	case <-ctx.Done():
		f.Forget()
		return fmt.Errorf("%w: %w", api.ErrTimeout, ctx.Err())
	case <-abort:
		return fmt.Errorf("%w: %w", api.ErrTimeout, ErrAbandoned)
	}
}

// Forget drops the call: its answer, if one comes, is discarded.
func (f *Future) Forget() {
	f.c.mu.Lock()
	if f.c.pending != nil {
		delete(f.c.pending, f.id)
	}
	f.c.mu.Unlock()
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

// countingReader counts the bytes read from the connection.
type countingReader struct{ c *Conn }

func (r countingReader) Read(p []byte) (int, error) {
	n, err := r.c.nc.Read(p)
	r.c.received.Add(uint64(n))
	return n, err
}

// readable waits while the queue is at MaxQueuedBytes (the peer does not
// read its replies: stop reading its requests). False once the connection
// failed.
func (c *Conn) readable() bool {
	if c.maxQueued == 0 {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.waitRoom()
}

func (c *Conn) readLoop() {
	defer c.wg.Done()
	br := bufio.NewReaderSize(countingReader{c}, 64<<10)
	for {
		if !c.readable() {
			return
		}
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
		c.serve(f)
	}
}

// serve hands a request frame to the handler, unless the transport answers
// it itself: pings, requests without a handler, requests beyond MaxInflight.
func (c *Conn) serve(f wire.Frame) {
	switch {
	case f.Type == wire.MsgPing && f.ID != 0:
		c.Reply(f.Type, f.ID, &wire.Ack{})
	case c.h == nil:
		if f.ID != 0 {
			c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: this connection takes no requests", api.ErrUnknownMessage))
		}
	case !c.admit(f):
		c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: %d requests in flight on this connection", api.ErrBusy, c.maxInflight))
	default:
		c.h.HandleFrame(c, f)
	}
}

// neverRefused are the request types MaxInflight never refuses: the
// replication stream (applied inline, in order: refusing one would break
// the stream) and the cluster's control messages (cheap, and refusing a
// lease renewal would make a node unavailable).
func neverRefused(typ uint8) bool {
	switch typ {
	case wire.MsgReplicate, wire.MsgSnapshot, wire.MsgTail, wire.MsgTailProbe, wire.MsgPing, wire.MsgSynced,
		wire.MsgTable, wire.MsgDrain, wire.MsgLease, wire.MsgActivity:
		return true
	}
	return false
}

// admit counts request f against MaxInflight; false if it must be refused.
func (c *Conn) admit(f wire.Frame) bool {
	if c.maxInflight == 0 || f.ID == 0 || neverRefused(f.Type) {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.serving == nil { // failed
		return true
	}
	if len(c.serving) >= c.maxInflight {
		return false
	}
	c.serving[f.ID] = struct{}{}
	return true
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
		if len(buf) == 0 {
			c.mu.Unlock()
			continue
		}
		c.out = c.free
		c.free = nil
		c.writing = len(buf)
		c.batch++
		c.mu.Unlock()
		if _, err := c.nc.Write(buf); err != nil {
			c.fail(err)
			return
		}
		c.mu.Lock()
		c.writing = 0
		if c.err == nil && cap(buf) <= maxKeptBuffer {
			c.free = buf[:0]
		}
		c.mu.Unlock()
		if c.maxQueued > 0 {
			c.room.Broadcast()
		}
	}
}

// heartbeat closes the connection when calls wait and the peer sent
// nothing for peerTimeout, pinging it after each quarter of silence.
func (c *Conn) heartbeat() {
	defer c.wg.Done()
	every := max(c.peerTimeout/4, time.Millisecond)
	tick := time.NewTicker(every)
	defer tick.Stop()
	var seen uint64
	var silent time.Duration
	for {
		select {
		case <-tick.C:
		case <-c.done:
			return
		}
		got := c.received.Load()
		if got != seen || !c.waiting() {
			seen, silent = got, 0
			continue
		}
		silent += every
		if silent >= c.peerTimeout {
			c.log.Warn("closing connection to unresponsive peer", "remote", c.RemoteAddr(), "silent", silent)
			c.fail(fmt.Errorf("%w: nothing received for %v", ErrPeerUnresponsive, silent))
			return
		}
		_ = c.StartFunc(wire.MsgPing, &wire.Ack{}, func(wire.Frame, error) {})
	}
}

// waiting reports whether calls wait for an answer.
func (c *Conn) waiting() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending) > 0
}
