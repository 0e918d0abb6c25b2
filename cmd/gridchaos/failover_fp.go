package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"
)

// fpRun is one train of short stop-the-world pauses of one member while
// the writers run, and what the others made of it.
type fpRun struct {
	Victim  string  `json:"victim"`
	Leader  bool    `json:"victim_was_leader"`
	Pauses  int     `json:"pauses"`
	Seconds float64 `json:"seconds"`
	// From the other members' logs: memberlist suspicions of the victim
	// ("Suspect <victim> has failed") and serf's member-failed events for
	// it (the failure detector's verdict).
	Suspicions int `json:"suspicions_in_logs"`
	Failures   int `json:"declared_failed_in_logs"`
	// From polling the other members' /v1/cluster every 200 ms: how often
	// the victim's status left alive, the new table versions, those in
	// which the victim held fewer primaries or backups than in the
	// previous one (and how many it lost), and raft leader changes.
	StatusFlaps    int            `json:"status_not_alive_seen"`
	Tables         int            `json:"table_versions"`
	MovedAway      int            `json:"tables_moving_copies_away"`
	PrimariesMoved int            `json:"primaries_moved_away"`
	BackupsMoved   int            `json:"backups_moved_away"`
	LeaderChanges  int            `json:"leader_changes"`
	MaxGapMs       float64        `json:"max_gap_ms"`
	GapMs          dist           `json:"writer_max_gap_ms"` // over the writers
	Stalled        int            `json:"stalled_writers"`
	Errors         map[string]int `json:"errors"`
	Acks           int            `json:"acked_writes"`
	Note           string         `json:"note,omitempty"`
}

// fpWatch is what polling the observers saw.
type fpWatch struct {
	flaps, tables, movedAway, primaries, backups, leaderChanges int
}

// fpMode runs cfg.FPRuns pause trains, on the raft leader and on a
// follower in turn.
func (f *failover) fpMode(ctx context.Context, h *harness) ([]fpRun, error) {
	wp, err := startWriters(ctx, h, f.cfg.Writers, f.sum.Partitions)
	if err != nil {
		return nil, err
	}
	defer wp.stop()
	var runs []fpRun
	initial := slices.Clone(h.procs[:f.cfg.Nodes])
	for run := range f.cfg.FPRuns {
		if ctx.Err() != nil {
			return runs, ctx.Err()
		}
		r, err := f.fpRun(ctx, h, wp, h.pickVictim(ctx, run, initial))
		if err != nil {
			return runs, fmt.Errorf("run %d: %w", run+1, err)
		}
		h.logf("run %d: pauses of %s (leader %v): %d suspicions, %d declared failed, %d tables moved copies away (%d primaries, %d backups), %d leader changes; max gap %.0f ms, %d writers stalled",
			run+1, r.Victim, r.Leader, r.Suspicions, r.Failures, r.MovedAway, r.PrimariesMoved, r.BackupsMoved, r.LeaderChanges, r.MaxGapMs, r.Stalled)
		runs = append(runs, r)
	}
	return runs, nil
}

func (f *failover) fpRun(ctx context.Context, h *harness, wp *writerPool, victim *proc) (fpRun, error) {
	sleepCtx(ctx, f.cfg.Warmup)
	cv, err := h.latest(ctx)
	if err != nil {
		return fpRun{}, err
	}
	r := fpRun{Victim: victim.name, Leader: h.leaderOf(cv) == victim}
	var observers []*proc
	offsets := map[string]int64{}
	for _, p := range h.running() {
		if p != victim {
			observers = append(observers, p)
			if st, err := os.Stat(p.logPath); err == nil {
				offsets[p.logPath] = st.Size()
			}
		}
	}
	wctx, stopWatch := context.WithCancel(ctx)
	watched := watchVictim(wctx, observers, victim.name, cv)
	h.logf("pausing %s for %v every %v for %v (leader %v)", victim.name, f.cfg.PauseFor, f.cfg.PauseEvery, f.cfg.Duration, r.Leader)
	t0 := h.now()
	r.Pauses = pauseTrain(ctx, h, victim, f.cfg.Duration, f.cfg.PauseEvery, f.cfg.PauseFor)
	r.Seconds = float64(h.now()-t0) / 1e9
	if err := h.waitSafe(ctx, 90*time.Second); err != nil {
		r.Note = fmt.Sprintf("not safe within 90 s after the pauses (%v); %s restarted", err, victim.name)
		h.logf("%s", r.Note)
		h.kill(victim)
		if err := h.restart(ctx, victim); err != nil {
			stopWatch()
			return r, err
		}
		if err := h.waitSafe(ctx, 90*time.Second); err != nil {
			stopWatch()
			return r, fmt.Errorf("not safe after restarting %s: %w", victim.name, err)
		}
	}
	end := h.now()
	stopWatch()
	w := <-watched
	r.StatusFlaps, r.Tables, r.MovedAway, r.PrimariesMoved, r.BackupsMoved, r.LeaderChanges =
		w.flaps, w.tables, w.movedAway, w.primaries, w.backups, w.leaderChanges
	for path, off := range offsets {
		s, f := countVerdicts(path, off, victim.name)
		r.Suspicions += s
		r.Failures += f
	}
	sleepCtx(ctx, time.Second)
	ww := wp.window(t0, end, h.now())
	r.MaxGapMs, r.Stalled, r.Errors, r.Acks = msOf(ww.maxGap), len(ww.stalled), ww.errs, ww.acks
	var gaps []float64
	for _, g := range ww.gaps {
		gaps = append(gaps, msOf(g))
	}
	r.GapMs = distOf(gaps)
	wp.trim(h.now())
	return r, nil
}

// pauseTrain stops victim for pauseFor once every period until d is
// over, and returns the number of pauses. The victim always ends resumed.
func pauseTrain(ctx context.Context, h *harness, victim *proc, d, period, pauseFor time.Duration) int {
	n := 0
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		cycle := time.Now()
		h.signal(victim, syscall.SIGSTOP)
		time.Sleep(pauseFor)
		h.signal(victim, syscall.SIGCONT)
		n++
		sleepCtx(ctx, period-time.Since(cycle))
	}
	return n
}

// watchVictim polls the observers' /v1/cluster every 200 ms until ctx
// ends and reports what it saw of victim, starting from the table base.
func watchVictim(ctx context.Context, observers []*proc, victim string, base *clusterView) <-chan fpWatch {
	out := make(chan fpWatch, 1)
	urls := make([]string, len(observers))
	for i, p := range observers {
		urls[i] = p.httpURL + "/v1/cluster"
	}
	go func() {
		var w fpWatch
		version := base.Version
		prim, back := holdings(base, victim)
		leader := base.Leader
		status := map[string]string{}
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				out <- w
				return
			case <-tick.C:
			}
			for _, u := range urls {
				var cv clusterView
				if err := getJSON(ctx, u, &cv); err != nil {
					continue
				}
				if s := cv.status(victim); s != "alive" && status[u] == "alive" {
					w.flaps++
					status[u] = s
				} else {
					status[u] = s
				}
				if cv.Leader != "" && cv.Leader != leader {
					if leader != "" {
						w.leaderChanges++
					}
					leader = cv.Leader
				}
				if cv.Version > version {
					w.tables++
					p, b := holdings(&cv, victim)
					if p < prim || b < back {
						w.movedAway++
						w.primaries += max(0, prim-p)
						w.backups += max(0, back-b)
					}
					version, prim, back = cv.Version, p, b
				}
			}
		}
	}()
	return out
}

// holdings counts the partitions whose primary, and whose backups, include
// name.
func holdings(cv *clusterView, name string) (primaries, backups int) {
	for _, p := range cv.Partitions {
		if p.Primary == name {
			primaries++
		} else if slices.Contains(p.Backups, name) {
			backups++
		}
	}
	return primaries, backups
}

// countVerdicts counts, in the log at path from offset on, memberlist's
// suspicions of victim and serf's member-failed events for it.
func countVerdicts(path string, offset int64, victim string) (suspicions, failures int) {
	fh, err := os.Open(path)
	if err != nil {
		return 0, 0
	}
	defer fh.Close()
	if _, err := fh.Seek(offset, io.SeekStart); err != nil {
		return 0, 0
	}
	b, err := io.ReadAll(io.LimitReader(fh, 256<<20))
	if err != nil {
		return 0, 0
	}
	s := string(b)
	return strings.Count(s, "Suspect "+victim+" has failed"), strings.Count(s, "event=member-failed member="+victim+" ")
}
