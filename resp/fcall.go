package resp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// This file is FCALL: a function registered on the members (package
// compute, in Go; no Lua) called from a Redis client.
//
//	FCALL name 1 key [json-args]
//
// The function runs at the primary of key's partition (ExecuteOnKey) with
// the connection's selected map as its map (db0 unless SELECT). Its
// arguments are one JSON value, converted to msgpack (integers stay
// integers, strings are msgpack strings, which decode into []byte fields
// too); none: the function's zero arguments. Its msgpack result is
// converted to RESP: nil -> null, bool -> boolean (RESP3) or 1/0,
// integers -> integer, floats -> double (RESP3) or bulk string, strings
// and bytes -> bulk string, arrays -> array, maps -> map (RESP3) or flat
// array, keys sorted. docs/redis.md lists the differences from Redis
// functions.

// maxResultDepth bounds the nesting of a result converted to RESP.
const maxResultDepth = 32

func cmdFCall(c *conn, cmd *command, out []byte) []byte {
	a := cmd.args
	numKeys, ok := api.ParseInt(a[2])
	switch {
	case !ok:
		return appendError(out, "ERR Bad number of keys provided")
	case numKeys < 0:
		return appendError(out, "ERR Number of keys can't be negative")
	case numKeys > int64(len(a)-3):
		return appendError(out, "ERR Number of keys can't be greater than number of args")
	case numKeys != 1:
		return appendError(out, "ERR FCALL takes exactly one key: the function runs at the primary of its partition")
	}
	if strings.HasPrefix(string(a[1]), grid.ReservedPrefix) {
		return appendError(out, "ERR function names starting with \\x00 are the grid's own")
	}
	if len(a) > 5 {
		return appendError(out, "ERR FCALL takes one argument after the key: the function's arguments as one JSON value")
	}
	var args []byte
	if len(a) == 5 {
		var err error
		if args, err = jsonToMsgpack(a[4]); err != nil {
			return appendError(out, "ERR the function's arguments are not one JSON value: "+err.Error())
		}
	}
	res, err := c.s.node.Execute(cmd.ctx, grid.StepCall{Map: cmd.m.Name(), Key: string(a[3]), Name: string(a[1]), Args: args})
	if err != nil {
		return cmd.errReply(out, err)
	}
	var v any
	if len(res) > 0 {
		if err := wire.Decode(res, &v); err != nil {
			return appendError(out, "ERR the function's result is not msgpack: "+err.Error())
		}
	}
	reply, err := appendValue(out, v, c.proto, 0)
	if err != nil {
		return appendError(out, "ERR "+err.Error())
	}
	return reply
}

// jsonToMsgpack converts one JSON value to msgpack, keeping integers
// integers.
func jsonToMsgpack(raw []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("more than one value")
	}
	v, err := fromJSON(v)
	if err != nil {
		return nil, err
	}
	return msgpack.Marshal(v)
}

// fromJSON replaces json.Numbers by int64 (integral) or float64.
func fromJSON(v any) (any, error) {
	switch x := v.(type) {
	case json.Number:
		if n, err := x.Int64(); err == nil {
			return n, nil
		}
		return x.Float64()
	case []any:
		for i := range x {
			var err error
			if x[i], err = fromJSON(x[i]); err != nil {
				return nil, err
			}
		}
	case map[string]any:
		for k := range x {
			var err error
			if x[k], err = fromJSON(x[k]); err != nil {
				return nil, err
			}
		}
	}
	return v, nil
}

// appendValue appends a decoded msgpack value as RESP.
func appendValue(out []byte, v any, proto, depth int) ([]byte, error) {
	if depth > maxResultDepth {
		return nil, fmt.Errorf("the function's result nests deeper than %d", maxResultDepth)
	}
	switch x := v.(type) {
	case nil:
		return appendNull(out, proto), nil
	case bool:
		return appendBool(out, x, proto), nil
	case string:
		return appendBulkString(out, x), nil
	case []byte:
		return appendBulk(out, x), nil
	case float32:
		return appendDouble(out, float64(x), proto), nil
	case float64:
		return appendDouble(out, x, proto), nil
	case []any:
		out = appendArray(out, len(x))
		for _, e := range x {
			var err error
			if out, err = appendValue(out, e, proto, depth+1); err != nil {
				return nil, err
			}
		}
		return out, nil
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		out = appendMap(out, len(keys), proto)
		for _, k := range keys {
			out = appendBulkString(out, k)
			var err error
			if out, err = appendValue(out, x[k], proto, depth+1); err != nil {
				return nil, err
			}
		}
		return out, nil
	case map[any]any:
		return appendAnyMap(out, x, proto, depth)
	}
	if n, ok := asInt64(v); ok {
		return appendInt(out, n), nil
	}
	if u, ok := v.(uint64); ok {
		return appendBulkString(out, strconv.FormatUint(u, 10)), nil
	}
	return nil, fmt.Errorf("the function's result holds a %T, which has no RESP form", v)
}

// appendAnyMap appends a map with non-string keys, ordered by their text.
func appendAnyMap(out []byte, x map[any]any, proto, depth int) ([]byte, error) {
	type pair struct {
		key string
		k   any
	}
	pairs := make([]pair, 0, len(x))
	for k := range x {
		pairs = append(pairs, pair{fmt.Sprint(k), k})
	}
	slices.SortFunc(pairs, func(a, b pair) int { return strings.Compare(a.key, b.key) })
	out = appendMap(out, len(pairs), proto)
	for _, p := range pairs {
		var err error
		if out, err = appendValue(out, p.k, proto, depth+1); err != nil {
			return nil, err
		}
		if out, err = appendValue(out, x[p.k], proto, depth+1); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func asInt64(v any) (int64, bool) {
	switch n := v.(type) {
	case int8:
		return int64(n), true
	case int16:
		return int64(n), true
	case int32:
		return int64(n), true
	case int64:
		return n, true
	case int:
		return int64(n), true
	case uint8:
		return int64(n), true
	case uint16:
		return int64(n), true
	case uint32:
		return int64(n), true
	case uint64:
		if n <= math.MaxInt64 {
			return int64(n), true
		}
	}
	return 0, false
}

// appendBool writes a RESP3 boolean, or the integer 1 or 0 in RESP2.
func appendBool(b []byte, v bool, proto int) []byte {
	if proto >= 3 {
		if v {
			return append(b, "#t\r\n"...)
		}
		return append(b, "#f\r\n"...)
	}
	if v {
		return appendInt(b, 1)
	}
	return appendInt(b, 0)
}

// appendDouble writes a RESP3 double, or a bulk string in RESP2.
func appendDouble(b []byte, f float64, proto int) []byte {
	var s string
	switch {
	case math.IsInf(f, 1):
		s = "inf"
	case math.IsInf(f, -1):
		s = "-inf"
	case math.IsNaN(f):
		s = "nan"
	default:
		s = strconv.FormatFloat(f, 'g', -1, 64)
	}
	if proto >= 3 {
		b = append(b, ',')
		b = append(b, s...)
		return append(b, '\r', '\n')
	}
	return appendBulkString(b, s)
}
