package resp_test

import (
	"strings"
	"testing"
)

// multiScript is run against Redis and the grid on one connection each:
// MULTI/EXEC/DISCARD/WATCH replies and errors must be byte-identical,
// including each command's reply inside EXEC. A leading "~" compares only
// the reply type.
var multiScript = [][]string{
	{"FLUSHDB"},
	{"EXEC"}, {"DISCARD"}, {"EXEC", "x"}, {"MULTI", "x"},
	{"MULTI"}, {"EXEC"},
	{"MULTI"}, {"DISCARD"}, {"EXEC"},
	{"MULTI"}, {"MULTI"}, {"WATCH", "a"},
	{"SET", "a", "1"}, {"GET", "a"}, {"INCR", "a"}, {"INCRBY", "a", "10"}, {"DECR", "a"}, {"DECRBY", "a", "2"},
	{"INCRBY", "a", "abc"}, {"DECRBY", "a", "-9223372036854775808"},
	{"SET", "b", "x"}, {"INCR", "b"}, {"APPEND", "b", "yz"}, {"STRLEN", "b"}, {"STRLEN", "nope"},
	{"SET", "c", "1", "FOO"}, {"SET", "c", "1", "NX", "XX"}, {"SET", "c", "1", "EX", "0"},
	{"MSET", "d", "1", "e"}, {"MSET", "d", "1", "e", "2", "d", "3"}, {"MGET", "a", "b", "nope", "d", "e"},
	{"EXISTS", "a", "a", "nope"}, {"DEL", "a", "a", "nope"}, {"UNLINK", "d", "e"}, {"EXISTS", "a", "d"},
	{"SETNX", "f", "1"}, {"SETNX", "f", "2"}, {"GETSET", "f", "3"}, {"GETSET", "g", "4"}, {"GETDEL", "f"}, {"GETDEL", "f"},
	{"SET", "h", "1", "NX"}, {"SET", "h", "2", "NX"}, {"SET", "h", "3", "XX", "GET"}, {"SET", "i", "3", "XX"}, {"SET", "h", "4", "NX", "GET"},
	{"TYPE", "h"}, {"TYPE", "nope"},
	{"SET", "n", "9223372036854775807"}, {"INCR", "n"}, {"SET", "n", " 1"}, {"INCR", "n"}, {"SET", "n", "01"}, {"INCRBY", "n", "1"},
	{"INCRBYFLOAT", "fl", "0.1"}, {"INCRBYFLOAT", "fl", "0.2"}, {"INCRBYFLOAT", "fl", "1e3"}, {"INCRBYFLOAT", "fl", "abc"},
	{"INCRBYFLOAT", "fl", "-1000.3"}, {"INCRBYFLOAT", "fl", "inf"}, {"INCRBYFLOAT", "fl", " 1"}, {"INCRBYFLOAT", "fl", "0x10"},
	{"INCRBYFLOAT", "fl", "-5.5e-3"}, {"INCRBYFLOAT", "fl", "1e5000"}, {"INCRBYFLOAT", "fl", "nan"}, {"INCRBYFLOAT", "b", "1"},
	{"MSETNX", "x1", "1", "x2", "2"}, {"MSETNX", "x2", "3", "x3", "4"}, {"MSETNX", "x4", "1", "x5"}, {"MGET", "x1", "x2", "x3"},
	{"PING"}, {"PING", "hi"}, {"ECHO", "e"},
	{"SET", "t", "v", "EX", "100"}, {"SETEX", "t2", "200", "v"}, {"PSETEX", "t3", "300000", "v"}, {"SETEX", "t4", "0", "v"},
	{"SET", "t5", "v", "EX", "100"}, {"SET", "t5", "w", "KEEPTTL"}, {"SET", "t6", "v", "EX", "100"}, {"INCR", "t6"},
	{"SET", "t7", "1", "EX", "100"}, {"INCR", "t7"}, {"APPEND", "t7", "0"}, {"INCRBYFLOAT", "t7", "1"},
	{"SET", "t8", "v", "EX", "100"}, {"SET", "t8", "w"},
	{"SET", "t9", "v"}, {"EXPIRE", "t9", "100"}, {"EXPIRE", "nope", "100"}, {"PEXPIRE", "t9", "200000"},
	{"SET", "t10", "v"}, {"EXPIRE", "t10", "-1"}, {"EXISTS", "t10"}, {"SET", "t11", "v"}, {"EXPIREAT", "t11", "1"},
	{"SET", "t12", "v"}, {"PEXPIREAT", "t12", "4102444800000"}, {"EXPIRE", "t12", "abc"},
	{"UNWATCH"},
	{"SELECT", "1"}, {"SET", "a", "db1"}, {"SELECT", "-1"},
	{"EXEC"},
	{"GET", "a"}, {"SELECT", "0"}, {"GET", "a"},
	{"TTL", "t"}, {"TTL", "t2"}, {"TTL", "t3"}, {"EXISTS", "t4"}, {"TTL", "t5"}, {"GET", "t5"}, {"TTL", "t6"}, {"TTL", "t7"}, {"GET", "t7"}, {"TTL", "t8"},
	{"TTL", "t9"}, {"EXISTS", "t10"}, {"EXISTS", "t11"}, {"~PEXPIRETIME", "t12"},
	// Errors while queueing abort the transaction.
	{"MULTI"}, {"SET", "q", "1"}, {"FOO", "bar"}, {"GET"}, {"SET", "q2", "1"}, {"EXEC"}, {"EXISTS", "q", "q2"},
	{"MULTI"}, {"SET", "q", "1"}, {"EXEC", "x"}, {"EXEC"}, {"EXISTS", "q"},
	// WATCH.
	{"SET", "w", "1"}, {"WATCH", "w"}, {"SET", "w", "2"}, {"MULTI"}, {"GET", "w"}, {"EXEC"},
	{"WATCH", "w"}, {"MULTI"}, {"GET", "w"}, {"INCR", "w"}, {"EXEC"},
	{"WATCH", "w", "w", "nope"}, {"MULTI"}, {"INCR", "w"}, {"EXEC"},
	{"WATCH", "w"}, {"INCR", "w"}, {"MULTI"}, {"EXEC"},
	{"WATCH", "w"}, {"UNWATCH"}, {"INCR", "w"}, {"MULTI"}, {"GET", "w"}, {"EXEC"},
	{"WATCH", "w"}, {"MULTI"}, {"DISCARD"}, {"INCR", "w"}, {"MULTI"}, {"GET", "w"}, {"EXEC"},
	{"WATCH", "w"}, {"SET", "w", "9"}, {"EXEC"}, {"MULTI"}, {"GET", "w"}, {"EXEC"},
	{"WATCH", "w"}, {"SET", "w", "10"}, {"MULTI"}, {"FOO"}, {"EXEC"},
	{"WATCH"}, {"UNWATCH", "w"},
	{"MULTI"}, {"SET", "r", "1"}, {"RESET"}, {"EXEC"}, {"EXISTS", "r"},
	{"MSETNX", "y1", "1", "y2", "2"}, {"MSETNX", "y2", "1", "y3", "2"}, {"MGET", "y1", "y2", "y3"},
	{"INCRBYFLOAT", "z", "10.5"}, {"INCRBYFLOAT", "z", "0.1"}, {"INCRBYFLOAT", "z", "-10.6"}, {"INCRBYFLOAT", "z", "1.0e-5"},
	{"INCRBYFLOAT", "z", "3.0e3"}, {"INCRBYFLOAT", "z", "-0.00001"}, {"INCRBYFLOAT", "z"},
}

// TestCompatMulti runs multiScript against a real redis-server and a grid
// node and compares the replies byte for byte, over RESP2 and RESP3.
func TestCompatMulti(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	redisAddr := startRedis(t)
	c := newCluster(t, 1)
	for _, proto := range []string{"2", "3"} {
		t.Run("resp"+proto, func(t *testing.T) {
			rd, gd := dialRaw(t, redisAddr), dialRaw(t, c.addrs[0])
			rd.do("HELLO", proto)
			gd.do("HELLO", proto)
			for _, cmd := range multiScript {
				loose := strings.HasPrefix(cmd[0], "~")
				args := append([]string{strings.TrimPrefix(cmd[0], "~")}, cmd[1:]...)
				want, got := rd.do(args...), gd.do(args...)
				if loose {
					want, got = want[:1], got[:1]
				}
				if want != got {
					t.Errorf("%q:\nredis: %q\ngrid:  %q", args, want, got)
				}
			}
		})
	}
}
