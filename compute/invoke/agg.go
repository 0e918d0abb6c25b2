package invoke

import (
	"context"
	"math"
	"strconv"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// Agg is an aggregation of numeric values: a partition's partial result
// or, merged, the whole answer. A value counts if it is a decimal integer
// (Map.Increment's format) or float, or, when the values are declared
// msgpack (AggArgs.Msgpack: the default codec of typed maps), a msgpack
// number; others are Skipped. (A byte string can be both: "7" is the
// decimal 7 and the msgpack 55, hence the declaration.) Integers are summed
// exactly in IntSum while they fit (Overflow otherwise); Sum holds every
// counted value as a float64.
type Agg struct {
	Count    int64   `msgpack:"count"`
	Sum      float64 `msgpack:"sum"`
	IntSum   int64   `msgpack:"int_sum"`
	Ints     int64   `msgpack:"ints"` // how many counted values were integers
	Overflow bool    `msgpack:"overflow"`
	Min      float64 `msgpack:"min"`
	Max      float64 `msgpack:"max"`
	Skipped  int64   `msgpack:"skipped"`
}

// Add counts one stored value in decimal text.
func (a *Agg) Add(val []byte) {
	if n, ok := api.ParseInt(val); ok {
		a.addInt(n)
		return
	}
	if f, err := strconv.ParseFloat(string(val), 64); err == nil {
		a.addFloat(f)
		return
	}
	a.Skipped++
}

// AddMsgpack counts one stored msgpack value.
func (a *Agg) AddMsgpack(val []byte) {
	var x any
	if wire.Decode(val, &x) == nil {
		switch n := x.(type) {
		case int8, int16, int32, int64, uint8, uint16, uint32:
			a.addInt(toInt64(n))
			return
		case uint64:
			if n <= math.MaxInt64 {
				a.addInt(int64(n))
				return
			}
			a.addFloat(float64(n))
			return
		case float32:
			a.addFloat(float64(n))
			return
		case float64:
			a.addFloat(n)
			return
		}
	}
	a.Skipped++
}

func toInt64(x any) int64 {
	switch n := x.(type) {
	case int8:
		return int64(n)
	case int16:
		return int64(n)
	case int32:
		return int64(n)
	case int64:
		return n
	case uint8:
		return int64(n)
	case uint16:
		return int64(n)
	case uint32:
		return int64(n)
	}
	return 0
}

func (a *Agg) addInt(n int64) {
	a.Ints++
	s := a.IntSum + n
	if (n > 0 && s < a.IntSum) || (n < 0 && s > a.IntSum) {
		a.Overflow = true
	}
	a.IntSum = s
	a.addFloat(float64(n))
}

func (a *Agg) addFloat(f float64) {
	if a.Count == 0 || f < a.Min {
		a.Min = f
	}
	if a.Count == 0 || f > a.Max {
		a.Max = f
	}
	a.Count++
	a.Sum += f
}

// Merge returns the aggregation of a's and b's values.
func (a Agg) Merge(b Agg) Agg {
	out := a
	switch {
	case b.Count == 0:
	case a.Count == 0:
		out.Min, out.Max = b.Min, b.Max
	default:
		out.Min, out.Max = min(a.Min, b.Min), max(a.Max, b.Max)
	}
	out.Count += b.Count
	out.Sum += b.Sum
	s := a.IntSum + b.IntSum
	if (b.IntSum > 0 && s < a.IntSum) || (b.IntSum < 0 && s > a.IntSum) {
		out.Overflow = true
	}
	out.IntSum = s
	out.Overflow = out.Overflow || b.Overflow
	out.Ints += b.Ints
	out.Skipped += b.Skipped
	return out
}

// Avg is the mean of the counted values (NaN if none).
func (a Agg) Avg() float64 {
	if a.Count == 0 {
		return math.NaN()
	}
	if a.Ints == a.Count && !a.Overflow {
		return float64(a.IntSum) / float64(a.Count)
	}
	return a.Sum / float64(a.Count)
}

// AddValue counts one stored value: msgpack if asMsgpack, else decimal
// text.
func (a *Agg) AddValue(val []byte, asMsgpack bool) {
	if asMsgpack {
		a.AddMsgpack(val)
	} else {
		a.Add(val)
	}
}

// Aggregate computes count, sum, min, max and avg of map mapName's numeric
// values: one FnAggMap task per partition at its primary, merged at the
// caller as the partials arrive.
func Aggregate(ctx context.Context, ex Executor, mapName string, args AggArgs) (Agg, error) {
	return MapReduce(ctx, ex, FnAggMap, args, PartsOptions{Map: mapName}, Agg{}, Agg.Merge)
}

// AggregateKey aggregates the numeric values of map valuesMap whose keys
// are collocated with key (same affinity key), at key's primary: one call,
// no entry leaves the member.
func AggregateKey(ctx context.Context, ex Executor, valuesMap, key string, args AggArgs) (Agg, error) {
	return Call[AggArgs, Agg](ctx, ex, valuesMap, key, FnAggKey, args)
}
