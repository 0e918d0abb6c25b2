package txn

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/txn/internal/proto"
)

// This file is Options.Locking (strict two-phase locking): a Get locks its
// key with a lock step at the key's partition before it reads it, and the
// locks are held until the transaction finishes. The partition of the
// first lock is the coordinator from then on: the records the lock steps
// leave name it, so that recovery can resolve them if the caller dies.

// claim makes part one the transaction holds locks at (a lock step is on
// its way), the coordinator if it is the first.
func (t *Tx) claim(part int) {
	if t.coord < 0 {
		t.coord = part
	}
	if t.held == nil {
		t.held = map[int]bool{}
		t.locked = map[key]bool{}
	}
	t.held[part] = true
}

// lockOne locks kk and returns its committed entry (ErrNotFound if
// absent).
func (t *Tx) lockOne(ctx context.Context, kk key) (api.Entry, error) {
	part := affinity.Partition(kk.k, t.g.Partitions())
	t.claim(part)
	ents, err := t.lockKeys(ctx, part, []proto.Read{{Map: kk.m, Key: kk.k}})
	if err != nil {
		return api.Entry{}, err
	}
	t.locked[kk] = true
	return entryOf(ents[0])
}

func entryOf(e proto.Entry) (api.Entry, error) {
	if !e.Found {
		return api.Entry{}, ErrNotFound
	}
	return api.Entry{Value: e.Value, Version: e.Version}, nil
}

// lockKeys runs the lock step of keys at part (claimed), waiting while a
// younger transaction holds one of them (wait-die, up to LockWait), and
// returns their entries in order.
func (t *Tx) lockKeys(ctx context.Context, part int, keys []proto.Read) ([]proto.Entry, error) {
	res, err := t.waitDie(ctx, part, proto.StepLock, &proto.Work{H: t.header(t.coord), Reads: keys})
	if err != nil {
		return nil, err
	}
	if res.Status != proto.Done {
		return nil, outcome(res)
	}
	if len(res.Entries) != len(keys) {
		return nil, fmt.Errorf("txn: a lock step at partition %d answered %d entries for %d keys", part, len(res.Entries), len(keys))
	}
	return res.Entries, nil
}

// prefetchLocked locks and reads keys of map m, one lock step per
// partition, the partitions in parallel.
func (t *Tx) prefetchLocked(ctx context.Context, m string, keys []string) error {
	n := t.g.Partitions()
	byPart := map[int][]proto.Read{}
	var order []int
	for _, k := range keys {
		p := affinity.Partition(k, n)
		if _, ok := byPart[p]; !ok {
			order = append(order, p)
			t.claim(p)
		}
		byPart[p] = append(byPart[p], proto.Read{Map: m, Key: k})
	}
	ents := make([][]proto.Entry, len(order))
	errs := make([]error, len(order))
	sem := make(chan struct{}, prefetchParallel)
	var wg sync.WaitGroup
	for i, p := range order {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ents[i], errs[i] = t.lockKeys(ctx, p, byPart[p])
		}()
	}
	wg.Wait()
	var first error
	for i, p := range order {
		if errs[i] != nil {
			if first == nil {
				first = errs[i]
			}
			continue
		}
		for j, r := range byPart[p] {
			kk := key{m, r.Key}
			t.locked[kk] = true
			if err := t.usable(m, r.Key); err != nil {
				return err
			}
			e := ents[i][j]
			if err := t.record(kk, api.Entry{Value: e.Value, Version: e.Version}, e.Found); err != nil {
				return err
			}
		}
	}
	return first
}

// heldParts lists the partitions the transaction sent lock steps to.
func (t *Tx) heldParts() []int {
	out := make([]int, 0, len(t.held))
	for p := range t.held {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}

// commitLocked commits a transaction whose Gets locked keys. Every
// partition it locked at is a participant (its Work marked Held), the
// coordinator is the first one. One partition: one step, which also
// releases the locks. Several: the participants with writes (or reads not
// locked: Watch) prepare, adding to the records of their locks; the
// coordinator's commit step applies its writes, releases its locks and
// records the decision; every other participant finishes (releasing its
// locks). Without any write, no decision is needed: the reads were
// current while all of them were locked.
func (t *Tx) commitLocked(ctx context.Context) error {
	parts := t.split()
	for p := range t.held {
		if parts[p] == nil {
			parts[p] = &proto.Work{}
		}
		parts[p].Held = true
	}
	coord := t.coord
	for _, w := range parts {
		w.H = t.header(coord)
	}
	if len(parts) == 1 {
		return t.commitOne(ctx, coord, parts[coord])
	}
	order := sortedParts(parts)
	readOnly := len(t.writes) == 0
	var others, prep []int
	for _, p := range order {
		if p != coord {
			others = append(others, p)
		}
		if (p != coord || readOnly) && t.needsPrepare(parts[p]) {
			prep = append(prep, p)
		}
	}
	if err := t.prepareEach(ctx, prep, parts); err != nil {
		t.finishAll(ctx, order, false)
		return prepareFailed(err)
	}
	if readOnly {
		t.finishAll(ctx, order, false)
		return nil
	}
	cw := parts[coord]
	cw.Parts = others
	commit, known, err := t.decide(ctx, coord, cw)
	switch {
	case known && commit:
		t.finishAll(ctx, others, true)
	case known:
		t.finishAll(ctx, order, false)
	}
	return err
}

// needsPrepare reports whether a participant of a Locking transaction must
// prepare: it has writes, or reads that no lock step locked (Watch).
func (t *Tx) needsPrepare(w *proto.Work) bool {
	if len(w.Writes) > 0 {
		return true
	}
	for _, r := range w.Reads {
		if !t.locked[key{r.Map, r.Key}] {
			return true
		}
	}
	return false
}
