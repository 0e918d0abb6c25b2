package grid

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// This file serves journal reads (MsgJournal): committed records of the
// partitions this node leads, from a position, waiting a bounded time for
// the next one when there is none yet (a long poll). Only committed
// records are answered: a record every in-sync replica holds keeps its
// position through any failover, so a reader never sees an event that a
// promoted backup does not have.

// Journal read bounds.
const (
	defaultJournalMax = 256  // records per partition when the request names none
	maxJournalMax     = 4096 // the most records per partition a request may ask
	maxJournalParts   = 65536
)

// journalWait is the longest a journal read waits for a record: within
// the request timeout that bounds every served request.
func (n *Node) journalWait(asked int64) time.Duration {
	return min(time.Duration(max(asked, 0)), n.cfg.RequestTimeout/2)
}

func validJournalRequest(req *wire.JournalRequest, parts int) error {
	switch {
	case len(req.Partitions) != len(req.From):
		return fmt.Errorf("%w: %d partitions but %d positions", api.ErrBadRequest, len(req.Partitions), len(req.From))
	case len(req.Partitions) > maxJournalParts:
		return fmt.Errorf("%w: %d partitions in one journal read", api.ErrBadRequest, len(req.Partitions))
	case req.Max < 0 || req.Max > maxJournalMax:
		return fmt.Errorf("%w: Max %d out of range [0, %d]", api.ErrBadRequest, req.Max, maxJournalMax)
	}
	for _, id := range req.Partitions {
		if id < 0 || int(id) >= parts {
			return fmt.Errorf("%w: partition %d out of range [0, %d)", api.ErrBadRequest, id, parts)
		}
	}
	return nil
}

// execJournal answers a journal read, waiting up to the request's Wait
// until at least one partition has a record (or an error) to answer.
func (n *Node) execJournal(ctx context.Context, req *wire.JournalRequest) (*wire.JournalResponse, error) {
	if err := validJournalRequest(req, len(n.parts)); err != nil {
		return nil, err
	}
	if t := n.table.Load(); t == nil || t.Version < req.Version {
		wctx, cancel := context.WithTimeout(ctx, maxTableWait)
		err := n.waitVersion(wctx, req.Version)
		cancel()
		if err != nil {
			return nil, err
		}
	}
	limit := int(req.Max)
	if limit == 0 {
		limit = defaultJournalMax
	}
	resp := &wire.JournalResponse{Parts: make([]wire.JournalPart, len(req.Partitions))}
	waiting := make([]bool, len(req.Partitions))
	defer n.unwait(req, waiting)
	timer := time.NewTimer(n.journalWait(req.Wait))
	defer timer.Stop()
	for {
		wake := n.jwake.channel()
		// Answer bytes over all partitions: a quarter frame.
		if n.readJournals(req, resp, waiting, limit, n.cfg.MaxFrame/4) {
			return resp, nil
		}
		select {
		case <-wake:
		case <-timer.C:
			return resp, nil
		case <-ctx.Done():
			return resp, nil
		case <-n.done:
			return nil, api.ErrClosed
		}
	}
}

// readJournals fills resp from every partition asked and reports whether
// any part has something to say (records, a new position, an error). A
// partition with nothing counts one waiter, in the same critical section
// as its look, so that its next commit wakes this read: a commit between
// the look and a later registration would find no waiter and the read
// would sleep out its whole poll. The caller drops the waiters (unwait).
func (n *Node) readJournals(req *wire.JournalRequest, resp *wire.JournalResponse, waiting []bool, limit, budget int) bool {
	leaseErr := n.checkLease()
	found := false
	for i, id := range req.Partitions {
		p := n.parts[id]
		part := &resp.Parts[i]
		p.mu.Lock()
		err := leaseErr
		switch {
		case err != nil:
		case req.Stream:
			err = p.readStream(req.From[i], req.Map, req.Group, limit, &budget, part)
		default:
			err = p.readJournal(req.From[i], req.Map, limit, &budget, part)
		}
		if err != nil {
			part.Err = wire.ErrBody(err)
		}
		said := err != nil || len(part.Records) > 0 || part.Next != req.From[i]
		if said {
			found = true
		}
		if said == waiting[i] {
			if waiting[i] {
				p.jwaiters--
			} else {
				p.jwaiters++
			}
			waiting[i] = !said
		}
		p.mu.Unlock()
	}
	return found
}

// unwait drops the waiters readJournals counted.
func (n *Node) unwait(req *wire.JournalRequest, waiting []bool) {
	for i, id := range req.Partitions {
		if waiting[i] {
			p := n.parts[id]
			p.mu.Lock()
			p.jwaiters--
			p.mu.Unlock()
			waiting[i] = false
		}
	}
}

// readJournal answers one partition's committed records from position
// from (0: none, just the position of the next record), events of map m
// only unless m is "", at most limit records and about *budget bytes (at
// least one record). Caller holds mu.
func (p *partition) readJournal(from uint64, m string, limit int, budget *int, out *wire.JournalPart) error {
	if p.role != rolePrimary {
		return p.notOwner()
	}
	out.Epoch, out.Oldest = p.epoch, p.journal.oldest()
	out.Records, out.Next, out.Err = nil, from, wire.ErrorBody{}
	if p.commit < p.ready {
		return nil // a new primary: nothing is known committed yet
	}
	if from == 0 {
		out.Next = p.commit + 1
		return nil
	}
	if from > p.lsn+1 {
		// Beyond this partition's history: it restarted empty (more
		// failures than backups) or the position is not one of ours.
		return fmt.Errorf("%w: partition %d asked from %d, but its history ends at %d (it restarted empty?); oldest retained %d",
			api.ErrJournalTrimmed, p.id, from, p.lsn, out.Oldest)
	}
	recs, ok := p.journal.from(from, p.commit, limit)
	if !ok {
		return &api.TrimmedError{Partition: p.id, Asked: from, Oldest: out.Oldest}
	}
	for i := range recs {
		e := &recs[i]
		r := wire.JournalRecord{LSN: e.Record.LSN, Epoch: e.Record.Epoch, Time: e.Record.Time, Events: e.Events}
		if m != "" {
			r.Events = eventsOf(r.Events, m)
		}
		out.Next = r.LSN + 1
		if len(r.Events) == 0 {
			continue
		}
		size := eventsSize(r.Events)
		if len(out.Records) > 0 && size > *budget {
			out.Next = r.LSN
			break
		}
		*budget -= size
		out.Records = append(out.Records, r)
	}
	return nil
}

// eventsOf returns the events of map m (evs itself when all are).
func eventsOf(evs []wire.JournalEvent, m string) []wire.JournalEvent {
	keep := 0
	for i := range evs {
		if evs[i].Map == m {
			keep++
		}
	}
	if keep == len(evs) {
		return evs
	}
	out := make([]wire.JournalEvent, 0, keep)
	for _, e := range evs {
		if e.Map == m {
			out = append(out, e)
		}
	}
	return out
}

// journalWake wakes journal reads when a partition with waiting readers
// commits. Readers take the channel before they look, so a commit after
// their look closes the channel they wait on.
type journalWake struct {
	mu sync.Mutex
	ch chan struct{}
}

func (w *journalWake) channel() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ch == nil {
		w.ch = make(chan struct{})
	}
	return w.ch
}

func (w *journalWake) wake() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ch != nil {
		close(w.ch)
		w.ch = nil
	}
}
