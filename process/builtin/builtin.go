// Package builtin holds processors gridnode can run by name (-processors),
// for the chaos suite's exactly-once workload and the benchmarks, and the
// keys and checks that go with them.
//
// "chain" is a two-stage chain that crosses partitions through the outbox:
//
//   - chain1 handles stream ChainIn (key InKey(id), value Value(id, bucket,
//     amount)): it counts the event in map ChainStage1 under the event's
//     key and emits it to stream ChainMid under MidKey(bucket, id), in
//     the bucket's partition;
//   - chain2 handles ChainMid: it counts the event in ChainStage2 under
//     its key and adds amount to the bucket's projection (map ChainProj,
//     key ProjKey(bucket)).
//
// An event applied twice shows as a count of 2; a projection must equal
// the sum of the amounts of the events stage 2 counted.
//
// "single" is one stage: stream SingleIn, each event counted in map
// SingleState under its key.
package builtin

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/collocate/grid/process"
)

// Names of the chain's streams and maps.
const (
	ChainIn     = "chain.in"
	ChainMid    = "chain.mid"
	ChainStage1 = "chain.s1"
	ChainStage2 = "chain.s2"
	ChainProj   = "chain.proj"
	SingleIn    = "single.in"
	SingleState = "single.state"
)

// set returns the processor set name (nil: unknown).
func set(name string) func() []process.Processor {
	switch name {
	case "chain":
		return Chain
	case "single":
		return Single
	}
	return nil
}

// Names lists the sets.
func Names() []string { return []string{"chain", "single"} }

// Register registers the comma-separated sets on rt, each processor
// lingering linger (Processor.Linger).
func Register(rt *process.Runtime, list string, linger time.Duration) error {
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		set := set(name)
		if set == nil {
			return fmt.Errorf("unknown processor set %q (known: %s)", name, strings.Join(Names(), ", "))
		}
		for _, p := range set() {
			p.Linger = linger
			if err := rt.Register(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// Valid reports whether list names only known sets.
func Valid(list string) error {
	for _, name := range strings.Split(list, ",") {
		if name = strings.TrimSpace(name); name != "" {
			if set(name) == nil {
				return fmt.Errorf("unknown processor set %q (known: %s)", name, strings.Join(Names(), ", "))
			}
		}
	}
	return nil
}

// InKey is the input key of event id.
func InKey(id string) string { return "{" + id + "}" }

// MidKey is the stage-2 key of event id of bucket.
func MidKey(bucket int, id string) string { return ProjKey(bucket) + id }

// ProjKey is bucket's projection key.
func ProjKey(bucket int) string { return "{b" + strconv.Itoa(bucket) + "}" }

// Value encodes an input event.
func Value(id string, bucket int, amount int64) []byte {
	return []byte(id + " " + strconv.Itoa(bucket) + " " + strconv.FormatInt(amount, 10))
}

// ParseValue decodes an input event.
func ParseValue(b []byte) (id string, bucket int, amount int64, err error) {
	f := strings.Fields(string(b))
	if len(f) != 3 {
		return "", 0, 0, fmt.Errorf("chain event %q: want 'id bucket amount'", b)
	}
	if bucket, err = strconv.Atoi(f[1]); err != nil {
		return "", 0, 0, err
	}
	amount, err = strconv.ParseInt(f[2], 10, 64)
	return f[0], bucket, amount, err
}

// Chain is the two-stage chain.
func Chain() []process.Processor {
	return []process.Processor{
		{Name: "chain1", Stream: ChainIn, Handler: chain1},
		{Name: "chain2", Stream: ChainMid, Handler: chain2},
	}
}

func chain1(_ context.Context, c *process.Context, e process.Event) error {
	id, bucket, _, err := ParseValue(e.Value)
	if err != nil {
		return err
	}
	add(c, ChainStage1, e.Key, 1)
	c.Emit(ChainMid, MidKey(bucket, id), e.Value)
	return nil
}

func chain2(_ context.Context, c *process.Context, e process.Event) error {
	_, bucket, amount, err := ParseValue(e.Value)
	if err != nil {
		return err
	}
	add(c, ChainStage2, e.Key, 1)
	add(c, ChainProj, ProjKey(bucket), amount)
	return nil
}

// Single is the one-stage set.
func Single() []process.Processor {
	return []process.Processor{{Name: "single", Stream: SingleIn, Handler: func(_ context.Context, c *process.Context, e process.Event) error {
		add(c, SingleState, e.Key, 1)
		return nil
	}}}
}

// add adds d to the integer at key of map m.
func add(c *process.Context, m, key string, d int64) {
	var n int64
	if v, ok := c.Get(m, key); ok {
		n, _ = strconv.ParseInt(string(v), 10, 64)
	}
	c.Set(m, key, []byte(strconv.FormatInt(n+d, 10)), 0)
}
