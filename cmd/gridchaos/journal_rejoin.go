package main

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/collocate/grid/client"
)

// The journal mode's rejoin measurement (-rejoin): a member holding its
// share of -rejoin-entries entries is SIGSTOPped for -rejoin-stop (past
// the lease: it is failed over) while writers update the entries, then
// SIGCONTed; how long until every partition is back in sync (the table
// converged with every member used, every backup equal to its primary),
// and how its copies were refilled: by tail (the records it missed) or by
// snapshot. Run it once with gridnode's default journal and once with
// -journal-records 1 (almost every fill a snapshot) to compare.

// rejoinResult is the rejoin measurement.
type rejoinResult struct {
	Entries        int     `json:"entries"`
	JournalRecords int     `json:"journal_records"` // gridnode -journal-records (0: default)
	LoadS          float64 `json:"load_s"`
	Victim         string  `json:"victim"`
	VictimEntries  int     `json:"victim_entries"` // entries in the victim's replicas before the stop
	VictimParts    int     `json:"victim_partitions"`
	StopMs         float64 `json:"stopped_ms"`
	// FailedOverMs is when (ms after the SIGSTOP) a table without the
	// victim was seen; 0 if none was.
	FailedOverMs float64 `json:"failed_over_ms"`
	WritesDuring int64   `json:"writes_during_stop"`
	// WriteGapMs is the longest time between acknowledged writes (of all
	// writers) from the SIGSTOP to the SIGCONT: how long every writer
	// was stuck.
	WriteGapMs float64 `json:"write_gap_max_ms"`
	// ConvergedMs: SIGCONT -> the table converged with every member used
	// and nothing pending; InSyncMs: SIGCONT -> converged and every backup
	// equal to its primary (LSN, entries, digest).
	ConvergedMs float64 `json:"converged_ms"`
	InSyncMs    float64 `json:"in_sync_ms"`
	// Fills are the grid_fills_total increments over the stop and the
	// rejoin: received by the victim, and sent by every member.
	VictimTails     float64  `json:"victim_tails_received"`
	VictimSnapshots float64  `json:"victim_snapshots_received"`
	VictimOverCopy  float64  `json:"victim_snapshots_over_copy"`
	TailsSent       float64  `json:"tails_sent"`
	SnapshotsSent   float64  `json:"snapshots_sent"`
	Loadavg         string   `json:"loadavg"`
	Violations      []string `json:"violations,omitempty"`
	Timeline        []string `json:"timeline,omitempty"`
	fills           fillCounts
}

// fillCounts are one scrape of grid_fills_total per member.
type fillCounts map[string]map[string]float64

var fillSeries = []struct{ name, kind, dir string }{
	{"tail_in", "tail", "received"}, {"snap_in", "snapshot", "received"}, {"over", "over_copy", "received"},
	{"tail_out", "tail", "sent"}, {"snap_out", "snapshot", "sent"},
}

func scrapeFills(ctx context.Context, h *harness) fillCounts {
	out := fillCounts{}
	for _, p := range h.running() {
		if p.paused {
			continue
		}
		b, err := getBody(ctx, p.httpURL+"/metrics")
		if err != nil {
			continue
		}
		out[p.name] = map[string]float64{}
		for _, s := range fillSeries {
			v, _ := metricSum(string(b), "grid_fills_total", `kind="`+s.kind+`"`, `direction="`+s.dir+`"`)
			out[p.name][s.name] = v
		}
	}
	return out
}

// runRejoin runs the measurement on a fresh cluster.
func runRejoin(ctx context.Context, cfg journalConfig, bin string, seed uint64) (*rejoinResult, error) {
	r := &rejoinResult{Entries: cfg.RejoinEntries, JournalRecords: cfg.JournalRecords}
	before := loadavg()
	defer func() { r.Loadavg = before + " -> " + loadavg() }()
	h, err := startJournalCluster(ctx, cfg, bin, seed, "rejoin")
	if h != nil {
		defer func() {
			h.stopAll()
			h.saveLogs() // a measurement: its logs tell how the fills went
			os.RemoveAll(h.dir)
		}()
	}
	if err != nil {
		return r, err
	}
	data := newMRData(seed, cfg.RejoinEntries)
	t0 := time.Now()
	if err := loadMRData(ctx, h, data, 5000); err != nil {
		return r, err
	}
	r.LoadS = float64(time.Since(t0).Milliseconds()) / 1000
	h.logf("rejoin: loaded %d entries in %.1f s", cfg.RejoinEntries, r.LoadS)
	if err := h.waitSafe(ctx, 3*time.Minute); err != nil {
		return r, fmt.Errorf("not safe after the load: %w", err)
	}
	if err := waitInSync(ctx, h, time.Minute); err != nil {
		return r, fmt.Errorf("replicas not in sync after the load: %w", err)
	}
	cv, err := h.latest(ctx)
	if err != nil {
		return r, err
	}
	victim := rejoinVictim(h, cv)
	if victim == nil {
		return r, fmt.Errorf("no follower to stop")
	}
	r.Victim = victim.name
	r.VictimEntries, r.VictimParts = replicaEntries(ctx, victim)
	if err := r.outage(ctx, h, victim, cfg.RejoinStop, cfg.RejoinEntries, seed); err != nil {
		return r, err
	}
	return r, nil
}

// rejoinVictim is a raft follower (the lowest name): stopping the leader
// would add an election to the measurement.
func rejoinVictim(h *harness, cv *clusterView) *proc {
	leader := h.leaderOf(cv)
	for _, p := range h.running() {
		if p != leader {
			return p
		}
	}
	return nil
}

// replicaEntries sums the entries of p's replicas and counts them.
func replicaEntries(ctx context.Context, p *proc) (entries, parts int) {
	var pi []partInfo
	if err := getJSON(ctx, p.httpURL+"/v1/partitions", &pi); err != nil {
		return 0, 0
	}
	for _, x := range pi {
		if x.Role == "primary" || x.Role == "backup" {
			entries += x.Entries
			parts++
		}
	}
	return entries, parts
}

// outage stops victim for d while writers update the loaded entries,
// resumes it and measures the rejoin.
func (r *rejoinResult) outage(ctx context.Context, h *harness, victim *proc, d time.Duration, entries int, seed uint64) error {
	c, err := client.Dial(ctx, client.Config{Addrs: h.rpcAddrs()})
	if err != nil {
		return err
	}
	defer c.Close()
	note := func(format string, args ...any) {
		s := fmt.Sprintf(format, args...)
		h.logf("rejoin: %s", s)
		r.Timeline = append(r.Timeline, fmt.Sprintf("%.1fs %s", sec(h.now()), s))
	}
	fills0 := scrapeFills(ctx, h)
	var writes atomic.Int64
	var ackMu sync.Mutex
	var acks []int64
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	m := c.Map(mrMap)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for wctx.Err() == nil {
				k := mrKey(rng.IntN(entries))
				if m.Put(wctx, k, strconv.AppendInt(nil, rng.Int64N(1e6), 10)) == nil {
					writes.Add(1)
					ackMu.Lock()
					acks = append(acks, h.now())
					ackMu.Unlock()
				}
				sleepCtx(wctx, 5*time.Millisecond)
			}
		}()
	}
	stopWriters := sync.OnceFunc(func() { cancel(); wg.Wait() })
	defer stopWriters()
	sleepCtx(ctx, time.Second)

	stopAt := h.now()
	w0 := writes.Load()
	note("SIGSTOP %s (%d entries in %d replicas)", victim.name, r.VictimEntries, r.VictimParts)
	h.signal(victim, syscall.SIGSTOP)
	victim.paused = true
	for h.now()-stopAt < d.Nanoseconds() && ctx.Err() == nil {
		if r.FailedOverMs == 0 {
			if cv, err := h.latest(ctx); err == nil && !cv.names(victim.name) {
				r.FailedOverMs = msOf(h.now() - stopAt)
				note("table %d names nothing on %s", cv.Version, victim.name)
			}
		}
		sleepCtx(ctx, 50*time.Millisecond)
	}
	stopWriters()
	r.WritesDuring = writes.Load() - w0
	r.WriteGapMs = maxGapIn(acks, stopAt, h.now())
	h.signal(victim, syscall.SIGCONT)
	victim.paused = false
	contAt := h.now()
	r.StopMs = msOf(contAt - stopAt)
	note("SIGCONT %s after %.0f ms; %d writes acknowledged meanwhile, none for %.0f ms at most", victim.name, r.StopMs, r.WritesDuring, r.WriteGapMs)
	if r.FailedOverMs == 0 {
		r.Violations = append(r.Violations, fmt.Sprintf("%s was not failed over within the %v stop (the measurement is not a rejoin)", victim.name, d))
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		why := h.unsafe(ctx)
		if why == "" && r.ConvergedMs == 0 {
			r.ConvergedMs = msOf(h.now() - contAt)
			note("converged")
		}
		if why == "" {
			if err := h.checkReplicas(ctx); err == nil {
				r.InSyncMs = msOf(h.now() - contAt)
				note("every backup equal to its primary")
				break
			} else {
				why = err.Error()
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("not in sync 5 min after SIGCONT: %s", why)
		}
		sleepCtx(ctx, 100*time.Millisecond)
	}
	r.fills = diffFills(fills0, scrapeFills(ctx, h))
	v := r.fills[victim.name]
	r.VictimTails, r.VictimSnapshots, r.VictimOverCopy = v["tail_in"], v["snap_in"], v["over"]
	for _, f := range r.fills {
		r.TailsSent += f["tail_out"]
		r.SnapshotsSent += f["snap_out"]
	}
	h.logf("rejoin: fills per member: %s", describeFills(r.fills))
	note("fills: victim received %.0f tails, %.0f snapshots (%.0f over its copy); members sent %.0f tails, %.0f snapshots",
		r.VictimTails, r.VictimSnapshots, r.VictimOverCopy, r.TailsSent, r.SnapshotsSent)
	return nil
}

// maxGapIn returns the longest interval (ms) in [from, to] without an
// acknowledgement in acks (sorted).
func maxGapIn(acks []int64, from, to int64) float64 {
	prev, gap := from, int64(0)
	for _, a := range acks {
		if a <= from {
			continue
		}
		if a > to {
			break
		}
		gap, prev = max(gap, a-prev), a
	}
	return msOf(max(gap, to-prev))
}

// waitInSync waits until the cluster is safe and every backup equals its
// primary.
func waitInSync(ctx context.Context, h *harness, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		why := h.unsafe(ctx)
		if why == "" {
			if err := h.checkReplicas(ctx); err == nil {
				return nil
			} else {
				why = err.Error()
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s", why)
		}
		sleepCtx(ctx, 100*time.Millisecond)
	}
}

// diffFills returns b - a per member and series.
func diffFills(a, b fillCounts) fillCounts {
	out := fillCounts{}
	for name, s := range b {
		out[name] = map[string]float64{}
		for k, v := range s {
			out[name][k] = v - a[name][k]
		}
	}
	return out
}

// describeFills renders fills for the log, members in name order.
func describeFills(f fillCounts) string {
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(f)) {
		parts = append(parts, fmt.Sprintf("%s %v", name, f[name]))
	}
	return strings.Join(parts, "; ")
}
