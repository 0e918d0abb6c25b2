package main

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// Unavailability per fault kind. A fault's hits are the moments the
// nemesis disrupted the cluster: a SIGKILL, SIGSTOP or SIGTERM, a network
// cut, the start of a joining member. A restart of a member after the
// cluster recovered from its loss is a hit of its own, of kind "rejoin"
// (the grid moves partitions back to it). Each hit's window lasts until
// the cluster is first seen safe after it, or until the next hit,
// whichever comes first. A gap between two consecutive acknowledged
// writes of a writer (the workloads' own records, nothing more) belongs
// to the first hit inside it (a failover's gap starts just before its
// kill), or, if none is, to the hit whose window it overlaps (a
// rebalancing's gap starts after the join): each gap counts for one fault
// only, so a join followed 0.3 s later by a kill does not inherit the
// kill's failover.

// stallThreshold is the gap above which a writer counts as stalled.
const stallThreshold = 500 * time.Millisecond

// hit is one disruptive action of the nemesis.
type hit struct {
	fault int    // 1-based number of the fault it belongs to
	kind  string // the fault's kind, or "rejoin"
	at    int64  // ns since t0
}

// faultGap is what the writers saw around one fault's hits.
type faultGap struct {
	fault   int
	kind    string
	worst   int64  // ns: the longest gap of any writer overlapping a window
	writer  string // whose gap it was
	stalled int    // writers with an overlapping gap above stallThreshold
}

// KindUnavail aggregates the faults of one kind.
type KindUnavail struct {
	Faults     int     `json:"faults"`
	GapP50ms   float64 `json:"gap_p50_ms"`
	GapMaxms   float64 `json:"gap_max_ms"`
	StalledP50 int     `json:"stalled_writers_p50"`
	StalledMax int     `json:"stalled_writers_max"`
}

// windowEnd returns when hit j's window ends: the first time the cluster
// was seen safe at or after it, the next hit, or the end of the run.
func (pc *progressCheck) windowEnd(hits []hit, j int) int64 {
	end := pc.stop
	if r, ok := pc.recovered(hits[j].at); ok {
		end = min(end, r)
	}
	if j+1 < len(hits) {
		end = min(end, hits[j+1].at)
	}
	return max(end, hits[j].at)
}

// gapsOverlapping calls f with every gap between consecutive acknowledged
// writes (begin and stop bound the first and the last) that overlaps
// [from, to]: it ends after from and starts before to (a window of length
// zero still has the gap around it).
func gapsOverlapping(writes []int64, begin, stop, from, to int64, f func(prev, next int64)) {
	i, _ := slices.BinarySearch(writes, from+1) // first write after from
	prev := begin
	if i > 0 {
		prev = writes[i-1]
	}
	for ; i < len(writes); i++ {
		f(prev, writes[i])
		prev = writes[i]
		if prev >= to {
			return
		}
	}
	f(prev, stop)
}

// owner returns the hit a gap belongs to: the first hit in [prev, next),
// or else the last hit before prev.
func owner(hits []hit, prev, next int64) int {
	f, _ := slices.BinarySearchFunc(hits, prev, func(x hit, t int64) int { return cmp.Compare(x.at, t) })
	if f < len(hits) && hits[f].at < next {
		return f
	}
	return f - 1
}

// faultGaps returns, per fault (and per fault's rejoins), in the order of
// their first hits, the longest writer gap that belongs to one of its
// hits' windows and the number of writers that stalled. hits are in time
// order.
func (pc *progressCheck) faultGaps(hits []hit) []faultGap {
	type key struct {
		fault int
		kind  string
	}
	var order []key
	group := map[key][]int{} // hit indices
	for j, x := range hits {
		k := key{x.fault, x.kind}
		if _, ok := group[k]; !ok {
			order = append(order, k)
		}
		group[k] = append(group[k], j)
	}
	var out []faultGap
	for _, k := range order {
		g := faultGap{fault: k.fault, kind: k.kind}
		for _, w := range pc.workers {
			mine := int64(0)
			for _, j := range group[k] {
				gapsOverlapping(w.writes, pc.begin, pc.stop, hits[j].at, pc.windowEnd(hits, j), func(prev, next int64) {
					if owner(hits, prev, next) == j {
						mine = max(mine, next-prev)
					}
				})
			}
			if mine > g.worst {
				g.worst, g.writer = mine, w.name
			}
			if mine > stallThreshold.Nanoseconds() {
				g.stalled++
			}
		}
		out = append(out, g)
	}
	return out
}

// byKind aggregates the faults' gaps per kind.
func byKind(gaps []faultGap) map[string]KindUnavail {
	worst := map[string][]int64{}
	stalled := map[string][]int{}
	for _, g := range gaps {
		worst[g.kind] = append(worst[g.kind], g.worst)
		stalled[g.kind] = append(stalled[g.kind], g.stalled)
	}
	out := map[string]KindUnavail{}
	for kind, w := range worst {
		s := stalled[kind]
		slices.Sort(w)
		slices.Sort(s)
		mid := (len(w) - 1) / 2 // nearest rank: of two faults, the lower
		out[kind] = KindUnavail{
			Faults:     len(w),
			GapP50ms:   ms(w[mid]),
			GapMaxms:   ms(w[len(w)-1]),
			StalledP50: s[mid],
			StalledMax: s[len(s)-1],
		}
	}
	return out
}

// describe is one log line per fault.
func (g faultGap) describe(faults []faultRec, writers int) string {
	what := fmt.Sprintf("fault %d", g.fault)
	if g.fault >= 1 && g.fault <= len(faults) {
		what += " (" + faults[g.fault-1].desc + ")"
	}
	if g.kind == "rejoin" {
		what = "rejoin after " + what
	}
	return fmt.Sprintf("unavailability: %s: longest writer gap %.2f s (%s), %d of %d writers stalled > %v",
		what, float64(g.worst)/1e9, g.writer, g.stalled, writers, stallThreshold)
}

func ms(ns int64) float64 { return float64(ns/1e3) / 1e3 }
