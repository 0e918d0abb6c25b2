// Package txnnode is the members' side of package txn: the steps every
// member runs for transactions, and the recovery that finishes a
// transaction whose caller died. Start it on every member; the Service it
// returns is also a txn.Grid, for transactions of the embedded node.
package txnnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/txn"
	"github.com/collocate/grid/txn/internal/proto"
)

// Config tunes a member's transaction service.
type Config struct {
	// Interval is how often the member looks for prepared participants
	// past their deadline and for decisions nobody needs any more, at the
	// partitions it leads.
	Interval time.Duration
	// Grace is how long past its deadline a prepared participant waits
	// for its caller to finish it before the member resolves it itself.
	Grace time.Duration
	// Keep is how long past its deadline a decision is kept at least
	// before it is collected (once no participant holds the transaction
	// prepared). It bounds the clock difference between members that the
	// protocol tolerates.
	Keep time.Duration
	// MaxPerRound bounds the records one partition's round handles (at
	// most 4096 decisions and 4096 tombstones are collected per round; a
	// round that found more is followed by another at the next Interval).
	MaxPerRound int
	Logger      *slog.Logger
}

// DefaultConfig returns the defaults: a round every second, a grace of a
// second, decisions kept 30 s past their deadline.
func DefaultConfig() Config {
	return Config{Interval: time.Second, Grace: time.Second, Keep: 30 * time.Second, MaxPerRound: 256}
}

// Validate checks c.
func (c Config) Validate() error {
	switch {
	case c.Interval <= 0:
		return fmt.Errorf("txnnode: Interval must be positive")
	case c.Grace < 0:
		return fmt.Errorf("txnnode: Grace must not be negative")
	case c.Keep < time.Second:
		return fmt.Errorf("txnnode: Keep must be at least 1s (it bounds the members' clock difference)")
	case c.MaxPerRound <= 0:
		return fmt.Errorf("txnnode: MaxPerRound must be positive")
	}
	return nil
}

// Service is one member's transaction service.
type Service struct {
	n      *grid.Node
	cfg    Config
	log    *slog.Logger
	cancel context.CancelFunc
	wg     sync.WaitGroup
	stats  Stats
	mu     sync.Mutex
}

// Stats counts what a member's recovery did.
type Stats struct {
	Resolved  uint64 `json:"resolved"`  // prepared participants finished by recovery
	Collected uint64 `json:"collected"` // decisions collected
	Swept     uint64 `json:"swept"`     // tombstones dropped
}

var _ txn.Grid = (*Service)(nil)

// Start installs the transaction steps on n and starts its recovery.
// Every member must run it. Close stops the recovery.
func Start(n *grid.Node, cfg Config) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	for name, bind := range Steps() {
		if err := n.SetInternalStep(name, bind); err != nil {
			return nil, err
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{n: n, cfg: cfg, log: log.With("component", "txn"), cancel: cancel}
	s.wg.Add(1)
	go s.recover(ctx)
	return s, nil
}

// Close stops the recovery loop.
func (s *Service) Close() error {
	s.cancel()
	s.wg.Wait()
	return nil
}

// Stats returns what this member's recovery did so far.
func (s *Service) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Step runs a transaction step at partition part (txn.Grid).
func (s *Service) Step(ctx context.Context, part int, name string, args []byte) ([]byte, error) {
	return local{s.n}.Step(ctx, part, name, args)
}

// Read reads a committed entry (txn.Grid).
func (s *Service) Read(ctx context.Context, m, key string) (api.Entry, error) {
	return local{s.n}.Read(ctx, m, key)
}

// Partitions is the partition count (txn.Grid).
func (s *Service) Partitions() int { return s.n.Partitions() }

// ReadAll implements txn.BatchReader.
func (s *Service) ReadAll(ctx context.Context, m string, keys []string) (map[string]api.Entry, error) {
	return s.n.Map(m).GetEntries(ctx, keys)
}

// recover runs a round every Interval until ctx ends: prepared
// participants past their deadline every round; decisions and tombstones
// to collect every Keep/4, or at the next round while a collection leaves
// a backlog (a partition ends more transactions in Keep/4 than a round
// collects).
func (s *Service) recover(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	var lastCollect time.Time
	var backlog []int // partitions whose last collection left more
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var led []int
		for part := range s.n.Partitions() {
			if ctx.Err() != nil {
				return
			}
			if s.n.Leads(part) {
				led = append(led, part)
				s.resolveRound(ctx, part)
			}
		}
		switch {
		case time.Since(lastCollect) >= s.cfg.Keep/4:
			lastCollect = time.Now()
			backlog = s.collect(ctx, led)
		case len(backlog) > 0:
			backlog = s.collect(ctx, stillLed(backlog, led))
		}
	}
}

// resolveRound finishes partition part's participants left prepared past
// their deadline and grace.
func (s *Service) resolveRound(ctx context.Context, part int) {
	ents, err := s.n.LocalEntries(part, proto.MapPrepared, "", 0)
	if err != nil || len(ents) == 0 {
		return
	}
	now := time.Now().UnixNano()
	handled := 0
	// A coordinator that did not answer is not asked again this round:
	// one unreachable partition must not hold up the others' records.
	unreachable := map[int]bool{}
	for _, e := range ents {
		var rec proto.Prepared
		if proto.Decode(e.Value, &rec) != nil || now < rec.H.Deadline+int64(s.cfg.Grace) || unreachable[rec.H.Coord] {
			continue
		}
		if handled++; handled > s.cfg.MaxPerRound {
			return
		}
		if !s.resolvePrepared(ctx, part, &rec) {
			unreachable[rec.H.Coord] = true
		}
	}
}

// resolvePrepared asks the coordinator for the outcome of a transaction
// left prepared here (deciding abort if there is none) and finishes it.
// It reports whether the coordinator answered.
func (s *Service) resolvePrepared(ctx context.Context, part int, rec *proto.Prepared) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	res, err := s.call(ctx, rec.H.Coord, proto.StepResolve, proto.IDs{IDs: []string{rec.H.ID}, Deadline: rec.H.Deadline})
	if err != nil {
		s.log.Debug("resolving a prepared transaction", "id", rec.H.ID, "coordinator", rec.H.Coord, "err", err)
		return false
	}
	if res.Status != proto.Done && res.Status != proto.Aborted {
		return true
	}
	commit := res.Status == proto.Done
	if _, err := s.call(ctx, part, proto.StepFinish, proto.Finish{ID: rec.H.ID, Commit: commit, Deadline: rec.H.Deadline}); err != nil {
		s.log.Debug("finishing a prepared transaction", "id", rec.H.ID, "err", err)
		return true
	}
	s.log.Info("finished a transaction its caller left prepared", "id", rec.H.ID, "partition", part, "commit", commit)
	s.mu.Lock()
	s.stats.Resolved++
	s.mu.Unlock()
	return true
}

// heldChunk bounds the transactions one StepHeld names.
const heldChunk = 1024

// collectCallTimeout bounds each step a collection round sends, and
// heldPhaseTimeout all of its StepHeld questions together.
const (
	collectCallTimeout = 2 * time.Second
	heldPhaseTimeout   = 10 * time.Second
)

// garbage is what one led partition can drop: decisions kept Keep past
// their deadline (old, before asking the participants), and tombstones
// past their deadline and margin. full: a list reached the round's bound,
// more may wait.
type garbage struct {
	old   []string
	tombs []string
	full  bool
}

// perRound is how many decisions, and how many tombstones, one
// partition's collection round handles: MaxPerRound, at most what one
// StepForget may name.
func (s *Service) perRound() int { return min(s.cfg.MaxPerRound, maxIDs) }

// collect drops, at the partitions this member leads, the decisions kept
// Keep past their deadline that no participant holds prepared any more,
// and the tombstones past their deadline and margin: one StepHeld per
// participant partition for the whole member, one StepForget per led
// partition (a record), however many transactions ended meanwhile. It
// returns the backlog: the partitions that had a full batch, some of
// which went.
func (s *Service) collect(ctx context.Context, led []int) (backlog []int) {
	now := time.Now().UnixNano()
	g := make(map[int]*garbage, len(led))
	byPart := map[int][]string{} // participant -> decisions naming it
	for _, part := range led {
		gp := s.garbageOf(part, now, byPart)
		if len(gp.old) > 0 || len(gp.tombs) > 0 {
			g[part] = gp
		}
	}
	keep := s.stillHeld(ctx, byPart)
	for part, gp := range g {
		var drop []string
		for _, id := range gp.old {
			if !keep[id] {
				drop = append(drop, id)
			}
		}
		if len(drop) == 0 && len(gp.tombs) == 0 {
			continue
		}
		if err := s.forget(ctx, part, drop, gp.tombs); err == nil {
			if gp.full {
				backlog = append(backlog, part)
			}
			s.mu.Lock()
			s.stats.Collected += uint64(len(drop))
			s.stats.Swept += uint64(len(gp.tombs))
			s.mu.Unlock()
		}
	}
	return backlog
}

// forget drops decisions ids and tombstones tombs at partition part, with
// a time bound of its own: however long asking the participants took,
// the tombstones, which need no participant's answer, go.
func (s *Service) forget(ctx context.Context, part int, ids, tombs []string) error {
	ctx, cancel := context.WithTimeout(ctx, collectCallTimeout)
	defer cancel()
	_, err := s.call(ctx, part, proto.StepForget, proto.IDs{IDs: ids, Tombs: tombs})
	return err
}

// stillLed lists the partitions of parts that are in led.
func stillLed(parts, led []int) []int {
	var out []int
	for _, p := range parts {
		if slices.Contains(led, p) {
			out = append(out, p)
		}
	}
	return out
}

// garbageOf lists partition part's decisions kept Keep past their
// deadline (adding each to byPart under its participants) and its
// tombstones past their deadline and margin, perRound of each.
func (s *Service) garbageOf(part int, now int64, byPart map[int][]string) *garbage {
	gp := &garbage{}
	limit := s.perRound()
	prefix := "{" + s.n.PartitionTag(part) + "}"
	if ents, err := s.n.LocalEntries(part, proto.MapDecision, "", 0); err == nil {
		for _, e := range ents {
			var d proto.Decision
			if proto.Decode(e.Value, &d) != nil || now < d.Deadline+int64(s.cfg.Keep) {
				continue
			}
			if len(gp.old) >= limit {
				gp.full = true
				break
			}
			id := strings.TrimPrefix(e.Key, prefix)
			gp.old = append(gp.old, id)
			for _, p := range d.Parts {
				byPart[p] = append(byPart[p], id)
			}
		}
	}
	if ents, err := s.n.LocalEntries(part, proto.MapTomb, "", 0); err == nil {
		for _, e := range ents {
			if len(gp.tombs) >= limit {
				gp.full = true
				break
			}
			if tombExpired(e.Value, now) {
				gp.tombs = append(gp.tombs, strings.TrimPrefix(e.Key, prefix))
			}
		}
	}
	return gp
}

// stillHeld asks every participant partition which of its transactions
// it still holds prepared; a transaction whose participant did not
// answer counts as held (asked again next time).
//
// Each question has collectCallTimeout, all of them heldPhaseTimeout: a
// participant that does not answer (its primary paused, its partition
// without one) costs one question's time, and the others are still asked.
func (s *Service) stillHeld(ctx context.Context, byPart map[int][]string) map[string]bool {
	ctx, cancel := context.WithTimeout(ctx, heldPhaseTimeout)
	defer cancel()
	keep := map[string]bool{}
	for p, ids := range byPart {
		for i := 0; i < len(ids); i += heldChunk {
			chunk := ids[i:min(len(ids), i+heldChunk)]
			held, err := s.held(ctx, p, chunk)
			if err != nil {
				for _, id := range ids[i:] {
					keep[id] = true // not known: asked again next time
				}
				break
			}
			for _, id := range held {
				keep[id] = true
			}
		}
	}
	return keep
}

// held asks participant partition p which of ids it holds prepared.
func (s *Service) held(ctx context.Context, p int, ids []string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, collectCallTimeout)
	defer cancel()
	res, err := s.call(ctx, p, proto.StepHeld, proto.IDs{IDs: ids})
	return res.IDs, err
}

// call runs a step with v as its arguments and decodes its result.
func (s *Service) call(ctx context.Context, part int, name string, v any) (proto.Result, error) {
	var res proto.Result
	args, err := proto.Encode(v)
	if err != nil {
		return res, err
	}
	raw, err := s.n.Execute(ctx, grid.StepCall{Partition: part, Name: name, Args: args})
	if err != nil {
		return res, err
	}
	if err := proto.Decode(raw, &res); err != nil {
		return res, errors.Join(api.ErrBadRequest, err)
	}
	return res, nil
}

// Local returns a txn.Grid for transactions run through node n without a
// recovery loop of its own (the member's Service runs it); package resp
// uses it.
func Local(n *grid.Node) txn.Grid { return local{n} }

type local struct{ n *grid.Node }

func (l local) Step(ctx context.Context, part int, name string, args []byte) ([]byte, error) {
	return l.n.Execute(ctx, grid.StepCall{Partition: part, Name: name, Args: args})
}

func (l local) Read(ctx context.Context, m, key string) (api.Entry, error) {
	return l.n.Map(m).GetEntry(ctx, key)
}

func (l local) Partitions() int { return l.n.Partitions() }

func (l local) ReadAll(ctx context.Context, m string, keys []string) (map[string]api.Entry, error) {
	return l.n.Map(m).GetEntries(ctx, keys)
}
