package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/collocate/grid/compute/invoke"
)

// TestComputeSmoke keeps the compute mode working in CI: one round of 3
// real gridnode processes (gridnode's default flags) with 50,000 entries;
// a fourth member joins and the raft leader (seed 2) is SIGKILLed during
// map-reduce calls; 8 workers x 50 increments while the counter's primary
// is SIGKILLed. Every answer must be exact and the faults must really
// have hit the calls.
func TestComputeSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("process test")
	}
	cfg := computeConfig{Runs: 1, Seed: 2, Entries: 50_000, Workers: 8, Increments: 50,
		BasePort: 22946, Out: t.TempDir(), Log: testWriter{t}}
	runComputeTest(t, cfg)
}

// TestComputeLong is the evidence run of docs/chaos.md ("Compute under
// failure") when GRID_COMPUTE_LONG is set: 1,000,000 entries, 3 seeds
// (GRID_COMPUTE_SEED, default 1; GRID_COMPUTE_RUNS; GRID_COMPUTE_ENTRIES;
// GRID_COMPUTE_PROFILE, default none). The command line (go run
// ./cmd/gridchaos compute -runs 3) does the same.
func TestComputeLong(t *testing.T) {
	if os.Getenv("GRID_COMPUTE_LONG") == "" {
		t.Skip("set GRID_COMPUTE_LONG=1 to run the compute evidence run")
	}
	cfg := computeConfig{Runs: 3, Seed: 1, Entries: 1_000_000, Profile: os.Getenv("GRID_COMPUTE_PROFILE"),
		BasePort: 22946, Out: t.TempDir(), Log: testWriter{t}}
	if out := os.Getenv("GRID_COMPUTE_OUT"); out != "" {
		cfg.Out = out
	}
	if n, err := strconv.ParseUint(os.Getenv("GRID_COMPUTE_SEED"), 10, 64); err == nil {
		cfg.Seed = n
	}
	if n, err := strconv.Atoi(os.Getenv("GRID_COMPUTE_RUNS")); err == nil {
		cfg.Runs = n
	}
	if n, err := strconv.Atoi(os.Getenv("GRID_COMPUTE_ENTRIES")); err == nil {
		cfg.Entries = n
	}
	runComputeTest(t, cfg)
}

func runComputeTest(t *testing.T, cfg computeConfig) {
	t.Helper()
	sum, err := RunCompute(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(sum)
	t.Logf("summary: %s", b)
	if !sum.OK {
		t.Fatalf("violations %v, errors %v", sum.Violations, sum.Errors)
	}
	cfg, _ = cfg.withDefaults()
	if err := exercised(sum, cfg); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
}

// exercised says how a summary without violations fails to show what the
// compute mode claims: every round ran both phases, the join and the kill
// landed during map-reduce calls and calls were exact after them, and the
// counter's primary died with increments running and after acknowledged
// ones.
func exercised(sum *computeSummary, cfg computeConfig) error {
	if sum.Rounds != cfg.Runs || len(sum.Runs) != cfg.Runs {
		return fmt.Errorf("%d rounds of %d", len(sum.Runs), cfg.Runs)
	}
	total := int64(cfg.Workers * cfg.Increments)
	for _, r := range sum.Runs {
		mr, c := r.MapReduce, r.Counter
		var why string
		switch {
		case mr == nil || c == nil:
			why = "a phase did not run"
		case !mr.Join.DuringCall || mr.JoinCall == nil:
			why = "the join did not land during a map-reduce call"
		case mr.JoinerAtEnd == 0:
			why = "the joiner holds nothing at the end"
		case !mr.Kill.DuringCall || mr.KillCall == nil:
			why = "the kill did not land during a map-reduce call"
		case mr.Kill.CallID <= mr.Join.CallID:
			why = "the kill did not come after the join"
		case mr.ExactAfterFaults == 0 || mr.Final == nil || mr.Final.Outcome != "exact":
			why = "no exact map-reduce after the faults and after the restart"
		case mr.Wrong != 0:
			why = "a wrong map-reduce"
		case c.Victim == "" || c.AckedAtKill == 0 || c.AckedAtKill >= total || c.InflightAtKill == 0:
			why = "the counter's primary was not killed with increments running"
		case c.AckedAfterKill == 0:
			why = "no increment started after the kill was acknowledged"
		case c.Acked != total || c.Final != total || c.Unknown != 0:
			why = fmt.Sprintf("counter: acked %d, final %d, unknown %d; want %d", c.Acked, c.Final, c.Unknown, total)
		}
		if why != "" {
			return fmt.Errorf("seed %d: %s", r.Seed, why)
		}
	}
	return nil
}

// TestExercisedFails shows that each fault the tests require is checked:
// a summary missing it fails exercised.
func TestExercisedFails(t *testing.T) {
	cfg := computeConfig{Runs: 1, Workers: 2, Increments: 3}
	good := func() *computeSummary {
		return &computeSummary{Rounds: 1, Runs: []computeRound{{
			MapReduce: &mrRound{Join: faultPoint{CallID: 2, DuringCall: true}, JoinCall: &callOutcome{}, JoinerAtEnd: 5,
				Kill: faultPoint{CallID: 4, DuringCall: true}, KillCall: &callOutcome{}, ExactAfterFaults: 1,
				Final: &callOutcome{Outcome: "exact"}},
			Counter: &counterRound{Victim: "n1", AckedAtKill: 2, InflightAtKill: 2, AckedAfterKill: 1, Acked: 6, Final: 6},
		}}}
	}
	if err := exercised(good(), cfg); err != nil {
		t.Fatalf("a complete summary: %v", err)
	}
	for name, spoil := range map[string]func(s *computeSummary){
		"join between calls": func(s *computeSummary) { s.Runs[0].MapReduce.Join.DuringCall = false },
		"kill between calls": func(s *computeSummary) { s.Runs[0].MapReduce.Kill.DuringCall = false },
		"joiner empty":       func(s *computeSummary) { s.Runs[0].MapReduce.JoinerAtEnd = 0 },
		"no exact after":     func(s *computeSummary) { s.Runs[0].MapReduce.ExactAfterFaults = 0 },
		"final failed":       func(s *computeSummary) { s.Runs[0].MapReduce.Final.Outcome = "timeout" },
		"kill before counter": func(s *computeSummary) {
			s.Runs[0].Counter.AckedAtKill = 0
		},
		"kill after counter": func(s *computeSummary) { s.Runs[0].Counter.AckedAtKill = 6 },
		"nothing in flight":  func(s *computeSummary) { s.Runs[0].Counter.InflightAtKill = 0 },
		"nothing after kill": func(s *computeSummary) { s.Runs[0].Counter.AckedAfterKill = 0 },
		"lost increment":     func(s *computeSummary) { s.Runs[0].Counter.Final = 5 },
		"counter skipped":    func(s *computeSummary) { s.Runs[0].Counter = nil },
		"round missing":      func(s *computeSummary) { s.Runs = nil },
	} {
		s := good()
		spoil(s)
		if err := exercised(s, cfg); err == nil {
			t.Errorf("%s: exercised found nothing missing", name)
		}
	}
}

func TestExpectationMismatch(t *testing.T) {
	d := newMRData(7, 1000)
	if d.all.Count != 1000 || d.prefix.Count != 250 {
		t.Fatalf("counts %d, %d; want 1000, 250", d.all.Count, d.prefix.Count)
	}
	if again := newMRData(7, 1000); again.all != d.all || again.prefix != d.prefix {
		t.Fatalf("the same seed gave %+v, then %+v", d.all, again.all)
	}
	var sum int64
	n := 0
	d.each(func(i int, v int64) {
		if strings.HasPrefix(mrKey(i), mrPrefix) {
			sum += v
			n++
		}
	})
	if int64(n) != d.prefix.Count || sum != d.prefix.Sum {
		t.Fatalf("prefix keys: %d with sum %d; expectation %+v", n, sum, d.prefix)
	}
	var exact invoke.Agg
	d.each(func(_ int, v int64) { exact.Add([]byte(strconv.FormatInt(v, 10))) })
	if m := d.all.mismatch(exact); m != "" {
		t.Fatalf("the exact aggregation mismatches: %s", m)
	}
	for name, spoil := range map[string]func(a *invoke.Agg){
		"count":   func(a *invoke.Agg) { a.Count++ },
		"sum":     func(a *invoke.Agg) { a.IntSum-- },
		"min":     func(a *invoke.Agg) { a.Min-- },
		"max":     func(a *invoke.Agg) { a.Max++ },
		"skipped": func(a *invoke.Agg) { a.Skipped = 1 },
		"floats":  func(a *invoke.Agg) { a.Ints-- },
	} {
		a := exact
		spoil(&a)
		if d.all.mismatch(a) == "" {
			t.Errorf("a wrong %s is not noticed", name)
		}
	}
}

func TestCounterVerdict(t *testing.T) {
	for _, c := range []struct {
		name          string
		acked, final  int64
		unknown, dups int
		errs          map[string]int
		want          int
	}{
		{"exact", 100, 100, 0, 0, nil, 0},
		{"lost", 100, 99, 0, 0, nil, 1},
		{"doubled", 100, 101, 0, 0, nil, 1},
		{"unknown within bounds", 100, 101, 2, 0, map[string]int{"timeout": 2}, 1},
		{"unknown above bounds", 100, 103, 2, 0, map[string]int{"timeout": 2}, 2},
		{"failed call", 100, 100, 0, 0, map[string]int{"unavailable": 1}, 1},
		{"duplicate answers", 100, 100, 0, 1, nil, 1},
	} {
		if got := counterVerdict(c.acked, c.final, c.unknown, c.errs, c.dups); len(got) != c.want {
			t.Errorf("%s: %d violations %v; want %d", c.name, len(got), got, c.want)
		}
	}
}

func TestMetricSum(t *testing.T) {
	text := `# HELP grid_dedup_replays_total Retries answered from the remembered result.
# TYPE grid_dedup_replays_total counter
grid_dedup_replays_total 3
grid_dedup_replays_total_extra 100
grid_function_reruns_total{function="agg.map",reason="moved"} 2
grid_function_reruns_total{function="agg.map",reason="conflict"} 5
grid_function_reruns_total{function="counter.add",reason="moved"} 7
`
	if v, ok := metricSum(text, "grid_dedup_replays_total"); !ok || v != 3 {
		t.Errorf("dedup: %v, %v; want 3", v, ok)
	}
	if v, ok := metricSum(text, "grid_function_reruns_total", `function="agg.map"`, `reason="moved"`); !ok || v != 2 {
		t.Errorf("agg.map moved: %v, %v; want 2", v, ok)
	}
	if v, ok := metricSum(text, "grid_function_reruns_total", `reason="moved"`); !ok || v != 9 {
		t.Errorf("moved: %v, %v; want 9", v, ok)
	}
	if _, ok := metricSum(text, "grid_absent_total"); ok {
		t.Error("an absent metric was found")
	}
}
