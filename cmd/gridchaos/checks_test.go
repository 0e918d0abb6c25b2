package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/client"
)

const s = int64(time.Second)

// ticks returns success times every step ns in [from, to).
func ticks(from, to, step int64) []int64 {
	var out []int64
	for t := from; t < to; t += step {
		out = append(out, t)
	}
	return out
}

func TestProgressFailsWhenNothingIsAcknowledged(t *testing.T) {
	// The grid applies every write but answers ErrTimeout: nothing is
	// acknowledged, nothing is lost, the history is trivially linearizable.
	pc := &progressCheck{
		workers: []*progress{{name: "set-0", ops: 5000}, {name: "register-0", wantReads: true, reads: ticks(0, 30*s, s/10)}},
		faults:  []faultRec{{kind: "kill", desc: "kill", start: 5 * s, end: 8 * s}},
		safeAt:  []int64{10 * s, 25 * s},
		begin:   0, final: 25 * s, stop: 31 * s, window: 5 * time.Second, minRate: 1,
	}
	v := pc.check()
	if len(v) < 3 {
		t.Fatalf("want floor, fault window and final window violations, got %q", v)
	}
	for _, want := range []string{"set-0 had 0 acknowledged writes of 5000", "after fault 1 (kill)", "after the final heal"} {
		if !strings.Contains(strings.Join(v, "\n"), want) {
			t.Errorf("no violation mentions %q: %q", want, v)
		}
	}
}

func TestProgressFlagsAWorkerThatNeverRecovers(t *testing.T) {
	healthy := &progress{name: "set-0", writes: ticks(0, 40*s, s/10)}
	stuck := &progress{name: "append-0", writes: ticks(0, 12*s, s/10)} // hangs from the fault on
	pc := &progressCheck{
		workers: []*progress{healthy, stuck},
		faults:  []faultRec{{kind: "kill", desc: "kill", start: 12 * s, end: 14 * s}},
		safeAt:  []int64{15 * s, 30 * s},
		final:   30 * s, stop: 40 * s, window: 5 * time.Second, minRate: 0.1,
	}
	v := pc.check()
	if len(v) != 2 || !strings.Contains(v[0], "append-0 (writes)") || strings.Contains(v[0], "set-0") {
		t.Fatalf("want the fault window and the final window to name append-0 only, got %q", v)
	}
	// Unavailable until the end of the run: 40 s - 12 s.
	if u := pc.unavailability(); len(u) != 1 || u[0] != 28000 {
		t.Fatalf("unavailability %v, want [28000]", u)
	}
	if g := pc.maxGap(); g != 28100 { // last success at 11.9 s
		t.Fatalf("max gap %v ms, want 28100", g)
	}

	// Healthy workers pass.
	pc.workers = []*progress{healthy}
	if v := pc.check(); len(v) != 0 {
		t.Fatalf("healthy run flagged: %q", v)
	}
}

func TestProgressWindowStartsAtRecovery(t *testing.T) {
	// Successes only before the fault and long after the recovery window.
	w := &progress{name: "set-0", writes: append(ticks(0, 10*s, s/10), ticks(22*s, 40*s, s/10)...)}
	pc := &progressCheck{
		workers: []*progress{w},
		faults:  []faultRec{{kind: "pause", desc: "pause", start: 10 * s, end: 13 * s}},
		safeAt:  []int64{5 * s, 15 * s, 30 * s},
		final:   30 * s, stop: 40 * s, window: 5 * time.Second, minRate: 0.1,
	}
	if v := pc.check(); len(v) != 1 || !strings.Contains(v[0], "safe at 15.0s") {
		t.Fatalf("want one violation for the window after 15 s, got %q", v)
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		want outcome
	}{
		{nil, acked},
		{client.ErrTimeout, unknown},
		{fmt.Errorf("x: %w", client.ErrReplication), unknown},
		{errors.New("connection reset"), unknown},
		{fmt.Errorf("x: %w", client.ErrUnavailable), refused},
		{client.ErrBusy, refused},
	} {
		if got := classify(c.err); got != c.want {
			t.Errorf("classify(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestTallyAppends(t *testing.T) {
	recs := []appendRec{
		{"k1", "0.0;", acked},
		{"k1", "0.1;", acked},   // lost
		{"k1", "0.2;", unknown}, // absent: fine
		{"k2", "1.0;", unknown}, // present once: fine
		{"k2", "1.1;", acked},   // twice: duplicated
		{"k2", "1.2;", refused}, // present: phantom
		{"k2", "1.3;", unknown}, // twice: duplicated even if unknown
	}
	values := map[string][]byte{
		"k1": []byte("0.0;9.9;"), // 9.9 was never appended
		"k2": []byte("1.0;1.1;1.1;1.2;1.3;1.3;0.0;"),
	}
	r := tallyAppends(recs, values)
	got := [6]int{r.acked, r.unknown, r.lost, r.duplicated, r.phantom, r.foreign}
	if want := [6]int{3, 3, 1, 3, 1, 2}; got != want { // 0.0; also counts twice (k1 and k2)
		t.Fatalf("tally (acked, unknown, lost, duplicated, phantom, foreign) = %v, want %v; %q", got, want, r.examples)
	}
	if r := tallyAppends(recs[:1], map[string][]byte{"k1": []byte("0.0;")}); r.lost+r.duplicated+r.phantom+r.foreign != 0 {
		t.Fatalf("clean history flagged: %+v", r)
	}
}

func TestCounterBounds(t *testing.T) {
	l := &counterLog{keys: 3, acked: map[string]int{"ctr0": 5, "ctr1": 5, "ctr2": 0}, unknown: map[string]int{"ctr0": 2, "ctr1": 2}}
	bad := counterBounds(l, map[string][]byte{"ctr0": []byte("6"), "ctr1": []byte("8")})
	if len(bad) != 1 || !strings.Contains(bad[0], "ctr1 = 8") {
		t.Fatalf("want only ctr1 (8 > 5+2) flagged, got %q", bad)
	}
	bad = counterBounds(l, map[string][]byte{"ctr0": []byte("4")})
	if len(bad) != 2 { // ctr0 below 5, ctr1 absent (0 < 5)
		t.Fatalf("want ctr0 and ctr1 flagged, got %q", bad)
	}
}

func TestWouldLose(t *testing.T) {
	h := &harness{amnesiac: map[string]bool{}}
	for _, n := range []string{"n1", "n2", "n3"} {
		h.procs = append(h.procs, &proc{name: n, running: true})
	}
	cv := &clusterView{Partitions: []partView{
		{Primary: "n1", Backups: []string{"n2"}},
		{Primary: "n2", Backups: []string{"n3"}, Pending: []string{"n1"}},
	}}
	if w := h.wouldLose(cv, "n1"); w != "" {
		t.Fatalf("n1 has an in-sync backup everywhere: %s", w)
	}
	if w := h.wouldLose(cv, "n1", "n2"); w == "" {
		t.Fatal("killing n1 and n2 loses partition 0")
	}
	// n2 restarted empty while the table still names its old incarnation.
	h.amnesiac["n2"] = true
	if w := h.wouldLose(cv, "n1"); w == "" {
		t.Fatal("n2's listed copy of partition 0 is gone: killing n1 loses it")
	}
	if w := h.wouldLose(cv, "n3"); w == "" {
		t.Fatal("n3 holds partition 1's only valid copy (n1 is only pending)")
	}
	// A partition already without a valid copy changes nothing.
	h.procs[0].running = false
	if w := h.wouldLose(cv, "n3"); w == "" {
		t.Fatal("n3 still holds partition 1's only valid copy")
	}
}

func TestIdleKeysCoverEveryPartition(t *testing.T) {
	keys := idleKeys(3000, 271)
	if len(keys) < 3000 {
		t.Fatalf("%d keys", len(keys))
	}
	seen := map[int]int{}
	for _, k := range keys {
		seen[affinity.Partition(k, 271)]++
	}
	if len(seen) != 271 {
		t.Fatalf("keys cover %d of 271 partitions", len(seen))
	}
}

func TestLeaderOfIsFoundByRPCAddress(t *testing.T) {
	h := &harness{cfg: Config{BasePort: 27946}, amnesiac: map[string]bool{}}
	for i := range 3 {
		h.slot(i).running = true
	}
	// raft knows its servers by RPC address: /v1/cluster's leader is one.
	if p := h.leaderOf(&clusterView{Leader: "127.0.0.2:27947"}); p == nil || p.name != "n2" {
		t.Fatalf("leader 127.0.0.2:27947 is %v, want n2", p)
	}
	if p := h.leaderOf(&clusterView{Leader: ""}); p != nil {
		t.Fatalf("no leader is %s", p.name)
	}
}
