package main

// The bank mode is real-process evidence for distributed transactions
// (package txn, issue 14; docs/chaos.md "Transactions under failure"):
//
//	go run ./cmd/gridchaos bank -runs 3 -seed 1
//	go run ./cmd/gridchaos bank -netns -runs 3 -seed 1   # root: adds network partitions
//
// Each round (seeds -seed, -seed+1, ...) gets a fresh cluster of -nodes (3)
// gridnode processes with gridnode's default flags (one backup; every
// gridnode runs the transaction service). Then (bank_work.go):
//
//  1. -accounts accounts (64) are opened with -balance (100) each, through
//     a client: most spread over the partitions by their names, -pairs
//     pairs sharing an affinity key ({pair-j}a, {pair-j}b), and the last
//     -idle accounts touched only before the faults and after the heal
//     (their partitions sit idle through the faults, then must serve);
//  2. -writers goroutines over -clients client connections run txn.Run
//     transfers between random accounts (a pair's two accounts in a
//     quarter of them: one partition, the one-phase path; otherwise
//     across partitions: two-phase commit): read both, move 1..60 only if
//     the source stays >= 0, and write a ledger entry next to each account
//     (map bankledger, key {account's tag}L/<transfer>/out|in) in the same
//     transaction. Each transfer is counted committed, declined (committed
//     without moving money), aborted (an error that promises nothing was
//     applied) or unknown (txn.ErrUnknown);
//  3. -auditors goroutines run read-only transactions over every account:
//     a committed one must see exactly the opening total and no negative
//     balance;
//  4. an abandoner, every -abandon-every, runs a transfer through a
//     connection of its own and dies in its commit: either right after its
//     prepares (the commit step is never sent: it must apply nothing) or
//     with the commit step in flight (outcome unknown); its ctx is
//     cancelled and its connection closed, so only recovery can release
//     its locks;
//  5. the faults (bank_faults.go, -faults) land while they run: SIGKILLs
//     (restarts under the same name), SIGSTOP/SIGCONT pauses, and with
//     -netns network partitions; kill-coordinator, kill-participant and
//     pause-coordinator stop a transfer between its prepares and its
//     commit step (or between the commit and the finishes) and hit the
//     primary of its coordinator or of a prepared participant right then.
//
// After the heal (every node running, the cluster safe) the transfers must
// commit again; then the load stops, and (bank_check.go) every partition's
// primary must hold no lock and no prepared record within -drain (GET
// /v1/transactions; what is left is in doubt), a final read-only
// transaction must see the opening total, no balance may be negative, no
// committed transfer may be missing its ledger entries, no aborted one may
// have any, no transfer may have only one, every balance must equal its
// opening plus its ledger, and every backup must equal its primary.
//
// It prints a one-line JSON summary; exit status 1 on a violation, 2 if a
// round could not run. Node logs of a failed round go to -out/seed-<n>/.

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

// bankConfig is one invocation of the bank mode.
type bankConfig struct {
	Runs     int    // rounds; default 1
	Seed     uint64 // round r uses Seed+r
	Nodes    int    // gridnode processes; default 3
	Backups  int    // default 1
	Accounts int    // default 64
	Pairs    int    // account pairs sharing an affinity key; default 8
	Idle     int    // accounts untouched during the faults; default 4 (negative: none)
	Balance  int    // opening balance of every account; default 100
	Writers  int    // transfer goroutines; default 8
	Clients  int    // client connections the writers share; default 4
	Auditors int    // default 2
	// AuditPatience: an audit that did not commit after this many
	// attempts holds the writers (no new transfer) until it ends;
	// default 10, negative: never.
	AuditPatience int
	// AuditLocking: audits run with txn.Options.Locking (each Get locks
	// its account at once: an audit is not starved by the transfers, and
	// rarely needs its patience).
	AuditLocking bool
	// Pace is a writer's pause between transfers (default 2ms), AuditPace
	// an auditor's between audits (default 50ms).
	Pace, AuditPace time.Duration
	// AbandonEvery: one abandoned transfer per this period (default 5s;
	// negative: none). Its locks stay until recovery, Timeout+2s: every
	// transfer touching its accounts waits that long.
	AbandonEvery time.Duration
	// TransferTimeout bounds one transfer's txn.Run, retries included
	// (default 30s); TxnTimeout is each attempt's txn.Options.Timeout (0:
	// txn's default, 5s).
	TransferTimeout, TxnTimeout time.Duration
	Faults                      []string      // in order; default bankFaultsDefault (+ partition with Netns)
	Load                        time.Duration // load before the first fault and between faults, at least; default 2s
	Settle                      time.Duration // load after the heal; default 3s
	Drain                       time.Duration // how long locks and prepared records may take to go after the load stops; default 60s
	// Collect also waits (up to Drain past the decisions' keep time) until
	// every decision was collected.
	Collect  bool
	Netns    bool
	Profile  string // gridnode -profile; "" passes none (gridnode's default)
	KeepLogs bool
	Gridnode string
	Out      string
	BasePort int
	Log      io.Writer
}

// bankFaultsDefault is the long run's fault script.
var bankFaultsDefault = []string{"kill-coordinator", "pause", "kill-participant", "restart-now", "pause-coordinator", "abandon-kill",
	"kill-client", "kill-client-mid", "kill"}

func (c bankConfig) withDefaults() (bankConfig, error) {
	orDefault(&c.Runs, 1)
	orDefault(&c.Nodes, 3)
	orDefault(&c.Backups, 1)
	orDefault(&c.Accounts, 64)
	orDefault(&c.Pairs, 8)
	orDefault(&c.Balance, 100)
	orDefault(&c.Writers, 8)
	orDefault(&c.Clients, 4)
	orDefault(&c.Auditors, 2)
	orDefault(&c.Pace, 2*time.Millisecond)
	orDefault(&c.AuditPace, 50*time.Millisecond)
	orDefault(&c.TransferTimeout, 30*time.Second)
	orDefault(&c.Load, 2*time.Second)
	orDefault(&c.Settle, 3*time.Second)
	orDefault(&c.Drain, 60*time.Second)
	orDefault(&c.BasePort, 30946)
	switch {
	case c.AuditPatience == 0:
		c.AuditPatience = 10
	case c.AuditPatience < 0:
		c.AuditPatience = math.MaxInt
	}
	switch {
	case c.Idle == 0:
		c.Idle = 4
	case c.Idle < 0:
		c.Idle = 0
	}
	switch {
	case c.AbandonEvery == 0:
		c.AbandonEvery = 5 * time.Second
	case c.AbandonEvery < 0:
		c.AbandonEvery = 0
	}
	if c.Faults == nil {
		c.Faults = bankFaultsDefault
		if c.Netns {
			c.Faults = append(append([]string{}, c.Faults...), "partition", "partition-coordinator")
		}
	}
	switch {
	case c.Nodes < 3:
		return c, errors.New("bank: -nodes must be at least 3 (failover needs a raft majority)")
	case c.Accounts < 2*c.Pairs+c.Idle+2:
		return c, fmt.Errorf("bank: -accounts %d: need at least 2 per pair (%d), the idle ones (%d) and 2 more", c.Accounts, c.Pairs, c.Idle)
	case c.Clients > c.Writers:
		c.Clients = c.Writers
	}
	for _, k := range c.Faults {
		if !isBankFault(k) {
			return c, fmt.Errorf("bank: unknown fault %q (known: %s)", k, strings.Join(bankFaultKinds, ", "))
		}
		if strings.HasPrefix(k, "partition") && !c.Netns {
			return c, fmt.Errorf("bank: fault %s needs -netns", k)
		}
	}
	return c, finishModeConfig("bank", c.Profile, &c.Out, &c.Log)
}

// bankSummary is the JSON the bank mode prints (one line). The totals add
// up the rounds.
type bankSummary struct {
	Date           string   `json:"date"`
	Commit         string   `json:"commit,omitempty"`
	Profile        string   `json:"profile"`
	Netns          bool     `json:"netns"`
	Rounds         int      `json:"rounds"`
	Seeds          []uint64 `json:"seeds"`
	GridPartitions int      `json:"grid_partitions"`
	Accounts       int      `json:"accounts"`
	bankTotals
	Runs       []bankRound `json:"runs"`
	Errors     []string    `json:"errors,omitempty"`
	Violations []string    `json:"violations"`
	OK         bool        `json:"ok"`
}

// bankTotals are the figures the issue asks for, per round and in total.
type bankTotals struct {
	Transfers int `json:"transfers"`
	Committed int `json:"committed"`
	// Declined: committed without moving money (the source held too
	// little); not in Committed.
	Declined int `json:"declined"`
	Aborted  int `json:"aborted"`
	Unknown  int `json:"unknown"`
	// UnknownApplied: unknown transfers (abandoned mid-commit included)
	// found applied at the end.
	UnknownApplied int `json:"unknown_applied"`
	// SinglePartition and CrossPartition split the committed transfers.
	SinglePartition int `json:"single_partition"`
	CrossPartition  int `json:"cross_partition"`
	// AbandonedBefore: transfers whose client died after its prepares,
	// before its commit step (must apply nothing); AbandonedMid: with the
	// commit step in flight (unknown). Not in the counts above.
	AbandonedBefore int `json:"abandoned_before_commit"`
	AbandonedMid    int `json:"abandoned_mid_commit"`
	// InDoubt: prepared records and locks left at the partitions'
	// primaries after the drain (must be 0).
	InDoubt       int `json:"in_doubt"`
	PreparedLeft  int `json:"prepared_left"`
	LocksLeft     int `json:"locks_left"`
	DecisionsLeft int `json:"decisions_left"`
	Resolved      int `json:"recovery_resolved"` // participants finished by recovery (live members' counts)
	Collected     int `json:"recovery_collected"`
	Audits        int `json:"audits"` // committed audits, the final one included
	AuditAttempts int `json:"audit_attempts"`
	AuditsHeld    int `json:"audits_with_writers_held"` // committed after running out of patience
	AuditFailed   int `json:"audit_failed"`             // audits whose txn.Run gave up
	// Violations: invariant violations of every kind (must be 0).
	InvariantViolations int     `json:"invariant_violations"`
	Kills               int     `json:"kills"`
	Pauses              int     `json:"pauses"`
	Partitions          int     `json:"partitions"` // network partitions
	Seconds             float64 `json:"duration_s"`
	PerSecond           float64 `json:"committed_per_s"`
}

func (t *bankTotals) add(r *bankTotals) {
	t.Transfers += r.Transfers
	t.Committed += r.Committed
	t.Declined += r.Declined
	t.Aborted += r.Aborted
	t.Unknown += r.Unknown
	t.UnknownApplied += r.UnknownApplied
	t.SinglePartition += r.SinglePartition
	t.CrossPartition += r.CrossPartition
	t.AbandonedBefore += r.AbandonedBefore
	t.AbandonedMid += r.AbandonedMid
	t.InDoubt += r.InDoubt
	t.PreparedLeft += r.PreparedLeft
	t.LocksLeft += r.LocksLeft
	t.DecisionsLeft += r.DecisionsLeft
	t.Resolved += r.Resolved
	t.Collected += r.Collected
	t.Audits += r.Audits
	t.AuditAttempts += r.AuditAttempts
	t.AuditsHeld += r.AuditsHeld
	t.AuditFailed += r.AuditFailed
	t.InvariantViolations += r.InvariantViolations
	t.Kills += r.Kills
	t.Pauses += r.Pauses
	t.Partitions += r.Partitions
	t.Seconds = float64(int((t.Seconds+r.Seconds)*1000)) / 1000
	if t.Seconds > 0 {
		t.PerSecond = float64(int(float64(t.Committed)/t.Seconds*10)) / 10
	}
}

// bankRound is one seed's cluster.
type bankRound struct {
	Seed uint64 `json:"seed"`
	bankTotals
	// Errors counts the transfers' final errors by kind (aborted and
	// unknown), AuditErrors the audits'.
	Errors      map[string]int `json:"transfer_errors"`
	AuditErrors map[string]int `json:"audit_errors"`
	// LatencyMs: committed transfers, from txn.Run's call to its return.
	LatencyMs dist        `json:"latency_ms"`
	Faults    []bankFault `json:"faults"`
	// CommittedAfterHeal: transfers committed between the heal and the
	// end of the load.
	CommittedAfterHeal int     `json:"committed_after_heal"`
	DrainMs            float64 `json:"drain_ms"`
	// HeldPastMs: the longest any prepared record was seen (polling every
	// node's GET /v1/transactions) held past its transaction's deadline
	// during the load, and which.
	HeldPastMs    float64  `json:"held_past_deadline_max_ms"`
	HeldPastWhat  string   `json:"held_past_deadline_max,omitempty"`
	ReplicasEqual bool     `json:"replicas_equal"`
	Examples      []string `json:"error_examples,omitempty"` // the first error of each kind
	Loadavg       string   `json:"loadavg"`
	Violations    []string `json:"violations,omitempty"`
	Error         string   `json:"error,omitempty"`
}

// RunBank runs cfg.Runs rounds, each on a fresh cluster. A round that
// cannot run records its error and the next one runs.
func RunBank(ctx context.Context, cfg bankConfig) (*bankSummary, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	profile := cfg.Profile
	if profile == "" {
		profile = "default"
	}
	if cfg.Netns {
		if why := netnsUnusable(); why != "" {
			return nil, fmt.Errorf("bank -netns: %s", why)
		}
	}
	sum := &bankSummary{Date: time.Now().UTC().Format(time.RFC3339), Commit: gitCommit(), Profile: profile, Netns: cfg.Netns,
		Accounts: cfg.Accounts, Runs: []bankRound{}, Violations: []string{}}
	bin, cleanup, err := gridnodeBinary(cfg.Gridnode)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	defer httpClient.CloseIdleConnections()
	seeds, violations, errs := seedRounds(ctx, "bank", cfg.Runs, cfg.Seed, cfg.Log, func(seed uint64) (string, []string) {
		before := loadavg()
		round := runBankRound(ctx, cfg, bin, seed, sum)
		round.Loadavg = before + " -> " + loadavg()
		sum.Runs = append(sum.Runs, round)
		return round.Error, round.Violations
	})
	sum.Seeds, sum.Rounds = seeds, len(seeds)
	sum.Violations, sum.Errors = append(sum.Violations, violations...), append(sum.Errors, errs...)
	for i := range sum.Runs {
		sum.bankTotals.add(&sum.Runs[i].bankTotals)
	}
	sum.OK = len(sum.Violations) == 0 && len(sum.Errors) == 0 && sum.Rounds == cfg.Runs && sum.InDoubt == 0 && sum.InvariantViolations == 0
	return sum, ctx.Err()
}

// runBankRound runs one seed on a fresh cluster and tears it down,
// keeping the node logs under Out/seed-<seed> if anything went wrong.
func runBankRound(ctx context.Context, cfg bankConfig, bin string, seed uint64, sum *bankSummary) (round bankRound) {
	round.Seed = seed
	out := runRound(ctx, func() (*harness, error) {
		return startRoundCluster(ctx, roundCluster{mode: "bank", seed: seed, nodes: cfg.Nodes, backups: cfg.Backups, port: cfg.BasePort,
			out: filepath.Join(cfg.Out, fmt.Sprintf("seed-%d", seed)), log: cfg.Log, netns: cfg.Netns,
			args: func(*proc) []string { return profileArgs(cfg.Profile) }}, bin)
	}, func(h *harness, partitions int, violation func(string, ...any)) error {
		sum.GridPartitions = partitions
		if cfg.KeepLogs {
			defer h.saveLogs()
		}
		return runBank(ctx, h, cfg, seed, partitions, &round, violation)
	})
	round.Error, round.Violations = out.Error, append(round.Violations, out.Violations...)
	return round
}

// bankMain is `gridchaos bank [flags]`.
func bankMain(args []string) int {
	var cfg bankConfig
	var faults string
	fs := flag.NewFlagSet("gridchaos bank", flag.ContinueOnError)
	fs.IntVar(&cfg.Runs, "runs", 1, "rounds, each on a fresh cluster with seed -seed, -seed+1, ...")
	fs.Uint64Var(&cfg.Seed, "seed", uint64(time.Now().UnixNano()%1e6), "seed of the first round (transfers, victims, timings)")
	fs.IntVar(&cfg.Nodes, "nodes", 3, "gridnode processes")
	fs.IntVar(&cfg.Backups, "backups", 1, "synchronous backups per partition")
	fs.IntVar(&cfg.Accounts, "accounts", 64, "accounts")
	fs.IntVar(&cfg.Pairs, "pairs", 8, "account pairs sharing an affinity key (single-partition transfers)")
	fs.IntVar(&cfg.Idle, "idle", 4, "accounts untouched between the first fault and the heal (negative: none)")
	fs.IntVar(&cfg.Balance, "balance", 100, "opening balance of every account")
	fs.IntVar(&cfg.Writers, "writers", 8, "concurrent transfer goroutines")
	fs.IntVar(&cfg.Clients, "clients", 4, "client connections the writers share")
	fs.IntVar(&cfg.Auditors, "auditors", 2, "concurrent auditors (read-only transactions over every account)")
	fs.IntVar(&cfg.AuditPatience, "audit-patience", 10, "an audit that did not commit after this many attempts holds new transfers until it ends, 3 s at most (negative: never)")
	fs.BoolVar(&cfg.AuditLocking, "audit-locking", false, "audits run with txn.Options.Locking (pessimistic: each Get locks its account at once)")
	fs.DurationVar(&cfg.Pace, "pace", 2*time.Millisecond, "a writer's pause between transfers")
	fs.DurationVar(&cfg.AuditPace, "audit-pace", 50*time.Millisecond, "an auditor's pause between audits")
	fs.DurationVar(&cfg.AbandonEvery, "abandon-every", 5*time.Second, "one transfer abandoned in its commit per this period (negative: none)")
	fs.DurationVar(&cfg.TransferTimeout, "transfer-timeout", 30*time.Second, "bounds one transfer's txn.Run, retries included")
	fs.DurationVar(&cfg.TxnTimeout, "txn-timeout", 0, "txn.Options.Timeout of each attempt (0: txn's default, 5s)")
	fs.StringVar(&faults, "faults", "", "fault kinds in order ("+strings.Join(bankFaultKinds, ", ")+"; default "+strings.Join(bankFaultsDefault, ",")+", with -netns also partition,partition-coordinator)")
	fs.DurationVar(&cfg.Load, "load", 2*time.Second, "load before the first fault and between faults, at least")
	fs.DurationVar(&cfg.Settle, "settle", 3*time.Second, "load after the heal")
	fs.DurationVar(&cfg.Drain, "drain", 60*time.Second, "how long locks and prepared records may take to go once the load stopped")
	fs.BoolVar(&cfg.Collect, "collect", false, "also wait until every decision was collected (30 s past the last deadline)")
	fs.BoolVar(&cfg.Netns, "netns", false, "run each node in its own network namespace (root) and add network partitions to the faults")
	fs.StringVar(&cfg.Profile, "profile", "", "gridnode -profile (default: none, gridnode's default)")
	fs.BoolVar(&cfg.KeepLogs, "keep-logs", false, "keep the node logs of every round in -out/seed-<n>/, not only of failed ones")
	fs.StringVar(&cfg.Gridnode, "gridnode", "", "gridnode binary (default: build ./cmd/gridnode)")
	fs.StringVar(&cfg.Out, "out", "bank-out", "directory for the node logs of failed rounds")
	fs.IntVar(&cfg.BasePort, "port", 30946, "gossip port; rpc and http use the next two, on every node address")
	if !parseModeArgs("bank", fs, args) {
		return 2
	}
	if faults != "" {
		cfg.Faults = []string{}
		for _, k := range strings.Split(faults, ",") {
			if k = strings.TrimSpace(k); k != "" {
				cfg.Faults = append(cfg.Faults, k)
			}
		}
	}
	cfg.Log = os.Stderr
	return runMode("bank", func(ctx context.Context) (*bankSummary, error) { return RunBank(ctx, cfg) },
		func(s *bankSummary) (bool, bool) { return len(s.Violations) > 0, s.OK })
}
