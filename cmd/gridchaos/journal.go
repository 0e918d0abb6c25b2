package main

// The journal mode is real-process evidence for the per-partition journal
// (issue 12, docs/chaos.md "Journal under failure"):
//
//	go run ./cmd/gridchaos journal -runs 3 -seed 1
//	go run ./cmd/gridchaos journal -rejoin [-journal-records 1]
//
// Each round (seeds -seed, -seed+1, ...) gets a fresh cluster of 3
// gridnode processes with gridnode's default flags (one backup) and runs,
// at the same time and through default clients:
//
//  1. a listener workload (journal_listen.go): -writers goroutines rewrite
//     a key of their own with increasing values while a Listener (from
//     JournalEnds on even seeds, from position 1 everywhere on odd ones)
//     records what it hears; the listener is stopped and resumed once from
//     its saved Positions with a new client. Per key, what it heard must be
//     the committed history: every acknowledged value, in order, no
//     duplicate, nothing never written, a value whose write failed at most
//     once in its place, the first event "added" and every event's old
//     value the one heard before it;
//  2. a stream workload (journal_stream.go): -publishers goroutines
//     publish events with unique ids (keys spread over the partitions)
//     while a consumer group reads them; the consumer is crashed once
//     (its ctx cancelled and its client closed right after it handled an
//     event, before the batch's commit) and restarted with a new client. Every acknowledged event must be
//     consumed, at its acknowledged position, nothing refused or never
//     published consumed, each partition's events in position order, and
//     the redeliveries after a restart at most one batch per partition;
//  3. -kills SIGKILLs of the primaries of the writers' keys (the raft
//     leader and a follower in turn), each restarted under its name once
//     the cluster is safe without it (journal_kills.go).
//
// -rejoin instead measures the rejoin of a member holding -rejoin-entries
// entries after a short SIGSTOP (journal_rejoin.go).
//
// It prints a one-line JSON summary; exit status 1 on a violation, 2 if a
// round could not run. Node logs of a failed round go to -out/seed-<n>/.

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// journalConfig is one invocation of the journal mode.
type journalConfig struct {
	Runs       int           // rounds; default 1
	Seed       uint64        // round r uses Seed+r
	Writers    int           // listener workload: writers, a key each; default 8
	WritePace  time.Duration // a writer's pause between writes; default 10ms
	Publishers int           // stream workload: publishers; default 4
	Pace       time.Duration // a publisher's pause between publishes; default 5ms
	Kills      int           // SIGKILLs per round; default 4
	Down       time.Duration // how long a killed member stays down at least; default 2s
	Warm       time.Duration // writes between a safe cluster and the next kill; default 2s
	Backups    int           // default 1
	Profile    string        // gridnode -profile; "" passes none
	// JournalRecords, if positive, is passed as gridnode -journal-records.
	JournalRecords int
	// Rejoin runs the rejoin measurement instead of the workloads.
	Rejoin        bool
	RejoinEntries int           // default 1,000,000
	RejoinStop    time.Duration // how long the member is SIGSTOPped; default 3s
	Gridnode      string
	Out           string
	BasePort      int
	Log           io.Writer
}

func (c journalConfig) withDefaults() (journalConfig, error) {
	orDefault(&c.Runs, 1)
	orDefault(&c.Writers, 8)
	orDefault(&c.Publishers, 4)
	orDefault(&c.Kills, 4)
	orDefault(&c.Backups, 1)
	orDefault(&c.RejoinEntries, 1_000_000)
	orDefault(&c.BasePort, 25946)
	orDefault(&c.Pace, 5*time.Millisecond)
	orDefault(&c.WritePace, 10*time.Millisecond)
	orDefault(&c.Down, 2*time.Second)
	orDefault(&c.Warm, 2*time.Second)
	orDefault(&c.RejoinStop, 3*time.Second)
	return c, finishModeConfig("journal", c.Profile, &c.Out, &c.Log)
}

// journalSummary is the JSON the journal mode prints (one line).
type journalSummary struct {
	Date       string         `json:"date"`
	Commit     string         `json:"commit,omitempty"`
	Profile    string         `json:"profile"`
	Rounds     int            `json:"rounds"`
	Seeds      []uint64       `json:"seeds"`
	Partitions int            `json:"partitions"`
	Listener   listenTotals   `json:"listener"`
	Stream     streamTotals   `json:"stream"`
	Kills      int            `json:"kills"`
	Runs       []journalRound `json:"runs,omitempty"`
	Rejoin     *rejoinResult  `json:"rejoin,omitempty"`
	Errors     []string       `json:"errors,omitempty"`
	Violations []string       `json:"violations"`
	OK         bool           `json:"ok"`
}

// journalRound is one seed's cluster.
type journalRound struct {
	Seed          uint64        `json:"seed"`
	Listener      *listenResult `json:"listener,omitempty"`
	Stream        *streamResult `json:"stream,omitempty"`
	Kills         []killRec     `json:"kills"`
	ReplicasEqual bool          `json:"replicas_equal"`
	Seconds       float64       `json:"seconds"`
	Loadavg       string        `json:"loadavg"`
	Violations    []string      `json:"violations,omitempty"`
	Error         string        `json:"error,omitempty"`
}

// RunJournal runs cfg.Runs rounds (or the rejoin measurement), each on a
// fresh cluster.
func RunJournal(ctx context.Context, cfg journalConfig) (*journalSummary, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	profile := cfg.Profile
	if profile == "" {
		profile = "default"
	}
	sum := &journalSummary{Date: time.Now().UTC().Format(time.RFC3339), Profile: profile, Violations: []string{}}
	sum.Commit = gitCommit()
	bin, cleanup, err := gridnodeBinary(cfg.Gridnode)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	defer httpClient.CloseIdleConnections()
	if cfg.Rejoin {
		r, err := runRejoin(ctx, cfg, bin, cfg.Seed)
		sum.Rejoin = r
		sum.Seeds = []uint64{cfg.Seed}
		if err != nil {
			sum.Errors = append(sum.Errors, err.Error())
		} else {
			sum.Violations = append(sum.Violations, r.Violations...)
		}
		sum.OK = len(sum.Errors) == 0 && len(sum.Violations) == 0
		return sum, ctx.Err()
	}
	seeds, violations, errs := seedRounds(ctx, "journal", cfg.Runs, cfg.Seed, cfg.Log, func(seed uint64) (string, []string) {
		before := loadavg()
		round := runJournalRound(ctx, cfg, bin, seed, sum)
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

// startJournalCluster starts 3 members with gridnode's default flags (plus
// -profile and -journal-records if given) and waits until it is safe.
func startJournalCluster(ctx context.Context, cfg journalConfig, bin string, seed uint64, tag string) (*harness, error) {
	return startRoundCluster(ctx, roundCluster{mode: "journal", seed: seed, nodes: 3, backups: cfg.Backups, port: cfg.BasePort,
		out: filepath.Join(cfg.Out, fmt.Sprintf("%s-%d", tag, seed)), log: cfg.Log,
		args: func(*proc) []string {
			args := profileArgs(cfg.Profile)
			if cfg.JournalRecords > 0 {
				args = append(args, "-journal-records", fmt.Sprint(cfg.JournalRecords))
			}
			return args
		}}, bin)
}

// runJournalRound runs one seed on a fresh cluster and tears it down,
// keeping the node logs if anything went wrong.
func runJournalRound(ctx context.Context, cfg journalConfig, bin string, seed uint64, sum *journalSummary) (round journalRound) {
	round.Seed = seed
	t0 := time.Now()
	defer func() { round.Seconds = float64(time.Since(t0).Milliseconds()) / 1000 }()
	out := runRound(ctx, func() (*harness, error) { return startJournalCluster(ctx, cfg, bin, seed, "seed") },
		func(h *harness, partitions int, violation func(string, ...any)) error {
			sum.Partitions = partitions
			return runJournalWorkloads(ctx, h, cfg, seed, partitions, &round, violation)
		})
	round.Error, round.Violations = out.Error, append(round.Violations, out.Violations...)
	return round
}

// total fills the summary's totals from its rounds.
func (s *journalSummary) total() {
	for _, r := range s.Runs {
		s.Kills += len(r.Kills)
		if l := r.Listener; l != nil {
			s.Listener.add(l)
		}
		if st := r.Stream; st != nil {
			s.Stream.add(st)
		}
	}
}

// journalMain is `gridchaos journal [flags]`.
func journalMain(args []string) int {
	var cfg journalConfig
	fs := flag.NewFlagSet("gridchaos journal", flag.ContinueOnError)
	fs.IntVar(&cfg.Runs, "runs", 1, "rounds, each on a fresh cluster with seed -seed, -seed+1, ...")
	fs.Uint64Var(&cfg.Seed, "seed", uint64(time.Now().UnixNano()%1e6), "seed of the first round (listener start, victims, timings)")
	fs.IntVar(&cfg.Writers, "writers", 8, "listener workload: writers, each rewriting a key of its own")
	fs.DurationVar(&cfg.WritePace, "write-pace", 10*time.Millisecond, "listener workload: a writer's pause between writes (keeps a key's partition within the journal's retention across a failover)")
	fs.IntVar(&cfg.Publishers, "publishers", 4, "stream workload: concurrent publishers")
	fs.DurationVar(&cfg.Pace, "pace", 5*time.Millisecond, "stream workload: a publisher's pause between publishes")
	fs.IntVar(&cfg.Kills, "kills", 4, "SIGKILLs of the writers' keys' primaries per round (leader and follower in turn)")
	fs.DurationVar(&cfg.Down, "down", 2*time.Second, "a killed member stays down at least this long")
	fs.DurationVar(&cfg.Warm, "warm", 2*time.Second, "writes between a safe cluster and the next kill")
	fs.IntVar(&cfg.Backups, "backups", 1, "synchronous backups per partition")
	fs.StringVar(&cfg.Profile, "profile", "", "gridnode -profile (default: none, gridnode's default)")
	fs.IntVar(&cfg.JournalRecords, "journal-records", 0, "gridnode -journal-records (0: gridnode's default)")
	fs.BoolVar(&cfg.Rejoin, "rejoin", false, "measure the rejoin of a member after a short SIGSTOP instead")
	fs.IntVar(&cfg.RejoinEntries, "rejoin-entries", 1_000_000, "rejoin: entries loaded before the pause")
	fs.DurationVar(&cfg.RejoinStop, "rejoin-stop", 3*time.Second, "rejoin: how long the member is SIGSTOPped")
	fs.StringVar(&cfg.Gridnode, "gridnode", "", "gridnode binary (default: build ./cmd/gridnode)")
	fs.StringVar(&cfg.Out, "out", "journal-out", "directory for the node logs of failed rounds")
	fs.IntVar(&cfg.BasePort, "port", 25946, "gossip port; rpc and http use the next two, on every 127.0.0.x")
	if !parseModeArgs("journal", fs, args) {
		return 2
	}
	cfg.Log = os.Stderr
	return runMode("journal", func(ctx context.Context) (*journalSummary, error) { return RunJournal(ctx, cfg) },
		func(s *journalSummary) (bool, bool) { return len(s.Violations) > 0, s.OK })
}
