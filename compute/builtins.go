package compute

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// RegisterBuiltins registers the built-in functions gridnode ships.
func RegisterBuiltins(r *Registry) error {
	for _, err := range []error{
		Register(r, FnCounterAdd, counterAdd),
		Register(r, FnCAS, compareAndSet),
		Register(r, FnListAppend, listAppend),
		Register(r, FnAggMap, aggMap),
		Register(r, FnAggKey, aggKey),
		RegisterMember(r, FnEcho, func(ctx context.Context, b []byte) ([]byte, error) { return b, nil }),
		RegisterFilter(r, FilterKeyPrefix, func(prefix, key string, _ []byte) bool { return strings.HasPrefix(key, prefix) }, nil),
		RegisterFilter(r, FilterKeyGlob, globMatch, func(pattern string) error {
			_, err := path.Match(pattern, "")
			return err
		}),
	} {
		if err != nil {
			return err
		}
	}
	return nil
}

func globMatch(pattern, key string, _ []byte) bool {
	ok, _ := path.Match(pattern, key)
	return ok
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
		g.AddValue(val, a.Msgpack)
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
			g.AddValue(val, a.Msgpack)
		}
	}
	return g, ctx.Err()
}
