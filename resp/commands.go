package resp

import (
	"bytes"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/api"
)

// cmdSpec describes a command. arity follows Redis: n > 0 means exactly n
// arguments (name included), -n means at least n.
type cmdSpec struct {
	name  string
	arity int
	flags []string
	// firstKey, lastKey, step locate the keys (COMMAND INFO).
	firstKey, lastKey, step int
	// keyed: a single-key command whose key is args[1]; it may run in
	// parallel with commands on other partitions of the same pipeline.
	keyed bool
	// singleKeyOnly: keyed only with exactly one key (DEL, EXISTS).
	singleKeyOnly bool
	// wholeMap: walks every partition (KEYS, DBSIZE, FLUSHDB), so it gets
	// the node's RequestTimeout rather than Config.CommandTimeout.
	wholeMap bool
	// blocking: may wait for data (XREAD BLOCK); it bounds its own wait
	// rather than taking Config.CommandTimeout.
	blocking bool
	// write: a mutation (the "write" flag); see errReply.
	write bool
	// notQueued: runs at once inside MULTI (EXEC, DISCARD, MULTI, WATCH,
	// QUIT, RESET), as in Redis; every other command is queued.
	notQueued bool
	run       func(c *conn, cmd *command, out []byte) []byte
	// tx runs the command inside a transaction (EXEC); nil: refused in
	// MULTI. txCheck, if set, refuses some of its forms when queued.
	tx      txFunc
	txCheck func(a [][]byte) string
	// txReads: tx reads every key (firstKey, lastKey, step), so EXEC
	// reads them ahead, in parallel (Tx.Prefetch).
	txReads bool
}

func (s *cmdSpec) arityOK(n int) bool {
	if s.arity >= 0 {
		return n == s.arity
	}
	return n >= -s.arity
}

var commandTable map[string]*cmdSpec

func init() {
	specs := []*cmdSpec{
		{name: "ping", arity: -1, flags: []string{"fast"}, run: cmdPing, tx: txPlain(cmdPing)},
		{name: "echo", arity: 2, flags: []string{"fast"}, run: cmdEcho, tx: txPlain(cmdEcho)},
		{name: "hello", arity: -1, flags: []string{"noscript", "loading", "stale", "fast", "no_auth"}, run: cmdHello},
		{name: "auth", arity: -2, flags: []string{"noscript", "loading", "stale", "fast", "no_auth"}, run: cmdAuth},
		{name: "quit", arity: -1, flags: []string{"fast", "no_auth"}, notQueued: true, run: cmdQuit},
		{name: "reset", arity: 1, flags: []string{"fast", "no_auth"}, notQueued: true, run: cmdReset},
		{name: "select", arity: 2, flags: []string{"loading", "stale", "fast"}, run: cmdSelect, tx: txSelect},
		{name: "get", arity: 2, flags: []string{"readonly", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdGet, tx: txGet, txReads: true},
		{name: "set", arity: -3, flags: []string{"write", "denyoom"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdSet, tx: txSet},
		{name: "setnx", arity: 3, flags: []string{"write", "denyoom", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdSetNX, tx: txSetNX, txReads: true},
		{name: "setex", arity: 4, flags: []string{"write", "denyoom"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdSetEX, tx: txSetEX},
		{name: "psetex", arity: 4, flags: []string{"write", "denyoom"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdSetEX, tx: txSetEX},
		{name: "getset", arity: 3, flags: []string{"write", "denyoom", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdGetSet, tx: txGetSet, txReads: true},
		{name: "getdel", arity: 2, flags: []string{"write", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdGetDel, tx: txGetDel, txReads: true},
		{name: "del", arity: -2, flags: []string{"write"}, firstKey: 1, lastKey: -1, step: 1, keyed: true, singleKeyOnly: true, run: cmdDel, tx: txDel, txReads: true},
		{name: "unlink", arity: -2, flags: []string{"write", "fast"}, firstKey: 1, lastKey: -1, step: 1, keyed: true, singleKeyOnly: true, run: cmdDel, tx: txDel, txReads: true},
		{name: "exists", arity: -2, flags: []string{"readonly", "fast"}, firstKey: 1, lastKey: -1, step: 1, keyed: true, singleKeyOnly: true, run: cmdExists, tx: txExists, txReads: true},
		{name: "mget", arity: -2, flags: []string{"readonly", "fast"}, firstKey: 1, lastKey: -1, step: 1, run: cmdMGet, tx: txMGet, txReads: true},
		{name: "mset", arity: -3, flags: []string{"write", "denyoom"}, firstKey: 1, lastKey: -1, step: 2, run: cmdMSet, tx: txMSet},
		{name: "incr", arity: 2, flags: []string{"write", "denyoom", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdIncr, tx: txIncr, txReads: true},
		{name: "decr", arity: 2, flags: []string{"write", "denyoom", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdIncr, tx: txIncr, txReads: true},
		{name: "incrby", arity: 3, flags: []string{"write", "denyoom", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdIncr, tx: txIncr, txReads: true},
		{name: "decrby", arity: 3, flags: []string{"write", "denyoom", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdIncr, tx: txIncr, txReads: true},
		{name: "append", arity: 3, flags: []string{"write", "denyoom", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdAppend, tx: txAppend, txReads: true},
		{name: "strlen", arity: 2, flags: []string{"readonly", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdStrlen, tx: txStrlen, txReads: true},
		{name: "expire", arity: -3, flags: []string{"write", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdExpire, tx: txExpire, txCheck: txCheckExpire, txReads: true},
		{name: "pexpire", arity: -3, flags: []string{"write", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdExpire, tx: txExpire, txCheck: txCheckExpire, txReads: true},
		{name: "expireat", arity: -3, flags: []string{"write", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdExpire, tx: txExpire, txCheck: txCheckExpire, txReads: true},
		{name: "pexpireat", arity: -3, flags: []string{"write", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdExpire, tx: txExpire, txCheck: txCheckExpire, txReads: true},
		{name: "ttl", arity: 2, flags: []string{"readonly", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdTTL},
		{name: "pttl", arity: 2, flags: []string{"readonly", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdTTL},
		{name: "expiretime", arity: 2, flags: []string{"readonly", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdTTL},
		{name: "pexpiretime", arity: 2, flags: []string{"readonly", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdTTL},
		{name: "persist", arity: 2, flags: []string{"write", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdPersist},
		{name: "type", arity: 2, flags: []string{"readonly", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdType, tx: txType, txReads: true},
		{name: "dbsize", arity: 1, flags: []string{"readonly", "fast"}, wholeMap: true, run: cmdDBSize},
		{name: "scan", arity: -2, flags: []string{"readonly"}, run: cmdScan},
		{name: "keys", arity: 2, flags: []string{"readonly"}, wholeMap: true, run: cmdKeys},
		{name: "flushdb", arity: -1, flags: []string{"write"}, wholeMap: true, run: cmdFlushDB},
		{name: "info", arity: -1, flags: []string{"loading", "stale"}, run: cmdInfo},
		{name: "command", arity: -1, flags: []string{"loading", "stale"}, run: cmdCommand},
		{name: "client", arity: -2, flags: []string{"loading", "stale"}, run: cmdClient},
		{name: "config", arity: -2, flags: []string{"loading", "stale"}, run: cmdConfig},
		{name: "time", arity: 1, flags: []string{"loading", "stale", "fast"}, run: cmdTime, tx: txPlain(cmdTime)},
		{name: "xadd", arity: -5, flags: []string{"write", "denyoom", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdXAdd},
		{name: "xrange", arity: -4, flags: []string{"readonly"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: cmdXRange},
		{name: "xread", arity: -4, flags: []string{"readonly", "blocking", "movablekeys"}, blocking: true, run: cmdXRead},
		{name: "multi", arity: 1, flags: []string{"noscript", "loading", "stale", "fast", "allow_busy"}, notQueued: true, run: cmdMulti},
		{name: "exec", arity: 1, flags: []string{"noscript", "loading", "stale", "skip_slowlog"}, notQueued: true, run: cmdExec},
		{name: "discard", arity: 1, flags: []string{"noscript", "loading", "stale", "fast", "allow_busy"}, notQueued: true, run: cmdDiscard},
		{name: "watch", arity: -2, flags: []string{"noscript", "loading", "stale", "fast", "allow_busy"}, firstKey: 1, lastKey: -1, step: 1, notQueued: true, run: cmdWatch},
		{name: "unwatch", arity: 1, flags: []string{"noscript", "loading", "stale", "fast", "allow_busy"}, run: cmdUnwatch, tx: txUnwatch},
		{name: "msetnx", arity: -3, flags: []string{"write", "denyoom"}, firstKey: 1, lastKey: -1, step: 2, run: runAlone, tx: txMSetNX, txReads: true},
		{name: "incrbyfloat", arity: 3, flags: []string{"write", "denyoom", "fast"}, firstKey: 1, lastKey: 1, step: 1, keyed: true, run: runAlone, tx: txIncrByFloat, txReads: true},
		{name: "fcall", arity: -3, flags: []string{"write", "noscript", "stale", "skip_monitor", "may_replicate", "no_mandatory_keys"}, run: cmdFCall},
	}
	commandTable = make(map[string]*cmdSpec, len(specs))
	for _, s := range specs {
		s.write = slices.Contains(s.flags, "write")
		commandTable[s.name] = s
	}
}

// lookup finds a command by its case-insensitive name without allocating.
func lookup(args [][]byte) *cmdSpec {
	name := args[0]
	if len(name) > 32 {
		return nil
	}
	var buf [32]byte
	for i, c := range name {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return commandTable[string(buf[:len(name)])]
}

// unknownCommand is Redis's error text for an unknown command.
func unknownCommand(args [][]byte) string {
	var b strings.Builder
	for _, a := range args[1:] {
		room := 128 - b.Len()
		if room <= 0 {
			break
		}
		b.WriteByte('\'')
		b.Write(a[:min(len(a), room)])
		b.WriteString("' ")
	}
	name := args[0][:min(len(args[0]), 128)]
	return "ERR unknown command '" + string(name) + "', with args beginning with: " + b.String()
}

func wrongArity(name string) string {
	return "ERR wrong number of arguments for '" + name + "' command"
}

const (
	errSyntax     = "ERR syntax error"
	errNotInteger = "ERR value is not an integer or out of range"
)

func isOpt(arg []byte, opt string) bool { return strings.EqualFold(string(arg), opt) }

func cmdPing(c *conn, cmd *command, out []byte) []byte {
	switch len(cmd.args) {
	case 1:
		return appendSimple(out, "PONG")
	case 2:
		return appendBulk(out, cmd.args[1])
	}
	return appendError(out, wrongArity("ping"))
}

func cmdEcho(c *conn, cmd *command, out []byte) []byte { return appendBulk(out, cmd.args[1]) }

func cmdQuit(c *conn, cmd *command, out []byte) []byte {
	c.quit = true
	return appendSimple(out, "OK")
}

func cmdReset(c *conn, cmd *command, out []byte) []byte {
	c.endMulti()
	c.setProto(2)
	c.selectMap(c.s.cfg.DefaultMap, "0")
	c.metaMu.Lock()
	c.name = ""
	c.metaMu.Unlock()
	return appendSimple(out, "RESET")
}

func cmdSelect(c *conn, cmd *command, out []byte) []byte {
	arg := cmd.args[1]
	if n, ok := api.ParseInt(arg); ok {
		if n < 0 || n > math.MaxInt32 {
			return appendError(out, "ERR DB index is out of range")
		}
		if n == 0 {
			c.selectMap(c.s.cfg.DefaultMap, "0")
		} else {
			c.selectMap("db"+string(arg), string(arg))
		}
		return appendSimple(out, "OK")
	}
	if len(arg) == 0 || len(arg) > 256 {
		return appendError(out, "ERR invalid map name")
	}
	c.selectMap(string(arg), string(arg))
	return appendSimple(out, "OK")
}

func cmdGet(c *conn, cmd *command, out []byte) []byte {
	v, err := cmd.m.Get(cmd.ctx, string(cmd.args[1]))
	if errors.Is(err, grid.ErrNotFound) {
		return appendNull(out, c.proto)
	}
	if err != nil {
		return cmd.errReply(out, err)
	}
	return appendBulk(out, v)
}

// expiry parses an expire argument in unit (1 for ms, 1000 for s) and
// returns the TTL it means, relative (abs false) or from a unix time (abs
// true). Redis's errors: not an integer, or invalid for the command.
func expiry(arg []byte, unit int64, abs bool, cmdName string, allowNonPositive bool) (time.Duration, string) {
	v, ok := api.ParseInt(arg)
	if !ok {
		return 0, errNotInteger
	}
	invalid := "ERR invalid expire time in '" + cmdName + "' command"
	if !allowNonPositive && v <= 0 {
		return 0, invalid
	}
	if v > math.MaxInt64/unit || v < math.MinInt64/unit {
		return 0, invalid
	}
	ms := v * unit
	nowNS := time.Now().UnixNano()
	now := nowNS / int64(time.Millisecond)
	if abs {
		if ms < 0 && !allowNonPositive {
			return 0, invalid
		}
		ms -= now
	} else if ms > math.MaxInt64-now {
		return 0, invalid
	}
	// The grid keeps expiries as unix nanoseconds, which end in the year
	// 2262: later expiries are clamped to a day before that (the margin
	// absorbs clock differences between this node and the primary).
	maxMS := math.MaxInt64/int64(time.Millisecond) - now - int64(24*time.Hour/time.Millisecond)
	if ms >= maxMS || ms <= -maxMS {
		return time.Duration(max(min(ms, maxMS), -maxMS)) * time.Millisecond, ""
	}
	if abs {
		// Exact to the nanosecond, so that PEXPIRETIME gives back the
		// millisecond asked for.
		return time.Duration(v*unit*int64(time.Millisecond) - nowNS), ""
	}
	return time.Duration(ms) * time.Millisecond, ""
}

func parseSet(a [][]byte) (api.SetArgs, string) {
	var args api.SetArgs
	var expArg []byte
	var unit int64
	var abs, ex bool
	for j := 3; j < len(a); j++ {
		opt := a[j]
		hasNext := j+1 < len(a)
		switch {
		case isOpt(opt, "NX") && !args.IfPresent:
			args.IfAbsent = true
		case isOpt(opt, "XX") && !args.IfAbsent:
			args.IfPresent = true
		case isOpt(opt, "GET"):
			args.ReturnOld = true
		case isOpt(opt, "KEEPTTL") && !ex:
			args.KeepTTL = true
		case isOpt(opt, "EX") && !args.KeepTTL && hasNext && (!ex || (unit == 1000 && !abs)):
			expArg, unit, abs, ex = a[j+1], 1000, false, true
			j++
		case isOpt(opt, "PX") && !args.KeepTTL && hasNext && (!ex || (unit == 1 && !abs)):
			expArg, unit, abs, ex = a[j+1], 1, false, true
			j++
		case isOpt(opt, "EXAT") && !args.KeepTTL && hasNext && (!ex || (unit == 1000 && abs)):
			expArg, unit, abs, ex = a[j+1], 1000, true, true
			j++
		case isOpt(opt, "PXAT") && !args.KeepTTL && hasNext && (!ex || (unit == 1 && abs)):
			expArg, unit, abs, ex = a[j+1], 1, true, true
			j++
		default:
			return args, errSyntax
		}
	}
	if ex {
		ttl, msg := expiry(expArg, unit, abs, "set", false)
		if msg != "" {
			return args, msg
		}
		// An absolute time in the past writes a key that is expired at once.
		args.TTL = max(ttl, time.Nanosecond)
	}
	return args, ""
}

// setReply formats SET's answer.
func setReply(out []byte, proto int, args api.SetArgs, done, found bool, old []byte) []byte {
	if args.ReturnOld {
		if !found {
			return appendNull(out, proto)
		}
		return appendBulk(out, old)
	}
	if !done {
		return appendNull(out, proto)
	}
	return appendSimple(out, "OK")
}

func cmdSet(c *conn, cmd *command, out []byte) []byte {
	args, msg := parseSet(cmd.args)
	if msg != "" {
		return appendError(out, msg)
	}
	r, err := cmd.m.Set(cmd.ctx, string(cmd.args[1]), cmd.args[2], args)
	if err != nil {
		return cmd.errReply(out, err)
	}
	return setReply(out, c.proto, args, r.Done, r.Found, r.Old)
}

func cmdSetNX(c *conn, cmd *command, out []byte) []byte {
	r, err := cmd.m.Set(cmd.ctx, string(cmd.args[1]), cmd.args[2], api.SetArgs{IfAbsent: true})
	if err != nil {
		return cmd.errReply(out, err)
	}
	return appendInt(out, b2i(r.Done))
}

func cmdSetEX(c *conn, cmd *command, out []byte) []byte {
	unit := int64(1000)
	if cmd.spec.name == "psetex" {
		unit = 1
	}
	ttl, msg := expiry(cmd.args[2], unit, false, cmd.spec.name, false)
	if msg != "" {
		return appendError(out, msg)
	}
	if err := cmd.m.Put(cmd.ctx, string(cmd.args[1]), cmd.args[3], grid.WithTTL(ttl)); err != nil {
		return cmd.errReply(out, err)
	}
	return appendSimple(out, "OK")
}

func cmdGetSet(c *conn, cmd *command, out []byte) []byte {
	r, err := cmd.m.Set(cmd.ctx, string(cmd.args[1]), cmd.args[2], api.SetArgs{ReturnOld: true})
	if err != nil {
		return cmd.errReply(out, err)
	}
	if !r.Found {
		return appendNull(out, c.proto)
	}
	return appendBulk(out, r.Old)
}

func cmdGetDel(c *conn, cmd *command, out []byte) []byte {
	v, err := cmd.m.GetAndDelete(cmd.ctx, string(cmd.args[1]))
	if errors.Is(err, grid.ErrNotFound) {
		return appendNull(out, c.proto)
	}
	if err != nil {
		return cmd.errReply(out, err)
	}
	return appendBulk(out, v)
}

func keyStrings(args [][]byte) []string {
	keys := make([]string, len(args))
	for i, a := range args {
		keys[i] = string(a)
	}
	return keys
}

func cmdDel(c *conn, cmd *command, out []byte) []byte {
	if len(cmd.args) == 2 {
		ok, err := cmd.m.Delete(cmd.ctx, string(cmd.args[1]))
		if err != nil {
			return cmd.errReply(out, err)
		}
		return appendInt(out, b2i(ok))
	}
	n, err := cmd.m.DeleteAll(cmd.ctx, keyStrings(cmd.args[1:]))
	if err != nil {
		return cmd.errReply(out, err)
	}
	return appendInt(out, int64(n))
}

func cmdExists(c *conn, cmd *command, out []byte) []byte {
	if len(cmd.args) == 2 {
		_, err := cmd.m.TTL(cmd.ctx, string(cmd.args[1]))
		if errors.Is(err, grid.ErrNotFound) {
			return appendInt(out, 0)
		}
		if err != nil {
			return cmd.errReply(out, err)
		}
		return appendInt(out, 1)
	}
	keys := keyStrings(cmd.args[1:])
	got, err := cmd.m.GetAll(cmd.ctx, keys)
	if err != nil {
		return cmd.errReply(out, err)
	}
	n := 0
	for _, k := range keys {
		if _, ok := got[k]; ok {
			n++ // a key named twice counts twice, as in Redis
		}
	}
	return appendInt(out, int64(n))
}

func cmdMGet(c *conn, cmd *command, out []byte) []byte {
	keys := keyStrings(cmd.args[1:])
	got, err := cmd.m.GetAll(cmd.ctx, keys)
	if err != nil {
		return cmd.errReply(out, err)
	}
	out = appendArray(out, len(keys))
	for _, k := range keys {
		if v, ok := got[k]; ok {
			out = appendBulk(out, v)
		} else {
			out = appendNull(out, c.proto)
		}
	}
	return out
}

func cmdMSet(c *conn, cmd *command, out []byte) []byte {
	if len(cmd.args)%2 != 1 {
		return appendError(out, wrongArity("mset"))
	}
	entries := make(map[string][]byte, len(cmd.args)/2)
	for i := 1; i < len(cmd.args); i += 2 {
		entries[string(cmd.args[i])] = cmd.args[i+1] // the last value of a repeated key wins
	}
	if err := cmd.m.PutAll(cmd.ctx, entries); err != nil {
		return cmd.errReply(out, err)
	}
	return appendSimple(out, "OK")
}

// incrDelta is the delta of INCR, INCRBY, DECR or DECRBY (name), or
// Redis's error.
func incrDelta(name string, a [][]byte) (int64, string) {
	switch name {
	case "decr":
		return -1, ""
	case "incrby", "decrby":
		v, ok := api.ParseInt(a[2])
		if !ok {
			return 0, errNotInteger
		}
		if name == "incrby" {
			return v, ""
		}
		if v == math.MinInt64 {
			return 0, "ERR decrement would overflow"
		}
		return -v, ""
	}
	return 1, ""
}

func cmdIncr(c *conn, cmd *command, out []byte) []byte {
	delta, msg := incrDelta(cmd.spec.name, cmd.args)
	if msg != "" {
		return appendError(out, msg)
	}
	v, err := cmd.m.Increment(cmd.ctx, string(cmd.args[1]), delta)
	if err != nil {
		return cmd.errReply(out, err)
	}
	return appendInt(out, v)
}

func cmdAppend(c *conn, cmd *command, out []byte) []byte {
	n, err := cmd.m.Append(cmd.ctx, string(cmd.args[1]), cmd.args[2])
	if err != nil {
		return cmd.errReply(out, err)
	}
	return appendInt(out, int64(n))
}

func cmdStrlen(c *conn, cmd *command, out []byte) []byte {
	v, err := cmd.m.Get(cmd.ctx, string(cmd.args[1]))
	if errors.Is(err, grid.ErrNotFound) {
		return appendInt(out, 0)
	}
	if err != nil {
		return cmd.errReply(out, err)
	}
	return appendInt(out, int64(len(v)))
}

func cmdExpire(c *conn, cmd *command, out []byte) []byte {
	name := cmd.spec.name
	unit := int64(1000)
	if name[0] == 'p' {
		unit = 1
	}
	abs := strings.HasSuffix(name, "at")
	var nx, xx, gt, lt bool
	for _, opt := range cmd.args[3:] {
		switch {
		case isOpt(opt, "NX"):
			nx = true
		case isOpt(opt, "XX"):
			xx = true
		case isOpt(opt, "GT"):
			gt = true
		case isOpt(opt, "LT"):
			lt = true
		default:
			return appendError(out, "ERR Unsupported option "+string(opt))
		}
	}
	if nx && (xx || gt || lt) {
		return appendError(out, "ERR NX and XX, GT or LT options at the same time are not compatible")
	}
	if gt && lt {
		return appendError(out, "ERR GT and LT options at the same time are not compatible")
	}
	ttl, msg := expiry(cmd.args[2], unit, abs, name, true)
	if msg != "" {
		return appendError(out, msg)
	}
	cond := api.ExpireAlways
	switch {
	case nx:
		cond = api.ExpireIfNone
	case gt:
		cond = api.ExpireIfGreater // GT already requires an expiry: XX adds nothing
	case lt && xx:
		cond = api.ExpireIfSetAndLess
	case lt:
		cond = api.ExpireIfLess
	case xx:
		cond = api.ExpireIfSet
	}
	ok, err := cmd.m.Expire(cmd.ctx, string(cmd.args[1]), ttl, cond)
	if err != nil {
		return cmd.errReply(out, err)
	}
	return appendInt(out, b2i(ok))
}

func cmdTTL(c *conn, cmd *command, out []byte) []byte {
	ttl, err := cmd.m.TTL(cmd.ctx, string(cmd.args[1]))
	if errors.Is(err, grid.ErrNotFound) {
		return appendInt(out, -2)
	}
	if err != nil {
		return cmd.errReply(out, err)
	}
	if ttl == 0 {
		return appendInt(out, -1)
	}
	ms := (int64(ttl) + int64(time.Millisecond)/2) / int64(time.Millisecond)
	at := (time.Now().UnixNano() + int64(ttl)) / int64(time.Millisecond)
	switch cmd.spec.name {
	case "ttl":
		return appendInt(out, (ms+500)/1000)
	case "pttl":
		return appendInt(out, ms)
	case "expiretime":
		return appendInt(out, at/1000)
	}
	return appendInt(out, at)
}

func cmdPersist(c *conn, cmd *command, out []byte) []byte {
	ok, err := cmd.m.Persist(cmd.ctx, string(cmd.args[1]))
	if err != nil {
		return cmd.errReply(out, err)
	}
	return appendInt(out, b2i(ok))
}

func cmdType(c *conn, cmd *command, out []byte) []byte {
	_, err := cmd.m.TTL(cmd.ctx, string(cmd.args[1]))
	if errors.Is(err, grid.ErrNotFound) {
		return appendSimple(out, "none")
	}
	if err != nil {
		return cmd.errReply(out, err)
	}
	return appendSimple(out, "string")
}

func cmdDBSize(c *conn, cmd *command, out []byte) []byte {
	n, err := c.m.Size(cmd.ctx)
	if err != nil {
		return cmd.errReply(out, err)
	}
	return appendInt(out, int64(n))
}

func cmdScan(c *conn, cmd *command, out []byte) []byte {
	cursor, err := strconv.ParseUint(string(cmd.args[1]), 10, 64)
	if err != nil {
		return appendError(out, "ERR invalid cursor")
	}
	count, match, typ := 10, "", ""
	a := cmd.args
	for j := 2; j < len(a); j += 2 {
		if j+1 >= len(a) {
			return appendError(out, errSyntax)
		}
		switch {
		case isOpt(a[j], "COUNT"):
			v, ok := api.ParseInt(a[j+1])
			if !ok {
				return appendError(out, errNotInteger)
			}
			if v < 1 {
				return appendError(out, errSyntax)
			}
			count = int(min(v, 1<<20))
		case isOpt(a[j], "MATCH"):
			match = string(a[j+1])
			if match == "*" {
				match = ""
			}
		case isOpt(a[j], "TYPE"):
			typ = strings.ToLower(string(a[j+1]))
		default:
			return appendError(out, errSyntax)
		}
	}
	part, _ := api.SplitScanCursor(cursor)
	if part >= c.s.node.Partitions() {
		return appendError(out, "ERR invalid cursor")
	}
	keys, next, err := c.m.ScanKeys(cmd.ctx, cursor, count, match)
	if err != nil {
		return cmd.errReply(out, err)
	}
	if typ != "" && typ != "string" {
		keys = nil // every grid value is a string
	}
	out = appendArray(out, 2)
	out = appendBulkString(out, strconv.FormatUint(next, 10))
	out = appendArray(out, len(keys))
	for _, k := range keys {
		out = appendBulkString(out, k)
	}
	return out
}

// maxKeysReply bounds KEYS: a bigger answer is an error, not an outage.
const maxKeysReply = 10_000_000

func cmdKeys(c *conn, cmd *command, out []byte) []byte {
	match := string(cmd.args[1])
	if match == "*" {
		match = ""
	}
	var all []string
	var cursor uint64
	for {
		keys, next, err := c.m.ScanKeys(cmd.ctx, cursor, 1000, match)
		if err != nil {
			return cmd.errReply(out, err)
		}
		all = append(all, keys...)
		if len(all) > maxKeysReply {
			return appendError(out, "ERR KEYS would return more than 10000000 keys; use SCAN")
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	out = appendArray(out, len(all))
	for _, k := range all {
		out = appendBulkString(out, k)
	}
	return out
}

func cmdFlushDB(c *conn, cmd *command, out []byte) []byte {
	if len(cmd.args) > 2 || (len(cmd.args) == 2 && !isOpt(cmd.args[1], "ASYNC") && !isOpt(cmd.args[1], "SYNC")) {
		return appendError(out, errSyntax)
	}
	if err := c.m.Clear(cmd.ctx); err != nil {
		return cmd.errReply(out, err)
	}
	return appendSimple(out, "OK")
}

func cmdTime(c *conn, cmd *command, out []byte) []byte {
	now := time.Now()
	out = appendArray(out, 2)
	out = appendBulkString(out, strconv.FormatInt(now.Unix(), 10))
	return appendBulkString(out, strconv.FormatInt(int64(now.Nanosecond()/1000), 10))
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// validName reports whether a client name or library attribute has no
// spaces, newlines or other special characters: every byte in '!'..'~'
// (Redis's validateClientAttr), so that CLIENT LIST stays one line per
// client and one field per space. Redis stops checking at a NUL byte; here
// a NUL is refused too.
func validName(b []byte) bool {
	return bytes.IndexFunc(b, func(r rune) bool { return r < '!' || r > '~' }) < 0
}
