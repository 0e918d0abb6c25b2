package main

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(bankClientEnv) != "" {
		os.Exit(bankClientMain(os.Args[1:])) // the bank mode's client process (bank_client.go)
	}
	goleak.VerifyTestMain(m)
}

// TestChaosShort is the CI variant: 4 real gridnode processes, about 20 s
// of faults with a fixed seed, starting with a same-name restart chain;
// 3000 idle keys and 8 MiB of bulk data; appends and counters through a
// default client. It runs the nodes with -profile test (failure detection
// in about 1 s) to keep CI short; the command's default is lan.
// GRID_CHAOS_DURATION, GRID_CHAOS_SEED, GRID_CHAOS_NODES, GRID_CHAOS_PORT,
// GRID_CHAOS_PROFILE and GRID_CHAOS_SCRIPT (comma-separated fault kinds)
// override it (the long run: go run ./cmd/gridchaos).
func TestChaosShort(t *testing.T) {
	if testing.Short() {
		t.Skip("process chaos test")
	}
	cfg := Config{Nodes: 4, Backups: 1, Duration: 20 * time.Second, Seed: 42, BasePort: 21946, Out: t.TempDir(), Log: testWriter{t},
		IdleKeys: 3000, BulkMB: 8, Script: []string{"restart-chain"}, MinFaults: 3, Profile: "test"}
	if out := os.Getenv("GRID_CHAOS_OUT"); out != "" {
		cfg.Out = out // keep the node logs after the test
	}
	if d, err := time.ParseDuration(os.Getenv("GRID_CHAOS_DURATION")); err == nil {
		cfg.Duration = d
	}
	if s, err := strconv.ParseUint(os.Getenv("GRID_CHAOS_SEED"), 10, 64); err == nil {
		cfg.Seed = s
	}
	if n, err := strconv.Atoi(os.Getenv("GRID_CHAOS_NODES")); err == nil {
		cfg.Nodes = n
	}
	if p, err := strconv.Atoi(os.Getenv("GRID_CHAOS_PORT")); err == nil {
		cfg.BasePort = p
	}
	if p := os.Getenv("GRID_CHAOS_PROFILE"); p != "" {
		cfg.Profile = p
	}
	if s := os.Getenv("GRID_CHAOS_SCRIPT"); s != "" {
		cfg.Script = strings.Split(s, ",")
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
	if !sum.OK {
		t.Fatalf("chaos run failed: %s", b)
	}
	// The run must have exercised what it claims to check.
	total := 0
	for _, c := range sum.Faults {
		total += c
	}
	switch {
	case total < 3:
		t.Fatalf("only %d faults injected", total)
	case sum.Faults[cfg.Script[0]] == 0:
		t.Fatalf("the scripted %s never ran", cfg.Script[0])
	case sum.IdleKeys < cfg.IdleKeys || sum.BulkKeys == 0:
		t.Fatalf("idle data not loaded: %d idle keys, %d bulk keys", sum.IdleKeys, sum.BulkKeys)
	case sum.AckedAppends == 0 || sum.AckedIncrs == 0 || sum.AckedWrites == 0 || sum.RegisterReads == 0:
		t.Fatalf("a workload made no progress: %s", b)
	case sum.Profile != cfg.Profile:
		t.Fatalf("summary profile %q, want %q", sum.Profile, cfg.Profile)
	}
	// Every injected fault has its unavailability, per kind.
	for kind, c := range sum.Faults {
		if u := sum.UnavailByKind[kind]; u.Faults != c || u.GapMaxms <= 0 || u.GapP50ms > u.GapMaxms {
			t.Errorf("unavailability of %s: %+v, for %d faults", kind, u, c)
		}
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}
