package resp_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestMultiThroughput measures MULTI/EXEC against plain INCR on a 3-node
// in-process cluster (GRID_RESP_BENCH=1; docs/redis.md quotes it).
func TestMultiThroughput(t *testing.T) {
	if os.Getenv("GRID_RESP_BENCH") == "" {
		t.Skip("set GRID_RESP_BENCH=1")
	}
	c := newCluster(t, 3)
	ctx := ctxT(t, 120*time.Second)
	keys := c.keysOnDistinctPrimaries(t, 2, "bench:")
	const clients = 16
	const d = 3 * time.Second
	clientsOf := make([]*redis.Client, clients)
	for i := range clientsOf {
		clientsOf[i] = c.client(t, i%3, 2)
	}
	run := func(name string, op func(ctx context.Context, rc *redis.Client, i int) error) {
		var mu sync.Mutex
		var lat []time.Duration
		var wg sync.WaitGroup
		end := time.Now().Add(d)
		for i, rc := range clientsOf {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var mine []time.Duration
				for time.Now().Before(end) {
					start := time.Now()
					if err := op(ctx, rc, i); err != nil {
						t.Error(err)
						return
					}
					mine = append(mine, time.Since(start))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		slices.Sort(lat)
		if len(lat) == 0 {
			return
		}
		t.Logf("%-40s %7.0f/s  p50 %6.2f ms  p99 %6.2f ms", name, float64(len(lat))/d.Seconds(),
			float64(lat[len(lat)/2].Microseconds())/1000, float64(lat[len(lat)*99/100].Microseconds())/1000)
	}
	run("INCR (plain)", func(ctx context.Context, rc *redis.Client, i int) error {
		return rc.Incr(ctx, fmt.Sprintf("plain:%d", i)).Err()
	})
	run("MULTI INCR k EXEC (one key)", func(ctx context.Context, rc *redis.Client, i int) error {
		_, err := rc.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Incr(ctx, fmt.Sprintf("one:%d", i))
			return nil
		})
		return err
	})
	run("MULTI INCR {t}a INCR {t}b EXEC", func(ctx context.Context, rc *redis.Client, i int) error {
		_, err := rc.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Incr(ctx, fmt.Sprintf("{t%d}a", i))
			p.Incr(ctx, fmt.Sprintf("{t%d}b", i))
			return nil
		})
		return err
	})
	run("MULTI INCR a INCR b EXEC (2 primaries)", func(ctx context.Context, rc *redis.Client, i int) error {
		_, err := rc.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Incr(ctx, fmt.Sprintf("%s:%d", keys[0], i))
			p.Incr(ctx, fmt.Sprintf("%s:%d", keys[1], i))
			return nil
		})
		return err
	})
	run("MULTI INCR a INCR b EXEC (contended)", func(ctx context.Context, rc *redis.Client, i int) error {
		_, err := rc.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Incr(ctx, keys[0])
			p.Incr(ctx, keys[1])
			return nil
		})
		return err
	})
}
