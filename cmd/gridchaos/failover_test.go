package main

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
)

// TestFailoverSmoke keeps the failover mode working: one SIGKILL of the
// first member (usually the raft leader) of 3 real gridnode processes
// with -profile test, 8 writers. It checks that the tool measured
// something, not how fast the failover was.
func TestFailoverSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("process test")
	}
	cfg := failoverConfig{Modes: []string{"kill"}, Profile: "test", Runs: 1, Writers: 8, Warmup: 2 * time.Second,
		BasePort: 23946, Out: t.TempDir(), Log: testWriter{t}}
	sum, err := RunFailover(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(sum)
	t.Logf("summary: %s", b)
	if len(sum.Errors) > 0 {
		t.Fatalf("errors: %v", sum.Errors)
	}
	fs := sum.Faults["kill"]
	if fs == nil || len(fs.Runs) != 1 {
		t.Fatalf("want one kill run: %s", b)
	}
	r := fs.Runs[0]
	switch {
	case r.Acks == 0:
		t.Fatalf("no acknowledged write across the fault: %s", b)
	case r.VictimPrimaries == 0:
		t.Fatalf("the victim held no primary: %s", b)
	case r.MaxGapMs <= 0 || fs.MaxGapMs.Max != r.MaxGapMs:
		t.Fatalf("no writer gap reported: %s", b)
	case r.WritableMs <= 0 || r.Unwritable > 0:
		t.Fatalf("the partitions' writability was not measured: %s", b)
	case r.RestoreMaxGapMs <= 0:
		t.Fatalf("the restart of the victim was not measured: %s", b)
	}
}

// TestFailoverLong runs the baseline measurements of docs/benchmarks.md
// ("Failover") when GRID_FAILOVER_LONG is set: GRID_FAILOVER_MODES
// (default "kill,stop,sets,fp"), GRID_FAILOVER_PROFILE (default: none),
// GRID_FAILOVER_RUNS (default 10) and GRID_FAILOVER_DURATION (fp, 60s). It takes tens of minutes; the command
// line (go run ./cmd/gridchaos failover ...) does the same.
func TestFailoverLong(t *testing.T) {
	if os.Getenv("GRID_FAILOVER_LONG") == "" {
		t.Skip("set GRID_FAILOVER_LONG=1 to run the failover measurements")
	}
	modes := "kill,stop,sets,fp"
	if m := os.Getenv("GRID_FAILOVER_MODES"); m != "" {
		modes = m
	}
	cfg := failoverConfig{Modes: strings.Split(modes, ","), Profile: os.Getenv("GRID_FAILOVER_PROFILE"),
		BasePort: 23946, Out: t.TempDir(), Log: testWriter{t}}
	if n, err := time.ParseDuration(os.Getenv("GRID_FAILOVER_DURATION")); err == nil {
		cfg.Duration = n
	}
	if n, err := strconv.Atoi(os.Getenv("GRID_FAILOVER_RUNS")); err == nil {
		cfg.Runs = n
	}
	sum, err := RunFailover(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.MarshalIndent(sum, "", "  ")
	t.Logf("summary:\n%s", b)
	if len(sum.Errors) > 0 {
		t.Fatalf("errors: %v", sum.Errors)
	}
}

func TestGapIn(t *testing.T) {
	acks := []int64{10, 20, 30, 100, 110, 500, 510}
	for _, c := range []struct {
		name           string
		from, to, now  int64
		wantGap, wantN int64
	}{
		{"the gap spanning from starts at the last ack before it", 25, 105, 1000, 70, 2},
		{"the first ack after to closes the gap spanning to", 105, 200, 1000, 390, 1},
		{"a writer still waiting counts until now", 505, 520, 600, 90, 1},
		{"no ack before from: the gap starts at from", 0, 15, 1000, 10, 1},
	} {
		g, n := gapIn(acks, c.from, c.to, c.now)
		if g != c.wantGap || int64(n) != c.wantN {
			t.Errorf("%s: gapIn(%d, %d, %d) = %d, %d; want %d, %d", c.name, c.from, c.to, c.now, g, n, c.wantGap, c.wantN)
		}
	}
}

func TestDistOf(t *testing.T) {
	var v []float64
	for i := 100; i >= 1; i-- {
		v = append(v, float64(i))
	}
	if d := distOf(v); d != (dist{N: 100, P50: 50, P99: 99, Max: 100}) {
		t.Fatalf("distOf(1..100) = %+v", d)
	}
	if d := distOf([]float64{3, 1, 2}); d != (dist{N: 3, P50: 2, P99: 3, Max: 3}) {
		t.Fatalf("distOf(3, 1, 2) = %+v", d)
	}
}

func TestKeysPerPartition(t *testing.T) {
	keys, parts := keysPerPartition("w", 32, 271)
	seen := map[int]bool{}
	for i, k := range keys {
		p := affinity.Partition(k, 271)
		if p != parts[i] || seen[p] {
			t.Fatalf("key %d %q in partition %d (want %d, distinct)", i, k, p, parts[i])
		}
		seen[p] = true
	}
	if parts[31] < 250 {
		t.Fatalf("keys not spread over the partitions: last in %d", parts[31])
	}
}
