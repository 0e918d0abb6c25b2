package main

// The process mode is real-process evidence for exactly-once event
// processors (package process, docs/chaos.md "Exactly-once processors
// under failure"):
//
//	go run ./cmd/gridchaos process -runs 3 -seed 1
//
// Each round (seeds -seed, -seed+1, ...) gets a fresh cluster of -nodes
// (3) gridnode processes with gridnode's default flags (one backup) plus
// -processors chain: the two-stage chain of process/builtin, whose first
// stage counts each input event in its own partition and emits it through
// the outbox to its bucket's partition, where the second stage counts it
// again and adds its amount to the bucket's projection. Then:
//
//  1. publishers (process_publish.go) publish -events events with unique
//     ids through a default client (client.Publish of builtin.InKey(id),
//     builtin.Value(id, bucket, amount)) with a -publish-timeout deadline
//     per call (one that runs out leaves the outcome unknown), over
//     -buckets buckets; the last -idle-buckets buckets get events only in
//     the first tenth and the last fiftieth of the events (their
//     partitions' stage 2 sits idle through the faults, then must wake
//     up);
//  2. the faults (process_faults.go, -faults) land while they publish and
//     while the processors work off their backlog: SIGKILLs (each victim
//     restarted under its name with the same flags) and SIGSTOP/SIGCONT
//     pauses, including a node with a large backlog right after a burst
//     of publishes, the primary of a hot stage-2 partition in the middle
//     of its batches (alone, or with the node sharing its partitions
//     SIGKILLed during the pause), and a node killed again right after its
//     restart;
//  3. after the heal (every node running, the cluster safe) the processors
//     drain: the harness polls their lag and the stage maps' sizes until
//     they are stable or -drain passes; then it reads every event's counts
//     at both stages, every bucket's projection and every partition's
//     dead letters, and checks (process_check.go): an acknowledged event
//     counted exactly once at both stages, an event of unknown outcome
//     (client.ErrTimeout and the like) 0 or 1 times and the same at both,
//     a refused one (ErrUnavailable, ErrStreamFull, never acknowledged on
//     retry) never, nothing counted that was never published, every
//     projection equal to the sum of the amounts its stage 2 counted,
//     no dead letters, every backup equal to its primary.
//
// It prints a one-line JSON summary; exit status 1 on a violation (also
// when nothing was acknowledged or fewer than -min-through of the events
// went through both stages), 2 if a round could not run. Node logs of a
// failed round go to -out/seed-<n>/.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// processConfig is one invocation of the process mode.
type processConfig struct {
	Runs        int           // rounds; default 1
	Seed        uint64        // round r uses Seed+r
	Nodes       int           // gridnode processes; default 3
	Events      int           // events published per round; default 6000
	Buckets     int           // stage-2 buckets (projections); default 16
	IdleBuckets int           // buckets that get events only at the start and the end; default 4 (negative: none)
	Publishers  int           // concurrent publishers; default 4
	Pace        time.Duration // a publisher's pause between publishes (none in a burst); default 10ms
	// PublishTimeout is each publish call's deadline (an expired one leaves
	// the event's outcome unknown); default 1s, negative: none (the
	// client's RequestTimeout, 10 s, applies).
	PublishTimeout time.Duration
	Faults         []string      // fault kinds in order; default processFaultsDefault
	Down           time.Duration // how long a killed node stays down at least; default 1s
	Drain          time.Duration // how long the processors may take to drain after the heal; default 3m
	MinThrough     float64       // least fraction of the events that must go through both stages; default 0.5
	Backups        int           // default 1
	Profile        string        // gridnode -profile; "" passes none (gridnode's default)
	LogLevel       string        // gridnode -log-level; "" keeps the harness' info
	KeepLogs       bool          // keep the node logs of every round, not only of failed ones
	// Canary, after a round's check, publishes its first acknowledged
	// event once more (the same id) and wants the check to find exactly
	// that duplicate: evidence that the read-back sees a real duplicate.
	Canary   bool
	Gridnode string
	Out      string
	BasePort int
	Log      io.Writer
}

// processFaultsDefault is the long run's fault script: each kind but the
// plain kill once, then kill-backlog again.
var processFaultsDefault = []string{"kill-backlog", "pause-busy", "kill-rejoined", "restart-kill", "stop-kill", "pause", "kill-backlog"}

func (c processConfig) withDefaults() (processConfig, error) {
	orDefault(&c.Runs, 1)
	orDefault(&c.Nodes, 3)
	orDefault(&c.Events, 6000)
	orDefault(&c.Buckets, 16)
	orDefault(&c.Publishers, 4)
	orDefault(&c.Backups, 1)
	orDefault(&c.BasePort, 28946)
	switch {
	case c.IdleBuckets == 0:
		c.IdleBuckets = 4
	case c.IdleBuckets < 0:
		c.IdleBuckets = 0
	}
	if c.Pace == 0 {
		c.Pace = 10 * time.Millisecond
	}
	switch {
	case c.PublishTimeout == 0:
		c.PublishTimeout = time.Second
	case c.PublishTimeout < 0:
		c.PublishTimeout = 0
	}
	if c.Down <= 0 {
		c.Down = time.Second
	}
	if c.Drain <= 0 {
		c.Drain = 3 * time.Minute
	}
	if c.MinThrough <= 0 {
		c.MinThrough = 0.5
	}
	if c.Faults == nil {
		c.Faults = processFaultsDefault
	}
	switch {
	case c.Nodes < 3:
		return c, errors.New("process: -nodes must be at least 3 (failover needs a raft majority)")
	case c.IdleBuckets < 0 || c.IdleBuckets >= c.Buckets:
		return c, fmt.Errorf("process: -idle-buckets %d must leave at least one of -buckets %d busy", c.IdleBuckets, c.Buckets)
	case c.Events < 10*c.Buckets:
		return c, fmt.Errorf("process: -events %d: at least 10 per bucket (%d)", c.Events, 10*c.Buckets)
	case c.MinThrough > 1:
		return c, fmt.Errorf("process: -min-through %v must be at most 1", c.MinThrough)
	}
	for _, k := range c.Faults {
		if !isProcessFault(k) {
			return c, fmt.Errorf("process: unknown fault %q (known: %s)", k, strings.Join(processFaultKinds, ", "))
		}
	}
	return c, finishModeConfig("process", c.Profile, &c.Out, &c.Log)
}

// processSummary is the JSON the process mode prints (one line). The
// totals add up the rounds.
type processSummary struct {
	Date       string   `json:"date"`
	Commit     string   `json:"commit,omitempty"`
	Profile    string   `json:"profile"`
	Rounds     int      `json:"rounds"`
	Seeds      []uint64 `json:"seeds"`
	Partitions int      `json:"partitions"`
	chainTotals
	Runs       []processRound `json:"runs"`
	Errors     []string       `json:"errors,omitempty"`
	Violations []string       `json:"violations"`
	OK         bool           `json:"ok"`
}

// chainTotals are the figures the issue asks for, per round and in total.
type chainTotals struct {
	Events       int `json:"events"`
	Acknowledged int `json:"acknowledged"`
	Unknown      int `json:"unknown"`
	Refused      int `json:"refused"`
	// Through: events counted exactly once at both stages.
	Through      int     `json:"through"`
	Lost         int     `json:"lost"`
	Duplicated   int     `json:"duplicated"`
	Phantoms     int     `json:"phantoms"`
	ProjMismatch int     `json:"projection_mismatches"`
	DeadLetters  int     `json:"dead_letters"`
	Kills        int     `json:"kills"`
	Pauses       int     `json:"pauses"`
	Seconds      float64 `json:"duration_s"`
	// PerSecond: events through both stages per second, from the first
	// publish until the processors drained.
	PerSecond float64 `json:"processed_per_s"`
}

func (t *chainTotals) add(r *chainTotals) {
	t.Events += r.Events
	t.Acknowledged += r.Acknowledged
	t.Unknown += r.Unknown
	t.Refused += r.Refused
	t.Through += r.Through
	t.Lost += r.Lost
	t.Duplicated += r.Duplicated
	t.Phantoms += r.Phantoms
	t.ProjMismatch += r.ProjMismatch
	t.DeadLetters += r.DeadLetters
	t.Kills += r.Kills
	t.Pauses += r.Pauses
	t.Seconds = math.Round((t.Seconds+r.Seconds)*1000) / 1000
	if t.Seconds > 0 {
		t.PerSecond = float64(int(float64(t.Through)/t.Seconds*10)) / 10
	}
}

// processRound is one seed's cluster.
type processRound struct {
	Seed uint64 `json:"seed"`
	chainTotals
	// PublishErrors counts failed publish attempts by kind (a refused one
	// is retried with the same id).
	PublishErrors map[string]int `json:"publish_errors"`
	Faults        []chainFault   `json:"faults"`
	// DrainMs: from the heal until the processors were drained (or gave
	// up); Drained says which.
	DrainMs       float64  `json:"drain_ms"`
	Drained       bool     `json:"drained"`
	ReplicasEqual bool     `json:"replicas_equal"`
	Canary        string   `json:"canary,omitempty"`   // "detected", or what the check saw instead
	Examples      []string `json:"examples,omitempty"` // the first events that went wrong
	Loadavg       string   `json:"loadavg"`
	Violations    []string `json:"violations,omitempty"`
	Error         string   `json:"error,omitempty"`
}

// RunProcess runs cfg.Runs rounds, each on a fresh cluster. A round that
// cannot run records its error and the next one runs.
func RunProcess(ctx context.Context, cfg processConfig) (*processSummary, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	profile := cfg.Profile
	if profile == "" {
		profile = "default"
	}
	sum := &processSummary{Date: time.Now().UTC().Format(time.RFC3339), Profile: profile, Runs: []processRound{}, Violations: []string{}}
	sum.Commit = gitCommit()
	bin, cleanup, err := gridnodeBinary(cfg.Gridnode)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	defer httpClient.CloseIdleConnections()
	seeds, violations, errs := seedRounds(ctx, "process", cfg.Runs, cfg.Seed, cfg.Log, func(seed uint64) (string, []string) {
		before := loadavg()
		round := runProcessRound(ctx, cfg, bin, seed, sum)
		round.Loadavg = before + " -> " + loadavg()
		sum.Runs = append(sum.Runs, round)
		return round.Error, round.Violations
	})
	sum.Seeds, sum.Rounds = seeds, len(seeds)
	sum.Violations, sum.Errors = append(sum.Violations, violations...), append(sum.Errors, errs...)
	for i := range sum.Runs {
		sum.chainTotals.add(&sum.Runs[i].chainTotals)
	}
	sum.OK = len(sum.Violations) == 0 && len(sum.Errors) == 0 && sum.Rounds == cfg.Runs
	return sum, ctx.Err()
}

// runProcessRound runs one seed on a fresh cluster and tears it down,
// keeping the node logs under Out/seed-<seed> if anything went wrong.
func runProcessRound(ctx context.Context, cfg processConfig, bin string, seed uint64, sum *processSummary) (round processRound) {
	round.Seed = seed
	round.PublishErrors = map[string]int{}
	out := runRound(ctx, func() (*harness, error) { return startProcessCluster(ctx, cfg, bin, seed) },
		func(h *harness, partitions int, violation func(string, ...any)) error {
			sum.Partitions = partitions
			if cfg.KeepLogs {
				defer h.saveLogs()
			}
			return runChain(ctx, h, cfg, seed, partitions, &round, violation)
		})
	round.Error, round.Violations = out.Error, append(round.Violations, out.Violations...)
	return round
}

// startProcessCluster starts cfg.Nodes members with gridnode's default
// flags plus -processors chain (and -profile, -log-level if given) and
// waits until the cluster is safe. A restart uses the same flags.
func startProcessCluster(ctx context.Context, cfg processConfig, bin string, seed uint64) (*harness, error) {
	return startRoundCluster(ctx, roundCluster{mode: "process", seed: seed, nodes: cfg.Nodes, backups: cfg.Backups, port: cfg.BasePort,
		out: filepath.Join(cfg.Out, fmt.Sprintf("seed-%d", seed)), log: cfg.Log,
		args: func(*proc) []string {
			args := append([]string{"-processors", "chain"}, profileArgs(cfg.Profile)...)
			if cfg.LogLevel != "" {
				args = append(args, "-log-level", cfg.LogLevel)
			}
			return args
		}}, bin)
}

// processMain is `gridchaos process [flags]`.
func processMain(args []string) int {
	var cfg processConfig
	var faults string
	fs := flag.NewFlagSet("gridchaos process", flag.ContinueOnError)
	fs.IntVar(&cfg.Runs, "runs", 1, "rounds, each on a fresh cluster with seed -seed, -seed+1, ...")
	fs.Uint64Var(&cfg.Seed, "seed", uint64(time.Now().UnixNano()%1e6), "seed of the first round (amounts, victims, timings)")
	fs.IntVar(&cfg.Nodes, "nodes", 3, "gridnode processes")
	fs.IntVar(&cfg.Events, "events", 6000, "events published per round, each with a unique id")
	fs.IntVar(&cfg.Buckets, "buckets", 16, "stage-2 buckets (projections shared by many events)")
	fs.IntVar(&cfg.IdleBuckets, "idle-buckets", 4, "buckets that get events only at the start and the end (negative: none)")
	fs.IntVar(&cfg.Publishers, "publishers", 4, "concurrent publishers")
	fs.DurationVar(&cfg.Pace, "pace", 10*time.Millisecond, "a publisher's pause between publishes (none during a burst)")
	fs.DurationVar(&cfg.PublishTimeout, "publish-timeout", time.Second, "each publish call's deadline; an expired one leaves the event's outcome unknown (negative: none, the client's 10 s)")
	fs.StringVar(&faults, "faults", strings.Join(processFaultsDefault, ","), "fault kinds in order ("+strings.Join(processFaultKinds, ", ")+")")
	fs.DurationVar(&cfg.Down, "down", time.Second, "a killed node stays down at least this long")
	fs.DurationVar(&cfg.Drain, "drain", 3*time.Minute, "how long the processors may take to drain after the heal")
	fs.Float64Var(&cfg.MinThrough, "min-through", 0.5, "least fraction of the events that must go through both stages")
	fs.IntVar(&cfg.Backups, "backups", 1, "synchronous backups per partition")
	fs.StringVar(&cfg.Profile, "profile", "", "gridnode -profile (default: none, gridnode's default)")
	fs.StringVar(&cfg.LogLevel, "log-level", "", "gridnode -log-level (default: info; debug logs why processor runs end)")
	fs.BoolVar(&cfg.KeepLogs, "keep-logs", false, "keep the node logs of every round in -out/seed-<n>/, not only of failed ones")
	fs.StringVar(&cfg.Gridnode, "gridnode", "", "gridnode binary (default: build ./cmd/gridnode)")
	fs.StringVar(&cfg.Out, "out", "process-out", "directory for the node logs of failed rounds")
	fs.IntVar(&cfg.BasePort, "port", 28946, "gossip port; rpc and http use the next two, on every 127.0.0.x")
	if !parseModeArgs("process", fs, args) {
		return 2
	}
	cfg.Faults = []string{}
	for _, k := range strings.Split(faults, ",") {
		if k = strings.TrimSpace(k); k != "" {
			cfg.Faults = append(cfg.Faults, k)
		}
	}
	cfg.Log = os.Stderr
	return runMode("process", func(ctx context.Context) (*processSummary, error) { return RunProcess(ctx, cfg) },
		func(s *processSummary) (bool, bool) { return len(s.Violations) > 0, s.OK })
}
