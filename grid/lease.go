package grid

import (
	"context"
	"fmt"
	"time"

	"github.com/collocate/grid/internal/api"
)

// Read leases. A node serves requests for its primaries only while it holds
// a lease from the authority's leader, renewed once per node (not per
// partition). The lease runs from the moment the renewal was sent, by this
// process's monotonic clock, and ends at 90% of its duration, so it lapses
// here before the leader considers it lapsed. It counts only once the node
// installed the table version the leader had when it granted it: a process
// that wakes up from a pause cannot serve from the table it slept with.
// The leader promotes a failed primary's backup only after that primary's
// lease must have lapsed (cluster.StepLeased).

// leaseValid reports whether this node may serve as a primary now.
func (n *Node) leaseValid() bool {
	if time.Since(n.base).Nanoseconds() >= n.leaseUntil.Load() {
		return false
	}
	t := n.table.Load()
	return t != nil && t.Version >= n.leaseVersion.Load()
}

func (n *Node) checkLease() error {
	if !n.leaseValid() {
		return fmt.Errorf("%w: %s holds no valid read lease", api.ErrUnavailable, n.name)
	}
	return nil
}

// leaseLoop renews the lease every eighth of its duration (a renewal that
// failed is retried after 50 ms), so that a leader election, which stops
// renewals for up to two raft heartbeat timeouts, rarely outlasts a lease.
// The leader counts a member that has not renewed for a whole lease as
// failed (cluster/lease.go).
func (n *Node) leaseLoop() {
	defer n.wg.Done()
	dur := n.cluster.LeaseDuration()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-n.done:
			return
		case <-t.C:
		}
		if n.leaseStalled.Load() {
			t.Reset(dur / 8)
			continue
		}
		sent := time.Since(n.base)
		// A renewal that takes an eighth of a lease has failed: retrying
		// soon finds a new leader sooner (a leader that stopped answers
		// nothing).
		ctx, cancel := context.WithTimeout(n.ctx, dur/8)
		version, d, err := n.cluster.RenewLease(ctx)
		cancel()
		next := dur / 8
		if err != nil {
			n.log.Debug("lease renewal failed", "err", err)
			next = 50 * time.Millisecond
		} else {
			n.leaseVersion.Store(version)
			n.leaseUntil.Store((sent + d*9/10).Nanoseconds())
		}
		t.Reset(next)
	}
}
