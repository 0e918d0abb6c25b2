package grid

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// A step's access to its partition's streams: it may publish events and
// read and move consumer-group positions, and these apply in the same one
// record as its map writes. This is what makes an event processor's commit
// atomic (package process): the handler's state writes, the processor's
// new position and its outbox event are one record, on every replica or
// on none.
//
// A step publishes at most one event per stream: an event's position is
// the LSN of the record that published it, so two events of one stream in
// one record would share a position.

// ReservedPrefix starts the names of the grid's internal maps, streams and
// groups (processors' positions, outboxes, inbox watermarks). Clients may
// not write them.
const ReservedPrefix = "\x00"

// ErrPublishedTwice fails a step that publishes a second event to one
// stream (an event's position is its record's: two would share it). It
// is an ErrBadRequest.
var ErrPublishedTwice = fmt.Errorf("%w: a step publishes at most one event per stream", api.ErrBadRequest)

// reserved reports whether name is one of the grid's internal names.
func reserved(name string) bool { return strings.HasPrefix(name, ReservedPrefix) }

// Publish buffers event for stream, with key (which must belong to the
// step's partition). It applies with the step's other writes; a stream
// without room (ErrStreamFull: a consumer group holds its oldest events)
// fails the step at commit, and nothing applies.
func (v *StepView) Publish(stream, key string, event []byte) {
	if !v.usable(key, true) || !v.writable(stream) {
		return
	}
	if stream == "" {
		v.fail(fmt.Errorf("%w: empty stream name", api.ErrBadRequest))
		return
	}
	sk := mapKey{stream, ""}
	if _, ok := v.published[sk]; ok {
		v.fail(fmt.Errorf("%w (stream %q)", ErrPublishedTwice, stream))
		return
	}
	val := bytes.Clone(event)
	if val == nil {
		val = []byte{}
	}
	mu := wire.Mutation{Kind: wire.MutPublish, Map: stream, Key: key, Value: val}
	v.wbytes += mutSize(&mu)
	if err := v.checkWrite(&mu); err != nil {
		v.fail(err)
		return
	}
	if v.published == nil {
		v.published = map[mapKey]int{}
	}
	v.published[sk] = len(v.writes)
	v.writes = append(v.writes, mu)
}

// Position returns consumer group's committed position in stream of this
// partition (the position of the next event it reads) and whether the
// group exists, including this step's own SetPosition. The step commits
// only if the position is still the one read.
func (v *StepView) Position(stream, group string) (uint64, bool) {
	if !v.usable("", false) {
		return 0, false
	}
	gk := mapKey{stream, group}
	if i, ok := v.positioned[gk]; ok {
		pos, found := wire.DecodePos(v.writes[i].Value)
		return pos, found
	}
	if !v.lockPrimary() {
		return 0, false
	}
	pos, found := v.p.groupPos(stream, group)
	v.p.mu.Unlock()
	if seen, ok := v.groupReads[gk]; ok && seen != pos {
		v.fail(errConflict)
		return 0, false
	}
	if v.groupReads == nil {
		v.groupReads = map[mapKey]uint64{}
	}
	v.groupReads[gk] = pos
	return pos, found
}

// End returns the position the partition's next record takes: every
// position of its history (a stream's events, the journal's records) is
// below it. It only grows, so a position found at or below it stays so.
func (v *StepView) End() uint64 {
	if !v.usable("", false) || !v.lockPrimary() {
		return 0
	}
	end := v.p.lsn + 1
	v.p.mu.Unlock()
	return end
}

// SetPosition buffers group's committed position in stream (pos > 0; 0
// deletes the group, releasing the events it held).
func (v *StepView) SetPosition(stream, group string, pos uint64) {
	if !v.usable("", false) || !v.writable(stream) || !v.writable(group) {
		return
	}
	if stream == "" || group == "" {
		v.fail(fmt.Errorf("%w: a group position needs a stream and a group name", api.ErrBadRequest))
		return
	}
	mu := wire.Mutation{Kind: wire.MutGroup, Map: stream, Key: group}
	if pos > 0 {
		mu.Value = wire.EncodePos(pos)
	}
	gk := mapKey{stream, group}
	if i, ok := v.positioned[gk]; ok {
		v.writes[i] = mu
		return
	}
	v.wbytes += mutSize(&mu)
	if err := v.checkWrite(&mu); err != nil {
		v.fail(err)
		return
	}
	if v.positioned == nil {
		v.positioned = map[mapKey]int{}
	}
	v.positioned[gk] = len(v.writes)
	v.writes = append(v.writes, mu)
}

// groupPos is group's committed position in stream (0, false: none).
// Caller holds mu.
func (p *partition) groupPos(stream, group string) (uint64, bool) {
	s := p.logs[stream]
	if s == nil {
		return 0, false
	}
	pos, ok := s.groups[group]
	return pos, ok
}

// validateStreams reports whether the group positions the step read are
// unchanged. Caller holds p.mu.
func (v *StepView) validateStreams() bool {
	for gk, seen := range v.groupReads {
		if pos, _ := v.p.groupPos(gk.m, gk.k); pos != seen {
			return false
		}
	}
	return true
}

// checkStreamWrites checks, at commit, that the streams take the step's
// events and groups (room, stream and group counts). Caller holds p.mu.
func (v *StepView) checkStreamWrites() error {
	p := v.p
	added := 0
	for i := range v.writes {
		mu := &v.writes[i]
		if !isStreamMut(mu.Kind) {
			continue
		}
		size := 0
		if mu.Kind == wire.MutPublish {
			// Checked for a stream this step creates too.
			size = entrySize(&wire.JournalEntry{Events: []wire.JournalEvent{{Map: mu.Map, Key: mu.Key, Value: mu.Value}}})
			if size > p.streamBytes {
				return fmt.Errorf("%w: an event of %d bytes in a stream kept within %d bytes per partition", api.ErrValueTooLarge, size, p.streamBytes)
			}
		}
		s := p.logs[mu.Map]
		if s == nil {
			if mu.Kind == wire.MutGroup && len(mu.Value) == 0 {
				continue
			}
			if added++; len(p.logs)+added > maxStreams {
				return fmt.Errorf("%w: partition %d holds %d streams (max %d)", api.ErrBusy, p.id, len(p.logs), maxStreams)
			}
			continue
		}
		switch mu.Kind {
		case wire.MutPublish:
			if err := s.room(size); err != nil {
				return err
			}
		case wire.MutGroup:
			if _, ok := s.groups[mu.Key]; !ok && len(mu.Value) > 0 && len(s.groups) >= maxGroups {
				return fmt.Errorf("%w: stream %q has %d consumer groups (max %d)", api.ErrBusy, mu.Map, len(s.groups), maxGroups)
			}
		}
	}
	return nil
}
