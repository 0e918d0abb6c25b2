package compute_test

import (
	"context"
	"errors"
	"testing"

	"github.com/collocate/grid/compute"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/vmihailenco/msgpack/v5"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, gridtest.LeakOptions()...)
}

func TestRegistryResolves(t *testing.T) {
	reg := compute.NewRegistry()
	if err := compute.RegisterBuiltins(reg); err != nil {
		t.Fatal(err)
	}
	if err := compute.Register(reg, compute.FnCounterAdd, func(ctx context.Context, v *compute.View, a int) (int, error) { return 0, nil }); err == nil {
		t.Fatal("a second registration under the same name succeeded")
	}
	if _, err := reg.Step("nope", nil); !errors.Is(err, grid.ErrNoFunction) {
		t.Fatalf("unknown name: %v", err)
	}
	if _, err := reg.Step(compute.FnEcho, nil); !errors.Is(err, grid.ErrNoFunction) {
		t.Fatalf("a member function resolved as a partition function: %v", err)
	}
	bad, _ := msgpack.Marshal("not a struct")
	if _, err := reg.Step(compute.FnCounterAdd, bad); !errors.Is(err, grid.ErrBadArgs) {
		t.Fatalf("bad args: %v", err)
	}
	if _, err := reg.Step(compute.FnCounterAdd, []byte{0xc1}); !errors.Is(err, grid.ErrBadArgs) {
		t.Fatalf("malformed args: %v", err)
	}
	good, _ := msgpack.Marshal(compute.CounterArgs{Delta: 3})
	if _, err := reg.Step(compute.FnCounterAdd, good); err != nil {
		t.Fatalf("good args: %v", err)
	}
	if _, err := reg.Member(compute.FnEcho, nil); err != nil {
		t.Fatalf("member function: %v", err)
	}
}

func TestAggMerge(t *testing.T) {
	var a, b compute.Agg
	for _, v := range []string{"1", "5", "-2", "x"} {
		a.Add([]byte(v))
	}
	f, _ := msgpack.Marshal(2.5)
	i, _ := msgpack.Marshal(int64(10))
	b.AddMsgpack(f)
	b.AddMsgpack(i)
	b.AddMsgpack([]byte("\xa1x"))
	m := a.Merge(b)
	if m.Count != 5 || m.Skipped != 2 || m.Sum != 16.5 || m.Min != -2 || m.Max != 10 || m.IntSum != 14 || m.Ints != 4 {
		t.Fatalf("merged %+v", m)
	}
	if got := m.Avg(); got != 16.5/5 {
		t.Fatalf("avg %v", got)
	}
	if e := (compute.Agg{}).Merge(compute.Agg{}); e.Count != 0 {
		t.Fatalf("empty merge %+v", e)
	}
}
