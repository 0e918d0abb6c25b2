package compute

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// Built-in function names (RegisterBuiltins).
const (
	// FnCounterAdd adds CounterArgs.Delta to the decimal integer at the
	// key (absent: 0; the format of Map.Increment and Redis INCR), keeping
	// its TTL; answers the new value (int64).
	FnCounterAdd = "counter.add"
	// FnCAS replaces the key's value if it equals CASArgs.Expected (or is
	// absent, with CASArgs.Absent); answers CASResult.
	FnCAS = "cas"
	// FnListAppend appends AppendArgs.Values to the list at the key (a
	// msgpack array of byte strings); answers the new length (int).
	FnListAppend = "list.append"
	// FnAggMap is a partition task (ExecuteOnPartitions with
	// PartsOptions.Map): the Agg of the map's numeric values in the
	// partition. See Aggregate.
	FnAggMap = "agg.map"
	// FnAggKey runs at a key (ExecuteOnKey): the Agg of the numeric
	// values of AggArgs.Map (default: the call's map) whose keys are
	// collocated with the key (same affinity key). See AggregateKey.
	FnAggKey = "agg.key"
	// FnEcho is a member function answering its arguments ([]byte).
	FnEcho = "echo"
)

// CounterArgs are FnCounterAdd's arguments.
type CounterArgs struct {
	Delta int64 `msgpack:"delta"`
}

// CASArgs are FnCAS's arguments. Delete deletes instead of writing Value.
type CASArgs struct {
	Expected []byte `msgpack:"expected"`
	Absent   bool   `msgpack:"absent"`
	Value    []byte `msgpack:"value"`
	Delete   bool   `msgpack:"delete"`
}

// CASResult is FnCAS's answer: Done if it wrote; the value found.
type CASResult struct {
	Done    bool   `msgpack:"done"`
	Found   bool   `msgpack:"found"`
	Current []byte `msgpack:"current"`
}

// AppendArgs are FnListAppend's arguments.
type AppendArgs struct {
	Values [][]byte `msgpack:"values"`
}

// AggArgs are FnAggKey's (and FnAggMap's) arguments: Map overrides the
// call's map; Msgpack says the values are msgpack numbers, not decimal
// text.
type AggArgs struct {
	Map     string `msgpack:"map"`
	Msgpack bool   `msgpack:"msgpack"`
}

// RegisterBuiltins registers the built-in functions gridnode ships.
func RegisterBuiltins(r *Registry) error {
	for _, err := range []error{
		Register(r, FnCounterAdd, counterAdd),
		Register(r, FnCAS, compareAndSet),
		Register(r, FnListAppend, listAppend),
		Register(r, FnAggMap, aggMap),
		Register(r, FnAggKey, aggKey),
		RegisterMember(r, FnEcho, func(ctx context.Context, b []byte) ([]byte, error) { return b, nil }),
	} {
		if err != nil {
			return err
		}
	}
	return nil
}

// keepTTL is the TTL that keeps an entry's expiry (0: none).
func keepTTL(e grid.StepEntry) time.Duration {
	if e.ExpireAt == 0 {
		return 0
	}
	return max(time.Duration(e.ExpireAt-time.Now().UnixNano()), 1)
}

func counterAdd(ctx context.Context, v *View, a CounterArgs) (int64, error) {
	e, ok := v.Entry(v.Map(), v.Key())
	var cur int64
	if ok {
		n, isInt := api.ParseInt(e.Value)
		if !isInt {
			return 0, grid.ErrNotInteger
		}
		cur = n
	}
	d := a.Delta
	if (d > 0 && cur > math.MaxInt64-d) || (d < 0 && cur < math.MinInt64-d) {
		return 0, grid.ErrOverflow
	}
	v.Set(v.Map(), v.Key(), strconv.AppendInt(nil, cur+d, 10), keepTTL(e))
	return cur + d, nil
}

func compareAndSet(ctx context.Context, v *View, a CASArgs) (CASResult, error) {
	e, ok := v.Entry(v.Map(), v.Key())
	res := CASResult{Found: ok, Current: e.Value}
	if (a.Absent && ok) || (!a.Absent && (!ok || !bytes.Equal(e.Value, a.Expected))) {
		return res, nil
	}
	if a.Delete {
		v.Delete(v.Map(), v.Key())
	} else {
		v.Set(v.Map(), v.Key(), a.Value, keepTTL(e))
	}
	res.Done = true
	return res, nil
}

func listAppend(ctx context.Context, v *View, a AppendArgs) (int, error) {
	e, ok := v.Entry(v.Map(), v.Key())
	var list [][]byte
	if ok {
		if err := wire.Decode(e.Value, &list); err != nil {
			return 0, fmt.Errorf("%w: the value at %q is not a list: %v", grid.ErrBadRequest, v.Key(), err)
		}
	}
	list = append(list, a.Values...)
	b, err := msgpack.Marshal(list)
	if err != nil {
		return 0, err
	}
	v.Set(v.Map(), v.Key(), b, keepTTL(e))
	return len(list), nil
}

func aggMap(ctx context.Context, v *View, a AggArgs) (Agg, error) {
	m := v.Map()
	if a.Map != "" {
		m = a.Map
	}
	var g Agg
	for _, val := range v.Range(m) {
		g.add(val, a.Msgpack)
	}
	return g, ctx.Err()
}

func aggKey(ctx context.Context, v *View, a AggArgs) (Agg, error) {
	m := v.Map()
	if a.Map != "" {
		m = a.Map
	}
	tag := affinity.Tag(v.Key())
	var g Agg
	for k, val := range v.Range(m) {
		if affinity.Tag(k) == tag {
			g.add(val, a.Msgpack)
		}
	}
	return g, ctx.Err()
}

func (a *Agg) add(val []byte, msgpack bool) {
	if msgpack {
		a.AddMsgpack(val)
	} else {
		a.Add(val)
	}
}
