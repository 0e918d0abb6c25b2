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

// Lease renewal. The loop starts a renewal every eighth of the lease (50 ms
// after one failed), each on its own goroutine with half a lease to
// answer, at most maxRenewals at once: a slow renewal (a loaded leader
// confirming its leadership, a leader that stopped answering) neither
// delays the next one, which may reach a new leader, nor counts as silence
// while a later one gets through. The leader fails over a member that has
// not renewed for a whole lease (cluster/lease.go), so a renewal path that
// is merely slow must not look silent.
const maxRenewals = 3

func (n *Node) leaseLoop() {
	defer n.wg.Done()
	dur := n.cluster.LeaseDuration()
	t := time.NewTimer(0)
	defer t.Stop()
	results := make(chan bool, maxRenewals)
	inflight := 0
	for {
		select {
		case <-n.done:
			return // attempts under way end with n.ctx; n.wg waits for them
		case <-n.leaseKick:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
		case ok := <-results:
			inflight--
			if !ok {
				t.Reset(50 * time.Millisecond)
			}
			continue
		case <-t.C:
		}
		t.Reset(dur / 8)
		if n.leaseStalled.Load() || inflight >= maxRenewals {
			continue
		}
		inflight++
		n.wg.Add(1)
		go n.renewOnce(dur, results)
	}
}

// renewOnce is one renewal attempt; it reports success on results (which
// has room for every attempt under way).
func (n *Node) renewOnce(dur time.Duration, results chan<- bool) {
	defer n.wg.Done()
	sent := time.Since(n.base)
	ctx, cancel := context.WithTimeout(n.ctx, dur/2)
	version, d, err := n.cluster.RenewLease(ctx)
	cancel()
	if err != nil {
		n.log.Debug("lease renewal failed", "err", err)
		results <- false
		return
	}
	n.leaseMu.Lock()
	if sent > n.leaseSent {
		// A later-sent renewal answered first: keep its lease.
		n.leaseSent = sent
		n.leaseVersion.Store(version)
		n.leaseUntil.Store((sent + d*9/10).Nanoseconds())
	}
	n.leaseMu.Unlock()
	results <- true
}

// kickLease starts a renewal now: a new table gave this node a primary
// whose commits wait until the authority saw a renewal bound to it.
func (n *Node) kickLease() {
	select {
	case n.leaseKick <- struct{}{}:
	default:
	}
}
