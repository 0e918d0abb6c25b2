package main

// The compute mode is real-process evidence for compute (issue 11,
// docs/chaos.md "Compute under failure"):
//
//	go run ./cmd/gridchaos compute -runs 3 -seed 1
//
// Each round (seeds -seed, -seed+1, ...) gets a fresh cluster of 3
// gridnode processes with gridnode's default flags (no -profile unless
// given, one backup) and:
//
//  1. loads -entries decimal integers, drawn from the seed, into a map
//     through one client (PutAll batches), so the exact count, sum, min and
//     max are known (for the whole map and for the keys with prefix "a:");
//  2. runs the agg.map aggregation back to back through a default client
//     (every third call with the key.prefix filter), each call under a
//     generous -call-timeout, while a fourth member joins in the middle of
//     a call and one of the original members (the raft leader on even
//     seeds, a follower on odd ones) is SIGKILLed a seeded fraction into a
//     call; every successful answer must be exact, at least one call
//     started after both faults must succeed exactly, and after the victim
//     is restarted (same name) one more call must be exact (compute_mr.go);
//  3. runs -workers concurrent counter.add increments of one key through
//     one default client, SIGKILLs the key's primary after a third of them,
//     and checks the final value against the acknowledged increments
//     (compute_counter.go).
//
// It prints a one-line JSON summary; exit status 1 on a violation, 2 if a
// round could not run. Node logs of a failed round go to -out/seed-<n>/.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// computeConfig is one invocation of the compute mode.
type computeConfig struct {
	Runs        int           // rounds; default 1
	Seed        uint64        // round r uses Seed+r
	Entries     int           // integers in the map-reduce map; default 1,000,000
	Batch       int           // entries per PutAll; default 5000
	Backups     int           // synchronous backups; default 1
	Profile     string        // gridnode -profile; "" passes none (gridnode's default)
	Workers     int           // counter workers; default 16
	Increments  int           // acknowledged increments per counter worker; default 250
	CallTimeout time.Duration // ctx deadline of one map-reduce call; default 2m
	Gridnode    string        // binary ("" builds ./cmd/gridnode)
	Out         string        // node logs of failed rounds, one directory per seed
	BasePort    int           // gossip port; rpc +1, http +2
	Log         io.Writer
}

func (c computeConfig) withDefaults() (computeConfig, error) {
	orDefault(&c.Runs, 1)
	orDefault(&c.Entries, 1_000_000)
	orDefault(&c.Batch, 5000)
	orDefault(&c.Backups, 1)
	orDefault(&c.Workers, 16)
	orDefault(&c.Increments, 250)
	orDefault(&c.BasePort, 31946)
	if c.CallTimeout <= 0 {
		c.CallTimeout = 2 * time.Minute
	}
	if c.Entries < 4 {
		return c, errors.New("compute: -entries must be at least 4")
	}
	return c, finishModeConfig("compute", c.Profile, &c.Out, &c.Log)
}

// computeSummary is the JSON the compute mode prints (one line).
type computeSummary struct {
	Date       string         `json:"date"`
	Commit     string         `json:"commit,omitempty"`
	Profile    string         `json:"profile"`
	Rounds     int            `json:"rounds"`
	Seeds      []uint64       `json:"seeds"`
	Entries    int            `json:"entries"`
	Partitions int            `json:"partitions"`
	MapReduce  mrTotals       `json:"mapreduce"`
	Counter    counterTotals  `json:"counter"`
	Runs       []computeRound `json:"runs"`
	Errors     []string       `json:"errors,omitempty"` // rounds that could not run to the end
	Violations []string       `json:"violations"`
	OK         bool           `json:"ok"`
}

// mrTotals adds up the rounds' map-reduce phases.
type mrTotals struct {
	Calls  int            `json:"calls"`
	Exact  int            `json:"exact"`
	Wrong  int            `json:"wrong"`
	Errors map[string]int `json:"errors"`
	// LatencyMs: every exact call; BaselineMs: the exact calls before the
	// join; KillCallMs: per round, the call the kill landed in.
	LatencyMs  dist `json:"latency_ms"`
	BaselineMs dist `json:"baseline_ms"`
	KillCallMs dist `json:"kill_call_ms"`
	// RecoveredMs: per round, from the kill to the end of the first exact
	// call started after it.
	RecoveredMs dist `json:"recovered_ms"`
}

// counterTotals adds up the rounds' counter phases.
type counterTotals struct {
	Workers   int            `json:"workers"`
	PerWorker int            `json:"increments_per_worker"`
	Acked     int64          `json:"acked"`
	Final     int64          `json:"final"`
	Unknown   int            `json:"unknown"`
	Errors    map[string]int `json:"errors"`
	// Retried sums grid_dedup_replays_total over the members (retries
	// answered from a remembered result); nil if no member exports it.
	Retried *float64 `json:"retried"`
	// WaitedFailover: acknowledged calls that waited for the failover
	// (counterRound.WaitedFailover).
	WaitedFailover int  `json:"calls_waited_failover"`
	LatencyMs      dist `json:"latency_ms"`
}

// computeRound is one seed's cluster.
type computeRound struct {
	Seed       uint64        `json:"seed"`
	LoadS      float64       `json:"load_s"`
	Expect     expectation   `json:"expect"`
	MapReduce  *mrRound      `json:"mapreduce,omitempty"`
	Counter    *counterRound `json:"counter,omitempty"`
	Loadavg    string        `json:"loadavg"`
	Violations []string      `json:"violations,omitempty"`
	Error      string        `json:"error,omitempty"`
}

// RunCompute runs cfg.Runs rounds, each on a fresh cluster. A round that
// cannot run records its error and the next one runs.
func RunCompute(ctx context.Context, cfg computeConfig) (*computeSummary, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	profile := cfg.Profile
	if profile == "" {
		profile = "default"
	}
	sum := &computeSummary{Date: time.Now().UTC().Format(time.RFC3339), Profile: profile, Entries: cfg.Entries,
		MapReduce:  mrTotals{Errors: map[string]int{}},
		Counter:    counterTotals{Workers: cfg.Workers, PerWorker: cfg.Increments, Errors: map[string]int{}},
		Violations: []string{}}
	sum.Commit = gitCommit()
	bin, cleanup, err := gridnodeBinary(cfg.Gridnode)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	defer httpClient.CloseIdleConnections()
	seeds, violations, errs := seedRounds(ctx, "compute", cfg.Runs, cfg.Seed, cfg.Log, func(seed uint64) (string, []string) {
		before := loadavg()
		round := runComputeRound(ctx, cfg, bin, seed, sum)
		round.Loadavg = before + " -> " + loadavg()
		sum.Runs = append(sum.Runs, round)
		return round.Error, round.Violations
	})
	sum.Seeds, sum.Rounds = seeds, len(seeds)
	sum.Violations, sum.Errors = append(sum.Violations, violations...), append(sum.Errors, errs...)
	sum.total()
	sum.OK = len(sum.Violations) == 0 && len(sum.Errors) == 0 && sum.Rounds == cfg.Runs
	return sum, ctx.Err()
}

// runComputeRound runs one seed on a fresh cluster and tears it down,
// keeping the node logs under Out/seed-<seed> if anything went wrong.
func runComputeRound(ctx context.Context, cfg computeConfig, bin string, seed uint64, sum *computeSummary) (round computeRound) {
	round.Seed = seed
	out := runRound(ctx, func() (*harness, error) { return startComputeCluster(ctx, cfg, bin, seed) },
		func(h *harness, partitions int, violation func(string, ...any)) error {
			sum.Partitions = partitions
			return computeRoundBody(ctx, h, cfg, seed, &round, violation)
		})
	round.Error, round.Violations = out.Error, append(round.Violations, out.Violations...)
	return round
}

// computeRoundBody loads the data, then runs the map-reduce and counter
// phases.
func computeRoundBody(ctx context.Context, h *harness, cfg computeConfig, seed uint64, round *computeRound, violation func(string, ...any)) error {
	data := newMRData(seed, cfg.Entries)
	round.Expect = data.all
	t0 := time.Now()
	if err := loadMRData(ctx, h, data, cfg.Batch); err != nil {
		return err
	}
	round.LoadS = float64(time.Since(t0).Milliseconds()) / 1000
	h.logf("loaded %d entries in %.1f s: count %d sum %d (prefix %q: count %d sum %d)",
		cfg.Entries, round.LoadS, data.all.Count, data.all.Sum, mrPrefix, data.prefix.Count, data.prefix.Sum)
	violations := 0
	record := func(format string, args ...any) { violations++; violation(format, args...) }
	mr, err := runMRPhase(ctx, h, cfg, seed, data, record)
	round.MapReduce = mr
	if err != nil {
		return fmt.Errorf("map-reduce: %w", err)
	}
	if violations > 0 {
		return nil // the cluster may be broken: the counter phase would say nothing new
	}
	cr, err := runCounterPhase(ctx, h, cfg, record)
	round.Counter = cr
	if err != nil {
		return fmt.Errorf("counter: %w", err)
	}
	return nil
}

// startComputeCluster starts 3 members with gridnode's default flags
// (and -profile if given) and waits until the cluster is safe.
func startComputeCluster(ctx context.Context, cfg computeConfig, bin string, seed uint64) (*harness, error) {
	return startRoundCluster(ctx, roundCluster{mode: "compute", seed: seed, nodes: 3, backups: cfg.Backups, port: cfg.BasePort,
		out: filepath.Join(cfg.Out, fmt.Sprintf("seed-%d", seed)), log: cfg.Log,
		args: func(*proc) []string { return profileArgs(cfg.Profile) }}, bin)
}

// total fills the summary's totals from its rounds.
func (s *computeSummary) total() {
	var lat, base, kill, rec, clat []float64
	for _, r := range s.Runs {
		if mr := r.MapReduce; mr != nil {
			s.MapReduce.Calls += mr.Calls
			s.MapReduce.Exact += mr.Exact
			s.MapReduce.Wrong += mr.Wrong
			for k, n := range mr.Errors {
				s.MapReduce.Errors[k] += n
			}
			lat = append(lat, mr.latencies...)
			base = append(base, mr.baseline...)
			if mr.KillCall != nil && mr.KillCall.Outcome == "exact" {
				kill = append(kill, mr.KillCall.LatencyMs)
			}
			if mr.RecoveredMs > 0 {
				rec = append(rec, mr.RecoveredMs)
			}
		}
		if c := r.Counter; c != nil {
			s.Counter.Acked += c.Acked
			s.Counter.Final += c.Final
			s.Counter.Unknown += c.Unknown
			s.Counter.WaitedFailover += c.WaitedFailover
			for k, n := range c.Errors {
				s.Counter.Errors[k] += n
			}
			if c.Retried != nil {
				if s.Counter.Retried == nil {
					s.Counter.Retried = new(float64)
				}
				*s.Counter.Retried += *c.Retried
			}
			clat = append(clat, c.latencies...)
		}
	}
	s.MapReduce.LatencyMs, s.MapReduce.BaselineMs = distOf(lat), distOf(base)
	s.MapReduce.KillCallMs, s.MapReduce.RecoveredMs = distOf(kill), distOf(rec)
	s.Counter.LatencyMs = distOf(clat)
}

// computeMain is `gridchaos compute [flags]`.
func computeMain(args []string) int {
	var cfg computeConfig
	fs := flag.NewFlagSet("gridchaos compute", flag.ContinueOnError)
	fs.IntVar(&cfg.Runs, "runs", 1, "rounds, each on a fresh cluster with seed -seed, -seed+1, ...")
	fs.Uint64Var(&cfg.Seed, "seed", uint64(time.Now().UnixNano()%1e6), "seed of the first round (values, victims, timings)")
	fs.IntVar(&cfg.Entries, "entries", 1_000_000, "integer entries in the map-reduce map")
	fs.IntVar(&cfg.Batch, "batch", 5000, "entries per PutAll while loading")
	fs.IntVar(&cfg.Backups, "backups", 1, "synchronous backups per partition")
	fs.StringVar(&cfg.Profile, "profile", "", "gridnode -profile (default: none, gridnode's default)")
	fs.IntVar(&cfg.Workers, "workers", 16, "concurrent counter workers")
	fs.IntVar(&cfg.Increments, "increments", 250, "acknowledged increments per counter worker")
	fs.DurationVar(&cfg.CallTimeout, "call-timeout", 2*time.Minute, "ctx deadline of one map-reduce call")
	fs.StringVar(&cfg.Gridnode, "gridnode", "", "gridnode binary (default: build ./cmd/gridnode)")
	fs.StringVar(&cfg.Out, "out", "compute-out", "directory for the node logs of failed rounds")
	fs.IntVar(&cfg.BasePort, "port", 31946, "gossip port; rpc and http use the next two, on every 127.0.0.x")
	if !parseModeArgs("compute", fs, args) {
		return 2
	}
	cfg.Log = os.Stderr
	return runMode("compute", func(ctx context.Context) (*computeSummary, error) { return RunCompute(ctx, cfg) },
		func(s *computeSummary) (bool, bool) { return len(s.Violations) > 0, s.OK })
}
