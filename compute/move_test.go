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
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// bump is counter.add that also counts its runs.
func bump(runs *atomic.Int64) func(*compute.Registry) {
	return func(reg *compute.Registry) {
		must(compute.Register(reg, "bump", func(ctx context.Context, v *compute.View, a compute.CounterArgs) (int64, error) {
			runs.Add(1)
			cur, _ := v.Get(v.Map(), v.Key())
			n, _ := strconv.ParseInt(string(cur), 10, 64)
			v.Set(v.Map(), v.Key(), strconv.AppendInt(nil, n+a.Delta, 10), 0)
			return n + a.Delta, nil
		}))
	}
}

// The same (client, seq) sent again after its primary died answers the
// first result from the promoted backup, and applies once.
func TestRetryAfterFailoverAnswersFirstResult(t *testing.T) {
	var runs atomic.Int64
	e := newEnv(t, 3, nil, bump(&runs))
	key := keyLedBy(t, e.c.Nodes[2], "retry")
	pid := affinity.Partition(key, e.c.Nodes[0].Partitions())
	args, _ := msgpack.Marshal(compute.CounterArgs{Delta: 5})
	req := &wire.StepRequest{Partition: int32(pid), Map: "c", Key: key, Name: "bump", Args: args,
		Session: wire.Session{Client: 4242, Seq: 1, Low: 1}}
	ctx := ctxT(t, 60*time.Second)

	req.Version = e.c.Nodes[2].Table().Version
	var first wire.StepResponse
	if err := gridtest.RawConn(t, e.c.Nodes[2].RPCAddr()).Call(ctx, wire.MsgStep, req, &first); err != nil {
		t.Fatal(err)
	}
	e.c.Kill(2)

	var again wire.StepResponse
	for {
		tab := e.c.Nodes[0].Table()
		owner := e.c.Node(tab.Partitions[pid].Primary)
		if owner != nil {
			req.Version = tab.Version
			err := gridtest.RawConn(t, owner.RPCAddr()).Call(ctx, wire.MsgStep, req, &again)
			if err == nil {
				break
			}
			if !api.Retryable(err) && !errors.Is(err, api.ErrBusy) {
				t.Fatalf("retry at %s: %v", owner.Name(), err)
			}
		}
		if ctx.Err() != nil {
			t.Fatal("no new primary answered")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if string(again.Result) != string(first.Result) || again.Epoch <= first.Epoch {
		t.Fatalf("retry answered %x at epoch %d, first %x at epoch %d", again.Result, again.Epoch, first.Result, first.Epoch)
	}
	if runs.Load() != 1 {
		t.Fatalf("the function ran %d times", runs.Load())
	}
	if got := e.metric(t, "grid_dedup_replays_total", nil); got != 1 {
		t.Fatalf("grid_dedup_replays_total %v, want 1", got)
	}
	if v, err := e.c.Nodes[0].Map("c").Get(ctx, key); err != nil || string(v) != "5" {
		t.Fatalf("value %q (%v), want 5", v, err)
	}
}

// Slow functions on many partitions while a node joins: the partitions
// that move under a running function re-run at their new primary; each
// call applies exactly once.
func TestExecuteOnKeyMovedMidFunction(t *testing.T) {
	var runs, started atomic.Int64
	release := make(chan struct{})
	register := func(reg *compute.Registry) {
		bump(&runs)(reg)
		must(compute.Register(reg, "slow", func(ctx context.Context, v *compute.View, a compute.CounterArgs) (int64, error) {
			started.Add(1)
			select {
			case <-release:
			case <-ctx.Done():
				return 0, ctx.Err()
			}
			cur, _ := v.Get(v.Map(), v.Key())
			n, _ := strconv.ParseInt(string(cur), 10, 64)
			v.Set(v.Map(), v.Key(), strconv.AppendInt(nil, n+1, 10), 0)
			return n + 1, nil
		}))
	}
	e := newEnv(t, 2, func(cfg *grid.Config) { cfg.MaxStepTime = 30 * time.Second }, register)
	before := e.c.Nodes[0].Table()
	keys := distinctPartitionKeys(e.c.Nodes[0], "mv", 40)
	ctx := ctxT(t, 60*time.Second)
	results := make([]int64, len(keys))
	errs := make([]error, len(keys))
	var wg sync.WaitGroup
	for i, k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = compute.Call[compute.CounterArgs, int64](ctx, e.ex[i%2], "mv", k, "slow", compute.CounterArgs{})
		}()
	}
	for started.Load() < int64(len(keys)) {
		time.Sleep(5 * time.Millisecond)
	}
	e.add(t, nil)
	e.c.WaitStable(30 * time.Second)
	close(release)
	wg.Wait()
	after := e.c.Nodes[0].Table()
	moved := 0
	for _, k := range keys {
		p := affinity.Partition(k, e.c.Nodes[0].Partitions())
		if before.Partitions[p].Primary != after.Partitions[p].Primary {
			moved++
		}
	}
	for i, k := range keys {
		if errs[i] != nil || results[i] != 1 {
			t.Fatalf("%s: %d, %v", k, results[i], errs[i])
		}
		if v, err := e.c.Nodes[0].Map("mv").Get(ctx, k); err != nil || string(v) != "1" {
			t.Fatalf("%s = %q (%v), want 1", k, v, err)
		}
	}
	reruns := e.metric(t, "grid_function_reruns_total", map[string]string{"function": "slow", "reason": "moved"})
	t.Logf("%d of %d partitions moved; %d runs for %d calls; %v runs counted as moved", moved, len(keys), started.Load(), len(keys), reruns)
	if moved == 0 || started.Load() < int64(len(keys)+moved) {
		t.Fatalf("%d partitions moved, %d runs: the move did not happen under the functions", moved, started.Load())
	}
	if reruns < float64(moved) {
		t.Fatalf("grid_function_reruns_total{reason=moved} = %v, want at least the %d moved partitions", reruns, moved)
	}
}

// distinctPartitionKeys returns n keys with prefix in n different partitions.
func distinctPartitionKeys(nd *grid.Node, prefix string, n int) []string {
	seen := map[int]bool{}
	var out []string
	for i := 0; len(out) < n; i++ {
		k := fmt.Sprintf("%s%d", prefix, i)
		if p := affinity.Partition(k, nd.Partitions()); !seen[p] {
			seen[p] = true
			out = append(out, k)
		}
	}
	return out
}

// Map-reduce sums are exact, every partition counted once, while a node
// joins and partitions move under running tasks.
func TestMapReduceExactDuringJoin(t *testing.T) {
	register := func(reg *compute.Registry) {
		// agg.map, slowed down so that runs straddle the moves.
		must(compute.Register(reg, "agg.slow", func(ctx context.Context, v *compute.View, a compute.AggArgs) (compute.Agg, error) {
			time.Sleep(5 * time.Millisecond)
			var g compute.Agg
			for _, val := range v.Range(v.Map()) {
				g.Add(val)
			}
			return g, nil
		}))
	}
	e := newEnv(t, 2, nil, register)
	const entries = 20000
	var want int64
	batch := map[string][]byte{}
	ctx := ctxT(t, 120*time.Second)
	for i := range entries {
		v := int64(i%1000 + 1)
		want += v
		batch["n"+strconv.Itoa(i)] = strconv.AppendInt(nil, v, 10)
		if len(batch) == 2000 {
			if err := e.c.Nodes[0].Map("nums").PutAll(ctx, batch); err != nil {
				t.Fatal(err)
			}
			batch = map[string][]byte{}
		}
	}
	var stop atomic.Bool
	var runs atomic.Int64
	fail := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			got, err := compute.MapReduce(ctx, e.ex[1], "agg.slow", compute.AggArgs{}, compute.PartsOptions{Map: "nums"}, compute.Agg{}, compute.Agg.Merge)
			if err == nil && (got.IntSum != want || got.Count != entries) {
				err = fmt.Errorf("run %d: sum %d over %d entries, want %d over %d", runs.Load(), got.IntSum, got.Count, want, entries)
			}
			if err != nil {
				fail <- err
				return
			}
			runs.Add(1)
		}
	}()
	for runs.Load() < 1 {
		time.Sleep(10 * time.Millisecond)
	}
	atJoin := runs.Load()
	e.add(t, nil)
	e.c.WaitStable(60 * time.Second)
	afterJoin := runs.Load()
	for runs.Load() < afterJoin+1 && len(fail) == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	close(fail)
	for err := range fail {
		t.Fatal(err)
	}
	t.Logf("%d exact runs, %d of them during the join", runs.Load(), afterJoin-atJoin)
	// The plain built-in agrees.
	got, err := compute.Aggregate(ctx, e.ex[2], "nums", compute.AggArgs{})
	if err != nil || got.IntSum != want || got.Count != entries || got.Min != 1 || got.Max != 1000 {
		t.Fatalf("Aggregate: %+v, %v", got, err)
	}
}

// A function running when its member goes down (killed or closing) is
// discarded there, and the call runs again at the new primary: the caller
// gets the result of one run, never a budget error for a budget that did
// not run out.
func TestFunctionRunningWhenItsMemberDiesRunsAgain(t *testing.T) {
	for _, how := range []string{"kill", "close"} {
		t.Run(how, func(t *testing.T) {
			var started atomic.Int64
			release := make(chan struct{})
			e := newEnv(t, 3, func(cfg *grid.Config) { cfg.MaxStepTime = 30 * time.Second }, func(reg *compute.Registry) {
				must(compute.Register(reg, "slow", func(ctx context.Context, v *compute.View, a compute.CounterArgs) (int64, error) {
					started.Add(1)
					select {
					case <-release:
					case <-ctx.Done():
						return 0, ctx.Err()
					}
					cur, _ := v.Get(v.Map(), v.Key())
					n, _ := strconv.ParseInt(string(cur), 10, 64)
					v.Set(v.Map(), v.Key(), strconv.AppendInt(nil, n+1, 10), 0)
					return n + 1, nil
				}))
			})
			key := keyLedBy(t, e.c.Nodes[2], "dies")
			ctx := ctxT(t, 60*time.Second)
			var res int64
			errc := make(chan error, 1)
			go func() {
				var err error
				res, err = compute.Call[compute.CounterArgs, int64](ctx, e.ex[0], "d", key, "slow", compute.CounterArgs{})
				errc <- err
			}()
			for started.Load() < 1 {
				time.Sleep(5 * time.Millisecond)
			}
			if how == "kill" {
				e.c.Kill(2)
			} else {
				e.c.Leave(2)
			}
			for started.Load() < 2 {
				select {
				case err := <-errc:
					t.Fatalf("the call ended before it ran again: %d, %v", res, err)
				case <-time.After(5 * time.Millisecond):
				}
			}
			close(release)
			if err := <-errc; err != nil || res != 1 {
				t.Fatalf("call: %d, %v", res, err)
			}
			if v, err := e.c.Nodes[0].Map("d").Get(ctx, key); err != nil || string(v) != "1" {
				t.Fatalf("value %q (%v), want 1", v, err)
			}
		})
	}
}
