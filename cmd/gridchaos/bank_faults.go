package main

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"time"
)

// bankFaultKinds are the bank mode's faults (after each one the nemesis
// waits until the cluster is safe again):
//
//   - kill: SIGKILL a random node; restart it (same name, empty) once the
//     cluster is safe without it;
//   - restart-now: SIGKILL a random node and restart it at once;
//   - kill-coordinator: hold the first transfer that prepared every other
//     participant before its commit step, SIGKILL the primary of its
//     coordinator partition, let the commit step go (to the dead node,
//     then to the promoted backup); restart the victim;
//   - kill-participant: hold the first transfer whose commit step answered
//     Done before it tells its participants, SIGKILL the primary of a
//     prepared participant (one that is not the coordinator's, if any),
//     let the finishes go; restart the victim;
//   - pause: SIGSTOP a random node for 0.5-4 s (short: its steps stall
//     within its lease; long: it is failed over), then SIGCONT;
//   - pause-coordinator: as kill-coordinator, but SIGSTOP for 2-4 s;
//   - abandon-kill: a transfer through a connection of the nemesis'
//     prepares and its client dies before the commit step; the primary of
//     one of its prepared participants is SIGKILLed: the promoted backup
//     holds its prepared record and locks, and its recovery must abort it;
//   - kill-client: a transfer runs in a client process of its own (the
//     harness' binary again, bank_client.go), which is SIGKILLed right
//     after its prepares: nothing may apply, and only recovery releases
//     its locks; kill-client-mid: SIGKILLed 0-2 ms after it started to
//     send its commit step (outcome unknown);
//   - partition (-netns): cut a minority of the nodes off for 4-7 s;
//   - partition-coordinator (-netns): as kill-coordinator, but cut the
//     coordinator's primary off for 4-7 s (clients still reach it).
var bankFaultKinds = []string{"kill", "restart-now", "kill-coordinator", "kill-participant", "pause", "pause-coordinator",
	"abandon-kill", "kill-client", "kill-client-mid", "partition", "partition-coordinator"}

func isBankFault(k string) bool { return slices.Contains(bankFaultKinds, k) }

// bankFault is one fault of a round. Times are ms since the load began.
type bankFault struct {
	Kind string  `json:"kind"`
	Desc string  `json:"desc"`
	AtMs float64 `json:"at_ms"`
	// Transfer: the transfer held at the trap, or abandoned; Outcome: what
	// became of it.
	Transfer string `json:"transfer,omitempty"`
	Outcome  string `json:"transfer_outcome,omitempty"`
	// Prepared: the held transfer's other participants, prepared when it
	// was hit (a transfer across partitions has at least one).
	Prepared []int `json:"prepared,omitempty"`
	Kills    int   `json:"kills"`
	// ClientKills: client processes SIGKILLed in their commit.
	ClientKills int `json:"client_kills,omitempty"`
	Pauses      int `json:"pauses"`
	Partitions  int `json:"partitions"`
	// SafeMs: from the hit until the cluster was safe again (after the
	// restart or the heal); CommittedUntilSafe: transfers committed
	// meanwhile.
	SafeMs             float64 `json:"safe_after_ms"`
	CommittedUntilSafe int     `json:"committed_until_safe"`
}

// bankNemesis injects a round's faults. Only its goroutine touches the
// harness.
type bankNemesis struct {
	h      *harness
	cfg    bankConfig
	load   *bankLoad
	faults []bankFault
	cut    []int // nodes cut off (netns indexes)
	held   *trapHit
}

// run lets the load run, then injects cfg.Faults in order, each once the
// cluster is safe and after some more load; the idle accounts close
// before the first.
func (n *bankNemesis) run(ctx context.Context) error {
	h := n.h
	for i, kind := range n.cfg.Faults {
		sleepCtx(ctx, n.cfg.Load+time.Duration(h.rng.Int64N(int64(n.cfg.Load))))
		n.load.idleOpen.Store(false)
		if err := h.waitSafe(ctx, 3*time.Minute); err != nil {
			return fmt.Errorf("not safe before fault %d: %w", i+1, err)
		}
		rec, err := n.inject(ctx, kind)
		if rec.Kind != "" {
			n.faults = append(n.faults, rec)
		}
		if err != nil {
			return fmt.Errorf("fault %d (%s): %w", i+1, kind, err)
		}
	}
	sleepCtx(ctx, n.cfg.Load)
	return ctx.Err()
}

// inject fires kind, undoes it, and waits until the cluster is safe.
func (n *bankNemesis) inject(ctx context.Context, kind string) (bankFault, error) {
	h := n.h
	rec := bankFault{Kind: kind}
	var hitAt int64
	hit := func(desc string) {
		hitAt = n.load.since()
		rec.Desc, rec.AtMs = desc, msOf(hitAt)
		h.logf("fault %d: %s", len(n.faults)+1, desc)
	}
	var err error
	switch kind {
	case "kill":
		err = n.killRestart(ctx, n.randomNode(), hit, &rec)
	case "restart-now":
		p := n.randomNode()
		hit(fmt.Sprintf("restart-now: SIGKILL %s and restart it at once", p.name))
		if err = n.kill(ctx, p, &rec); err == nil {
			err = h.restart(ctx, p)
		}
	case "kill-coordinator", "kill-participant", "pause-coordinator", "partition-coordinator":
		err = n.trapped(ctx, kind, hit, &rec)
	case "pause":
		p := n.randomNode()
		d := time.Duration(500+h.rng.IntN(3500)) * time.Millisecond
		hit(fmt.Sprintf("pause: SIGSTOP %s for %v", p.name, d))
		n.pauseFor(ctx, p, d, &rec)
	case "abandon-kill":
		err = n.abandonKill(ctx, hit, &rec)
	case "kill-client", "kill-client-mid":
		hit(kind + ": a client process SIGKILLed in its commit")
		var p *transferPlan
		p, rec.Prepared, err = n.load.killClient(ctx, h.rng, fmt.Sprintf("k%d", len(n.faults)+1), kind == "kill-client-mid")
		if p != nil {
			rec.Transfer = p.id
			rec.ClientKills++
			h.logf("%s: transfer %s (%s -> %s) killed with its client", kind, p.id, p.from, p.to)
		}
	case "partition":
		live := h.running()
		k := 1 + h.rng.IntN(max(1, (len(live)-1)/2))
		var victims []*proc
		for _, o := range h.rng.Perm(len(live))[:k] {
			victims = append(victims, live[o])
		}
		hit(fmt.Sprintf("partition: cut %s off for 4-7 s", names(victims)))
		err = n.cutFor(ctx, victims, &rec)
	default:
		err = fmt.Errorf("unknown fault %q", kind)
	}
	if n.held != nil { // a fault that failed half-way lets its transfer go
		close(n.held.goOn)
		n.held = nil
	}
	n.load.trap.disarm()
	if err == nil {
		if err = h.waitSafe(ctx, 3*time.Minute); err == nil && hitAt > 0 {
			rec.SafeMs = msOf(n.load.since() - hitAt)
			rec.CommittedUntilSafe = n.load.committedSince(hitAt)
		}
	}
	return rec, err
}

func names(ps []*proc) string {
	var out []string
	for _, p := range ps {
		out = append(out, p.name)
	}
	return fmt.Sprint(out)
}

// randomNode returns a running, unpaused node chosen by the seed.
func (n *bankNemesis) randomNode() *proc {
	var live []*proc
	for _, p := range n.h.running() {
		if !p.paused {
			live = append(live, p)
		}
	}
	return live[n.h.rng.IntN(len(live))]
}

// kill SIGKILLs p (counted) unless that could lose data by design.
func (n *bankNemesis) kill(ctx context.Context, p *proc, rec *bankFault) error {
	cv, err := n.h.latest(ctx)
	if err != nil {
		return err
	}
	if why := n.h.wouldLose(cv, p.name); why != "" {
		return fmt.Errorf("killing %s would lose data by design: %s", p.name, why)
	}
	n.h.kill(p)
	rec.Kills++
	return nil
}

// killRestart SIGKILLs p, waits a second and until the cluster is safe
// without it, and restarts it.
func (n *bankNemesis) killRestart(ctx context.Context, p *proc, hit func(string), rec *bankFault) error {
	if hit != nil {
		hit(fmt.Sprintf("%s: SIGKILL %s", rec.Kind, p.name))
	}
	if err := n.kill(ctx, p, rec); err != nil {
		return err
	}
	n.letGo()
	sleepCtx(ctx, time.Second)
	if err := n.h.waitSafe(ctx, 3*time.Minute); err != nil {
		return fmt.Errorf("no failover after killing %s: %w", p.name, err)
	}
	return n.h.restart(ctx, p)
}

// pauseFor SIGSTOPs p for d, then SIGCONTs it.
func (n *bankNemesis) pauseFor(ctx context.Context, p *proc, d time.Duration, rec *bankFault) {
	n.h.signal(p, syscall.SIGSTOP)
	p.paused = true
	rec.Pauses++
	n.letGo()
	sleepCtx(ctx, d)
	n.h.signal(p, syscall.SIGCONT)
	p.paused = false
	n.h.logf("SIGCONT %s", p.name)
}

// cutFor cuts ps off from the other nodes for 4-7 s, then heals.
func (n *bankNemesis) cutFor(ctx context.Context, ps []*proc, rec *bankFault) error {
	var idx []int
	for _, p := range ps {
		idx = append(idx, p.idx)
	}
	n.cut = idx
	err := netSplit(idx)
	rec.Partitions++
	n.letGo()
	if err != nil {
		return err
	}
	sleepCtx(ctx, time.Duration(4000+n.h.rng.IntN(3000))*time.Millisecond)
	n.h.logf("heal the partition of %s", names(ps))
	if err := netHeal(idx); err != nil {
		return err
	}
	n.cut = nil
	return nil
}

// letGo lets the transfer held at the trap go on.
func (n *bankNemesis) letGo() {
	if n.held != nil {
		close(n.held.goOn)
		n.held = nil
	}
}

// trapped arms the trap for kind, waits (up to 20 s) for a transfer to
// reach it, and hits the primary of its coordinator (kill-, pause-,
// partition-coordinator) or of a prepared participant (kill-participant)
// while the transfer waits; the transfer goes on right after the hit.
func (n *bankNemesis) trapped(ctx context.Context, kind string, hit func(string), rec *bankFault) error {
	h := n.h
	point := beforeCommit
	if kind == "kill-participant" {
		point = afterCommit
	}
	hits := n.load.trap.arm(point)
	var th trapHit
	select {
	case th = <-hits:
	case <-time.After(20 * time.Second):
		n.load.trap.disarm()
		return fmt.Errorf("no transfer reached %s within 20 s", point)
	case <-ctx.Done():
		return ctx.Err()
	}
	n.held = &th
	rec.Transfer, rec.Prepared = th.id, th.prepared
	cv, err := h.latest(ctx)
	if err != nil {
		return err
	}
	part := th.coord
	if kind == "kill-participant" {
		part = participantToHit(cv, th, h.rng.IntN(len(th.prepared)+1))
		if part < 0 {
			return fmt.Errorf("transfer %s has no prepared participant (coordinator %d)", th.id, th.coord)
		}
	}
	victim := h.byName(cv.Partitions[part].Primary)
	if victim == nil || !victim.running || victim.paused {
		return fmt.Errorf("partition %d's primary %q is not a running node", part, cv.Partitions[part].Primary)
	}
	what := fmt.Sprintf("%s: transfer %s held at %s (coordinator partition %d, prepared %v); ", kind, th.id, point, th.coord, th.prepared)
	switch kind {
	case "kill-coordinator", "kill-participant":
		return n.killRestart(ctx, victim, func(string) { hit(fmt.Sprintf("%sSIGKILL %s, primary of partition %d", what, victim.name, part)) }, rec)
	case "pause-coordinator":
		d := time.Duration(2000+h.rng.IntN(2000)) * time.Millisecond
		hit(fmt.Sprintf("%sSIGSTOP %s, primary of partition %d, for %v", what, victim.name, part, d))
		n.pauseFor(ctx, victim, d, rec)
		return nil
	default: // partition-coordinator
		hit(fmt.Sprintf("%scut %s, primary of partition %d, off for 4-7 s", what, victim.name, part))
		return n.cutFor(ctx, []*proc{victim}, rec)
	}
}

// participantToHit picks a prepared participant of th whose primary is not
// the coordinator's, if there is one (the r-th of them, modulo), else any
// prepared one; -1 if none prepared.
func participantToHit(cv *clusterView, th trapHit, r int) int {
	if len(th.prepared) == 0 {
		return -1
	}
	coordPrimary := cv.Partitions[th.coord].Primary
	var others []int
	for _, p := range th.prepared {
		if cv.Partitions[p].Primary != coordPrimary {
			others = append(others, p)
		}
	}
	if len(others) > 0 {
		return others[r%len(others)]
	}
	return th.prepared[r%len(th.prepared)]
}

// abandonKill runs a transfer through a connection of its own that dies
// right after its prepares, and SIGKILLs the primary of one of its
// prepared participants before it dies; then the victim restarts. A
// transfer that does not reach its commit (declined: its source held too
// little) is followed by another, up to 10.
func (n *bankNemesis) abandonKill(ctx context.Context, hit func(string), rec *bankFault) error {
	h := n.h
	var victim *proc
	var kerr error
	for try := 0; victim == nil && kerr == nil; try++ {
		id := fmt.Sprintf("n%d.%d", len(n.faults)+1, try)
		p := n.load.abandon(ctx, h.rng, id, false, func(coord int, prepared []int) {
			rec.Prepared = prepared
			victim, kerr = n.killParticipant(ctx, id, coord, prepared, hit, rec)
		})
		rec.Transfer = p.id
		if victim == nil && kerr == nil && (try == 9 || ctx.Err() != nil) {
			return fmt.Errorf("10 transfers did not reach their commit, the last %s: %s (%s)", p.id, p.outcome, p.kind)
		}
	}
	if kerr != nil {
		return kerr
	}
	sleepCtx(ctx, time.Second)
	if err := h.waitSafe(ctx, 3*time.Minute); err != nil {
		return fmt.Errorf("no failover after killing %s: %w", victim.name, err)
	}
	return h.restart(ctx, victim)
}

// killParticipant SIGKILLs the primary of one of transfer id's prepared
// participants (abandon-kill, before its client dies).
func (n *bankNemesis) killParticipant(ctx context.Context, id string, coord int, prepared []int, hit func(string), rec *bankFault) (*proc, error) {
	h := n.h
	cv, err := h.latest(ctx)
	if err != nil {
		return nil, err
	}
	part := participantToHit(cv, trapHit{coord: coord, prepared: prepared}, h.rng.IntN(len(prepared)+1))
	if part < 0 {
		return nil, fmt.Errorf("transfer %s: no prepared participant (coordinator %d)", id, coord)
	}
	victim := h.byName(cv.Partitions[part].Primary)
	if victim == nil || !victim.running || victim.paused {
		return nil, fmt.Errorf("partition %d's primary %q is not a running node", part, cv.Partitions[part].Primary)
	}
	hit(fmt.Sprintf("abandon-kill: transfer %s prepared %v (coordinator %d), its client dies; SIGKILL %s, primary of partition %d",
		id, prepared, coord, victim.name, part))
	return victim, n.kill(ctx, victim, rec)
}

// bankHeal resumes paused nodes, heals a cut, restarts stopped nodes (one
// that exited on its own is a violation) and waits until the cluster is
// safe.
func bankHeal(ctx context.Context, n *bankNemesis, violation func(string, ...any)) error {
	h := n.h
	if len(n.cut) > 0 {
		if err := netHeal(n.cut); err != nil {
			return err
		}
		n.cut = nil
	}
	for _, p := range h.procs {
		switch {
		case p.running && p.paused:
			h.signal(p, syscall.SIGCONT)
			p.paused = false
		case !p.running || p.exited():
			if p.running {
				violation("%s exited on its own; its log ends: %s", p.name, p.logTail(5))
				p.running = false
				h.amnesiac[p.name] = true
			}
			if err := h.restart(ctx, p); err != nil {
				return err
			}
		}
	}
	if err := h.waitSafe(ctx, 3*time.Minute); err != nil {
		return fmt.Errorf("not safe after the heal: %w", err)
	}
	return nil
}
