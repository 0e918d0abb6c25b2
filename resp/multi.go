package resp

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/collocate/grid/txn"
)

// MULTI/EXEC/DISCARD/WATCH/UNWATCH of one connection. MULTI queues the
// connection's commands (nothing is sent to the grid); EXEC runs the
// queue as one grid transaction (package txn), across partitions, and
// answers the replies of the attempt that committed. docs/redis.md,
// "Transactions", lists how this differs from Redis.

const (
	// maxQueued bounds the commands one MULTI queues (their bytes are
	// bounded by Config.MaxQueryBuffer).
	maxQueued = 10000
	// maxWatched bounds the keys one connection watches (a transaction's
	// default txn.Options.MaxKeys).
	maxWatched = 4096

	// maxTxTimeout is the longest txn.Options.Timeout (txn.Begin refuses
	// more).
	maxTxTimeout = 5 * time.Minute

	errExecAbort  = "EXECABORT Transaction discarded because of previous errors."
	errNotInMulti = "ERR Command not allowed inside a transaction"
)

// multiState is a connection's open MULTI.
type multiState struct {
	queue []queued
	bytes int  // the queued arguments, as Config.MaxQueryBuffer counts them
	dirty bool // a command was refused while queueing: EXEC answers EXECABORT
	full  bool // the queue reached a limit: every later command is refused
}

// queued is a command waiting for EXEC, its arguments copied out of the
// read buffer.
type queued struct {
	spec *cmdSpec
	args [][]byte
}

// watch is a WATCHed key with the version it had (0: absent).
type watch struct {
	m, key  string
	version uint64
}

// refuse answers a command with an error; inside MULTI the error also
// aborts the transaction, as in Redis: at the next EXEC, or at once if
// the refused command is EXEC itself (which, like Redis, also forgets the
// watches outside MULTI).
func (c *conn) refuse(spec *cmdSpec, msg string) {
	switch {
	case spec != nil && spec.name == "exec":
		c.endMulti()
		c.out = appendError(c.out, "EXECABORT Transaction discarded because of: "+strings.TrimPrefix(msg, "ERR "))
	case c.multi != nil:
		c.multi.dirty = true
		fallthrough
	default:
		c.out = appendError(c.out, msg)
	}
}

// queue adds a command to the open MULTI, or refuses it (EXECABORT at
// EXEC): one that cannot run in a grid transaction, or past the queue's
// limits.
func (c *conn) queue(spec *cmdSpec, args [][]byte) {
	st := c.multi
	if spec.tx == nil {
		c.refuse(spec, errNotInMulti+": '"+spec.name+"' does not run in a grid transaction")
		return
	}
	if spec.txCheck != nil {
		if msg := spec.txCheck(args); msg != "" {
			c.refuse(spec, msg)
			return
		}
	}
	size := 0
	for _, a := range args {
		size += len(a) + 16
	}
	if st.full || len(st.queue) >= maxQueued || st.bytes+size > c.s.cfg.MaxQueryBuffer {
		if !st.full {
			st.full = true
			st.queue, st.bytes = nil, 0 // EXEC can only abort: free the queue
			c.multiBytes.Store(0)
		}
		c.refuse(spec, fmt.Sprintf("ERR MULTI queue full (at most %d commands and %d bytes); the transaction is discarded", maxQueued, c.s.cfg.MaxQueryBuffer))
		return
	}
	st.queue = append(st.queue, queued{spec: spec, args: copyArgs(args, size)})
	st.bytes += size
	c.multiBytes.Store(int64(st.bytes))
	c.out = appendSimple(c.out, "QUEUED")
}

// copyArgs copies args into one allocation.
func copyArgs(args [][]byte, size int) [][]byte {
	buf := make([]byte, 0, size)
	out := make([][]byte, len(args))
	for i, a := range args {
		buf = append(buf, a...)
		out[i] = buf[len(buf)-len(a) : len(buf) : len(buf)]
	}
	return out
}

// endMulti closes the open MULTI, if any, and forgets the watched keys.
func (c *conn) endMulti() {
	c.multi = nil
	c.multiBytes.Store(0)
	c.watches = nil
}

func cmdMulti(c *conn, cmd *command, out []byte) []byte {
	if c.multi != nil {
		return appendError(out, "ERR MULTI calls can not be nested")
	}
	c.multi = &multiState{}
	return appendSimple(out, "OK")
}

func cmdDiscard(c *conn, cmd *command, out []byte) []byte {
	if c.multi == nil {
		return appendError(out, "ERR DISCARD without MULTI")
	}
	c.endMulti()
	return appendSimple(out, "OK")
}

func cmdUnwatch(c *conn, cmd *command, out []byte) []byte {
	c.watches = nil
	return appendSimple(out, "OK")
}

// cmdWatch remembers each key's version now. A key watched twice keeps
// its first version, as in Redis.
func cmdWatch(c *conn, cmd *command, out []byte) []byte {
	if c.multi != nil {
		return appendError(out, "ERR WATCH inside MULTI is not allowed")
	}
	var add []watch
	for _, k := range cmd.args[1:] {
		key := string(k)
		if c.watching(key) || watched(add, c.db, key) {
			continue
		}
		if len(c.watches)+len(add) >= maxWatched {
			return appendError(out, fmt.Sprintf("ERR too many watched keys (at most %d)", maxWatched))
		}
		e, err := cmd.m.GetEntry(cmd.ctx, key)
		if err != nil && !errors.Is(err, txn.ErrNotFound) {
			return errReply(out, err, false)
		}
		add = append(add, watch{m: c.db, key: key, version: e.Version})
	}
	c.watches = append(c.watches, add...)
	return appendSimple(out, "OK")
}

func (c *conn) watching(key string) bool { return watched(c.watches, c.db, key) }

func watched(ws []watch, m, key string) bool {
	for _, w := range ws {
		if w.key == key && w.m == m {
			return true
		}
	}
	return false
}

// cmdExec runs the queued commands as one transaction.
func cmdExec(c *conn, cmd *command, out []byte) []byte {
	st, watches := c.multi, c.watches
	if st == nil {
		return appendError(out, "ERR EXEC without MULTI")
	}
	c.endMulti()
	if st.dirty {
		return appendError(out, errExecAbort)
	}
	replies, sel, err := c.runTx(cmd.ctx, st.queue, watches)
	if err != nil {
		return execError(out, err, len(watches) > 0, c.proto)
	}
	if sel.m != c.db {
		c.selectMap(sel.m, sel.label)
	}
	out = appendArray(out, len(st.queue))
	return append(out, replies...)
}

// runAlone runs one command as a transaction of its own (MSETNX and
// INCRBYFLOAT, which have no other implementation).
func runAlone(c *conn, cmd *command, out []byte) []byte {
	replies, _, err := c.runTx(cmd.ctx, []queued{{spec: cmd.spec, args: cmd.args}}, nil)
	if err != nil {
		return execError(out, err, false, c.proto)
	}
	return append(out, replies...)
}

// errWatched: a watched key changed; EXEC answers a null array.
var errWatched = errors.New("a watched key changed")

// beforeCommit marks an error met while the queue ran, before Commit:
// nothing was applied.
type beforeCommit struct{ err error }

func (e beforeCommit) Error() string { return e.err.Error() }
func (e beforeCommit) Unwrap() error { return e.err }

// selection is the map SELECT chose (it may change inside EXEC).
type selection struct{ m, label string }

// runTx runs queue in one transaction (txn.Run: again after a conflict,
// so the replies are those of the attempt that committed) with the
// watched keys as reads at their versions. It returns the replies, one
// after the other, and the map selected at the end.
func (c *conn) runTx(ctx context.Context, queue []queued, watches []watch) ([]byte, selection, error) {
	if _, ok := ctx.Deadline(); !ok {
		// CommandTimeout 0: the node's RequestTimeout bounds the retries.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.s.node.Config().RequestTimeout)
		defer cancel()
	}
	opts := txn.Options{Timeout: min(c.s.cfg.CommandTimeout, maxTxTimeout)}
	var replies []byte
	var sel selection
	attempt := 0
	err := txn.Run(ctx, c.s.txg, opts, func(ctx context.Context, tx *txn.Tx) error {
		attempt++
		if err := watchIn(ctx, tx, watches, attempt > 1); err != nil {
			return err
		}
		if err := tx.Prefetch(ctx, c.db, readKeys(queue)); err != nil {
			return runError(err, len(watches) > 0)
		}
		x := &txExec{c: c, tx: tx, ctx: ctx, sel: selection{c.db, c.dbLabel}, maxEntry: c.s.node.Config().MaxValueSize}
		replies = replies[:0]
		for _, q := range queue {
			var err error
			if replies, err = q.spec.tx(x, q.args, replies); err != nil {
				return runError(err, len(watches) > 0)
			}
		}
		sel = x.sel
		return nil
	})
	return replies, sel, err
}

// watchIn adds the watched keys to tx as reads at their versions. On a
// retry (check) it reads them: a changed one ends the transaction
// (errWatched) rather than being retried.
func watchIn(ctx context.Context, tx *txn.Tx, watches []watch, check bool) error {
	for _, w := range watches {
		if err := tx.Watch(w.m, w.key, w.version); err != nil {
			return runError(err, true)
		}
	}
	if !check {
		return nil
	}
	byMap := map[string][]string{}
	for _, w := range watches {
		byMap[w.m] = append(byMap[w.m], w.key)
	}
	for m, keys := range byMap {
		if err := tx.Prefetch(ctx, m, keys); err != nil {
			return runError(err, true)
		}
	}
	return nil
}

// readKeys lists the keys the queued commands read, up to the first
// SELECT (which changes the map of the keys after it): EXEC reads them
// all at once before running the commands.
func readKeys(queue []queued) []string {
	var keys []string
	for _, q := range queue {
		s := q.spec
		if s.name == "select" {
			break
		}
		if !s.txReads {
			continue
		}
		last := s.lastKey
		if last < 0 {
			last += len(q.args)
		}
		for i := s.firstKey; i <= last && i < len(q.args); i += s.step {
			keys = append(keys, string(q.args[i]))
		}
	}
	return keys
}

// runError classifies an error of a transaction's attempt before its
// commit: a conflict there is a watched key that changed; any other
// error applied nothing (txn.Run retries it if it is retryable).
func runError(err error, watching bool) error {
	if watching && errors.Is(err, txn.ErrConflict) {
		return errWatched
	}
	return beforeCommit{err}
}

// execError answers a transaction that did not commit. Nothing applied
// and it may run again: a null array if keys were watched (the client's
// WATCH loop runs again; EXEC forgot the watches, so a client sending
// MULTI again would run unwatched), TRYAGAIN if not. Outcome unknown:
// TIMEOUT. Refused (too many keys, ...): ERR.
func execError(out []byte, err error, watching bool, proto int) []byte {
	var bc beforeCommit
	before := errors.As(err, &bc)
	switch {
	case errors.Is(err, errWatched):
		return appendNullArray(out, proto)
	case txn.Retryable(err) || before && (outcomeUnknown(err) || retryable(err)):
		if watching {
			return appendNullArray(out, proto)
		}
		return appendError(out, "TRYAGAIN the transaction could not commit before its deadline; nothing applied: "+err.Error())
	case before:
		return appendError(out, "ERR "+err.Error())
	case errors.Is(err, txn.ErrUnknown), outcomeUnknown(err), retryable(err):
		return appendError(out, "TIMEOUT the transaction's outcome is unknown: "+err.Error())
	}
	return appendError(out, "ERR "+err.Error())
}
