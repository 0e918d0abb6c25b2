package main

import (
	"slices"
	"testing"
)

// without returns ticks with the successes in [from, to) removed.
func without(ticks []int64, from, to int64) []int64 {
	return slices.DeleteFunc(slices.Clone(ticks), func(t int64) bool { return t >= from && t < to })
}

// longestGap returns the longest gap overlapping [from, to].
func longestGap(writes []int64, begin, stop, from, to int64) int64 {
	worst := int64(0)
	gapsOverlapping(writes, begin, stop, from, to, func(prev, next int64) { worst = max(worst, next-prev) })
	return worst
}

func TestGapsOverlappingTheWindow(t *testing.T) {
	w := without(ticks(0, 40*s, s/10), 10*s+s/10, 16*s) // last before: 10.0 s, next: 16.0 s
	for _, c := range []struct {
		name     string
		from, to int64
		want     int64
	}{
		{"spans the hit", 12 * s, 18 * s, 6 * s},
		{"starts after the hit, before the window ends", 9 * s, 11 * s, 6 * s},
		{"ends before the window", 16*s + s/20, 20 * s, s / 10},
		{"window of length zero", 12 * s, 12 * s, 6 * s},
		{"starts at the window's end: not counted", 5 * s, 10 * s, s / 10},
	} {
		if got := longestGap(w, 0, 40*s, c.from, c.to); got != c.want {
			t.Errorf("%s: longest gap in [%v, %v] = %v ms, want %v", c.name, sec(c.from), sec(c.to), ms(got), ms(c.want))
		}
	}
	// A writer that never succeeds again waits until the workloads stop.
	if got := longestGap(ticks(0, 10*s, s/10), 0, 40*s, 12*s, 14*s); got != 40*s-99*s/10 {
		t.Errorf("stuck writer: %v ms, want 30100", ms(got))
	}
	// A writer that never succeeded waited from the start.
	if got := longestGap(nil, s, 40*s, 12*s, 14*s); got != 39*s {
		t.Errorf("idle writer: %v ms, want 39000", ms(got))
	}
}

func TestFaultGapsPerFaultAndKind(t *testing.T) {
	all := ticks(0, 60*s, s/10)
	pc := &progressCheck{
		workers: []*progress{
			// Stalls 3 s from the second kill of fault 1 on (9 s to 12 s).
			{name: "set-0", writes: without(all, 9*s+s/10, 12*s)},
			// Stalls 1.1 s when the member rejoins after fault 1, from
			// half a second after the restart on (15.5 s to 16.6 s).
			{name: "set-1", writes: without(all, 15*s+6*s/10, 16*s+6*s/10)},
			// Waits 0.5 s after fault 2's pause: not above the threshold.
			{name: "append-0", writes: without(all, 30*s+s/10, 30*s+s/2)},
			// Stalls from 40.5 s to 50 s: the kill of fault 4 (40.55 s), not
			// the join 0.55 s before it, nor the pause whose window ended
			// at the join.
			{name: "counter-0", writes: without(all, 40*s+6*s/10, 50*s)},
		},
		safeAt: []int64{6 * s, 12 * s, 17 * s, 45 * s, 55 * s},
		begin:  0, stop: 60 * s,
	}
	hits := []hit{
		{1, "kill-fill-sender", 5 * s}, // window to 6 s
		{1, "rejoin", 7 * s},           // to the next hit
		{1, "kill-fill-sender", 9 * s}, // to 12 s
		{1, "rejoin", 15 * s},          // to 17 s
		{2, "pause", 30 * s},           // to 40 s (next hit)
		{3, "join", 40 * s},            // to the next hit
		{4, "kill", 40*s + 55*s/100},   // to 45 s
	}
	gaps := pc.faultGaps(hits)
	type row struct {
		fault   int
		kind    string
		worst   int64
		writer  string
		stalled int
	}
	var got []row
	for _, g := range gaps {
		got = append(got, row{g.fault, g.kind, g.worst, g.writer, g.stalled})
	}
	want := []row{
		{1, "kill-fill-sender", 3 * s, "set-0", 1},
		{1, "rejoin", 11 * s / 10, "set-1", 1},
		{2, "pause", 5 * s / 10, "append-0", 0},
		{3, "join", s / 10, "set-0", 0},
		{4, "kill", 95 * s / 10, "counter-0", 1},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("fault gaps\n got %+v\nwant %+v", got, want)
	}

	k := byKind(append(gaps, faultGap{fault: 5, kind: "pause", worst: 2 * s, stalled: 3}, faultGap{fault: 6, kind: "pause", worst: s, stalled: 2},
		faultGap{fault: 7, kind: "leave", worst: 3 * s, stalled: 4}, faultGap{fault: 8, kind: "leave", worst: s, stalled: 1}))
	if p := k["pause"]; p != (KindUnavail{Faults: 3, GapP50ms: 1000, GapMaxms: 2000, StalledP50: 2, StalledMax: 3}) {
		t.Fatalf("pause aggregate %+v", p)
	}
	if j := k["kill"]; j != (KindUnavail{Faults: 1, GapP50ms: 9500, GapMaxms: 9500, StalledP50: 1, StalledMax: 1}) {
		t.Fatalf("kill aggregate %+v", j)
	}
	if l := k["leave"]; l != (KindUnavail{Faults: 2, GapP50ms: 1000, GapMaxms: 3000, StalledP50: 1, StalledMax: 4}) {
		t.Fatalf("leave aggregate %+v (of two faults, p50 is the lower)", l)
	}
}
