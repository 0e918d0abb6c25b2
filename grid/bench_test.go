package grid_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
)

// keysOwnedBy returns n keys whose primary is node.
func keysOwnedBy(node *grid.Node, n int) []string {
	t := node.Table()
	var keys []string
	for i := 0; len(keys) < n; i++ {
		k := fmt.Sprintf("bench-%d", i)
		if t.Partitions[affinity.Partition(k, len(t.Partitions))].Primary == node.Name() {
			keys = append(keys, k)
		}
	}
	return keys
}

// BenchmarkGetLocal: embedded Get on the key's owner (no network).
func BenchmarkGetLocal(b *testing.B) {
	c := gridtest.New(b, 1, nil)
	c.WaitStable(30 * time.Second)
	n := c.Nodes[0]
	m := n.Map("bench")
	ctx := context.Background()
	keys := keysOwnedBy(n, 1024)
	for _, k := range keys {
		if err := m.Put(ctx, k, make([]byte, 100)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		if _, err := m.Get(ctx, keys[i&1023]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// putReplicated: Put on the owner with one synchronous backup on another
// in-process node over TCP.
func putReplicated(b *testing.B, callers int) {
	c := gridtest.New(b, 2, nil)
	c.WaitStable(30 * time.Second)
	n := c.Nodes[0]
	m := n.Map("bench")
	ctx := context.Background()
	keys := keysOwnedBy(n, 1024)
	val := make([]byte, 100)
	b.ReportAllocs()
	b.SetParallelism((callers + 1) / 2) // GOMAXPROCS is 2 here
	var idx atomic.Uint64
	start := time.Now()
	b.ResetTimer()
	if callers == 1 {
		for i := 0; i < b.N; i++ {
			if err := m.Put(ctx, keys[i&1023], val); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := idx.Add(1)
				if err := m.Put(ctx, keys[i&1023], val); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
}

func BenchmarkPutReplicated1(b *testing.B)  { putReplicated(b, 1) }
func BenchmarkPutReplicated64(b *testing.B) { putReplicated(b, 64) }

// BenchmarkStartThreeNodes: from starting three nodes to a stable table
// (every partition with its primary and backup, nothing pending).
func BenchmarkStartThreeNodes(b *testing.B) {
	for b.Loop() {
		start := time.Now()
		c := gridtest.New(b, 3, nil)
		c.WaitStable(60 * time.Second)
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "ms-to-stable")
		c.Close()
	}
}
