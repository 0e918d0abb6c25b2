package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// faultRec is one injected fault.
type faultRec struct {
	kind, desc string
	start, end int64 // ns since t0: first action, and the moment it was undone
}

// progressCheck holds the times the progress rules look at.
type progressCheck struct {
	faults  []faultRec
	workers []*progress
	safeAt  []int64 // times the cluster was seen safe
	begin   int64   // workloads started
	final   int64   // the cluster was safe after the final heal
	stop    int64   // workloads stopped
	window  time.Duration
	minRate float64
}

// has reports whether times holds a value in [from, to].
func has(times []int64, from, to int64) bool {
	i, _ := slices.BinarySearch(times, from)
	return i < len(times) && times[i] <= to
}

// recovered returns when the cluster was first seen safe at or after t.
func (pc *progressCheck) recovered(t int64) (int64, bool) {
	i, _ := slices.BinarySearch(pc.safeAt, t)
	if i == len(pc.safeAt) {
		return 0, false
	}
	return pc.safeAt[i], true
}

// idle lists the workers without an acknowledged write (or, for readers,
// a successful read) in [from, to].
func (pc *progressCheck) idle(from, to int64) []string {
	var out []string
	for _, w := range pc.workers {
		if !has(w.writes, from, to) {
			out = append(out, w.name+" (writes)")
		}
		if w.wantReads && !has(w.reads, from, to) {
			out = append(out, w.name+" (reads)")
		}
	}
	return out
}

// check applies the progress rules and returns the violations: every
// worker above the floor overall, and every worker succeeding within the
// window after the cluster is safe again, after each fault and after the
// final heal. A checker that passes when nothing succeeds checks nothing.
func (pc *progressCheck) check() []string {
	var out []string
	secs := float64(pc.stop-pc.begin) / 1e9
	floor := int(math.Ceil(pc.minRate * secs))
	for _, w := range pc.workers {
		if len(w.writes) < floor {
			out = append(out, fmt.Sprintf("progress: %s had %d acknowledged writes of %d attempts in %.0f s (floor %d)", w.name, len(w.writes), w.ops, secs, floor))
		}
		if w.wantReads && len(w.reads) < floor {
			out = append(out, fmt.Sprintf("progress: %s had %d successful reads in %.0f s (floor %d)", w.name, len(w.reads), secs, floor))
		}
	}
	win := pc.window.Nanoseconds()
	for i, f := range pc.faults {
		r, ok := pc.recovered(f.end)
		if !ok {
			continue // the heal failed: reported on its own
		}
		if idle := pc.idle(r, r+win); len(idle) > 0 {
			out = append(out, fmt.Sprintf("progress: after fault %d (%s) at %.1fs, safe at %.1fs: no success in the next %v by %s",
				i+1, f.desc, sec(f.start), sec(r), pc.window, strings.Join(idle, ", ")))
		}
	}
	if pc.final > 0 {
		if idle := pc.idle(pc.final, pc.final+win); len(idle) > 0 {
			out = append(out, fmt.Sprintf("progress: after the final heal (safe at %.1fs): no success in the next %v by %s",
				sec(pc.final), pc.window, strings.Join(idle, ", ")))
		}
	}
	return out
}

// unavailability returns, per fault, the longest any worker waited from
// the fault to its next acknowledged write; a worker that never succeeded
// again waited until the workloads stopped.
func (pc *progressCheck) unavailability() []float64 {
	var out []float64
	for _, f := range pc.faults {
		worst := 0.0
		for _, w := range pc.workers {
			next := pc.stop
			if i, _ := slices.BinarySearch(w.writes, f.start); i < len(w.writes) {
				next = w.writes[i]
			}
			worst = max(worst, float64(next-f.start)/1e6)
		}
		out = append(out, worst)
	}
	slices.Sort(out)
	return out
}

// maxGap returns the longest time (ms) any worker went without an
// acknowledged write.
func (pc *progressCheck) maxGap() float64 {
	worst := int64(0)
	for _, w := range pc.workers {
		prev := pc.begin
		for _, t := range w.writes {
			worst = max(worst, t-prev)
			prev = t
		}
		worst = max(worst, pc.stop-prev)
	}
	return float64(worst) / 1e6
}

func sec(ns int64) float64 { return float64(ns) / 1e9 }
