package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/collocate/grid/grid"
)

// The run's course: open the accounts, publish the payments through n1
// while printing progress, kill n3 once a third of them are published,
// start it again cfg.Down later, and wait until the grid holds it as a
// full member again and every payment went through.

// victim is the member killed in the middle (n3); the client publishes
// through n1, which stays up.
const victim = clusterSize - 1

// flow is one run's state, used by run's goroutine only (the client's
// counters are atomic).
type flow struct {
	cfg   Config
	out   io.Writer
	in    *inputs
	c     *embedded
	st    pubStats
	began time.Time

	killedAt    time.Time // zero: not yet
	restarted   bool
	converged   bool      // the table is stable again after the restart
	publishedAt time.Time // zero: the client is not done
	last        *observed // the state read when the flow was through
}

// openAccounts writes every account's entry (for book) and its opening
// balance (for project), each under the account's tag.
func openAccounts(ctx context.Context, nd *grid.Node, in *inputs) error {
	accounts, balances := map[string][]byte{}, map[string][]byte{}
	for a, open := range in.opening {
		accounts[accountKey(a)] = encode(Account{Opening: open})
		balances[accountKey(a)] = encode(Balance{Balance: open})
	}
	for _, w := range []struct {
		m       string
		entries map[string][]byte
	}{{mapAccounts, accounts}, {mapBalances, balances}} {
		if err := nd.Map(w.m).PutAll(ctx, w.entries); err != nil {
			// PutAll writes the same values again if retried: safe, but
			// a setup failure on a fresh cluster is worth stopping for.
			return fmt.Errorf("open accounts (%s): %w", w.m, err)
		}
	}
	return nil
}

// drive runs the client and the kill and restart, printing progress,
// until every payment went through.
func (f *flow) drive(ctx context.Context) error {
	pctx, stopClient := context.WithCancel(ctx)
	pubDone := make(chan error, 1)
	go func() { pubDone <- publish(pctx, f.c.members[0].node, f.in, f.cfg, &f.st) }()
	defer func() {
		stopClient()
		if pubDone != nil {
			<-pubDone
		}
	}()
	tick := time.NewTicker(chaosTick)
	defer tick.Stop()
	var printed time.Time
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-pubDone:
			pubDone = nil
			if err != nil {
				return fmt.Errorf("client: %w", err)
			}
			f.publishedAt = time.Now()
			f.say("client: every payment published")
		case <-tick.C:
		}
		if err := f.chaos(ctx); err != nil {
			return err
		}
		if time.Since(printed) < f.cfg.Progress {
			continue
		}
		printed = time.Now()
		printProgress(f.out, time.Since(f.began), &f.st, f.cfg.Payments, f.c)
		if f.publishedAt.IsZero() || !f.restarted {
			continue
		}
		done, err := f.through(ctx)
		if done || err != nil {
			return err
		}
	}
}

// chaosTick is how often drive looks at the run's course.
const chaosTick = 100 * time.Millisecond

// chaos kills the victim once a third of the payments are published,
// starts it again cfg.Down later, and says when the grid holds it as a
// full member again.
func (f *flow) chaos(ctx context.Context) error {
	name := f.c.members[victim].name
	switch {
	case f.killedAt.IsZero() && f.st.payments.Load() >= int64(f.cfg.Payments/3):
		f.say(fmt.Sprintf("kill %s: its node dies at once, as SIGKILL would; its partitions fail over to their backups", name))
		f.c.kill(victim)
		f.killedAt = time.Now()
	case !f.killedAt.IsZero() && !f.restarted && time.Since(f.killedAt) >= f.cfg.Down:
		f.say(fmt.Sprintf("restart %s: a new, empty member under the same name joins n1 and n2", name))
		if err := f.c.restart(ctx, victim); err != nil {
			return err
		}
		f.restarted = true
	case f.restarted && !f.converged && f.c.unstable() == "":
		f.converged = true
		f.say(fmt.Sprintf("%s holds its share again: partitions moved to it with their stages, every partition has its backup", name))
	}
	return nil
}

// through reports whether every payment went through: the restarted
// node holds its share again, no stage has events waiting, and the grid's
// state has every payment's outcome and ledger entries. It fails when that
// takes longer than cfg.Drain.
func (f *flow) through(ctx context.Context) (bool, error) {
	var why string
	prog := f.c.progress()
	switch {
	case !f.converged:
		why = "the table is not stable again: " + f.c.unstable()
	case !idle(prog):
		why = "stages have events waiting"
	default:
		ob, err := f.observe(ctx, prog)
		if err != nil {
			why = err.Error()
			break
		}
		if why = ob.missing(f.cfg.Payments); why == "" {
			f.last = ob
			return true, nil
		}
	}
	from := f.publishedAt
	if f.killedAt.Add(f.cfg.Down).After(from) {
		from = f.killedAt.Add(f.cfg.Down)
	}
	if time.Since(from) > f.cfg.Drain {
		return false, fmt.Errorf("the flow did not finish within %v after the last payment was published and %s restarted: %s",
			f.cfg.Drain, f.c.members[victim].name, why)
	}
	return false, nil
}

// observe reads the grid's state, and its dead letters if a stage parked
// events.
func (f *flow) observe(ctx context.Context, prog map[string]stageProgress) (*observed, error) {
	nd := f.c.members[0].node
	ob, err := observe(ctx, nd)
	if err != nil || parked(prog) == 0 {
		return ob, err
	}
	ob.dead, err = deadLetters(ctx, nd)
	return ob, err
}

// idle reports whether no stage has events waiting at the partitions led
// now (a partition in failover is led by no one: through reads the state
// to be sure).
func idle(prog map[string]stageProgress) bool {
	for _, name := range stageNames {
		if prog[name].lag > 0 {
			return false
		}
	}
	return true
}

// say prints an event of the run, with its time.
func (f *flow) say(s string) {
	fmt.Fprintf(f.out, "%6.1fs  >> %s\n", time.Since(f.began).Seconds(), s)
}
