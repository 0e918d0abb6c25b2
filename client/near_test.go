package client_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/collocate/grid/client"
	"github.com/collocate/grid/grid/gridtest"
)

func TestNearCacheInvalidation(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 3, nil)
	c.WaitStable(30 * time.Second)
	ctx := ctxT(t, 60*time.Second)
	reader, writer := readerWriter(t, ctx, c)
	near := reader.Map("nc", client.WithNearCache(client.NearCacheConfig{}))
	other := writer.Map("nc")

	// Reads are served from the cache once filled (ristretto admits
	// asynchronously, so poll for the first hit).
	if err := other.Put(ctx, "k", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, err := near.Get(ctx, "k")
		if err != nil || string(v) != "v1" {
			t.Fatalf("get: %q %v", v, err)
		}
		if hits, _ := reader.NearCacheStats("nc"); hits > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("near cache never served a hit")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A client always reads its own writes.
	for i := range 50 {
		want := fmt.Sprint("own-", i)
		if err := near.Put(ctx, "k", []byte(want)); err != nil {
			t.Fatal(err)
		}
		if v, err := near.Get(ctx, "k"); err != nil || string(v) != want {
			t.Fatalf("own write %d: read %q %v", i, v, err)
		}
	}

	// Another client's write becomes visible once its invalidation arrives.
	var delays []time.Duration
	for i := range 100 {
		key := fmt.Sprint("d-", i%10)
		// Warm the cache with the current value.
		for range 3 {
			if _, err := near.Get(ctx, key); err != nil && i >= 10 {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Millisecond)
		}
		want := fmt.Sprint("w-", i)
		start := time.Now()
		if err := other.Put(ctx, key, []byte(want)); err != nil {
			t.Fatal(err)
		}
		for {
			v, err := near.Get(ctx, key)
			if err == nil && string(v) == want {
				break
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("write %d not visible through the near cache after 5s (reads %q)", i, v)
			}
			time.Sleep(50 * time.Microsecond)
		}
		delays = append(delays, time.Since(start))
	}
	slices.Sort(delays)
	hits, misses := reader.NearCacheStats("nc")
	t.Logf("visibility of another client's write (from its Put call): p50 %v p99 %v max %v; hits %d misses %d",
		delays[50], delays[98], delays[99], hits, misses)
}

// Issue 15 item 5: after a member joined, keys that moved to it stayed
// stale in near caches (the new member had no subscription from the
// reader, and subscribing neither cleared the cache nor stopped it from
// serving). Now a table naming an unconfirmed member clears the caches and
// they serve again only once every member confirmed.
func TestNearCacheNotStaleAfterJoin(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 2, nil)
	c.WaitStable(30 * time.Second)
	ctx := ctxT(t, 90*time.Second)
	reader, writer := readerWriter(t, ctx, c)
	near := reader.Map("nj", client.WithNearCache(client.NearCacheConfig{MaxStaleness: time.Minute}))
	other := writer.Map("nj")
	const n = 300
	for i := range n {
		if err := other.Put(ctx, fmt.Sprint(i), []byte("old")); err != nil {
			t.Fatal(err)
		}
	}
	// Warm the cache: read until most keys hit.
	deadline := time.Now().Add(10 * time.Second)
	for {
		for i := range n {
			if _, err := near.Get(ctx, fmt.Sprint(i)); err != nil {
				t.Fatal(err)
			}
		}
		if hits, _ := reader.NearCacheStats("nj"); hits > n/2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("near cache never warmed")
		}
	}
	// The writer overwrites every key as soon as the join settled, before
	// the reader (refreshing every 5 s, its reads served from its cache)
	// learns the new table: the moved keys' new primary knows no
	// subscription of the reader yet.
	c.Add(nil)
	c.WaitStable(60 * time.Second)
	for i := range n {
		if err := other.Put(ctx, fmt.Sprint(i), []byte("new")); err != nil {
			t.Fatal(err)
		}
	}
	want := c.Nodes[0].Table().Version
	for reader.TableVersion() < want {
		if time.Now().After(deadline.Add(50 * time.Second)) {
			t.Fatalf("reader at table %d, cluster at %d", reader.TableVersion(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Invalidations are pushed asynchronously: allow a moment, then every
	// read must be fresh.
	var stale int
	for end := time.Now().Add(3 * time.Second); ; {
		stale = 0
		for i := range n {
			v, err := near.Get(ctx, fmt.Sprint(i))
			if err != nil {
				t.Fatal(err)
			}
			if string(v) != "new" {
				stale++
			}
		}
		if stale == 0 || time.Now().After(end) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if stale > 0 {
		t.Fatalf("%d of %d near-cached reads stale after the reader installed the table naming the joined member", stale, n)
	}
}

// readerWriter dials one client through node 0 and one through node 1,
// closed when the test ends.
func readerWriter(t *testing.T, ctx context.Context, c *gridtest.Cluster) (reader, writer *client.Client) {
	t.Helper()
	for i, p := range []**client.Client{&reader, &writer} {
		cl, err := client.Dial(ctx, client.Config{Addrs: []string{c.Nodes[i].RPCAddr()}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Close() })
		*p = cl
	}
	return reader, writer
}
