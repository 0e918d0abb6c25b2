package main

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/collocate/grid/client"
)

// run loads the idle data, starts the workloads, runs the nemesis, heals,
// lets the workloads show progress for one more window, stops them and
// checks everything.
func (h *harness) run(ctx context.Context) (*Summary, error) {
	sum := &Summary{Seed: h.cfg.Seed, Nodes: h.cfg.Nodes, Profile: h.cfg.Profile, Faults: map[string]int{}}
	violation := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		sum.Violations = append(sum.Violations, msg)
		h.logf("VIOLATION: %s", msg)
	}
	cv, err := h.latest(ctx)
	if err != nil {
		return nil, err
	}
	partitions := len(cv.Partitions)
	sets, err := h.loadDatasets(ctx, partitions, violation)
	if err != nil {
		return nil, err
	}
	w, err := h.startWorkloads(ctx)
	if err != nil {
		return nil, err
	}
	begin := h.now()
	nem := &nemesis{h: h, script: h.cfg.Script, sum: sum, violation: violation}
	checker, err := client.Dial(ctx, client.Config{Addrs: h.rpcAddrs(), RefreshInterval: time.Second})
	if err != nil {
		return nil, err
	}
	if len(sets) > 0 && sets[0].name == "idle" {
		nem.idleMissing = func(ctx context.Context) int {
			return len(sets[0].acked) - h.present(ctx, checker, sets[0])
		}
	}
	nem.run(ctx, time.Now().Add(h.cfg.Duration))
	final := h.heal(ctx, sum, violation)
	if final > 0 {
		nem.attributeIdleLoss(ctx)
	}
	checker.Close()
	// The workloads go on for one window after the heal: every worker must
	// show progress in it.
	time.Sleep(h.cfg.ProgressWindow + 100*time.Millisecond)
	w.halt()
	stop := h.now()
	sum.Seconds = time.Since(h.t0).Seconds()

	pc := &progressCheck{faults: nem.faults, workers: w.workers, safeAt: h.safeAt, begin: begin, final: final,
		stop: stop, window: h.cfg.ProgressWindow, minRate: h.cfg.MinRate}
	for _, v := range pc.check() {
		violation("%s", v)
		sum.ProgressViol++
	}
	sum.MaxGapms = pc.maxGap()
	if u := pc.unavailability(); len(u) > 0 {
		sum.UnavailP50ms = u[len(u)/2]
		sum.UnavailP99ms = u[min(len(u)-1, len(u)*99/100)]
		sum.UnavailMaxms = u[len(u)-1]
	}
	sum.Writers = len(w.workers)
	gaps := pc.faultGaps(nem.hits)
	for _, g := range gaps {
		h.logf("%s", g.describe(nem.faults, len(w.workers)))
	}
	sum.UnavailByKind = byKind(gaps)
	for _, p := range w.workers {
		sum.Ops += p.ops
		sum.RegisterReads += len(p.reads)
	}
	h.checkRegisters(w.register, sum, violation)
	if err := h.checkData(ctx, w, sets, partitions, sum, violation); err != nil {
		violation("final checks: %v", err)
	}
	if err := h.checkReplicas(ctx); err != nil {
		violation("replicas differ: %v", err)
	} else {
		sum.ReplicasEqual = true
	}
	sum.OK = len(sum.Violations) == 0
	if !sum.OK {
		h.saveLogs()
	}
	return sum, nil
}

// loadDatasets writes the idle keys and the bulk data before the faults.
func (h *harness) loadDatasets(ctx context.Context, partitions int, violation func(string, ...any)) ([]*dataset, error) {
	c, err := client.Dial(ctx, client.Config{Addrs: h.rpcAddrs(), RefreshInterval: time.Second})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	sets := h.datasets(partitions)
	for _, d := range sets {
		start := time.Now()
		if missing := h.load(ctx, c, d); missing > 0 {
			violation("%s: %d of %d keys never acknowledged (5 tries of 5 s each, on a quiet cluster)", d.name, missing, len(d.keys))
		}
		h.logf("%s: %d of %d keys written in %v", d.name, len(d.acked), len(d.keys), time.Since(start).Round(time.Millisecond))
	}
	return sets, nil
}

// heal resumes paused members, restarts the initial ones (and any that
// died on its own), then waits
// for the cluster to be safe; it returns when it was (0 if never).
func (h *harness) heal(ctx context.Context, sum *Summary, violation func(string, ...any)) int64 {
	for _, p := range h.procs {
		if p.paused {
			h.signal(p, syscall.SIGCONT)
			p.paused = false
		}
	}
	for _, p := range h.procs {
		if p.exited() {
			violation("%s exited on its own during the run (restarted for the checks); its log ends: %s", p.name, p.logTail(5))
			p.running = false
			h.amnesiac[p.name] = true
		}
	}
	for i := range h.cfg.Nodes {
		if p := h.slot(i); !p.running {
			if err := h.restart(ctx, p); err != nil {
				violation("heal: %v", err)
			}
		}
	}
	if err := h.waitSafe(ctx, 60*time.Second); err != nil {
		violation("not converged after heal: %v", err)
		return 0
	}
	sum.Converged = true
	return h.safeAt[len(h.safeAt)-1]
}

// checkData reads back everything the workloads wrote, and writes once
// into every partition.
func (h *harness) checkData(ctx context.Context, w *workloads, sets []*dataset, partitions int, sum *Summary, violation func(string, ...any)) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	c, err := client.Dial(cctx, client.Config{Addrs: h.rpcAddrs(), RefreshInterval: time.Second})
	if err != nil {
		return err
	}
	defer c.Close()

	sum.AckedWrites = len(w.set.acked)
	h.logf("reading back %d acknowledged set writes", sum.AckedWrites)
	if sum.Lost = h.checkSet(cctx, c, w.set); sum.Lost > 0 {
		violation("set: %d acknowledged writes lost", sum.Lost)
	}
	for _, d := range sets {
		lost := h.checkDataset(cctx, c, d)
		switch d.name {
		case "idle":
			sum.IdleKeys, sum.IdleLost = len(d.acked), lost
		case "bulk":
			sum.BulkKeys, sum.BulkLost = len(d.acked), lost
			sum.BulkMB = float64(len(d.acked)*bulkValueSize) / (1 << 20)
		}
		if lost > 0 {
			violation("%s: %d of %d acknowledged keys lost or wrong", d.name, lost, len(d.acked))
		}
	}
	ar := h.checkAppends(cctx, c, w.appends)
	sum.AckedAppends, sum.UnknownAppend, sum.LostAppends, sum.DupTokens = ar.acked, ar.unknown, ar.lost, ar.duplicated
	sum.PhantomOps = ar.phantom
	if ar.lost > 0 {
		violation("append: %d acknowledged tokens missing", ar.lost)
	}
	if ar.duplicated > 0 {
		violation("append: %d tokens applied more than once", ar.duplicated)
	}
	if ar.phantom > 0 {
		violation("append: %d tokens answered as not applied (unavailable, busy, ...) are present: honest outcomes broken", ar.phantom)
	}
	if ar.foreign > 0 {
		violation("append: %d tokens present that were never appended to their key", ar.foreign)
	}
	var bad int
	sum.AckedIncrs, bad = h.checkCounters(cctx, c, w.counters)
	sum.CounterErrors = bad
	if bad > 0 {
		violation("counter: %d counters outside [acknowledged, acknowledged + unknown]", bad)
	}
	failed := h.probePartitions(cctx, c, partitions)
	sum.ProbeFailed = len(failed)
	if len(failed) > 0 {
		violation("%d partitions take no write after the heal (first: %v)", len(failed), failed[:min(5, len(failed))])
	}
	return nil
}
