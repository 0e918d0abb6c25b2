package cluster

import (
	"maps"
	"slices"
	"testing"
	"time"
)

func TestSuspectsAfterAWholeLeaseOfSilence(t *testing.T) {
	t0 := time.Unix(1000, 0)
	d := time.Second
	b := newLeaseBook(d, t0)
	live := []string{"a", "b", "c"}
	b.renew("b", "", t0.Add(100*time.Millisecond), 0)
	b.renew("c", "", t0.Add(300*time.Millisecond), 0)

	// "a" is the leader itself: never suspected.
	sus, next, began, _ := b.suspects(t0.Add(1099*time.Millisecond), live, "a")
	if len(sus) != 0 || len(began) != 0 {
		t.Fatalf("suspects %v before a lease passed", sus)
	}
	if want := t0.Add(1100 * time.Millisecond); !next.Equal(want) {
		t.Fatalf("next deadline %v, want %v (b's renewal + lease)", next, want)
	}
	sus, next, began, _ = b.suspects(t0.Add(1100*time.Millisecond), live, "a")
	if !maps.Equal(sus, map[string]bool{"b": true}) || !slices.Equal(began, []string{"b"}) {
		t.Fatalf("suspects %v began %v, want b", sus, began)
	}
	if want := t0.Add(1300 * time.Millisecond); !next.Equal(want) {
		t.Fatalf("next deadline %v, want %v (c's)", next, want)
	}
	// Still suspected: not announced again. A renewal ends it.
	_, _, began, _ = b.suspects(t0.Add(1200*time.Millisecond), live, "a")
	if len(began) != 0 {
		t.Fatalf("suspicion of b announced twice: %v", began)
	}
	b.renew("b", "", t0.Add(1250*time.Millisecond), 0)
	sus, _, _, ended := b.suspects(t0.Add(1260*time.Millisecond), live, "a")
	if len(sus) != 0 || !slices.Equal(ended, []string{"b"}) {
		t.Fatalf("after b renewed: suspects %v ended %v", sus, ended)
	}
}

func TestNewLeaderAndJoinerGetAWholeLease(t *testing.T) {
	t0 := time.Unix(1000, 0)
	d := time.Second
	b := newLeaseBook(d, t0)
	b.renew("b", "", t0, 0)
	lead := t0.Add(5 * time.Second)
	b.lead(lead, lead.Add(d), "")             // renewals granted before are unknown
	b.suspects(lead, []string{"a", "b"}, "a") // its first step
	if sus, _, _, _ := b.suspects(lead.Add(999*time.Millisecond), []string{"a", "b"}, "a"); len(sus) != 0 {
		t.Fatalf("a new leader suspected %v before a lease of its own passed", sus)
	}
	if sus, _, _, _ := b.suspects(lead.Add(d), []string{"a", "b"}, "a"); !sus["b"] {
		t.Fatal("b never renewed with the new leader and is not suspected after a lease")
	}
	// A member seen for the first time counts from then.
	seen := lead.Add(2 * time.Second)
	if sus, _, _, _ := b.suspects(seen, []string{"a", "b", "c"}, "a"); sus["c"] {
		t.Fatal("a joiner was suspected at first sight")
	}
	if sus, _, _, _ := b.suspects(seen.Add(d-time.Millisecond), []string{"a", "b", "c"}, "a"); sus["c"] {
		t.Fatal("a joiner was suspected before a lease passed since first sight")
	}
	if sus, _, _, _ := b.suspects(seen.Add(d), []string{"a", "b", "c"}, "a"); !sus["c"] {
		t.Fatal("a silent joiner is not suspected a lease after first sight")
	}
	// A member that left and comes back is seen anew.
	b.suspects(seen.Add(2*d), []string{"a", "b"}, "a")
	back := seen.Add(3 * d)
	if sus, _, _, _ := b.suspects(back, []string{"a", "b", "c"}, "a"); sus["c"] {
		t.Fatal("a member that came back was suspected from its earlier sighting")
	}
}

func TestLeaderPauseDoesNotSuspectEveryone(t *testing.T) {
	t0 := time.Unix(1000, 0)
	d := time.Second
	b := newLeaseBook(d, t0)
	b.renew("b", "", t0, 0)
	b.renew("c", "", t0, 0)
	// The leader process stops for 3 s; when it runs again, its first
	// look must not blame the members for its own silence.
	wake := t0.Add(3 * time.Second)
	b.resumed(wake)
	if sus, _, _, _ := b.suspects(wake.Add(10*time.Millisecond), []string{"a", "b", "c"}, "a"); len(sus) != 0 {
		t.Fatalf("suspects %v right after the leader's own pause", sus)
	}
	b.renew("c", "", wake.Add(100*time.Millisecond), 0)
	sus, _, _, _ := b.suspects(wake.Add(d), []string{"a", "b", "c"}, "a")
	if !maps.Equal(sus, map[string]bool{"b": true}) {
		t.Fatalf("suspects %v a lease after the pause, want only the silent b", sus)
	}
}

func TestLeasedWhileYoungCoversEveryPrimary(t *testing.T) {
	t0 := time.Unix(1000, 0)
	d := time.Second
	b := newLeaseBook(d, t0)
	b.lead(t0, t0.Add(d), "")
	b.renew("x", "", t0.Add(100*time.Millisecond), 0)
	got := b.leased(t0.Add(500*time.Millisecond), []string{"p1", "p2"})
	if !maps.Equal(got, map[string]bool{"x": true, "p1": true, "p2": true}) {
		t.Fatalf("young leader's leased %v", got)
	}
	got = b.leased(t0.Add(d), []string{"p1", "p2"})
	if !maps.Equal(got, map[string]bool{"x": true}) {
		t.Fatalf("leased %v once no longer young, want x only", got)
	}
	if got := b.leased(t0.Add(1100*time.Millisecond), nil); len(got) != 0 {
		t.Fatalf("leased %v after x's lease lapsed", got)
	}
}

// A new leader that bounded its predecessors' grants (activity.go) fails a
// silent member over once those lapsed, but not before live members had
// renewGrace to find it.
func TestBoundedPredecessorsShortenTheWait(t *testing.T) {
	t0 := time.Unix(1000, 0)
	d := time.Second
	b := newLeaseBook(d, t0)
	lead := t0.Add(5 * time.Second)
	b.lead(lead, lead.Add(100*time.Millisecond), "")
	b.suspects(lead, []string{"a", "b"}, "a")
	if got := b.leased(lead.Add(99*time.Millisecond), []string{"b"}); !got["b"] {
		t.Fatal("a primary is not leased before its predecessors' grants lapsed")
	}
	if got := b.leased(lead.Add(100*time.Millisecond), []string{"b"}); got["b"] {
		t.Fatal("a primary is still leased after its predecessors' grants lapsed")
	}
	if sus, _, _, _ := b.suspects(lead.Add(renewGrace-time.Millisecond), []string{"a", "b"}, "a"); sus["b"] {
		t.Fatal("b suspected before it had renewGrace to find the new leader")
	}
	if sus, _, _, _ := b.suspects(lead.Add(renewGrace), []string{"a", "b"}, "a"); !sus["b"] {
		t.Fatal("a silent b is not suspected once grace and predecessors' leases are over")
	}
	// Without a bound the wait is a whole lease.
	b.lead(lead, lead.Add(d), "")
	b.suspects(lead, []string{"a", "b"}, "a")
	if sus, _, _, _ := b.suspects(lead.Add(d-time.Millisecond), []string{"a", "b"}, "a"); sus["b"] {
		t.Fatal("b suspected before a lease passed without a bound")
	}
}

// A leader's raft state turns Leader before its run loop calls lead
// (barrier, asking the voters): renewals it grants meanwhile are leases
// like any other. lead must not forget them, or a member that renewed
// then and went silent is failed over (renewGrace after takeover) while
// the lease it was just granted still runs.
func TestLeadKeepsItsOwnEarlierGrants(t *testing.T) {
	t0 := time.Unix(1000, 0)
	d := time.Second
	b := newLeaseBook(d, t0)
	grant := t0.Add(5 * time.Second)
	b.renew("c", "", grant, 0) // while asking the voters
	lead := grant.Add(10 * time.Millisecond)
	b.lead(lead, lead.Add(100*time.Millisecond), "") // bounded by answers read before the grant
	b.suspects(lead, []string{"a", "c"}, "a")
	at := lead.Add(renewGrace + 100*time.Millisecond) // c's lease still runs
	if got := b.leased(at, nil); !got["c"] {
		t.Fatalf("leased %v at %v after a grant to c, want c", got, at.Sub(grant))
	}
	if sus, _, _, _ := b.suspects(at, []string{"a", "c"}, "a"); sus["c"] {
		t.Fatalf("c suspected %v after the leader granted it a lease", at.Sub(grant))
	}
}

// A contact from a leader that the poller missed (it ran late, and raft
// moved on to the next leader meanwhile) must still bound that leader's
// grants: a stalled poll counts the last contact for every leader.
func TestActivityPollThatRanLateBoundsEveryLeader(t *testing.T) {
	t0 := time.Unix(1000, 0)
	d := time.Second
	c := &Cluster{cfg: Config{LeaseDuration: d}}
	c.act.heard, c.act.voters, c.act.votersSince = map[string]time.Time{}, "a,b,c", t0.Add(-time.Hour)
	c.act.observe(t0, t0, "a", "c", t0, "a,b,c", 2*d)
	// The poller stalls for 300 ms; a acknowledged a lease verification
	// at +280 ms, then b took over and contacted c at +290 ms.
	late := t0.Add(300 * time.Millisecond)
	c.act.observe(late, late, "b", "c", t0.Add(290*time.Millisecond), "a,b,c", 2*d)
	at, ok := c.lastActivity("b", late)
	if !ok || at.Before(t0.Add(280*time.Millisecond)) {
		t.Fatalf("b asks after a late poll: last activity %v (ok %v), want at least a's contact at +280ms", at.Sub(t0), ok)
	}
}

// The member that led before is failed over once its grants lapsed, with
// no grace to find the new leader: it stopped answering.
func TestPredecessorGetsNoGrace(t *testing.T) {
	t0 := time.Unix(1000, 0)
	d := time.Second
	b := newLeaseBook(d, t0)
	lead := t0.Add(5 * time.Second)
	b.lead(lead, lead.Add(100*time.Millisecond), "x")
	live := []string{"a", "b", "x"}
	b.suspects(lead, live, "a")
	sus, _, _, _ := b.suspects(lead.Add(100*time.Millisecond), live, "a")
	if !maps.Equal(sus, map[string]bool{"x": true}) {
		t.Fatalf("suspects %v once the predecessor's grants lapsed, want x only", sus)
	}
}

// A step that runs right after the leader resumed, before the pause
// watcher's next tick, must not blame the members for the pause.
func TestStepBeforeTheWatcherNoticedAPause(t *testing.T) {
	t0 := time.Unix(1000, 0)
	d := time.Second
	b := newLeaseBook(d, t0)
	b.renew("b", "", t0, 0)
	b.tick(t0) // the watcher's last tick before the process stopped
	wake := t0.Add(3 * time.Second)
	if sus, _, _, _ := b.suspects(wake, []string{"a", "b"}, "a"); len(sus) != 0 {
		t.Fatalf("suspects %v at the first step after a pause the watcher had not seen", sus)
	}
	for at := wake; !at.After(wake.Add(d)); at = at.Add(pauseTick) {
		b.tick(at) // the watcher runs again
	}
	if sus, _, _, _ := b.suspects(wake.Add(d), []string{"a", "b"}, "a"); !sus["b"] {
		t.Fatal("b, silent a lease after the pause, is not suspected")
	}
}
