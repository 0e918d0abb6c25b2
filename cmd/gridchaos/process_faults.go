package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/process"
	"github.com/collocate/grid/process/builtin"
)

// The process mode's faults. The events are published in slices, one more
// per fault: a fault waits until the previous slice is out and the cluster
// is safe, lets the publishers start on the next slice, and hits while
// they publish it (a burst first publishes all but the last unit of it)
// and while the processors work off the backlog.

// processFaultKinds are the faults of the process mode:
//
//   - kill: SIGKILL a random node; restart it (same name and flags) once
//     the cluster is safe without it;
//   - kill-backlog: pause both processors (POST /v1/processors/{name}/pause),
//     let the publishers burst two units of events (no pace),
//     resume them, and SIGKILL the node whose processors had the most
//     unhandled events right after resuming it: a kill while a large
//     backlog is queued or being worked off;
//   - kill-rejoined: SIGKILL a node, restart it, wait until it leads
//     partitions again (its processors start there), and SIGKILL it again
//     at once;
//   - restart-kill: SIGKILL a node, restart it at once (empty), and SIGKILL
//     it again 0.3-1.5 s later, before it converged;
//   - pause: SIGSTOP a random node for 0.5-4 s (a short pause stalls its
//     steps within its lease, a long one fails its partitions over), then
//     SIGCONT it;
//   - pause-busy: pause stage 2 (chain2), let the publishers burst three
//     units of events (three in four into one bucket, hotRanges), resume
//     it, and SIGSTOP for 2-4 s the primary of the
//     stage-2 partition with the most unhandled events (a bucket's) as
//     soon as it handled a quarter of them: a deposed primary in the
//     middle of its batches;
//   - stop-kill: as pause-busy, but 0.5 s into the SIGSTOP (1.5-2.5 s) of
//     the busy primary X, SIGKILL the node sharing most partitions with X:
//     where X led, its backup dies before X is failed over (chaos Finding
//     6); nothing may be lost, only the killed node's copies died.
var processFaultKinds = []string{"kill", "kill-backlog", "kill-rejoined", "restart-kill", "pause", "pause-busy", "stop-kill"}

func isProcessFault(k string) bool { return slices.Contains(processFaultKinds, k) }

// chainFault is one fault of a round. Times are ms since the publishing
// began.
type chainFault struct {
	Kind string  `json:"kind"`
	Desc string  `json:"desc"`
	AtMs float64 `json:"at_ms"`
	// Published: events with a publish outcome when it hit, of Allowed
	// allowed so far.
	Published int64 `json:"published_at_hit"`
	Allowed   int64 `json:"allowed_at_hit"`
	// Lag: events the victim's processors had not handled when it hit
	// (-1: unknown); Backlog: when the processors were resumed, for
	// kill-backlog every node's unhandled events, for pause-busy the busy
	// partition's; Partition and PartLag: for pause-busy, the busy
	// partition and its stage-2 backlog when it hit.
	Lag       int     `json:"lag_at_hit"`
	Backlog   int     `json:"backlog_at_resume,omitempty"`
	Partition int     `json:"partition,omitempty"`
	PartLag   int     `json:"partition_lag,omitempty"`
	Kills     int     `json:"kills"`
	Pauses    int     `json:"pauses"`
	SafeMs    float64 `json:"safe_after_ms"` // hit -> safe again after the restart or resume
}

// chainNemesis injects a round's faults.
type chainNemesis struct {
	h      *harness
	cfg    processConfig
	pubs   *chainPublishers
	t0     int64
	faults []chainFault
}

func (n *chainNemesis) msSince() float64 { return msOf(n.h.now() - n.t0) }

// run injects cfg.Faults in order, one slice of the events each, and then
// lets the publishers finish.
func (n *chainNemesis) run(ctx context.Context) error {
	h, pubs := n.h, n.pubs
	total := len(pubs.evs)
	ends := sliceEnds(n.cfg.Faults, total)
	from := ends[0]
	pubs.allow(from)
	for i, kind := range n.cfg.Faults {
		if !pubs.waitFinished(ctx, from, 3*time.Minute) {
			return fmt.Errorf("before fault %d: only %d of %d events published in 3 minutes", i+1, pubs.finished.Load(), from)
		}
		if err := h.waitSafe(ctx, 3*time.Minute); err != nil {
			return fmt.Errorf("not safe before fault %d: %w", i+1, err)
		}
		rec, err := n.inject(ctx, kind, from, ends[i+1])
		if rec.Kind != "" {
			n.faults = append(n.faults, rec)
		}
		if err != nil {
			return fmt.Errorf("fault %d (%s): %w", i+1, kind, err)
		}
		from = ends[i+1]
	}
	pubs.allow(total)
	if !pubs.waitFinished(ctx, total, 5*time.Minute) {
		return fmt.Errorf("only %d of %d events published", pubs.finished.Load(), total)
	}
	return nil
}

// sliceWeight is how many units of events fault kind's slice has.
func sliceWeight(kind string) int {
	switch kind {
	case "kill-backlog":
		return 3
	case "pause-busy", "stop-kill":
		return 4 // the burst spreads over the busy buckets: several batches each
	}
	return 1
}

// sliceEnds splits total events into one slice before the faults, one per
// fault (sliceWeight: the bursts of kill-backlog, pause-busy and
// stop-kill make the backlog) and one after them; it returns where each of the first
// len(faults)+1 ends.
func sliceEnds(faults []string, total int) []int {
	weights := []int{1}
	for _, k := range faults {
		weights = append(weights, sliceWeight(k))
	}
	weights = append(weights, 1)
	sum := 0
	for _, w := range weights {
		sum += w
	}
	ends := make([]int, len(faults)+1)
	acc := 0
	for i := range ends {
		acc += weights[i]
		ends[i] = total * acc / sum
	}
	return ends
}

// inject lets the events from from up to to be published and fires kind
// while they are.
func (n *chainNemesis) inject(ctx context.Context, kind string, from, to int) (chainFault, error) {
	h, pubs := n.h, n.pubs
	rec := chainFault{Kind: kind, Lag: -1}
	start := h.now()
	hit := func(desc string, victim *proc) {
		rec.Desc, rec.AtMs = desc, n.msSince()
		rec.Published, rec.Allowed = pubs.finished.Load(), pubs.limit.Load()
		if victim != nil && rec.Lag < 0 {
			rec.Lag = processorLag(ctx, victim).total
		}
		h.logf("fault %d: %s (%d events published, lag %d)", len(n.faults)+1, desc, rec.Published, rec.Lag)
	}
	var err error
	var victim *proc
	// The bursts publish all but the last unit of their slice before they
	// hit; that unit goes out (at pace) while they do.
	mid := from + (to-from)*(sliceWeight(kind)-1)/sliceWeight(kind)
	switch kind {
	case "kill-backlog":
		victim, err = n.burst(ctx, mid, &rec)
	case "pause-busy", "stop-kill":
		victim, err = n.busy(ctx, mid, &rec)
	case "kill-rejoined":
		victim, err = n.rejoined(ctx, &rec)
	}
	pubs.allow(to)
	if err == nil && mid == from {
		// Hit while the slice is being published: a quarter of it in.
		pubs.waitFinished(ctx, from+(to-from)/4, 30*time.Second)
	}
	switch {
	case err != nil:
	case kind == "kill":
		err = n.killRestart(ctx, n.randomNode(), hit, &rec)
	case kind == "kill-backlog":
		err = n.killRestart(ctx, victim, hit, &rec)
	case kind == "kill-rejoined":
		hit(fmt.Sprintf("kill-rejoined: SIGKILL %s right after it rejoined", victim.name), victim)
		err = n.killRestart2(ctx, victim, &rec)
	case kind == "restart-kill":
		err = n.restartKill(ctx, hit, &rec)
	case kind == "pause":
		// 0.5-4 s: a short one stalls the node's steps within its lease,
		// a long one fails it over.
		n.pause(ctx, n.randomNode(), time.Duration(500+h.rng.IntN(3500))*time.Millisecond, hit, &rec)
	case kind == "pause-busy":
		n.pause(ctx, victim, time.Duration(2000+h.rng.IntN(2000))*time.Millisecond, hit, &rec)
	case kind == "stop-kill":
		err = n.stopKill(ctx, victim, hit, &rec)
	default:
		err = fmt.Errorf("unknown fault %q", kind)
	}
	if err == nil {
		if err = h.waitSafe(ctx, 3*time.Minute); err == nil {
			rec.SafeMs = msOf(h.now() - start)
		}
	}
	return rec, err
}

// burst pauses both processors, lets the publishers publish up to to
// without pace, chooses a node whose processors have many unhandled
// events (at least half the most of any node, chosen by the seed), resumes the processors (through it first: it notices within a
// poll, the others within two) and returns it at once: the kill lands
// while its backlog is queued or being worked off.
func (n *chainNemesis) burst(ctx context.Context, to int, rec *chainFault) (*proc, error) {
	h := n.h
	if err := n.pausedBurst(ctx, chainProcessors, to); err != nil {
		return nil, err
	}
	lags := map[*proc]int{}
	for _, p := range h.running() {
		l := processorLag(ctx, p).total
		if l > 0 {
			rec.Backlog += l
		}
		if !p.paused {
			lags[p] = l
		}
	}
	victim := n.pick(lags)
	most := lags[victim]
	h.logf("kill-backlog: %d events published with the processors paused, %d unhandled (%d at %s); resuming", n.pubs.finished.Load(), rec.Backlog, most, victim.name)
	if err := resumeVia(ctx, h, victim, chainProcessors); err != nil {
		return nil, err
	}
	// Hit at once: the victim's runs wake from their pause within a poll
	// (250 ms), and then drain a backlog of this size in a few batches of
	// milliseconds, faster than a status poll could catch them halfway
	// (a CI run found its lag already 0 after waiting for a quarter).
	// The promoted backups then work off the whole backlog.
	rec.Lag = processorLag(ctx, victim).total
	return victim, nil
}

// busy pauses stage 2, lets the publishers publish up to to without pace
// while stage 1 delivers them to the buckets' partitions, chooses the
// primary of the partition with the most unhandled stage-2 events,
// resumes stage 2 (through it first) and returns it as soon as it handled
// a quarter of that partition's backlog (or after a second): the pause
// lands on the busiest partition's primary in the middle of its batches.
func (n *chainNemesis) busy(ctx context.Context, to int, rec *chainFault) (*proc, error) {
	h := n.h
	stage2 := []string{"chain2"}
	if err := n.pausedBurst(ctx, stage2, to); err != nil {
		return nil, err
	}
	// Let stage 1 and the outboxes deliver the burst: until the busiest
	// partition's backlog stops growing (at most 5 s).
	prev := -1
	for range 50 {
		l := busiestLag(ctx, h)
		if l == prev {
			break
		}
		prev = l
		sleepCtx(ctx, 100*time.Millisecond)
	}
	p := n.busyPrimary(ctx, rec)
	rec.Backlog = rec.PartLag
	h.logf("%s: %d events published with stage 2 paused; partition %d has %d unhandled at %s; resuming", rec.Kind, n.pubs.finished.Load(), rec.Partition, rec.PartLag, p.name)
	if err := resumeVia(ctx, h, p, stage2); err != nil {
		return nil, err
	}
	part := rec.Partition
	rec.Lag = waitWorking(ctx, rec.PartLag, func() (int, int) {
		lv := processorLag(ctx, p)
		rec.PartLag = lv.lagAt(part)
		return rec.PartLag, lv.total
	})
	return p, nil
}

// pausedBurst pauses the processors names, lets the publishers publish up
// to to without pace and waits until they have.
func (n *chainNemesis) pausedBurst(ctx context.Context, names []string, to int) error {
	for _, name := range names {
		if err := processorsOp(ctx, n.h, name, "pause"); err != nil {
			return err
		}
	}
	// Every member reads the pause within a poll (250 ms).
	sleepCtx(ctx, 600*time.Millisecond)
	n.pubs.fast.Store(true)
	defer n.pubs.fast.Store(false)
	n.pubs.allow(to)
	n.pubs.waitFinished(ctx, to, time.Minute)
	return nil
}

// resumeVia resumes the processors names through p (so that p notices at
// once), or through any node if p does not take it.
func resumeVia(ctx context.Context, h *harness, p *proc, names []string) error {
	for _, name := range names {
		if err := postOK(ctx, p.httpURL+"/v1/processors/"+name+"/resume"); err != nil {
			if err := processorsOp(ctx, h, name, "resume"); err != nil {
				return err
			}
		}
	}
	return nil
}

// waitWorking polls lag (its first result; -1: unknown) until it is at
// most three quarters of most, or a second passed, as fast as the node
// answers (the batches take milliseconds), and returns lag's second
// result of the last poll: the victim's lag at the hit, which then needs
// no other poll before the signal.
func waitWorking(ctx context.Context, most int, lag func() (int, int)) int {
	deadline := time.Now().Add(time.Second)
	total := -1
	for time.Now().Before(deadline) && ctx.Err() == nil {
		var l int
		if l, total = lag(); l >= 0 && l <= most*3/4 {
			break
		}
		sleepCtx(ctx, time.Millisecond)
	}
	return total
}

// busiestLag is the largest stage-2 backlog of any partition.
func busiestLag(ctx context.Context, h *harness) int {
	most := -1
	for _, p := range h.running() {
		if !p.paused {
			most = max(most, processorLag(ctx, p).busiestLag)
		}
	}
	return most
}

// chainProcessors are the processors of gridnode's -processors chain.
var chainProcessors = []string{"chain1", "chain2"}

// processorsOp POSTs /v1/processors/{name}/{op} to the first running,
// unpaused node that takes it.
func processorsOp(ctx context.Context, h *harness, name, op string) error {
	var errs []error
	for _, p := range h.running() {
		if p.paused {
			continue
		}
		if err := postOK(ctx, p.httpURL+"/v1/processors/"+name+"/"+op); err != nil {
			errs = append(errs, err)
			continue
		}
		return nil
	}
	return fmt.Errorf("%s %s: no node took it: %w", op, name, errors.Join(errs...))
}

// postOK POSTs an empty body to url and wants a 200.
func postOK(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", url, nil)
	if err != nil {
		return err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	return nil
}

// randomNode returns a running, unpaused node chosen by the seed.
func (n *chainNemesis) randomNode() *proc {
	var live []*proc
	for _, p := range n.h.running() {
		if !p.paused {
			live = append(live, p)
		}
	}
	return live[n.h.rng.IntN(len(live))]
}

// kill SIGKILLs p (counted in rec) unless that could lose data by design.
func (n *chainNemesis) kill(ctx context.Context, p *proc, rec *chainFault) error {
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

// killRestart SIGKILLs p, waits -down and until the cluster is safe
// without it, and restarts it.
func (n *chainNemesis) killRestart(ctx context.Context, p *proc, hit func(string, *proc), rec *chainFault) error {
	h := n.h
	hit(fmt.Sprintf("%s: SIGKILL %s", rec.Kind, p.name), p)
	if err := n.kill(ctx, p, rec); err != nil {
		return err
	}
	sleepCtx(ctx, n.cfg.Down)
	if err := h.waitSafe(ctx, 3*time.Minute); err != nil {
		return fmt.Errorf("no failover after killing %s: %w", p.name, err)
	}
	return h.restart(ctx, p)
}

// rejoined is the first half of kill-rejoined: it SIGKILLs a node,
// restarts it once the cluster is safe without it, and returns it once
// the cluster is safe with it (it leads partitions again, its processors
// just started there).
func (n *chainNemesis) rejoined(ctx context.Context, rec *chainFault) (*proc, error) {
	h := n.h
	p := n.randomNode()
	h.logf("kill-rejoined: SIGKILL %s, restart it, SIGKILL it again once it leads partitions", p.name)
	if err := n.kill(ctx, p, rec); err != nil {
		return nil, err
	}
	sleepCtx(ctx, n.cfg.Down)
	if err := h.waitSafe(ctx, 3*time.Minute); err != nil {
		return nil, fmt.Errorf("no failover after killing %s: %w", p.name, err)
	}
	if err := h.restart(ctx, p); err != nil {
		return nil, err
	}
	if err := h.waitSafe(ctx, 3*time.Minute); err != nil {
		return nil, fmt.Errorf("not safe after restarting %s: %w", p.name, err)
	}
	return p, nil
}

// restartKill SIGKILLs a node, restarts it at once (empty) and SIGKILLs it
// again 0.3-1.5 s later, before it converged; then restarts it.
func (n *chainNemesis) restartKill(ctx context.Context, hit func(string, *proc), rec *chainFault) error {
	h := n.h
	p := n.randomNode()
	again := time.Duration(300+h.rng.IntN(1200)) * time.Millisecond
	hit(fmt.Sprintf("restart-kill: SIGKILL %s, restart it at once, SIGKILL it again after %v", p.name, again), p)
	if err := n.kill(ctx, p, rec); err != nil {
		return err
	}
	if err := h.restart(ctx, p); err != nil {
		return err
	}
	sleepCtx(ctx, again)
	return n.killRestart2(ctx, p, rec)
}

// killRestart2 is the second kill of kill-rejoined and restart-kill.
func (n *chainNemesis) killRestart2(ctx context.Context, p *proc, rec *chainFault) error {
	h := n.h
	if err := n.kill(ctx, p, rec); err != nil {
		return err
	}
	sleepCtx(ctx, n.cfg.Down)
	if err := h.waitSafe(ctx, 3*time.Minute); err != nil {
		return fmt.Errorf("no failover after killing %s again: %w", p.name, err)
	}
	return h.restart(ctx, p)
}

// pause SIGSTOPs p for d and SIGCONTs it.
func (n *chainNemesis) pause(ctx context.Context, p *proc, d time.Duration, hit func(string, *proc), rec *chainFault) {
	h := n.h
	hit(fmt.Sprintf("%s: SIGSTOP %s for %v", rec.Kind, p.name, d), p)
	h.signal(p, syscall.SIGSTOP)
	p.paused = true
	rec.Pauses++
	sleepCtx(ctx, d)
	h.signal(p, syscall.SIGCONT)
	p.paused = false
	h.logf("SIGCONT %s", p.name)
}

// busyPrimary returns the primary of a partition with many unhandled
// stage-2 events (at least half the most of any, chosen by the seed; a
// bucket's partition) and notes the partition in rec; if none has any,
// the primary of bucket 0's partition.
func (n *chainNemesis) busyPrimary(ctx context.Context, rec *chainFault) *proc {
	h := n.h
	type cand struct {
		p         *proc
		part, lag int
	}
	var cands []cand
	most := 0
	for _, p := range h.running() {
		if p.paused {
			continue
		}
		for part, lag := range processorLag(ctx, p).stage2 {
			cands = append(cands, cand{p, part, lag})
			most = max(most, lag)
		}
	}
	var all []string
	for _, c := range cands {
		if c.lag > 0 {
			all = append(all, fmt.Sprintf("%d@%s:%d", c.part, c.p.name, c.lag))
		}
	}
	slices.Sort(all)
	h.logf("stage-2 backlogs (partition@primary:events): %s", strings.Join(all, " "))
	cands = slices.DeleteFunc(cands, func(c cand) bool { return most == 0 || 2*c.lag < most })
	slices.SortFunc(cands, func(a, b cand) int { return a.part - b.part })
	rec.Lag = -1
	if len(cands) > 0 {
		c := cands[h.rng.IntN(len(cands))]
		rec.Partition, rec.PartLag = c.part, c.lag
		return c.p
	}
	rec.PartLag = 0
	cv, err := h.latest(ctx)
	if err == nil && len(cv.Partitions) > 0 {
		rec.Partition = affinity.Partition(builtin.ProjKey(0), len(cv.Partitions))
		if p := h.byName(cv.Partitions[rec.Partition].Primary); p != nil && p.running && !p.paused {
			return p
		}
	}
	return n.randomNode()
}

// pick returns one of the nodes in lags whose lag is at least half the
// largest, chosen by the seed (the first by name if none lags).
func (n *chainNemesis) pick(lags map[*proc]int) *proc {
	most := 0
	var all []*proc
	for p, l := range lags {
		most = max(most, l)
		all = append(all, p)
	}
	slices.SortFunc(all, func(a, b *proc) int { return strings.Compare(a.name, b.name) })
	cands := slices.DeleteFunc(slices.Clone(all), func(p *proc) bool { return 2*lags[p] < most })
	if len(cands) == 0 {
		return all[0]
	}
	return cands[n.h.rng.IntN(len(cands))]
}

// stopKill SIGSTOPs x, SIGKILLs 0.5 s later the node that shares most
// partitions with it, SIGCONTs x 1.5-2.5 s after the stop, and restarts
// the killed node once the cluster is safe without it.
func (n *chainNemesis) stopKill(ctx context.Context, x *proc, hit func(string, *proc), rec *chainFault) error {
	h := n.h
	cv, err := h.latest(ctx)
	if err != nil {
		return err
	}
	y := sharesMost(h, cv, x)
	if y == nil {
		return fmt.Errorf("no node shares a partition with %s", x.name)
	}
	stop := time.Duration(1500+h.rng.IntN(1000)) * time.Millisecond
	hit(fmt.Sprintf("stop-kill: SIGSTOP %s, SIGKILL %s 0.5 s later, SIGCONT %s after %v", x.name, y.name, x.name, stop), x)
	h.signal(x, syscall.SIGSTOP)
	x.paused = true
	rec.Pauses++
	start := time.Now()
	sleepCtx(ctx, 500*time.Millisecond)
	kerr := n.kill(ctx, y, rec)
	sleepCtx(ctx, time.Until(start.Add(stop)))
	h.signal(x, syscall.SIGCONT)
	x.paused = false
	h.logf("SIGCONT %s", x.name)
	if kerr != nil {
		return kerr
	}
	if err := h.waitSafe(ctx, 3*time.Minute); err != nil {
		return fmt.Errorf("no failover after stopping %s and killing %s: %w", x.name, y.name, err)
	}
	return h.restart(ctx, y)
}

// lagView is what one node's processors have not handled yet, at the
// partitions it leads.
type lagView struct {
	total      int // both stages (-1: the node did not answer)
	busiest    int // the partition with the most unhandled stage-2 events
	busiestLag int
	stage2     map[int]int // unhandled stage-2 events by partition
}

// lagAt is partition part's stage-2 backlog (-1: not led there).
func (l lagView) lagAt(part int) int {
	if v, ok := l.stage2[part]; ok {
		return v
	}
	return -1
}

// processorLag reads p's GET /v1/processors.
func processorLag(ctx context.Context, p *proc) lagView {
	var st []process.ProcessorStatus
	if err := getJSON(ctx, p.httpURL+"/v1/processors", &st); err != nil {
		return lagView{total: -1, busiest: -1, busiestLag: -1}
	}
	lv := lagView{busiest: -1, busiestLag: -1, stage2: map[int]int{}}
	for _, s := range st {
		lv.total += s.Lag
		if s.Name != "chain2" {
			continue
		}
		for _, ps := range s.Partitions {
			lv.stage2[ps.Partition] = ps.Lag
			if ps.Lag > lv.busiestLag {
				lv.busiest, lv.busiestLag = ps.Partition, ps.Lag
			}
		}
	}
	return lv
}
