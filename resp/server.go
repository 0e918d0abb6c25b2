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
// See docs/redis.md for the command list and the differences from Redis.
package resp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/workpool"
)

// Config configures a RESP endpoint.
type Config struct {
	// Addr is the host:port to listen on.
	Addr string
	// DefaultMap is the map a new connection uses (SELECT 0 gives "db0").
	DefaultMap string
	// MaxClients bounds open connections; more are refused with an error.
	MaxClients int
	// MaxPipeline bounds the commands executed as one batch.
	MaxPipeline int
	// MaxBulk bounds one argument (Redis's proto-max-bulk-len).
	MaxBulk int
	// MaxArgs bounds the arguments of one command.
	MaxArgs int
	// IdleTimeout closes connections idle this long; 0 never does.
	IdleTimeout time.Duration
	// Logger receives connection errors; nil uses slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns a Config listening on 127.0.0.1:6379.
func DefaultConfig() Config {
	return Config{
		Addr:        "127.0.0.1:6379",
		DefaultMap:  "db0",
		MaxClients:  10000,
		MaxPipeline: 256,
		MaxBulk:     512 << 20,
		MaxArgs:     1 << 20,
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
	case c.IdleTimeout < 0:
		return fmt.Errorf("resp: IdleTimeout %v < 0", c.IdleTimeout)
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("resp: Addr %q: %v", c.Addr, err)
	}
	return nil
}

// Server is a RESP endpoint in front of one grid node.
type Server struct {
	cfg     Config
	node    *grid.Node
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
	workers   *workpool.Pool
	closeOnce sync.Once
}

// Listen starts a RESP endpoint for node. Close stops it.
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
		cfg: cfg, node: node, log: log.With("component", "resp"), ln: ln,
		ctx: ctx, cancel: cancel, started: time.Now(),
		runID: fmt.Sprintf("%040x", time.Now().UnixNano()),
		conns: map[*conn]struct{}{},
	}
	// Pipelined commands of other partitions run on pooled goroutines
	// whose stacks have already grown.
	s.workers = workpool.New(ctx.Done(), &s.wg, 10*time.Second)
	s.wg.Add(1)
	go s.accept()
	return s, nil
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

// conn is one client connection. Its fields are owned by its serve
// goroutine; CLIENT LIST reads the ones written under metaMu (name, library,
// last command and times, dbLabel, proto) from other connections.
type conn struct {
	s       *Server
	nc      net.Conn
	id      int64
	rd      *reader
	out     []byte
	proto   int
	db      string // selected map name
	dbLabel string // as SELECT named it ("0" for db0)
	m       grid.Map
	quit    bool

	cmds    []command
	replies [][]byte

	metaMu  sync.Mutex
	name    string
	libName string
	libVer  string
	lastCmd string
	created time.Time
	lastAt  time.Time
}

// command is one parsed request of a batch.
type command struct {
	args [][]byte
	spec *cmdSpec
	m    grid.Map
	part int // partition of a single-key command run in parallel; -1: barrier
}

func (s *Server) newConn(nc net.Conn) *conn {
	now := time.Now()
	c := &conn{
		s: s, nc: nc, id: s.nextID.Add(1), rd: newReader(nc, s.cfg.MaxBulk, s.cfg.MaxArgs),
		created: now, lastAt: now,
	}
	c.setProto(2)
	c.selectMap(s.cfg.DefaultMap, "0")
	return c
}

// selectMap and setProto write under metaMu because CLIENT LIST reads
// dbLabel and proto from other connections; the serve goroutine, their only
// writer, reads them without it.
func (c *conn) selectMap(name, label string) {
	m := c.s.node.Map(name)
	c.metaMu.Lock()
	c.db, c.dbLabel, c.m = name, label, m
	c.metaMu.Unlock()
}

func (c *conn) setProto(p int) {
	c.metaMu.Lock()
	c.proto = p
	c.metaMu.Unlock()
}

// serve reads batches of commands, runs them and writes their replies.
func (c *conn) serve() {
	defer c.nc.Close()
	max := c.s.cfg.MaxPipeline
	for {
		n := 0
		var perr error
		for n < max {
			if n == len(c.cmds) {
				c.cmds = append(c.cmds, command{})
			}
			args, ok, err := c.rd.next(c.cmds[n].args)
			c.cmds[n].args = args
			if err != nil {
				perr = err
				break
			}
			if !ok {
				break
			}
			if len(args) > 0 {
				n++
			}
		}
		if n > 0 {
			c.runBatch(c.cmds[:n])
		}
		if perr != nil {
			c.out = appendError(c.out, "ERR "+perr.Error())
			c.quit = true
		}
		if len(c.out) > 0 {
			if _, err := c.nc.Write(c.out); err != nil {
				return
			}
			if cap(c.out) > 1<<20 {
				c.out = nil // do not keep a huge reply buffer for an idle client
			} else {
				c.out = c.out[:0]
			}
		}
		if c.quit {
			return
		}
		if n == max {
			continue // the buffer may hold more
		}
		if c.s.cfg.IdleTimeout > 0 {
			_ = c.nc.SetReadDeadline(time.Now().Add(c.s.cfg.IdleTimeout))
		}
		if err := c.rd.fill(); err != nil {
			var ne net.Error
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !(errors.As(err, &ne) && ne.Timeout()) {
				c.s.log.Debug("read", "client", c.id, "err", err)
			}
			return
		}
	}
}

// runBatch executes cmds and appends their replies, in order, to c.out.
func (c *conn) runBatch(cmds []command) {
	c.s.commands.Add(int64(len(cmds)))
	c.touch(cmds[len(cmds)-1].args[0])
	if len(cmds) == 1 {
		c.out = c.exec(&cmds[0], c.out)
		return
	}
	for len(c.replies) < len(cmds) {
		c.replies = append(c.replies, nil)
	}
	for i := range cmds {
		c.replies[i] = c.replies[i][:0]
	}
	done := len(cmds)
	for i := 0; i < len(cmds); {
		// A segment of single-key commands, up to the next barrier.
		j := i
		for ; j < len(cmds); j++ {
			cmd := &cmds[j]
			cmd.spec, cmd.part = lookup(cmd.args), -1
			if cmd.spec == nil || !cmd.spec.keyed || !cmd.spec.arityOK(len(cmd.args)) ||
				(cmd.spec.singleKeyOnly && len(cmd.args) != 2) {
				break
			}
			cmd.m = c.m
			cmd.part = affinity.Partition(string(cmd.args[1]), c.s.node.Partitions())
		}
		c.runParallel(cmds[i:j], c.replies[i:j])
		if j < len(cmds) {
			c.replies[j] = c.exec(&cmds[j], c.replies[j])
			j++
			if c.quit {
				done = j
				break
			}
		}
		i = j
	}
	for i := range done {
		c.out = append(c.out, c.replies[i]...)
	}
	for i := range cmds {
		if cap(c.replies[i]) > 4<<10 {
			c.replies[i] = nil
		}
	}
}

// runParallel runs single-key commands: in order within a partition, in
// parallel across partitions.
func (c *conn) runParallel(cmds []command, replies [][]byte) {
	switch len(cmds) {
	case 0:
		return
	case 1:
		replies[0] = c.execKeyed(&cmds[0], replies[0])
		return
	}
	if c.runBatched(cmds, replies) {
		return
	}
	groups := make(map[int][]int, len(cmds))
	order := make([]int, 0, len(cmds))
	for i := range cmds {
		p := cmds[i].part
		if _, ok := groups[p]; !ok {
			order = append(order, p)
		}
		groups[p] = append(groups[p], i)
	}
	var wg sync.WaitGroup
	for gi, p := range order {
		run := func() {
			for _, i := range groups[p] {
				replies[i] = c.execKeyed(&cmds[i], replies[i])
			}
		}
		if gi == len(order)-1 {
			run()
			break
		}
		wg.Add(1)
		c.s.workers.Go(func() {
			defer wg.Done()
			run()
		})
	}
	wg.Wait()
}

// runBatched runs a segment made only of GET and SET as one Map.Batch: one
// request per owner node instead of one per command. It reports false (and
// does nothing) if the segment has other commands.
func (c *conn) runBatched(cmds []command, replies [][]byte) bool {
	for i := range cmds {
		if n := cmds[i].spec.name; n != "get" && n != "set" {
			return false
		}
	}
	ops := make([]api.BatchOp, 0, len(cmds))
	idx := make([]int, 0, len(cmds))
	for i := range cmds {
		a := cmds[i].args
		if cmds[i].spec.name == "get" {
			ops = append(ops, api.BatchOp{Kind: api.BatchGet, Key: string(a[1])})
		} else {
			args, msg := parseSet(a)
			if msg != "" {
				replies[i] = appendError(replies[i], msg)
				continue
			}
			ops = append(ops, api.BatchOp{Kind: api.BatchSet, Key: string(a[1]), Value: a[2], Set: args})
		}
		idx = append(idx, i)
	}
	res := cmds[0].m.Batch(c.s.ctx, ops)
	for j, i := range idx {
		r := &res[j]
		switch {
		case r.Err != nil:
			replies[i] = errReply(replies[i], r.Err)
		case ops[j].Kind == api.BatchGet && !r.Found:
			replies[i] = appendNull(replies[i], c.proto)
		case ops[j].Kind == api.BatchGet:
			replies[i] = appendBulk(replies[i], r.Value)
		default:
			replies[i] = setReply(replies[i], c.proto, ops[j].Set, r.Done, r.Found, r.Value)
		}
	}
	return true
}

func (c *conn) touch(name []byte) {
	c.metaMu.Lock()
	c.lastAt = time.Now()
	if string(name) != c.lastCmd {
		c.lastCmd = string(name)
	}
	c.metaMu.Unlock()
}

// exec runs one command of any kind and appends its reply.
func (c *conn) exec(cmd *command, out []byte) []byte {
	spec := lookup(cmd.args)
	if spec == nil {
		return appendError(out, unknownCommand(cmd.args))
	}
	if !spec.arityOK(len(cmd.args)) {
		return appendError(out, wrongArity(spec.name))
	}
	cmd.spec, cmd.m = spec, c.m
	return spec.run(c, cmd, out)
}

// execKeyed runs a checked single-key command.
func (c *conn) execKeyed(cmd *command, out []byte) []byte {
	return cmd.spec.run(c, cmd, out)
}

// errReply turns a grid error into a Redis error reply.
func errReply(out []byte, err error) []byte {
	switch {
	case errors.Is(err, api.ErrNotInteger):
		return appendError(out, "ERR value is not an integer or out of range")
	case errors.Is(err, api.ErrOverflow):
		return appendError(out, "ERR increment or decrement would overflow")
	case errors.Is(err, api.ErrTimeout), errors.Is(err, api.ErrReplication), errors.Is(err, context.DeadlineExceeded):
		return appendError(out, "TIMEOUT "+err.Error())
	case errors.Is(err, api.ErrUnavailable), errors.Is(err, api.ErrNotOwner), errors.Is(err, api.ErrClosed),
		errors.Is(err, api.ErrStaleEpoch), errors.Is(err, context.Canceled):
		return appendError(out, "TRYAGAIN "+err.Error())
	}
	return appendError(out, "ERR "+err.Error())
}
