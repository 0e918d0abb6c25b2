package grid

import (
	"fmt"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// This file is a partition's streams: events published with a key land in
// the key's partition, in the stream's log, at the position (LSN) of the
// record that published them, replicated like any write. Consumer groups'
// committed positions live next to the events, written by records too, so
// every replica holds the same events and positions and a promoted backup
// serves both.
//
// Retention: each stream keeps at most StreamRecords events and
// StreamBytes bytes per partition. The oldest events go first, but never
// one a registered consumer group has not committed: a publish that would
// need to drop such an event fails with ErrStreamFull (nothing applied,
// retry later), so a group never silently loses an event.

// Stream bounds per partition.
const (
	DefaultStreamRecords = 4096
	DefaultStreamBytes   = 1 << 20
	// maxStreams bounds the streams of a partition, maxGroups the consumer
	// groups of one stream: each costs memory on every replica.
	maxStreams = 1024
	maxGroups  = 64
)

// streamLog is one stream's events and consumer groups in a partition.
type streamLog struct {
	events journal
	groups map[string]uint64 // committed next position per group
	// changed is the LSN of the last record that published to the stream
	// or moved a group. wake, while a local read waits for the stream, is
	// closed when the commit reaches wakeAt, the first such record since
	// the read found nothing (0: none yet).
	changed uint64
	wake    chan struct{}
	wakeAt  uint64
}

// newStreamLog returns an empty stream bounded like the partition's.
func (p *partition) newStreamLog() *streamLog {
	return &streamLog{events: journal{maxRecs: p.streamRecs, maxBytes: p.streamBytes, sparse: true}, groups: map[string]uint64{}}
}

// protectGroups sets the floor below which events may be dropped: the
// lowest position a group has not committed.
func (s *streamLog) protectGroups() {
	s.events.protect = 0
	for _, pos := range s.groups {
		if s.events.protect == 0 || pos < s.events.protect {
			s.events.protect = max(pos, 1)
		}
	}
}

// room reports whether an event of size bytes fits once every event the
// groups committed may be dropped.
func (s *streamLog) room(size int) error {
	j := &s.events
	n, bytes := j.len()+1, j.bytes+size
	for _, r := range j.retained() {
		if n <= j.maxRecs && bytes <= j.maxBytes {
			break
		}
		if j.protect != 0 && r.Record.LSN >= j.protect {
			break
		}
		n--
		bytes -= entrySize(&r)
	}
	if n > j.maxRecs || bytes > j.maxBytes {
		return fmt.Errorf("%w: %d events, %d bytes kept (max %d, %d bytes) from position %d, which a consumer group has not committed",
			api.ErrStreamFull, j.len(), j.bytes, j.maxRecs, j.maxBytes, j.protect)
	}
	return nil
}

func isStreamMut(kind uint8) bool { return kind == wire.MutPublish || kind == wire.MutGroup }

// applyStreamMut applies a publish or a group position at position lsn,
// written at time t. Caller holds mu.
func (p *partition) applyStreamMut(mu *wire.Mutation, lsn uint64, t int64) {
	s := p.logs[mu.Map]
	if s == nil {
		if mu.Kind == wire.MutGroup && len(mu.Value) == 0 {
			return // deleting a group of a stream this partition never had
		}
		s = p.newStreamLog()
		p.logs[mu.Map] = s
	}
	s.changed = lsn
	if s.wake != nil && s.wakeAt == 0 {
		s.wakeAt = lsn
	}
	switch mu.Kind {
	case wire.MutPublish:
		s.events.append(wire.JournalEntry{Record: wire.Record{LSN: lsn, Time: t}, Events: []wire.JournalEvent{{Kind: wire.EventPublished, Map: mu.Map, Key: mu.Key, Value: mu.Value}}})
	case wire.MutGroup:
		if pos, ok := wire.DecodePos(mu.Value); ok {
			s.groups[mu.Key] = pos
		} else {
			delete(s.groups, mu.Key)
		}
		s.protectGroups()
		s.events.trim()
	}
}

// decidePublish checks that stream req.Map may take the event. Caller
// holds mu.
func (p *partition) decidePublish(req *wire.MapRequest) (wire.MapResponse, []wire.Mutation, error) {
	s := p.logs[req.Map]
	if s == nil && len(p.logs) >= maxStreams {
		return wire.MapResponse{}, nil, fmt.Errorf("%w: partition %d holds %d streams (max %d)", api.ErrBusy, p.id, len(p.logs), maxStreams)
	}
	size := entrySize(&wire.JournalEntry{Events: []wire.JournalEvent{{Map: req.Map, Key: req.Key, Value: req.Value}}})
	if size > p.streamBytes {
		return wire.MapResponse{}, nil, fmt.Errorf("%w: an event of %d bytes in a stream kept within %d bytes per partition", api.ErrValueTooLarge, size, p.streamBytes)
	}
	if s != nil {
		if err := s.room(size); err != nil {
			return wire.MapResponse{}, nil, err
		}
	}
	return wire.MapResponse{Done: true}, []wire.Mutation{{Kind: wire.MutPublish, Map: req.Map, Key: req.Key, Value: req.Value}}, nil
}

// decideGroup sets (Delta > 0) or deletes a group's committed position.
// Caller holds mu.
func (p *partition) decideGroup(req *wire.MapRequest) (wire.MapResponse, []wire.Mutation, error) {
	s := p.logs[req.Map]
	mu := wire.Mutation{Kind: wire.MutGroup, Map: req.Map, Key: req.Key}
	if req.Delta <= 0 {
		if s == nil {
			return wire.MapResponse{}, nil, nil
		}
		_, found := s.groups[req.Key]
		return wire.MapResponse{Done: true, Found: found}, []wire.Mutation{mu}, nil
	}
	if s == nil && len(p.logs) >= maxStreams {
		return wire.MapResponse{}, nil, fmt.Errorf("%w: partition %d holds %d streams (max %d)", api.ErrBusy, p.id, len(p.logs), maxStreams)
	}
	if s != nil {
		if _, ok := s.groups[req.Key]; !ok && len(s.groups) >= maxGroups {
			return wire.MapResponse{}, nil, fmt.Errorf("%w: stream %q has %d consumer groups (max %d)", api.ErrBusy, req.Map, len(s.groups), maxGroups)
		}
	}
	mu.Value = wire.EncodePos(uint64(req.Delta))
	return wire.MapResponse{Done: true}, []wire.Mutation{mu}, nil
}

// readStream answers stream m's committed events from position from (0:
// none, just the position after the last committed record), at most limit
// and about *budget bytes (at least one event), with group's committed
// position. Caller holds mu.
func (p *partition) readStream(from uint64, m, group string, limit int, budget *int, out *wire.JournalPart) error {
	if p.role != rolePrimary {
		return p.notOwner()
	}
	out.Epoch, out.Records, out.Next, out.Err, out.Committed = p.epoch, nil, from, wire.ErrorBody{}, 0
	s := p.logs[m]
	out.Oldest = 1
	if s != nil {
		out.Oldest = s.events.oldest()
		out.Committed = s.groups[group]
	}
	if p.commit < p.ready {
		return nil
	}
	if from == 0 {
		out.Next = p.commit + 1
		return nil
	}
	if from > p.lsn+1 {
		return fmt.Errorf("%w: partition %d asked from %d, but its history ends at %d (it restarted empty?); oldest retained %d",
			api.ErrJournalTrimmed, p.id, from, p.lsn, out.Oldest)
	}
	if s == nil {
		return nil
	}
	recs, ok := s.events.from(from, p.commit, limit)
	if !ok {
		return &api.TrimmedError{Partition: p.id, Asked: from, Oldest: out.Oldest}
	}
	for _, r := range recs {
		size := eventsSize(r.Events)
		if len(out.Records) > 0 && size > *budget {
			break
		}
		*budget -= size
		out.Records = append(out.Records, wire.JournalRecord{LSN: r.Record.LSN, Time: r.Record.Time, Events: r.Events})
		out.Next = r.Record.LSN + 1
	}
	return nil
}

// snapshotStreams adds p's streams to the snapshot c cuts.
func (c *snapshotCutter) streams(p *partition) {
	for name, s := range p.logs {
		head := wire.SnapStream{Name: name, Trimmed: s.events.trimmed}
		for g, pos := range s.groups {
			head.Groups = append(head.Groups, g)
			head.Pos = append(head.Pos, pos)
		}
		c.room(64 + len(name) + 48*len(head.Groups))
		c.cur.Streams = append(c.cur.Streams, head)
		for _, r := range s.events.retained() {
			before := len(c.chunks)
			c.room(entrySize(&r))
			if len(c.chunks) != before {
				// A new chunk: the stream's events go on in a new piece.
				c.cur.Streams = append(c.cur.Streams, wire.SnapStream{Name: name})
			}
			piece := &c.cur.Streams[len(c.cur.Streams)-1]
			piece.Events = append(piece.Events, r)
		}
	}
}

// receiveStreams adds a chunk's stream pieces to the streams being built.
func (p *partition) receiveStreams(into map[string]*streamLog, pieces []wire.SnapStream) {
	for _, piece := range pieces {
		s := into[piece.Name]
		if s == nil {
			if len(into) >= maxStreams {
				continue
			}
			s = p.newStreamLog()
			into[piece.Name] = s
		}
		if piece.Trimmed > s.events.trimmed && s.events.len() == 0 {
			s.events.trimmed = piece.Trimmed
		}
		for i, g := range piece.Groups {
			if i < len(piece.Pos) && len(s.groups) < maxGroups {
				s.groups[g] = piece.Pos[i]
			}
		}
		s.protectGroups()
		for _, r := range piece.Events {
			s.events.append(r)
		}
	}
}
