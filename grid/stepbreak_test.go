package grid_test

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/collocate/grid/internal/wire"
)

// Adversarial tests of partition steps (issue 11 review).

// partsCluster starts n nodes with partitions partitions and maxFrame,
// installs funcs everywhere and waits until the cluster is stable.
func partsCluster(t *testing.T, n, partitions, maxFrame int, stepTime time.Duration, funcs testFuncs) *gridtest.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, n, func(i int, cfg *grid.Config) {
		cfg.Partitions = partitions
		if maxFrame > 0 {
			cfg.MaxFrame = maxFrame
			cfg.MaxValueSize = maxFrame / 4
		}
		cfg.MaxStepTime = stepTime
	})
	c.WaitStable(30 * time.Second)
	for _, nd := range c.Nodes {
		nd.SetFunctions(funcs)
	}
	return c
}

// collectParts runs name once per partition from nd and returns how often
// each partition was answered.
func collectParts(ctx context.Context, nd *grid.Node, c grid.PartsCall) (map[int32]int, error) {
	var mu sync.Mutex
	got := map[int32]int{}
	err := nd.ExecutePartitions(ctx, c, func(r grid.PartResult) {
		mu.Lock()
		got[r.Partition]++
		mu.Unlock()
	})
	return got, err
}

// A member answers all the partition tasks of one request in one frame:
// results that are each well within the limits (here 20 KiB of a 64 KiB
// frame) must not add up to a frame the transport refuses. Before the fix
// the member's answer was replaced by ErrBadRequest ("frame too large"), a
// definitive error for tasks that had run (and could have written), and
// ExecutePartitions failed for every partition of that member.
func TestStepPartsResultsBeyondOneFrame(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 20<<10)
	funcs := testFuncs{steps: map[string]grid.StepFunc{
		"big": func(ctx context.Context, v *grid.StepView) ([]byte, error) { return big, nil },
	}}
	c := partsCluster(t, 2, 16, 64<<10, 5*time.Second, funcs)
	ctx := ctxT(t, 30*time.Second)
	got, err := collectParts(ctx, c.Nodes[0], grid.PartsCall{Name: "big"})
	if err != nil {
		t.Fatalf("ExecutePartitions: %v", err)
	}
	for p := range int32(16) {
		if got[p] != 1 {
			t.Fatalf("partition %d answered %d times; all answers %v", p, got[p], got)
		}
	}
}

// A member runs its partitions' tasks maxPartTasks at a time; each task's
// time budget is its own. Before the fix the budget was one deadline for
// the whole request, so with more partitions per member than run at once
// the tasks that started late ran out of budget (ErrFunctionBudget, a
// final error) although each took a fraction of it.
func TestStepPartsBudgetIsPerTask(t *testing.T) {
	funcs := testFuncs{steps: map[string]grid.StepFunc{
		"slow": func(ctx context.Context, v *grid.StepView) ([]byte, error) {
			select {
			case <-time.After(300 * time.Millisecond):
				return []byte("ok"), nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
	}}
	// One member, 32 partitions, 8 at a time: 4 rounds of 300 ms, each
	// task well within its 1 s budget.
	c := partsCluster(t, 1, 32, 0, time.Second, funcs)
	ctx := ctxT(t, 30*time.Second)
	got, err := collectParts(ctx, c.Nodes[0], grid.PartsCall{Name: "slow"})
	if err != nil {
		t.Fatalf("ExecutePartitions: %v (answered %d partitions)", err, len(got))
	}
	if len(got) != 32 {
		t.Fatalf("answered %d partitions, want 32", len(got))
	}
}

// A step queued behind another step of its partition gets its whole
// budget to run: the wait for the partition's step semaphore is bounded by
// the budget too, but does not use it up. Before the fix the budget ran
// from the call's arrival, so a 300 ms function queued behind a 900 ms one
// was cut short with ErrFunctionBudget (a final error) although its own
// budget was 1 s.
func TestStepQueuedBehindAnotherGetsItsBudget(t *testing.T) {
	started := make(chan struct{})
	nap := func(ctx context.Context, d time.Duration) error {
		select {
		case <-time.After(d):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	funcs := testFuncs{steps: map[string]grid.StepFunc{
		"hold": func(ctx context.Context, v *grid.StepView) ([]byte, error) {
			close(started)
			return []byte("held"), nap(ctx, 900*time.Millisecond)
		},
		"work": func(ctx context.Context, v *grid.StepView) ([]byte, error) {
			return []byte("worked"), nap(ctx, 300*time.Millisecond)
		},
	}}
	nd := oneNode(t, funcs)
	ctx := ctxT(t, 20*time.Second)
	held := make(chan error, 1)
	go func() {
		_, err := nd.Execute(ctx, grid.StepCall{Map: "m", Key: "{q}", Name: "hold", Budget: time.Second})
		held <- err
	}()
	<-started
	res, err := nd.Execute(ctx, grid.StepCall{Map: "m", Key: "{q}:2", Name: "work", Budget: time.Second})
	if err != nil || string(res) != "worked" {
		t.Fatalf("queued step: %q, %v", res, err)
	}
	if err := <-held; err != nil {
		t.Fatalf("hold: %v", err)
	}
}

// Past maxSessions (1024) clients writing one partition, the least
// recently used session was dropped whole, low watermark included, so a
// retry of its last request (same client, same seq) was new to the
// partition and applied a second time (found by review). Now a session
// used within sessionRetryWindow is never dropped: the primary refuses
// new clients with ErrBusy instead, and the retry answers its first result.
func TestStepRetryAfterManyClientsAppliesOnce(t *testing.T) {
	var runs atomic.Int64
	nd := oneNode(t, testFuncs{steps: map[string]grid.StepFunc{"incr": incr(&runs)}})
	ctx := ctxT(t, 60*time.Second)
	conn := gridtest.RawConn(t, nd.RPCAddr())
	part := int32(affinity.Partition("{s}", nd.Partitions()))
	step := func(client uint64) (wire.StepResponse, error) {
		req := &wire.StepRequest{Version: nd.Table().Version, Partition: part, Map: "m", Key: "{s}", Name: "incr",
			Session: wire.Session{Client: client, Seq: 1, Low: 1}}
		var resp wire.StepResponse
		return resp, conn.Call(ctx, wire.MsgStep, req, &resp)
	}
	first, err := step(1)
	if err != nil {
		t.Fatal(err)
	}
	busy := 0
	for c := uint64(2); c <= 1100; c++ {
		if _, err := step(c); errors.Is(err, grid.ErrBusy) {
			busy++ // the partition refuses new clients rather than forget client 1
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if busy == 0 {
		t.Fatal("1100 recent clients fit in one partition: the test does not reach the bound")
	}
	// Client 1 retries its first request (its answer was lost).
	again, err := step(1)
	if err == nil && string(again.Result) != string(first.Result) {
		t.Fatalf("the retry of (1, 1) applied again: first answer %q, retry %q", first.Result, again.Result)
	}
	if err != nil && !errors.Is(err, grid.ErrStaleSequence) {
		t.Fatalf("retry: %v", err)
	}
}

// A function that keeps writing buffers its writes in the view until the
// commit checks their size; the view must refuse them as soon as they
// exceed what one record may carry, or a loop of Sets grows the member's
// memory for the whole budget (gigabytes in 5 s). Before the fix every
// Set was buffered until the budget ran out (ErrFunctionBudget).
func TestStepWritesBoundedWhileBuffered(t *testing.T) {
	var sets atomic.Int64
	funcs := testFuncs{steps: map[string]grid.StepFunc{
		"flood": func(ctx context.Context, v *grid.StepView) ([]byte, error) {
			val := bytes.Repeat([]byte("v"), 100)
			for i := 0; ctx.Err() == nil && v.Err() == nil; i++ {
				v.Set("m", "{f}:"+strconv.Itoa(i), val, 0)
				sets.Add(1)
			}
			return nil, nil
		},
	}}
	c := partsCluster(t, 1, 16, 64<<10, 2*time.Second, funcs)
	ctx := ctxT(t, 20*time.Second)
	_, err := c.Nodes[0].Execute(ctx, grid.StepCall{Map: "m", Key: "{f}", Name: "flood"})
	if !errors.Is(err, grid.ErrValueTooLarge) {
		t.Fatalf("flood: %v after %d sets, want ErrValueTooLarge", err, sets.Load())
	}
	// 32 KiB of record holds a few hundred of these writes.
	if n := sets.Load(); n > 1000 {
		t.Fatalf("the view buffered %d writes before refusing them", n)
	}
	if _, err := c.Nodes[0].Map("m").Get(ctx, "{f}:0"); !errors.Is(err, grid.ErrNotFound) {
		t.Fatalf("a refused step applied a write: %v", err)
	}
}
