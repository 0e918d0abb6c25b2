package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// ServerConfig configures a Server. Zero fields take their defaults.
type ServerConfig struct {
	// MaxFrame is the largest frame accepted. Default wire.DefaultMaxFrame.
	MaxFrame int
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// MaxQueuedBytes bounds the replies queued for one accepted
	// connection: at the bound the server stops reading that connection's
	// requests and its replies wait until the peer reads. Default 8 MiB;
	// negative: no bound.
	MaxQueuedBytes int
	// MaxInflight bounds the requests being served for one accepted
	// connection; a data request beyond it is answered ErrBusy (nothing
	// applied). Replication and control messages are never refused.
	// Default 4096; negative: no bound.
	MaxInflight int
}

// Default server limits.
const (
	DefaultMaxQueuedBytes = 8 << 20
	DefaultMaxInflight    = 4096
)

func (c *ServerConfig) withDefaults() {
	if c.MaxFrame <= 0 {
		c.MaxFrame = wire.DefaultMaxFrame
	}
	if c.MaxQueuedBytes == 0 {
		c.MaxQueuedBytes = DefaultMaxQueuedBytes
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = DefaultMaxInflight
	}
}

// connConfig is the configuration of an accepted connection.
func (c *ServerConfig) connConfig() ConnConfig {
	return ConnConfig{MaxFrame: c.MaxFrame, Logger: c.Logger, MaxQueuedBytes: max(c.MaxQueuedBytes, 0), MaxInflight: max(c.MaxInflight, 0)}
}

// Server accepts grid connections and raft streams on one TCP listener.
type Server struct {
	ln  net.Listener
	h   Handler
	log *slog.Logger
	cfg ServerConfig

	raftCh chan net.Conn
	done   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup

	mu        sync.Mutex
	conns     map[*Conn]struct{}
	raftConns map[*trackedConn]struct{} // handed to raft; closed on Close
}

// Listen binds addr ("host:0" picks a port) and starts accepting, with the
// default ServerConfig but for maxFrame and log.
func Listen(addr string, h Handler, maxFrame int, log *slog.Logger) (*Server, error) {
	return ListenWith(addr, h, ServerConfig{MaxFrame: maxFrame, Logger: log})
}

// ListenWith binds addr ("host:0" picks a port) and starts accepting.
func ListenWith(addr string, h Handler, cfg ServerConfig) (*Server, error) {
	cfg.withDefaults()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{
		ln: ln, h: h, log: cfg.Logger, cfg: cfg,
		raftCh:    make(chan net.Conn),
		done:      make(chan struct{}),
		conns:     make(map[*Conn]struct{}),
		raftConns: make(map[*trackedConn]struct{}),
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("accept failed", "err", err)
			select {
			case <-time.After(50 * time.Millisecond):
			case <-s.done:
				return
			}
			continue
		}
		s.wg.Add(1)
		go s.route(nc)
	}
}

// route reads the preamble and hands the connection to the grid or to raft.
func (s *Server) route(nc net.Conn) {
	defer s.wg.Done()
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var pre [1]byte
	if _, err := io.ReadFull(nc, pre[:]); err != nil {
		_ = nc.Close()
		return
	}
	_ = nc.SetReadDeadline(time.Time{})
	switch pre[0] {
	case PreambleGrid:
		c := NewConnWith(nc, s.h, s.cfg.connConfig())
		s.mu.Lock()
		select {
		case <-s.done:
			s.mu.Unlock()
			_ = c.Close()
			return
		default:
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		<-c.Done()
		_ = c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	case PreambleRaft:
		s.mu.Lock()
		select {
		case <-s.done:
			s.mu.Unlock()
			_ = nc.Close()
			return
		default:
		}
		tc := &trackedConn{Conn: nc, s: s}
		s.raftConns[tc] = struct{}{}
		s.mu.Unlock()
		select {
		case s.raftCh <- tc:
		case <-s.done:
			_ = nc.Close()
		}
	default:
		s.log.Warn("closing connection with unknown preamble", "remote", nc.RemoteAddr(), "preamble", pre[0])
		_ = nc.Close()
	}
}

// trackedConn is a raft stream the server closes on shutdown; closing it
// forgets it.
type trackedConn struct {
	net.Conn
	s *Server
}

func (c *trackedConn) Close() error {
	c.s.mu.Lock()
	delete(c.s.raftConns, c)
	c.s.mu.Unlock()
	return c.Conn.Close()
}

// Close stops accepting, closes every accepted connection and waits for the
// server's goroutines.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.mu.Lock()
		close(s.done)
		conns := make([]*Conn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		for nc := range s.raftConns {
			_ = nc.Conn.Close()
		}
		s.raftConns = nil
		s.mu.Unlock()
		_ = s.ln.Close()
		for _, c := range conns {
			c.fail(api.ErrClosed)
		}
	})
	s.wg.Wait()
	return nil
}

// RaftLayer is the raft StreamLayer over the server's listener.
type RaftLayer struct {
	s         *Server
	advertise net.Addr
}

// RaftLayer returns the stream layer raft uses on this server. advertise is
// the address peers dial (the listener's address if nil).
func (s *Server) RaftLayer(advertise net.Addr) *RaftLayer {
	if advertise == nil {
		advertise = s.ln.Addr()
	}
	return &RaftLayer{s: s, advertise: advertise}
}

// Accept returns the next raft stream.
func (l *RaftLayer) Accept() (net.Conn, error) {
	select {
	case nc := <-l.s.raftCh:
		return nc, nil
	case <-l.s.done:
		return nil, net.ErrClosed
	}
}

// Close is a no-op: the server owns the listener.
func (l *RaftLayer) Close() error { return nil }

// Addr is the advertised address.
func (l *RaftLayer) Addr() net.Addr { return l.advertise }

// Dial opens a raft stream to address.
func (l *RaftLayer) Dial(address string, timeout time.Duration) (net.Conn, error) {
	nc, err := net.DialTimeout("tcp", address, timeout)
	if err != nil {
		return nil, err
	}
	if _, err := nc.Write([]byte{PreambleRaft}); err != nil {
		_ = nc.Close()
		return nil, err
	}
	return nc, nil
}

// PoolConfig configures a Pool. The zero value of every field picks its
// default.
type PoolConfig struct {
	// MaxFrame is the largest frame accepted. Default wire.DefaultMaxFrame.
	MaxFrame int
	// Logger receives the connections' logs; nil discards them.
	Logger *slog.Logger
	// Dial opens the TCP connection to addr. Default: a net.Dialer. Tests
	// use it to put a proxy in between; it could carry TLS.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// PeerTimeout closes a connection on which calls wait while nothing at
	// all arrived for PeerTimeout (the peer is pinged after each quarter
	// of it); its calls fail with ErrConnLost. It frees callers pinned to
	// a stopped process whose sockets stay open. Default 3s; negative:
	// never.
	PeerTimeout time.Duration
	// DialTimeout bounds one dial, whatever the caller's deadline: a peer
	// whose host stopped answering (its link is down, a network cut)
	// leaves a dial waiting for SYN retransmissions, and a request stuck
	// there sees no table change. Default 1s; negative: only the caller's
	// ctx.
	DialTimeout time.Duration
}

// DefaultPeerTimeout is PoolConfig.PeerTimeout's default.
const DefaultPeerTimeout = 3 * time.Second

// DefaultDialTimeout is PoolConfig.DialTimeout's default.
const DefaultDialTimeout = time.Second

// Pool keeps one multiplexed connection per peer address.
type Pool struct {
	log      *slog.Logger
	maxFrame int
	dialTO   time.Duration
	peerTO   time.Duration
	dialFn   func(ctx context.Context, addr string) (net.Conn, error)
	h        Handler // serves frames the peers push on dialed connections

	mu     sync.Mutex
	conns  map[string]*poolEntry
	closed bool
}

type poolEntry struct {
	ready chan struct{}
	c     *Conn
	err   error
}

// NewPool returns an empty pool with the default PoolConfig but for
// maxFrame and log.
func NewPool(maxFrame int, log *slog.Logger) *Pool {
	return NewPoolWith(PoolConfig{MaxFrame: maxFrame, Logger: log})
}

// NewPoolWith returns an empty pool.
func NewPoolWith(cfg PoolConfig) *Pool {
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	if cfg.PeerTimeout == 0 {
		cfg.PeerTimeout = DefaultPeerTimeout
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	return &Pool{log: cfg.Logger, maxFrame: cfg.MaxFrame, peerTO: max(cfg.PeerTimeout, 0), dialTO: cfg.DialTimeout, dialFn: cfg.Dial, conns: make(map[string]*poolEntry)}
}

// SetHandler sets the handler of frames that peers send on connections this
// pool dials (one-way notifications). Call it before the first Get.
func (p *Pool) SetHandler(h Handler) {
	p.mu.Lock()
	p.h = h
	p.mu.Unlock()
}

// Get returns the open connection to addr, dialing it if needed. Concurrent
// callers share one dial.
func (p *Pool) Get(ctx context.Context, addr string) (*Conn, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, api.ErrClosed
		}
		e, ok := p.conns[addr]
		if !ok {
			e = &poolEntry{ready: make(chan struct{})}
			p.conns[addr] = e
			p.mu.Unlock()
			e.c, e.err = p.dial(ctx, addr)
			close(e.ready)
			p.mu.Lock()
			if e.err != nil || p.closed {
				delete(p.conns, addr)
			}
			closed := p.closed
			p.mu.Unlock()
			if closed && e.c != nil {
				_ = e.c.Close()
				return nil, api.ErrClosed
			}
			return e.c, e.err
		}
		p.mu.Unlock()
		select {
		case <-e.ready:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: dial %s: %w", api.ErrUnavailable, addr, ctx.Err())
		}
		if e.err != nil {
			return nil, e.err
		}
		select {
		case <-e.c.Done():
			// Dead: drop it (once) and dial again.
			p.mu.Lock()
			if p.conns[addr] == e {
				delete(p.conns, addr)
			}
			p.mu.Unlock()
			_ = e.c.Close()
			continue
		default:
			return e.c, nil
		}
	}
}

func (p *Pool) dial(ctx context.Context, addr string) (*Conn, error) {
	if p.dialTO > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.dialTO)
		defer cancel()
	}
	nc, err := p.dialFn(ctx, addr)
	if err != nil {
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return nil, fmt.Errorf("%w: dial %s: %w", api.ErrUnavailable, addr, err)
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	if _, err := nc.Write([]byte{PreambleGrid}); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("%w: dial %s: %w", api.ErrUnavailable, addr, err)
	}
	p.mu.Lock()
	h := p.h
	p.mu.Unlock()
	return NewConnWith(nc, h, ConnConfig{MaxFrame: p.maxFrame, Logger: p.log, PeerTimeout: p.peerTO}), nil
}

// Close closes every pooled connection.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	entries := p.conns
	p.conns = map[string]*poolEntry{}
	p.mu.Unlock()
	for _, e := range entries {
		<-e.ready
		if e.c != nil {
			_ = e.c.Close()
		}
	}
}
