package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
)

// TestJournalSmoke keeps the journal mode working in CI: one round of 3
// real gridnode processes (gridnode's default flags), 6 writers under a
// listener that is stopped and resumed from its positions, 2 publishers
// under a consumer group that is crashed once, while the primaries of the
// writers' keys are SIGKILLed twice (seed 2: the listener starts from
// JournalEnds). Nothing may be lost, doubled or invented, and the faults
// must have landed.
func TestJournalSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("process test")
	}
	cfg := journalConfig{Runs: 1, Seed: 2, Writers: 6, Publishers: 2, Pace: 10 * time.Millisecond, Kills: 2,
		Down: time.Second, Warm: time.Second, BasePort: 24946, Out: t.TempDir(), Log: testWriter{t}}
	runJournalTest(t, cfg)
}

// TestJournalLong is the evidence run of docs/chaos.md ("Journal under
// failure") when GRID_JOURNAL_LONG is set: 3 seeds (GRID_JOURNAL_SEED,
// default 1; GRID_JOURNAL_RUNS), 8 writers, 4 publishers, 4 kills each.
// The command line (go run ./cmd/gridchaos journal -runs 3 -seed 1) does
// the same.
func TestJournalLong(t *testing.T) {
	if os.Getenv("GRID_JOURNAL_LONG") == "" {
		t.Skip("set GRID_JOURNAL_LONG=1 to run the journal evidence run")
	}
	cfg := journalConfig{Runs: 3, Seed: 1, BasePort: 24946, Out: t.TempDir(), Log: testWriter{t}}
	if out := os.Getenv("GRID_JOURNAL_OUT"); out != "" {
		cfg.Out = out
	}
	if n, err := strconv.ParseUint(os.Getenv("GRID_JOURNAL_SEED"), 10, 64); err == nil {
		cfg.Seed = n
	}
	if n, err := strconv.Atoi(os.Getenv("GRID_JOURNAL_RUNS")); err == nil {
		cfg.Runs = n
	}
	runJournalTest(t, cfg)
}

func runJournalTest(t *testing.T, cfg journalConfig) {
	t.Helper()
	sum, err := RunJournal(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(sum)
	t.Logf("summary: %s", b)
	if !sum.OK {
		t.Fatalf("violations %v, errors %v", sum.Violations, sum.Errors)
	}
	cfg, _ = cfg.withDefaults()
	if err := journalExercised(sum, cfg); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
}

// journalExercised says how a summary without violations fails to show
// what the journal mode claims: every kill hit a primary of the writers'
// keys, the listener heard events before and after its restart, the
// consumer group consumed before and after its crash, and writes and
// publishes were acknowledged.
func journalExercised(sum *journalSummary, cfg journalConfig) error {
	if sum.Rounds != cfg.Runs || len(sum.Runs) != cfg.Runs {
		return fmt.Errorf("%d rounds of %d", len(sum.Runs), cfg.Runs)
	}
	for _, r := range sum.Runs {
		l, s := r.Listener, r.Stream
		var why string
		switch {
		case l == nil || s == nil:
			why = "a workload did not run"
		case len(r.Kills) != cfg.Kills:
			why = fmt.Sprintf("%d kills of %d", len(r.Kills), cfg.Kills)
		case l.Acked == 0 || l.Events == 0:
			why = "no write acknowledged or heard"
		case l.Restarts != 1 || len(l.PerRun) != 2 || l.PerRun[0] == 0 || l.PerRun[1] == 0:
			why = fmt.Sprintf("the listener was not restarted with events heard before and after (%v)", l.PerRun)
		case s.Acked == 0:
			why = "no event published"
		case s.Crashes < 1 || len(s.PerInc) < 2 || s.PerInc[0] == 0 || s.PerInc[len(s.PerInc)-1] == 0:
			why = fmt.Sprintf("the consumer did not consume before and after its crash (%v)", s.PerInc)
		case !r.ReplicasEqual:
			why = "replicas not compared equal at the end"
		}
		for _, k := range r.Kills {
			if why == "" && k.Keys == 0 {
				why = fmt.Sprintf("kill of %s hit no primary of a writer's key", k.Victim)
			}
		}
		if why != "" {
			return fmt.Errorf("seed %d: %s", r.Seed, why)
		}
	}
	return nil
}

// TestJournalExercisedFails shows that each fault the tests require is
// checked.
func TestJournalExercisedFails(t *testing.T) {
	cfg := journalConfig{Runs: 1, Kills: 2}
	good := func() *journalSummary {
		return &journalSummary{Rounds: 1, Runs: []journalRound{{
			Listener: &listenResult{Acked: 10, Events: 10, Restarts: 1, PerRun: []int{4, 6}},
			Stream:   &streamResult{Acked: 5, Crashes: 1, PerInc: []int{2, 3}},
			Kills:    []killRec{{Victim: "n1", Keys: 2}, {Victim: "n2", Keys: 1}}, ReplicasEqual: true,
		}}}
	}
	if err := journalExercised(good(), cfg); err != nil {
		t.Fatalf("a complete summary: %v", err)
	}
	for name, spoil := range map[string]func(s *journalSummary){
		"kill missing":          func(s *journalSummary) { s.Runs[0].Kills = s.Runs[0].Kills[:1] },
		"kill off the keys":     func(s *journalSummary) { s.Runs[0].Kills[1].Keys = 0 },
		"no restart":            func(s *journalSummary) { s.Runs[0].Listener.Restarts = 0 },
		"silent after restart":  func(s *journalSummary) { s.Runs[0].Listener.PerRun[1] = 0 },
		"no crash":              func(s *journalSummary) { s.Runs[0].Stream.Crashes = 0 },
		"silent after crash":    func(s *journalSummary) { s.Runs[0].Stream.PerInc[1] = 0 },
		"nothing published":     func(s *journalSummary) { s.Runs[0].Stream.Acked = 0 },
		"replicas not compared": func(s *journalSummary) { s.Runs[0].ReplicasEqual = false },
		"round missing":         func(s *journalSummary) { s.Runs = nil },
	} {
		s := good()
		spoil(s)
		if err := journalExercised(s, cfg); err == nil {
			t.Errorf("%s: journalExercised found nothing missing", name)
		}
	}
}

// TestCheckKey: the listener check accepts a committed history and finds
// each way of departing from it.
func TestCheckKey(t *testing.T) {
	const key = "k"
	issued := []jwrite{{outcome: wAcked}, {outcome: wUnknown, kind: "timeout"}, {outcome: wAcked}, {outcome: wRefused, kind: "unavailable"}, {outcome: wAcked}}
	h := func(n int, kind string, oldN int) heard {
		var old []byte
		if oldN > 0 {
			old = jvalue(key, oldN)
		}
		return heard{n: n, kind: kind, old: old}
	}
	for _, c := range []struct {
		name string
		hs   []heard
		want int // violations
	}{
		{"exact", []heard{h(1, "added", 0), h(3, "updated", 1), h(5, "updated", 3)}, 0},
		{"unknown applied", []heard{h(1, "added", 0), h(2, "updated", 1), h(3, "updated", 2), h(5, "updated", 3)}, 0},
		{"without old values", []heard{h(1, "added", 0), h(3, "updated", 0), h(5, "updated", 0)}, 0},
		{"acked missing", []heard{h(1, "added", 0), h(5, "updated", 3)}, 2}, // a gap, and 5 replaced an unheard 3
		{"acked missing, no old", []heard{h(1, "added", 0), h(5, "updated", 0)}, 1},
		{"duplicate", []heard{h(1, "added", 0), h(3, "updated", 1), h(3, "updated", 1), h(5, "updated", 3)}, 1},
		{"out of order", []heard{h(1, "added", 0), h(5, "updated", 3), h(3, "updated", 1)}, 3},
		{"refused heard", []heard{h(1, "added", 0), h(3, "updated", 1), h(4, "updated", 3), h(5, "updated", 4)}, 1},
		{"never written", []heard{h(1, "added", 0), h(3, "updated", 1), h(5, "updated", 3), h(6, "updated", 5)}, 1},
		{"unknown applied unheard", []heard{h(1, "added", 0), h(3, "updated", 2), h(5, "updated", 3)}, 1},
		{"first not added", []heard{h(1, "updated", 0), h(3, "updated", 1), h(5, "updated", 3)}, 1},
	} {
		var r listenResult
		if got := checkKey(key, 0, issued, c.hs, nil, &r); len(got) != c.want {
			t.Errorf("%s: %d violations %v; want %d", c.name, len(got), got, c.want)
		}
	}
}

// TestCheckKeyAnnounced: a gap the listener was told of (past retention)
// counts as announced, one it was not told of as silent.
func TestCheckKeyAnnounced(t *testing.T) {
	issued := []jwrite{{outcome: wAcked}, {outcome: wAcked}, {outcome: wAcked}}
	hs := []heard{{n: 1, kind: "added", pos: 10}, {n: 3, kind: "updated", pos: 30, old: jvalue("k", 2)}}
	var r listenResult
	checkKey("k", 4, issued, hs, []trimmedGap{{part: 4, asked: 11, oldest: 25}}, &r)
	if r.Announced != 2 || r.Gaps != 0 {
		t.Errorf("told of the gap: %d announced, %d silent; want 2, 0", r.Announced, r.Gaps)
	}
	r = listenResult{}
	checkKey("k", 4, issued, hs, []trimmedGap{{part: 5, asked: 11, oldest: 25}, {part: 4, asked: 31, oldest: 40}}, &r)
	if r.Announced != 0 || r.Gaps != 2 {
		t.Errorf("told of other gaps: %d announced, %d silent; want 0, 2", r.Announced, r.Gaps)
	}
}

// TestCheckStream: the stream check accepts at-least-once delivery within
// one batch per partition and restart, and finds each departure.
func TestCheckStream(t *testing.T) {
	const parts = 7
	pubs := []jpub{{id: "a", pos: 3}, {id: "b", pos: 5}, {id: "c", pos: 4}, {id: "d", outcome: pRefused, kind: "stream_full"}, {id: "e", outcome: pUnknown, kind: "timeout"}}
	part := func(id string) int { return affinity.Partition(id, parts) }
	ev := func(id string, pos uint64) consumed { return consumed{id: id, part: part(id), pos: pos} }
	// Events of one partition must be in position order: give a and b a
	// partition each, or order them.
	for _, c := range []struct {
		name      string
		incs      [][]consumed
		want      int
		duplicate int
	}{
		{"exact", [][]consumed{{ev("a", 3), ev("c", 4), ev("b", 5)}}, 0, 0},
		{"redelivered after a crash", [][]consumed{{ev("a", 3), ev("c", 4)}, {ev("c", 4), ev("b", 5)}}, 0, 1},
		{"unknown consumed", [][]consumed{{ev("a", 3), ev("c", 4), ev("b", 5), ev("e", 6)}}, 0, 0},
		{"lost", [][]consumed{{ev("a", 3), ev("c", 4)}}, 1, 0},
		{"refused consumed", [][]consumed{{ev("a", 3), ev("c", 4), ev("b", 5), ev("d", 6)}}, 1, 0},
		{"never published", [][]consumed{{ev("a", 3), ev("c", 4), ev("b", 5), ev("z", 6)}}, 1, 0},
		{"wrong position", [][]consumed{{ev("a", 3), ev("c", 4), ev("b", 6)}}, 1, 0},
		{"wrong partition", [][]consumed{{ev("a", 3), ev("c", 4), {id: "b", part: (part("b") + 1) % parts, pos: 5}}}, 1, 0},
	} {
		var r streamResult
		got := checkStream(pubs, c.incs, parts, &r)
		if len(got) != c.want || r.Duplicate != c.duplicate {
			t.Errorf("%s: %d violations %v, %d duplicated; want %d, %d", c.name, len(got), got, r.Duplicate, c.want, c.duplicate)
		}
	}
	// Disorder and more than a batch again need one partition's events.
	var same []jpub
	var first, again []consumed
	for i := 0; len(same) < consumeBatch+2; i++ {
		id := fmt.Sprint("s", i)
		if part(id) != 0 {
			continue
		}
		pos := uint64(len(same) + 1)
		same = append(same, jpub{id: id, pos: pos})
		first = append(first, consumed{id: id, part: 0, pos: pos})
		again = append(again, consumed{id: id, part: 0, pos: pos})
	}
	var r streamResult
	if got := checkStream(same, [][]consumed{first, again}, parts, &r); len(got) != 1 || r.MaxRedelivered != consumeBatch+2 {
		t.Errorf("a whole partition redelivered: %v, max %d", got, r.MaxRedelivered)
	}
	r = streamResult{}
	swapped := []consumed{first[1], first[0]}
	swapped = append(swapped, first[2:]...)
	if got := checkStream(same, [][]consumed{swapped}, parts, &r); len(got) != 1 || r.Disorder != 1 {
		t.Errorf("out of order: %v, disorder %d", got, r.Disorder)
	}
}
