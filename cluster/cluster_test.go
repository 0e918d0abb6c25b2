package cluster

import (
	"context"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type member struct {
	c    *Cluster
	srv  *transport.Server
	pool *transport.Pool
	mu   sync.Mutex
	seen []uint64
	done chan struct{}
	wg   sync.WaitGroup
	// silent stops lease renewals, as a paused or cut-off process.
	silent atomic.Bool
}

func (m *member) stop() {
	close(m.done)
	m.wg.Wait()
	_ = m.c.Close()
	_ = m.srv.Close()
	m.pool.Close()
}

// synced answers MsgSynced so the authority can move pending replicas.
type handler struct{ m *member }

func (h handler) HandleFrame(c *transport.Conn, f wire.Frame) {
	if f.Type == wire.MsgActivity {
		var req wire.ActivityRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			c.ReplyError(f.Type, f.ID, err)
			return
		}
		resp := h.m.c.HandleActivity(req)
		c.Reply(f.Type, f.ID, &resp)
		return
	}
	if f.Type == wire.MsgLease {
		var req wire.LeaseRequest
		if err := wire.Decode(f.Body, &req); err != nil {
			c.ReplyError(f.Type, f.ID, err)
			return
		}
		go func() { // VerifyLeader waits for a quorum: not on the reader
			v, d, err := h.m.c.HandleLease(req.Node, req.ID)
			if err != nil {
				c.ReplyError(f.Type, f.ID, err)
				return
			}
			c.Reply(f.Type, f.ID, &wire.LeaseResponse{Version: v, Duration: int64(d)})
		}()
		return
	}
	var r wire.SyncedReport
	if err := wire.Decode(f.Body, &r); err != nil {
		c.ReplyError(f.Type, f.ID, err)
		return
	}
	if err := h.m.c.HandleSynced(r); err != nil {
		c.ReplyError(f.Type, f.ID, err)
		return
	}
	c.Reply(f.Type, f.ID, &wire.Ack{})
}

func startMember(t *testing.T, net *FakeNetwork, name string, bootstrap bool) *member {
	t.Helper()
	m := &member{}
	srv, err := transport.Listen("127.0.0.1:0", handler{m}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.srv, m.pool = srv, transport.NewPool(0, nil)
	cfg := DefaultConfig()
	cfg.Name = name
	cfg.RPCAddr = srv.Addr().String()
	cfg.Profile = ProfileTest
	cfg.Partitions = 31
	cfg.RaftLayer = srv.RaftLayer(nil)
	cfg.Pool = m.pool
	cfg.OnTable = func(t *wire.Table) {
		m.mu.Lock()
		m.seen = append(m.seen, t.Version)
		m.mu.Unlock()
	}
	cfg.NewMembership = func(meta MemberInfo) (Membership, error) { return net.Add(meta), nil }
	if !bootstrap {
		cfg.Seeds = []string{"fake"}
	}
	c, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.c = c
	m.done = make(chan struct{})
	m.wg.Add(1)
	go m.renewLeases()
	return m
}

// renewLeases renews the member's lease as a grid node does: the leader
// fails over members that stop renewing.
func (m *member) renewLeases() {
	defer m.wg.Done()
	t := time.NewTicker(m.c.LeaseDuration() / 8)
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-t.C:
			if m.silent.Load() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), m.c.LeaseDuration()/4)
			_, _, _ = m.c.RenewLease(ctx)
			cancel()
		}
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAuthorityVotersAndLeaderFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	net := NewFakeNetwork()
	ms := []*member{startMember(t, net, "a", true)}
	for _, n := range []string{"b", "c", "d"} {
		ms = append(ms, startMember(t, net, n, false))
	}
	defer func() {
		for _, m := range ms {
			if m != nil {
				m.stop()
			}
		}
	}()
	names := []string{"a", "b", "c", "d"}
	// Every member learns the table; with nothing to fill, pending replicas
	// are reported by nobody, so we report them as a primary would.
	waitFor(t, 20*time.Second, "all members to hold a table naming 4 members", func() bool {
		for _, m := range ms {
			tab := m.c.Table()
			if tab == nil || len(tab.Members) != 4 {
				return false
			}
		}
		return true
	})
	leader := func() *member {
		for _, m := range ms {
			if m != nil && m.c.IsLeader() {
				return m
			}
		}
		return nil
	}
	fill := func() {
		l := leader()
		if l == nil {
			return
		}
		tab := l.c.Table()
		for p := range tab.Partitions {
			for _, r := range reportsFor(tab, p) {
				_ = l.c.HandleSynced(r)
			}
		}
	}
	waitFor(t, 20*time.Second, "converged table", func() bool {
		fill()
		l := leader()
		return l != nil && Converged(l.c.Table(), names, 1)
	})
	l := leader()
	if v := l.c.Voters(); len(v) != MaxVoters {
		t.Fatalf("voters %v, want %d", v, MaxVoters)
	}
	// Versions arrive in order on every member.
	for _, m := range ms {
		m.mu.Lock()
		if !slices.IsSorted(m.seen) {
			t.Fatalf("versions out of order: %v", m.seen)
		}
		m.mu.Unlock()
	}
	// Kill the leader: a new leader removes it and keeps 3 voters.
	var dead string
	for i, m := range ms {
		if m == l {
			dead = m.c.Name()
			net.Fail(dead)
			m.stop()
			ms[i] = nil
		}
	}
	alive := slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == dead })
	waitFor(t, 20*time.Second, "a new leader with a table without "+dead, func() bool {
		fill()
		nl := leader()
		if nl == nil {
			return false
		}
		tab := nl.c.Table()
		return Converged(tab, alive, 1) && len(nl.c.Voters()) == MaxVoters && !slices.ContainsFunc(nl.c.Voters(), func(id string) bool {
			return len(id) > len(dead) && id[:len(dead)+1] == dead+"-"
		})
	})
	tab := leader().c.Table()
	for p, part := range tab.Partitions {
		if part.Primary == dead || slices.Contains(part.Backups, dead) {
			t.Fatalf("partition %d still on dead member: %+v", p, part)
		}
	}
	t.Logf("final table version %d, voters %v", tab.Version, leader().c.Voters())
}

// The leader removes a voter membership does not see only if the voters
// left keep a live majority: with one voter dead, removing a second one
// that membership wrongly missed would leave a dead majority (seen under
// load: the table froze after the authority leader was killed).
func TestVoterRemovalKeepsLiveMajority(t *testing.T) {
	servers := []raft.Server{
		{ID: "a", Suffrage: raft.Voter}, {ID: "b", Suffrage: raft.Voter}, {ID: "c", Suffrage: raft.Voter},
		{ID: "d", Suffrage: raft.Nonvoter},
	}
	live := map[string]MemberInfo{"b": {}, "d": {}} // a dead, c not seen
	if keepsMajority(servers, "c", live, "b") {
		t.Fatal("removing c leaves {a dead, b}: no live majority, must keep c")
	}
	if !keepsMajority(servers, "a", map[string]MemberInfo{"b": {}, "c": {}}, "b") {
		t.Fatal("removing dead a leaves {b, c} alive: allowed")
	}
	if keepsMajority(servers, "a", live, "b") {
		t.Fatal("removing a leaves {b, c unseen}: one of two is not a majority")
	}
}

// A voter counts as live for a removal only with positive evidence: a
// recent lease renewal at this leader. A fresh leader that has not yet
// failed a heartbeat to a voter killed with its predecessor must not count
// it (CI: the table froze for good after TestKillAuthorityLeader's new
// leader removed a live voter its membership had not seen yet).
func TestConfirmedLiveNeedsARecentRenewal(t *testing.T) {
	now := time.Now()
	live := map[string]MemberInfo{"a-1": {Name: "a"}, "b-1": {Name: "b"}, "c-1": {Name: "c"}, "d-1": {Name: "d"}}
	renewed := map[string]time.Time{"b": now.Add(-100 * time.Millisecond), "c": now.Add(-2 * time.Second), "d": now.Add(-50 * time.Millisecond)}
	unreachable := map[string]bool{"d-1": true}
	got := confirmedLive(live, now, func(id string) bool { return !unreachable[id] },
		func(name string) time.Time { return renewed[name] }, 500*time.Millisecond)
	if len(got) != 1 || got["b-1"].Name != "b" {
		t.Fatalf("confirmed %v: want only b (a never renewed, c renewed too long ago, d's heartbeats fail)", got)
	}
	// The frozen configuration of the CI run: voters {a killed with its
	// predecessor's leadership, b leading, c live but missing from b's
	// membership}. Without a renewal from a, removing c must be refused.
	servers := []raft.Server{{ID: "a-1", Suffrage: raft.Voter}, {ID: "b-1", Suffrage: raft.Voter}, {ID: "c-1", Suffrage: raft.Voter}}
	view := map[string]MemberInfo{"a-1": {Name: "a"}, "b-1": {Name: "b"}}
	confirmed := confirmedLive(view, now, func(string) bool { return true },
		func(name string) time.Time { return renewed[name] }, 500*time.Millisecond)
	if keepsMajority(servers, "c-1", confirmed, "b-1") {
		t.Fatal("removing c leaves {a unconfirmed, b}: must keep c")
	}
}

// A drain belongs to the incarnation that asked: a member restarted under
// the same name right after a graceful leave is not left out of the table
// (found by the chaos suite: the restarted member was never used again).
func TestDrainBelongsToItsIncarnation(t *testing.T) {
	c := &Cluster{draining: map[string]string{"b": "b-1"}}
	if !c.drainingMember(MemberInfo{Name: "b", RaftID: "b-1"}) {
		t.Fatal("the incarnation that asked is not draining")
	}
	if c.drainingMember(MemberInfo{Name: "b", RaftID: "b-2"}) {
		t.Fatal("a new incarnation of b inherited its predecessor's drain")
	}
	if c.drainingMember(MemberInfo{Name: "a", RaftID: "a-1"}) {
		t.Fatal("a member that never asked is draining")
	}
}

// A member that membership reports "leaving" still runs (serf may keep a
// member that left and came back as leaving on some nodes): it stays live
// for the table, so its replicas are not dropped while it holds them.
func TestLeavingMemberCountsAsLive(t *testing.T) {
	net := NewFakeNetwork()
	self := net.Add(MemberInfo{Name: "a", RPC: "a:1", RaftID: "a-1"})
	net.Add(MemberInfo{Name: "b", RPC: "b:1", RaftID: "b-1"})
	net.Add(MemberInfo{Name: "c", RPC: "c:1", RaftID: "c-1"})
	net.SetStatus("b", StatusLeaving)
	net.Fail("c")
	c := &Cluster{ms: self}
	var names []string
	for _, m := range c.liveMembers() {
		names = append(names, m.Name)
	}
	if !slices.Equal(names, []string{"a", "b"}) {
		t.Fatalf("live members %v, want [a b]", names)
	}
}

// A name whose old incarnation left is gone only if the table still knows
// that incarnation: a restart after the leave that another leader already
// put in the table is failed (not yet seen here), not gone.
func TestLeftIncarnationIsGoneOnlyIfTheTableKnowsIt(t *testing.T) {
	ms := []MemberInfo{{Name: "a", RaftID: "a-1", Status: StatusLeft}, {Name: "b", RaftID: "b-1", Status: StatusLeft}, {Name: "c", RaftID: "c-1", Status: StatusLeft}}
	tab := &wire.Table{Members: []wire.Member{{Name: "a", ID: "a-1"}, {Name: "b", ID: "b-2"}}}
	gone := leftIncarnations(ms, map[string]bool{}, tab)
	if !gone["a"] {
		t.Fatal("a left and the table knows that incarnation: gone")
	}
	if gone["b"] {
		t.Fatal("b's table incarnation b-2 is not the one that left: not gone")
	}
	if !gone["c"] {
		t.Fatal("c left and the table no longer lists it: gone")
	}
	if g := leftIncarnations(ms, map[string]bool{"a": true}, tab); g["a"] {
		t.Fatal("a live name is never gone")
	}
}

// A lease granted while the leader commits the table that fails its holder
// over (a member silent for a lease that renews again just then) must be
// bound to that table: bound to the one before, the holder would serve as
// primary from it while its promoted backup takes writes.
func TestLeaseGrantedDuringFailoverIsBoundToIt(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	net := NewFakeNetwork()
	names := []string{"a", "b", "c"}
	ms := []*member{startMember(t, net, "a", true)}
	for _, n := range names[1:] {
		ms = append(ms, startMember(t, net, n, false))
	}
	defer func() {
		for _, m := range ms {
			m.stop()
		}
	}()
	var leader, victim *member
	waitFor(t, 20*time.Second, "a table with every member as a primary", func() bool {
		leader, victim = nil, nil
		for _, m := range ms {
			if m.c.IsLeader() {
				leader = m
			}
		}
		if leader == nil {
			return false
		}
		tab := leader.c.Table()
		if tab == nil {
			return false
		}
		for p := range tab.Partitions {
			for _, r := range reportsFor(tab, p) {
				_ = leader.c.HandleSynced(r)
			}
		}
		if !Converged(tab, names, 1) {
			return false
		}
		for _, m := range ms {
			if m != leader && slices.ContainsFunc(tab.Partitions, func(p wire.Part) bool { return p.Primary == m.c.Name() }) {
				victim = m
			}
		}
		return victim != nil
	})
	vname := victim.c.Name()
	type grant struct {
		version, failover uint64
		err               error
	}
	granted := make(chan grant, 1)
	var once sync.Once
	hook := func(next *wire.Table) {
		cur := leader.c.Table()
		if cur == nil || !slices.ContainsFunc(cur.Partitions, func(p wire.Part) bool { return p.Primary == vname }) ||
			slices.ContainsFunc(next.Partitions, func(p wire.Part) bool { return p.Primary == vname }) {
			return
		}
		once.Do(func() {
			// The victim's renewal arrives now; give it time to be
			// answered before the commit goes on.
			done := make(chan struct{})
			go func() {
				defer close(done)
				v, _, err := leader.c.HandleLease(vname, "")
				granted <- grant{v, next.Version, err}
			}()
			select {
			case <-done:
			case <-time.After(500 * time.Millisecond):
			}
		})
	}
	leader.c.beforeCommit.Store(&hook)
	victim.silent.Store(true)
	var g grant
	select {
	case g = <-granted:
	case <-time.After(20 * time.Second):
		t.Fatal("the silent member was never failed over")
	}
	if g.err == nil && g.version < g.failover {
		t.Fatalf("lease granted to %s during the commit of version %d (its failover) is bound to version %d", vname, g.failover, g.version)
	}
	t.Logf("grant during failover: version %d, failover %d, err %v", g.version, g.failover, g.err)
}

// A leader that lost the authority and won it back while its run loop was
// busy (a step in progress; LeaderCh keeps only the last signal) must lead
// anew: its lease book does not know the leases the leader in between
// granted, so a member that renewed with that one and went silent would be
// failed over while its lease still runs.
func TestLeaderBackAfterAnotherLeadsAnew(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	_, ms, leader, victim, other := convergedTrio(t)
	defer func() {
		for _, m := range ms {
			m.stop()
		}
	}()
	vname := victim.c.Name()
	d := leader.c.LeaseDuration()
	server := func(m *member) raft.Server {
		for _, s := range leader.c.raft.GetConfiguration().Configuration().Servers {
			if string(s.ID) == m.c.raftID {
				return s
			}
		}
		t.Fatalf("%s is not in the raft configuration", m.c.Name())
		return raft.Server{}
	}
	toOther, toLeader := server(other), server(leader)
	var failedOver atomic.Int64
	hook := func(next *wire.Table) {
		if !slices.ContainsFunc(next.Partitions, func(p wire.Part) bool { return p.Primary == vname }) {
			failedOver.CompareAndSwap(0, time.Now().UnixNano())
		}
	}
	leader.c.beforeCommit.Store(&hook)

	// The leader's run loop blocks in its next step (the victim stops
	// renewing first: renewals the leader takes while its step is blocked
	// would be granted once it goes on).
	victim.silent.Store(true)
	leader.c.drainMu.Lock()
	locked := true
	defer func() {
		if locked {
			leader.c.drainMu.Unlock()
		}
	}()
	waitFor(t, 5*time.Second, "the leader's step to block", func() bool {
		buf := make([]byte, 1<<20)
		return strings.Contains(string(buf[:runtime.Stack(buf, true)]), "(*Cluster).stepTable")
	})
	// The authority moves to the other member; the victim renews with it
	// for a while, then goes silent.
	if err := leader.c.raft.LeadershipTransferToServer(toOther.ID, toOther.Address).Error(); err != nil {
		t.Fatal(err)
	}
	moved := time.Now()
	waitFor(t, 5*time.Second, "the other member to lead", func() bool { return other.c.IsLeader() })
	victim.silent.Store(false)
	waitFor(t, 5*time.Second, "the other member to grant the victim a lease", func() bool {
		other.c.leases.mu.Lock()
		defer other.c.leases.mu.Unlock()
		return other.c.leases.renewed[vname].After(moved.Add(400 * time.Millisecond))
	})
	victim.silent.Store(true)
	silenced := time.Now()
	waitFor(t, 5*time.Second, "in-flight renewals", func() bool { return time.Since(silenced) > 200*time.Millisecond })
	other.c.leases.mu.Lock()
	granted := other.c.leases.renewed[vname]
	other.c.leases.mu.Unlock()
	// The authority comes back; the blocked step goes on.
	if err := other.c.raft.LeadershipTransferToServer(toLeader.ID, toLeader.Address).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the leader back", func() bool { return leader.c.IsLeader() })
	leader.c.drainMu.Unlock()
	locked = false
	waitFor(t, 10*time.Second, "the silent victim failed over", func() bool { return failedOver.Load() != 0 })
	at := time.Unix(0, failedOver.Load())
	if lapse := granted.Add(d * 9 / 10); at.Before(lapse) {
		t.Fatalf("%s failed over %v before the lease the other leader granted it lapsed", vname, lapse.Sub(at))
	}
	t.Logf("failed over %v after the other leader's last grant", at.Sub(granted))
}

// A new leader grants a lease only once it applied every table committed
// before its term: bound to an older table, the lease would let a member
// that an earlier leader failed over serve from the table it was primary
// in (the new leader learns that the failover committed only when it
// commits an entry of its own).
func TestNewLeaderGrantsOnlyAfterItCaughtUp(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	net, ms, leader, victim, other := convergedTrio(t)
	defer func() {
		for _, m := range ms {
			m.stop()
		}
	}()
	vname := victim.c.Name()
	var failover atomic.Uint64
	hook := func(next *wire.Table) {
		if !slices.ContainsFunc(next.Partitions, func(p wire.Part) bool { return p.Primary == vname }) {
			failover.CompareAndSwap(0, next.Version)
		}
	}
	leader.c.beforeCommit.Store(&hook)

	// The other member's state machine falls behind: it stops in the
	// next table it applies (a join), before the failover.
	other.mu.Lock()
	locked := true
	unlock := func() {
		if locked {
			locked = false
			other.mu.Unlock()
		}
	}
	defer unlock()
	before := leader.c.Table().Version
	ms = append(ms, startMember(t, net, "d", false))
	waitFor(t, 10*time.Second, "a table with the joiner", func() bool { return leader.c.Table().Version > before })
	victim.silent.Store(true)
	waitFor(t, 10*time.Second, "the silent victim failed over", func() bool {
		v := failover.Load()
		return v != 0 && leader.c.Table().Version >= v
	})
	if got := other.c.Table().Version; got >= failover.Load() {
		t.Fatalf("the other member applied version %d, want it behind the failover (%d)", got, failover.Load())
	}
	var toOther raft.Server
	for _, s := range leader.c.raft.GetConfiguration().Configuration().Servers {
		if string(s.ID) == other.c.raftID {
			toOther = s
		}
	}
	if err := leader.c.raft.LeadershipTransferToServer(toOther.ID, toOther.Address).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the other member to lead", func() bool { return other.c.IsLeader() })
	version, _, err := other.c.HandleLease(vname, "")
	unlock()
	if err == nil && version < failover.Load() {
		t.Fatalf("the new leader granted %s a lease bound to version %d, before its failover in version %d", vname, version, failover.Load())
	}
	t.Logf("renewal at the new leader before it caught up: version %d, err %v", version, err)
}

// Lease renewals handled while the leader shuts down return: raft answers
// a leadership verification that reached it after its shutdown never (a
// node's Close then waited forever for the worker that asked).
func TestLeaseRenewalsDuringCloseReturn(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	net := NewFakeNetwork()
	m := startMember(t, net, "a", true)
	waitFor(t, 10*time.Second, "a ready leader", func() bool {
		_, _, err := m.c.HandleLease("a", "")
		return err == nil
	})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _, _ = m.c.HandleLease("a", "")
			}
		}()
	}
	time.Sleep(50 * time.Millisecond) // renewals running
	m.stop()
	close(stop)
	returned := make(chan struct{})
	go func() { wg.Wait(); close(returned) }()
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("lease renewals handled during Close never returned")
	}
}

// A voter that still leads answers a new leader's MsgActivity with "now":
// a grant whose confirmation is on its way is not recorded yet, and the new
// leader's bound must cover it (the same holds for a grant under way).
func TestActivityAnswersNowWhileLeadingOrGranting(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	net := NewFakeNetwork()
	m := startMember(t, net, "a", true)
	defer m.stop()
	waitFor(t, 10*time.Second, "leadership", m.c.IsLeader)
	// An answer is known only once the voter set is a lease old.
	var resp wire.ActivityResponse
	waitFor(t, 10*time.Second, "a known answer", func() bool {
		resp = m.c.HandleActivity(wire.ActivityRequest{Asker: "other"})
		return resp.Known
	})
	if time.Duration(resp.AgoNanos) > 10*time.Millisecond {
		t.Fatalf("the leader answered that its last activity was %v ago, want now", time.Duration(resp.AgoNanos))
	}
}

// convergedTrio starts members a, b and c and waits for a converged table;
// it returns the network, the members, the leader, a member that leads a
// partition (victim) and the third one. The caller stops them.
func convergedTrio(t *testing.T) (net *FakeNetwork, ms []*member, leader, victim, other *member) {
	t.Helper()
	net = NewFakeNetwork()
	names := []string{"a", "b", "c"}
	ms = []*member{startMember(t, net, "a", true)}
	for _, n := range names[1:] {
		ms = append(ms, startMember(t, net, n, false))
	}
	waitFor(t, 20*time.Second, "a converged table", func() bool {
		leader, victim, other = nil, nil, nil
		for _, m := range ms {
			if m.c.IsLeader() {
				leader = m
			}
		}
		if leader == nil || len(leader.c.Voters()) != len(names) {
			return false
		}
		tab := leader.c.Table()
		if tab == nil {
			return false
		}
		for p := range tab.Partitions {
			for _, r := range reportsFor(tab, p) {
				_ = leader.c.HandleSynced(r)
			}
		}
		for _, m := range ms {
			switch {
			case m == leader:
			case victim == nil && slices.ContainsFunc(tab.Partitions, func(p wire.Part) bool { return p.Primary == m.c.Name() }):
				victim = m
			default:
				other = m
			}
		}
		return Converged(tab, names, 1) && victim != nil && other != nil
	})
	return net, ms, leader, victim, other
}
