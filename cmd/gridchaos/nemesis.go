package main

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/collocate/grid/affinity"
)

// faultKinds are the nemesis' faults (docs/chaos.md describes each).
var faultKinds = []string{
	"kill", "kill-primary", "restart-now", "restart-chain", "kill-fill-sender", "kill-fill-receiver",
	"pause", "leave", "join", "partition", "kill-two", "starve-kill",
}

func isFaultKind(k string) bool { return slices.Contains(faultKinds, k) }

// nemesis is the fault loop's state.
type nemesis struct {
	h         *harness
	faults    []faultRec
	hits      []hit // the faults' disruptive actions, in order (unavail.go)
	script    []string
	sum       *Summary
	violation func(format string, args ...any)
	// idleMissing, if set, counts the idle keys missing now; it is called
	// whenever the cluster is safe again, so that a loss is attributed to
	// the fault that caused it (the final check stays authoritative).
	idleMissing func(ctx context.Context) int
	missing     int
	checkedAt   int64
}

// next chooses the next fault kind: the script first, then a seeded
// random choice among the kinds this cluster supports.
func (n *nemesis) next() string {
	if len(n.script) > 0 {
		k := n.script[0]
		n.script = n.script[1:]
		return k
	}
	h := n.h
	kinds := []string{"kill", "kill-primary", "restart-now", "restart-chain", "kill-fill-sender", "kill-fill-receiver", "pause", "leave", "join", "starve-kill"}
	if h.cfg.Netns {
		kinds = append(kinds, "partition", "partition")
	}
	if h.cfg.Backups >= 2 && len(h.running()) >= 5 {
		kinds = append(kinds, "kill-two", "kill-two")
	}
	k := kinds[h.rng.IntN(len(kinds))]
	if k == "join" && len(h.procs) > h.cfg.Nodes {
		k = "kill" // the extra member is already there
	}
	return k
}

// run injects faults until the deadline. After a fault it either waits
// for the cluster to be safe or, with probability NoWait, goes on to the
// next fault while migrations, fills and resyncs are still running (kills
// then pick only victims whose copies are not the last valid ones). It
// returns false if the cluster stopped recovering.
func (n *nemesis) run(ctx context.Context, deadline time.Time) bool {
	h := n.h
	pause := func() time.Duration { return time.Duration(500+h.rng.IntN(1500)) * time.Millisecond }
	// A slow machine may spend the whole duration on one fault: the run
	// goes on until MinFaults were injected, within twice the duration.
	hard := deadline.Add(h.cfg.Duration)
	more := func() bool {
		now := time.Now()
		return now.Before(deadline) || (len(n.faults) < h.cfg.MinFaults && now.Before(hard))
	}
	for more() && ctx.Err() == nil {
		time.Sleep(pause())
		kind := n.next()
		converged := h.unsafe(ctx) == ""
		rec, err := n.inject(ctx, kind)
		if rec.start != 0 {
			n.faults = append(n.faults, rec)
			n.sum.Faults[kind]++
			if !converged {
				n.sum.NoWaitFaults++
			}
		}
		if err != nil {
			n.violation("%s: %v", kind, err)
			return false
		}
		if h.rng.Float64() < h.cfg.NoWait {
			// The next fault lands while the cluster repairs this one.
			pause = func() time.Duration { return time.Duration(h.rng.IntN(300)) * time.Millisecond }
			h.logf("next fault without waiting for convergence")
			continue
		}
		pause = func() time.Duration { return time.Duration(500+h.rng.IntN(1500)) * time.Millisecond }
		if err := h.waitSafe(ctx, 60*time.Second); err != nil {
			n.violation("after %s the cluster was not safe within 60s: %v", rec.desc, err)
			return false
		}
		n.attributeIdleLoss(ctx)
	}
	return true
}

// attributeIdleLoss reads the idle keys back on a safe cluster and names
// the faults since the last read if more are missing than before.
func (n *nemesis) attributeIdleLoss(ctx context.Context) {
	if n.idleMissing == nil {
		return
	}
	m := n.idleMissing(ctx)
	if m > n.missing {
		var since []string
		for i := len(n.faults) - 1; i >= 0 && n.faults[i].end > n.checkedAt; i-- {
			since = append(since, fmt.Sprintf("%d %s", i+1, n.faults[i].kind))
		}
		msg := fmt.Sprintf("+%d idle keys missing after faults %v", m-n.missing, since)
		n.h.logf("%s", msg)
		n.sum.IdleLosses = append(n.sum.IdleLosses, msg)
	}
	n.missing = max(n.missing, m)
	n.checkedAt = n.h.now()
}

// inject fires one fault of kind and undoes it (restarts, resumes, heals).
func (n *nemesis) inject(ctx context.Context, kind string) (faultRec, error) {
	h := n.h
	rec := faultRec{kind: kind, desc: kind}
	begin := func(desc string) {
		rec.desc = desc + n.leader(ctx)
		rec.start = h.now()
		n.hits = append(n.hits, hit{fault: len(n.faults) + 1, kind: kind, at: rec.start})
		h.logf("fault %d: %s", len(n.faults)+1, rec.desc)
	}
	var err error
	switch kind {
	case "kill", "kill-primary":
		err = n.kill(ctx, kind, begin)
	case "restart-now":
		err = n.restartNow(ctx, begin)
	case "restart-chain":
		err = n.restartChain(ctx, begin)
	case "kill-fill-sender", "kill-fill-receiver":
		err = n.killFill(ctx, kind == "kill-fill-sender", begin)
	case "kill-two":
		err = n.killTwo(ctx, begin)
	case "pause":
		err = n.pause(begin)
	case "starve-kill":
		err = n.starveKill(ctx, begin)
	case "leave":
		err = n.leave(ctx, begin)
	case "partition":
		err = n.partition(begin)
	case "join":
		p := h.slot(len(h.procs))
		begin("join " + p.name)
		err = h.start(p)
	default:
		err = fmt.Errorf("unknown fault kind %q", kind)
	}
	rec.end = h.now()
	return rec, err
}

// victim returns a running member whose kill loses nothing by design,
// preferring want; it waits up to 60 s for re-replication to make one safe.
func (n *nemesis) victim(ctx context.Context, want *proc) (*proc, error) {
	h := n.h
	var cands []*proc
	if want != nil {
		cands = append(cands, want)
	}
	live := h.running()
	for _, i := range h.rng.Perm(len(live)) {
		if live[i] != want {
			cands = append(cands, live[i])
		}
	}
	if p := h.safeVictim(ctx, cands, 60*time.Second); p != nil {
		return p, nil
	}
	return nil, fmt.Errorf("for 60 s every member held the last valid copy of some partition (re-replication stalled)")
}

// leaderOf returns the process the view names as raft leader (by its RPC
// address, which is what raft knows), or nil.
func (h *harness) leaderOf(cv *clusterView) *proc {
	if cv.Leader == "" {
		return nil
	}
	for _, p := range h.procs {
		if p.rpc == cv.Leader {
			return p
		}
	}
	return nil
}

// leader names the raft leader of the newest table, so that a fault's
// unavailability can be read knowing whether it hit the table's authority.
func (n *nemesis) leader(ctx context.Context) string {
	cv, err := n.h.latest(ctx)
	if err != nil {
		return ""
	}
	if p := n.h.leaderOf(cv); p != nil {
		return "; raft leader " + p.name
	}
	return "; no raft leader known"
}

// mark records a disruptive action of the fault being injected, after
// its first (begin records that one).
func (n *nemesis) mark(kind string) {
	n.hits = append(n.hits, hit{fault: len(n.faults) + 1, kind: kind, at: n.h.now()})
}

// rejoin restarts p after the cluster recovered from its loss: the grid
// moves partitions back to it, a hit of kind "rejoin".
func (n *nemesis) rejoin(ctx context.Context, p *proc) error {
	n.mark("rejoin")
	return n.h.restart(ctx, p)
}

// restart starts p again with the same name and flags. If p restarts
// empty while the newest table still names it, the cluster is safe again
// only at a later table (one that can know the new incarnation); if the
// table names nothing on p, everything it will name there is new: its
// amnesia is over.
func (h *harness) restart(ctx context.Context, p *proc) error {
	if h.amnesiac[p.name] {
		cv, err := h.latest(ctx)
		switch {
		case err != nil:
			return fmt.Errorf("table before restarting %s: %w", p.name, err)
		case cv.names(p.name):
			h.restartedAt[p.name] = cv.Version
		default:
			delete(h.amnesiac, p.name)
		}
	}
	h.logf("restart %s", p.name)
	return h.start(p)
}

// kill SIGKILLs a member (for kill-primary, the primary of a register),
// waits for the failover and re-replication, and restarts it.
func (n *nemesis) kill(ctx context.Context, kind string, begin func(string)) error {
	h := n.h
	var want *proc
	if kind == "kill-primary" {
		want = h.primaryOf(ctx, h.registerKey(h.rng.IntN(h.cfg.Registers)))
	}
	p, err := n.victim(ctx, want)
	if err != nil {
		return err
	}
	begin(fmt.Sprintf("%s: SIGKILL %s", kind, p.name))
	h.kill(p)
	if err := h.waitSafe(ctx, 60*time.Second); err != nil {
		return fmt.Errorf("no failover after killing %s: %v", p.name, err)
	}
	return n.rejoin(ctx, p)
}

// restartNow SIGKILLs a member and restarts it at once with the same name
// and flags (a supervisor's restart): the new, empty incarnation may join
// before the authority saw the old one die.
func (n *nemesis) restartNow(ctx context.Context, begin func(string)) error {
	p, err := n.victim(ctx, nil)
	if err != nil {
		return err
	}
	begin(fmt.Sprintf("restart-now: SIGKILL %s and restart it at once", p.name))
	n.h.kill(p)
	return n.h.restart(ctx, p)
}

// restartChain SIGKILLs a member A and restarts it at once with the same
// name and flags, waits until every partition has its backups and nothing
// is pending, then SIGKILLs the member B that is primary of most of the
// partitions A now backs up: if A was reported in sync while empty, B's
// death promotes an empty replica and the idle keys show the loss.
func (n *nemesis) restartChain(ctx context.Context, begin func(string)) error {
	h := n.h
	a, err := n.victim(ctx, nil)
	if err != nil {
		return err
	}
	begin(fmt.Sprintf("restart-chain: SIGKILL %s, restart it at once, converge, SIGKILL the primary of its backups", a.name))
	h.kill(a)
	if err := h.restart(ctx, a); err != nil {
		return err
	}
	var b *proc
	var backed map[string]int
	for try := 0; ; try++ {
		if err := h.waitSafe(ctx, 60*time.Second); err != nil {
			return fmt.Errorf("not converged after restarting %s: %v", a.name, err)
		}
		cv, err := h.latest(ctx)
		if err != nil {
			return err
		}
		b, backed = primaryOfBackups(h, cv, a)
		if b == nil {
			return fmt.Errorf("no member besides %s", a.name)
		}
		w := h.wouldLose(cv, b.name)
		if w == "" {
			break
		}
		// The table was converged and no longer is, with no fault in
		// between (a backup went back to pending, say): count it, wait
		// again.
		n.sum.Unconverged++
		h.logf("restart-chain: the table changed after convergence: %s", w)
		if try == 2 {
			return fmt.Errorf("converged three times, yet killing %s would lose data by design each time: %s", b.name, w)
		}
	}
	h.logf("restart-chain: SIGKILL %s (primary of %d partitions backed up by %s%s)", b.name, backed[b.name], a.name, n.leader(ctx))
	n.mark("restart-chain")
	h.kill(b)
	if err := h.waitSafe(ctx, 60*time.Second); err != nil {
		return fmt.Errorf("no failover after killing %s: %v", b.name, err)
	}
	return n.rejoin(ctx, b)
}

// primaryOfBackups returns the member (not a) that is primary of most
// partitions a backs up, and the counts.
func primaryOfBackups(h *harness, cv *clusterView, a *proc) (*proc, map[string]int) {
	backed := map[string]int{}
	for _, part := range cv.Partitions {
		if slices.Contains(part.Backups, a.name) {
			backed[part.Primary]++
		}
	}
	var b *proc
	for _, p := range h.running() {
		if p != a && (b == nil || backed[p.name] > backed[b.name]) {
			b = p
		}
	}
	return b, backed
}

// killFill makes a member X refill (kill, failover, restart), waits until
// the table shows pending replicas, and SIGKILLs a fill's sender (the
// primary of a pending partition) or receiver (a pending member) while the
// snapshot is in flight. Then it waits for the failover and restarts the
// victim.
func (n *nemesis) killFill(ctx context.Context, sender bool, begin func(string)) error {
	h := n.h
	x, err := n.victim(ctx, nil)
	if err != nil {
		return err
	}
	role := "receiver"
	if sender {
		role = "sender"
	}
	begin(fmt.Sprintf("kill-fill-%s: SIGKILL %s, restart it, SIGKILL a fill %s while replicas are pending", role, x.name, role))
	h.kill(x)
	if err := h.waitSafe(ctx, 60*time.Second); err != nil {
		return fmt.Errorf("no failover after killing %s: %v", x.name, err)
	}
	// Find the leader first: a fill of tens of MiB ends within a second of
	// the restart.
	var leader *proc
	if cv, err := h.latest(ctx); err == nil {
		leader = h.leaderOf(cv)
	}
	if err := n.rejoin(ctx, x); err != nil {
		return err
	}
	v, desc := n.fillVictim(ctx, sender, leader, 15*time.Second)
	if v == nil {
		n.sum.FillMissed++
		h.logf("kill-fill-%s: no fill seen to hit (%s)", role, desc)
		return nil
	}
	h.logf("kill-fill-%s: SIGKILL %s (%s)", role, v.name, desc)
	n.sum.FillKills++
	n.mark("kill-fill-" + role)
	h.kill(v)
	if err := h.waitSafe(ctx, 60*time.Second); err != nil {
		return fmt.Errorf("no failover after killing fill %s %s: %v", role, v.name, err)
	}
	return n.rejoin(ctx, v)
}

// fillVictim polls the newest table until it shows pending replicas and
// returns the member to kill: the primary with most pending partitions
// (sender) or the member pending on most partitions (receiver), among
// those whose kill loses nothing by design.
func (n *nemesis) fillVictim(ctx context.Context, sender bool, leader *proc, d time.Duration) (*proc, string) {
	h := n.h
	deadline := time.Now().Add(d)
	why := "the table never showed a pending replica"
	// Fills can end within a second: poll one node, the leader (whose
	// table is the newest).
	from := leader
	if from != nil && (!from.running || from.paused) {
		from = nil
	}
	polls := 0
	for time.Now().Before(deadline) && ctx.Err() == nil {
		cv, err := h.viewFrom(ctx, from)
		if err != nil {
			from = nil
			time.Sleep(10 * time.Millisecond)
			continue
		}
		polls++
		if l := h.leaderOf(cv); l != nil && l.running && !l.paused {
			from = l
		}
		counts := map[string]int{}
		for _, id := range cv.pending() {
			part := cv.Partitions[id]
			if sender {
				counts[part.Primary]++
			} else {
				for _, r := range part.Pending {
					counts[r]++
				}
			}
		}
		var best *proc
		for name, c := range counts {
			p := h.byName(name)
			if p == nil || !p.running || p.paused {
				continue
			}
			if w := h.wouldLose(cv, name); w != "" {
				why = "pending replicas seen, but every candidate held a last copy: " + w
				continue
			}
			if best == nil || c > counts[best.name] || (c == counts[best.name] && name < best.name) {
				best = p
			}
		}
		if best != nil {
			polled := "the newest table"
			if from != nil {
				polled = from.name
			}
			return best, fmt.Sprintf("%d pending partitions at table %d, polled on %s after %d polls", counts[best.name], cv.Version, polled, polls)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil, fmt.Sprintf("%s; %d polls", why, polls)
}

// killTwo SIGKILLs two members at once, which 2 backups must survive. At
// most one raft voter: losing two of three voters freezes the table by
// design (docs/operations.md), which is not this fault.
func (n *nemesis) killTwo(ctx context.Context, begin func(string)) error {
	h := n.h
	cv, err := h.latest(ctx)
	if err != nil {
		return err
	}
	live := h.running()
	var pair []*proc
	voters := 0
	for _, o := range h.rng.Perm(len(live)) {
		p := live[o]
		isVoter := slices.Contains(cv.Voters, p.name)
		if p.paused || (isVoter && voters == 1) {
			continue
		}
		pair = append(pair, p)
		if isVoter {
			voters++
		}
		if len(pair) == 2 {
			break
		}
	}
	if len(pair) < 2 {
		return fmt.Errorf("no pair to kill among %d members", len(live))
	}
	if w := h.wouldLose(cv, pair[0].name, pair[1].name); w != "" {
		if err := h.waitSafe(ctx, 60*time.Second); err != nil {
			return fmt.Errorf("waiting to kill two members: %v", err)
		}
	}
	begin(fmt.Sprintf("kill-two: SIGKILL %s and %s at once", pair[0].name, pair[1].name))
	for _, p := range pair {
		h.signal(p, syscall.SIGKILL)
	}
	for _, p := range pair {
		h.kill(p) // already dying: waits for the exit
	}
	if err := h.waitSafe(ctx, 60*time.Second); err != nil {
		return fmt.Errorf("no failover after killing %s and %s: %v", pair[0].name, pair[1].name, err)
	}
	for _, p := range pair {
		if err := n.rejoin(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// pause SIGSTOPs a member for 2-4 s (past failure detection and the
// lease), then SIGCONTs it. A paused member keeps its data.
func (n *nemesis) pause(begin func(string)) error {
	h := n.h
	var live []*proc
	for _, p := range h.running() {
		if !p.paused {
			live = append(live, p)
		}
	}
	p := live[h.rng.IntN(len(live))]
	d := time.Duration(2000+h.rng.IntN(2000)) * time.Millisecond
	begin(fmt.Sprintf("pause: SIGSTOP %s for %v", p.name, d))
	h.signal(p, syscall.SIGSTOP)
	p.paused = true
	time.Sleep(d)
	h.signal(p, syscall.SIGCONT)
	p.paused = false
	h.logf("SIGCONT %s", p.name)
	return nil
}

// leave SIGTERMs a member (graceful leave: it hands its data over), waits
// for the cluster to be safe without it, and restarts it.
func (n *nemesis) leave(ctx context.Context, begin func(string)) error {
	h := n.h
	p, err := n.victim(ctx, nil)
	if err != nil {
		return err
	}
	begin(fmt.Sprintf("leave: SIGTERM %s (graceful)", p.name))
	h.signal(p, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s did not exit within 30s of SIGTERM", p.name)
	}
	p.running = false
	if err := h.waitSafe(ctx, 60*time.Second); err != nil {
		return fmt.Errorf("not safe after %s left: %v", p.name, err)
	}
	return n.rejoin(ctx, p)
}

// partition cuts a minority (1 .. (n-1)/2 members) off for 4-7 s: past
// failure detection and the lease, so the majority takes over its
// primaries.
func (n *nemesis) partition(begin func(string)) error {
	h := n.h
	live := h.running()
	k := 1 + h.rng.IntN(max(1, (len(live)-1)/2))
	var idx []int
	var names []string
	for _, o := range h.rng.Perm(len(live))[:k] {
		idx = append(idx, live[o].idx)
		names = append(names, live[o].name)
	}
	d := time.Duration(4000+h.rng.IntN(3000)) * time.Millisecond
	begin(fmt.Sprintf("partition: cut %v off for %v", names, d))
	if err := netSplit(idx); err != nil {
		return err
	}
	time.Sleep(d)
	h.logf("heal partition of %v", names)
	return netHeal(idx)
}

// primaryOf returns the process that is primary of key's partition.
func (h *harness) primaryOf(ctx context.Context, key string) *proc {
	cv, err := h.latest(ctx)
	if err != nil || len(cv.Partitions) == 0 {
		return nil
	}
	p := h.byName(cv.Partitions[affinity.Partition(key, len(cv.Partitions))].Primary)
	if p == nil || !p.running || p.paused {
		return nil
	}
	return p
}

// starveKill is chaos Finding 6: it SIGSTOPs a member X (starved: its
// lease renewals stop while membership still finds it alive for a while),
// SIGKILLs another member Y that shares partitions with X half a lease
// later, before the leader fails X over, and resumes X 1.5-2.5 s after the
// stop. The leader fails X over first and promotes Y where X led; Y is
// dead, so those partitions' data is X's copy (a spare). Then Y is
// restarted (empty). Nothing may be lost: only Y died.
func (n *nemesis) starveKill(ctx context.Context, begin func(string)) error {
	h := n.h
	y, err := n.victim(ctx, nil)
	if err != nil {
		return err
	}
	cv, err := h.latest(ctx)
	if err != nil {
		return err
	}
	x := sharesMost(h, cv, y)
	if x == nil {
		// y holds nothing yet (restarted, not refilled): no fault.
		h.logf("starve-kill: skipped, %s holds no partition yet", y.name)
		return nil
	}
	stop := time.Duration(1500+h.rng.IntN(1000)) * time.Millisecond
	begin(fmt.Sprintf("starve-kill: SIGSTOP %s, SIGKILL %s 0.5 s later, SIGCONT %s after %v", x.name, y.name, x.name, stop))
	h.signal(x, syscall.SIGSTOP)
	x.paused = true
	start := time.Now()
	time.Sleep(500 * time.Millisecond)
	h.kill(y)
	time.Sleep(time.Until(start.Add(stop)))
	h.signal(x, syscall.SIGCONT)
	x.paused = false
	h.logf("SIGCONT %s", x.name)
	if err := h.waitSafe(ctx, 60*time.Second); err != nil {
		return fmt.Errorf("no failover after starving %s and killing %s: %v", x.name, y.name, err)
	}
	return n.rejoin(ctx, y)
}

// sharesMost returns the running member (not y) that holds a copy of most
// partitions y holds.
func sharesMost(h *harness, cv *clusterView, y *proc) *proc {
	shared := map[string]int{}
	for _, part := range cv.Partitions {
		holders := append([]string{part.Primary}, part.Backups...)
		if slices.Contains(holders, y.name) {
			for _, name := range holders {
				shared[name]++
			}
		}
	}
	var x *proc
	for _, p := range h.running() {
		if p != y && !p.paused && shared[p.name] > 0 && (x == nil || shared[p.name] > shared[x.name]) {
			x = p
		}
	}
	return x
}
