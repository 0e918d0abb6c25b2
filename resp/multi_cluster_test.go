package resp_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/resp"
	"github.com/redis/go-redis/v9"
)

// keysOnDistinctPrimaries returns n keys whose partitions have their
// primaries on n different nodes (n <= nodes).
func (c *cluster) keysOnDistinctPrimaries(t *testing.T, n int, prefix string) []string {
	t.Helper()
	parts := c.Nodes[0].Partitions()
	used := map[int]bool{}
	var out []string
	for i := 0; len(out) < n && i < 100000; i++ {
		k := prefix + strconv.Itoa(i)
		p := affinity.Partition(k, parts)
		for ni, nd := range c.Nodes {
			if nd.Leads(p) && !used[ni] {
				used[ni] = true
				out = append(out, k)
			}
		}
	}
	if len(out) < n {
		t.Fatalf("found %d keys on distinct primaries, want %d", len(out), n)
	}
	return out
}

// MULTI/EXEC writes keys of different partitions (and primaries) all or
// nothing: readers that read both keys in MULTI/EXEC never see one write
// without the other, while a writer keeps writing them together.
func TestMultiAcrossPartitionsIsAtomic(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := newCluster(t, 3)
	ctx := ctxT(t, 90*time.Second)
	keys := c.keysOnDistinctPrimaries(t, 2, "atomic:")
	a, b := keys[0], keys[1]
	const writes = 100
	var done atomic.Bool
	var wg sync.WaitGroup
	var reads atomic.Int64
	errs := make(chan error, 4)
	for r := 1; r <= 2; r++ {
		rc := c.client(t, r, 2)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !done.Load() {
				var ga, gb *redis.StringCmd
				_, err := rc.TxPipelined(ctx, func(p redis.Pipeliner) error {
					ga, gb = p.Get(ctx, a), p.Get(ctx, b)
					return nil
				})
				if err != nil && !errors.Is(err, redis.Nil) {
					errs <- fmt.Errorf("reader: %w", err)
					return
				}
				if ga.Val() != gb.Val() {
					errs <- fmt.Errorf("a reader saw half a transaction: %s=%q %s=%q", a, ga.Val(), b, gb.Val())
					return
				}
				reads.Add(1)
			}
		}()
	}
	w := c.client(t, 0, 2)
	for i := 1; i <= writes && len(errs) == 0; i++ {
		_, err := w.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, a, i, 0)
			p.Set(ctx, b, i, 0)
			return nil
		})
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	done.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := w.MGet(ctx, a, b).Val(); fmt.Sprint(got) != fmt.Sprintf("[%d %d]", writes, writes) {
		t.Fatalf("after the writes: %v", got)
	}
	t.Logf("%d transactional reads of two partitions during %d transactional writes", reads.Load(), writes)
}

// INCR transactions of several connections on the same keys give the
// exact total, and each EXEC's replies come from one serial order: the
// two counters, always incremented together, are always seen equal.
func TestConcurrentIncrTransactions(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := newCluster(t, 3)
	ctx := ctxT(t, 90*time.Second)
	keys := c.keysOnDistinctPrimaries(t, 2, "ctr:")
	const clients, rounds = 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		rc := c.client(t, i%3, 2)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				var x, y *redis.IntCmd
				_, err := rc.TxPipelined(ctx, func(p redis.Pipeliner) error {
					x = p.Incr(ctx, keys[0])
					y = p.IncrBy(ctx, keys[1], 2)
					return nil
				})
				if err != nil {
					errs <- err
					return
				}
				if y.Val() != 2*x.Val() {
					errs <- fmt.Errorf("EXEC answered INCR %d and INCRBY 2 %d: not one serial order", x.Val(), y.Val())
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got := c.client(t, 1, 2).MGet(ctx, keys...).Val()
	if want := fmt.Sprintf("[%d %d]", clients*rounds, 2*clients*rounds); fmt.Sprint(got) != want {
		t.Fatalf("counters %v, want %s", got, want)
	}
}

// The WATCH idiom (read, WATCH, MULTI, write, EXEC, again on a null
// reply) gives the exact total under contention, and EXEC aborted by a
// changed watched key applies nothing, on any key.
func TestWatch(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := newCluster(t, 3)
	ctx := ctxT(t, 90*time.Second)
	keys := c.keysOnDistinctPrimaries(t, 2, "w:")
	k, other := keys[0], keys[1]

	c1, c2 := dialRaw(t, c.addrs[0]), dialRaw(t, c.addrs[1])
	c1.do("SET", k, "1")
	want := func(got, want string) {
		t.Helper()
		if got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	want(c1.do("WATCH", k), "+OK\r\n")
	want(c2.do("SET", k, "2"), "+OK\r\n")
	want(c1.do("MULTI"), "+OK\r\n")
	want(c1.do("SET", k, "3"), "+QUEUED\r\n")
	want(c1.do("SET", other, "3"), "+QUEUED\r\n")
	want(c1.do("EXEC"), "*-1\r\n")
	want(c2.do("MGET", k, other), "*2\r\n$1\r\n2\r\n$-1\r\n")
	// The watches are gone after EXEC; an unchanged watched key commits.
	want(c1.do("WATCH", k, other), "+OK\r\n")
	want(c1.do("MULTI"), "+OK\r\n")
	want(c1.do("INCR", k), "+QUEUED\r\n")
	want(c1.do("SET", other, "4"), "+QUEUED\r\n")
	want(c1.do("EXEC"), "*2\r\n:3\r\n+OK\r\n")
	// A watched key written on another node and then EXEC on a third.
	c3 := dialRaw(t, c.addrs[2])
	want(c3.do("WATCH", other), "+OK\r\n")
	want(c1.do("DEL", other), ":1\r\n")
	want(c3.do("MULTI"), "+OK\r\n")
	want(c3.do("SET", k, "9"), "+QUEUED\r\n")
	want(c3.do("EXEC"), "*-1\r\n")
	want(c3.do("GET", k), "$1\r\n3\r\n")

	const clients, rounds = 3, 10
	var wg sync.WaitGroup
	var aborted atomic.Int64
	errs := make(chan error, clients)
	for i := range clients {
		rc := c.client(t, i, 2)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				if err := watchIncr(ctx, rc, "w:total", &aborted); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := c.client(t, 0, 2).Get(ctx, "w:total").Val(); got != strconv.Itoa(clients*rounds) {
		t.Fatalf("total %s, want %d", got, clients*rounds)
	}
	t.Logf("%d EXECs aborted by WATCH", aborted.Load())
}

// watchIncr adds 1 to key with GET and SET under WATCH, again until EXEC
// commits.
func watchIncr(ctx context.Context, rc *redis.Client, key string, aborted *atomic.Int64) error {
	for ctx.Err() == nil {
		err := rc.Watch(ctx, func(tx *redis.Tx) error {
			v, err := tx.Get(ctx, key).Int()
			if err != nil && !errors.Is(err, redis.Nil) {
				return err
			}
			_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.Set(ctx, key, v+1, 0)
				return nil
			})
			return err
		}, key)
		if errors.Is(err, redis.TxFailedErr) {
			aborted.Add(1)
			continue
		}
		return err
	}
	return ctx.Err()
}

// A command that cannot run in a grid transaction is refused when queued
// (EXECABORT at EXEC, nothing applied); a runtime error inside EXEC is
// that command's reply while the others apply; a client that leaves
// inside MULTI leaves nothing behind.
func TestMultiErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := newCluster(t, 3)
	keys := c.keysOnDistinctPrimaries(t, 3, "e:")
	g := dialRaw(t, c.addrs[0])
	want := func(got, prefix string) {
		t.Helper()
		if !strings.HasPrefix(got, prefix) {
			t.Fatalf("got %q, want %q...", got, prefix)
		}
	}
	want(g.do("MULTI"), "+OK")
	want(g.do("SET", keys[0], "1"), "+QUEUED")
	for _, cmd := range [][]string{
		{"TTL", keys[0]}, {"KEYS", "*"}, {"FLUSHDB"}, {"EXPIRE", keys[0], "10", "NX"},
		{"FCALL", "counter.add", "1", keys[0]}, {"CLIENT", "ID"}, {"XADD", "s", "*", "f", "v"},
	} {
		want(g.do(cmd...), "-ERR Command not allowed inside a transaction")
	}
	want(g.do("SET", keys[1], "1"), "+QUEUED")
	want(g.do("EXEC"), "-EXECABORT Transaction discarded because of previous errors.")
	want(g.do("EXISTS", keys[0], keys[1]), ":0")

	want(g.do("SET", keys[0], "text"), "+OK")
	want(g.do("MULTI"), "+OK")
	want(g.do("INCR", keys[0]), "+QUEUED")
	want(g.do("SET", keys[1], "b"), "+QUEUED")
	want(g.do("APPEND", keys[2], "c"), "+QUEUED")
	want(g.do("EXEC"), "*3\r\n-ERR value is not an integer or out of range\r\n+OK\r\n:1\r\n")
	want(g.do("MGET", keys[0], keys[1], keys[2]), "*3\r\n$4\r\ntext\r\n$1\r\nb\r\n$1\r\nc\r\n")

	left, watcher := dialRaw(t, c.addrs[1]), dialRaw(t, c.addrs[1])
	want(left.do("MULTI"), "+OK")
	want(left.do("SET", "e:left", "1"), "+QUEUED")
	_ = left.nc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(watcher.do("INFO", "clients"), "connected_clients:1\r\n") {
		if time.Now().After(deadline) {
			t.Fatal("the server did not notice the client left")
		}
		time.Sleep(10 * time.Millisecond)
	}
	want(g.do("EXISTS", "e:left"), ":0")
}

// A MULTI queue is bounded: past maxQueued commands, or
// Config.MaxQueryBuffer bytes, commands are refused and EXEC aborts.
func TestMultiQueueLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	t.Run("commands", func(t *testing.T) {
		c := newCluster(t, 1)
		g := dialRaw(t, c.addrs[0])
		g.do("MULTI")
		const n = 10000
		var b strings.Builder
		for range n + 1 {
			b.Write(encode("INCR", "q"))
		}
		g.send([]byte(b.String()))
		for i := range n + 1 {
			r, err := g.reply()
			if err != nil {
				t.Fatal(err)
			}
			if i < n && r != "+QUEUED\r\n" || i == n && !strings.HasPrefix(r, "-ERR MULTI queue full") {
				t.Fatalf("command %d: %q", i+1, r)
			}
		}
		if r := g.do("EXEC"); !strings.HasPrefix(r, "-EXECABORT") {
			t.Fatalf("EXEC: %q", r)
		}
		if r := g.do("EXISTS", "q"); r != ":0\r\n" {
			t.Fatalf("after the aborted EXEC: %q", r)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		c := newClusterWith(t, 1, func(cfg *resp.Config) {
			cfg.MaxBulk = 1 << 10
			cfg.MaxQueryBuffer = cfg.MaxBulk + 64<<10
		})
		g := dialRaw(t, c.addrs[0])
		g.do("MULTI")
		v := strings.Repeat("v", 1000)
		full := 0
		for i := range 100 {
			r := g.do("SET", "b"+strconv.Itoa(i), v)
			if strings.HasPrefix(r, "-ERR MULTI queue full") {
				full++
			} else if r != "+QUEUED\r\n" {
				t.Fatalf("SET %d: %q", i, r)
			}
		}
		if full == 0 || full == 100 {
			t.Fatalf("%d of 100 commands of 1 KB refused with a 65 KB limit", full)
		}
		if r := g.do("EXEC"); !strings.HasPrefix(r, "-EXECABORT") {
			t.Fatalf("EXEC: %q", r)
		}
		if r := g.do("EXISTS", "b0"); r != ":0\r\n" {
			t.Fatalf("after the aborted EXEC: %q", r)
		}
	})
}

// An EXEC with watched keys that conflicts on another key (here a counter
// every client increments) runs again rather than answering null: only a
// changed watched key aborts it.
func TestWatchedExecRetriesOtherConflicts(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := newCluster(t, 3)
	ctx := ctxT(t, 90*time.Second)
	const clients, rounds = 4, 20
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		rc := c.client(t, i%3, 2)
		own := fmt.Sprintf("own:%d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				err := rc.Watch(ctx, func(tx *redis.Tx) error {
					_, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
						p.Incr(ctx, "shared")
						p.Set(ctx, own, r, 0)
						return nil
					})
					return err
				}, own)
				if err != nil {
					errs <- fmt.Errorf("client %d round %d: %w", i, r, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := c.client(t, 0, 2).Get(ctx, "shared").Val(); got != strconv.Itoa(clients*rounds) {
		t.Fatalf("shared %s, want %d", got, clients*rounds)
	}
}
