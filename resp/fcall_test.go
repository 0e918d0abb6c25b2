package resp_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/collocate/grid/compute"
	"github.com/redis/go-redis/v9"
)

// withFunctions installs the built-ins, and a function that panics, on
// every node of c.
func withFunctions(t *testing.T, c *cluster) {
	t.Helper()
	for _, nd := range c.Nodes {
		reg := compute.NewRegistry()
		if err := compute.RegisterBuiltins(reg); err != nil {
			t.Fatal(err)
		}
		if err := compute.Register(reg, "panics", func(ctx context.Context, v *compute.View, a int) (int, error) { panic("boom") }); err != nil {
			t.Fatal(err)
		}
		compute.New(nd, reg)
	}
}

// FCALL runs the built-ins at the key's primary, through any node, with
// JSON arguments and the result converted to RESP types.
func TestFCall(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := newCluster(t, 3)
	withFunctions(t, c)
	for _, proto := range []int{2, 3} {
		t.Run(fmt.Sprintf("resp%d", proto), func(t *testing.T) {
			ctx := ctxT(t, 60*time.Second)
			rc := c.client(t, proto-1, proto)
			p := fmt.Sprintf("f%d:", proto)
			do := func(args ...any) (any, error) { return rc.Do(ctx, args...).Result() }
			for want := int64(5); want <= 10; want += 5 {
				got, err := do("FCALL", "counter.add", 1, p+"visits", `{"delta":5}`)
				if err != nil || got != want {
					t.Fatalf("counter.add: %v (%T), %v; want %d", got, got, err, want)
				}
			}
			if v, err := c.Nodes[2].Map("db0").Get(ctx, p+"visits"); err != nil || string(v) != "10" {
				t.Fatalf("stored counter %q, %v", v, err)
			}
			if got, err := do("FCALL", "counter.add", 1, p+"visits"); err != nil || got != int64(10) {
				t.Fatalf("no arguments (delta 0): %v, %v", got, err)
			}
			got, err := do("FCALL", "cas", 1, p+"visits", `{"expected":"10","value":"11"}`)
			if err != nil {
				t.Fatal(err)
			}
			done := map[int]any{2: int64(1), 3: true}[proto]
			if m := resultMap(t, got); m["done"] != done || m["found"] != done || m["current"] != "10" {
				t.Fatalf("cas answered %#v", got)
			}
			if got, err := do("FCALL", "list.append", 1, p+"list", `{"values":["a","b"]}`); err != nil || got != int64(2) {
				t.Fatalf("list.append: %v, %v", got, err)
			}

			lines := map[string]any{}
			for i := range 20 {
				lines[fmt.Sprintf("{%scust}:line:%d", p, i)] = i + 1
			}
			if err := rc.MSet(ctx, lines).Err(); err != nil {
				t.Fatal(err)
			}
			got, err = do("FCALL", "agg.key", 1, "{"+p+"cust}")
			if err != nil {
				t.Fatal(err)
			}
			if m := resultMap(t, got); m["count"] != int64(20) || m["int_sum"] != int64(210) || fmt.Sprint(m["max"]) != "20" {
				t.Fatalf("agg.key answered %#v", got)
			}

			// SELECT picks the map the function sees.
			conn := rc.Conn()
			defer conn.Close()
			if err := conn.Do(ctx, "SELECT", "counters").Err(); err != nil {
				t.Fatal(err)
			}
			if err := conn.Do(ctx, "FCALL", "counter.add", 1, p+"n", `{"delta":3}`).Err(); err != nil {
				t.Fatal(err)
			}
			if v, err := c.Nodes[0].Map("counters").Get(ctx, p+"n"); err != nil || string(v) != "3" {
				t.Fatalf("FCALL after SELECT counters stored %q, %v", v, err)
			}
		})
	}
}

// resultMap reads a RESP map reply (RESP3 map, RESP2 flat array).
func resultMap(t *testing.T, v any) map[string]any {
	t.Helper()
	out := map[string]any{}
	switch x := v.(type) {
	case map[any]any:
		for k, v := range x {
			out[fmt.Sprint(k)] = v
		}
	case []any:
		for i := 0; i+1 < len(x); i += 2 {
			out[fmt.Sprint(x[i])] = x[i+1]
		}
	default:
		t.Fatalf("not a map: %#v", v)
	}
	return out
}

// FCALL's errors: Redis's texts for its own syntax, the grid's for the
// function's failures; nothing applied.
func TestFCallErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := newCluster(t, 2)
	withFunctions(t, c)
	ctx := ctxT(t, 30*time.Second)
	rc := c.client(t, 0, 2)
	cases := []struct {
		args []any
		want string
	}{
		{[]any{"FCALL", "counter.add", "x", "k"}, "ERR Bad number of keys provided"},
		{[]any{"FCALL", "counter.add", -1, "k"}, "ERR Number of keys can't be negative"},
		{[]any{"FCALL", "counter.add", 2, "k"}, "ERR Number of keys can't be greater than number of args"},
		{[]any{"FCALL", "counter.add", 0}, "ERR FCALL takes exactly one key"},
		{[]any{"FCALL", "counter.add", 1, "k", "{}", "{}"}, "ERR FCALL takes one argument after the key"},
		{[]any{"FCALL", "counter.add", 1, "k", `{"delta":`}, "ERR the function's arguments are not one JSON value"},
		{[]any{"FCALL", "counter.add", 1, "k", `{"delta":"five"}`}, "ERR grid: function arguments do not decode"},
		{[]any{"FCALL", "no.such", 1, "k"}, "ERR grid: no function registered under that name"},
		{[]any{"FCALL", "echo", 1, "k"}, "ERR grid: no function registered under that name"},
		{[]any{"FCALL", "panics", 1, "k", "1"}, "ERR grid: function panicked"},
		{[]any{"FCALL"}, "ERR wrong number of arguments for 'fcall' command"},
	}
	for _, tc := range cases {
		err := rc.Do(ctx, tc.args...).Err()
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
	if err := rc.Get(ctx, "k").Err(); err != redis.Nil {
		t.Fatalf("a failed FCALL applied something: %v", err)
	}
}
