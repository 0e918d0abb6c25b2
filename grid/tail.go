package grid

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
)

// This file is catch-up by tail: a replica that fell behind (its stream
// broke on a connection blip, it was paused, it was failed over while
// alive) and still holds a complete copy is sent only the records it
// misses, from the primary's journal, instead of a snapshot.
//
// The rule that makes it safe is raft's log matching: a record is written
// once, by the primary of its epoch, at its LSN, and a copy only ever
// grows by a snapshot of a primary or by that primary's records in order.
// So two copies whose records at LSN L were written at the same epoch hold
// the same history up to L. The primary asks the replica for its last
// record (LSN, epoch), and if its own journal has a record at that LSN of
// that epoch and every record after it, it sends those records; the
// replica checks again, under its lock, that its copy still ends there.
// Anything else (a replica ahead of the primary, with records a failed-over
// primary never replicated; a journal trimmed past the replica's end; a
// copy being filled) gets a snapshot, as before.

// lastEpoch returns the epoch of the primary that wrote p's last record,
// 0 if the journal does not hold it. Caller holds mu.
func (p *partition) lastEpoch() uint64 {
	if p.lsn == 0 || p.journal.last() != p.lsn {
		return 0
	}
	return p.journal.recs[len(p.journal.recs)-1].Record.Epoch
}

// tailState is a replica's answer to a probe. Caller holds mu.
func (p *partition) tailState() wire.TailState {
	return wire.TailState{LSN: p.lsn, LastEpoch: p.lastEpoch(), Complete: p.complete && p.incoming == nil}
}

// tailFor returns the records a replica at st misses, or false when it
// needs a snapshot. Caller holds mu.
func (p *partition) tailFor(st *wire.TailState) ([]wire.JournalEntry, bool) {
	if st == nil || !st.Complete || st.LastEpoch == 0 || st.LSN > p.lsn {
		return nil, false
	}
	base, ok := p.journal.from(st.LSN, st.LSN, 1)
	if !ok || len(base) != 1 || base[0].Record.LSN != st.LSN || base[0].Record.Epoch != st.LastEpoch {
		return nil, false
	}
	recs, ok := p.journal.from(st.LSN+1, p.lsn, math.MaxInt)
	if !ok || uint64(len(recs)) != p.lsn-st.LSN {
		return nil, false
	}
	return recs, true
}

// probeTimeout bounds a probe: a replica that does not answer (paused,
// cut off) is probed again by the next fill attempt.
const probeTimeout = 2 * time.Second

// probeTail asks the replica on conn where its copy of p ends.
func (n *Node) probeTail(ctx context.Context, conn *transport.Conn, p *partition, epoch uint64) (*wire.TailState, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	var st wire.TailState
	if err := conn.Call(ctx, wire.MsgTailProbe, &wire.TailProbe{Partition: int32(p.id), Epoch: epoch, From: n.name}, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// startTail queues, on conn, the start of a tail and the records the
// replica at st misses; false (nothing queued) when it needs a snapshot.
// Caller holds p.mu.
func (n *Node) startTail(p *partition, conn *transport.Conn, st *wire.TailState) ([]*transport.Future, bool) {
	recs, ok := p.tailFor(st)
	if !ok {
		return nil, false
	}
	start := wire.TailStart{Partition: int32(p.id), Epoch: p.epoch, From: n.name, LSN: st.LSN, LastEpoch: st.LastEpoch}
	fut, err := conn.Start(wire.MsgTail, &start)
	if err != nil {
		return nil, false
	}
	futs := []*transport.Future{fut}
	for i := range recs {
		req := wire.ReplicateRequest{Partition: int32(p.id), Epoch: p.epoch, Record: recs[i].Record, From: n.name}
		fut, err := conn.Start(wire.MsgReplicate, &req)
		if err != nil {
			return futs, true // the waits fail; the stream breaks and resyncs
		}
		futs = append(futs, fut)
	}
	return futs, true
}

// handleTailProbe answers where this node's copy of a partition ends.
func (n *Node) handleTailProbe(c *transport.Conn, req *wire.TailProbe) (*wire.TailState, error) {
	if req.Partition < 0 || int(req.Partition) >= len(n.parts) {
		return nil, fmt.Errorf("%w: partition %d", api.ErrBadRequest, req.Partition)
	}
	if err := n.checkSender(c, req.Partition, req.Epoch, req.From, true); err != nil {
		return nil, err
	}
	p := n.parts[req.Partition]
	p.mu.Lock()
	defer p.mu.Unlock()
	if req.Epoch < p.epoch {
		return nil, fmt.Errorf("%w: partition %d: epoch %d < %d", api.ErrStaleEpoch, p.id, req.Epoch, p.epoch)
	}
	st := p.tailState()
	return &st, nil
}

// handleTail accepts a tail: the records after this copy's last follow on
// c, from the primary of the tail's epoch. Handled inline, in order with
// the records that follow.
func (n *Node) handleTail(c *transport.Conn, f wire.Frame) {
	var ts wire.TailStart
	if err := wire.Decode(f.Body, &ts); err != nil {
		c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: %v", api.ErrBadRequest, err))
		return
	}
	if ts.Partition < 0 || int(ts.Partition) >= len(n.parts) {
		c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: partition %d", api.ErrBadRequest, ts.Partition))
		return
	}
	if err := n.checkSender(c, ts.Partition, ts.Epoch, ts.From, true); err != nil {
		c.ReplyError(f.Type, f.ID, err)
		return
	}
	p := n.parts[ts.Partition]
	p.mu.Lock()
	if err := n.fence(p, ts.Epoch); err != nil {
		p.mu.Unlock()
		c.ReplyError(f.Type, f.ID, err)
		return
	}
	if st := p.tailState(); !st.Complete || st.LSN != ts.LSN || st.LastEpoch != ts.LastEpoch {
		p.mu.Unlock()
		c.ReplyError(f.Type, f.ID, fmt.Errorf("%w: partition %d: a tail after %d@%d for a copy at %d@%d (complete %v)",
			api.ErrGap, p.id, ts.LSN, ts.LastEpoch, st.LSN, st.LastEpoch, st.Complete))
		return
	}
	p.syncedEpoch, p.syncedConn = ts.Epoch, c
	if p.orphanSince != 0 {
		p.orphanSince = nowNano() // as after a snapshot (receiveChunk)
	}
	lsn := p.lsn
	p.mu.Unlock()
	n.tailsIn.Add(1)
	c.Reply(f.Type, f.ID, &wire.Ack{LSN: lsn})
}
