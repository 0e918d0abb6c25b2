package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/client"
)

// The journal mode's round: both workloads at once while the primaries of
// the writers' keys are SIGKILLed, then the checks.

// killRec is one kill of a round. Times are ms since the workloads started.
type killRec struct {
	Victim   string   `json:"victim"`
	Leader   bool     `json:"leader"`
	Keys     int      `json:"keys_led"` // writers' keys the victim led
	AtMs     float64  `json:"at_ms"`
	SafeMs   float64  `json:"safe_after_ms"` // kill -> safe again after the restart
	AckedAt  int64    `json:"acked_writes_at_kill"`
	Attached []string `json:"during,omitempty"` // listener restart, consumer crash
}

// runJournalWorkloads runs the listener and stream workloads through the
// kills on h's safe cluster and checks them.
func runJournalWorkloads(ctx context.Context, h *harness, cfg journalConfig, seed uint64, partitions int, round *journalRound, violation func(string, ...any)) error {
	addrs := h.rpcAddrs()
	c, err := client.Dial(ctx, client.Config{Addrs: addrs})
	if err != nil {
		return err
	}
	defer c.Close()
	lr := &listenResult{From: "journal_ends"}
	sr := &streamResult{}
	round.Listener, round.Stream = lr, sr

	// The listener: from JournalEnds on even seeds, from position 1 of
	// every partition on odd ones (told once per partition that the
	// history begins later, then it hears everything: the map is new).
	l := &jlistener{heard: map[string][]heard{}}
	var start []uint64
	if seed%2 == 1 {
		lr.From = "position_1"
		start = slices.Repeat([]uint64{1}, partitions)
	}
	run, err := l.start(ctx, addrs, start)
	if err != nil {
		return fmt.Errorf("listener: %w", err)
	}
	defer func() {
		if run != nil {
			l.stop(run)
		}
	}()

	// The consumer group, before anything is published.
	wctx, cancelWork := context.WithCancel(ctx)
	defer cancelWork()
	jc := newJConsumer(addrs)
	jc.wg.Add(1)
	go jc.run(wctx)
	defer jc.wg.Wait()
	defer cancelWork()

	// Writers and publishers.
	stop := make(chan struct{})
	stopOnce := sync.OnceFunc(func() { close(stop) })
	defer stopOnce()
	keys := writerKeys(cfg.Writers, partitions)
	writers := make([]*jwriter, len(keys))
	var wwg sync.WaitGroup
	m := c.Map(listenMap)
	for i, k := range keys {
		writers[i] = &jwriter{key: k}
		wwg.Add(1)
		go func(w *jwriter) {
			defer wwg.Done()
			w.run(wctx, m, cfg.WritePace, stop)
		}(writers[i])
	}
	pubs := &jpublishers{}
	for range cfg.Publishers {
		pubs.wg.Add(1)
		go pubs.run(wctx, c, cfg.Pace, stop)
	}
	defer wwg.Wait()
	defer pubs.wg.Wait()
	defer stopOnce()

	t0 := h.now()
	msSince := func() float64 { return msOf(h.now() - t0) }
	for k := range cfg.Kills {
		kr, err := journalKill(ctx, h, cfg, k, keys, writers)
		if err != nil {
			return err
		}
		kr.AtMs = msSince() - kr.AtMs
		// The listener restart lands on the first failover, the consumer
		// crash on the second (the first if there is one kill): both a
		// seeded 200-1000 ms after the kill.
		if k == 0 {
			sleepCtx(ctx, time.Duration(200+h.rng.IntN(800))*time.Millisecond)
			pos := l.stop(run)
			run = nil
			l.mu.Lock()
			l.restarts++
			l.mu.Unlock()
			before := ackedTotal(writers)
			h.logf("listener stopped at %d acknowledged writes; resuming from its positions with a new client", before)
			sleepCtx(ctx, 500*time.Millisecond)
			if run, err = l.start(ctx, addrs, slices.Clone(pos)); err != nil {
				return fmt.Errorf("listener restart: %w", err)
			}
			kr.Attached = append(kr.Attached, "listener restart")
		}
		if k == min(1, cfg.Kills-1) {
			sleepCtx(ctx, time.Duration(200+h.rng.IntN(800))*time.Millisecond)
			h.logf("consumer crash (%d events consumed so far)", func() int { jc.mu.Lock(); defer jc.mu.Unlock(); return len(jc.seen) }())
			jc.crashNow(ctx)
			sr.Crashes++
			kr.Attached = append(kr.Attached, "consumer crash")
		}
		if err := h.waitSafe(ctx, 3*time.Minute); err != nil {
			return fmt.Errorf("not safe after killing %s: %w", kr.Victim, err)
		}
		victim := h.byName(kr.Victim)
		if !victim.running {
			if err := h.restart(ctx, victim); err != nil {
				return err
			}
			if err := h.waitSafe(ctx, 3*time.Minute); err != nil {
				return fmt.Errorf("not safe after restarting %s: %w", kr.Victim, err)
			}
		}
		kr.SafeMs = msSince() - kr.AtMs
		round.Kills = append(round.Kills, kr)
		if e, ok := run.ended(); ok {
			return fmt.Errorf("Listen ended on its own: %v", e)
		}
	}
	sleepCtx(ctx, cfg.Warm)
	stopOnce()
	wwg.Wait()
	pubs.wg.Wait()
	stoppedAt := h.now()
	h.logf("workloads stopped: %d writes acknowledged (errors: %s), %d publishes acknowledged",
		ackedTotal(writers), describeKinds(errKinds(writers)), pubs.acked.Load())

	// Every key's final value must reach the listener, every acknowledged
	// event the consumer.
	if err := waitListenerCaughtUp(ctx, m, writers, l, time.Minute); err != nil {
		violation("listener: %v", err)
	}
	lr.CatchUpMs = msOf(h.now() - stoppedAt)
	var ackedIDs []string
	pubs.mu.Lock()
	for _, p := range pubs.pubs {
		if p.outcome == pAcked {
			ackedIDs = append(ackedIDs, p.id)
		}
	}
	pubs.mu.Unlock()
	deadline := time.Now().Add(time.Minute)
	for jc.missing(ackedIDs) > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		sleepCtx(ctx, 50*time.Millisecond)
	}
	sr.CatchUpMs = msOf(h.now() - stoppedAt)
	sleepCtx(ctx, time.Second) // late redeliveries, if any, are counted too
	cancelWork()
	jc.wg.Wait()
	l.stop(run)
	run = nil

	for _, v := range checkListener(writers, l, partitions, lr) {
		violation("listener: %s", v)
	}
	jc.mu.Lock()
	sr.ConsumerErrors, sr.CrashInHandle = jc.errors, jc.inHandle
	for _, v := range checkStream(pubs.pubs, jc.incs, partitions, sr) {
		violation("stream: %s", v)
	}
	jc.mu.Unlock()
	if err := c.DeleteGroup(ctx, jstream, jgroup); err != nil {
		sr.DeleteGroup = err.Error()
		violation("stream: DeleteGroup: %v", err)
	}
	h.logf("listener: %d events heard, %d acked writes, %d unknown, %d gaps, %d duplicates; stream: %d acked, %d consumed, %d lost, %d redelivered",
		lr.Events, lr.Acked, lr.Unknown, lr.Gaps, lr.Duplicates, sr.Acked, sr.Consumed, sr.Lost, sr.Duplicate)
	if err := h.waitSafe(ctx, 3*time.Minute); err != nil {
		return fmt.Errorf("not safe at the end: %w", err)
	}
	if err := h.checkReplicas(ctx); err != nil {
		violation("replicas differ at the end: %v", err)
	} else {
		round.ReplicasEqual = true
	}
	return nil
}

// journalKill waits for a safe cluster and -warm of writes, then SIGKILLs
// the primary of one of keys: the raft leader on even k, a follower on odd
// k (any primary of a key if none has that role). It returns the kill's
// record with AtMs holding how long ago (ms) the kill happened.
func journalKill(ctx context.Context, h *harness, cfg journalConfig, k int, keys []string, writers []*jwriter) (killRec, error) {
	var kr killRec
	if err := h.waitSafe(ctx, 3*time.Minute); err != nil {
		return kr, fmt.Errorf("not safe before kill %d: %w", k, err)
	}
	before := ackedTotal(writers)
	sleepCtx(ctx, cfg.Warm)
	if ackedTotal(writers) == before {
		return kr, fmt.Errorf("no write acknowledged for %v before kill %d", cfg.Warm, k)
	}
	cv, err := h.latest(ctx)
	if err != nil {
		return kr, err
	}
	leader := h.leaderOf(cv)
	led := map[*proc]int{}
	for _, key := range keys {
		if p := h.byName(cv.Partitions[affinity.Partition(key, len(cv.Partitions))].Primary); p != nil && p.running {
			led[p]++
		}
	}
	var cands []*proc
	for p := range led {
		if (p == leader) == (k%2 == 0) {
			cands = append(cands, p)
		}
	}
	if len(cands) == 0 {
		for p := range led {
			cands = append(cands, p)
		}
	}
	if len(cands) == 0 {
		return kr, fmt.Errorf("kill %d: no running primary of the writers' keys", k)
	}
	slices.SortFunc(cands, func(a, b *proc) int { return strings.Compare(a.name, b.name) })
	victim := cands[h.rng.IntN(len(cands))]
	if why := h.wouldLose(cv, victim.name); why != "" {
		return kr, fmt.Errorf("killing %s would lose data: %s", victim.name, why)
	}
	kr = killRec{Victim: victim.name, Leader: victim == leader, Keys: led[victim], AckedAt: ackedTotal(writers)}
	at := h.now()
	h.logf("kill %d: SIGKILL %s (raft leader %v, primary of %d writer keys) at %d acknowledged writes", k, victim.name, kr.Leader, kr.Keys, kr.AckedAt)
	h.kill(victim)
	sleepCtx(ctx, cfg.Down)
	kr.AtMs = msOf(h.now() - at)
	return kr, nil
}

// waitListenerCaughtUp waits until the listener heard every key's final
// value (read from the map).
func waitListenerCaughtUp(ctx context.Context, m client.Map, writers []*jwriter, l *jlistener, d time.Duration) error {
	deadline := time.Now().Add(d)
	final := map[string]int{}
	for _, w := range writers {
		for {
			b, err := m.Get(ctx, w.key)
			if err == nil {
				final[w.key] = parseJValue(w.key, b)
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("reading %s: %w", w.key, err)
			}
			sleepCtx(ctx, 100*time.Millisecond)
		}
	}
	for {
		var behind []string
		for _, w := range writers {
			if got := l.last(w.key); got != final[w.key] {
				behind = append(behind, fmt.Sprintf("%s at %d of %d", w.key, got, final[w.key]))
			}
		}
		if len(behind) == 0 {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("after %v the listener has not heard the final values: %s", d, strings.Join(behind, ", "))
		}
		sleepCtx(ctx, 50*time.Millisecond)
	}
}
