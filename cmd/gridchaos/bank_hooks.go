package main

import (
	"context"
	"sync"
	"time"

	"github.com/collocate/grid/client"
	"github.com/collocate/grid/txn"
	"github.com/vmihailenco/msgpack/v5"
)

// The bank mode's view into a transfer's commit: a txn.Grid that watches
// its steps, so that the nemesis can hit a transfer between its prepares
// and its commit step (or between the commit and the finishes), and an
// abandoned transfer can die right there.

// The names of package txn's steps (txn/internal/proto; a client may call
// them, client.TxnStepPrefix). If they change, no transfer springs a trap
// or is abandoned, and the tests' exercised checks fail.
const (
	stepPrepare = client.TxnStepPrefix + "prepare"
	stepCommit  = client.TxnStepPrefix + "commit"
)

// stepDone reports whether a txn step's result says Done: the result
// (txn/internal/proto.Result) is its status byte alone when it carries
// nothing else, else a msgpack array whose first element is the status;
// 1 is Done (a map with the field Status is read too).
func stepDone(raw []byte) bool {
	if len(raw) == 1 {
		return raw[0] == 1
	}
	var res any
	if msgpack.Unmarshal(raw, &res) != nil {
		return false
	}
	var status any
	switch r := res.(type) {
	case []any:
		if len(r) > 0 {
			status = r[0]
		}
	case map[string]any:
		status = r["Status"]
	}
	switch s := status.(type) {
	case int8:
		return s == 1
	case uint8:
		return s == 1
	case int64:
		return s == 1
	case uint64:
		return s == 1
	}
	return false
}

// hookGrid is a txn.Grid for one transfer (all of its attempts): it notes
// the partitions that prepared and calls before ahead of the commit step
// (an error is the step's answer, nothing sent), send to send it (nil: the
// Grid's Step) and after once it answered Done.
type hookGrid struct {
	txn.Grid
	before func(ctx context.Context, coord int, prepared []int) error
	send   func(ctx context.Context, part int, name string, args []byte) ([]byte, error)
	after  func(coord int, prepared []int)

	mu       sync.Mutex
	prepared []int
}

// reset forgets an earlier attempt's prepares.
func (g *hookGrid) reset() {
	g.mu.Lock()
	g.prepared = nil
	g.mu.Unlock()
}

func (g *hookGrid) Step(ctx context.Context, part int, name string, args []byte) ([]byte, error) {
	switch name {
	case stepPrepare:
		raw, err := g.Grid.Step(ctx, part, name, args)
		if err == nil && stepDone(raw) {
			g.mu.Lock()
			g.prepared = append(g.prepared, part)
			g.mu.Unlock()
		}
		return raw, err
	case stepCommit:
		g.mu.Lock()
		prepared := append([]int{}, g.prepared...)
		g.mu.Unlock()
		if g.before != nil {
			if err := g.before(ctx, part, prepared); err != nil {
				return nil, err
			}
		}
		send := g.Grid.Step
		if g.send != nil {
			send = g.send
		}
		raw, err := send(ctx, part, name, args)
		if err == nil && g.after != nil && stepDone(raw) {
			g.after(part, prepared)
		}
		return raw, err
	}
	return g.Grid.Step(ctx, part, name, args)
}

// Trap points.
const (
	beforeCommit = "before-commit" // every other participant prepared, the commit step not sent
	afterCommit  = "after-commit"  // the commit step answered Done, the finishes not sent
)

// trap holds the first transfer that reaches its point while armed and
// hands it to the nemesis, which lets it go on once it struck.
type trap struct {
	mu   sync.Mutex
	at   string // "" when disarmed
	hits chan trapHit
}

// trapHit is a transfer held at a trap.
type trapHit struct {
	id       string
	coord    int   // the coordinator partition
	prepared []int // the other participants, prepared
	goOn     chan struct{}
}

// trapHold bounds how long a transfer waits at a trap for the nemesis.
const trapHold = 30 * time.Second

// arm sets the trap at point and returns where its catch arrives.
func (t *trap) arm(point string) <-chan trapHit {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.at, t.hits = point, make(chan trapHit, 1)
	return t.hits
}

func (t *trap) disarm() {
	t.mu.Lock()
	t.at = ""
	t.mu.Unlock()
}

// spring holds transfer id at point if the trap is armed there, until the
// nemesis lets it go on (or trapHold passed), and reports whether it did.
func (t *trap) spring(point, id string, coord int, prepared []int) bool {
	t.mu.Lock()
	if t.at != point {
		t.mu.Unlock()
		return false
	}
	hits := t.hits
	t.at = ""
	t.mu.Unlock()
	hit := trapHit{id: id, coord: coord, prepared: prepared, goOn: make(chan struct{})}
	hits <- hit // buffered, one catch per arm
	select {
	case <-hit.goOn:
	case <-time.After(trapHold):
	}
	return true
}
