package process

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/api"
	"github.com/vmihailenco/msgpack/v5"
)

// Operations on processors. A pause is a flag in the grid (internal map
// controlMap, key = the processor's name), so it holds on every member and
// through failovers; each member reads it every Poll, so a pause takes
// effect within about Poll (a batch under way finishes). A replay moves a
// partition's position back (or forward) with a step at that partition's
// primary; its run sees the new position at its next read.

// Internal names of the operations.
const (
	controlMap = grid.ReservedPrefix + "proc"
	pauseStep  = grid.ReservedPrefix + "proc.pause"
	seekStep   = grid.ReservedPrefix + "proc.seek"
)

type pauseArgs struct {
	_msgpack struct{} `msgpack:",as_array"`
	Paused   bool
}

type seekArgs struct {
	_msgpack struct{} `msgpack:",as_array"`
	Stream   string
	Group    string
	Pos      uint64
}

// ErrUnknownProcessor: no processor of that name is registered here.
var ErrUnknownProcessor = errors.New("process: unknown processor")

// installSteps installs the operations' internal steps on the node.
func (r *Runtime) installSteps() error {
	if err := r.node.SetInternalStep(pauseStep, bindPause); err != nil {
		return err
	}
	return r.node.SetInternalStep(seekStep, bindSeek)
}

func bindPause(args []byte) (grid.StepFunc, error) {
	var a pauseArgs
	if err := msgpack.Unmarshal(args, &a); err != nil {
		return nil, fmt.Errorf("%w: %v", api.ErrBadArgs, err)
	}
	return func(_ context.Context, v *grid.StepView) ([]byte, error) {
		if a.Paused {
			v.Set(controlMap, v.Key(), []byte("paused"), 0)
		} else {
			v.Delete(controlMap, v.Key())
		}
		return nil, v.Err()
	}, nil
}

func bindSeek(args []byte) (grid.StepFunc, error) {
	var a seekArgs
	if err := msgpack.Unmarshal(args, &a); err != nil {
		return nil, fmt.Errorf("%w: %v", api.ErrBadArgs, err)
	}
	if a.Pos == 0 || a.Stream == "" || a.Group == "" {
		return nil, fmt.Errorf("%w: a replay needs a position > 0", api.ErrBadArgs)
	}
	return func(_ context.Context, v *grid.StepView) ([]byte, error) {
		// A position beyond the partition's history: the run would take
		// it for a lost history and go back to the oldest retained event.
		if end := v.End(); v.Err() == nil && a.Pos > end {
			return nil, fmt.Errorf("%w: position %d is beyond partition %d's history (its next position is %d)", api.ErrBadRequest, a.Pos, v.Partition(), end)
		}
		v.SetPosition(a.Stream, a.Group, a.Pos)
		return nil, v.Err()
	}, nil
}

func (r *Runtime) proc(name string) (*registered, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.procs[name]
	if p == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownProcessor, name)
	}
	return p, nil
}

// Pause stops processor name at every partition (each member notices
// within about Config.Poll); events queue up, held by its position.
func (r *Runtime) Pause(ctx context.Context, name string) error { return r.setPaused(ctx, name, true) }

// Resume undoes Pause.
func (r *Runtime) Resume(ctx context.Context, name string) error {
	return r.setPaused(ctx, name, false)
}

func (r *Runtime) setPaused(ctx context.Context, name string, paused bool) error {
	if _, err := r.proc(name); err != nil {
		return err
	}
	args, err := msgpack.Marshal(&pauseArgs{Paused: paused})
	if err != nil {
		return err
	}
	if _, err := r.node.Execute(ctx, grid.StepCall{Map: controlMap, Key: name, Name: pauseStep, Args: args}); err != nil {
		return err
	}
	r.pausedMu.Lock()
	r.pausedBy[name] = paused
	r.pausedMu.Unlock()
	return nil
}

// Replay moves processor name's position at partition part to from: it
// handles every event from there on again (their effects apply again:
// replay is the operator's decision), or skips ahead. A position older
// than the stream's retention parks a gap in the dead letters and goes on
// from the oldest retained event.
func (r *Runtime) Replay(ctx context.Context, name string, part int, from uint64) error {
	p, err := r.proc(name)
	if err != nil {
		return err
	}
	if part < 0 || part >= r.node.Partitions() || from == 0 {
		return fmt.Errorf("%w: partition %d of %d, position %d (> 0)", api.ErrBadRequest, part, r.node.Partitions(), from)
	}
	args, err := msgpack.Marshal(&seekArgs{Stream: p.positions(), Group: p.group(), Pos: from})
	if err != nil {
		return err
	}
	_, err = r.node.Execute(ctx, grid.StepCall{Partition: part, Name: seekStep, Args: args})
	return err
}

func (r *Runtime) paused(name string) bool {
	r.pausedMu.RLock()
	defer r.pausedMu.RUnlock()
	return r.pausedBy[name]
}

// watchPauses refreshes the pause flags from the grid every Poll.
func (r *Runtime) watchPauses() {
	defer r.wg.Done()
	t := time.NewTicker(r.cfg.Poll)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		names := make([]string, 0, len(r.procs))
		for n := range r.procs {
			names = append(names, n)
		}
		r.mu.Unlock()
		for _, n := range names {
			ctx, cancel := context.WithTimeout(r.ctx, r.cfg.Poll)
			v, err := r.node.Map(controlMap).Get(ctx, n)
			cancel()
			if err != nil && !errors.Is(err, api.ErrNotFound) {
				continue // keep what we knew
			}
			r.pausedMu.Lock()
			r.pausedBy[n] = string(v) == "paused"
			r.pausedMu.Unlock()
		}
	}
}

// PartitionStatus is one processor's state at one partition led here.
type PartitionStatus struct {
	Processor string    `json:"processor"`
	Partition int       `json:"partition"`
	Position  uint64    `json:"position"`     // the committed position (the next event's)
	Lag       int       `json:"lag"`          // committed events not handled yet
	OldestAt  time.Time `json:"oldest_at"`    // when the oldest of them was committed (zero: none)
	LagAge    float64   `json:"lag_seconds"`  // how long it waits
	Handled   int64     `json:"handled"`      // events handled here since this node started
	Parked    int64     `json:"dead_letters"` // events parked here since this node started
	Paused    bool      `json:"paused"`
}

// ProcessorStatus is one processor's totals on this node.
type ProcessorStatus struct {
	Name       string            `json:"name"`
	Stream     string            `json:"stream"`
	Paused     bool              `json:"paused"`
	Handled    int64             `json:"handled"`
	Failures   int64             `json:"failures"`
	Retries    int64             `json:"retries"`
	Parked     int64             `json:"dead_letters"`
	Gaps       int64             `json:"gaps"`
	Lag        int               `json:"lag"`
	MaxLagAge  float64           `json:"max_lag_seconds"`
	Partitions []PartitionStatus `json:"partitions"`
}

// Status reports every processor at the partitions this node leads.
func (r *Runtime) Status() []ProcessorStatus {
	r.mu.Lock()
	procs := make([]*registered, 0, len(r.procs))
	for _, p := range r.procs {
		procs = append(procs, p)
	}
	r.mu.Unlock()
	slices.SortFunc(procs, func(a, b *registered) int {
		if a.Name < b.Name {
			return -1
		}
		return 1
	})
	now := time.Now()
	out := make([]ProcessorStatus, 0, len(procs))
	for _, p := range procs {
		st := ProcessorStatus{Name: p.Name, Stream: p.Stream, Paused: r.paused(p.Name), Handled: p.stats.handled.Load(),
			Failures: p.stats.failures.Load(), Retries: p.stats.retries.Load(), Parked: p.stats.parked.Load(), Gaps: p.stats.gaps.Load()}
		for part := range r.node.Partitions() {
			if !r.node.Leads(part) {
				continue
			}
			ps := p.part(part)
			bl, err := r.node.Backlog(grid.LocalRead{Part: part, Name: p.source(), Feed: p.Map != "", Group: p.group()})
			if err != nil {
				continue
			}
			s := PartitionStatus{Processor: p.Name, Partition: part, Position: bl.Position, Lag: bl.Events, OldestAt: bl.Oldest,
				Handled: ps.handled.Load(), Parked: ps.parked.Load(), Paused: st.Paused}
			if !bl.Oldest.IsZero() {
				s.LagAge = now.Sub(bl.Oldest).Seconds()
			}
			st.Lag += s.Lag
			st.MaxLagAge = max(st.MaxLagAge, s.LagAge)
			st.Partitions = append(st.Partitions, s)
		}
		out = append(out, st)
	}
	return out
}

// OutboxStatus is the outboxes of the partitions this node leads.
type OutboxStatus struct {
	Lag       int     `json:"lag"`             // outbox records (each a batch's emitted events) not yet delivered
	MaxLagAge float64 `json:"max_lag_seconds"` // how long the oldest of them waits
	Delivered int64   `json:"delivered"`       // applied at their targets since this node started
	Retries   int64   `json:"retries"`         // delivery attempts that failed and were retried
}

// Outbox reports the outboxes of the partitions this node leads: when
// every processor's lag and every outbox's lag is 0 across the members,
// every event and everything it emitted has been handled and delivered.
func (r *Runtime) Outbox() OutboxStatus {
	now := time.Now()
	st := OutboxStatus{Delivered: r.stats.delivered.Load(), Retries: r.stats.deliveryRetries.Load()}
	for part := range r.node.Partitions() {
		if !r.node.Leads(part) {
			continue
		}
		bl, err := r.node.Backlog(grid.LocalRead{Part: part, Name: outboxStream, Group: deliverGroup})
		if err != nil || bl.Events == 0 {
			continue
		}
		st.Lag += bl.Events
		st.MaxLagAge = max(st.MaxLagAge, now.Sub(bl.Oldest).Seconds())
	}
	return st
}
