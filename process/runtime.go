package process

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/api"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a node's processor runtime.
type Config struct {
	// Poll bounds how long a partition's run waits for the next event
	// before it looks again at pauses and leadership.
	Poll time.Duration
	// Supervise is how often the runtime looks for partitions this node
	// started or stopped leading.
	Supervise time.Duration
	// Backoff and MaxBackoff bound the outbox's delivery retries, and the
	// pause before a partition's run starts again after an error.
	Backoff, MaxBackoff time.Duration
	Logger              *slog.Logger
	// Registerer receives the runtime's metrics (nil: none).
	Registerer prometheus.Registerer
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Poll: 250 * time.Millisecond, Supervise: 100 * time.Millisecond, Backoff: 20 * time.Millisecond, MaxBackoff: time.Second}
}

// minTiming is the shortest Poll, Supervise and Backoff: shorter, the
// runtime's loops (the pause watcher, the supervisor, retries) would spin.
const minTiming = time.Millisecond

// Validate reports whether c is usable.
func (c *Config) Validate() error {
	if c.Poll < minTiming || c.Supervise < minTiming || c.Backoff < minTiming || c.MaxBackoff < c.Backoff {
		return fmt.Errorf("process: Poll, Supervise and Backoff must be at least %v, MaxBackoff at least Backoff: %+v", minTiming, *c)
	}
	return nil
}

// Runtime runs the registered processors at the partitions this node
// leads, and their outboxes. Every member registers the same processors.
type Runtime struct {
	node *grid.Node
	cfg  Config
	log  *slog.Logger

	mu    sync.Mutex
	procs map[string]*registered
	runs  map[runKey]*activeRun // what runs now, by partition

	pausedMu sync.RWMutex
	pausedBy map[string]bool // processor -> paused (refreshed from the grid)

	stats   runtimeStats
	metrics *collector // registered with Config.Registerer (nil: none)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// runKey names one partition run: a processor's, or (proc "") the outbox's.
type runKey struct {
	proc string
	part int
}

type activeRun struct {
	cancel context.CancelFunc
	done   chan struct{}
	retry  time.Time // after a failed run: not before
}

type runtimeStats struct {
	delivered, deliveryRetries atomic.Int64
	runErrors                  atomic.Int64
	lastWarn                   atomic.Int64 // unix nanoseconds of the last run error logged at Warn
}

// warnEvery bounds how often a failing run is logged at Warn (each run
// that ends on an error starts again after a backoff, so a stuck one
// would log several times a second).
const warnEvery = 10 * time.Second

// registered is a processor with its counters.
type registered struct {
	Processor
	stats procStats
	parts []partStats
}

type procStats struct {
	handled, failures, retries, parked, gaps atomic.Int64
}

type partStats struct {
	position atomic.Uint64
	handled  atomic.Int64
	parked   atomic.Int64
}

func (p *registered) part(i int) *partStats { return &p.parts[i] }

// Start starts node's processor runtime; Close stops it (before the node).
func Start(node *grid.Node, cfg Config) (*Runtime, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Runtime{node: node, cfg: cfg, log: lg, procs: map[string]*registered{}, runs: map[runKey]*activeRun{},
		pausedBy: map[string]bool{}, ctx: ctx, cancel: cancel}
	if err := r.installSteps(); err != nil {
		cancel()
		return nil, err
	}
	if cfg.Registerer != nil {
		r.metrics = &collector{r: r}
		if err := cfg.Registerer.Register(r.metrics); err != nil {
			cancel()
			return nil, err
		}
	}
	r.wg.Add(2)
	go r.supervise()
	go r.watchPauses()
	return r, nil
}

// Register adds a processor; it starts at every partition this node leads.
// A processor's position starts at the oldest retained event of each
// partition's stream the first time it runs there, or Register registers
// it: it returns once the processor holds a position at every partition
// this node leads (as far as it could within registerTimeout), so the
// events published there from then on are held for it.
func (r *Runtime) Register(p Processor) error {
	if err := p.Validate(); err != nil {
		return err
	}
	r.mu.Lock()
	if _, ok := r.procs[p.Name]; ok {
		r.mu.Unlock()
		return fmt.Errorf("%w: %s is registered already", ErrBadProcessor, p.Name)
	}
	reg := &registered{Processor: p.withDefaults(), parts: make([]partStats, r.node.Partitions())}
	r.procs[p.Name] = reg
	r.mu.Unlock()
	r.holdPositions(reg)
	return nil
}

// registerTimeout bounds Register's registration of positions.
const registerTimeout = 5 * time.Second

// holdPositions registers proc's position at every partition this node
// leads (a few at a time); one that fails is left to the partition's run.
func (r *Runtime) holdPositions(proc *registered) {
	ctx, cancel := context.WithTimeout(r.ctx, registerTimeout)
	defer cancel()
	if err := r.node.WaitReady(ctx); err != nil {
		r.quiet(ctx, -1, proc.Name+" register", err)
		return
	}
	src := grid.LocalRead{Name: proc.source(), Feed: proc.Map != ""}
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for part := range r.node.Partitions() {
		if !r.node.Leads(part) {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if _, err := r.startPosition(ctx, part, src, proc.positions(), proc.group()); err != nil {
				r.quiet(ctx, part, proc.Name+" register", err)
			}
		})
	}
	wg.Wait()
}

// Close stops every run and waits for them, and unregisters the
// runtime's metrics.
func (r *Runtime) Close() {
	r.cancel()
	r.wg.Wait()
	if r.metrics != nil {
		r.cfg.Registerer.Unregister(r.metrics)
	}
}

// supervise starts a run for every (processor, partition) and every
// outbox this node leads, and stops those of partitions it no longer
// leads.
func (r *Runtime) supervise() {
	defer r.wg.Done()
	t := time.NewTicker(r.cfg.Supervise)
	defer t.Stop()
	for {
		r.reconcile(time.Now())
		select {
		case <-r.ctx.Done():
			r.stopAll()
			return
		case <-t.C:
		}
	}
}

func (r *Runtime) reconcile(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for p := range r.node.Partitions() {
		leads := r.node.Leads(p)
		r.ensure(runKey{"", p}, leads, now)
		for name := range r.procs {
			r.ensure(runKey{name, p}, leads, now)
		}
	}
}

// ensure starts k's run if this node leads its partition and none runs
// (nor ended by an error too recently), or stops it if it does not lead.
// Caller holds mu.
func (r *Runtime) ensure(k runKey, leads bool, now time.Time) {
	a := r.runs[k]
	if a != nil && ended(a) && (!leads || now.After(a.retry)) {
		delete(r.runs, k)
		a = nil
	}
	switch {
	case !leads && a != nil:
		a.cancel()
		<-a.done
		delete(r.runs, k)
	case leads && a == nil:
		r.start(k)
	}
}

func ended(a *activeRun) bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// start runs k on its own goroutine. Caller holds mu.
func (r *Runtime) start(k runKey) {
	ctx, cancel := context.WithCancel(r.ctx)
	a := &activeRun{cancel: cancel, done: make(chan struct{})}
	r.runs[k] = a
	proc := r.procs[k.proc]
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer close(a.done)
		defer cancel()
		began := time.Now()
		if proc == nil {
			r.deliver(ctx, k.part)
		} else {
			r.run(ctx, proc, k.part)
		}
		// A run that ended by itself (an error) starts again after a
		// pause, longer if it ran only briefly.
		wait := r.cfg.Backoff
		if time.Since(began) < time.Second {
			wait = r.cfg.MaxBackoff / 4
		}
		a.retry = time.Now().Add(wait)
	}()
}

func (r *Runtime) stopAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, a := range r.runs {
		a.cancel()
		<-a.done
		delete(r.runs, k)
	}
}

// quiet logs why a partition's run ended, unless it ended because the
// node stopped leading it or the runtime is closing.
func (r *Runtime) quiet(ctx context.Context, part int, what string, err error) {
	if ctx.Err() != nil || errors.Is(err, api.ErrNotOwner) || errors.Is(err, api.ErrClosed) {
		return
	}
	r.stats.runErrors.Add(1)
	now := time.Now().UnixNano()
	if last := r.stats.lastWarn.Load(); now-last >= int64(warnEvery) && r.stats.lastWarn.CompareAndSwap(last, now) {
		r.log.Warn("partition run ended on an error; it starts again after a backoff (further ones logged at debug for 10s)",
			"partition", part, "what", what, "err", err)
		return
	}
	r.log.Debug("partition run ended", "partition", part, "what", what, "err", err)
}

// startPosition returns group's committed position at part (kept in the
// stream posStream), registering the group at the oldest retained event
// of what src reads if it has none.
func (r *Runtime) startPosition(ctx context.Context, part int, src grid.LocalRead, posStream, group string) (uint64, error) {
	src.Part, src.Group, src.From, src.Max, src.Wait = part, group, 0, 1, 0
	le, err := r.node.ReadLocal(ctx, src)
	if err != nil {
		return 0, err
	}
	if le.Committed != 0 {
		return le.Committed, nil
	}
	oldest := max(le.Oldest, 1)
	fn := func(_ context.Context, v *grid.StepView) ([]byte, error) {
		if _, ok := v.Position(posStream, group); !ok {
			v.SetPosition(posStream, group, oldest)
		}
		return nil, v.Err()
	}
	if _, _, err := r.node.StepAt(ctx, part, "process.start", fn, 0); err != nil {
		return 0, err
	}
	if le, err = r.node.ReadLocal(ctx, src); err != nil {
		return 0, err
	}
	if le.Committed == 0 {
		return 0, fmt.Errorf("%w: partition %d: group %q not registered", api.ErrUnavailable, part, group)
	}
	return le.Committed, nil
}

// commitPosition moves group's position from pos to next at part, if it
// is still pos.
func (r *Runtime) commitPosition(ctx context.Context, part int, stream, group string, pos, next uint64) error {
	fn := func(_ context.Context, v *grid.StepView) ([]byte, error) {
		if cur, ok := v.Position(stream, group); !ok || cur != pos {
			return nil, errPositionMoved
		}
		v.SetPosition(stream, group, next)
		return nil, v.Err()
	}
	_, _, err := r.node.StepAt(ctx, part, "process.position", fn, 0)
	return err
}
