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
	// MaxPerRound bounds the records one partition's round handles.
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

// recover runs a round every Interval until ctx ends.
func (s *Service) recover(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for part := range s.n.Partitions() {
			if ctx.Err() != nil {
				return
			}
			if s.n.Leads(part) {
				s.round(ctx, part)
			}
		}
	}
}

// round handles partition part's records past their deadline.
func (s *Service) round(ctx context.Context, part int) {
	prefix := "{" + s.n.PartitionTag(part) + "}"
	ents, err := s.n.LocalEntries(part, proto.Map, prefix, 0)
	if err != nil || len(ents) == 0 {
		return
	}
	now := time.Now().UnixNano()
	var old []string
	handled := 0
	for _, e := range ents {
		if handled >= s.cfg.MaxPerRound {
			break
		}
		rest := strings.TrimPrefix(e.Key, prefix)
		switch {
		case strings.HasPrefix(rest, proto.KindPrepared):
			var rec proto.Prepared
			if proto.Decode(e.Value, &rec) != nil || now < rec.H.Deadline+int64(s.cfg.Grace) {
				continue
			}
			handled++
			s.resolvePrepared(ctx, part, &rec)
		case strings.HasPrefix(rest, proto.KindDecision):
			var d proto.Decision
			if proto.Decode(e.Value, &d) != nil || now < d.Deadline+int64(s.cfg.Keep) {
				continue
			}
			handled++
			old = append(old, strings.TrimPrefix(rest, proto.KindDecision))
			_ = d
		}
	}
	if len(old) > 0 {
		s.collect(ctx, part, old, ents, prefix)
	}
}

// resolvePrepared asks the coordinator for the outcome of a transaction
// left prepared here (deciding abort if there is none) and finishes it.
func (s *Service) resolvePrepared(ctx context.Context, part int, rec *proto.Prepared) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	args, err := proto.Encode(proto.IDs{IDs: []string{rec.H.ID}, Deadline: rec.H.Deadline})
	if err != nil {
		return
	}
	res, err := s.call(ctx, rec.H.Coord, proto.StepResolve, args)
	if err != nil {
		s.log.Debug("resolving a prepared transaction", "id", rec.H.ID, "coordinator", rec.H.Coord, "err", err)
		return
	}
	if res.Status != proto.Done && res.Status != proto.Aborted {
		return
	}
	fargs, err := proto.Encode(proto.Finish{ID: rec.H.ID, Commit: res.Status == proto.Done, Deadline: rec.H.Deadline})
	if err != nil {
		return
	}
	if _, err := s.call(ctx, part, proto.StepFinish, fargs); err != nil {
		s.log.Debug("finishing a prepared transaction", "id", rec.H.ID, "err", err)
		return
	}
	s.log.Info("finished a transaction its caller left prepared", "id", rec.H.ID, "partition", part, "commit", res.Status == proto.Done)
	s.mu.Lock()
	s.stats.Resolved++
	s.mu.Unlock()
}

// collect drops the decisions among ids that no participant holds
// prepared any more.
func (s *Service) collect(ctx context.Context, part int, ids []string, ents []grid.LocalEntry, prefix string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	byPart := map[int][]string{}
	parts := map[string][]int{}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	for _, e := range ents {
		id, ok := strings.CutPrefix(e.Key, prefix+proto.KindDecision)
		if !ok || !want[id] {
			continue
		}
		var d proto.Decision
		if proto.Decode(e.Value, &d) != nil {
			continue
		}
		parts[id] = d.Parts
		for _, p := range d.Parts {
			byPart[p] = append(byPart[p], id)
		}
	}
	keep := map[string]bool{}
	for p, pids := range byPart {
		args, err := proto.Encode(proto.IDs{IDs: pids})
		if err != nil {
			return
		}
		res, err := s.call(ctx, p, proto.StepHeld, args)
		if err != nil {
			for _, id := range pids {
				keep[id] = true // unknown: ask again next round
			}
			continue
		}
		for _, id := range res.IDs {
			keep[id] = true
		}
	}
	var drop []string
	for id := range parts {
		if !keep[id] {
			drop = append(drop, id)
		}
	}
	if len(drop) == 0 {
		return
	}
	args, err := proto.Encode(proto.IDs{IDs: drop})
	if err != nil {
		return
	}
	if _, err := s.call(ctx, part, proto.StepForget, args); err == nil {
		s.mu.Lock()
		s.stats.Collected += uint64(len(drop))
		s.mu.Unlock()
	}
}

// call runs a step and decodes its result.
func (s *Service) call(ctx context.Context, part int, name string, args []byte) (proto.Result, error) {
	var res proto.Result
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
