package main

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/collocate/grid/client"
)

// runChain is one round of the process mode on h's safe cluster: publish
// through the faults, heal, drain, read back and check.
func runChain(ctx context.Context, h *harness, cfg processConfig, seed uint64, partitions int, round *processRound, violation func(string, ...any)) error {
	evs := chainPlan(seed, cfg.Events, cfg.Buckets, cfg.IdleBuckets)
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
		go pubs.run(pctx, c, cfg.Pace, h.now)
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
	return nil
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
