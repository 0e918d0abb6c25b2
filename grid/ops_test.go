package grid_test

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/api"
)

// TestRedisShapedOps runs Set, GetAndDelete, DeleteAll, Increment, Append,
// Expire, Persist and TTL through every node (so most calls are forwarded
// to a remote primary) and checks that replicas agree afterwards.
func TestRedisShapedOps(t *testing.T) {
	c := threeNodes(t)
	ctx := ctxT(t, 60*time.Second)
	for i, n := range c.Nodes {
		m := n.Map("ops")
		k := func(s string) string { return fmt.Sprintf("%s-%d", s, i) }

		// Set with conditions and the old value.
		r, err := m.Set(ctx, k("s"), []byte("a"), grid.SetArgs{IfPresent: true, ReturnOld: true})
		if err != nil || r.Done || r.Found || r.Old != nil {
			t.Fatalf("set XX on absent: %+v %v", r, err)
		}
		r, err = m.Set(ctx, k("s"), []byte("a"), grid.SetArgs{IfAbsent: true})
		if err != nil || !r.Done || r.Found {
			t.Fatalf("set NX on absent: %+v %v", r, err)
		}
		r, err = m.Set(ctx, k("s"), []byte("b"), grid.SetArgs{IfAbsent: true, ReturnOld: true})
		if err != nil || r.Done || !r.Found || string(r.Old) != "a" {
			t.Fatalf("set NX GET on present: %+v %v", r, err)
		}
		r, err = m.Set(ctx, k("s"), []byte("c"), grid.SetArgs{ReturnOld: true, TTL: time.Hour})
		if err != nil || !r.Done || string(r.Old) != "a" {
			t.Fatalf("set GET: %+v %v", r, err)
		}
		if ttl, err := m.TTL(ctx, k("s")); err != nil || ttl <= 59*time.Minute || ttl > time.Hour {
			t.Fatalf("ttl after set EX: %v %v", ttl, err)
		}
		if r, err = m.Set(ctx, k("s"), []byte("d"), grid.SetArgs{KeepTTL: true}); err != nil || !r.Done {
			t.Fatalf("set KEEPTTL: %+v %v", r, err)
		}
		if ttl, err := m.TTL(ctx, k("s")); err != nil || ttl <= 59*time.Minute {
			t.Fatalf("KEEPTTL lost the expiry: %v %v", ttl, err)
		}
		if err := m.Put(ctx, k("s"), []byte("e")); err != nil {
			t.Fatal(err)
		}
		if ttl, err := m.TTL(ctx, k("s")); err != nil || ttl != 0 {
			t.Fatalf("a plain put keeps no expiry: %v %v", ttl, err)
		}
		if _, err := m.Set(ctx, k("s"), nil, grid.SetArgs{IfAbsent: true, IfPresent: true}); !errors.Is(err, grid.ErrBadRequest) {
			t.Fatalf("NX and XX: %v", err)
		}

		// Increment keeps the value decimal and the expiry.
		for want := int64(1); want <= 3; want++ {
			if v, err := m.Increment(ctx, k("n"), 1); err != nil || v != want {
				t.Fatalf("incr: %d %v, want %d", v, err, want)
			}
		}
		if v, err := m.Increment(ctx, k("n"), -10); err != nil || v != -7 {
			t.Fatalf("decrby 10: %d %v", v, err)
		}
		if v, err := m.Get(ctx, k("n")); err != nil || string(v) != "-7" {
			t.Fatalf("stored counter %q %v", v, err)
		}
		if _, err := m.Increment(ctx, k("s"), 1); !errors.Is(err, grid.ErrNotInteger) {
			t.Fatalf("incr of a string: %v", err)
		}
		if err := m.Put(ctx, k("big"), []byte(fmt.Sprint(int64(math.MaxInt64)))); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Increment(ctx, k("big"), 1); !errors.Is(err, grid.ErrOverflow) {
			t.Fatalf("overflow: %v", err)
		}
		for _, bad := range []string{"01", "+1", " 1", "1 ", "-0", "", "99999999999999999999"} {
			_ = m.Put(ctx, k("bad"), []byte(bad))
			if _, err := m.Increment(ctx, k("bad"), 1); !errors.Is(err, grid.ErrNotInteger) {
				t.Fatalf("incr of %q: %v", bad, err)
			}
		}

		// Append.
		if n, err := m.Append(ctx, k("a"), []byte("foo")); err != nil || n != 3 {
			t.Fatalf("append new: %d %v", n, err)
		}
		if n, err := m.Append(ctx, k("a"), []byte("bar")); err != nil || n != 6 {
			t.Fatalf("append: %d %v", n, err)
		}
		if v, _ := m.Get(ctx, k("a")); string(v) != "foobar" {
			t.Fatalf("appended %q", v)
		}

		// Expire, Persist, TTL with conditions.
		if ok, err := m.Expire(ctx, k("missing"), time.Minute, api.ExpireAlways); err != nil || ok {
			t.Fatalf("expire missing: %v %v", ok, err)
		}
		if _, err := m.TTL(ctx, k("missing")); !errors.Is(err, grid.ErrNotFound) {
			t.Fatalf("ttl missing: %v", err)
		}
		if ok, _ := m.Expire(ctx, k("a"), time.Minute, grid.ExpireIfSet); ok {
			t.Fatal("XX on a key without expiry must not set")
		}
		if ok, _ := m.Expire(ctx, k("a"), time.Minute, grid.ExpireIfGreater); ok {
			t.Fatal("GT on a key without expiry must not set")
		}
		if ok, _ := m.Expire(ctx, k("a"), time.Hour, grid.ExpireIfLess); !ok {
			t.Fatal("LT on a key without expiry must set")
		}
		if ok, _ := m.Expire(ctx, k("a"), time.Minute, grid.ExpireIfNone); ok {
			t.Fatal("NX on a key with expiry must not set")
		}
		if ok, _ := m.Expire(ctx, k("a"), 2*time.Hour, grid.ExpireIfGreater); !ok {
			t.Fatal("GT with a later expiry must set")
		}
		if ttl, _ := m.TTL(ctx, k("a")); ttl < time.Hour+59*time.Minute {
			t.Fatalf("ttl after GT: %v", ttl)
		}
		if ok, _ := m.Persist(ctx, k("a")); !ok {
			t.Fatal("persist")
		}
		if ok, _ := m.Persist(ctx, k("a")); ok {
			t.Fatal("persist twice")
		}
		if ok, _ := m.Expire(ctx, k("a"), -time.Second, api.ExpireAlways); !ok {
			t.Fatal("expire in the past")
		}
		if _, err := m.Get(ctx, k("a")); !errors.Is(err, grid.ErrNotFound) {
			t.Fatalf("expire in the past must delete: %v", err)
		}
		if err := m.Put(ctx, k("short"), []byte("x")); err != nil {
			t.Fatal(err)
		}
		if ok, _ := m.Expire(ctx, k("short"), 50*time.Millisecond, api.ExpireAlways); !ok {
			t.Fatal("expire")
		}
		time.Sleep(80 * time.Millisecond)
		if _, err := m.Get(ctx, k("short")); !errors.Is(err, grid.ErrNotFound) {
			t.Fatalf("expired key still readable: %v", err)
		}

		// GetAndDelete and DeleteAll.
		if v, err := m.GetAndDelete(ctx, k("n")); err != nil || string(v) != "-7" {
			t.Fatalf("getdel: %q %v", v, err)
		}
		if _, err := m.GetAndDelete(ctx, k("n")); !errors.Is(err, grid.ErrNotFound) {
			t.Fatalf("getdel twice: %v", err)
		}
		keys := []string{k("d1"), k("d2"), "{tag}" + k("d3"), "{tag}" + k("d4")}
		for _, key := range keys {
			if err := m.Put(ctx, key, []byte("v")); err != nil {
				t.Fatal(err)
			}
		}
		n, err := m.DeleteAll(ctx, append(keys, k("nothere"), keys[0]))
		if err != nil || n != len(keys) {
			t.Fatalf("delete all: %d %v, want %d", n, err, len(keys))
		}
		if got, _ := m.GetAll(ctx, keys); len(got) != 0 {
			t.Fatalf("left after DeleteAll: %v", got)
		}
	}
	if err := c.CheckReplicas(20 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestScanKeysCursor walks a map with ScanKeys from every node while keys
// are written and deleted concurrently: every key present for the whole
// scan must be returned.
func TestScanKeysCursor(t *testing.T) {
	c := threeNodes(t)
	ctx := ctxT(t, 60*time.Second)
	m := c.Nodes[0].Map("scan")
	const stable = 2000
	entries := map[string][]byte{}
	for i := range stable {
		entries[fmt.Sprintf("stable:%d", i)] = []byte("v")
	}
	entries["{t}one"] = []byte("v")
	entries["{t}two"] = []byte("v")
	if err := m.PutAll(ctx, entries); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		w := c.Nodes[1].Map("scan")
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = w.Put(ctx, fmt.Sprintf("churn:%d", i%300), []byte("x"))
			_, _ = w.Delete(ctx, fmt.Sprintf("churn:%d", (i+150)%300))
		}
	}()
	for _, n := range c.Nodes {
		for _, count := range []int{1, 10, 1000} {
			seen := map[string]int{}
			var cursor uint64
			calls := 0
			for {
				keys, next, err := n.Map("scan").ScanKeys(ctx, cursor, count, "")
				if err != nil {
					t.Fatal(err)
				}
				calls++
				for _, k := range keys {
					seen[k]++
				}
				if cursor = next; cursor == 0 {
					break
				}
			}
			for k := range entries {
				if seen[k] != 1 {
					t.Fatalf("count %d via %s: key %q seen %d times", count, n.Name(), k, seen[k])
				}
			}
			t.Logf("count %d: %d calls, %d keys", count, calls, len(seen))
		}
	}
	close(stop)
	<-done

	// MATCH filters at the primaries.
	var got []string
	var cursor uint64
	for {
		keys, next, err := m.ScanKeys(ctx, cursor, 100, "{t}*")
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, keys...)
		if cursor = next; cursor == 0 {
			break
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"{t}one", "{t}two"}) {
		t.Fatalf("match {t}*: %v", got)
	}
	// A cursor past the last partition is rejected, not a panic.
	if _, _, err := m.ScanKeys(ctx, api.ScanCursor(affinity.DefaultPartitionCount, 0), 10, ""); !errors.Is(err, grid.ErrBadRequest) {
		t.Fatalf("bad cursor: %v", err)
	}
}

// TestBatch runs Map.Batch through every node: one request per owner, ops
// of a partition in order, per-op errors.
func TestBatch(t *testing.T) {
	c := threeNodes(t)
	ctx := ctxT(t, 30*time.Second)
	for i, n := range c.Nodes {
		m := n.Map("batch")
		var ops []grid.BatchOp
		for k := range 50 {
			key := fmt.Sprintf("n%d:k%d", i, k)
			ops = append(ops,
				grid.BatchOp{Kind: grid.BatchGet, Key: key},
				grid.BatchOp{Kind: grid.BatchSet, Key: key, Value: []byte("a")},
				grid.BatchOp{Kind: grid.BatchSet, Key: key, Value: []byte("b"), Set: grid.SetArgs{ReturnOld: true}},
				grid.BatchOp{Kind: grid.BatchSet, Key: key, Value: []byte("c"), Set: grid.SetArgs{IfAbsent: true}},
				grid.BatchOp{Kind: grid.BatchGet, Key: key},
			)
		}
		ops = append(ops, grid.BatchOp{Kind: grid.BatchSet, Key: "bad", Set: grid.SetArgs{IfAbsent: true, IfPresent: true}})
		res := m.Batch(ctx, ops)
		if len(res) != len(ops) {
			t.Fatalf("%d results for %d ops", len(res), len(ops))
		}
		for j := 0; j+5 <= len(ops); j += 5 {
			r := res[j : j+5]
			for _, x := range r {
				if x.Err != nil {
					t.Fatalf("op error: %v", x.Err)
				}
			}
			if r[0].Found || !r[1].Done || r[1].Found || !r[2].Done || string(r[2].Value) != "a" ||
				r[3].Done || !r[3].Found || !r[4].Found || string(r[4].Value) != "b" {
				t.Fatalf("ops of %s out of order: %+v", ops[j].Key, r)
			}
		}
		if !errors.Is(res[len(res)-1].Err, grid.ErrBadRequest) {
			t.Fatalf("bad op: %v", res[len(res)-1].Err)
		}
	}
	if err := c.CheckReplicas(20 * time.Second); err != nil {
		t.Fatal(err)
	}
}
