package router

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// This file follows partitions' journals (MsgJournal): one long-polling
// loop per primary, each asking for its partitions' records from the
// follower's positions. Positions are the partitions' LSNs, the same on
// every replica, so when a primary dies or a partition moves the loops are
// regrouped under the new table and go on from the same positions: no gap,
// no duplicate. Only committed records are ever answered (grid), so the new
// primary holds every record a follower was given.

// journalPoll is how long a journal read waits at the member for a record;
// journalGrace is how much longer the follower waits for the answer before
// it suspects the member (paused, cut off) and regroups.
const (
	journalPoll  = 2 * time.Second
	journalGrace = 3 * time.Second
)

// JournalBatch is what Follow hands over: a partition's next records, or a
// gap (Gap set: the records from Gap.Asked to Gap.Oldest are no longer
// retained; following goes on at Gap.Oldest).
type JournalBatch struct {
	Partition int
	Records   []wire.JournalRecord
	Gap       *api.TrimmedError
}

// Follow reads the journals of every partition from positions (the next
// position wanted per partition, len = partitions; 0: from the partition's
// current end) and calls deliver with each partition's records in order,
// one call at a time, events of map m only ("" every map). After a
// delivery returns nil, positions holds the position after the batch; a
// batch whose delivery failed is not counted. Follow returns when ctx ends
// (ctx's error), the router closes, or deliver fails (its error).
func (r *Router) Follow(ctx context.Context, m string, positions []uint64, deliver func(JournalBatch) error) error {
	return r.follow(ctx, FollowSpec{Map: m}, positions, deliver)
}

// FollowSpec says what Follow reads.
type FollowSpec struct {
	Map    string // the map, or the stream
	Stream bool   // read stream Map's events instead of the journal
	// Parts limits the partitions followed (nil: all); positions of the
	// others are left alone.
	Parts []int32
}

func (r *Router) follow(ctx context.Context, spec FollowSpec, positions []uint64, deliver func(JournalBatch) error) error {
	if len(positions) != r.cfg.Partitions {
		return fmt.Errorf("%w: %d positions for %d partitions", api.ErrBadRequest, len(positions), r.cfg.Partitions)
	}
	f := &follower{r: r, spec: spec, pos: positions, deliver: deliver}
	for attempt := 0; ; attempt++ {
		if r.closed() {
			return api.ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		start := time.Now()
		t, err := r.table(ctx)
		if err == nil {
			err = f.round(ctx, t)
		}
		switch {
		case f.failed != nil:
			return f.failed
		case ctx.Err() != nil:
			return ctx.Err()
		case !retryable(err):
			return err
		}
		if time.Since(start) > time.Second {
			attempt = 0 // the round was working: start backing off afresh
		}
		r.afterError(ctx, err)
		if !r.backoff(ctx, attempt) {
			return ctx.Err()
		}
	}
}

// follower is one Follow call's state.
type follower struct {
	r       *Router
	spec    FollowSpec
	pos     []uint64 // pos[p] is written by p's group loop only, read between rounds
	deliver func(JournalBatch) error

	mu     sync.Mutex // serializes deliveries
	failed error      // deliver's error: Follow returns it
}

// round runs one loop per primary of t until one of them needs the
// partitions regrouped (a primary changed or stopped answering), and
// returns that loop's reason.
func (f *follower) round(ctx context.Context, t *wire.Table) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	parts := f.r.allParts()
	if f.spec.Parts != nil {
		parts = parts[:0]
		for _, p := range f.spec.Parts {
			parts = append(parts, partKeys{part: p})
		}
	}
	groups := groupByOwner(t, parts)
	errc := make(chan error, len(groups))
	var wg sync.WaitGroup
	for i := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- f.follow(ctx, t, &groups[i])
		}()
	}
	err := <-errc
	cancel()
	wg.Wait()
	return err
}

// follow long-polls g's primary until an error that needs a new round.
func (f *follower) follow(ctx context.Context, t *wire.Table, g *nodeGroup) error {
	req := wire.JournalRequest{Version: t.Version, Partitions: g.parts, From: make([]uint64, len(g.parts)), Map: f.spec.Map, Stream: f.spec.Stream, Wait: int64(journalPoll)}
	for ctx.Err() == nil {
		for i, p := range g.parts {
			req.From[i] = f.pos[p]
		}
		resp, err := f.read(ctx, g, &req)
		if err != nil {
			return err
		}
		if len(resp.Parts) != len(g.parts) {
			return fmt.Errorf("%w: %d journal parts for %d partitions", api.ErrInternal, len(resp.Parts), len(g.parts))
		}
		for i := range resp.Parts {
			if err := f.take(g.parts[i], req.From[i], &resp.Parts[i]); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

// read sends one journal read to g's primary (or runs it locally).
func (f *follower) read(ctx context.Context, g *nodeGroup, req *wire.JournalRequest) (*wire.JournalResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, journalPoll+journalGrace)
	defer cancel()
	if f.r.isLocal(g.name) {
		return f.r.cfg.Local.ExecJournal(ctx, req)
	}
	if g.addr == "" {
		return nil, fmt.Errorf("%w: no address for %q", api.ErrUnavailable, g.name)
	}
	conn, err := f.r.cfg.Pool.Get(ctx, g.addr)
	if err != nil {
		return nil, err
	}
	fut, err := conn.Start(wire.MsgJournal, req)
	if err != nil {
		return nil, err
	}
	var resp wire.JournalResponse
	if err := fut.Wait(ctx, &resp); err != nil {
		if ctx.Err() != nil {
			// The member held the read past its poll: paused or cut
			// off. Ask for a newer table and regroup.
			return nil, fmt.Errorf("%w: journal read at %s unanswered: %v", api.ErrUnavailable, g.name, err)
		}
		return nil, err
	}
	return &resp, nil
}

// take handles partition p's answer to a read from position from.
func (f *follower) take(p int32, from uint64, part *wire.JournalPart) error {
	if err := part.Err.Err(); err != nil {
		if !errors.Is(err, api.ErrJournalTrimmed) {
			return err // NotOwner, no lease...: a new round
		}
		next := max(part.Oldest, 1)
		gap := &api.TrimmedError{Partition: int(p), Asked: from, Oldest: next}
		if err := f.hand(JournalBatch{Partition: int(p), Gap: gap}); err != nil {
			return err
		}
		f.pos[p] = next
		return nil
	}
	if len(part.Records) > 0 {
		if err := f.hand(JournalBatch{Partition: int(p), Records: part.Records}); err != nil {
			return err
		}
	}
	f.pos[p] = part.Next
	return nil
}

// hand delivers b, one delivery at a time; a failed delivery ends Follow.
func (f *follower) hand(b JournalBatch) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failed != nil {
		return f.failed
	}
	if err := f.deliver(b); err != nil {
		f.failed = err
		return err
	}
	return nil
}

// Listen runs l (api.Listener) until ctx ends or a handler fails.
func (r *Router) Listen(ctx context.Context, l *api.Listener) error {
	if l.OnEvent == nil {
		return fmt.Errorf("%w: a listener needs OnEvent", api.ErrBadRequest)
	}
	if l.Positions == nil {
		l.Positions = make([]uint64, r.cfg.Partitions)
	}
	return r.Follow(ctx, l.Map, l.Positions, func(b JournalBatch) error {
		if b.Gap != nil {
			if l.OnGap == nil {
				return b.Gap
			}
			return l.OnGap(b.Gap)
		}
		for i := range b.Records {
			rec := &b.Records[i]
			for j := range rec.Events {
				if err := l.OnEvent(eventOf(b.Partition, rec, &rec.Events[j])); err != nil {
					return err
				}
			}
			// Accepted: a later record's failure must not bring this
			// one again on resume. Follow calls deliver from the loop
			// that owns this partition's position.
			l.Positions[b.Partition] = rec.LSN + 1
		}
		return nil
	})
}

func eventOf(part int, rec *wire.JournalRecord, e *wire.JournalEvent) api.Event {
	ev := api.Event{Partition: part, Position: rec.LSN, Kind: api.EventKind(e.Kind), Map: e.Map, Key: e.Key,
		Value: e.Value, Old: e.Old, Time: time.Unix(0, rec.Time)}
	if e.ExpireAt != 0 {
		ev.ExpireAt = time.Unix(0, e.ExpireAt)
	}
	return ev
}

// JournalEnds returns every partition's next position (the one after its
// last committed record): Positions that make a Listener hear exactly what
// is committed after this call.
func (r *Router) JournalEnds(ctx context.Context) ([]uint64, error) {
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	ends := make([]uint64, r.cfg.Partitions)
	var mu sync.Mutex
	err := r.fanout(ctx, false, r.allParts(), func(ctx context.Context, t *wire.Table, g *nodeGroup) ([]error, error) {
		req := &wire.JournalRequest{Version: t.Version, Partitions: g.parts, From: make([]uint64, len(g.parts))}
		resp, err := callGroup(ctx, r, g, wire.MsgJournal, req, func() (*wire.JournalResponse, error) { return r.cfg.Local.ExecJournal(ctx, req) })
		if err != nil {
			return nil, err
		}
		if len(resp.Parts) != len(g.parts) {
			return nil, fmt.Errorf("%w: %d journal parts for %d partitions", api.ErrInternal, len(resp.Parts), len(g.parts))
		}
		errs := make([]error, len(g.parts))
		mu.Lock()
		defer mu.Unlock()
		for i, p := range g.parts {
			if errs[i] = resp.Parts[i].Err.Err(); errs[i] == nil {
				if resp.Parts[i].Next == 0 {
					// A new primary not ready yet: ask again.
					errs[i] = fmt.Errorf("%w: partition %d has no committed position yet", api.ErrUnavailable, p)
					continue
				}
				ends[p] = resp.Parts[i].Next
			}
		}
		return errs, nil
	})
	if err != nil {
		return nil, err
	}
	return ends, nil
}
