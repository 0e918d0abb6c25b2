package cluster

import (
	"time"

	"github.com/hashicorp/raft"
)

// Timing of failure detection, per profile (docs/operations.md has the
// trade-offs and the knobs for slower networks).
//
// A member that stops (killed, paused, cut off) stops renewing its lease;
// one lease after its last renewal the leader fails it over (lease.go).
// If the stopped member led the raft group, the others elect a new leader
// after one to three heartbeat timeouts (raft's randomised timer), which
// fails it over once its grants lapsed (activity.go), about a lease after
// anyone last heard from it. Measured with the defaults (docs/benchmarks.md,
// "Failover"): 1.0-1.4 s for a member, up to 2 s for the leader. Raft's
// leader lease (how long the leader keeps leading without hearing from a
// quorum) equals the heartbeat timeout, so that a 300 ms pause of the
// leader does not depose it (measured: no election under 300 ms pauses
// every second).
const (
	lanLease            = time.Second
	lanHeartbeatTimeout = 400 * time.Millisecond
	// lanCommitTimeout is raft's default: every commit timeout the leader
	// sends each follower an AppendEntries even when idle (at 5 ms that
	// tripled an idle node's CPU). Followers learn a table's commit at once
	// anyway: the authority appends a barrier right after each table, and
	// its AppendEntries carries the new commit index.
	lanCommitTimeout = 50 * time.Millisecond
)

// defaultLease is the lease length of a profile.
func defaultLease(Profile) time.Duration { return lanLease }

// setRaftTiming sets raft's failure detection for a profile. Both profiles
// share it; ProfileTest differs in membership's gossip timing only.
func setRaftTiming(rc *raft.Config, _ Profile) {
	rc.HeartbeatTimeout = lanHeartbeatTimeout
	rc.ElectionTimeout = lanHeartbeatTimeout
	rc.LeaderLeaseTimeout = lanHeartbeatTimeout
	rc.CommitTimeout = lanCommitTimeout
}
