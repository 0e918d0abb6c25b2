package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/collocate/grid/affinity"
	"github.com/vmihailenco/msgpack/v5"
)

// TestBankSmoke keeps the bank mode working in CI: one round of 3 real
// gridnode processes (gridnode's default flags), transfers between 64
// accounts across partitions and within pairs, auditors, and an abandoned
// transfer every 2 s, while the primary of a transfer's coordinator
// partition is SIGKILLed between its prepares and its commit step, a
// node is paused, and a client process is SIGKILLed after its prepares. No money may appear or vanish, no audit may see another
// total, nothing may be left in doubt, and the faults must have landed
// on a held transfer.
func TestBankSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("process test")
	}
	cfg := bankConfig{Runs: 1, Seed: 1, Faults: []string{"kill-coordinator", "pause", "kill-client"}, BasePort: 20946, Out: t.TempDir(), Log: testWriter{t}}
	runBankTest(t, cfg)
}

// TestBankLong is the evidence run of docs/chaos.md ("Transactions under
// failure") when GRID_BANK_LONG is set: 3 seeds (GRID_BANK_SEED, default
// 1; GRID_BANK_RUNS), every fault kind (GRID_BANK_FAULTS, comma-
// separated), decisions waited for until collected; GRID_BANK_NETNS=1
// (root) adds the network partitions; GRID_BANK_AUDIT_LOCKING=1 runs the
// audits with txn.Options.Locking (-audit-locking). The command line (go run
// ./cmd/gridchaos bank -runs 3 -seed 1 -collect) does the same.
func TestBankLong(t *testing.T) {
	if os.Getenv("GRID_BANK_LONG") == "" {
		t.Skip("set GRID_BANK_LONG=1 to run the bank evidence run")
	}
	cfg := bankConfig{Runs: 3, Seed: 1, Collect: true, BasePort: 20946, Out: t.TempDir(), Log: testWriter{t},
		Netns: os.Getenv("GRID_BANK_NETNS") != ""}
	if out := os.Getenv("GRID_BANK_OUT"); out != "" {
		cfg.Out = out
	}
	if n, err := strconv.ParseUint(os.Getenv("GRID_BANK_SEED"), 10, 64); err == nil {
		cfg.Seed = n
	}
	if n, err := strconv.Atoi(os.Getenv("GRID_BANK_RUNS")); err == nil {
		cfg.Runs = n
	}
	cfg.AuditLocking = os.Getenv("GRID_BANK_AUDIT_LOCKING") != ""
	if f := os.Getenv("GRID_BANK_FAULTS"); f != "" {
		cfg.Faults = strings.Split(f, ",")
	}
	runBankTest(t, cfg)
}

func runBankTest(t *testing.T, cfg bankConfig) {
	t.Helper()
	sum, err := RunBank(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(sum)
	t.Logf("summary: %s", b)
	if !sum.OK {
		t.Fatalf("violations %v, errors %v", sum.Violations, sum.Errors)
	}
	cfg, _ = cfg.withDefaults()
	if err := bankExercised(sum, cfg); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
}

// bankExercised says how a summary without violations fails to show what
// the bank mode claims: every fault landed (on a held transfer, for the
// trapped kinds and the client kills), transfers committed in one partition and across
// several, also after the heal, audits committed, transfers were
// abandoned before their commit step, nothing was left in doubt, and the
// replicas were compared.
func bankExercised(sum *bankSummary, cfg bankConfig) error {
	if sum.Rounds != cfg.Runs || len(sum.Runs) != cfg.Runs {
		return fmt.Errorf("%d rounds of %d", len(sum.Runs), cfg.Runs)
	}
	for _, r := range sum.Runs {
		if why := bankRoundExercised(&r, cfg); why != "" {
			return fmt.Errorf("seed %d: %s", r.Seed, why)
		}
	}
	return nil
}

func bankRoundExercised(r *bankRound, cfg bankConfig) string {
	switch {
	case len(r.Faults) != len(cfg.Faults):
		return fmt.Sprintf("%d faults of %d", len(r.Faults), len(cfg.Faults))
	case r.SinglePartition == 0 || r.CrossPartition == 0:
		return fmt.Sprintf("committed %d single-partition and %d cross-partition transfers", r.SinglePartition, r.CrossPartition)
	case r.CommittedAfterHeal == 0:
		return "nothing committed after the heal"
	case r.Audits < 2: // the final one and at least one during the load
		return fmt.Sprintf("%d audits committed", r.Audits)
	case cfg.AbandonEvery > 0 && r.AbandonedBefore == 0:
		return "no transfer abandoned before its commit step"
	case r.InDoubt != 0 || r.InvariantViolations != 0:
		return fmt.Sprintf("%d in doubt, %d invariant violations", r.InDoubt, r.InvariantViolations)
	case !r.ReplicasEqual:
		return "replicas not compared equal at the end"
	}
	for i, f := range r.Faults {
		kills, pauses, parts, clients := 0, 0, 0, 0
		switch f.Kind {
		case "kill-client", "kill-client-mid":
			clients = 1
		case "kill", "restart-now", "kill-coordinator", "kill-participant", "abandon-kill":
			kills = 1
		case "pause", "pause-coordinator":
			pauses = 1
		case "partition", "partition-coordinator":
			parts = 1
		}
		switch {
		case f.Kind != cfg.Faults[i]:
			return fmt.Sprintf("fault %d is %s, not %s", i+1, f.Kind, cfg.Faults[i])
		case f.Kills != kills || f.Pauses != pauses || f.Partitions != parts || f.ClientKills != clients:
			return fmt.Sprintf("fault %d (%s): %d kills, %d pauses, %d partitions, %d client kills", i+1, f.Kind, f.Kills, f.Pauses, f.Partitions, f.ClientKills)
		case f.Kind != "kill" && f.Kind != "restart-now" && f.Kind != "pause" && f.Kind != "partition":
			if f.Transfer == "" || f.Outcome == "" || f.Outcome == "not recorded" || len(f.Prepared) == 0 {
				return fmt.Sprintf("fault %d (%s) held no transfer with prepared participants (%q, %q, %v)", i+1, f.Kind, f.Transfer, f.Outcome, f.Prepared)
			}
		}
	}
	return ""
}

// TestBankExercisedFails shows that each thing the tests require is
// checked.
func TestBankExercisedFails(t *testing.T) {
	cfg, err := bankConfig{Runs: 1, Faults: []string{"kill-coordinator", "pause", "kill-client"}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	good := func() *bankSummary {
		return &bankSummary{Rounds: 1, Runs: []bankRound{{
			bankTotals:         bankTotals{Committed: 10, SinglePartition: 3, CrossPartition: 7, Audits: 3, AbandonedBefore: 1},
			CommittedAfterHeal: 2, ReplicasEqual: true,
			Faults: []bankFault{
				{Kind: "kill-coordinator", Kills: 1, Transfer: "w1.2", Outcome: "committed", Prepared: []int{7}},
				{Kind: "pause", Pauses: 1},
				{Kind: "kill-client", ClientKills: 1, Transfer: "k3.0", Outcome: "abandoned before its commit", Prepared: []int{9}},
			},
		}}}
	}
	if err := bankExercised(good(), cfg); err != nil {
		t.Fatalf("a complete summary: %v", err)
	}
	for name, spoil := range map[string]func(s *bankSummary){
		"round missing":            func(s *bankSummary) { s.Runs = nil },
		"fault missing":            func(s *bankSummary) { s.Runs[0].Faults = s.Runs[0].Faults[:1] },
		"fault out of order":       func(s *bankSummary) { s.Runs[0].Faults[0].Kind = "kill" },
		"kill missing":             func(s *bankSummary) { s.Runs[0].Faults[0].Kills = 0 },
		"pause missing":            func(s *bankSummary) { s.Runs[0].Faults[1].Pauses = 0 },
		"client kill missing":      func(s *bankSummary) { s.Runs[0].Faults[2].ClientKills = 0 },
		"client kill unrecorded":   func(s *bankSummary) { s.Runs[0].Faults[2].Outcome = "" },
		"no held transfer":         func(s *bankSummary) { s.Runs[0].Faults[0].Transfer = "" },
		"held transfer unrecorded": func(s *bankSummary) { s.Runs[0].Faults[0].Outcome = "not recorded" },
		"nothing prepared":         func(s *bankSummary) { s.Runs[0].Faults[0].Prepared = nil },
		"no single-partition":      func(s *bankSummary) { s.Runs[0].SinglePartition = 0 },
		"no cross-partition":       func(s *bankSummary) { s.Runs[0].CrossPartition = 0 },
		"nothing after the heal":   func(s *bankSummary) { s.Runs[0].CommittedAfterHeal = 0 },
		"only the final audit":     func(s *bankSummary) { s.Runs[0].Audits = 1 },
		"nothing abandoned":        func(s *bankSummary) { s.Runs[0].AbandonedBefore = 0 },
		"in doubt":                 func(s *bankSummary) { s.Runs[0].InDoubt = 1 },
		"replicas not compared":    func(s *bankSummary) { s.Runs[0].ReplicasEqual = false },
	} {
		s := good()
		spoil(s)
		if err := bankExercised(s, cfg); err == nil {
			t.Errorf("%s: bankExercised found nothing missing", name)
		}
	}
}

// TestCheckBank: the end-state check accepts a consistent bank and finds
// each kind of departure.
func TestCheckBank(t *testing.T) {
	book := newBankBook(4, 1, 0, 271) // {pair-0}a, {pair-0}b, acct-0, acct-1
	plans := func() []*transferPlan {
		return []*transferPlan{
			{id: "c", from: "acct-0", to: "acct-1", amount: 30, outcome: tCommitted},
			{id: "s", from: "{pair-0}a", to: "{pair-0}b", amount: 5, outcome: tCommitted, single: true},
			{id: "d", from: "acct-1", to: "acct-0", amount: 99, outcome: tDeclined},
			{id: "x", from: "acct-1", to: "acct-0", amount: 7, outcome: tAborted, kind: "conflict"},
			{id: "u", from: "acct-0", to: "{pair-0}a", amount: 10, outcome: tUnknown, kind: "timeout"},
			{id: "m", from: "acct-1", to: "{pair-0}b", amount: 1, outcome: tAbandonedMid},
			{id: "b", from: "acct-0", to: "acct-1", amount: 2, outcome: tAbandonedBefore},
		}
	}
	// c and s applied, u applied, m not.
	balances := func() map[string][]byte {
		return map[string][]byte{"acct-0": itoa(100 - 30 - 10), "acct-1": itoa(130), "{pair-0}a": itoa(95 + 10), "{pair-0}b": itoa(105)}
	}
	ledger := func() map[string][]byte {
		l := map[string][]byte{}
		for _, p := range []struct {
			from, to, id string
			amount       int
		}{{"acct-0", "acct-1", "c", 30}, {"{pair-0}a", "{pair-0}b", "s", 5}, {"acct-0", "{pair-0}a", "u", 10}} {
			l[ledgerKey(p.from, p.id, "out")], l[ledgerKey(p.to, p.id, "in")] = itoa(p.amount), itoa(p.amount)
		}
		return l
	}
	v := checkBank(book, 100, plans(), balances(), ledger())
	want := bankTotals{Transfers: 5, Committed: 2, SinglePartition: 1, CrossPartition: 1, Declined: 1, Aborted: 1, Unknown: 1,
		UnknownApplied: 1, AbandonedBefore: 1, AbandonedMid: 1}
	if len(v.Violations) != 0 || v.bankTotals != want {
		t.Fatalf("a consistent bank: %v\n%+v\nwant %+v", v.Violations, v.bankTotals, want)
	}
	for _, c := range []struct {
		name  string
		spoil func(ps []*transferPlan, bal, led map[string][]byte)
		want  string
	}{
		{"money created", func(_ []*transferPlan, bal, _ map[string][]byte) { bal["acct-1"] = itoa(131) }, "total 401"},
		{"negative balance", func(_ []*transferPlan, bal, _ map[string][]byte) { bal["acct-0"], bal["acct-1"] = itoa(-1), itoa(191) }, "acct-0 = -1"},
		{"account missing", func(_ []*transferPlan, bal, _ map[string][]byte) { delete(bal, "acct-1") }, "acct-1 missing"},
		{"half applied", func(_ []*transferPlan, _, led map[string][]byte) { delete(led, ledgerKey("acct-1", "c", "in")) }, "half applied"},
		{"committed lost", func(_ []*transferPlan, _, led map[string][]byte) {
			delete(led, ledgerKey("acct-0", "c", "out"))
			delete(led, ledgerKey("acct-1", "c", "in"))
		}, "ledger entries are missing"},
		{"aborted applied", func(_ []*transferPlan, _, led map[string][]byte) {
			led[ledgerKey("acct-1", "x", "out")], led[ledgerKey("acct-0", "x", "in")] = itoa(7), itoa(7)
		}, "applied, but it was aborted"},
		{"abandoned before its commit applied", func(_ []*transferPlan, _, led map[string][]byte) {
			led[ledgerKey("acct-0", "b", "out")], led[ledgerKey("acct-1", "b", "in")] = itoa(2), itoa(2)
		}, "abandoned before its commit"},
		{"wrong amount", func(_ []*transferPlan, _, led map[string][]byte) { led[ledgerKey("acct-0", "c", "out")] = itoa(31) }, "ledger holds"},
		{"balance off its ledger", func(_ []*transferPlan, bal, _ map[string][]byte) {
			bal["acct-0"], bal["acct-1"] = itoa(61), itoa(129)
		}, "its opening and ledger make"},
	} {
		ps, bal, led := plans(), balances(), ledger()
		c.spoil(ps, bal, led)
		v := checkBank(book, 100, ps, bal, led)
		if !strings.Contains(fmt.Sprint(v.Violations), c.want) {
			t.Errorf("%s: violations %v, want one with %q", c.name, v.Violations, c.want)
		}
	}
}

// TestStepDone reads a txn step's status from its answer: the status byte
// alone, a msgpack array whose first element is the status (1: Done), or
// a map with Status.
func TestStepDone(t *testing.T) {
	enc := func(v any) []byte {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, c := range []struct {
		raw  []byte
		done bool
	}{
		{[]byte{1}, true}, // a status alone
		{[]byte{5}, false},
		{enc([]any{uint8(1), "", nil}), true},
		{enc([]any{uint8(5), "conflict", nil}), false},
		{enc(map[string]any{"Status": uint8(1)}), true},
		{enc(map[string]any{"Status": uint8(4)}), false},
		{[]byte{0xc1}, false},
		{nil, false},
	} {
		if got := stepDone(c.raw); got != c.done {
			t.Errorf("%x: done %v, want %v", c.raw, got, c.done)
		}
	}
}

// TestBankPlan: transfers join two distinct accounts, a quarter of them a
// pair (one partition), the idle accounts only when allowed, and the
// ledger entries live in their accounts' partitions.
func TestBankPlan(t *testing.T) {
	book := newBankBook(64, 8, 4, 271)
	if len(book.accounts) != 64 || len(book.pairs) != 8 || len(book.idle) != 4 || len(book.spread) != 44 {
		t.Fatalf("%d accounts, %d pairs, %d idle, %d spread", len(book.accounts), len(book.pairs), len(book.idle), len(book.spread))
	}
	rng := randNew(1)
	idle := map[string]bool{}
	for _, a := range book.idle {
		idle[a] = true
	}
	singles, idleSeen := 0, 0
	for i := range 4000 {
		p := book.plan(rng, fmt.Sprint(i), i%2 == 0)
		if p.from == p.to || p.amount < 1 || p.amount > 60 {
			t.Fatalf("plan %+v", p)
		}
		if p.single {
			singles++
		}
		if idle[p.from] || idle[p.to] {
			if i%2 == 1 {
				t.Fatalf("plan %+v uses an idle account while they are closed", p)
			}
			idleSeen++
		}
		for _, a := range []string{p.from, p.to} {
			if affinity.Partition(ledgerKey(a, p.id, "in"), 271) != affinity.Partition(a, 271) {
				t.Fatalf("ledger entry of %s lives in another partition", a)
			}
		}
	}
	if singles < 800 || singles > 1400 || idleSeen == 0 {
		t.Fatalf("%d of 4000 transfers in one partition, %d touched idle accounts", singles, idleSeen)
	}
}
