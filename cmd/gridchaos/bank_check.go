package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/collocate/grid/client"
	"github.com/collocate/grid/txn"
	"github.com/collocate/grid/txn/txnnode"
)

// runBank is one round of the bank mode on h's safe cluster: open the
// accounts, run the load through the faults, heal, stop, drain and check.
func runBank(ctx context.Context, h *harness, cfg bankConfig, seed uint64, partitions int, round *bankRound, violation func(string, ...any)) error {
	book := newBankBook(cfg.Accounts, cfg.Pairs, cfg.Idle, partitions)
	var addrs, urls []string
	for _, p := range h.procs {
		addrs, urls = append(addrs, p.rpc), append(urls, p.httpURL)
	}
	c, err := client.Dial(ctx, client.Config{Addrs: addrs})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := openAccounts(ctx, c, book, cfg.Balance); err != nil {
		return err
	}
	load, err := startBankLoad(ctx, cfg, book, addrs, urls, seed)
	if err != nil {
		return err
	}
	defer load.close()
	nem := &bankNemesis{h: h, cfg: cfg, load: load}
	// A fault that failed (the cluster not safe again, a node that exited)
	// ends the faults, not the round: the money is checked all the same,
	// and the round reports the error at the end.
	nemErr := nem.run(ctx)
	round.Faults = nem.faults
	for _, f := range nem.faults {
		round.Kills += f.Kills
		round.Pauses += f.Pauses
		round.Partitions += f.Partitions
	}
	if nemErr != nil {
		h.logf("the faults ended early: %v; healing and checking all the same", nemErr)
		if ctx.Err() != nil {
			return nemErr
		}
	}
	healed := load.since()
	if err := bankHeal(ctx, nem, violation); err != nil {
		return errors.Join(nemErr, err)
	}
	load.idleOpen.Store(true)
	h.logf("healed; %d transfers committed so far", load.committedSince(0))
	sleepCtx(ctx, cfg.Settle)
	for deadline := time.Now().Add(30 * time.Second); load.committedSince(healed) == 0 && time.Now().Before(deadline); {
		sleepCtx(ctx, 100*time.Millisecond)
	}
	round.CommittedAfterHeal = load.committedSince(healed)
	if round.CommittedAfterHeal == 0 {
		violation("no transfer committed within %v of the heal", cfg.Settle+30*time.Second)
	}
	load.halt()
	round.Seconds = float64(load.since()/1e6) / 1000
	round.HeldPastMs, round.HeldPastWhat = load.heldPast()
	if round.HeldPastMs > maxHeldPast.Seconds()*1000 {
		violation("a prepared record stayed %.1f s past its deadline (%s): recovery finishes one within about 2 s once its coordinator partition serves", round.HeldPastMs/1000, round.HeldPastWhat)
	}
	round.Examples = load.errorExamples()

	drainStart := time.Now()
	st := drainTxns(ctx, h, partitions, cfg.Drain, cfg.Collect, violation)
	round.DrainMs = float64(time.Since(drainStart).Milliseconds())
	round.PreparedLeft, round.LocksLeft, round.DecisionsLeft = st.Prepared, st.Locks, st.Decisions
	round.InDoubt = st.Prepared + st.Locks
	round.Resolved, round.Collected = int(st.Recovery.Resolved), int(st.Recovery.Collected)
	if round.InDoubt > 0 {
		violation("in doubt %v after the load stopped: %d prepared records and %d locks left: %s", cfg.Drain, st.Prepared, st.Locks, describeHeld(st))
	}

	final := load.audit(ctx, txn.Client(c), "final ")
	if final == nil {
		violation("the final audit did not commit within %v", cfg.TransferTimeout)
		final = readPlain(ctx, c, book.accounts)
	}
	plans, loadViolations := load.results()
	ledger, err := readLedger(ctx, c, plans)
	if err != nil {
		return fmt.Errorf("reading the ledger back: %w", err)
	}
	v := checkBank(book, cfg.Balance, plans, final, ledger)
	audits := load.auditCounts()
	v.Audits, v.AuditAttempts, v.AuditFailed, v.AuditsHeld = audits.audits, audits.attempts, audits.failed, audits.held
	round.LatencyMs = distOf(load.latencyMs())
	round.AuditErrors = audits.errors
	round.Errors = v.errors
	v.Violations = append(loadViolations, v.Violations...)
	v.InvariantViolations = len(v.Violations)
	keep := round.bankTotals
	round.bankTotals = v.bankTotals
	round.InDoubt, round.PreparedLeft, round.LocksLeft, round.DecisionsLeft = keep.InDoubt, keep.PreparedLeft, keep.LocksLeft, keep.DecisionsLeft
	round.Resolved, round.Collected = keep.Resolved, keep.Collected
	round.Kills, round.Pauses, round.Partitions, round.Seconds = keep.Kills, keep.Pauses, keep.Partitions, keep.Seconds
	if round.Seconds > 0 {
		round.PerSecond = float64(int(float64(round.Committed)/round.Seconds*10)) / 10
	}
	for i := range round.Faults {
		round.Faults[i].Outcome = outcomeOf(plans, round.Faults[i].Transfer)
	}
	for i, s := range v.Violations {
		if i < 20 {
			violation("%s", s)
		}
	}
	if len(v.Violations) > 20 {
		violation("... %d more invariant violations", len(v.Violations)-20)
	}
	h.logf("transfers %d: committed %d (%d single-partition, %d across), declined %d, aborted %d, unknown %d (%d applied), abandoned %d before and %d in their commit; audits %d of %d attempts; in doubt %d; invariant violations %d",
		round.Transfers, round.Committed, round.SinglePartition, round.CrossPartition, round.Declined, round.Aborted, round.Unknown, round.UnknownApplied,
		round.AbandonedBefore, round.AbandonedMid, round.Audits, round.AuditAttempts, round.InDoubt, round.InvariantViolations)
	if err := checkReplicasSettled(ctx, h, 10*time.Second); err != nil {
		violation("replicas differ at the end: %v", err)
	} else {
		round.ReplicasEqual = true
	}
	return nemErr
}

// checkReplicasSettled compares every backup with its primary until they
// are equal or d passed: the nodes still write after the load stopped
// (recovery collects decisions, tombstones expire), and one node's
// /v1/partitions may be read before such a write and the other's after.
func checkReplicasSettled(ctx context.Context, h *harness, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		err := h.checkReplicas(ctx)
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
}

// maxHeldPast bounds how long past its deadline a prepared record may be
// seen during the faults: recovery's grace and interval (about 2 s), plus
// a failover of its coordinator or its own partition (lan profile: about
// 5 s), plus the nodes' HTTP polls; what is left after the heal is in
// doubt (drainTxns).
const maxHeldPast = 30 * time.Second

// openAccounts writes every account's opening balance and reads them back.
func openAccounts(ctx context.Context, c *client.Client, book *bankBook, balance int) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	entries := map[string][]byte{}
	for _, a := range book.accounts {
		entries[a] = itoa(balance)
	}
	m := c.Map(bankMap)
	if err := m.PutAll(ctx, entries); err != nil {
		return fmt.Errorf("opening the accounts: %w", err)
	}
	got, err := m.GetAll(ctx, book.accounts)
	if err != nil || len(got) != len(book.accounts) {
		return fmt.Errorf("opening the accounts: %d of %d read back (%v)", len(got), len(book.accounts), err)
	}
	return nil
}

// readPlain reads the accounts outside a transaction (when the final
// audit could not commit).
func readPlain(ctx context.Context, c *client.Client, accounts []string) map[string][]byte {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	got, err := c.Map(bankMap).GetAll(ctx, accounts)
	if err != nil {
		return map[string][]byte{}
	}
	return got
}

// readLedger reads both ledger entries of every transfer run (batches,
// each tried up to 5 times; an unreadable batch is an error, not a loss).
func readLedger(ctx context.Context, c *client.Client, plans []*transferPlan) (map[string][]byte, error) {
	var keys []string
	for _, p := range plans {
		if p.outcome != tNone {
			keys = append(keys, ledgerKey(p.from, p.id, "out"), ledgerKey(p.to, p.id, "in"))
		}
	}
	m := c.Map(ledgerMap)
	out := make(map[string][]byte, len(keys))
	for start := 0; start < len(keys); start += 500 {
		batch := keys[start:min(start+500, len(keys))]
		var err error
		for range 5 {
			bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			var got map[string][]byte
			got, err = m.GetAll(bctx, batch)
			cancel()
			if err == nil {
				maps.Copy(out, got)
				break
			}
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// decisionKeep is how long past its deadline a decision is kept at least
// (txnnode.DefaultConfig().Keep, which gridnode runs).
var decisionKeep = txnnode.DefaultConfig().Keep

// drainTxns polls every running node's GET /v1/transactions until the
// partitions' primaries hold no lock and no prepared record or d passed,
// and with collect then until they hold no decision either (for at most
// decisionKeep+d more: a decision is collected Keep past its deadline).
// It returns the last sums. A poll that does not cover every partition
// exactly once (a node that did not answer, a primary moving) does not
// count.
func drainTxns(ctx context.Context, h *harness, partitions int, d time.Duration, collect bool, violation func(string, ...any)) txnnode.Report {
	last, ok := pollTxns(ctx, h, partitions, d, func(r txnnode.Report) bool { return r.Prepared+r.Locks == 0 })
	if !ok || !collect {
		return last
	}
	last, ok = pollTxns(ctx, h, partitions, decisionKeep+d, func(r txnnode.Report) bool { return r.Prepared+r.Locks+r.Decisions == 0 })
	if !ok {
		violation("%d decisions not collected within %v (%s)", last.Decisions, decisionKeep+d, describeHeld(last))
	}
	return last
}

// pollTxns polls the nodes' transaction state until done says so or d
// passed; it returns the last complete state and whether done held.
func pollTxns(ctx context.Context, h *harness, partitions int, d time.Duration, done func(txnnode.Report) bool) (txnnode.Report, bool) {
	deadline := time.Now().Add(d)
	var last txnnode.Report
	for {
		r, err := txnState(ctx, h)
		if err == nil && r.Led == partitions {
			last = r
			if done(r) {
				return r, true
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if err != nil || r.Led != partitions {
				h.logf("transaction state: %v, %d of %d partitions led", err, r.Led, partitions)
			}
			return last, false
		}
		sleepCtx(ctx, 250*time.Millisecond)
	}
}

// txnState sums every running node's report.
func txnState(ctx context.Context, h *harness) (txnnode.Report, error) {
	var sum txnnode.Report
	for _, p := range h.running() {
		var r txnnode.Report
		if err := getJSON(ctx, p.httpURL+"/v1/transactions", &r); err != nil {
			return sum, fmt.Errorf("%s: %w", p.name, err)
		}
		sum.Led += r.Led
		sum.Locks += r.Locks
		sum.Prepared += r.Prepared
		sum.Decisions += r.Decisions
		sum.Tombstones += r.Tombstones
		sum.Partitions = append(sum.Partitions, r.Partitions...)
		sum.Recovery.Resolved += r.Recovery.Resolved
		sum.Recovery.Collected += r.Recovery.Collected
	}
	return sum, nil
}

// describeHeld names the first partitions still holding something.
func describeHeld(r txnnode.Report) string {
	var out []string
	for _, p := range r.Partitions {
		if len(out) == 5 {
			break
		}
		out = append(out, fmt.Sprintf("partition %d: %d locks, %d prepared %+v, %d decisions", p.Partition, p.Locks, p.Prepared, p.Held, p.Decisions))
	}
	return fmt.Sprint(out)
}

// outcomeOf names the outcome of transfer id ("" if none).
func outcomeOf(plans []*transferPlan, id string) string {
	if id == "" {
		return ""
	}
	for _, p := range plans {
		if p.id == id {
			return p.outcome.String()
		}
	}
	return "not recorded"
}

// bankVerdict is what checkBank found.
type bankVerdict struct {
	bankTotals
	errors     map[string]int
	Violations []string
}

// checkBank checks the end state: balances (every account an integer,
// none negative, the opening total), and every transfer's ledger entries
// against its outcome (committed: both; aborted, declined, abandoned
// before its commit: none; unknown: both or none; never one alone), and
// every balance against its opening plus its ledger.
func checkBank(book *bankBook, opening int, plans []*transferPlan, balances, ledger map[string][]byte) bankVerdict {
	v := bankVerdict{errors: map[string]int{}}
	bad := func(format string, args ...any) { v.Violations = append(v.Violations, fmt.Sprintf(format, args...)) }
	if why := auditVerdict(book.accounts, balances, opening*len(book.accounts)); why != "" {
		bad("final balances: %s", why)
	}
	expect := map[string]int{}
	for _, a := range book.accounts {
		expect[a] = opening
	}
	for _, p := range plans {
		if p.outcome == tNone {
			continue
		}
		v.count(p)
		out, okOut := ledger[ledgerKey(p.from, p.id, "out")]
		in, okIn := ledger[ledgerKey(p.to, p.id, "in")]
		none, both := p.outcome.mayApply()
		switch {
		case okOut != okIn:
			bad("transfer %s (%s -> %s, %d, %s) half applied: ledger out %v, in %v", p.id, p.from, p.to, p.amount, p.outcome, okOut, okIn)
		case okOut && !both:
			bad("transfer %s (%s -> %s, %d) applied, but it was %s", p.id, p.from, p.to, p.amount, p.outcome)
		case !okOut && !none:
			bad("transfer %s (%s -> %s, %d) %s, but its ledger entries are missing", p.id, p.from, p.to, p.amount, p.outcome)
		}
		if okOut && okIn && (string(out) != string(itoa(p.amount)) || string(in) != string(itoa(p.amount))) {
			bad("transfer %s: ledger holds %q out and %q in, want %d", p.id, out, in, p.amount)
		}
		if okOut && (p.outcome == tUnknown || p.outcome == tAbandonedMid) {
			v.UnknownApplied++
		}
		if okOut {
			expect[p.from] -= p.amount
		}
		if okIn {
			expect[p.to] += p.amount
		}
	}
	for _, a := range book.accounts {
		if b, ok := balanceOf(balances[a]); ok && b != expect[a] {
			bad("account %s holds %d; its opening and ledger make %d", a, b, expect[a])
		}
	}
	return v
}

// count files p's outcome in v.
func (v *bankVerdict) count(p *transferPlan) {
	switch p.outcome {
	case tAbandonedBefore:
		v.AbandonedBefore++
		return
	case tAbandonedMid:
		v.AbandonedMid++
		return
	}
	v.Transfers++
	switch p.outcome {
	case tCommitted:
		v.Committed++
		if p.single {
			v.SinglePartition++
		} else {
			v.CrossPartition++
		}
	case tDeclined:
		v.Declined++
	case tAborted:
		v.Aborted++
		v.errors[p.kind]++
	case tUnknown:
		v.Unknown++
		v.errors[p.kind]++
	}
}
