package grid

// Local reads of a stream (ReadLocal) wait for a commit that changes that
// stream, not for every commit of the partition: a partition's commits
// would otherwise wake every processor and outbox run there, for any
// stream's records and for their own steps.

// streamWait returns a channel closed once a record that changes s (an
// event, a group position) commits, or the partition changes role. Caller
// holds mu.
func (p *partition) streamWait(s *streamLog) chan struct{} {
	if s.wake == nil {
		s.wake = make(chan struct{})
		s.wakeAt = 0
		if s.changed > p.commit {
			s.wakeAt = p.commit + 1 // a change not committed yet
		}
		p.streamWaits = append(p.streamWaits, s)
	}
	return s.wake
}

// wakeStreamsUpTo wakes the waiters of streams changed by a record
// committed at or before c. Caller holds mu.
func (p *partition) wakeStreamsUpTo(c uint64) {
	kept := p.streamWaits[:0]
	for _, s := range p.streamWaits {
		if s.wakeAt != 0 && s.wakeAt <= c {
			close(s.wake)
			s.wake, s.wakeAt = nil, 0
			continue
		}
		kept = append(kept, s)
	}
	clear(p.streamWaits[len(kept):])
	p.streamWaits = kept
}

// wakeStreams wakes every stream waiter (a role change). Caller holds mu.
func (p *partition) wakeStreams() {
	for _, s := range p.streamWaits {
		close(s.wake)
		s.wake, s.wakeAt = nil, 0
	}
	clear(p.streamWaits)
	p.streamWaits = p.streamWaits[:0]
}
