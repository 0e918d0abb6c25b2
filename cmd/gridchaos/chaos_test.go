package main

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"testing"
	"time"
)

// TestChaosShort is the CI variant: 4 real gridnode processes, about 20 s of
// faults with a fixed seed. GRID_CHAOS_DURATION, GRID_CHAOS_SEED and
// GRID_CHAOS_NODES override it (the long run: go run ./cmd/gridchaos).
func TestChaosShort(t *testing.T) {
	if testing.Short() {
		t.Skip("process chaos test")
	}
	cfg := Config{Nodes: 4, Backups: 1, Duration: 20 * time.Second, Seed: 42, BasePort: 37946, Out: t.TempDir(), Log: testWriter{t}}
	if d, err := time.ParseDuration(os.Getenv("GRID_CHAOS_DURATION")); err == nil {
		cfg.Duration = d
	}
	if s, err := strconv.ParseUint(os.Getenv("GRID_CHAOS_SEED"), 10, 64); err == nil {
		cfg.Seed = s
	}
	if n, err := strconv.Atoi(os.Getenv("GRID_CHAOS_NODES")); err == nil {
		cfg.Nodes = n
	}
	// The binary is built from the module root.
	if err := os.Chdir("../.."); err != nil {
		t.Fatal(err)
	}
	sum, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(sum)
	t.Logf("summary: %s", b)
	if !sum.OK || sum.Lost != 0 || sum.Linearizable != "yes" || !sum.Converged || !sum.ReplicasEqual {
		t.Fatalf("chaos run failed: %s", b)
	}
	if total := func() (n int) {
		for _, c := range sum.Faults {
			n += c
		}
		return n
	}(); total < 3 {
		t.Fatalf("only %d faults injected", total)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}
