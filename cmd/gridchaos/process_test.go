package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestProcessSmoke keeps the process mode working in CI: one round of 3
// real gridnode processes (gridnode's default flags, -processors chain),
// 600 events through the two-stage chain while the node with the most
// backlog is SIGKILLed right after a burst and the primary of the busiest
// stage-2 partition is paused. Every acknowledged event must be counted
// exactly once at both stages, every projection must equal its
// recomputation, and the faults must have landed while events were
// published and handled. Then the canary publishes one event again, and
// the check must find exactly that duplicate.
func TestProcessSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("process test")
	}
	cfg := processConfig{Runs: 1, Seed: 2, Events: 600, Faults: []string{"kill-backlog", "pause-busy"},
		Canary: true, BasePort: 26946, Out: t.TempDir(), Log: testWriter{t}}
	runProcessTest(t, cfg)
}

// TestProcessLong is the evidence run of docs/chaos.md ("Exactly-once
// processors under failure") when GRID_PROCESS_LONG is set: 3 seeds
// (GRID_PROCESS_SEED, default 1; GRID_PROCESS_RUNS), 6000 events
// (GRID_PROCESS_EVENTS) and every fault kind (GRID_PROCESS_FAULTS, comma-
// separated) each. The command line (go run ./cmd/gridchaos process -runs
// 3 -seed 1) does the same.
func TestProcessLong(t *testing.T) {
	if os.Getenv("GRID_PROCESS_LONG") == "" {
		t.Skip("set GRID_PROCESS_LONG=1 to run the process evidence run")
	}
	cfg := processConfig{Runs: 3, Seed: 1, BasePort: 26946, Out: t.TempDir(), Log: testWriter{t}}
	if out := os.Getenv("GRID_PROCESS_OUT"); out != "" {
		cfg.Out = out
	}
	if n, err := strconv.ParseUint(os.Getenv("GRID_PROCESS_SEED"), 10, 64); err == nil {
		cfg.Seed = n
	}
	if n, err := strconv.Atoi(os.Getenv("GRID_PROCESS_RUNS")); err == nil {
		cfg.Runs = n
	}
	if n, err := strconv.Atoi(os.Getenv("GRID_PROCESS_EVENTS")); err == nil {
		cfg.Events = n
	}
	if f := os.Getenv("GRID_PROCESS_FAULTS"); f != "" {
		cfg.Faults = strings.Split(f, ",")
	}
	runProcessTest(t, cfg)
}

func runProcessTest(t *testing.T, cfg processConfig) {
	t.Helper()
	sum, err := RunProcess(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(sum)
	t.Logf("summary: %s", b)
	if !sum.OK {
		t.Fatalf("violations %v, errors %v", sum.Violations, sum.Errors)
	}
	cfg, _ = cfg.withDefaults()
	if err := processExercised(sum, cfg); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
}

// processExercised says how a summary without violations fails to show
// what the process mode claims: every fault of the script landed (its
// kills and pauses happened, while events were still to be published or
// handled), events were acknowledged and went through both stages, the
// processors drained and the replicas were compared.
func processExercised(sum *processSummary, cfg processConfig) error {
	if sum.Rounds != cfg.Runs || len(sum.Runs) != cfg.Runs {
		return fmt.Errorf("%d rounds of %d", len(sum.Runs), cfg.Runs)
	}
	for _, r := range sum.Runs {
		if why := roundExercised(&r, cfg); why != "" {
			return fmt.Errorf("seed %d: %s", r.Seed, why)
		}
	}
	return nil
}

func roundExercised(r *processRound, cfg processConfig) string {
	switch {
	case len(r.Faults) != len(cfg.Faults):
		return fmt.Sprintf("%d faults of %d", len(r.Faults), len(cfg.Faults))
	case r.Events != cfg.Events || r.Acknowledged == 0 || r.Through == 0:
		return fmt.Sprintf("%d events of %d, %d acknowledged, %d through both stages", r.Events, cfg.Events, r.Acknowledged, r.Through)
	case !r.Drained:
		return "the processors did not drain"
	case !r.ReplicasEqual:
		return "replicas not compared equal at the end"
	case cfg.Canary && r.Canary != "detected":
		return "canary: " + r.Canary
	}
	for i, f := range r.Faults {
		kills, pauses := 0, 0
		switch f.Kind {
		case "kill", "kill-backlog":
			kills = 1
		case "kill-rejoined", "restart-kill":
			kills = 2
		case "pause", "pause-busy":
			pauses = 1
		case "stop-kill":
			kills, pauses = 1, 1
		}
		switch {
		case f.Kind != cfg.Faults[i]:
			return fmt.Sprintf("fault %d is %s, not %s", i+1, f.Kind, cfg.Faults[i])
		case f.Kills != kills || f.Pauses != pauses:
			return fmt.Sprintf("fault %d (%s): %d kills and %d pauses", i+1, f.Kind, f.Kills, f.Pauses)
		case f.Published >= int64(cfg.Events):
			return fmt.Sprintf("fault %d (%s) hit after every event was published", i+1, f.Kind)
		case f.Kind == "kill-backlog" && f.Lag <= 0:
			return fmt.Sprintf("fault %d (kill-backlog) hit a node with no backlog (lag %d, %d at the resume)", i+1, f.Lag, f.Backlog)
		case (f.Kind == "pause-busy" || f.Kind == "stop-kill") && f.Backlog <= 0:
			return fmt.Sprintf("fault %d (%s) found no stage-2 backlog to pause", i+1, f.Kind)
		}
	}
	return ""
}

// TestProcessExercisedFails shows that each thing the tests require is
// checked.
func TestProcessExercisedFails(t *testing.T) {
	cfg := processConfig{Runs: 1, Events: 100, Faults: []string{"kill-backlog", "pause-busy", "restart-kill"}}
	good := func() *processSummary {
		return &processSummary{Rounds: 1, Runs: []processRound{{
			chainTotals: chainTotals{Events: 100, Acknowledged: 99, Unknown: 1, Through: 99},
			Drained:     true, ReplicasEqual: true,
			Faults: []chainFault{
				{Kind: "kill-backlog", Kills: 1, Published: 40, Lag: 30, Backlog: 50},
				{Kind: "pause-busy", Pauses: 1, Published: 60, Backlog: 12},
				{Kind: "restart-kill", Kills: 2, Published: 80},
			},
		}}}
	}
	if err := processExercised(good(), cfg); err != nil {
		t.Fatalf("a complete summary: %v", err)
	}
	for name, spoil := range map[string]func(s *processSummary){
		"round missing":          func(s *processSummary) { s.Runs = nil },
		"fault missing":          func(s *processSummary) { s.Runs[0].Faults = s.Runs[0].Faults[:2] },
		"fault out of order":     func(s *processSummary) { s.Runs[0].Faults[0].Kind = "kill" },
		"kill missing":           func(s *processSummary) { s.Runs[0].Faults[2].Kills = 1 },
		"pause missing":          func(s *processSummary) { s.Runs[0].Faults[1].Pauses = 0 },
		"fault after publishing": func(s *processSummary) { s.Runs[0].Faults[1].Published = 100 },
		"kill without backlog":   func(s *processSummary) { s.Runs[0].Faults[0].Lag = 0 },
		"nothing acknowledged":   func(s *processSummary) { s.Runs[0].Acknowledged = 0 },
		"nothing through":        func(s *processSummary) { s.Runs[0].Through = 0 },
		"events missing":         func(s *processSummary) { s.Runs[0].Events = 90 },
		"not drained":            func(s *processSummary) { s.Runs[0].Drained = false },
		"replicas not compared":  func(s *processSummary) { s.Runs[0].ReplicasEqual = false },
	} {
		s := good()
		spoil(s)
		if err := processExercised(s, cfg); err == nil {
			t.Errorf("%s: processExercised found nothing missing", name)
		}
	}
}

// TestCheckChain: the check accepts exactly-once effects (and unknown
// outcomes applied once or not at all) and finds each departure.
func TestCheckChain(t *testing.T) {
	const buckets, parts = 2, 7
	evs := []chainEvent{{"a", 0, 10}, {"b", 1, 20}, {"c", 0, 30}, {"d", 1, 40}, {"e", 0, 50}}
	pubs := []chainPub{{outcome: cAcked}, {outcome: cAcked}, {outcome: cUnknown}, {outcome: cUnknown}, {outcome: cRefused}}
	// a, b acked and counted; c unknown and applied; d unknown, not
	// applied; e refused, not applied.
	good := func() *chainRead {
		return &chainRead{s1: []int64{1, 1, 1, 0, 0}, s2: []int64{1, 1, 1, 0, 0}, proj: map[int]int64{0: 40, 1: 20}}
	}
	v := checkChain(evs, pubs, good(), buckets, parts)
	if len(v.Violations) != 0 || v.Events != 5 || v.Acknowledged != 2 || v.Unknown != 2 || v.Refused != 1 || v.Through != 3 {
		t.Fatalf("exactly once: %+v", v)
	}
	for _, c := range []struct {
		name  string
		spoil func(r *chainRead)
		check func(v chainVerdict) bool
	}{
		{"acked lost at stage 1", func(r *chainRead) { r.s1[0] = 0 }, func(v chainVerdict) bool { return v.Lost == 1 }},
		{"acked lost at stage 2", func(r *chainRead) { r.s2[1], r.proj[1] = 0, 0 }, func(v chainVerdict) bool { return v.Lost == 1 && v.ProjMismatch == 0 }},
		{"acked doubled", func(r *chainRead) { r.s1[0] = 2 }, func(v chainVerdict) bool { return v.Duplicated == 1 }},
		{"unknown doubled", func(r *chainRead) { r.s2[2], r.proj[0] = 2, 70 }, func(v chainVerdict) bool { return v.Duplicated == 1 && v.ProjMismatch == 0 }},
		{"unknown lost between the stages", func(r *chainRead) { r.s2[2], r.proj[0] = 0, 10 }, func(v chainVerdict) bool { return v.Lost == 1 }},
		{"unknown at stage 2 only", func(r *chainRead) { r.s2[3], r.proj[1] = 1, 60 }, func(v chainVerdict) bool { return v.Phantoms == 1 }},
		{"refused applied", func(r *chainRead) { r.s1[4] = 1 }, func(v chainVerdict) bool { return v.Phantoms == 1 }},
		{"key of no event", func(r *chainRead) { r.phantoms = []string{"chain.s1 {zz}"} }, func(v chainVerdict) bool { return v.Phantoms == 1 }},
		{"projection off", func(r *chainRead) { r.proj[1] = 21 }, func(v chainVerdict) bool { return v.ProjMismatch == 1 }},
		{"projection missing", func(r *chainRead) { delete(r.proj, 0) }, func(v chainVerdict) bool { return v.ProjMismatch == 1 }},
		{"dead letters", func(r *chainRead) { r.dead = 2 }, func(v chainVerdict) bool { return v.DeadLetters == 2 }},
		{"unreadable count", func(r *chainRead) { r.unreadable = []string{`{a} "x"`} }, func(v chainVerdict) bool { return true }},
	} {
		r := good()
		c.spoil(r)
		v := checkChain(evs, pubs, r, buckets, parts)
		if len(v.Violations) == 0 || !c.check(v) {
			t.Errorf("%s: %+v", c.name, v)
		}
	}
}

// TestThroughVerdict: a round that acknowledged nothing, or got fewer
// than the floor through both stages, is no evidence.
func TestThroughVerdict(t *testing.T) {
	for _, c := range []struct {
		t    chainTotals
		fail bool
	}{
		{chainTotals{Events: 100, Acknowledged: 100, Through: 100}, false},
		{chainTotals{Events: 100, Acknowledged: 60, Unknown: 40, Through: 50}, false},
		{chainTotals{Events: 100, Acknowledged: 0, Unknown: 100, Through: 100}, true},
		{chainTotals{Events: 100, Acknowledged: 60, Through: 49}, true},
	} {
		if got := throughVerdict(&c.t, 0.5) != ""; got != c.fail {
			t.Errorf("%+v: failed %v, want %v", c.t, got, c.fail)
		}
	}
}

// TestChainPlan: ids are unique, the idle buckets get events only in the
// first tenth and the last fiftieth, a hot range goes mostly to its
// bucket, and the slices grow with the burst.
func TestChainPlan(t *testing.T) {
	const n, buckets, idle = 1000, 16, 4
	evs := chainPlan(7, n, buckets, idle, []hotRange{{from: 200, to: 400, bucket: 5}})
	seen := map[string]bool{}
	perBucket := map[int]int{}
	for i, ev := range evs {
		if seen[ev.id] || strings.ContainsAny(ev.id, " {}") {
			t.Fatalf("event %d: id %q repeated or unusable", i, ev.id)
		}
		seen[ev.id] = true
		perBucket[ev.bucket]++
		if ev.bucket >= buckets-idle && i >= n/10 && i < n-n/50 {
			t.Fatalf("event %d in idle bucket %d", i, ev.bucket)
		}
		if ev.amount < 1 || ev.amount > 1000 {
			t.Fatalf("event %d: amount %d", i, ev.amount)
		}
	}
	if len(perBucket) != buckets {
		t.Fatalf("%d buckets used of %d", len(perBucket), buckets)
	}
	hot := 0
	for _, ev := range evs[200:400] {
		if ev.bucket == 5 {
			hot++
		}
	}
	if hot < 150 {
		t.Fatalf("%d of the 200 events of the hot range in its bucket", hot)
	}
	ends := sliceEnds([]string{"kill", "kill-backlog", "pause"}, 700)
	if want := []int{100, 200, 500, 600}; fmt.Sprint(ends) != fmt.Sprint(want) {
		t.Fatalf("slice ends %v, want %v", ends, want)
	}
}
