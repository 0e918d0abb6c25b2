package router_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// outcomeUnknown checks the answer a caller must get for a mutation that may
// have been applied: ErrTimeout, never an error that invites a blind retry.
func outcomeUnknown(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, api.ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout (outcome unknown)", err)
	}
	if errors.Is(err, api.ErrUnavailable) || api.Retryable(err) {
		t.Fatalf("err = %v matches a retryable error: a caller would apply the mutation twice", err)
	}
}

func TestRetryAfterDroppedConnectionReusesSession(t *testing.T) {
	h := newHarness(t)
	n1 := h.node("n1")
	n1.setScript(then(1, always(drop, nil), always(reply, nil)))
	if err := h.r.Map("m").Put(ctxFor(t, 5*time.Second), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	reqs := n1.mapRequests()
	if len(reqs) != 2 {
		t.Fatalf("n1 got %d requests, want 2", len(reqs))
	}
	sameSession(t, reqs)
}

func TestMutationLostWithItsConnectionEndsInTimeout(t *testing.T) {
	h := newHarness(t)
	n1 := h.node("n1")
	n1.setScript(always(drop, nil)) // every attempt may have applied
	err := h.r.Map("m").Put(ctxFor(t, 300*time.Millisecond), "k", []byte("v"))
	outcomeUnknown(t, err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want it to match context.DeadlineExceeded", err)
	}
	reqs := n1.mapRequests()
	if len(reqs) < 2 {
		t.Fatalf("n1 got %d requests: the router did not retry", len(reqs))
	}
	sameSession(t, reqs)
}

func TestMutationLostThenRefusedEndsInTimeout(t *testing.T) {
	h := newHarness(t)
	n1 := h.node("n1")
	// The first attempt may have applied; the later ones are refused by the
	// node itself. The first one's outcome is still unknown.
	n1.setScript(then(1, always(drop, nil), always(refuse, fmt.Errorf("%w: test", api.ErrUnavailable))))
	err := h.r.Map("m").Put(ctxFor(t, 300*time.Millisecond), "k", []byte("v"))
	outcomeUnknown(t, err)
	sameSession(t, n1.mapRequests())
}

func TestMutationNeverAcceptedEndsUnavailable(t *testing.T) {
	h := newHarness(t)
	n1 := h.node("n1")
	n1.setScript(always(refuse, fmt.Errorf("%w: test", api.ErrUnavailable)))
	// The deadline may cut an attempt in flight (likely on a loaded
	// machine): then "outcome unknown" is the honest answer. Only a run
	// whose last attempt was answered must end in ErrUnavailable; allow a
	// few runs to get one.
	var err error
	for range 5 {
		err = h.r.Map("m").Put(ctxFor(t, 300*time.Millisecond), "k", []byte("v"))
		if !errors.Is(err, api.ErrTimeout) {
			break
		}
	}
	if !errors.Is(err, api.ErrUnavailable) || errors.Is(err, api.ErrTimeout) {
		t.Fatalf("err = %v: every attempt was refused by the node, want ErrUnavailable (nothing applied)", err)
	}
	reqs := n1.mapRequests()
	if len(reqs) < 2 {
		t.Fatalf("n1 got %d requests: the router did not retry", len(reqs))
	}
	sameSession(t, reqs)
}

func TestReadLostWithItsConnectionIsRetried(t *testing.T) {
	h := newHarness(t)
	n1 := h.node("n1")
	n1.setScript(then(2, always(drop, nil), always(reply, nil)))
	v, err := h.r.Map("m").Get(ctxFor(t, 5*time.Second), "k")
	if err != nil || string(v) != "n1:k" {
		t.Fatalf("get = %q, %v", v, err)
	}
	if n := len(n1.mapRequests()); n != 3 {
		t.Fatalf("n1 got %d requests, want 3", n)
	}
}

func TestNotOwnerFetchesTheNewTableAndRetries(t *testing.T) {
	h := newHarness(t)
	n1, n2 := h.node("n1"), h.node("n2")
	n1.setScript(always(refuse, &api.NotOwnerError{Partition: 0, Version: 2, Owner: "n2"}))
	h.onRefresh = func(v uint64) {
		if v == 2 {
			h.install(2, nil, "n2")
		}
	}
	if err := h.r.Map("m").Put(ctxFor(t, 5*time.Second), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	r1, r2 := n1.mapRequests(), n2.mapRequests()
	if len(r1) != 1 || len(r2) != 1 {
		t.Fatalf("n1 got %d, n2 got %d requests; want 1 and 1", len(r1), len(r2))
	}
	sameSession(t, append(r1, r2...))
	if r2[0].Version != 2 {
		t.Fatalf("retry sent with table version %d, want 2", r2[0].Version)
	}
	if len(h.refreshes) == 0 || h.refreshes[0] != 2 {
		t.Fatalf("refreshes %v, want a request for version 2", h.refreshes)
	}
}

func TestTimeoutAnswerIsRetriedWithTheSameSession(t *testing.T) {
	h := newHarness(t)
	n1 := h.node("n1")
	n1.setScript(then(1, always(refuse, fmt.Errorf("%w: test", api.ErrTimeout)), always(reply, nil)))
	if err := h.r.Map("m").Put(ctxFor(t, 5*time.Second), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	sameSession(t, n1.mapRequests())
}

func TestBusyIsRetried(t *testing.T) {
	h := newHarness(t)
	n1 := h.node("n1")
	n1.setScript(then(2, always(refuse, fmt.Errorf("%w: test", api.ErrBusy)), always(reply, nil)))
	if _, err := h.r.Map("m").Get(ctxFor(t, 5*time.Second), "k"); err != nil {
		t.Fatal(err)
	}
	if n := len(n1.mapRequests()); n != 3 {
		t.Fatalf("n1 got %d requests, want 3", n)
	}
}

func TestCallerCancelKeepsItsIdentity(t *testing.T) {
	h := newHarness(t)
	n1 := h.node("n1")
	n1.setScript(always(silence, nil))
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-n1.received
		cancel()
	}()
	err := h.r.Map("m").Put(ctx, "k", []byte("v"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want it to match context.Canceled", err)
	}
	outcomeUnknown(t, err)
}

func TestBatchRetriesFailedPartitionsWithTheirSessions(t *testing.T) {
	h := newHarness(t)
	n1, n2 := h.node("n1"), h.node("n2")
	// n1 lost partition 1 to n2 at table version 2: it refuses that
	// partition's ops and serves the others.
	const moved = 1
	n1.setOpErr(func(r wire.MapRequest) error {
		if r.Partition == moved {
			return &api.NotOwnerError{Partition: moved, Version: 2, Owner: "n2"}
		}
		return nil
	})
	h.onRefresh = func(v uint64) {
		if v == 2 {
			h.install(2, nil, "n1", "n2", "n1", "n1")
		}
	}
	var ops []api.BatchOp
	for p := range testPartitions {
		for j := range 2 {
			ops = append(ops, api.BatchOp{Kind: api.BatchSet, Key: keyIn(p, fmt.Sprintf("s%d", j)), Value: []byte("v")})
			ops = append(ops, api.BatchOp{Kind: api.BatchGet, Key: keyIn(p, fmt.Sprintf("g%d", j))})
		}
	}
	res := h.r.Map("m").Batch(ctxFor(t, 5*time.Second), ops)
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("op %d (%s): %v", i, ops[i].Key, r.Err)
		}
	}
	b1, b2 := n1.batchRequests(), n2.batchRequests()
	if len(b1) != 1 || len(b2) != 1 {
		t.Fatalf("n1 got %d batches, n2 got %d; want 1 and 1", len(b1), len(b2))
	}
	// n2 got exactly partition 1's ops, in request order, with the sessions
	// n1 saw.
	var first []wire.MapRequest
	for _, rq := range b1[0].Reqs {
		if rq.Partition == moved {
			first = append(first, rq)
		}
	}
	if len(first) != 4 || len(b2[0].Reqs) != 4 {
		t.Fatalf("partition %d: n1 got %d ops, n2 got %d; want 4 and 4", moved, len(first), len(b2[0].Reqs))
	}
	for j, rq := range b2[0].Reqs {
		if rq.Key != first[j].Key || rq.Session != first[j].Session || rq.Version != 2 {
			t.Fatalf("retried op %d = %s %+v v%d, first sent as %s %+v", j, rq.Key, rq.Session, rq.Version, first[j].Key, first[j].Session)
		}
	}
	for i, r := range res {
		if ops[i].Kind != api.BatchGet {
			continue
		}
		want := "n1:" + ops[i].Key
		if affinity.Partition(ops[i].Key, testPartitions) == moved {
			want = "n2:" + ops[i].Key
		}
		if string(r.Value) != want {
			t.Fatalf("get %s = %q, want %q", ops[i].Key, r.Value, want)
		}
	}
}

func TestBatchMutationsLostWithTheConnectionEndInTimeout(t *testing.T) {
	h := newHarness(t)
	n1 := h.node("n1")
	n1.setScript(always(drop, nil))
	ops := []api.BatchOp{
		{Kind: api.BatchSet, Key: "a", Value: []byte("1")},
		{Kind: api.BatchGet, Key: "b"},
	}
	res := h.r.Map("m").Batch(ctxFor(t, 300*time.Millisecond), ops)
	outcomeUnknown(t, res[0].Err)
	if res[1].Err == nil {
		t.Fatal("get succeeded through a dropped connection")
	}
	b := n1.batchRequests()
	if len(b) < 2 {
		t.Fatalf("n1 got %d batches: the router did not retry", len(b))
	}
	if b[0].Reqs[0].Session != b[len(b)-1].Reqs[0].Session {
		t.Fatalf("retry changed the session: %+v then %+v", b[0].Reqs[0].Session, b[len(b)-1].Reqs[0].Session)
	}
}

func TestPutAllLostWithTheConnectionEndsInTimeout(t *testing.T) {
	h := newHarness(t)
	n1 := h.node("n1")
	n1.setScript(always(drop, nil))
	err := h.r.Map("m").PutAll(ctxFor(t, 300*time.Millisecond), map[string][]byte{"a": []byte("1"), "b": []byte("2")})
	outcomeUnknown(t, err)
	p := n1.putAllRequests()
	if len(p) < 2 || p[0].Session != p[len(p)-1].Session || p[0].Session.Seq == 0 {
		t.Fatalf("n1 got %d PutAll requests; sessions must match and be set", len(p))
	}
}

func TestPutAllRetriedAfterDropSucceeds(t *testing.T) {
	h := newHarness(t)
	n1 := h.node("n1")
	n1.setScript(then(1, always(drop, nil), always(reply, nil)))
	if err := h.r.Map("m").PutAll(ctxFor(t, 5*time.Second), map[string][]byte{"a": []byte("1")}); err != nil {
		t.Fatal(err)
	}
	p := n1.putAllRequests()
	if len(p) != 2 || p[0].Session != p[1].Session {
		t.Fatalf("n1 got %d PutAll requests with sessions that differ", len(p))
	}
}

func TestRequestsWaitingOnAReplacedPrimaryAreRerouted(t *testing.T) {
	h := newHarness(t)
	n1, n2 := h.node("n1"), h.node("n2")
	n1.setScript(always(silence, nil)) // stopped, its connection open
	go func() {
		<-n1.received
		<-n1.received
		h.install(2, nil, "n2") // the cluster failed over
	}()
	m := h.r.Map("m")
	ctx := ctxFor(t, 10*time.Second)
	start := time.Now()
	errs := make(chan error, 2)
	go func() { errs <- m.Put(ctx, "k", []byte("v")) }()
	go func() {
		v, err := m.Get(ctx, "j")
		if err == nil && string(v) != "n2:j" {
			err = fmt.Errorf("get = %q from the old primary", v)
		}
		errs <- err
	}()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("calls took %v after the new table", d)
	}
	var put []wire.MapRequest
	for _, r := range append(n1.mapRequests(), n2.mapRequests()...) {
		if r.Key == "k" {
			put = append(put, r)
		}
	}
	if len(put) != 2 {
		t.Fatalf("the put was sent %d times, want once to each primary", len(put))
	}
	sameSession(t, put)
}

func TestRequestsWaitingOnAKeptPrimaryAreNotResent(t *testing.T) {
	h := newHarness(t)
	n1 := h.node("n1")
	n1.setScript(always(late, nil))
	go func() {
		<-n1.received
		h.install(2, nil, "n1") // a new table that keeps the primary
	}()
	if err := h.r.Map("m").Put(ctxFor(t, 5*time.Second), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if n := len(n1.mapRequests()); n != 1 {
		t.Fatalf("n1 got %d requests, want 1", n)
	}
}

func TestStaleSequenceIsOutcomeUnknown(t *testing.T) {
	h := newHarness(t)
	n1 := h.node("n1")
	// The primary no longer keeps this sequence's result: it may have been
	// applied once.
	n1.setScript(always(refuse, fmt.Errorf("%w: test", api.ErrStaleSequence)))
	err := h.r.Map("m").Put(ctxFor(t, 5*time.Second), "k", []byte("v"))
	outcomeUnknown(t, err)
	if n := len(n1.mapRequests()); n != 1 {
		t.Fatalf("n1 got %d requests, want 1 (not retried)", n)
	}
}

// Pulse reports a request that waits at every call once it has waited a
// whole period, not every other call: a client fetches a table at each
// pulse while a primary is silent (ARCHITECTURE.md).
func TestPulseReportsAWaitingRequestEveryTime(t *testing.T) {
	h := newHarness(t)
	n1 := h.node("n1")
	n1.setScript(always(silence, nil)) // stopped, its connection open
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errs := make(chan error, 1)
	go func() { errs <- h.r.Map("m").Put(ctx, "k", []byte("v")) }()
	<-n1.received
	deadline := time.Now().Add(5 * time.Second)
	for !h.r.Pulse() {
		if time.Now().After(deadline) {
			t.Fatal("the waiting request is never reported")
		}
		time.Sleep(time.Millisecond)
	}
	for i := range 5 {
		if !h.r.Pulse() {
			t.Fatalf("pulse %d after the first report: the request still waits but is not reported", i+1)
		}
	}
	cancel()
	<-errs
	h.r.Pulse() // may still count the period in which it ended
	for i := range 3 {
		if h.r.Pulse() {
			t.Fatalf("pulse %d after the request ended: reported", i+1)
		}
	}
}
