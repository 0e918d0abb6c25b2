package router

import "sync"

// seqTracker numbers a router's mutations for at-most-once retries and
// tracks the lowest sequence still awaiting an answer.
type seqTracker struct {
	mu       sync.Mutex
	next     uint64
	low      uint64
	inflight map[uint64]struct{}
}

func (t *seqTracker) init() { t.inflight = map[uint64]struct{}{} }

// begin returns a new sequence number and the current low watermark.
func (t *seqTracker) begin() (seq, low uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	seq = t.next
	if len(t.inflight) == 0 {
		t.low = seq
	}
	t.inflight[seq] = struct{}{}
	return seq, t.low
}

// end marks seq answered (or abandoned).
func (t *seqTracker) end(seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.inflight, seq)
	if seq != t.low {
		return
	}
	t.low = t.next + 1
	for s := range t.inflight {
		if s < t.low {
			t.low = s
		}
	}
}
