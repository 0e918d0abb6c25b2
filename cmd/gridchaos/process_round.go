package main

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/collocate/grid/client"
	"github.com/collocate/grid/process/builtin"
)

// runChain is one round of the process mode on h's safe cluster: publish
// through the faults, heal, drain, read back and check.
func runChain(ctx context.Context, h *harness, cfg processConfig, seed uint64, partitions int, round *processRound, violation func(string, ...any)) error {
	evs := chainPlan(seed, cfg.Events, cfg.Buckets, cfg.IdleBuckets, hotRanges(cfg, seed))
	c, err := client.Dial(ctx, client.Config{Addrs: h.rpcAddrs()})
	if err != nil {
		return err
	}
	defer c.Close()
	pubs := newChainPublishers(evs)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t0 := h.now()
	for range cfg.Publishers {
		pubs.wg.Add(1)
		go pubs.run(pctx, c, cfg.Pace, cfg.PublishTimeout, h.now)
	}
	defer pubs.wg.Wait()
	defer cancel()
	nem := &chainNemesis{h: h, cfg: cfg, pubs: pubs, t0: t0}
	err = nem.run(ctx)
	round.Faults = nem.faults
	kills, pauses := 0, 0
	for _, f := range nem.faults {
		kills += f.Kills
		pauses += f.Pauses
	}
	round.Kills, round.Pauses = kills, pauses
	if err != nil {
		return err
	}
	pubs.wg.Wait()
	round.PublishErrors = pubs.errors()
	h.logf("published %d events: %d acknowledged; failed attempts %s", len(evs), pubs.acked.Load(), describeKinds(round.PublishErrors))

	healed := h.now()
	if err := healChain(ctx, h, violation); err != nil {
		return err
	}
	drained, state := drainChain(ctx, h, c, int(pubs.acked.Load()), cfg.Drain)
	round.Drained, round.DrainMs = drained, msOf(h.now()-healed)
	h.logf("drain after %.1f s: %v, %s", round.DrainMs/1000, drained, state)
	if !drained {
		violation("the processors did not drain within %v of the heal: %s", cfg.Drain, state)
	}
	end := h.now()
	if first := pubs.started.Load(); first > 0 {
		round.Seconds = float64((end-first)/1e6) / 1000
	}
	r, err := readChain(ctx, c, evs, cfg.Buckets, partitions)
	if err != nil {
		return fmt.Errorf("reading the effects back: %w", err)
	}
	v := checkChain(evs, pubs.pubs, r, cfg.Buckets, partitions)
	seconds := round.Seconds
	round.chainTotals = v.chainTotals
	round.Kills, round.Pauses, round.Seconds = kills, pauses, seconds
	if seconds > 0 {
		round.PerSecond = float64(int(float64(round.Through)/seconds*10)) / 10
	}
	round.Examples = v.Examples
	for _, s := range v.Violations {
		violation("%s", s)
	}
	if why := throughVerdict(&round.chainTotals, cfg.MinThrough); why != "" {
		violation("%s", why)
	}
	h.logf("events %d: acknowledged %d, unknown %d, refused %d, through both stages %d; lost %d, duplicated %d, phantoms %d, projection mismatches %d, dead letters %d",
		round.Events, round.Acknowledged, round.Unknown, round.Refused, round.Through, round.Lost, round.Duplicated, round.Phantoms, round.ProjMismatch, round.DeadLetters)
	if err := h.checkReplicas(ctx); err != nil {
		violation("replicas differ at the end: %v", err)
	} else {
		round.ReplicasEqual = true
	}
	if cfg.Canary && len(v.Violations) == 0 {
		round.Canary = canary(ctx, h, c, evs, pubs.pubs, cfg, partitions)
		if round.Canary != "detected" {
			violation("canary: %s", round.Canary)
		}
	}
	return nil
}

// canary publishes the first acknowledged event once more (same id) and
// says whether the check then finds exactly that duplicate ("detected").
func canary(ctx context.Context, h *harness, c *client.Client, evs []chainEvent, pubs []chainPub, cfg processConfig, partitions int) string {
	i := slices.IndexFunc(pubs, func(p chainPub) bool { return p.outcome == cAcked })
	if i < 0 {
		return "no acknowledged event to publish again"
	}
	ev := evs[i]
	if _, err := c.Publish(ctx, builtin.ChainIn, builtin.InKey(ev.id), builtin.Value(ev.id, ev.bucket, ev.amount)); err != nil {
		return fmt.Sprintf("publishing %s again: %v", ev.id, err)
	}
	acked := 0
	for _, p := range pubs {
		if p.outcome == cAcked {
			acked++
		}
	}
	// Stage 1 and 2 sizes stay the same (the keys exist): drain on lag
	// and stability.
	if ok, state := drainChain(ctx, h, c, acked, cfg.Drain); !ok {
		return "not drained: " + state
	}
	r, err := readChain(ctx, c, evs, cfg.Buckets, partitions)
	if err != nil {
		return err.Error()
	}
	v := checkChain(evs, pubs, r, cfg.Buckets, partitions)
	if v.Duplicated != 1 || v.Lost != 0 || v.ProjMismatch != 0 || r.s1[i] != 2 || r.s2[i] != 2 {
		return fmt.Sprintf("%s published twice: counts %d, %d; the check found %d duplicated, %d lost, %d projection mismatches",
			ev.id, r.s1[i], r.s2[i], v.Duplicated, v.Lost, v.ProjMismatch)
	}
	return "detected"
}

// hotRanges are the bursts of pause-busy and stop-kill (the slice of the
// fault but its last unit), each into a bucket of its own among the busy
// ones, chosen by the seed: the partition they pause is busy.
func hotRanges(cfg processConfig, seed uint64) []hotRange {
	ends := sliceEnds(cfg.Faults, cfg.Events)
	var hot []hotRange
	for i, k := range cfg.Faults {
		if k == "pause-busy" || k == "stop-kill" {
			from, to := ends[i], ends[i+1]
			w := sliceWeight(k)
			hot = append(hot, hotRange{from: from, to: from + (to-from)*(w-1)/w, bucket: int((seed + 3*uint64(len(hot))) % uint64(cfg.Buckets-cfg.IdleBuckets))})
		}
	}
	return hot
}

// healChain resumes every paused node, restarts every stopped one (a node
// that exited on its own is a violation), waits until the cluster is safe
// and resumes the processors.
func healChain(ctx context.Context, h *harness, violation func(string, ...any)) error {
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
	// A fault that failed half-way may have left them paused.
	for _, name := range chainProcessors {
		if err := processorsOp(ctx, h, name, "resume"); err != nil {
			return err
		}
	}
	return nil
}
