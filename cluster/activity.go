package cluster

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/collocate/grid/internal/wire"
	"github.com/hashicorp/raft"
)

// How a new leader bounds the leases its predecessors granted, so that it
// need not wait a whole lease after its election before failing a member
// over (the death of the leader's node would otherwise cost an election
// plus a lease).
//
// A leader grants a lease only after raft confirmed its leadership with a
// quorum (VerifyLeader in HandleLease): another voter acknowledged it at
// about the time of the grant. A voter that voted for a newer leader no
// longer acknowledges the older one (raft refuses an older term, and a
// voter grants no vote while it still follows a leader). So every lease a
// predecessor granted began before the last time some other voter heard
// from a leader, or before that predecessor's own last grant if it is
// still reachable. On taking over, the new leader asks every voter
// (MsgActivity) for the later of the two; with answers from every voter
// but at most one (with at most 3 voters: the failed predecessor, whose
// grants the others' answers bound), the predecessors' leases lapse by the
// latest answer plus a lease plus activityMargin (polling delay, message
// flight; a poll that ran later than half the margin counts its contact
// for every leader, see observe). Without them (a voter did not answer in
// time, the voter set changed within the last lease) it waits a whole
// lease from its election.

const (
	activityPoll   = 10 * time.Millisecond
	activityMargin = 100 * time.Millisecond
	activityAsk    = 300 * time.Millisecond
	// renewGrace is how long a new leader gives live members to find it
	// and renew before their silence counts.
	renewGrace = 300 * time.Millisecond
)

// activity is this member's record of leaders it heard from and leases it
// granted.
type activity struct {
	mu          sync.Mutex
	leader      string               // raft id of the last leader other than this member
	heard       map[string]time.Time // raft id of a leader -> last contact from it
	granted     time.Time            // last lease granted while leading
	voters      string               // the voter set last seen
	votersSince time.Time            // when it was first seen
	polled      time.Time            // when raft's leader and contact were last read
}

// anyLeader keys, in activity.heard, contacts that may have come from any
// leader: raft keeps only the last contact, so a poll that ran late may
// have missed a leader's last contact before the next leader's.
const anyLeader = ""

// trackActivity polls raft for the current leader and its last contact,
// and for voter set changes, until the cluster closes.
func (c *Cluster) trackActivity() {
	defer c.wg.Done()
	t := time.NewTicker(activityPoll)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		// Leader first, then contact: a contact from a newer leader may be
		// attributed to the older one (later than the truth: safe), never
		// the reverse.
		read := time.Now()
		_, id := c.raft.LeaderWithID()
		last := c.raft.LastContact()
		voters := voterKey(c.raft) // through raft's loop: may take a while
		c.act.observe(read, time.Now(), string(id), c.raftID, last, voters, 2*c.cfg.LeaseDuration)
	}
}

// observe records one poll, which read raft's leader (empty if none) and
// its last contact at read, and the voter set by now; entries older than
// keep are dropped.
func (a *activity) observe(read, now time.Time, leader, self string, last time.Time, voters string, keep time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if leader != "" && leader != self {
		a.leader = leader
		if !last.IsZero() && last.After(a.heard[leader]) {
			a.heard[leader] = last
		}
	}
	// A poll later than half the margin may have missed the last contact
	// of a leader raft has since replaced (its contacts were then
	// attributed to the next one): count it for every leader.
	if !a.polled.IsZero() && read.Sub(a.polled) > activityMargin/2 && !last.IsZero() && last.After(a.heard[anyLeader]) {
		a.heard[anyLeader] = last
	}
	a.polled = read
	if voters != a.voters {
		a.voters, a.votersSince = voters, now
	}
	for id, t := range a.heard {
		if now.Sub(t) > keep {
			delete(a.heard, id) // bounds nothing any more
		}
	}
}

// voterKey names the current voter set.
func voterKey(r *raft.Raft) string {
	f := r.GetConfiguration()
	if f.Error() != nil {
		return ""
	}
	var ids []string
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			ids = append(ids, string(s.ID))
		}
	}
	slices.Sort(ids)
	return strings.Join(ids, ",")
}

// noteGrant records a lease granted while leading.
func (c *Cluster) noteGrant(now time.Time) {
	c.act.mu.Lock()
	c.act.granted = now
	c.act.mu.Unlock()
}

// lastActivity is the later of the last contact from a leader other than
// asker and this member's last grant; ok is false if the voter set changed
// within the last lease (an answer about one voter set says nothing of the
// acknowledgements of another).
func (c *Cluster) lastActivity(asker string, now time.Time) (at time.Time, ok bool) {
	c.act.mu.Lock()
	defer c.act.mu.Unlock()
	if now.Sub(c.act.votersSince) < c.cfg.LeaseDuration {
		return time.Time{}, false
	}
	at = c.act.granted
	for id, t := range c.act.heard {
		if id != asker && t.After(at) {
			at = t
		}
	}
	return at, true
}

// HandleActivity answers a new leader's MsgActivity.
func (c *Cluster) HandleActivity(req wire.ActivityRequest) wire.ActivityResponse {
	now := time.Now()
	at, ok := c.lastActivity(req.Asker, now)
	if !ok {
		return wire.ActivityResponse{}
	}
	if c.IsLeader() || c.granting.Load() > 0 {
		// A grant under way, or one whose quorum's confirmation is still
		// on its way here, is not in `granted` yet: say "now".
		at = now
	}
	return wire.ActivityResponse{Known: true, AgoNanos: int64(now.Sub(at))}
}

// predecessorsLapse returns when every lease granted by an earlier leader
// has lapsed, as far as the voters' answers bound it, or leadingSince plus
// a lease if they do not.
func (c *Cluster) predecessorsLapse(ctx context.Context, leadingSince time.Time) time.Time {
	full := leadingSince.Add(c.cfg.LeaseDuration)
	latest, ok := c.lastActivity(c.raftID, leadingSince)
	if !ok {
		return full
	}
	f := c.raft.GetConfiguration()
	if f.Error() != nil {
		return full
	}
	var others []raft.Server
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter && string(s.ID) != c.raftID {
			others = append(others, s)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, activityAsk)
	defer cancel()
	type answer struct {
		at time.Time
		ok bool
	}
	answers := make(chan answer, len(others))
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // the asks still running give up at once
	for _, s := range others {
		wg.Add(1)
		go func() {
			defer wg.Done()
			at, ok := c.askActivity(ctx, rpcOf(s.Address))
			answers <- answer{at, ok}
		}()
	}
	// All voters but one must answer: the one that does not (a failed
	// predecessor) granted only what the others acknowledged. Waiting for
	// it would only delay the failover of a voter that stopped.
	known, missing := 0, 0
	for known < len(others)-1 {
		a := <-answers
		if !a.ok {
			if missing++; missing > 1 {
				return full
			}
			continue
		}
		known++
		if a.at.After(latest) {
			latest = a.at
		}
	}
	if bound := latest.Add(c.cfg.LeaseDuration + activityMargin); bound.Before(full) {
		return bound
	}
	return full
}

// askActivity asks the voter at addr; the answer is converted to this
// member's clock as an upper bound (the voter answered before it arrived).
func (c *Cluster) askActivity(ctx context.Context, addr string) (time.Time, bool) {
	conn, err := c.cfg.Pool.Get(ctx, addr)
	if err != nil {
		return time.Time{}, false
	}
	var resp wire.ActivityResponse
	if err := conn.Call(ctx, wire.MsgActivity, &wire.ActivityRequest{Asker: c.raftID}, &resp); err != nil || !resp.Known {
		return time.Time{}, false
	}
	return time.Now().Add(-time.Duration(resp.AgoNanos)), true
}

// predecessor names the member that led before this member, if it is
// still a member.
func (c *Cluster) predecessor() string {
	c.act.mu.Lock()
	id := c.act.leader
	c.act.mu.Unlock()
	for _, m := range c.ms.Members() {
		if id != "" && m.RaftID == id {
			return m.Name
		}
	}
	return ""
}
