package compute_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/compute"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/vmihailenco/msgpack/v5"
)

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// env is an in-process cluster whose nodes each have their own registry
// (with the built-ins and whatever register adds) and metrics.
type env struct {
	c        *gridtest.Cluster
	ex       []*compute.Compute
	metrics  []*prometheus.Registry
	register func(*compute.Registry)
}

func newEnv(t testing.TB, n int, configure func(cfg *grid.Config), register func(*compute.Registry)) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("cluster test")
	}
	e := &env{register: register}
	e.c = gridtest.New(t, n, func(i int, cfg *grid.Config) { e.configure(cfg, configure) })
	e.c.WaitStable(30 * time.Second)
	for _, nd := range e.c.Nodes {
		e.ex = append(e.ex, e.install(t, nd))
	}
	return e
}

func (e *env) configure(cfg *grid.Config, configure func(cfg *grid.Config)) {
	reg := prometheus.NewRegistry()
	e.metrics = append(e.metrics, reg)
	cfg.Registerer = reg
	if configure != nil {
		configure(cfg)
	}
}

func (e *env) install(t testing.TB, nd *grid.Node) *compute.Compute {
	reg := compute.NewRegistry()
	if err := compute.RegisterBuiltins(reg); err != nil {
		t.Fatal(err)
	}
	if e.register != nil {
		e.register(reg)
	}
	return compute.New(nd, reg)
}

// add joins a node with its registry installed as soon as it starts.
func (e *env) add(t testing.TB, configure func(cfg *grid.Config)) int {
	i := e.c.Add(func(cfg *grid.Config) { e.configure(cfg, configure) })
	e.ex = append(e.ex, e.install(t, e.c.Nodes[i]))
	return i
}

// keyLedBy returns a key with prefix whose partition n leads.
func keyLedBy(t testing.TB, n *grid.Node, prefix string) string {
	t.Helper()
	tab := n.Table()
	for i := range 100000 {
		k := fmt.Sprintf("%s%d", prefix, i)
		if tab.Partitions[affinity.Partition(k, n.Partitions())].Primary == n.Name() {
			return k
		}
	}
	t.Fatalf("no key led by %s", n.Name())
	return ""
}

// requests sums grid_requests_total by op over every node.
func (e *env) requests(t testing.TB) map[string]float64 {
	out := map[string]float64{}
	for _, reg := range e.metrics {
		fams, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			if f.GetName() != "grid_requests_total" {
				continue
			}
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "op" {
						out[l.GetValue()] += m.GetCounter().GetValue()
					}
				}
			}
		}
	}
	return out
}

// metric sums the series of family name whose labels include want, over
// every node.
func (e *env) metric(t testing.TB, name string, want map[string]string) float64 {
	var sum float64
	for _, reg := range e.metrics {
		fams, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			if f.GetName() != name {
				continue
			}
			for _, m := range f.GetMetric() {
				if hasLabels(m.GetLabel(), want) {
					sum += m.GetCounter().GetValue() + float64(m.GetHistogram().GetSampleCount())
				}
			}
		}
	}
	return sum
}

func hasLabels(labels []*dto.LabelPair, want map[string]string) bool {
	n := 0
	for _, l := range labels {
		if v, ok := want[l.GetName()]; ok {
			if v != l.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

func diff(after, before map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

func putLines(t testing.TB, m grid.Map, customer string, lines int) int64 {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	entries := map[string][]byte{}
	var total int64
	for i := range lines {
		v := int64(i%97 + 1)
		total += v
		entries[fmt.Sprintf("{%s}:line:%d", customer, i)] = strconv.AppendInt(nil, v, 10)
	}
	if err := m.PutAll(ctx, entries); err != nil {
		t.Fatal(err)
	}
	return total
}

// A collocated task reads every line of a customer at the customer's
// primary: the only request anywhere is the step itself (no get, get_all
// or scan reached any member), while the fetched way needs a GetAll.
func TestCollocatedTaskReadsNoRemoteEntry(t *testing.T) {
	e := newEnv(t, 3, nil, nil)
	caller := e.c.Nodes[0]
	cust := keyLedBy(t, e.c.Nodes[1], "cust")
	total := putLines(t, caller.Map("lines"), cust, 200)
	// Lines of other customers in the same map must not be counted.
	putLines(t, caller.Map("lines"), cust+"x", 50)
	ctx := ctxT(t, 30*time.Second)

	before := e.requests(t)
	agg, err := compute.AggregateKey(ctx, e.ex[0], "lines", "{"+cust+"}", compute.AggArgs{})
	if err != nil {
		t.Fatal(err)
	}
	got := diff(e.requests(t), before)
	if agg.IntSum != total || agg.Count != 200 {
		t.Fatalf("collocated total %d over %d lines, want %d over 200", agg.IntSum, agg.Count, total)
	}
	if len(got) != 1 || got["step"] != 1 {
		t.Fatalf("requests served for the collocated task: %v, want exactly one step", got)
	}

	keys := make([]string, 200)
	for i := range keys {
		keys[i] = fmt.Sprintf("{%s}:line:%d", cust, i)
	}
	before = e.requests(t)
	vals, err := caller.Map("lines").GetAll(ctx, keys)
	if err != nil || len(vals) != 200 {
		t.Fatalf("GetAll: %d values, %v", len(vals), err)
	}
	t.Logf("collocated: %v; fetched: %v", got, diff(e.requests(t), before))
}

// N concurrent entry-processor increments through a non-primary member,
// with the key's primary killed in the middle: exactly N.
func TestCounterExactWithPrimaryKilled(t *testing.T) {
	e := newEnv(t, 3, nil, nil)
	victim := e.c.Nodes[2]
	key := keyLedBy(t, victim, "counter")
	ctx := ctxT(t, 60*time.Second)
	const workers, each = 8, 40
	var done atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ex := e.ex[w%2] // n0 and n1; n2 dies
			for range each {
				if _, err := compute.Call[compute.CounterArgs, int64](ctx, ex, "c", key, compute.FnCounterAdd, compute.CounterArgs{Delta: 1}); err != nil {
					errs <- err
					return
				}
				done.Add(1)
			}
		}()
	}
	for done.Load() < workers*each/3 {
		time.Sleep(5 * time.Millisecond)
	}
	e.c.Kill(2)
	t.Logf("killed the primary after %d increments", done.Load())
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	v, err := e.c.Nodes[0].Map("c").Get(ctx, key)
	if err != nil || string(v) != strconv.Itoa(workers*each) {
		t.Fatalf("counter %q (%v), want %d", v, err, workers*each)
	}
	// Whether a retry met a remembered result depends on where the kill
	// landed (TestRetryAfterFailoverAnswersFirstResult makes it certain).
	t.Logf("retries answered from the remembered result: %v; re-runs: %v",
		e.metric(t, "grid_dedup_replays_total", nil), e.metric(t, "grid_function_reruns_total", nil))
}

// Every function failure comes back over the wire as its sentinel, and
// applies nothing.
func TestFunctionErrorsOverTheWire(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	type args struct{ N int }
	e := newEnv(t, 2, nil, func(reg *compute.Registry) {
		write := func(v *compute.View) { v.Set(v.Map(), v.Key(), []byte("applied"), 0) }
		must(compute.Register(reg, "panics", func(ctx context.Context, v *compute.View, a args) (int, error) {
			write(v)
			panic("boom")
		}))
		must(compute.Register(reg, "stuck", func(ctx context.Context, v *compute.View, a args) (int, error) {
			write(v)
			<-release // ignores ctx
			return 0, nil
		}))
		must(compute.Register(reg, "fails", func(ctx context.Context, v *compute.View, a args) (int, error) {
			write(v)
			return 0, errors.New("refused by the function")
		}))
		must(compute.Register(reg, "elsewhere", func(ctx context.Context, v *compute.View, a args) (int, error) {
			write(v)
			v.Set(v.Map(), "not-collocated-"+v.Key(), []byte("x"), 0)
			return 1, nil
		}))
	})
	key := keyLedBy(t, e.c.Nodes[1], "err")
	ctx := ctxT(t, 30*time.Second)
	badArgs, _ := msgpack.Marshal("a string, not a struct")
	okArgs, _ := msgpack.Marshal(args{N: 1})
	cases := []struct {
		fn   string
		args []byte
		want error
	}{
		{"panics", okArgs, grid.ErrFunctionPanic},
		{"stuck", okArgs, grid.ErrFunctionBudget},
		{"fails", okArgs, grid.ErrFunctionFailed},
		{"elsewhere", okArgs, grid.ErrNotCollocated},
		{"no-such-function", okArgs, grid.ErrNoFunction},
		{"panics", badArgs, grid.ErrBadArgs},
	}
	for _, tc := range cases {
		_, err := e.ex[0].ExecuteOnKey(ctx, "m", key, tc.fn, tc.args, compute.WithBudget(300*time.Millisecond))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.fn, err, tc.want)
		}
	}
	if v, err := e.c.Nodes[0].Map("m").Get(ctx, key); !errors.Is(err, grid.ErrNotFound) {
		t.Fatalf("a failed function applied its write: %q, %v", v, err)
	}
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

// Broadcast answers every member's result.
func TestBroadcastEveryMember(t *testing.T) {
	e := newEnv(t, 3, nil, nil)
	rs, err := compute.BroadcastTo[[]byte, []byte](ctxT(t, 20*time.Second), e.ex[1], compute.FnEcho, []byte("hi"))
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 3 {
		t.Fatalf("%d answers", len(rs))
	}
	for _, r := range rs {
		if r.Err != nil || string(r.Result) != "hi" {
			t.Fatalf("%s: %q, %v", r.Member, r.Result, r.Err)
		}
	}
	if _, err := e.ex[0].Broadcast(ctxT(t, 20*time.Second), "nope", nil); err != nil {
		t.Fatal(err)
	} else if rs, _ := e.ex[0].Broadcast(ctxT(t, 20*time.Second), "nope", nil); !errors.Is(rs[0].Err, grid.ErrNoFunction) {
		t.Fatalf("unknown member function: %v", rs[0].Err)
	}
}

// A partition task with a filter iterates only the matching entries of its
// map; a bad filter is refused before any task runs.
func TestMapReduceFiltered(t *testing.T) {
	e := newEnv(t, 2, nil, nil)
	ctx := ctxT(t, 30*time.Second)
	entries := map[string][]byte{}
	var wantA, wantB1 int64
	var countB1 int64
	for i := range 500 {
		entries[fmt.Sprintf("a:%d", i)] = strconv.AppendInt(nil, int64(i), 10)
		entries[fmt.Sprintf("b:%d", i)] = strconv.AppendInt(nil, int64(1000+i), 10)
		wantA += int64(i)
		if strconv.Itoa(i)[0] == '1' {
			wantB1 += int64(1000 + i)
			countB1++
		}
	}
	if err := e.c.Nodes[0].Map("f").PutAll(ctx, entries); err != nil {
		t.Fatal(err)
	}
	where := func(filter string, arg string) compute.PartsOptions {
		raw, err := msgpack.Marshal(arg)
		if err != nil {
			t.Fatal(err)
		}
		return compute.PartsOptions{Map: "f", Filter: filter, FilterArgs: raw}
	}
	agg := func(opts compute.PartsOptions) (compute.Agg, error) {
		return compute.MapReduce(ctx, e.ex[0], compute.FnAggMap, compute.AggArgs{}, opts, compute.Agg{}, compute.Agg.Merge)
	}
	got, err := agg(where(compute.FilterKeyPrefix, "a:"))
	if err != nil || got.IntSum != wantA || got.Count != 500 {
		t.Fatalf("prefix a: %+v, %v; want sum %d over 500", got, err, wantA)
	}
	got, err = agg(where(compute.FilterKeyGlob, "b:1*"))
	if err != nil || got.IntSum != wantB1 || got.Count != countB1 {
		t.Fatalf("glob b:1*: %+v, %v; want sum %d over %d", got, err, wantB1, countB1)
	}
	if _, err := agg(where(compute.FilterKeyGlob, "b:[")); !errors.Is(err, grid.ErrBadArgs) {
		t.Fatalf("a bad pattern: %v, want ErrBadArgs", err)
	}
	if _, err := agg(where("no-such-filter", "")); !errors.Is(err, grid.ErrNoFunction) {
		t.Fatalf("an unknown filter: %v, want ErrNoFunction", err)
	}
	opts := where(compute.FilterKeyPrefix, "a:")
	opts.Map = ""
	if _, err := agg(opts); !errors.Is(err, grid.ErrBadRequest) {
		t.Fatalf("a filter without a map: %v, want ErrBadRequest", err)
	}
}

// Function metrics count calls per function by result, their latency, and
// unknown names under one label.
func TestFunctionMetrics(t *testing.T) {
	e := newEnv(t, 2, nil, func(reg *compute.Registry) {
		must(compute.Register(reg, "fails", func(ctx context.Context, v *compute.View, a int) (int, error) {
			return 0, errors.New("no")
		}))
	})
	ctx := ctxT(t, 30*time.Second)
	for i := range 3 {
		if _, err := compute.Call[compute.CounterArgs, int64](ctx, e.ex[i%2], "m", fmt.Sprintf("k%d", i), compute.FnCounterAdd, compute.CounterArgs{Delta: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := compute.Call[int, int](ctx, e.ex[0], "m", "k", "fails", 1); !errors.Is(err, grid.ErrFunctionFailed) {
		t.Fatal(err)
	}
	for _, name := range []string{"nope-1", "nope-2"} {
		if _, err := e.ex[0].ExecuteOnKey(ctx, "m", "k", name, nil); !errors.Is(err, grid.ErrNoFunction) {
			t.Fatal(err)
		}
	}
	if _, err := compute.Aggregate(ctx, e.ex[1], "m", compute.AggArgs{}); err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"grid_function_calls_total", map[string]string{"function": compute.FnCounterAdd, "result": "ok"}, 3},
		{"grid_function_seconds", map[string]string{"function": compute.FnCounterAdd}, 3},
		{"grid_function_calls_total", map[string]string{"function": "fails", "result": "failed"}, 1},
		{"grid_function_calls_total", map[string]string{"function": "_unknown", "result": "no_function"}, 2},
		{"grid_function_calls_total", map[string]string{"function": "nope-1"}, 0},
		{"grid_function_calls_total", map[string]string{"function": compute.FnAggMap, "result": "ok"}, float64(e.c.Nodes[0].Partitions())},
	}
	for _, c := range checks {
		if got := e.metric(t, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}
