package router

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// This file is the streams' caller side: Publish (a replicated write at the
// key's partition), Read (committed events of one partition from a
// position) and Consume (a consumer group reading every partition with
// at-least-once delivery, its positions committed in the grid).

// Publish appends event to stream at key's partition and returns its
// position there, once replicated like any write.
func (r *Router) Publish(ctx context.Context, stream, key string, event []byte) (uint64, error) {
	if err := checkStreamName(stream); err != nil {
		return 0, err
	}
	if event == nil {
		event = []byte{}
	}
	resp, err := r.doMap(ctx, &wire.MapRequest{Op: wire.OpPublish, Map: stream, Key: key, Value: event})
	if err != nil {
		return 0, err
	}
	return resp.Version, nil
}

func checkStreamName(stream string) error {
	if stream == "" {
		return fmt.Errorf("%w: a stream needs a name", api.ErrBadRequest)
	}
	return nil
}

// SetGroupPosition commits group's next position pos (> 0) of stream in
// partition part; pos 0 deletes the group there (it stops holding back
// the stream's retention).
func (r *Router) SetGroupPosition(ctx context.Context, stream, group string, part int, pos uint64) error {
	if err := checkStreamName(stream); err != nil {
		return err
	}
	if group == "" || part < 0 || part >= r.cfg.Partitions || pos > 1<<62 {
		return fmt.Errorf("%w: group %q, partition %d, position %d", api.ErrBadRequest, group, part, pos)
	}
	if r.closed() {
		return api.ErrClosed
	}
	req := &wire.MapRequest{Op: wire.OpGroupSet, Map: stream, Key: group, Delta: int64(pos), Partition: int32(part)}
	seq, low := r.seqs.begin()
	defer r.seqs.end(seq)
	req.Session = wire.Session{Client: r.cfg.ClientID, Seq: seq, Low: low}
	_, err := r.send(ctx, req)
	return err
}

// ReadStream returns up to max (0: the member's default) committed events
// of stream in partition part from position from, and the position to
// read next.
func (r *Router) ReadStream(ctx context.Context, stream string, part int, from uint64, max int) ([]api.StreamEvent, uint64, error) {
	if err := checkStreamName(stream); err != nil {
		return nil, 0, err
	}
	if part < 0 || part >= r.cfg.Partitions || max < 0 || max > 4096 {
		return nil, 0, fmt.Errorf("%w: partition %d, max %d", api.ErrBadRequest, part, max)
	}
	resp, err := r.readParts(ctx, &wire.JournalRequest{Partitions: []int32{int32(part)}, From: []uint64{from}, Map: stream, Stream: true, Max: int32(max)})
	if err != nil {
		return nil, 0, err
	}
	jp := &resp[0]
	if err := jp.Err.Err(); err != nil {
		if errors.Is(err, api.ErrJournalTrimmed) {
			return nil, 0, &api.TrimmedError{Partition: part, Asked: from, Oldest: max64(jp.Oldest, 1)}
		}
		return nil, 0, err
	}
	return streamEvents(part, jp.Records), jp.Next, nil
}

func max64(a, b uint64) uint64 { return max(a, b) }

// readParts sends one non-waiting journal read per owner of req's
// partitions and returns the parts in req's order, retrying retryable
// failures of whole partitions.
func (r *Router) readParts(ctx context.Context, req *wire.JournalRequest) ([]wire.JournalPart, error) {
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	out := make([]wire.JournalPart, len(req.Partitions))
	index := make(map[int32]int, len(req.Partitions))
	parts := make([]partKeys, len(req.Partitions))
	for i, p := range req.Partitions {
		index[p], parts[i] = i, partKeys{part: p}
	}
	var mu sync.Mutex
	err := r.fanout(ctx, false, parts, func(ctx context.Context, t *wire.Table, g *nodeGroup) ([]error, error) {
		sub := *req
		sub.Version, sub.Partitions, sub.From, sub.Wait = t.Version, g.parts, make([]uint64, len(g.parts)), 0
		for i, p := range g.parts {
			sub.From[i] = req.From[index[p]]
		}
		resp, err := callGroup(ctx, r, g, wire.MsgJournal, &sub, func() (*wire.JournalResponse, error) { return r.cfg.Local.ExecJournal(ctx, &sub) })
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
			jp := resp.Parts[i]
			if err := jp.Err.Err(); err != nil && !errors.Is(err, api.ErrJournalTrimmed) {
				errs[i] = err
				continue
			}
			if jp.Err.Code == 0 && sub.From[i] == 0 && jp.Next == 0 {
				errs[i] = fmt.Errorf("%w: partition %d has no committed position yet", api.ErrUnavailable, p)
				continue
			}
			out[index[p]] = jp
		}
		return errs, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func streamEvents(part int, recs []wire.JournalRecord) []api.StreamEvent {
	out := make([]api.StreamEvent, 0, len(recs))
	for i := range recs {
		for _, e := range recs[i].Events {
			out = append(out, api.StreamEvent{Stream: e.Map, Partition: part, Position: recs[i].LSN, Key: e.Key, Value: e.Value, Time: time.Unix(0, recs[i].Time)})
		}
	}
	return out
}

// Consume runs consumer c until ctx ends or c.Handle fails: it registers
// c.Group on every partition of c.Stream where it has no position yet (at
// the oldest retained event, so that from then on retention keeps every
// event the group has not committed), then hands each partition's events
// to c.Handle in order and commits the group's position after each
// handled batch. Delivery is at least once: after a crash or a failed
// Handle, the events handled since the last commit come again.
func (r *Router) Consume(ctx context.Context, c *api.Consumer) error {
	if err := checkStreamName(c.Stream); err != nil {
		return err
	}
	if c.Group == "" || c.Handle == nil {
		return fmt.Errorf("%w: a consumer needs a Group and a Handle", api.ErrBadRequest)
	}
	parts := c.Partitions
	if parts == nil {
		parts = make([]int, r.cfg.Partitions)
		for i := range parts {
			parts[i] = i
		}
	}
	positions, fresh, err := r.groupStart(ctx, c, parts)
	if err != nil {
		return err
	}
	var freshMu sync.Mutex
	spec := FollowSpec{Map: c.Stream, Stream: true, Parts: make([]int32, len(parts))}
	for i, p := range parts {
		spec.Parts[i] = int32(p)
	}
	return r.follow(ctx, spec, positions, func(b JournalBatch) error {
		freshMu.Lock()
		isFresh := fresh[b.Partition]
		fresh[b.Partition] = false
		freshMu.Unlock()
		if b.Gap != nil {
			if isFresh {
				// Registered at the oldest event, which retention
				// dropped before the registration landed: the group
				// starts at the oldest retained now.
				return r.SetGroupPosition(ctx, c.Stream, c.Group, b.Partition, b.Gap.Oldest)
			}
			// Only a group deleted meanwhile, or a partition that lost
			// its data, leaves a gap: say so.
			return b.Gap
		}
		for _, ev := range streamEvents(b.Partition, b.Records) {
			if err := c.Handle(ev); err != nil {
				return err
			}
		}
		next := b.Records[len(b.Records)-1].LSN + 1
		return r.SetGroupPosition(ctx, c.Stream, c.Group, b.Partition, next)
	})
}

// groupStart returns the group's committed positions of parts, registering
// the group at the oldest retained event where it has none.
func (r *Router) groupStart(ctx context.Context, c *api.Consumer, parts []int) (positions []uint64, fresh map[int]bool, err error) {
	req := &wire.JournalRequest{Map: c.Stream, Stream: true, Group: c.Group, Partitions: make([]int32, len(parts)), From: make([]uint64, len(parts))}
	for i, p := range parts {
		if p < 0 || p >= r.cfg.Partitions {
			return nil, nil, fmt.Errorf("%w: partition %d", api.ErrBadRequest, p)
		}
		req.Partitions[i] = int32(p)
	}
	got, err := r.readParts(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	positions, fresh = make([]uint64, r.cfg.Partitions), map[int]bool{}
	var register []int
	for i, p := range parts {
		positions[p] = got[i].Committed
		if positions[p] == 0 {
			positions[p], fresh[p] = max(got[i].Oldest, 1), true
			register = append(register, p)
		}
	}
	err = eachPart(register, func(p int) error { return r.SetGroupPosition(ctx, c.Stream, c.Group, p, positions[p]) })
	if err != nil {
		return nil, nil, err
	}
	return positions, fresh, nil
}

// partsAtOnce bounds the per-partition writes eachPart has in flight.
const partsAtOnce = 16

// eachPart runs fn for every partition of parts, partsAtOnce at a time,
// and returns their errors joined. Once one failed (a ctx canceled midway
// fails every later one) it starts no more: the error is that one and
// those of the calls already in flight.
func eachPart(parts []int, fn func(p int) error) error {
	sem := make(chan struct{}, partsAtOnce)
	errs := make([]error, len(parts))
	var failed atomic.Bool
	var wg sync.WaitGroup
	for i, p := range parts {
		sem <- struct{}{}
		if failed.Load() {
			<-sem
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := fn(p); err != nil {
				failed.Store(true)
				errs[i] = fmt.Errorf("partition %d: %w", p, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// DeleteGroup removes group from every partition of stream: it no longer
// holds back the stream's retention.
func (r *Router) DeleteGroup(ctx context.Context, stream, group string) error {
	parts := make([]int, r.cfg.Partitions)
	for i := range parts {
		parts[i] = i
	}
	return eachPart(parts, func(p int) error { return r.SetGroupPosition(ctx, stream, group, p, 0) })
}
