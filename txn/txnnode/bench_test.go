package txnnode_test

import (
	"context"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/txn"
)

// In-process figures (the caller's CPU included; gridbench measures
// gridnode processes): Put, a transfer within one partition, a transfer
// across two.
func BenchmarkPut(b *testing.B)            { benchTransfers(b, "put") }
func BenchmarkTransferSingle(b *testing.B) { benchTransfers(b, "single") }
func BenchmarkTransferCross(b *testing.B)  { benchTransfers(b, "cross") }

// With deferred Adds (no read round trip).
func BenchmarkAddSingle(b *testing.B) { benchTransfers(b, "single-add") }
func BenchmarkAddCross(b *testing.B)  { benchTransfers(b, "cross-add") }

func benchTransfers(b *testing.B, kind string) {
	g := newTGridB(b, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const accounts = 512
	keys := make([]string, accounts)
	m := g.Nodes[0].Map("acct")
	for i := range keys {
		if kind == "single" || kind == "single-add" {
			keys[i] = "{g" + strconv.Itoa(i/2) + "}a" + strconv.Itoa(i)
		} else {
			keys[i] = "a" + strconv.Itoa(i)
		}
		if err := m.Put(ctx, keys[i], []byte("1000000")); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	b.SetParallelism(benchPar)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(1))
		s := g.svcs[i%3]
		nm := g.Nodes[i%3].Map("acct")
		for pb.Next() {
			i = int(next.Add(2))
			a := (i * 7919) % accounts
			bb := a ^ 1
			if kind == "cross" || kind == "cross-add" {
				bb = (a + 1 + i%5) % accounts
			}
			if kind == "put" {
				if err := nm.Put(ctx, keys[a], []byte("1000000")); err != nil {
					b.Error(err)
					return
				}
				continue
			}
			do := transfer
			if kind == "single-add" || kind == "cross-add" {
				do = func(ctx context.Context, g txn.Grid, a, b string, amount int) error {
					return transferAdd(ctx, g, a, b, int64(amount))
				}
			}
			if err := do(ctx, s, keys[a], keys[bb], 1); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// benchPar is RunParallel's goroutines per CPU (GRID_TXN_BENCH_PAR).
var benchPar = func() int {
	if v, err := strconv.Atoi(os.Getenv("GRID_TXN_BENCH_PAR")); err == nil && v > 0 {
		return v
	}
	return 16
}()
