package client

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/compute"
	"github.com/collocate/grid/compute/invoke"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/vmihailenco/msgpack/v5"
)

// installFunctions gives every node of c a registry with the built-ins and
// whatever register adds.
func installFunctions(t *testing.T, c *gridtest.Cluster, register func(*compute.Registry)) {
	t.Helper()
	for _, nd := range c.Nodes {
		reg := compute.NewRegistry()
		if err := compute.RegisterBuiltins(reg); err != nil {
			t.Fatal(err)
		}
		if register != nil {
			register(reg)
		}
		compute.New(nd, reg)
	}
}

func mustReg(t *testing.T, err error) {
	if err != nil {
		t.Fatal(err)
	}
}

// The built-ins called by name from a client: entry processors at a key,
// a collocated aggregation, map-reduce over every partition, broadcast.
func TestClientCallsBuiltins(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c, cl, _ := proxiedCluster(t, 3, Config{})
	installFunctions(t, c, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	for i := int64(1); i <= 3; i++ {
		n, err := invoke.Call[invoke.CounterArgs, int64](ctx, cl, "c", "visits", invoke.FnCounterAdd, invoke.CounterArgs{Delta: 2})
		if err != nil || n != 2*i {
			t.Fatalf("counter.add %d: %d, %v", i, n, err)
		}
	}
	if v, err := c.Nodes[0].Map("c").Get(ctx, "visits"); err != nil || string(v) != "6" {
		t.Fatalf("counter stored %q, %v", v, err)
	}
	cas, err := invoke.Call[invoke.CASArgs, invoke.CASResult](ctx, cl, "c", "visits", invoke.FnCAS, invoke.CASArgs{Expected: []byte("5"), Value: []byte("x")})
	if err != nil || cas.Done || string(cas.Current) != "6" {
		t.Fatalf("cas with a wrong expectation: %+v, %v", cas, err)
	}
	cas, err = invoke.Call[invoke.CASArgs, invoke.CASResult](ctx, cl, "c", "visits", invoke.FnCAS, invoke.CASArgs{Expected: []byte("6"), Value: []byte("7")})
	if err != nil || !cas.Done {
		t.Fatalf("cas: %+v, %v", cas, err)
	}
	n, err := invoke.Call[invoke.AppendArgs, int](ctx, cl, "l", "list", invoke.FnListAppend, invoke.AppendArgs{Values: [][]byte{[]byte("a"), []byte("b")}})
	if err != nil || n != 2 {
		t.Fatalf("list.append: %d, %v", n, err)
	}

	nums := map[string][]byte{}
	var want int64
	for i := range 2000 {
		want += int64(i)
		nums[fmt.Sprintf("n%d", i)] = strconv.AppendInt(nil, int64(i), 10)
	}
	lines := map[string][]byte{}
	for i := range 50 {
		lines[fmt.Sprintf("{cust7}:line:%d", i)] = []byte("3")
		lines[fmt.Sprintf("{cust8}:line:%d", i)] = []byte("100")
	}
	mustReg(t, cl.Map("nums").PutAll(ctx, nums))
	mustReg(t, cl.Map("lines").PutAll(ctx, lines))
	agg, err := invoke.Aggregate(ctx, cl, "nums", invoke.AggArgs{})
	if err != nil || agg.IntSum != want || agg.Count != 2000 || agg.Min != 0 || agg.Max != 1999 {
		t.Fatalf("Aggregate: %+v, %v", agg, err)
	}
	seen := map[int]int{}
	err = cl.ExecuteOnPartitions(ctx, invoke.FnAggMap, nil, invoke.PartsOptions{Map: "nums"}, func(part int, _ []byte) { seen[part]++ })
	if err != nil || len(seen) != c.Nodes[0].Partitions() {
		t.Fatalf("ExecuteOnPartitions answered %d partitions of %d, %v", len(seen), c.Nodes[0].Partitions(), err)
	}
	for p, k := range seen {
		if k != 1 {
			t.Fatalf("partition %d answered %d times", p, k)
		}
	}
	prefix, _ := msgpack.Marshal("n1")
	filtered, err := invoke.MapReduce(ctx, cl, invoke.FnAggMap, invoke.AggArgs{},
		invoke.PartsOptions{Map: "nums", Filter: invoke.FilterKeyPrefix, FilterArgs: prefix}, invoke.Agg{}, invoke.Agg.Merge)
	if err != nil || filtered.Count != 1111 { // n1, n10-n19, n100-n199, n1000-n1999
		t.Fatalf("filtered map-reduce: %+v, %v; want 1111 entries", filtered, err)
	}
	key, err := invoke.AggregateKey(ctx, cl, "lines", "{cust7}", invoke.AggArgs{})
	if err != nil || key.IntSum != 150 || key.Count != 50 {
		t.Fatalf("AggregateKey: %+v, %v", key, err)
	}

	rs, err := invoke.BroadcastTo[[]byte, []byte](ctx, cl, invoke.FnEcho, []byte("hi"))
	if err != nil || len(rs) != 3 {
		t.Fatalf("broadcast: %d answers, %v", len(rs), err)
	}
	for _, r := range rs {
		if r.Err != nil || string(r.Result) != "hi" {
			t.Fatalf("broadcast %s: %q, %v", r.Member, r.Result, r.Err)
		}
	}
}

// Function failures reach the client as the same sentinels as on an
// embedded node, and apply nothing.
func TestClientFunctionErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	release := make(chan struct{})
	defer close(release)
	type args struct{ N int }
	c, cl, _ := proxiedCluster(t, 2, Config{})
	installFunctions(t, c, func(reg *compute.Registry) {
		write := func(v *compute.View) { v.Set(v.Map(), v.Key(), []byte("applied"), 0) }
		mustReg(t, compute.Register(reg, "panics", func(ctx context.Context, v *compute.View, a args) (int, error) {
			write(v)
			panic("boom")
		}))
		mustReg(t, compute.Register(reg, "stuck", func(ctx context.Context, v *compute.View, a args) (int, error) {
			write(v)
			<-release // ignores ctx
			return 0, nil
		}))
		mustReg(t, compute.Register(reg, "fails", func(ctx context.Context, v *compute.View, a args) (int, error) {
			write(v)
			return 0, errors.New("refused by the function")
		}))
		mustReg(t, compute.Register(reg, "elsewhere", func(ctx context.Context, v *compute.View, a args) (int, error) {
			write(v)
			v.Set(v.Map(), "not-collocated-"+v.Key(), []byte("x"), 0)
			return 1, nil
		}))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	badArgs, _ := msgpack.Marshal("a string, not a struct")
	okArgs, _ := msgpack.Marshal(args{N: 1})
	cases := []struct {
		fn   string
		args []byte
		want error
	}{
		{"panics", okArgs, ErrFunctionPanic},
		{"stuck", okArgs, ErrFunctionBudget},
		{"fails", okArgs, ErrFunctionFailed},
		{"elsewhere", okArgs, ErrNotCollocated},
		{"no-such-function", okArgs, ErrNoFunction},
		{"panics", badArgs, ErrBadArgs},
	}
	for i, tc := range cases {
		key := keyOwnedBy(t, cl, c.Nodes[i%2].Name(), "err"+tc.fn)
		_, err := cl.ExecuteOnKey(ctx, "m", key, tc.fn, tc.args, invoke.WithBudget(300*time.Millisecond))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.fn, err, tc.want)
		}
		if v, err := c.Nodes[0].Map("m").Get(ctx, key); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s applied its write: %q, %v", tc.fn, v, err)
		}
	}
	err := cl.ExecuteOnPartitions(ctx, "no-such-function", nil, invoke.PartsOptions{}, func(int, []byte) { t.Error("an answer from no function") })
	if !errors.Is(err, ErrNoFunction) {
		t.Errorf("ExecuteOnPartitions of no function: %v", err)
	}
	rs, err := cl.Broadcast(ctx, "no-such-function", nil)
	if err != nil || len(rs) != 2 || !errors.Is(rs[0].Err, ErrNoFunction) || !errors.Is(rs[1].Err, ErrNoFunction) {
		t.Errorf("Broadcast of no function: %+v, %v", rs, err)
	}
}

// A call whose answer the client never received (its primary went silent,
// then died, after committing) is retried with the same session at the
// new primary, which answers the first result: the function ran once and
// applied once.
func TestClientRetryAfterPrimaryKilledAnswersFirstResult(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	var runs atomic.Int64
	started, release := make(chan struct{}, 1), make(chan struct{})
	c, cl, proxies := proxiedCluster(t, 3, Config{RequestTimeout: 25 * time.Second})
	installFunctions(t, c, func(reg *compute.Registry) {
		mustReg(t, compute.Register(reg, "bump", func(ctx context.Context, v *compute.View, a invoke.CounterArgs) (int64, error) {
			runs.Add(1)
			select {
			case started <- struct{}{}:
			default:
			}
			select {
			case <-release:
			case <-ctx.Done():
				return 0, ctx.Err()
			}
			cur, _ := v.Get(v.Map(), v.Key())
			n, _ := strconv.ParseInt(string(cur), 10, 64)
			v.Set(v.Map(), v.Key(), strconv.AppendInt(nil, n+a.Delta, 10), 0)
			return n + a.Delta, nil
		}))
	})
	key := keyOwnedBy(t, cl, "n2", "retry")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type answer struct {
		n   int64
		err error
	}
	done := make(chan answer, 1)
	go func() {
		n, err := invoke.Call[invoke.CounterArgs, int64](ctx, cl, "c", key, "bump", invoke.CounterArgs{Delta: 5})
		done <- answer{n, err}
	}()
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("the function never started")
	}
	// The request reached n2; its answer will not reach the client.
	proxies[c.Nodes[2].RPCAddr()].Stall()
	close(release)
	for {
		v, err := c.Nodes[0].Map("c").Get(ctx, key)
		if err == nil && string(v) == "5" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the first run never committed: %q, %v", v, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.Kill(2)
	var a answer
	select {
	case a = <-done:
	case <-ctx.Done():
		t.Fatal("the call never returned")
	}
	if a.err != nil || a.n != 5 {
		t.Fatalf("retried call answered %d, %v; want the first result 5", a.n, a.err)
	}
	if v, err := c.Nodes[0].Map("c").Get(ctx, key); err != nil || string(v) != "5" {
		t.Fatalf("value %q (%v), want 5: applied more than once", v, err)
	}
	if runs.Load() != 1 {
		t.Fatalf("the function ran %d times, want 1", runs.Load())
	}
}

// A program that uses the client and the typed helpers links nothing of
// the server side.
func TestClientProgramLinksNoServerSide(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool")
	}
	out, err := exec.Command(goTool, "list", "-deps", "github.com/collocate/grid/client", "github.com/collocate/grid/compute/invoke").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.Contains(dep, "hashicorp/serf") || strings.Contains(dep, "hashicorp/raft") ||
			dep == "github.com/collocate/grid/grid" || dep == "github.com/collocate/grid/cluster" || dep == "github.com/collocate/grid/compute" {
			t.Errorf("a client program links %s", dep)
		}
	}
}
