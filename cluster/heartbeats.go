package cluster

import (
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Raft heartbeats as a second opinion on voters.
//
// Removing a voter that membership declared failed is safe only if the
// voters left still have a live majority, and membership's view can lag
// behind a kill (chaos: a voter paused, another killed 0.5 s later; the
// leader removed the paused one while membership still showed the killed
// one alive, raft applied the new configuration {leader, dead} at once, and
// the table froze for a minute). So a voter the raft leader currently fails
// to heartbeat does not count as live for that check, whatever membership
// says.

// failingFor is how long a failed heartbeat counts without a newer one
// (raft retries failed heartbeats with a backoff of at most a few seconds).
const failingFor = 5 * time.Second

// heartbeats records the followers whose heartbeats fail at this leader.
type heartbeats struct {
	mu      sync.Mutex
	failing map[string]time.Time // raft server id -> last failed heartbeat seen
}

func (h *heartbeats) failed(id string, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failing[id] = now
}

func (h *heartbeats) resumed(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.failing, id)
}

// reachable reports whether the leader's heartbeats to id are not failing.
func (h *heartbeats) reachable(id string, now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	at, ok := h.failing[id]
	if ok && now.Sub(at) > failingFor {
		delete(h.failing, id)
		return true
	}
	return !ok
}

// watchHeartbeats feeds raft's heartbeat observations into c.beats until
// the cluster closes.
func (c *Cluster) watchHeartbeats() {
	defer c.wg.Done()
	ch := make(chan raft.Observation, 64)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation:
			return true
		}
		return false
	})
	c.raft.RegisterObserver(obs)
	defer c.raft.DeregisterObserver(obs)
	for {
		select {
		case <-c.done:
			return
		case o := <-ch:
			switch d := o.Data.(type) {
			case raft.FailedHeartbeatObservation:
				c.beats.failed(string(d.PeerID), time.Now())
			case raft.ResumedHeartbeatObservation:
				c.beats.resumed(string(d.PeerID))
			}
		}
	}
}

// reachableLive is live less the voters whose heartbeats fail here, and
// less those that have not renewed a lease with this leader lately.
func (c *Cluster) reachableLive(live map[string]MemberInfo) map[string]MemberInfo {
	now := time.Now()
	return confirmedLive(live, now, func(id string) bool { return c.beats.reachable(id, now) },
		func(name string) time.Time { return c.leases.lastRenewal(name) }, c.cfg.LeaseDuration/2)
}

// confirmedLive keeps the members of live (by raft id) that count as live
// when a voter removal must leave a live majority: raft's heartbeats to
// them do not fail, and they renewed a lease at this leader within window.
//
// The absence of failed heartbeats alone is no evidence: a leader only a
// few milliseconds old has not yet tried to reach a voter that died with
// its predecessor. CI saw exactly that: the authority leader was killed, a
// new leader took over while membership still showed the killed one alive
// and did not yet show a third voter (its gossip view lagged), removed the
// third voter at once, and raft applied {new leader, killed leader}: no
// live majority, no election could be won, the table froze for good. A
// member renews its lease every eighth of a lease, so a live voter proves
// itself within a few renewals of a new leader taking over.
func confirmedLive(live map[string]MemberInfo, now time.Time, reachable func(id string) bool, lastRenewal func(name string) time.Time, window time.Duration) map[string]MemberInfo {
	out := make(map[string]MemberInfo, len(live))
	for id, m := range live {
		if !reachable(id) {
			continue
		}
		if at := lastRenewal(m.Name); at.IsZero() || now.Sub(at) > window {
			continue
		}
		out[id] = m
	}
	return out
}
