package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/client"
	"github.com/collocate/grid/txn"
	"github.com/collocate/grid/txn/txnnode"
)

// The bank mode's load: writers, auditors and the abandoner, through
// client connections of their own (the harness' process table is the
// nemesis' alone: they know the nodes' addresses, not the processes).

// bankLoad is a round's concurrent load and its records.
type bankLoad struct {
	cfg   bankConfig
	book  *bankBook
	addrs []string // every node's RPC address
	opts  txn.Options
	t0    time.Time
	trap  trap

	// idleOpen: the idle accounts take transfers (before the first fault
	// and after the heal).
	idleOpen atomic.Bool
	// holds: auditors out of patience; writers start no transfer while
	// one holds them.
	holds   atomic.Int32
	stop    chan struct{}
	wg      sync.WaitGroup
	clients []*client.Client

	mu         sync.Mutex
	plans      []*transferPlan // every transfer run, by any writer, the abandoner or the nemesis
	commits    []int64         // ns since t0 of every committed transfer
	latencies  []float64       // ms, every committed transfer
	audits     auditStats
	violations []string // audits and unreadable accounts
	abandons   int
	examples   map[string]string // the first error of each kind, of transfers and audits
	// pastMax is the longest any prepared record was seen held past its
	// transaction's deadline (ms; watch).
	pastMax float64
	pastAt  string
}

// auditStats are the auditors' counts.
type auditStats struct {
	audits, attempts, failed int
	held                     int // audits committed while the writers were held
	errors                   map[string]int
}

func (l *bankLoad) stopped() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

func (l *bankLoad) violation(format string, args ...any) {
	l.mu.Lock()
	l.violations = append(l.violations, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

// pause sleeps d or until the load stops.
func (l *bankLoad) pause(d time.Duration) {
	select {
	case <-l.stop:
	case <-time.After(d):
	}
}

// startBankLoad dials the writers' and auditors' clients and starts them.
func startBankLoad(ctx context.Context, cfg bankConfig, book *bankBook, addrs, httpURLs []string, seed uint64) (*bankLoad, error) {
	l := &bankLoad{cfg: cfg, book: book, addrs: addrs, opts: txn.Options{Timeout: cfg.TxnTimeout}, t0: time.Now(),
		stop: make(chan struct{}), audits: auditStats{errors: map[string]int{}}, examples: map[string]string{}}
	l.idleOpen.Store(true)
	for range cfg.Clients + cfg.Auditors {
		c, err := client.Dial(ctx, client.Config{Addrs: addrs})
		if err != nil {
			l.close()
			return nil, err
		}
		l.clients = append(l.clients, c)
	}
	for w := range cfg.Writers {
		g := txn.Client(l.clients[w%cfg.Clients])
		rng := randNew(seed*1000 + uint64(w))
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.writer(ctx, w, g, rng)
		}()
	}
	for a := range cfg.Auditors {
		g := txn.Client(l.clients[cfg.Clients+a])
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.auditor(ctx, g)
		}()
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.watch(ctx, httpURLs)
	}()
	if cfg.AbandonEvery > 0 {
		rng := randNew(seed*1000 + 999)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.abandoner(ctx, rng)
		}()
	}
	return l, nil
}

// halt stops the load and waits for it (a transfer under way ends first).
func (l *bankLoad) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// close halts the load and closes its clients.
func (l *bankLoad) close() {
	l.halt()
	for _, c := range l.clients {
		c.Close()
	}
	l.clients = nil
}

// writer runs transfers until the load stops.
func (l *bankLoad) writer(ctx context.Context, w int, g txn.Grid, rng *rand.Rand) {
	for seq := 0; !l.stopped() && ctx.Err() == nil; seq++ {
		for l.holds.Load() > 0 && !l.stopped() {
			l.pause(time.Millisecond)
		}
		p := l.book.plan(rng, fmt.Sprintf("w%d.%d", w, seq), l.idleOpen.Load())
		hg := &hookGrid{Grid: g,
			before: func(_ context.Context, coord int, prepared []int) error {
				l.trap.spring(beforeCommit, p.id, coord, prepared)
				return nil
			},
			after: func(coord int, prepared []int) { l.trap.spring(afterCommit, p.id, coord, prepared) },
		}
		l.transfer(ctx, hg, p)
		l.pause(l.cfg.Pace)
	}
}

// transfer runs p through hg (txn.Run, within TransferTimeout) and
// records its outcome.
func (l *bankLoad) transfer(ctx context.Context, hg *hookGrid, p *transferPlan) {
	tctx, cancel := context.WithTimeout(ctx, l.cfg.TransferTimeout)
	defer cancel()
	start := time.Now()
	err := txn.Run(tctx, hg, l.opts, func(ctx context.Context, tx *txn.Tx) error {
		hg.reset()
		return l.transferBody(ctx, tx, p)
	})
	p.latency = time.Since(start)
	l.record(p, err)
}

// transferBody reads both accounts, and unless the source holds less
// than the amount moves it and writes the two ledger entries.
func (l *bankLoad) transferBody(ctx context.Context, tx *txn.Tx, p *transferPlan) error {
	p.declined = false
	from, err := l.balance(ctx, tx, p.from)
	if err != nil {
		return err
	}
	to, err := l.balance(ctx, tx, p.to)
	if err != nil {
		return err
	}
	if from < p.amount {
		p.declined = true
		return nil
	}
	amt := itoa(p.amount)
	return errors.Join(
		tx.Put(bankMap, p.from, itoa(from-p.amount)),
		tx.Put(bankMap, p.to, itoa(to+p.amount)),
		tx.Put(ledgerMap, ledgerKey(p.from, p.id, "out"), amt),
		tx.Put(ledgerMap, ledgerKey(p.to, p.id, "in"), amt))
}

// errBadAccount: an account is missing or holds no integer (a violation;
// the transaction that read it rolls back).
var errBadAccount = errors.New("bank: account missing or not an integer")

// balance reads acct in tx.
func (l *bankLoad) balance(ctx context.Context, tx *txn.Tx, acct string) (int, error) {
	v, err := tx.Get(ctx, bankMap, acct)
	if errors.Is(err, txn.ErrNotFound) {
		l.violation("transaction %s found account %s missing", tx.ID(), acct)
		return 0, errBadAccount
	}
	if err != nil {
		return 0, err
	}
	b, ok := balanceOf(v)
	if !ok {
		l.violation("transaction %s read account %s = %q", tx.ID(), acct, v)
		return 0, errBadAccount
	}
	return b, nil
}

// record files p with the outcome err gives it.
func (l *bankLoad) record(p *transferPlan, err error) {
	switch {
	case err == nil && p.declined:
		p.outcome = tDeclined
	case err == nil:
		p.outcome = tCommitted
	case errors.Is(err, txn.ErrUnknown):
		p.outcome, p.kind = tUnknown, txnErrKind(err)
	default:
		p.outcome, p.kind = tAborted, txnErrKind(err)
	}
	if err != nil {
		l.example("transfer "+p.kind, err)
	}
	l.file(p)
}

// example keeps err as the first example of kind.
func (l *bankLoad) example(kind string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.examples[kind]; !ok {
		l.examples[kind] = err.Error()
	}
}

func (l *bankLoad) file(p *transferPlan) {
	at := time.Since(l.t0).Nanoseconds()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.plans = append(l.plans, p)
	if p.outcome == tCommitted {
		l.commits = append(l.commits, at)
		l.latencies = append(l.latencies, float64(p.latency.Microseconds())/1000)
	}
}

// committedSince counts the transfers committed since at (ns since t0).
func (l *bankLoad) committedSince(at int64) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.commits {
		if c >= at {
			n++
		}
	}
	return n
}

// latencyMs returns the committed transfers' latencies.
func (l *bankLoad) latencyMs() []float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]float64{}, l.latencies...)
}

// since is ns since the load's t0.
func (l *bankLoad) since() int64 { return time.Since(l.t0).Nanoseconds() }

// txnErrKind names a transaction's error for the counts.
func txnErrKind(err error) string {
	switch {
	case errors.Is(err, txn.ErrConflict):
		return "conflict"
	case errors.Is(err, txn.ErrExpired):
		return "expired"
	case errors.Is(err, errBadAccount):
		return "bad_account"
	}
	return errKind(err)
}

// auditor runs audits until the load stops.
func (l *bankLoad) auditor(ctx context.Context, g txn.Grid) {
	for !l.stopped() && ctx.Err() == nil {
		l.pause(l.cfg.AuditPace)
		actx, cancel := context.WithTimeout(ctx, l.cfg.TransferTimeout)
		l.audit(actx, g, "")
		cancel()
	}
}

// audit reads every account in one read-only transaction and checks that
// a committed one saw the opening total and no negative balance. It
// returns the balances it saw (nil if it did not commit). what names a
// special audit in its violations. After AuditPatience attempts that did
// not commit (a read changed before the audit locked it: optimistic reads
// of every account rarely commit while transfers do), it holds the writers
// (no new transfer starts) until it ends, for at most auditHold. With
// AuditLocking every Get locks its account, so an attempt fails only when
// an older transfer holds one (wait-die).
func (l *bankLoad) audit(ctx context.Context, g txn.Grid, what string) map[string][]byte {
	var seen map[string][]byte
	var id string
	attempts := 0
	var holding, held bool
	var holdEnd time.Time
	release := func() {
		if holding {
			holding = false
			l.holds.Add(-1)
		}
	}
	defer release()
	opts := l.opts
	opts.Locking = l.cfg.AuditLocking
	err := txn.Run(ctx, g, opts, func(ctx context.Context, tx *txn.Tx) error {
		attempts++
		switch {
		case attempts > l.cfg.AuditPatience && !held:
			holding, held, holdEnd = true, true, time.Now().Add(auditHold)
			l.holds.Add(1)
		case holding && time.Now().After(holdEnd):
			release()
		}
		id = tx.ID()
		seen = make(map[string][]byte, len(l.book.accounts))
		if attempts%2 == 0 {
			// Every other attempt reads all accounts at once (one
			// request per member); the others one Get at a time.
			if err := tx.Prefetch(ctx, bankMap, l.book.accounts); err != nil {
				return err
			}
		}
		for _, a := range l.book.accounts {
			v, err := tx.Get(ctx, bankMap, a)
			if err != nil && !errors.Is(err, txn.ErrNotFound) {
				return err
			}
			if err == nil {
				seen[a] = v
			}
		}
		return nil
	})
	if err != nil {
		l.example("audit "+txnErrKind(err), err)
	}
	l.mu.Lock()
	l.audits.attempts += attempts
	if err != nil {
		l.audits.failed++
		l.audits.errors[txnErrKind(err)]++
		l.mu.Unlock()
		return nil
	}
	l.audits.audits++
	if held {
		l.audits.held++
	}
	l.mu.Unlock()
	if why := auditVerdict(l.book.accounts, seen, l.cfg.Balance*len(l.book.accounts)); why != "" {
		l.violation("%saudit %s: %s", what, id, why)
	}
	return seen
}

// auditHold bounds how long an audit out of patience holds the writers.
const auditHold = 3 * time.Second

// auditVerdict says what is wrong with a committed audit's balances: an
// account missing or not an integer, a negative balance, or a total other
// than total.
func auditVerdict(accounts []string, seen map[string][]byte, total int) string {
	sum := 0
	var bad []string
	for _, a := range accounts {
		v, ok := seen[a]
		b, isInt := balanceOf(v)
		switch {
		case !ok:
			bad = append(bad, a+" missing")
		case !isInt:
			bad = append(bad, fmt.Sprintf("%s = %q", a, v))
		case b < 0:
			bad = append(bad, fmt.Sprintf("%s = %d", a, b))
		}
		sum += b
	}
	if sum == total && len(bad) == 0 {
		return ""
	}
	return fmt.Sprintf("total %d (want %d), %d accounts wrong %v", sum, total, len(bad), bad[:min(len(bad), 8)])
}

// auditCounts returns the auditors' counts.
func (l *bankLoad) auditCounts() auditStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	a := l.audits
	a.errors = maps.Clone(a.errors)
	return a
}

// abandoner abandons one transfer per AbandonEvery (jittered), in turn
// before and in the middle of its commit step.
func (l *bankLoad) abandoner(ctx context.Context, rng *rand.Rand) {
	for i := 0; ; i++ {
		l.pause(l.cfg.AbandonEvery/2 + rand.N(l.cfg.AbandonEvery))
		if l.stopped() || ctx.Err() != nil {
			return
		}
		l.abandon(ctx, rng, fmt.Sprintf("a%d", i), i%2 == 1, nil)
	}
}

// abandon runs a transfer across partitions through a connection of its
// own and dies in its commit: with mid false right after its prepares
// (the commit step is never sent; onPrepared, if set, runs first, with
// the coordinator and the prepared partitions), with mid true 0-2 ms
// after the commit step was sent. Dying is cancelling the transaction's
// ctx and closing the connection. A transfer that does not reach its
// commit (declined, or failed) is recorded as such.
func (l *bankLoad) abandon(ctx context.Context, rng *rand.Rand, id string, mid bool, onPrepared func(coord int, prepared []int)) *transferPlan {
	p := l.book.plan(rng, id, false)
	for p.single {
		p = l.book.plan(rng, id, false)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := client.Dial(dctx, client.Config{Addrs: l.addrs})
	if err != nil {
		p.outcome, p.kind = tAborted, "dial: "+errKind(err)
		l.file(p)
		return p
	}
	defer c.Close()
	tctx, die := context.WithCancel(ctx)
	defer die()
	var died atomic.Bool
	hg := &hookGrid{Grid: txn.Client(c)}
	hg.before = func(_ context.Context, coord int, prepared []int) error {
		if mid {
			return nil
		}
		if onPrepared != nil {
			onPrepared(coord, prepared)
		}
		died.Store(true)
		die()
		c.Close()
		return context.Canceled
	}
	hg.send = func(ctx context.Context, part int, name string, args []byte) ([]byte, error) {
		sent := make(chan struct{})
		go func() {
			defer close(sent)
			_, _ = txn.Client(c).Step(ctx, part, name, args)
		}()
		time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
		died.Store(true)
		die()
		c.Close()
		<-sent
		return nil, context.Canceled
	}
	rctx, rcancel := context.WithTimeout(tctx, l.cfg.TransferTimeout)
	defer rcancel()
	err = txn.Run(rctx, hg, l.opts, func(ctx context.Context, tx *txn.Tx) error {
		hg.reset()
		return l.transferBody(ctx, tx, p)
	})
	if !died.Load() {
		l.record(p, err)
		return p
	}
	p.outcome, p.kind = tAbandonedBefore, txnErrKind(err)
	if mid {
		p.outcome = tAbandonedMid
	}
	l.filePlan(p)
	return p
}

// watch polls every node's GET /v1/transactions (every 500 ms, until the
// load stops) for the prepared record held longest past its deadline.
func (l *bankLoad) watch(ctx context.Context, urls []string) {
	for !l.stopped() && ctx.Err() == nil {
		for _, u := range urls {
			var r txnnode.Report
			if getJSON(ctx, u+"/v1/transactions", &r) != nil {
				continue // down or paused
			}
			for _, p := range r.Partitions {
				for _, h := range p.Held {
					l.mu.Lock()
					if h.PastMs > l.pastMax {
						l.pastMax = h.PastMs
						l.pastAt = fmt.Sprintf("%s at partition %d (coordinator %d), %.1f s after the load began", h.ID, p.Partition, h.Coordinator, time.Since(l.t0).Seconds())
					}
					l.mu.Unlock()
				}
			}
		}
		l.pause(500 * time.Millisecond)
	}
}

// heldPast returns the longest a prepared record was seen held past its
// deadline (ms) and which.
func (l *bankLoad) heldPast() (float64, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pastMax, l.pastAt
}

// errorExamples lists the first error of each kind.
func (l *bankLoad) errorExamples() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for k, e := range l.examples {
		out = append(out, k+": "+e)
	}
	slices.Sort(out)
	return out
}

// results returns every transfer filed and the load's violations.
func (l *bankLoad) results() ([]*transferPlan, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*transferPlan{}, l.plans...), append([]string{}, l.violations...)
}
