package resp_test

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/resp"
	"github.com/redis/go-redis/v9"
)

// keysOwnedBy returns n keys whose partition's primary is node name.
func keysOwnedBy(t *testing.T, c *cluster, name string, n int) []string {
	t.Helper()
	tbl := c.Nodes[0].Table()
	var keys []string
	for i := 0; len(keys) < n; i++ {
		k := fmt.Sprintf("ak:%d", i)
		if tbl.Partitions[affinity.Partition(k, c.Nodes[0].Partitions())].Primary == name {
			keys = append(keys, k)
		}
		if i > 100_000 {
			t.Fatalf("no keys with primary %s", name)
		}
	}
	return keys
}

// errKind names a failed command's error for the log.
func errKind(err error) string {
	var re redis.Error
	if errors.As(err, &re) {
		return strings.SplitN(re.Error(), " ", 2)[0]
	}
	return fmt.Sprintf("%T", err)
}

// TestAppendsApplyOnceUnderKill: 24 go-redis clients with default options
// (which retry TRYAGAIN, and a read timeout, 3 times) APPEND unique tokens
// through one node to keys whose primary is another node, and that node is
// killed mid-run. Every token whose APPEND was acknowledged must appear
// exactly once, no token may appear twice at all, and no token answered
// TRYAGAIN (which promises that nothing was applied) may appear: an answer
// that invites a retry after the write may have been applied duplicates it
// (issue 15 item 1; DESIGN.md rule 7).
func TestAppendsApplyOnceUnderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	// A short CommandTimeout makes the commands caught by the failover end
	// while their outcome is still open: exactly the answers that must
	// not invite a retry.
	c := newClusterWith(t, 3, func(cfg *resp.Config) { cfg.CommandTimeout = 250 * time.Millisecond })
	ctx := ctxT(t, 120*time.Second)
	keys := keysOwnedBy(t, c, "n1", 48)

	const workers = 24
	var (
		mu      sync.Mutex
		acked   = map[string]bool{}
		failed  = map[string]int{}    // error kind -> count
		refused = map[string]string{} // token -> TRYAGAIN error: must not be applied
		killed  atomic.Bool
		after   atomic.Int64 // acknowledged after the kill
		stop    = make(chan struct{})
		wg      sync.WaitGroup
		pattern = regexp.MustCompile(`<\d+\.\d+>`)
	)
	for w := range workers {
		rc := redis.NewClient(&redis.Options{Addr: c.addrs[0]}) // default options
		t.Cleanup(func() { _ = rc.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key, tok := keys[(w*7+i)%len(keys)], fmt.Sprintf("<%d.%d>", w, i)
				err := rc.Append(ctx, key, tok).Err()
				mu.Lock()
				if err == nil {
					acked[tok] = true
					if killed.Load() {
						after.Add(1)
					}
				} else {
					failed[errKind(err)]++
					if errKind(err) == "TRYAGAIN" {
						refused[tok] = err.Error()
					}
				}
				mu.Unlock()
			}
		}()
	}
	waitFor := func(what string, cond func() bool) {
		deadline := time.Now().Add(60 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				close(stop)
				wg.Wait()
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("appends before the kill", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= 500
	})
	_ = c.srvs[1].Close()
	c.srvs[1] = nil
	c.Kill(1)
	killed.Store(true)
	waitFor("appends after the kill", func() bool { return after.Load() >= 500 })
	close(stop)
	wg.Wait()
	c.WaitStable(30 * time.Second)

	seen := map[string]int{}
	rc := redis.NewClient(&redis.Options{Addr: c.addrs[2]})
	t.Cleanup(func() { _ = rc.Close() })
	for _, k := range keys {
		v, err := rc.Get(ctx, k).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatalf("GET %s: %v", k, err)
		}
		for _, tok := range pattern.FindAllString(v, -1) {
			seen[tok]++
		}
	}
	var dup, lost, lied []string
	for tok, n := range seen {
		if n > 1 {
			dup = append(dup, fmt.Sprintf("%s x%d", tok, n))
		}
	}
	for tok := range acked {
		if seen[tok] == 0 {
			lost = append(lost, tok)
		}
	}
	for tok, msg := range refused {
		if seen[tok] > 0 {
			lied = append(lied, tok+": "+msg)
		}
	}
	sort.Strings(dup)
	sort.Strings(lost)
	sort.Strings(lied)
	t.Logf("%d acknowledged (%d after the kill), failed by kind %v, %d tokens stored, %d duplicated, %d lost, %d applied after TRYAGAIN",
		len(acked), after.Load(), failed, len(seen), len(dup), len(lost), len(lied))
	if len(dup) > 0 {
		t.Errorf("tokens applied more than once: %v", dup[:min(len(dup), 10)])
	}
	if len(lied) > 0 {
		// TRYAGAIN promises that nothing was applied: go-redis sent the
		// token again, up to 3 times, each answered TRYAGAIN.
		t.Errorf("tokens applied although every attempt was answered TRYAGAIN: %q", lied[:min(len(lied), 5)])
	}
	if len(lost) > 0 {
		t.Errorf("acknowledged tokens missing: %v", lost[:min(len(lost), 10)])
	}
}
