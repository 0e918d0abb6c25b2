package grid_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/collocate/grid/internal/api"
)

// lockSteps installs "\x00test.lock" and "\x00test.unlock" on every node:
// they lock (write mode when args is "w") and unlock key "{L}k" of map m.
func lockSteps(c *gridtest.Cluster) {
	for _, n := range c.Live() {
		_ = n.SetInternalStep("\x00test.lock", func(args []byte) (grid.StepFunc, error) {
			return func(_ context.Context, v *grid.StepView) ([]byte, error) {
				v.Lock("m", "{L}k", grid.KeyLock{Owner: "t1", Write: string(args) == "w", Prio: 1})
				return nil, nil
			}, nil
		})
		_ = n.SetInternalStep("\x00test.unlock", func([]byte) (grid.StepFunc, error) {
			return func(_ context.Context, v *grid.StepView) ([]byte, error) {
				v.Unlock("m", "{L}k")
				v.Set("m", "{L}k", []byte("after"), 0)
				return nil, nil
			}, nil
		})
	}
}

func stepOn(t *testing.T, ctx context.Context, n *grid.Node, name, args string) {
	t.Helper()
	part := affinity.Partition("{L}k", n.Partitions())
	if _, err := n.Execute(ctx, grid.StepCall{Partition: part, Name: name, Args: []byte(args)}); err != nil {
		t.Fatalf("%q: %v", name, err)
	}
}

// A write lock holds back plain reads and writes of its key until it is
// released, survives the primary's death, and lets other keys through; a
// read lock holds back only writes.
func TestKeyLocks(t *testing.T) {
	c := gridtest.New(t, 3, nil)
	c.WaitStable(30 * time.Second)
	lockSteps(c)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m := c.Nodes[0].Map("m")
	if err := m.Put(ctx, "{L}k", []byte("before")); err != nil {
		t.Fatal(err)
	}

	// A read lock: reads go on, writes wait.
	stepOn(t, ctx, c.Nodes[0], "\x00test.lock", "r")
	if v, err := m.Get(ctx, "{L}k"); err != nil || string(v) != "before" {
		t.Fatalf("a read of a read-locked key: %q %v", v, err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	err := m.Put(short, "{L}k", []byte("plain"))
	cancelShort()
	if err == nil {
		t.Fatal("a plain write of a locked key applied")
	}

	// A write lock: reads wait too, other keys of the partition do not.
	stepOn(t, ctx, c.Nodes[0], "\x00test.lock", "w")
	if err := m.Put(ctx, "{L}other", []byte("x")); err != nil {
		t.Fatalf("a write of another key of the partition: %v", err)
	}
	short, cancelShort = context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = m.Get(short, "{L}k")
	cancelShort()
	if err == nil {
		t.Fatal("a read of a write-locked key answered")
	}
	short, cancelShort = context.WithTimeout(ctx, 300*time.Millisecond)
	err = m.PutAll(short, map[string][]byte{"{L}k": []byte("all")})
	cancelShort()
	if err == nil {
		t.Fatal("PutAll of a locked key applied")
	}
	short, cancelShort = context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = m.GetAll(short, []string{"{L}k"})
	cancelShort()
	if err == nil {
		t.Fatal("GetAll of a write-locked key answered")
	}

	// The lock survives the death of the partition's primary.
	part := affinity.Partition("{L}k", c.Nodes[0].Partitions())
	for i, n := range c.Nodes {
		if n.Leads(part) {
			c.Kill(i)
			break
		}
	}
	live := c.Live()[0]
	short, cancelShort = context.WithTimeout(ctx, 5*time.Second)
	_, err = live.Map("m").Get(short, "{L}k")
	cancelShort()
	if err == nil {
		t.Fatal("after a failover, a read of a write-locked key answered: the lock was lost")
	}

	// A read waiting for the lock answers the value the release wrote.
	var got atomic.Value
	done := make(chan error, 1)
	go func() {
		v, err := live.Map("m").Get(ctx, "{L}k")
		got.Store(string(v))
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	stepOn(t, ctx, live, "\x00test.unlock", "")
	if err := <-done; err != nil || got.Load() != "after" {
		t.Fatalf("the waiting read answered %q %v, want the released value", got.Load(), err)
	}
	if err := live.Map("m").Put(ctx, "{L}k", []byte("plain")); err != nil {
		t.Fatalf("a plain write after the release: %v", err)
	}
}

// A function callers name cannot write a locked key (ErrBusy until the
// lock is released, retried by the router) and cannot lock.
func TestStepsRespectLocks(t *testing.T) {
	c := gridtest.New(t, 1, nil)
	c.WaitStable(30 * time.Second)
	lockSteps(c)
	n := c.Nodes[0]
	n.SetFunctions(testFuncs{steps: map[string]grid.StepFunc{
		"write": func(_ context.Context, v *grid.StepView) ([]byte, error) {
			v.Set("m", "{L}k", []byte("fn"), 0)
			return nil, nil
		},
		"lock": func(_ context.Context, v *grid.StepView) ([]byte, error) {
			v.Lock("m", "{L}k", grid.KeyLock{Owner: "evil", Write: true})
			return nil, nil
		},
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stepOn(t, ctx, n, "\x00test.lock", "w")
	part := affinity.Partition("{L}k", n.Partitions())
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := n.Execute(short, grid.StepCall{Partition: part, Name: "write"})
	cancelShort()
	if err == nil {
		t.Fatal("a function wrote a locked key")
	}
	stepOn(t, ctx, n, "\x00test.unlock", "")
	if _, err := n.Execute(ctx, grid.StepCall{Partition: part, Name: "write"}); err != nil {
		t.Fatalf("a function's write after the release: %v", err)
	}
	if _, err := n.Execute(ctx, grid.StepCall{Partition: part, Name: "lock"}); !errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("a function callers name took a lock: %v", err)
	}
}

// LockOf is public: a function callers name that calls it must not be
// taken for a step that manages locks, and so escape checkLocks.
func TestLockOfDoesNotExemptAFunctionFromLocks(t *testing.T) {
	c := gridtest.New(t, 1, nil)
	c.WaitStable(30 * time.Second)
	lockSteps(c)
	n := c.Nodes[0]
	n.SetFunctions(testFuncs{steps: map[string]grid.StepFunc{
		"peek-and-write": func(_ context.Context, v *grid.StepView) ([]byte, error) {
			_, _ = v.LockOf("m", "{L}k")
			v.Set("m", "{L}k", []byte("fn"), 0)
			return nil, nil
		},
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := n.Map("m")
	if err := m.Put(ctx, "{L}k", []byte("before")); err != nil {
		t.Fatal(err)
	}
	stepOn(t, ctx, n, "\x00test.lock", "w")
	part := affinity.Partition("{L}k", n.Partitions())
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := n.Execute(short, grid.StepCall{Partition: part, Name: "peek-and-write"})
	cancelShort()
	if err == nil {
		t.Fatal("a function that called LockOf wrote a write-locked key")
	}
	stepOn(t, ctx, n, "\x00test.unlock", "")
	if v, err := m.Get(ctx, "{L}k"); err != nil || string(v) != "after" {
		t.Fatalf("after the release: %q %v, want the release's value", v, err)
	}
}
