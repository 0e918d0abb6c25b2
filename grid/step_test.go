package grid_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// testFuncs resolves step functions from a plain map (package compute's
// registry is the real one; grid must not import it).
type testFuncs struct {
	steps   map[string]grid.StepFunc
	members map[string]grid.MemberFunc
}

func (f testFuncs) Step(name string, args []byte) (grid.StepFunc, error) {
	fn, ok := f.steps[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", api.ErrNoFunction, name)
	}
	return fn, nil
}

func (f testFuncs) Filter(name string, args []byte) (grid.Filter, error) {
	return nil, fmt.Errorf("%w: no filter %q", api.ErrNoFunction, name)
}

func (f testFuncs) Member(name string, args []byte) (grid.MemberFunc, error) {
	fn, ok := f.members[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", api.ErrNoFunction, name)
	}
	return fn, nil
}

// incr adds one to the decimal value of the call's key and of its shadow
// key key+":shadow" (collocated when key is a {tag}), answering the new value.
func incr(runs *atomic.Int64) grid.StepFunc {
	return func(ctx context.Context, v *grid.StepView) ([]byte, error) {
		runs.Add(1)
		cur, _ := v.Get(v.Map(), v.Key())
		n, _ := strconv.Atoi(string(cur))
		out := []byte(strconv.Itoa(n + 1))
		v.Set(v.Map(), v.Key(), out, 0)
		v.Set(v.Map(), v.Key()+":shadow", out, 0)
		return out, nil
	}
}

func oneNode(t *testing.T, funcs testFuncs) *grid.Node {
	t.Helper()
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 1, func(i int, cfg *grid.Config) { cfg.MaxStepTime = 2 * time.Second })
	nd := c.Nodes[0]
	if err := nd.WaitReady(ctxT(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	nd.SetFunctions(funcs)
	return nd
}

// A step sent twice with the same (client, seq) runs and applies once; the
// second answer is the first result.
func TestStepRetryAnswersFirstResult(t *testing.T) {
	var runs atomic.Int64
	nd := oneNode(t, testFuncs{steps: map[string]grid.StepFunc{"incr": incr(&runs)}})
	ctx := ctxT(t, 20*time.Second)
	if err := nd.Map("m").Put(ctx, "{c}", []byte("41")); err != nil {
		t.Fatal(err)
	}
	conn := gridtest.RawConn(t, nd.RPCAddr())
	req := &wire.StepRequest{Version: nd.Table().Version, Partition: int32(affinity.Partition("{c}", nd.Partitions())),
		Map: "m", Key: "{c}", Name: "incr", Session: wire.Session{Client: 77, Seq: 1, Low: 1}}
	var first, second wire.StepResponse
	if err := conn.Call(ctx, wire.MsgStep, req, &first); err != nil {
		t.Fatal(err)
	}
	// Another write in between: a re-run would answer 44, not 42.
	if _, err := nd.Map("m").Increment(ctx, "{c}", 1); err != nil {
		t.Fatal(err)
	}
	if err := conn.Call(ctx, wire.MsgStep, req, &second); err != nil {
		t.Fatal(err)
	}
	if string(first.Result) != "42" || string(second.Result) != "42" {
		t.Fatalf("results %q, %q; want 42 twice", first.Result, second.Result)
	}
	if runs.Load() != 1 {
		t.Fatalf("function ran %d times", runs.Load())
	}
	if v, _ := nd.Map("m").Get(ctx, "{c}"); string(v) != "43" {
		t.Fatalf("value %q, want 43 (one step, one increment)", v)
	}
	if v, _ := nd.Map("m").Get(ctx, "{c}:shadow"); string(v) != "42" {
		t.Fatalf("shadow %q, want 42", v)
	}
}

// A step's failures apply nothing and come back as their sentinel, also
// over the wire.
func TestStepFailuresApplyNothing(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	write := func(v *grid.StepView) { v.Set("m", "{k}", []byte("written"), 0) }
	funcs := testFuncs{steps: map[string]grid.StepFunc{
		"panic": func(ctx context.Context, v *grid.StepView) ([]byte, error) { write(v); panic("boom") },
		"fail": func(ctx context.Context, v *grid.StepView) ([]byte, error) {
			write(v)
			return nil, errors.New("no thanks")
		},
		"slow": func(ctx context.Context, v *grid.StepView) ([]byte, error) {
			// Ignores its ctx and goes on using its view until the test
			// ends: the view must refuse it without racing its caller.
			for {
				write(v)
				v.Get("m", "{k}")
				select {
				case <-block:
					return nil, nil
				case <-time.After(time.Millisecond):
				}
			}
		},
		"elsewhere": func(ctx context.Context, v *grid.StepView) ([]byte, error) {
			write(v)
			v.Set("m", "another-partition-key", []byte("x"), 0)
			return []byte("ok"), nil
		},
	}}
	nd := oneNode(t, funcs)
	ctx := ctxT(t, 20*time.Second)
	other := "another-partition-key"
	if affinity.Partition(other, nd.Partitions()) == affinity.Partition("{k}", nd.Partitions()) {
		t.Fatal("test keys share a partition")
	}
	conn := gridtest.RawConn(t, nd.RPCAddr())
	cases := []struct {
		name string
		want error
	}{
		{"panic", grid.ErrFunctionPanic},
		{"fail", grid.ErrFunctionFailed},
		{"slow", grid.ErrFunctionBudget},
		{"elsewhere", grid.ErrNotCollocated},
		{"missing", grid.ErrNoFunction},
	}
	for _, tc := range cases {
		_, err := nd.Execute(ctx, grid.StepCall{Map: "m", Key: "{k}", Name: tc.name, Budget: 300 * time.Millisecond})
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
		}
		req := &wire.StepRequest{Version: nd.Table().Version, Partition: int32(affinity.Partition("{k}", nd.Partitions())),
			Map: "m", Key: "{k}", Name: tc.name, Budget: int64(300 * time.Millisecond), Session: wire.Session{Client: 5, Seq: 1, Low: 1}}
		var resp wire.StepResponse
		if err := conn.Call(ctx, wire.MsgStep, req, &resp); !errors.Is(err, tc.want) {
			t.Errorf("%s over the wire: err %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := nd.Map("m").Get(ctx, "{k}"); !errors.Is(err, grid.ErrNotFound) {
		t.Fatalf("a failed step applied its write: %v", err)
	}
	if _, err := nd.Map("m").Get(ctx, other); !errors.Is(err, grid.ErrNotFound) {
		t.Fatalf("a write to another partition was applied: %v", err)
	}
	// The slow function still runs (it ignores its ctx), but its
	// partition is free again: a new step commits.
	var runs atomic.Int64
	nd.SetFunctions(testFuncs{steps: map[string]grid.StepFunc{"incr": incr(&runs)}})
	if res, err := nd.Execute(ctx, grid.StepCall{Map: "m", Key: "{k}", Name: "incr"}); err != nil || string(res) != "1" {
		t.Fatalf("step after a stuck one: %q, %v", res, err)
	}
	if nd.Stats().FunctionsRunning < 2 {
		t.Fatalf("FunctionsRunning %d, want the two stuck functions counted", nd.Stats().FunctionsRunning)
	}
}

// Concurrent steps on one key serialize: every increment counts once.
func TestStepConcurrentIncrements(t *testing.T) {
	var runs atomic.Int64
	nd := oneNode(t, testFuncs{steps: map[string]grid.StepFunc{"incr": incr(&runs)}})
	ctx := ctxT(t, 30*time.Second)
	const workers, each = 8, 50
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := nd.Execute(ctx, grid.StepCall{Map: "m", Key: "{hot}", Name: "incr"}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	// Plain writes to the same partition race with the steps. They come
	// from another client: had they shared the steps' session, a step
	// starved for as long as 128 of them took (seen under -race) would have
	// left its session's dedup window (ARCHITECTURE.md, At-most-once) and
	// ended in ErrTimeout.
	conn := gridtest.RawConn(t, nd.RPCAddr())
	pid := int32(affinity.Partition("{hot}", nd.Partitions()))
	for i := range 200 {
		req := &wire.MapRequest{Version: nd.Table().Version, Partition: pid, Op: wire.OpPut, Map: "m", Key: "{hot}:other",
			Value: []byte(strconv.Itoa(i)), Session: wire.Session{Client: 9, Seq: uint64(i + 1), Low: uint64(i + 1)}}
		var resp wire.MapResponse
		if err := conn.Call(ctx, wire.MsgMap, req, &resp); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if v, _ := nd.Map("m").Get(ctx, "{hot}"); string(v) != strconv.Itoa(workers*each) {
		t.Fatalf("value %q, want %d", v, workers*each)
	}
	t.Logf("%d runs for %d steps (%d re-runs after conflicts)", runs.Load(), workers*each, nd.Stats().StepReruns)
}

// Functions that ignore their ctx keep their goroutines past the budget;
// once MaxRunningFunctions of them run, new calls are refused with ErrBusy
// (nothing started), until they return.
func TestRunningFunctionsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	release := make(chan struct{})
	var released sync.Once
	defer released.Do(func() { close(release) })
	var okRuns atomic.Int64
	funcs := testFuncs{
		steps: map[string]grid.StepFunc{
			"stuck": func(ctx context.Context, v *grid.StepView) ([]byte, error) { <-release; return nil, nil },
			"ok":    func(ctx context.Context, v *grid.StepView) ([]byte, error) { okRuns.Add(1); return []byte("ok"), nil },
		},
		members: map[string]grid.MemberFunc{
			"ok": func(ctx context.Context) ([]byte, error) { okRuns.Add(1); return []byte("ok"), nil },
		},
	}
	c := gridtest.New(t, 1, func(i int, cfg *grid.Config) { cfg.MaxRunningFunctions = 2 })
	nd := c.Nodes[0]
	ctx := ctxT(t, 30*time.Second)
	if err := nd.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	nd.SetFunctions(funcs)
	for _, key := range []string{"a", "b"} {
		_, err := nd.Execute(ctx, grid.StepCall{Map: "m", Key: key, Name: "stuck", Budget: 100 * time.Millisecond})
		if !errors.Is(err, grid.ErrFunctionBudget) {
			t.Fatalf("stuck %s: %v", key, err)
		}
	}
	if got := nd.Stats().FunctionsRunning; got != 2 {
		t.Fatalf("%d functions running, want the 2 stuck ones", got)
	}
	// The router retries ErrBusy (nothing applied) until the call's
	// deadline: a short one.
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	_, err := nd.Execute(short, grid.StepCall{Map: "m", Key: "c", Name: "ok"})
	if !errors.Is(err, grid.ErrBusy) || !strings.Contains(err.Error(), "MaxRunningFunctions") {
		t.Fatalf("a step beyond the limit: %v, want ErrBusy naming MaxRunningFunctions", err)
	}
	t.Logf("refused: %v", err)
	rs, err := nd.CallMembers(ctx, "ok", nil, 0)
	if err != nil || len(rs) != 1 || !errors.Is(rs[0].Err, grid.ErrBusy) {
		t.Fatalf("a member function beyond the limit: %+v, %v", rs, err)
	}
	if okRuns.Load() != 0 {
		t.Fatalf("a refused function ran %d times", okRuns.Load())
	}
	released.Do(func() { close(release) })
	for nd.Stats().FunctionsRunning != 0 {
		if ctx.Err() != nil {
			t.Fatalf("%d functions still running after release", nd.Stats().FunctionsRunning)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if res, err := nd.Execute(ctx, grid.StepCall{Map: "m", Key: "c", Name: "ok"}); err != nil || string(res) != "ok" {
		t.Fatalf("after the stuck functions returned: %q, %v", res, err)
	}
}
