package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/collocate/grid/client"
)

// faultSummary is one fault kind's runs and their distributions.
type faultSummary struct {
	MaxGapMs   dist `json:"max_gap_ms"`      // per run: the longest wait of any writer
	WritableMs dist `json:"all_writable_ms"` // per run: until every partition took a write
	Stalled    dist `json:"stalled_writers"` // per run: writers that waited > 0.5 s
	// The per-run max gap split by whether the victim led raft.
	MaxGapLeaderMs   dist       `json:"max_gap_ms_leader_killed"`
	MaxGapFollowerMs dist       `json:"max_gap_ms_follower_killed"`
	Runs             []faultRun `json:"runs"`
}

// faultRun is one fault: what the victim held, what the writers saw from
// the fault until the cluster was safe again, and how long until a write
// issued at the fault was acknowledged in every partition.
type faultRun struct {
	Victim          string         `json:"victim"`
	Leader          bool           `json:"victim_was_leader"`
	VictimPrimaries int            `json:"victim_primaries"`
	VictimBackups   int            `json:"victim_backups"`
	MaxGapMs        float64        `json:"max_gap_ms"`
	Stalled         int            `json:"stalled_writers"`
	StalledBy       map[string]int `json:"stalled_by_victim_role"` // the victim's role in the writer's partition
	Errors          map[string]int `json:"errors"`
	Acks            int            `json:"acked_writes"`
	WritableMs      float64        `json:"all_writable_ms"`
	SlowPartitions  int            `json:"partitions_over_500ms"`
	Unwritable      int            `json:"partitions_never_written"`
	SafeMs          float64        `json:"safe_ms"` // until converged again (kill: without the victim)
	RestoreMaxGapMs float64        `json:"restore_max_gap_ms,omitempty"`
	TableBefore     uint64         `json:"table_before"`
	TableAfter      uint64         `json:"table_after"`
	Note            string         `json:"note,omitempty"`
}

// faultMode runs cfg.Runs faults of kind, on the raft leader and on a
// follower in turn (pickVictim).
func (f *failover) faultMode(ctx context.Context, h *harness, kind string) (*faultSummary, error) {
	parts := f.sum.Partitions
	wp, err := startWriters(ctx, h, f.cfg.Writers, parts)
	if err != nil {
		return nil, err
	}
	defer wp.stop()
	pc, err := client.Dial(ctx, client.Config{Addrs: h.rpcAddrs()})
	if err != nil {
		return nil, err
	}
	defer pc.Close()
	probeKeys, _ := keysPerPartition("probe", parts, parts)
	fs := &faultSummary{}
	defer fs.summarize()
	initial := slices.Clone(h.procs[:f.cfg.Nodes])
	for run := range f.cfg.Runs {
		if ctx.Err() != nil {
			return fs, ctx.Err()
		}
		victim := h.pickVictim(ctx, run, initial)
		r, err := f.faultRun(ctx, h, wp, pc.Map("failover-probe"), probeKeys, kind, victim)
		if err != nil {
			return fs, fmt.Errorf("run %d (%s %s): %w", run+1, kind, victim.name, err)
		}
		h.logf("run %d: %s %s (leader %v): max gap %.0f ms, %d writers stalled, all partitions writable after %.0f ms, safe after %.0f ms, errors %v",
			run+1, kind, r.Victim, r.Leader, r.MaxGapMs, r.Stalled, r.WritableMs, r.SafeMs, r.Errors)
		fs.Runs = append(fs.Runs, r)
	}
	return fs, nil
}

func (fs *faultSummary) summarize() {
	var gaps, writable, stalled, leader, follower []float64
	for _, r := range fs.Runs {
		gaps = append(gaps, r.MaxGapMs)
		if r.Leader {
			leader = append(leader, r.MaxGapMs)
		} else {
			follower = append(follower, r.MaxGapMs)
		}
		writable = append(writable, r.WritableMs)
		stalled = append(stalled, float64(r.Stalled))
	}
	fs.MaxGapMs, fs.WritableMs, fs.Stalled = distOf(gaps), distOf(writable), distOf(stalled)
	fs.MaxGapLeaderMs, fs.MaxGapFollowerMs = distOf(leader), distOf(follower)
}

// victimRoles returns the victim's role in every partition of cv:
// "primary", "backup" (or pending) or "none".
func victimRoles(cv *clusterView, victim string) []string {
	roles := make([]string, len(cv.Partitions))
	for i, p := range cv.Partitions {
		switch {
		case p.Primary == victim:
			roles[i] = "primary"
		case slices.Contains(p.Backups, victim), slices.Contains(p.Pending, victim):
			roles[i] = "backup"
		default:
			roles[i] = "none"
		}
	}
	return roles
}

// pickVictim returns run's victim among members: the raft leader on even
// runs, a follower (each in turn) on odd ones, so that both cases are
// measured as often. Without a known leader it takes a follower.
func (h *harness) pickVictim(ctx context.Context, run int, members []*proc) *proc {
	var leader *proc
	if cv, err := h.latest(ctx); err == nil {
		leader = h.leaderOf(cv)
	}
	if run%2 == 0 && leader != nil {
		return leader
	}
	var followers []*proc
	for _, p := range members {
		if p != leader {
			followers = append(followers, p)
		}
	}
	return followers[(run/2)%len(followers)]
}

// sleepCtx sleeps d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// faultRun warms up, injects one fault of kind on victim, undoes it after
// cfg.Hold (kill: restarts it once the cluster is safe without it), and
// measures.
func (f *failover) faultRun(ctx context.Context, h *harness, wp *writerPool, probe client.Map, probeKeys []string, kind string, victim *proc) (faultRun, error) {
	warm := h.now()
	sleepCtx(ctx, f.cfg.Warmup)
	if n := wp.idleSince(warm); n > 0 {
		h.logf("warning: %d writers acknowledged nothing during the warm-up", n)
	}
	cv, err := h.latest(ctx)
	if err != nil {
		return faultRun{}, err
	}
	r := faultRun{Victim: victim.name, TableBefore: cv.Version, Leader: h.leaderOf(cv) == victim}
	roles := victimRoles(cv, victim.name)
	for _, p := range cv.Partitions {
		if p.Primary == victim.name {
			r.VictimPrimaries++
		} else if slices.Contains(p.Backups, victim.name) {
			r.VictimBackups++
		}
	}
	h.logf("fault: %s %s (leader %v, %d primaries, %d backups, table %d)", kind, victim.name, r.Leader, r.VictimPrimaries, r.VictimBackups, cv.Version)
	t0 := h.now()
	if err := injectFault(h, kind, victim); err != nil {
		return r, err
	}
	pctx, cancel := context.WithTimeout(ctx, f.cfg.Hold+90*time.Second)
	defer cancel()
	probes := probeAll(pctx, probe, probeKeys, h.now)
	if kind != "kill" {
		sleepCtx(ctx, f.cfg.Hold)
		if err := undoFault(h, kind, victim); err != nil {
			return r, err
		}
	}
	firsts := <-probes
	cancel()
	if err := h.waitSafe(ctx, 90*time.Second); err != nil {
		if kind == "kill" {
			return r, fmt.Errorf("not safe after the kill: %w", err)
		}
		// The victim did not come back by itself: restart it so that the
		// next run starts from a full cluster, and say so.
		r.Note = fmt.Sprintf("%s did not rejoin within 90 s (%v); restarted", victim.name, err)
		h.logf("%s", r.Note)
		h.kill(victim)
		if err := h.restart(ctx, victim); err != nil {
			return r, err
		}
		if err := h.waitSafe(ctx, 90*time.Second); err != nil {
			return r, fmt.Errorf("not safe after restarting %s: %w", victim.name, err)
		}
	}
	end := h.now()
	r.SafeMs = msOf(end - t0)
	sleepCtx(ctx, time.Second) // the writers' first acknowledgements after the end
	r.measure(wp.window(t0, end, h.now()), wp, roles)
	r.writable(firsts, t0)
	if cv, err := h.latest(ctx); err == nil {
		r.TableAfter = cv.Version
	}
	if kind == "kill" {
		rs := h.now()
		if err := h.restart(ctx, victim); err != nil {
			return r, err
		}
		if err := h.waitSafe(ctx, 120*time.Second); err != nil {
			return r, fmt.Errorf("not safe after restarting %s: %w", victim.name, err)
		}
		re := h.now()
		sleepCtx(ctx, time.Second)
		r.RestoreMaxGapMs = msOf(wp.window(rs, re, h.now()).maxGap)
	}
	wp.trim(h.now())
	return r, nil
}

// measure fills the writers' figures of r.
func (r *faultRun) measure(ww writerWindow, wp *writerPool, roles []string) {
	r.MaxGapMs = msOf(ww.maxGap)
	r.Stalled = len(ww.stalled)
	r.Errors = ww.errs
	r.Acks = ww.acks
	r.StalledBy = map[string]int{}
	for _, i := range ww.stalled {
		r.StalledBy[roles[wp.writers[i].partition]]++
	}
}

// writable fills the probes' figures of r from the first acknowledgement
// per partition (0: none).
func (r *faultRun) writable(firsts []int64, t0 int64) {
	var last int64
	for _, t := range firsts {
		if t == 0 {
			r.Unwritable++
			continue
		}
		last = max(last, t-t0)
		if t-t0 > int64(stallThreshold) {
			r.SlowPartitions++
		}
	}
	r.WritableMs = msOf(last)
}

// injectFault starts a fault of kind on victim.
func injectFault(h *harness, kind string, victim *proc) error {
	switch kind {
	case "kill":
		h.kill(victim)
	case "stop":
		h.signal(victim, syscall.SIGSTOP)
		victim.paused = true
	case "netns":
		return netSplit([]int{victim.idx})
	case "isolate":
		return sh("ip", "link", "set", vethName(victim.idx), "down")
	default:
		return fmt.Errorf("unknown fault %q", kind)
	}
	return nil
}

// undoFault ends a fault of kind on victim (not kill: the victim is
// restarted once the cluster is safe without it).
func undoFault(h *harness, kind string, victim *proc) error {
	switch kind {
	case "stop":
		h.signal(victim, syscall.SIGCONT)
		victim.paused = false
	case "netns":
		return netHeal([]int{victim.idx})
	case "isolate":
		return sh("ip", "link", "set", vethName(victim.idx), "up")
	}
	return nil
}

// probeAll writes once into every partition (keys[i] is in partition i),
// retrying each until it is acknowledged or ctx ends, all at once. The
// channel yields, per partition, when (h.now) the write was acknowledged
// (0: never).
func probeAll(ctx context.Context, m client.Map, keys []string, now func() int64) <-chan []int64 {
	out := make(chan []int64, 1)
	firsts := make([]int64, len(keys))
	var wg sync.WaitGroup
	for i, k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if err := m.Put(ctx, k, []byte(k)); err == nil {
					firsts[i] = now()
					return
				}
				sleepCtx(ctx, 10*time.Millisecond)
			}
		}()
	}
	go func() {
		wg.Wait()
		out <- firsts
	}()
	return out
}
