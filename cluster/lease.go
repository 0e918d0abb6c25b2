package cluster

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// Leases are the table's failure detector as well as its read fence.
//
// Every member renews its lease with the authority's leader every eighth of
// LeaseDuration (grid/lease.go); the leader confirms its leadership with a
// quorum before it grants (VerifyLeader), so a leader that was paused or cut
// off cannot hand out a lease after its successor took over. A member holds
// its lease for 90% of LeaseDuration from the moment it sent the renewal,
// by its own monotonic clock.
//
// The leader suspects a live member whose last renewal is LeaseDuration
// old: that member's lease has lapsed, so it serves nothing, and the table
// treats it as failed (its backups are promoted, it leaves every in-sync
// set). Membership's own failure detection (seconds) then only confirms.
// A member that renews again is live again and refills its copies. A false
// suspicion therefore costs a failover and a refill, and counts as a
// failure until the refill ends (like a crash, for the backups' budget),
// never more: promotion still waits for the lease, and writes still need
// every in-sync replica.
//
// What the leader cannot tell apart from a silent member is its own
// silence: after a pause of the leader process (a GC pause, CPU starvation),
// every renewal looks old. A watcher notes when the process resumed from a
// pause, and a member's silence counts only from then. Likewise a new
// leader counts silences only from when it took over, and members it saw
// first (a join) from when it first saw them.

// leaseBook is the leader's record of renewals.
type leaseBook struct {
	d            time.Duration
	mu           sync.Mutex
	renewed      map[string]time.Time // name -> leader's time of the last renewal
	seen         map[string]time.Time // name -> when first seen live without a renewal (zero: live at takeover)
	leadingSince time.Time            // when this member became leader
	youngUntil   time.Time            // when its predecessors' leases lapsed (activity.go)
	awakeSince   time.Time            // when this process last resumed from a pause
	lastTick     time.Time            // the pause watcher's last tick (zero: no watcher)
	suspected    map[string]bool      // members suspected at the last look (for logs)
	firstLook    bool                 // no look since this member became leader
	predecessor  string               // the member that led before (no grace to find this leader)
	granted      map[string]uint64    // incarnation id (or name, without one) -> highest table version of a lease this member granted it
}

func newLeaseBook(d time.Duration, now time.Time) *leaseBook {
	return &leaseBook{d: d, renewed: map[string]time.Time{}, seen: map[string]time.Time{}, suspected: map[string]bool{}, granted: map[string]uint64{}, leadingSince: now, youngUntil: now.Add(d), awakeSince: now}
}

// lead starts a leadership term at now: renewals granted by predecessors
// are unknown here, and may be valid until youngUntil. The renewals this
// member granted itself stay: raft made it leader before its run loop
// calls lead (barrier, asking the voters), and what it granted meanwhile,
// or in an earlier term, are leases like any other (suspects prunes them).
func (b *leaseBook) lead(now, youngUntil time.Time, predecessor string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.leadingSince = now
	b.youngUntil = youngUntil
	b.predecessor = predecessor
	b.firstLook = true
	clear(b.seen)
	b.suspected = nil
}

// renew records a renewal by name and incarnation id, bound to table
// version.
func (b *leaseBook) renew(name, id string, now time.Time, version uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.renewed[name] = now
	key := id
	if key == "" {
		key = name
	}
	if version > b.granted[key] {
		b.granted[key] = version
	}
}

// lastRenewal is this leader's time of name's last renewal (zero: none).
func (b *leaseBook) lastRenewal(name string) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.renewed[name]
}

// grants returns a copy of the granted versions of the live incarnations
// (StepInput.Granted) and forgets the others.
func (b *leaseBook) grants(live []wire.Member) map[string]uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	keep := make(map[string]bool, 2*len(live))
	for _, m := range live {
		keep[m.ID], keep[m.Name] = true, true
	}
	maps.DeleteFunc(b.granted, func(k string, _ uint64) bool { return !keep[k] })
	return maps.Clone(b.granted)
}

// resumed records that the process ran again after a pause.
func (b *leaseBook) resumed(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.awakeSince = now
}

// tick records the pause watcher's tick.
func (b *leaseBook) tick(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lastTick = now
}

// checkPause: a step that runs right after a pause, before the watcher's
// next tick noticed it, must not blame the members either. Caller holds mu.
func (b *leaseBook) checkPause(now time.Time) {
	if !b.lastTick.IsZero() && now.Sub(b.lastTick) > pauseGap && now.After(b.awakeSince) {
		b.awakeSince = now
	}
}

// leased returns the members whose lease may still be valid: the leader
// must not promote their backups yet. primaries lists the table's primaries
// and former primaries: while the leader is younger than a lease, any of
// them may hold one granted by its predecessor.
func (b *leaseBook) leased(now time.Time, primaries []string) map[string]bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]bool{}
	young := now.Before(b.youngUntil)
	for name, at := range b.renewed {
		if now.Sub(at) < b.d {
			out[name] = true
		}
	}
	if young {
		for _, n := range primaries {
			out[n] = true
		}
	}
	return out
}

// suspects returns the live members (self excluded) whose silence is a
// whole lease long, when the next live member would become suspect if it
// stays silent (zero if none can), and the members whose suspicion began or
// ended since the last call.
func (b *leaseBook) suspects(now time.Time, live []string, self string) (out map[string]bool, next time.Time, began, ended []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.checkPause(now)
	if b.firstLook {
		// Members live when this leader took over are no joiners: their
		// silence counts from leaderBase, not from first sight.
		b.firstLook = false
		for _, n := range live {
			b.seen[n] = time.Time{}
		}
	}
	isLive := make(map[string]bool, len(live))
	for _, n := range live {
		isLive[n] = true
		if n == self {
			continue
		}
		heard := b.lastHeard(n, now)
		if now.Sub(heard) >= b.d {
			if out == nil {
				out = map[string]bool{}
			}
			out[n] = true
			continue
		}
		if due := heard.Add(b.d); next.IsZero() || due.Before(next) {
			next = due
		}
	}
	for n := range b.seen {
		if !isLive[n] {
			delete(b.seen, n)
		}
	}
	for n, at := range b.renewed {
		if !isLive[n] && now.Sub(at) >= b.d {
			delete(b.renewed, n)
		}
	}
	for n := range out {
		if !b.suspected[n] {
			began = append(began, n)
		}
	}
	for n := range b.suspected {
		if !out[n] && isLive[n] { // not one that membership now calls failed
			ended = append(ended, n)
		}
	}
	b.suspected = out
	return out, next, began, ended
}

// lastHeard is the latest of: name's last renewal, when this leader first
// saw it, leaderBase, when this process resumed.
// Caller holds mu.
func (b *leaseBook) lastHeard(name string, now time.Time) time.Time {
	at, ok := b.renewed[name]
	if !ok {
		if at, ok = b.seen[name]; !ok {
			at = now
			b.seen[name] = now
		}
	}
	for _, t := range []time.Time{b.leaderBase(name), b.awakeSince} {
		if t.After(at) {
			at = t
		}
	}
	return at
}

// leaderBase is when a member that never renewed with this leader counts
// as last heard: its predecessors' leases lapsed a lease later, and live
// members had renewGrace to find this leader, except the predecessor
// itself (it stopped leading by not answering: it is failed over as soon
// as its leases lapsed). Caller holds mu.
func (b *leaseBook) leaderBase(name string) time.Time {
	base := b.youngUntil.Add(-b.d)
	if name == b.predecessor {
		return base
	}
	if g := b.leadingSince.Add(renewGrace - b.d); g.After(base) {
		base = g
	}
	return base
}

// Pause watching: the watcher ticks every pauseTick; a tick later than
// pauseGap means the process did not run for a while.
const (
	pauseTick = 50 * time.Millisecond
	pauseGap  = 200 * time.Millisecond
)

// watchPauses notes in the lease book when this process resumes from a
// pause, until the cluster closes.
func (c *Cluster) watchPauses() {
	defer c.wg.Done()
	t := time.NewTicker(pauseTick)
	defer t.Stop()
	last := time.Now()
	c.leases.tick(last)
	for {
		select {
		case <-c.done:
			return
		case now := <-t.C:
			c.leases.tick(now)
			if now.Sub(last) > pauseGap {
				c.leases.resumed(now)
				c.log.Info("process resumed after a pause; silences count from now", "paused", now.Sub(last).Round(time.Millisecond))
			}
			last = now
		}
	}
}

// LeaseDuration is the read lease length.
func (c *Cluster) LeaseDuration() time.Duration { return c.cfg.LeaseDuration }

// HandleLease renews node's lease if this member leads the authority (a
// quorum confirms it) and membership sees node alive. It returns the table
// version the lease is bound to: the holder may serve only once it
// installed that version.
func (c *Cluster) HandleLease(node, id string) (uint64, time.Duration, error) {
	if !c.IsLeader() {
		return 0, 0, fmt.Errorf("%w: not the table authority leader", api.ErrUnavailable)
	}
	// Not during a table step: the step either sees this grant, or the
	// grant is bound to the table the step commits (grantMu).
	c.grantMu.RLock()
	defer c.grantMu.RUnlock()
	c.granting.Add(1) // MsgActivity answers "now" meanwhile
	defer c.granting.Add(-1)
	select {
	case <-c.done:
		// Raft may be shut down: it would never answer VerifyLeader.
		return 0, 0, fmt.Errorf("%w: closing", api.ErrUnavailable)
	default:
	}
	alive := false
	for _, m := range c.liveMembers() {
		// The incarnation membership knows: a process restarted under
		// the same name renews only once membership shows its id, or it
		// would keep its dead predecessor looking alive.
		if m.Name == node && (id == "" || m.RaftID == id) {
			alive = true
		}
	}
	if !alive {
		return 0, 0, fmt.Errorf("%w: %s (%s) is not a live member", api.ErrUnavailable, node, id)
	}
	if err := c.raft.VerifyLeader().Error(); err != nil {
		return 0, 0, fmt.Errorf("%w: leadership not confirmed by a quorum: %v", api.ErrUnavailable, err)
	}
	if c.readyTerm.Load() != c.raft.CurrentTerm() {
		// Tables its predecessors committed may not be applied here yet:
		// a lease bound to this member's table could predate a failover.
		return 0, 0, fmt.Errorf("%w: the new table authority leader is still applying earlier tables", api.ErrUnavailable)
	}
	now := time.Now()
	var version uint64
	if t := c.Table(); t != nil {
		version = t.Version
	}
	c.leases.renew(node, id, now, version)
	c.noteGrant(now)
	if awaitsSeat(c.Table(), node, version) {
		select {
		case c.seatWake <- struct{}{}: // the step confirms the seat at once
		default:
		}
	}
	return version, c.cfg.LeaseDuration, nil
}

// awaitsSeat: t names node primary of a partition whose Seat this grant
// reaches (spare.go): the next step confirms it.
func awaitsSeat(t *wire.Table, node string, version uint64) bool {
	if t == nil {
		return false
	}
	for i := range t.Partitions {
		if p := &t.Partitions[i]; p.Seat != 0 && p.Primary == node && version >= p.Seat {
			return true
		}
	}
	return false
}

// RenewLease renews this member's lease with the leader.
func (c *Cluster) RenewLease(ctx context.Context) (uint64, time.Duration, error) {
	addr, id := c.raft.LeaderWithID()
	if id == "" {
		return 0, 0, fmt.Errorf("%w: no table authority leader", api.ErrUnavailable)
	}
	if string(id) == c.raftID {
		return c.HandleLease(c.cfg.Name, c.raftID)
	}
	conn, err := c.cfg.Pool.Get(ctx, rpcOf(addr))
	if err != nil {
		return 0, 0, err
	}
	var resp wire.LeaseResponse
	if err := conn.Call(ctx, wire.MsgLease, &wire.LeaseRequest{Node: c.cfg.Name, ID: c.raftID}, &resp); err != nil {
		return 0, 0, err
	}
	return resp.Version, time.Duration(resp.Duration), nil
}

// leased returns the members whose lease may still be valid: the leader
// must not promote their backups yet.
func (c *Cluster) leased(now time.Time) map[string]bool {
	var primaries []string
	if t := c.Table(); t != nil {
		for _, p := range t.Partitions {
			primaries = append(primaries, p.Primary)
			if p.Former != "" {
				primaries = append(primaries, p.Former)
			}
		}
	}
	return c.leases.leased(now, primaries)
}
