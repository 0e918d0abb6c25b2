package grid_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/collocate/grid/internal/api"
)

// The grid's internal maps (inbox watermarks, processors' pauses) cannot
// be written by clients with the whole-map and multi-key operations
// either: a Clear of the inbox map wiped every watermark, so a
// redelivery after a failover applied an event twice.
func TestMultiKeyWritesOfReservedMapsAreRefused(t *testing.T) {
	nd := oneNode(t, testFuncs{})
	ctx := ctxT(t, 20*time.Second)
	m := nd.Map(grid.ReservedPrefix + "inbox")
	if err := m.PutAll(ctx, map[string][]byte{"{p0}outbox/1": []byte("x")}); !errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("PutAll of a reserved map: %v, want ErrBadRequest", err)
	}
	if err := m.Clear(ctx); !errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("Clear of a reserved map: %v, want ErrBadRequest", err)
	}
	if _, err := m.DeleteAll(ctx, []string{"{p0}outbox/1"}); !errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("DeleteAll of a reserved map: %v, want ErrBadRequest", err)
	}
}

// A function callers name (package compute's built-ins write the map the
// call names) cannot write the grid's internal maps, streams or groups:
// ExecuteOnKey(map "\x00inbox", CAS) set any inbox watermark, so
// deliveries were dropped as duplicates, never applied.
func TestFunctionsCannotWriteReservedNames(t *testing.T) {
	write := func(f func(v *grid.StepView)) grid.StepFunc {
		return func(_ context.Context, v *grid.StepView) ([]byte, error) {
			f(v)
			return nil, v.Err()
		}
	}
	nd := oneNode(t, testFuncs{steps: map[string]grid.StepFunc{
		"set":      write(func(v *grid.StepView) { v.Set(v.Map(), v.Key(), []byte("x"), 0) }),
		"delete":   write(func(v *grid.StepView) { v.Delete(v.Map(), v.Key()) }),
		"publish":  write(func(v *grid.StepView) { v.Publish(grid.ReservedPrefix+"outbox", v.Key(), []byte("x")) }),
		"setGroup": write(func(v *grid.StepView) { v.SetPosition("s", grid.ReservedPrefix+"proc:p", 1<<62) }),
		"setPos":   write(func(v *grid.StepView) { v.SetPosition(grid.ReservedPrefix+"outbox", "g", 1<<62) }),
	}})
	ctx := ctxT(t, 20*time.Second)
	for _, fn := range []string{"set", "delete", "publish", "setGroup", "setPos"} {
		_, err := nd.Execute(ctx, grid.StepCall{Map: grid.ReservedPrefix + "inbox", Key: "{p0}outbox/1", Name: fn})
		if !errors.Is(err, api.ErrBadRequest) {
			t.Errorf("function %s writing a reserved name: %v, want ErrBadRequest", fn, err)
		}
	}
	if v, err := nd.Map(grid.ReservedPrefix+"inbox").Get(ctx, "{p0}outbox/1"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("the reserved map holds %q (%v)", v, err)
	}
}

// A step's event larger than a stream keeps is refused even when the step
// creates the stream: it was accepted then (the size was checked only for
// an existing stream), unlike a Publish's.
func TestStepEventLargerThanANewStreamKeepsIsRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 1, func(_ int, cfg *grid.Config) { cfg.StreamBytes = 4096 })
	nd := c.Nodes[0]
	ctx := ctxT(t, 20*time.Second)
	if err := nd.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	key := "{" + nd.PartitionTag(0) + "}"
	if _, err := nd.Publish(ctx, "a", key, make([]byte, 8192)); !errors.Is(err, api.ErrValueTooLarge) {
		t.Fatalf("publish of an event larger than the stream keeps: %v, want ErrValueTooLarge", err)
	}
	fn := func(_ context.Context, v *grid.StepView) ([]byte, error) {
		v.Publish("b", key, make([]byte, 8192))
		return nil, v.Err()
	}
	if _, _, err := nd.StepAt(ctx, 0, "big", fn, 0); !errors.Is(err, api.ErrValueTooLarge) {
		t.Fatalf("a step's event larger than a new stream keeps: %v, want ErrValueTooLarge", err)
	}
}
