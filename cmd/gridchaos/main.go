// Command gridchaos runs real gridnode processes on 127.0.0.x, drives them
// with client workloads, injects faults, and checks the grid's promises.
//
//	go run ./cmd/gridchaos -nodes 5 -duration 60s -seed 7
//
// Workloads (docs/chaos.md): registers checked by porcupine, a set of unique
// keys, idle keys and bulk data written once before the faults, appends of
// unique tokens and counter increments (both through a client with default
// settings and no per-call deadline). The nemesis, driven by -seed, kills,
// restarts (with the same name), pauses, drains and adds members, sometimes
// without waiting for the cluster to converge, and times kills to land on
// snapshot transfers. At the end it heals everything and checks: progress
// (overall and after every fault), linearizable registers, no acknowledged
// write lost in any workload, appends applied exactly once, counters within
// their bounds, every partition writable with full backups, and every
// backup equal to its primary. It prints a one-line JSON summary and exits
// non-zero on any violation, writing the history, porcupine's visualization
// and the node logs to -out.
//
// `gridchaos failover [flags] kill|stop|netns|isolate|sets|fp ...` measures
// instead what writers see when one member fails (failover.go).
//
// `gridchaos compute [flags]` checks compute under failure (compute.go):
// map-reduce over -entries integers (default 1M) on 3 members stays exact
// while a fourth joins and one of the three is SIGKILLed in the middle of
// a call, and concurrent counter.add increments through one client lose
// and double nothing when the key's primary is SIGKILLed.
//
// `gridchaos journal [flags]` checks listeners and streams under failure
// (journal.go): a listener hears every key's committed history, and a
// consumer group every acknowledged event, while the keys' primaries are
// SIGKILLed; -rejoin measures a paused member's catch-up (tail or
// snapshot).
//
// `gridchaos process [flags]` checks exactly-once event processors under
// failure (process.go): events with unique ids flow through a two-stage
// processor chain that crosses partitions through the outbox while nodes
// are SIGKILLed and paused; every event's effect must be there exactly
// once and every projection must equal its recomputation.
//
// `gridchaos bank [flags]` checks distributed transactions under failure
// (bank.go): concurrent transfers between accounts across partitions
// (txn.Run through the client SDK), audits of every account in read-only
// transactions, and clients that die in their commit, while the primaries
// of transfers' coordinators and participants are SIGKILLed, paused and
// (with -netns) cut off mid-commit; every audit must see the opening total,
// no money may appear or vanish, and no lock or prepared record may be
// left after the heal.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Config is one chaos run.
type Config struct {
	Nodes     int           // initial members
	Backups   int           // synchronous backups
	Duration  time.Duration // how long the nemesis runs
	MinFaults int           // the nemesis runs past Duration (up to 2x) until this many faults
	Seed      uint64        // replays the same fault schedule
	Gridnode  string        // path to the gridnode binary ("" builds it)
	Out       string        // where failure artifacts go
	BasePort  int           // gossip port; rpc = +1, http = +2 on every 127.0.0.x
	Registers int
	Writers   int  // workers of the register and set workloads (half as many appenders)
	Netns     bool // one network namespace per node; adds network partitions
	Log       io.Writer
	// Profile is the gridnode processes' -profile: "lan" (default, the
	// product default) or "test" (faster failure detection).
	Profile string

	// IdleKeys are written once, spread over every partition, before the
	// faults start, and checked at the end. Default 3000.
	IdleKeys int
	// BulkMB is data written once in 16 KiB values before the faults start
	// (and checked at the end), so that filling a replica takes long enough
	// for the nemesis to kill its sender or receiver. Default 0.
	BulkMB int
	// ProgressWindow is how long after the cluster is safe again (after
	// every fault, and after the final heal) every worker must show an
	// acknowledged write (and register workers a successful read).
	// Default 5s.
	ProgressWindow time.Duration
	// MinRate is the least successes per second of run each worker must
	// reach overall (writes; reads too for register workers). Default 1.
	MinRate float64
	// NoWait is the probability that the nemesis fires its next fault
	// without waiting for the cluster to converge. Default 0.5; negative
	// means never.
	NoWait float64
	// Script lists fault kinds to inject first, in order, before the
	// seeded random choice takes over.
	Script []string
}

// Summary is the one-line result.
type Summary struct {
	Seed          uint64         `json:"seed"`
	Nodes         int            `json:"nodes"`
	Profile       string         `json:"profile"`
	Writers       int            `json:"writers"`
	Seconds       float64        `json:"seconds"`
	Ops           int            `json:"ops"`
	AckedWrites   int            `json:"acked_writes"`
	RegisterReads int            `json:"register_reads"`
	Lost          int            `json:"lost"`
	Linearizable  string         `json:"linearizable"`
	IdleKeys      int            `json:"idle_keys"`
	IdleLost      int            `json:"idle_lost"`
	IdleLosses    []string       `json:"idle_losses,omitempty"`
	BulkKeys      int            `json:"bulk_keys"`
	BulkMB        float64        `json:"bulk_mb"`
	BulkLost      int            `json:"bulk_lost"`
	AckedAppends  int            `json:"acked_appends"`
	UnknownAppend int            `json:"unknown_appends"`
	LostAppends   int            `json:"lost_appends"`
	DupTokens     int            `json:"duplicated_tokens"`
	PhantomOps    int            `json:"phantom_ops"`
	AckedIncrs    int            `json:"acked_increments"`
	CounterErrors int            `json:"counter_violations"`
	ProbeFailed   int            `json:"unwritable_partitions"`
	ProgressViol  int            `json:"progress_floor_violations"`
	MaxGapms      float64        `json:"progress_gap_max_ms"`
	Converged     bool           `json:"converged"`
	ReplicasEqual bool           `json:"replicas_equal"`
	Faults        map[string]int `json:"faults"`
	NoWaitFaults  int            `json:"faults_without_convergence"`
	FillKills     int            `json:"kills_during_fill"`
	FillMissed    int            `json:"fill_kills_missed"`
	Unconverged   int            `json:"table_regressions_after_convergence"`
	UnavailP50ms  float64        `json:"unavailability_p50_ms"`
	UnavailP99ms  float64        `json:"unavailability_p99_ms"`
	UnavailMaxms  float64        `json:"unavailability_max_ms"`
	// UnavailByKind is, per fault kind (and "rejoin"), the longest gap
	// between consecutive acknowledged writes of any writer around each
	// fault, and the writers stalled more than 0.5 s (unavail.go).
	UnavailByKind map[string]KindUnavail `json:"unavailability_by_kind"`
	Violations    []string               `json:"violations"`
	OK            bool                   `json:"ok"`
}

func main() {
	if os.Getenv(bankClientEnv) != "" {
		os.Exit(bankClientMain(os.Args[1:])) // bank_client.go: a client process of the bank mode
	}
	if len(os.Args) > 1 && os.Args[1] == "failover" {
		os.Exit(failoverMain(os.Args[2:])) // failover.go
	}
	if len(os.Args) > 1 && os.Args[1] == "compute" {
		os.Exit(computeMain(os.Args[2:])) // compute.go
	}
	if len(os.Args) > 1 && os.Args[1] == "journal" {
		os.Exit(journalMain(os.Args[2:])) // journal.go
	}
	if len(os.Args) > 1 && os.Args[1] == "bank" {
		os.Exit(bankMain(os.Args[2:])) // bank.go
	}
	if len(os.Args) > 1 && os.Args[1] == "process" {
		os.Exit(processMain(os.Args[2:])) // process.go
	}
	var cfg Config
	var script string
	flag.IntVar(&cfg.Nodes, "nodes", 5, "initial members (3 or more)")
	flag.IntVar(&cfg.Backups, "backups", 1, "synchronous backups per partition")
	flag.DurationVar(&cfg.Duration, "duration", 60*time.Second, "how long to inject faults")
	flag.Uint64Var(&cfg.Seed, "seed", uint64(time.Now().UnixNano()), "seed of the fault schedule")
	flag.StringVar(&cfg.Gridnode, "gridnode", "", "gridnode binary (default: build ./cmd/gridnode)")
	flag.StringVar(&cfg.Out, "out", "chaos-out", "directory for failure artifacts")
	flag.IntVar(&cfg.BasePort, "port", 27946, "gossip port; rpc and http use the next two, on every 127.0.0.x")
	flag.IntVar(&cfg.Registers, "registers", 8, "registers in the linearizability workload")
	flag.IntVar(&cfg.Writers, "writers", 8, "workers of the register and set workloads")
	flag.StringVar(&cfg.Profile, "profile", "lan", "gridnode -profile: lan (the product default) or test (faster failure detection)")
	flag.BoolVar(&cfg.Netns, "netns", false, "run each node in its own network namespace (root) and add network partitions to the faults")
	flag.IntVar(&cfg.IdleKeys, "idle-keys", 3000, "keys written once before the faults and checked at the end")
	flag.IntVar(&cfg.BulkMB, "bulk-mb", 32, "MiB of 16 KiB values written once before the faults (makes fills slow enough to hit)")
	flag.DurationVar(&cfg.ProgressWindow, "progress-window", 5*time.Second, "every worker must succeed within this long after the cluster is safe again")
	flag.Float64Var(&cfg.MinRate, "min-rate", 1, "least successes per second of run per worker")
	flag.Float64Var(&cfg.NoWait, "nowait", 0.5, "probability of firing the next fault without waiting for convergence (negative: never)")
	flag.StringVar(&script, "script", "", "comma-separated fault kinds to inject first (e.g. restart-chain,kill-fill-sender)")
	flag.Parse()
	if script != "" {
		cfg.Script = strings.Split(script, ",")
	}
	cfg.Log = os.Stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gridchaos:", err)
		os.Exit(2)
	}
	b, _ := json.Marshal(sum)
	fmt.Println(string(b))
	if !sum.OK {
		os.Exit(1)
	}
}

// withDefaults fills the zero fields of cfg and checks it.
func withDefaults(cfg Config) (Config, error) {
	if cfg.Nodes < 3 {
		return cfg, errors.New("-nodes must be at least 3 (automatic failover needs a raft majority)")
	}
	for _, k := range cfg.Script {
		if !isFaultKind(k) {
			return cfg, fmt.Errorf("-script: unknown fault kind %q (known: %s)", k, strings.Join(faultKinds, ", "))
		}
		if k == "partition" && !cfg.Netns {
			return cfg, errors.New("-script: partition needs -netns")
		}
	}
	switch cfg.Profile {
	case "":
		cfg.Profile = "lan"
	case "lan", "test":
	default:
		return cfg, fmt.Errorf("-profile %q: want lan or test", cfg.Profile)
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	if cfg.Registers <= 0 {
		cfg.Registers = 8
	}
	if cfg.Writers <= 0 {
		cfg.Writers = 8
	}
	if cfg.BasePort == 0 {
		cfg.BasePort = 27946
	}
	if cfg.IdleKeys == 0 {
		cfg.IdleKeys = 3000
	}
	if cfg.ProgressWindow <= 0 {
		cfg.ProgressWindow = 5 * time.Second
	}
	if cfg.MinRate == 0 {
		cfg.MinRate = 1
	}
	if cfg.NoWait == 0 {
		cfg.NoWait = 0.5
	}
	return cfg, nil
}

// Run executes one chaos run.
func Run(ctx context.Context, cfg Config) (*Summary, error) {
	cfg, err := withDefaults(cfg)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "gridchaos")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	h := &harness{
		cfg:      cfg,
		rng:      rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		t0:       time.Now(),
		dir:      dir,
		amnesiac: map[string]bool{},

		restartedAt: map[string]uint64{},
	}
	h.logf = func(format string, args ...any) {
		fmt.Fprintf(cfg.Log, "[%6.1fs] %s\n", time.Since(h.t0).Seconds(), fmt.Sprintf(format, args...))
	}
	h.bin = cfg.Gridnode
	if h.bin == "" {
		h.bin = filepath.Join(dir, "gridnode")
		out, err := exec.Command("go", "build", "-o", h.bin, "./cmd/gridnode").CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("build gridnode: %v\n%s", err, out)
		}
	}
	if cfg.Netns {
		if err := netSetup(); err != nil {
			return nil, fmt.Errorf("-netns: %w", err)
		}
		defer netTeardown()
	}
	defer httpClient.CloseIdleConnections()
	defer h.stopAll()
	for i := range cfg.Nodes {
		if err := h.start(h.slot(i)); err != nil {
			return nil, err
		}
	}
	if err := h.waitSafe(ctx, 60*time.Second); err != nil {
		h.saveLogs()
		return nil, fmt.Errorf("cluster never became safe: %w", err)
	}
	return h.run(ctx)
}
