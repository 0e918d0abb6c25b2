package resp

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/txn"
)

// The commands as they run inside a transaction (EXEC): each reads what
// it needs with tx.Get, computes Redis's reply and the new values here,
// and buffers its writes in the transaction. A Redis error (syntax, not
// an integer, ...) is that command's reply and the others still apply; a
// grid error (returned) ends the attempt. An attempt must depend only on
// what it read, so that txn.Run can run it again after a conflict.

// txFunc runs one queued command inside a transaction and appends its
// reply to out.
type txFunc func(x *txExec, a [][]byte, out []byte) ([]byte, error)

// txExec is one attempt of a transaction.
type txExec struct {
	c        *conn
	tx       *txn.Tx
	ctx      context.Context
	sel      selection // SELECT inside MULTI changes it for the commands after it
	maxEntry int       // the grid's MaxValueSize
}

// get reads key of the selected map.
func (x *txExec) get(key []byte) ([]byte, bool, error) {
	v, err := x.tx.Get(x.ctx, x.sel.m, string(key))
	if errors.Is(err, txn.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return v, true, nil
}

// fits reports whether an entry fits the grid's MaxValueSize (map name,
// key and value bytes).
func (x *txExec) fits(key, value []byte) bool {
	return len(x.sel.m)+len(key)+len(value) <= x.maxEntry
}

func (x *txExec) put(key, value []byte) error { return x.tx.Put(x.sel.m, string(key), value) }

// putKeep writes keeping the key's expiry (INCR, APPEND, SET KEEPTTL).
func (x *txExec) putKeep(key, value []byte) error {
	return x.tx.PutKeepTTL(x.ctx, x.sel.m, string(key), value)
}

func (x *txExec) del(key []byte) error { return x.tx.Delete(x.sel.m, string(key)) }

func (x *txExec) proto() int { return x.c.proto }

// txPlain runs a command that touches no key (PING, ECHO, TIME) with its
// ordinary implementation.
func txPlain(run func(c *conn, cmd *command, out []byte) []byte) txFunc {
	return func(x *txExec, a [][]byte, out []byte) ([]byte, error) {
		return run(x.c, &command{args: a}, out), nil
	}
}

func txSelect(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	arg := a[1]
	if n, ok := api.ParseInt(arg); ok {
		switch {
		case n < 0 || n > 1<<31-1:
			return appendError(out, "ERR DB index is out of range"), nil
		case n == 0:
			x.sel = selection{x.c.s.cfg.DefaultMap, "0"}
		default:
			x.sel = selection{"db" + string(arg), string(arg)}
		}
		return appendSimple(out, "OK"), nil
	}
	if len(arg) == 0 || len(arg) > 256 {
		return appendError(out, "ERR invalid map name"), nil
	}
	x.sel = selection{string(arg), string(arg)}
	return appendSimple(out, "OK"), nil
}

func txUnwatch(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	return appendSimple(out, "OK"), nil // EXEC already forgot the watches
}

func txGet(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	v, ok, err := x.get(a[1])
	switch {
	case err != nil:
		return out, err
	case !ok:
		return appendNull(out, x.proto()), nil
	}
	return appendBulk(out, v), nil
}

func txSet(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	args, msg := parseSet(a)
	if msg != "" {
		return appendError(out, msg), nil
	}
	var old []byte
	var found bool
	if args.IfAbsent || args.IfPresent || args.ReturnOld {
		var err error
		if old, found, err = x.get(a[1]); err != nil {
			return out, err
		}
	}
	done := !(args.IfAbsent && found) && !(args.IfPresent && !found)
	if done {
		if !x.fits(a[1], a[2]) {
			return appendError(out, errTooLarge), nil
		}
		var err error
		switch {
		case args.TTL > 0:
			err = x.tx.PutTTL(x.sel.m, string(a[1]), a[2], args.TTL)
		case args.KeepTTL:
			err = x.putKeep(a[1], a[2])
		default:
			err = x.put(a[1], a[2])
		}
		if err != nil {
			return out, err
		}
	}
	return setReply(out, x.proto(), args, done, found, old), nil
}

func txSetNX(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	_, found, err := x.get(a[1])
	if err != nil {
		return out, err
	}
	if found {
		return appendInt(out, 0), nil
	}
	if !x.fits(a[1], a[2]) {
		return appendError(out, errTooLarge), nil
	}
	if err := x.put(a[1], a[2]); err != nil {
		return out, err
	}
	return appendInt(out, 1), nil
}

// txSetEX is SETEX and PSETEX.
func txSetEX(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	name := strings.ToLower(string(a[0]))
	unit := int64(1000)
	if name == "psetex" {
		unit = 1
	}
	ttl, msg := expiry(a[2], unit, false, name, false)
	if msg != "" {
		return appendError(out, msg), nil
	}
	if !x.fits(a[1], a[3]) {
		return appendError(out, errTooLarge), nil
	}
	if err := x.tx.PutTTL(x.sel.m, string(a[1]), a[3], ttl); err != nil {
		return out, err
	}
	return appendSimple(out, "OK"), nil
}

func txGetSet(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	old, found, err := x.get(a[1])
	if err != nil {
		return out, err
	}
	if !x.fits(a[1], a[2]) {
		return appendError(out, errTooLarge), nil
	}
	if err := x.put(a[1], a[2]); err != nil {
		return out, err
	}
	if !found {
		return appendNull(out, x.proto()), nil
	}
	return appendBulk(out, old), nil
}

func txGetDel(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	v, found, err := x.get(a[1])
	if err != nil || !found {
		return appendNull(out, x.proto()), err
	}
	if err := x.del(a[1]); err != nil {
		return out, err
	}
	return appendBulk(out, v), nil
}

// txDel is DEL and UNLINK: a key named twice is deleted once.
func txDel(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	n := 0
	for _, k := range a[1:] {
		_, found, err := x.get(k)
		if err != nil {
			return out, err
		}
		if found {
			if err := x.del(k); err != nil {
				return out, err
			}
			n++
		}
	}
	return appendInt(out, int64(n)), nil
}

// txExists counts a key named twice twice, as Redis does.
func txExists(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	n := 0
	for _, k := range a[1:] {
		_, found, err := x.get(k)
		if err != nil {
			return out, err
		}
		if found {
			n++
		}
	}
	return appendInt(out, int64(n)), nil
}

func txMGet(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	out = appendArray(out, len(a)-1)
	for _, k := range a[1:] {
		v, found, err := x.get(k)
		switch {
		case err != nil:
			return out, err
		case found:
			out = appendBulk(out, v)
		default:
			out = appendNull(out, x.proto())
		}
	}
	return out, nil
}

// checkPairs is MSET's and MSETNX's check: key value pairs that each fit.
func (x *txExec) checkPairs(a [][]byte) string {
	if len(a)%2 != 1 {
		return wrongArity(strings.ToLower(string(a[0])))
	}
	for i := 1; i < len(a); i += 2 {
		if !x.fits(a[i], a[i+1]) {
			return errTooLarge
		}
	}
	return ""
}

func (x *txExec) putPairs(a [][]byte) error {
	for i := 1; i < len(a); i += 2 {
		if err := x.put(a[i], a[i+1]); err != nil {
			return err
		}
	}
	return nil
}

func txMSet(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	if msg := x.checkPairs(a); msg != "" {
		return appendError(out, msg), nil
	}
	if err := x.putPairs(a); err != nil {
		return out, err
	}
	return appendSimple(out, "OK"), nil
}

// txMSetNX sets every pair only if no key is present.
func txMSetNX(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	if msg := x.checkPairs(a); msg != "" {
		return appendError(out, msg), nil
	}
	for i := 1; i < len(a); i += 2 {
		_, found, err := x.get(a[i])
		if err != nil {
			return out, err
		}
		if found {
			return appendInt(out, 0), nil
		}
	}
	if err := x.putPairs(a); err != nil {
		return out, err
	}
	return appendInt(out, 1), nil
}

// txIncr is INCR, INCRBY, DECR and DECRBY; the expiry is kept.
func txIncr(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	delta, msg := incrDelta(strings.ToLower(string(a[0])), a)
	if msg != "" {
		return appendError(out, msg), nil
	}
	cur, found, err := x.get(a[1])
	if err != nil {
		return out, err
	}
	var n int64
	if found {
		var ok bool
		if n, ok = api.ParseInt(cur); !ok {
			return appendError(out, errNotInteger), nil
		}
	}
	next := n + delta
	if (delta > 0 && next < n) || (delta < 0 && next > n) {
		return appendError(out, errOverflow), nil
	}
	if err := x.putKeep(a[1], strconv.AppendInt(nil, next, 10)); err != nil {
		return out, err
	}
	return appendInt(out, next), nil
}

func txAppend(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	cur, _, err := x.get(a[1])
	if err != nil {
		return out, err
	}
	v := append(append(make([]byte, 0, len(cur)+len(a[2])), cur...), a[2]...)
	if !x.fits(a[1], v) {
		return appendError(out, errTooLarge), nil
	}
	if err := x.putKeep(a[1], v); err != nil {
		return out, err
	}
	return appendInt(out, int64(len(v))), nil
}

func txStrlen(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	v, _, err := x.get(a[1])
	return appendInt(out, int64(len(v))), err
}

func txType(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	_, found, err := x.get(a[1])
	if !found {
		return appendSimple(out, "none"), err
	}
	return appendSimple(out, "string"), err
}

// txExpire is EXPIRE, PEXPIRE, EXPIREAT and PEXPIREAT without options
// (txCheckExpire): the value is written again with the new expiry; a time
// in the past deletes the key.
func txExpire(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	name := strings.ToLower(string(a[0]))
	unit := int64(1000)
	if name[0] == 'p' {
		unit = 1
	}
	ttl, msg := expiry(a[2], unit, strings.HasSuffix(name, "at"), name, true)
	if msg != "" {
		return appendError(out, msg), nil
	}
	v, found, err := x.get(a[1])
	if err != nil || !found {
		return appendInt(out, 0), err
	}
	if ttl <= 0 {
		err = x.del(a[1])
	} else {
		err = x.tx.PutTTL(x.sel.m, string(a[1]), v, ttl)
	}
	if err != nil {
		return out, err
	}
	return appendInt(out, 1), nil
}

// txCheckExpire refuses EXPIRE's conditions in MULTI: they compare with
// the key's expiry, which a transaction does not read.
func txCheckExpire(a [][]byte) string {
	if len(a) > 3 {
		return errNotInMulti + ": " + strings.ToUpper(string(a[0])) + " with NX, XX, GT or LT (a grid transaction does not read expiries)"
	}
	return ""
}
