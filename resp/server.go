// Package resp serves a grid node's maps over the Redis protocol (RESP2, and
// RESP3 after HELLO 3), so that redis-cli, redis-benchmark and every Redis
// client library work against the grid.
//
// Each connection starts on the map Config.DefaultMap. SELECT <n> switches
// to the map "db<n>"; SELECT <name> (not a number; a grid extension)
// switches to the map of that name, which a Go program reads with
// node.Map(name). Keys are placed with the grid's affinity rule, so {tag}
// collocates keys exactly like Redis Cluster hash tags. A node forwards a
// command to the key's primary over the grid's transport; multi-key
// commands are split per partition. Writes are acknowledged after the
// synchronous backups, as through the Go client.
//
// Pipelining: the commands that arrive together are executed as a batch.
// Commands on the same partition run in order; single-key commands on
// different partitions may run in parallel, as a Redis Cluster pipeline
// across slots does. Multi-key, keyless and connection commands are
// barriers: everything before them finishes first. Replies always come back
// in request order.
//
// MULTI/EXEC run the queued commands as one grid transaction (package txn),
// across partitions; WATCH compares key versions (multi.go).
//
// See docs/redis.md for the command list and the differences from Redis.
package resp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/workpool"
	"github.com/collocate/grid/txn"
	"github.com/collocate/grid/txn/txnnode"
)

// Config configures a RESP endpoint. Every limit has a default
// (DefaultConfig) and a clear behaviour when reached; docs/redis.md lists
// them.
type Config struct {
	// Addr is the host:port to listen on.
	Addr string
	// DefaultMap is the map a new connection uses (SELECT 0 gives "db0").
	DefaultMap string
	// MaxClients bounds open connections; more are refused with an error.
	// Default 10000.
	MaxClients int
	// MaxPipeline bounds the commands read and executed as one batch.
	// Default 256.
	MaxPipeline int
	// MaxBulk bounds one bulk argument, as Redis's proto-max-bulk-len does:
	// a longer one is a protocol error ("invalid bulk length"), refused at
	// its header before any of it is read. Default 16 MiB, the grid's
	// default maximum value size: set the two together.
	MaxBulk int
	// MaxArgs bounds the arguments of one command. Default 1<<20.
	MaxArgs int
	// MaxQueryBuffer bounds the bytes one connection buffers for a request
	// that has not arrived whole (Redis's client-query-buffer-limit, 1 GiB
	// there); past it the connection is closed without a reply, as Redis
	// does. The buffer grows with the data that arrives, never with a
	// declared length. Default 64 MiB; at least MaxBulk + 64 KiB.
	MaxQueryBuffer int
	// MaxQueryBufferTotal bounds the query buffers of all connections
	// together (each connection's first 16 KiB always counts and is always
	// granted); a connection whose buffer would pass it is closed. Default
	// 1 GiB.
	MaxQueryBufferTotal int64
	// MaxReplyBuffer bounds the replies a connection queues: once this
	// many bytes wait, they are written before the connection runs another
	// command or reads another request, so a client that does not read its
	// replies stops being served (backpressure). The replies held stay below
	// MaxReplyBuffer plus MaxInFlight of the largest replies. Default 8 MiB.
	MaxReplyBuffer int
	// MaxInFlight bounds the pipelined commands of one connection that run
	// at once (single-key commands of different partitions run in
	// parallel). Default 64.
	MaxInFlight int
	// WriteTimeout closes a connection whose client accepts no reply byte
	// for this long while replies wait (Redis closes such a client at its
	// client-output-buffer-limit). 0 never does. Default 60 s.
	WriteTimeout time.Duration
	// CommandTimeout bounds a command (the commands of a pipeline that run
	// together share it); past it the reply is TIMEOUT, outcome unknown.
	// It must stay below the clients' read timeouts: go-redis (5 s by
	// default) sends a command again after its read timeout, which would
	// apply a write twice. KEYS, DBSIZE and FLUSHDB, which walk the whole
	// map, get the node's RequestTimeout instead. 0 uses the node's
	// RequestTimeout for every command. Default 3 s.
	CommandTimeout time.Duration
	// IdleTimeout closes connections idle this long; 0 never does.
	IdleTimeout time.Duration
	// Logger receives connection errors; nil uses slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns a Config listening on 127.0.0.1:6379.
func DefaultConfig() Config {
	return Config{
		Addr:                "127.0.0.1:6379",
		DefaultMap:          "db0",
		MaxClients:          10000,
		MaxPipeline:         256,
		MaxBulk:             16 << 20,
		MaxArgs:             1 << 20,
		MaxQueryBuffer:      64 << 20,
		MaxQueryBufferTotal: 1 << 30,
		MaxReplyBuffer:      8 << 20,
		MaxInFlight:         64,
		WriteTimeout:        60 * time.Second,
		CommandTimeout:      3 * time.Second,
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	switch {
	case c.Addr == "":
		return errors.New("resp: Addr is empty")
	case c.DefaultMap == "":
		return errors.New("resp: DefaultMap is empty")
	case c.MaxClients < 1:
		return fmt.Errorf("resp: MaxClients %d < 1", c.MaxClients)
	case c.MaxPipeline < 1:
		return fmt.Errorf("resp: MaxPipeline %d < 1", c.MaxPipeline)
	case c.MaxBulk < 1:
		return fmt.Errorf("resp: MaxBulk %d < 1", c.MaxBulk)
	case c.MaxArgs < 1:
		return fmt.Errorf("resp: MaxArgs %d < 1", c.MaxArgs)
	case c.MaxQueryBuffer < c.MaxBulk+maxInline:
		return fmt.Errorf("resp: MaxQueryBuffer %d < MaxBulk + 64 KiB (%d)", c.MaxQueryBuffer, c.MaxBulk+maxInline)
	case c.MaxQueryBufferTotal < int64(c.MaxQueryBuffer):
		return fmt.Errorf("resp: MaxQueryBufferTotal %d < MaxQueryBuffer %d", c.MaxQueryBufferTotal, c.MaxQueryBuffer)
	case c.MaxReplyBuffer < 1:
		return fmt.Errorf("resp: MaxReplyBuffer %d < 1", c.MaxReplyBuffer)
	case c.MaxInFlight < 1:
		return fmt.Errorf("resp: MaxInFlight %d < 1", c.MaxInFlight)
	case c.WriteTimeout < 0:
		return fmt.Errorf("resp: WriteTimeout %v < 0", c.WriteTimeout)
	case c.CommandTimeout < 0:
		return fmt.Errorf("resp: CommandTimeout %v < 0", c.CommandTimeout)
	case c.IdleTimeout < 0:
		return fmt.Errorf("resp: IdleTimeout %v < 0", c.IdleTimeout)
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("resp: Addr %q: %v", c.Addr, err)
	}
	return nil
}

func (c Config) readerLimits() readerLimits {
	return readerLimits{maxBulk: c.MaxBulk, maxArgs: c.MaxArgs, maxBuf: c.MaxQueryBuffer}
}

// Server is a RESP endpoint in front of one grid node.
type Server struct {
	cfg     Config
	node    *grid.Node
	txg     txn.Grid // MULTI/EXEC's transactions (the txn steps must run on every member)
	log     *slog.Logger
	ln      net.Listener
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started time.Time
	runID   string

	mu    sync.Mutex
	conns map[*conn]struct{}

	nextID    atomic.Int64
	accepted  atomic.Int64
	rejected  atomic.Int64
	commands  atomic.Int64
	qbufKills atomic.Int64 // connections closed at a query buffer limit
	obufKills atomic.Int64 // connections closed at WriteTimeout
	qbuf      budget       // the query buffers of all connections
	workers   *workpool.Pool
	closeOnce sync.Once
}

// Listen starts a RESP endpoint for node. Close stops it. MULTI/EXEC run
// as grid transactions: every member must run the transaction steps
// (txnnode.Start, or grid.Config.InternalSteps = txnnode.Steps(); gridnode
// does).
func Listen(node *grid.Node, cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("resp: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg: cfg, node: node, txg: txnnode.Local(node), log: log.With("component", "resp"), ln: ln,
		ctx: ctx, cancel: cancel, started: time.Now(),
		runID: fmt.Sprintf("%040x", time.Now().UnixNano()),
		conns: map[*conn]struct{}{},
	}
	s.qbuf.limit = cfg.MaxQueryBufferTotal
	// Pipelined commands of other partitions run on pooled goroutines
	// whose stacks have already grown.
	s.workers = workpool.New(ctx.Done(), &s.wg, 10*time.Second)
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// clientMemory is the bytes all connections hold in their query and reply
// buffers.
func (s *Server) clientMemory() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for c := range s.conns {
		n += c.memory()
	}
	return n
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops accepting, closes every connection and waits for their
// goroutines. Commands in flight end with an error.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		err = s.ln.Close()
		s.cancel()
		s.mu.Lock()
		for c := range s.conns {
			_ = c.nc.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return err
}

func (s *Server) accept() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// A temporary failure (out of file descriptors): back off.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-s.ctx.Done():
				return
			}
			continue
		}
		delay = 0
		s.mu.Lock()
		if len(s.conns) >= s.cfg.MaxClients || s.ctx.Err() != nil {
			s.mu.Unlock()
			s.rejected.Add(1)
			_ = nc.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = nc.Write([]byte("-ERR max number of clients reached\r\n"))
			_ = nc.Close()
			continue
		}
		c := s.newConn(nc)
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.accepted.Add(1)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			c.serve()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}
