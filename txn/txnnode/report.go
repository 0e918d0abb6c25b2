package txnnode

import (
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/txn/internal/proto"
)

// reportHeld bounds the prepared records a Report names per partition.
const reportHeld = 8

// Report is what the partitions a member leads hold of transactions, read
// from its own state (gridnode serves it as GET /v1/transactions). After
// every transaction ended and recovery ran, Locks and Prepared are 0;
// Decisions stay until collected (Config.Keep past their deadline), and
// Tombstones until swept (10 s past their deadline, by the next collection
// round: every Keep/4).
type Report struct {
	Led        int `json:"led"` // partitions this member leads
	Locks      int `json:"locks"`
	Prepared   int `json:"prepared"`
	Decisions  int `json:"decisions"`
	Tombstones int `json:"tombstones"`
	// Partitions are the led partitions holding a lock, a prepared record
	// or a decision.
	Partitions []PartitionReport `json:"partitions"`
	Recovery   Stats             `json:"recovery"`
}

// PartitionReport is one led partition's transaction state.
type PartitionReport struct {
	Partition  int `json:"partition"`
	Locks      int `json:"locks"`
	Prepared   int `json:"prepared"`
	Decisions  int `json:"decisions"`
	Tombstones int `json:"tombstones"`
	// Held are the first prepared records: who holds the locks, and for
	// how long already past their deadline.
	Held []HeldReport `json:"held,omitempty"`
}

// HeldReport is a prepared participant.
type HeldReport struct {
	ID          string  `json:"id"`
	Coordinator int     `json:"coordinator"`
	Keys        int     `json:"keys"`
	PastMs      float64 `json:"past_deadline_ms"` // negative: before its deadline
}

// Report reads the transaction state of the partitions this member
// leads.
func (s *Service) Report() Report {
	r := Report{Partitions: []PartitionReport{}, Recovery: s.Stats()}
	now := time.Now().UnixNano()
	for part := range s.n.Partitions() {
		if !s.n.Leads(part) {
			continue
		}
		pr, ok := partitionReport(s.n, part, now)
		if !ok {
			continue // no longer led
		}
		r.Led++
		r.Locks += pr.Locks
		r.Prepared += pr.Prepared
		r.Decisions += pr.Decisions
		r.Tombstones += pr.Tombstones
		if pr.Locks+pr.Prepared+pr.Decisions > 0 {
			r.Partitions = append(r.Partitions, pr)
		}
	}
	return r
}

// partitionReport reads partition part's locks and records; false if this
// member does not lead it.
func partitionReport(n *grid.Node, part int, now int64) (PartitionReport, bool) {
	pr := PartitionReport{Partition: part}
	locks, err := n.LocalEntries(part, grid.LockMap, "", 0)
	if err != nil {
		return pr, false
	}
	pr.Locks = len(locks)
	prepared, err := n.LocalEntries(part, proto.MapPrepared, "", 0)
	if err != nil {
		return pr, false
	}
	pr.Prepared = len(prepared)
	for _, e := range prepared {
		var rec proto.Prepared
		if len(pr.Held) < reportHeld && proto.Decode(e.Value, &rec) == nil {
			pr.Held = append(pr.Held, HeldReport{ID: rec.H.ID, Coordinator: rec.H.Coord, Keys: len(rec.Locked),
				PastMs: float64((now-rec.H.Deadline)/1e5) / 10})
		}
	}
	decisions, err := n.LocalEntries(part, proto.MapDecision, "", 0)
	if err != nil {
		return pr, false
	}
	tombs, err := n.LocalEntries(part, proto.MapTomb, "", 0)
	if err != nil {
		return pr, false
	}
	pr.Decisions, pr.Tombstones = len(decisions), len(tombs)
	return pr, true
}
