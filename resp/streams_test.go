package resp_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// XADD appends through any node, XRANGE and XREAD read through another,
// and a blocked XREAD wakes when an entry is added.
func TestStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := newCluster(t, 3)
	for _, proto := range []int{2, 3} {
		t.Run(fmt.Sprintf("resp%d", proto), func(t *testing.T) {
			ctx := ctxT(t, 60*time.Second)
			w, r := c.client(t, 0, proto), c.client(t, 2, proto)
			s := fmt.Sprintf("orders%d", proto)
			var ids []string
			for i := range 5 {
				id, err := w.XAdd(ctx, &redis.XAddArgs{Stream: s, ID: "*", Values: []string{"n", fmt.Sprint(i), "kind", "order"}}).Result()
				if err != nil {
					t.Fatal(err)
				}
				if len(ids) > 0 && id <= ids[len(ids)-1] && len(id) <= len(ids[len(ids)-1]) {
					t.Fatalf("id %s after %s", id, ids[len(ids)-1])
				}
				ids = append(ids, id)
			}
			got, err := r.XRange(ctx, s, "-", "+").Result()
			if err != nil || len(got) != 5 {
				t.Fatalf("XRANGE: %v, %v", got, err)
			}
			for i, m := range got {
				if m.ID != ids[i] || m.Values["n"] != fmt.Sprint(i) || m.Values["kind"] != "order" {
					t.Fatalf("entry %d: %+v, want id %s", i, m, ids[i])
				}
			}
			if got, err := r.XRangeN(ctx, s, ids[1], ids[3], 2).Result(); err != nil || len(got) != 2 || got[0].ID != ids[1] {
				t.Fatalf("XRANGE with bounds and COUNT: %v, %v", got, err)
			}
			if got, err := r.XRange(ctx, s, "("+ids[3], "+").Result(); err != nil || len(got) != 1 || got[0].ID != ids[4] {
				t.Fatalf("XRANGE exclusive start: %v, %v", got, err)
			}
			res, err := r.XRead(ctx, &redis.XReadArgs{Streams: []string{s, ids[2]}, Count: 10}).Result()
			if err != nil || len(res) != 1 || len(res[0].Messages) != 2 || res[0].Messages[0].ID != ids[3] {
				t.Fatalf("XREAD after %s: %v, %v", ids[2], res, err)
			}
			// A blocked XREAD from $ wakes on the next XADD.
			done := make(chan []redis.XStream, 1)
			go func() {
				res, _ := r.XRead(ctx, &redis.XReadArgs{Streams: []string{s, "$"}, Block: 10 * time.Second}).Result()
				done <- res
			}()
			time.Sleep(300 * time.Millisecond)
			id, err := w.XAdd(ctx, &redis.XAddArgs{Stream: s, ID: "*", Values: []string{"n", "late"}}).Result()
			if err != nil {
				t.Fatal(err)
			}
			select {
			case res := <-done:
				if len(res) != 1 || len(res[0].Messages) != 1 || res[0].Messages[0].ID != id {
					t.Fatalf("blocked XREAD got %v, want %s", res, id)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("blocked XREAD did not wake")
			}
			// A BLOCK with nothing new times out with a null reply.
			if _, err := r.XRead(ctx, &redis.XReadArgs{Streams: []string{s, "$"}, Block: 200 * time.Millisecond}).Result(); err != redis.Nil {
				t.Fatalf("XREAD BLOCK timeout: %v", err)
			}
			// What the grid does not do is refused clearly.
			if err := w.XAdd(ctx, &redis.XAddArgs{Stream: s, ID: "5-1", Values: []string{"a", "b"}}).Err(); err == nil || !strings.Contains(err.Error(), "use * as the ID") {
				t.Fatalf("explicit id: %v", err)
			}
			if err := w.XAdd(ctx, &redis.XAddArgs{Stream: s, MaxLen: 10, ID: "*", Values: []string{"a", "b"}}).Err(); err == nil || !strings.Contains(err.Error(), "MAXLEN") {
				t.Fatalf("MAXLEN: %v", err)
			}
		})
	}
}

// An ID beyond the stream's history names no entry: XRANGE from it and
// XREAD after it answer nothing, never the entries before it (the grid
// answers such a position with the oldest retained one).
func TestStreamIDsBeyondHistory(t *testing.T) {
	c := newCluster(t, 1)
	ctx := ctxT(t, 30*time.Second)
	r := c.client(t, 0, 2)
	var last string
	for i := range 3 {
		id, err := r.XAdd(ctx, &redis.XAddArgs{Stream: "far", ID: "*", Values: []string{"n", fmt.Sprint(i)}}).Result()
		if err != nil {
			t.Fatal(err)
		}
		last = id
	}
	ms, _, _ := strings.Cut(last, "-")
	lastPos, err := strconv.ParseUint(ms, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	beyond := strconv.FormatUint(lastPos+1000000, 10)
	got, err := r.XRange(ctx, "far", beyond, "+").Result()
	if err != nil || len(got) != 0 {
		t.Fatalf("XRANGE from beyond %s: %v, %v; want nothing", last, got, err)
	}
	res, err := r.XRead(ctx, &redis.XReadArgs{Streams: []string{"far", beyond + "-0"}, Count: 10, Block: -1}).Result()
	if err != redis.Nil || len(res) != 0 {
		t.Fatalf("XREAD after beyond %s: %v, %v; want nil", last, res, err)
	}
	if got, err := r.XRange(ctx, "far", "-", "+").Result(); err != nil || len(got) != 3 {
		t.Fatalf("XRANGE - +: %v, %v", got, err)
	}
}

// BLOCK takes any non-negative count of milliseconds, as Redis does, and
// waits at most maxBlock: a count whose nanoseconds overflow must not turn
// into no wait at all.
func TestXReadBlockOfAHugeTimeoutWaits(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := newCluster(t, 1)
	ctx := ctxT(t, 30*time.Second)
	w, r := c.client(t, 0, 2), c.client(t, 0, 2)
	first, err := w.XAdd(ctx, &redis.XAddArgs{Stream: "huge", ID: "*", Values: []string{"n", "1"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	type answer struct {
		v   any
		err error
	}
	done := make(chan answer, 1)
	go func() {
		v, err := r.Do(ctx, "XREAD", "BLOCK", strconv.FormatUint(1<<62, 10), "STREAMS", "huge", first).Result()
		done <- answer{v, err}
	}()
	time.Sleep(300 * time.Millisecond) // the XREAD is blocked by now (if not, it reads the entry at once)
	second, err := w.XAdd(ctx, &redis.XAddArgs{Stream: "huge", ID: "*", Values: []string{"n", "2"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	a := <-done
	if a.err != nil || !strings.Contains(fmt.Sprint(a.v), second) {
		t.Fatalf("XREAD BLOCK 2^62 after %s: %v, %v; want the entry %s added while it waited", first, a.v, a.err, second)
	}
}
