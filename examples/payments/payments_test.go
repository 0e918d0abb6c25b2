package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/collocate/grid/grid/gridtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, gridtest.LeakOptions()...)
}

// The whole flow, small: 300 payments between 20 accounts on an embedded
// 3-node cluster, one node killed after a third of them and started again
// under its name; every payment's outcome and every balance must equal the
// recomputation from the inputs, no event may be in the dead letters, and
// validate must drop exactly the client's resends.
//
// About 10 s (with -race too), so it runs under -short as well.
func TestPaymentsThroughAKillAndRestart(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Payments, cfg.Accounts, cfg.Seed = 300, 20, 7
	cfg.Partitions = 61
	cfg.Rate = 60 // 5 s of payments: the node dies and comes back meanwhile
	cfg.Down = 2 * time.Second
	cfg.Resend, cfg.Overtake = 0.05, 0.05
	cfg.Progress = 500 * time.Millisecond
	cfg.Drain = time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := run(ctx, cfg, &out)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	report := out.String()
	for _, want := range []string{">> kill n3", ">> restart n3", "n3 holds its share again", "OK: every balance equals its recomputation"} {
		if !strings.Contains(report, want) {
			t.Errorf("the report lacks %q", want)
		}
	}
	kill, published := strings.Index(report, ">> kill n3"), strings.Index(report, "every payment published")
	if kill > published {
		t.Errorf("n3 was killed after the client was done: the kill must fall in the middle of the flow")
	}
}

// recompute applies the rules in each payer's order: validation, then the
// fraud checks (amount, then the payer's count of payments that passed
// them), then the funds (the debits booked against the opening balance).
func TestRecomputeAppliesTheRulesInPayerOrder(t *testing.T) {
	in := &inputs{
		opening: map[string]int64{"a": 100, "b": 50},
		rules:   &Rules{Accounts: map[string]bool{"a": true, "b": true}, AmountLimit: 70, MaxPerPayer: 3},
		payments: []Payment{
			{ID: "1", Payer: "a", Payee: "b", Amount: 60, Seq: 1},  // booked: debited 60
			{ID: "2", Payer: "a", Payee: "b", Amount: 80, Seq: 2},  // over the limit
			{ID: "3", Payer: "b", Payee: "a", Amount: 20, Seq: 1},  // booked
			{ID: "4", Payer: "a", Payee: "b", Amount: 50, Seq: 3},  // passes fraud (2nd), 110 > 100: funds
			{ID: "5", Payer: "a", Payee: "b", Amount: 30, Seq: 4},  // passes fraud (3rd), booked: debited 90
			{ID: "6", Payer: "a", Payee: "b", Amount: 5, Seq: 5},   // 4th: velocity
			{ID: "7", Payer: "a", Payee: "a", Amount: 5, Seq: 6},   // self
			{ID: "8", Payer: "b", Payee: "x", Amount: 5, Seq: 2},   // unknown payee
			{ID: "9", Payer: "x", Payee: "a", Amount: 5, Seq: 1},   // unknown payer
			{ID: "10", Payer: "b", Payee: "a", Amount: 0, Seq: 3},  // amount
			{ID: "11", Payer: "b", Payee: "a", Amount: -1, Seq: 4}, // amount
		},
	}
	ex := recompute(in)
	want := map[string]string{"1": "", "2": reasonOverLimit, "3": "", "4": reasonFunds, "5": "", "6": reasonVelocity,
		"7": reasonSelf, "8": reasonUnknownPayee, "9": reasonUnknownPayer, "10": reasonAmount, "11": reasonAmount}
	for id, w := range want {
		if got := ex.outcome[id]; got != w {
			t.Errorf("payment %s: %q, want %q", id, got, w)
		}
	}
	if ex.balances["a"] != 30 || ex.balances["b"] != 120 || ex.entries["a"] != 3 || ex.entries["b"] != 3 {
		t.Errorf("balances %v from entries %v, want a 30 and b 120, 3 entries each", ex.balances, ex.entries)
	}
}

// compare finds every kind of difference the check must catch.
func TestCompareReportsEveryDifference(t *testing.T) {
	in := &inputs{
		opening: map[string]int64{"a": 100, "b": 50},
		rules:   &Rules{Accounts: map[string]bool{"a": true, "b": true}, AmountLimit: 70, MaxPerPayer: 3},
		payments: []Payment{
			{ID: "1", Payer: "a", Payee: "b", Amount: 60, Seq: 1},
			{ID: "2", Payer: "a", Payee: "b", Amount: 80, Seq: 2},
		},
	}
	ex := recompute(in)
	good := func() *observed {
		return &observed{booked: map[string]bool{"1": true}, rejected: map[string]string{"2": reasonOverLimit},
			balances: map[string]Balance{"a": {Balance: 40, Entries: 1}, "b": {Balance: 110, Entries: 1}}}
	}
	if bad := compare(ex, good()); len(bad) != 0 {
		t.Fatalf("a matching state: %v", bad)
	}
	cases := map[string]func(*observed){
		"a balance off by a cent":         func(o *observed) { o.balances["a"] = Balance{Balance: 39, Entries: 1} },
		"an entry applied twice":          func(o *observed) { o.balances["b"] = Balance{Balance: 170, Entries: 2} },
		"a booked payment missing":        func(o *observed) { delete(o.booked, "1") },
		"a payment booked and rejected":   func(o *observed) { o.rejected["1"] = reasonFunds },
		"a rejection with another reason": func(o *observed) { o.rejected["2"] = reasonVelocity },
		"a rejected payment booked":       func(o *observed) { delete(o.rejected, "2"); o.booked["2"] = true },
		"a payment never requested":       func(o *observed) { o.booked["99"] = true },
		"a balance missing":               func(o *observed) { delete(o.balances, "b") },
		"an account that does not exist":  func(o *observed) { o.balances["z"] = Balance{} },
	}
	for name, tamper := range cases {
		ob := good()
		tamper(ob)
		if bad := compare(ex, ob); len(bad) == 0 {
			t.Errorf("%s: not reported", name)
		}
	}
}

// A config that cannot run fails before any node starts.
func TestConfigIsValidated(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Accounts = 1
	if err := run(context.Background(), cfg, &bytes.Buffer{}); err == nil || errors.Is(err, errMismatch) {
		t.Fatalf("one account: %v", err)
	}
}
