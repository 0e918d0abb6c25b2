package resp

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/api"
)

// conn is one client connection. Its fields are owned by its serve
// goroutine; CLIENT LIST reads the ones written under metaMu (name, library,
// last command and times, dbLabel, proto) and the atomics from other
// connections.
//
// Memory: the read buffer grows with a request's bytes up to
// Config.MaxQueryBuffer (and the server's MaxQueryBufferTotal); replies
// are written out once Config.MaxReplyBuffer bytes wait, and at most
// Config.MaxInFlight commands run at once, so the replies held stay below
// MaxReplyBuffer plus MaxInFlight replies.
type conn struct {
	s       *Server
	nc      net.Conn
	id      int64
	rd      *reader
	out     []byte // replies not yet written, in request order
	proto   int
	db      string // selected map name
	dbLabel string // as SELECT named it ("0" for db0)
	m       grid.Map
	quit    bool

	cmds    []command
	replies [][]byte // replies of the commands running in parallel

	multi   *multiState // an open MULTI, nil outside one
	watches []watch     // WATCHed keys, in order, until EXEC, DISCARD, UNWATCH or RESET

	qbufBytes  atomic.Int64 // read buffer size
	outBytes   atomic.Int64 // replies held, written or not
	multiBytes atomic.Int64 // commands queued by MULTI

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
	ctx  context.Context // bounded by Config.CommandTimeout
	part int             // partition of a single-key command run in parallel; -1: barrier
}

// errReply appends the reply for a grid error of this command.
func (cmd *command) errReply(out []byte, err error) []byte {
	return errReply(out, err, cmd.spec.write)
}

func (s *Server) newConn(nc net.Conn) *conn {
	now := time.Now()
	c := &conn{
		s: s, nc: nc, id: s.nextID.Add(1), rd: newReader(nc, s.cfg.readerLimits(), &s.qbuf),
		created: now, lastAt: now,
	}
	c.qbufBytes.Store(int64(c.rd.capacity()))
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

// memory is the bytes this connection holds in buffers (CLIENT LIST's
// tot-mem, INFO's mem_clients_normal).
func (c *conn) memory() int64 {
	return c.qbufBytes.Load() + c.outBytes.Load() + c.multiBytes.Load()
}

// serve reads batches of commands, runs them and writes their replies.
func (c *conn) serve() {
	defer func() {
		_ = c.nc.Close()
		c.rd.release()
		c.qbufBytes.Store(0)
		c.outBytes.Store(0)
	}()
	for {
		n, perr := c.readBatch()
		if n > 0 {
			err := c.runBatch(c.cmds[:n])
			c.dropBigArgs(n)
			if err != nil {
				c.logWriteError(err)
				return
			}
		}
		if perr != nil {
			c.out = appendError(c.out, "ERR "+perr.Error())
			c.quit = true
		}
		if err := c.flush(); err != nil {
			c.logWriteError(err)
			return
		}
		if c.quit {
			return
		}
		if n == c.s.cfg.MaxPipeline {
			continue // the buffer may hold more
		}
		if c.s.cfg.IdleTimeout > 0 {
			_ = c.nc.SetReadDeadline(time.Now().Add(c.s.cfg.IdleTimeout))
		}
		err := c.rd.fill()
		c.qbufBytes.Store(int64(c.rd.capacity()))
		if err != nil {
			c.logReadError(err)
			return
		}
	}
}

// readBatch parses up to MaxPipeline whole requests from the read buffer
// into c.cmds; a protocol error ends the batch.
func (c *conn) readBatch() (int, error) {
	n := 0
	for n < c.s.cfg.MaxPipeline {
		if n == len(c.cmds) {
			c.cmds = append(c.cmds, command{})
		}
		args, ok, err := c.rd.next(c.cmds[n].args)
		c.cmds[n].args = args
		if err != nil || !ok {
			return n, err
		}
		if len(args) > 0 {
			n++
		}
	}
	return n, nil
}

// dropBigArgs forgets the argument lists of huge commands, so that a
// connection does not keep their size.
func (c *conn) dropBigArgs(n int) {
	for i := range c.cmds[:n] {
		if cap(c.cmds[i].args) > 4096 {
			c.cmds[i].args = nil
		}
	}
}

func (c *conn) logReadError(err error) {
	var ne net.Error
	switch {
	case errors.Is(err, errQueryBuffer), errors.Is(err, errQueryBufferTotal):
		c.s.qbufKills.Add(1)
		c.s.log.Warn("closing client at the query buffer limit", "client", c.id, "addr", c.nc.RemoteAddr(), "err", err)
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.As(err, &ne) && ne.Timeout():
	default:
		c.s.log.Debug("read", "client", c.id, "err", err)
	}
}

func (c *conn) logWriteError(err error) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.s.obufKills.Add(1)
		c.s.log.Warn("closing client that reads no replies", "client", c.id, "addr", c.nc.RemoteAddr(),
			"pending", len(c.out), "write_timeout", c.s.cfg.WriteTimeout)
		return
	}
	c.s.log.Debug("write", "client", c.id, "err", err)
}

// flush writes the queued replies. A client that accepts no byte for
// WriteTimeout is an error (the connection closes); one that reads slowly
// is waited for.
func (c *conn) flush() error {
	c.outBytes.Store(int64(cap(c.out)))
	for written := 0; written < len(c.out); {
		if c.s.cfg.WriteTimeout > 0 {
			_ = c.nc.SetWriteDeadline(time.Now().Add(c.s.cfg.WriteTimeout))
		}
		n, err := c.nc.Write(c.out[written:])
		written += n
		var ne net.Error
		if err != nil && !(n > 0 && errors.As(err, &ne) && ne.Timeout()) {
			return err
		}
	}
	if cap(c.out) > 1<<20 {
		c.out = nil // do not keep a huge reply buffer for an idle client
	} else {
		c.out = c.out[:0]
	}
	c.outBytes.Store(int64(cap(c.out)))
	return nil
}

// runBatch executes cmds in order and appends their replies to c.out.
// Runs of single-key commands execute MaxInFlight at a time (in parallel
// across partitions); other commands are barriers and run alone. Once
// MaxReplyBuffer bytes of replies wait, they are written before the next
// command runs.
func (c *conn) runBatch(cmds []command) error {
	c.s.commands.Add(int64(len(cmds)))
	c.touch(cmds[len(cmds)-1].args[0])
	for i := 0; i < len(cmds) && !c.quit; {
		j := i
		for j < len(cmds) && j-i < c.s.cfg.MaxInFlight && c.prepareParallel(&cmds[j]) {
			j++
		}
		if j > i {
			c.runParallel(cmds[i:j])
		} else {
			c.runBarrier(&cmds[i])
			j++
		}
		i = j
		if len(c.out) >= c.s.cfg.MaxReplyBuffer {
			if err := c.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// prepareParallel reports whether cmd is a single-key command that may run
// in parallel with others, and sets its spec, map and partition.
func (c *conn) prepareParallel(cmd *command) bool {
	cmd.spec, cmd.part = lookup(cmd.args), -1
	if c.multi != nil || cmd.spec == nil || !cmd.spec.keyed || !cmd.spec.arityOK(len(cmd.args)) ||
		(cmd.spec.singleKeyOnly && len(cmd.args) != 2) {
		return false
	}
	cmd.m = c.m
	cmd.part = affinity.Partition(string(cmd.args[1]), c.s.node.Partitions())
	return true
}

// commandContext bounds a command by CommandTimeout, or by nothing here
// (the node's RequestTimeout applies) for the whole-map commands.
func (c *conn) commandContext(spec *cmdSpec) (context.Context, context.CancelFunc) {
	if c.s.cfg.CommandTimeout <= 0 || (spec != nil && (spec.wholeMap || spec.blocking)) {
		return c.s.ctx, func() {}
	}
	return context.WithTimeout(c.s.ctx, c.s.cfg.CommandTimeout)
}

// runBarrier runs one command of any kind alone.
func (c *conn) runBarrier(cmd *command) {
	spec := lookup(cmd.args)
	if spec == nil {
		c.refuse(nil, unknownCommand(cmd.args))
		return
	}
	if !spec.arityOK(len(cmd.args)) {
		c.refuse(spec, wrongArity(spec.name))
		return
	}
	if c.multi != nil && !spec.notQueued {
		c.queue(spec, cmd.args)
		return
	}
	ctx, cancel := c.commandContext(spec)
	defer cancel()
	cmd.spec, cmd.m, cmd.ctx = spec, c.m, ctx
	c.out = spec.run(c, cmd, c.out)
	c.outBytes.Store(int64(cap(c.out)))
}

// runParallel runs checked single-key commands, at most MaxInFlight: in
// order within a partition, in parallel across partitions. Their replies
// are appended to c.out in request order.
func (c *conn) runParallel(cmds []command) {
	ctx, cancel := c.commandContext(nil)
	defer cancel()
	for i := range cmds {
		cmds[i].ctx = ctx
	}
	if len(cmds) == 1 {
		c.out = cmds[0].spec.run(c, &cmds[0], c.out)
		c.outBytes.Store(int64(cap(c.out)))
		return
	}
	for len(c.replies) < len(cmds) {
		c.replies = append(c.replies, nil)
	}
	replies := c.replies[:len(cmds)]
	for i := range replies {
		replies[i] = replies[i][:0]
	}
	if !c.runBatched(cmds, replies) {
		c.runGroups(cmds, replies)
	}
	held := int64(cap(c.out))
	for i := range replies {
		c.out = append(c.out, replies[i]...)
		held += int64(cap(replies[i]))
		if cap(replies[i]) > 4<<10 {
			replies[i] = nil
		}
	}
	c.outBytes.Store(held)
}

// runGroups runs each partition's commands in order on its own worker.
func (c *conn) runGroups(cmds []command, replies [][]byte) {
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
				replies[i] = cmds[i].spec.run(c, &cmds[i], replies[i])
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
	res := cmds[0].m.Batch(cmds[0].ctx, ops)
	for j, i := range idx {
		r := &res[j]
		switch {
		case r.Err != nil:
			replies[i] = cmds[i].errReply(replies[i], r.Err)
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
