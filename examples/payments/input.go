package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/grid"
)

// The input: accounts with opening balances and a list of payment
// requests, both drawn from the seed, and the client that publishes the
// requests into payments.requested.

// inputs is what a run starts from; recompute derives every outcome from
// it alone.
type inputs struct {
	accounts []string         // acct-0 ... acct-(M-1)
	opening  map[string]int64 // account -> opening balance, in cents
	payments []Payment        // payment i has ID pay-i
	// sends is the order the client publishes in: every payment once, in
	// order but for a few that swapped places with their payer's next one
	// (requests overtaking each other), and now and then an earlier one
	// again (a client resending after a lost answer).
	sends []int
	rules *Rules
}

// Shape of the generated input.
const (
	amountLimit  = 20000 // cents: a larger payment is taken for fraud
	hotShare     = 0.15  // share of payments made by the hot tenth of the accounts
	meanAmount   = 4000  // cents, of an ordinary payment (exponential)
	openingMin   = 50000 // cents
	openingRange = 200000
)

// generate draws the inputs of cfg from cfg.Seed.
func generate(cfg Config) *inputs {
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x9a7e))
	in := &inputs{opening: map[string]int64{}}
	rules := &Rules{Accounts: map[string]bool{}, AmountLimit: amountLimit,
		MaxPerPayer: max(5, 3*cfg.Payments/(2*cfg.Accounts))}
	for i := range cfg.Accounts {
		a := "acct-" + strconv.Itoa(i)
		in.accounts = append(in.accounts, a)
		in.opening[a] = openingMin + rng.Int64N(openingRange+1)
		rules.Accounts[a] = true
	}
	in.rules = rules
	seq := map[string]uint64{}
	for i := range cfg.Payments {
		p := drawPayment(rng, in.accounts)
		p.ID = fmt.Sprintf("pay-%06d", i)
		seq[p.Payer]++
		p.Seq = seq[p.Payer]
		in.payments = append(in.payments, p)
		in.sends = append(in.sends, i)
		if rng.Float64() < cfg.Resend {
			in.sends = append(in.sends, rng.IntN(i+1))
		}
	}
	overtake(rng, in, cfg.Overtake)
	return in
}

// overtake swaps the first sends of a share of the payments with those of
// their payer's next payment, which then arrives first.
func overtake(rng *rand.Rand, in *inputs, share float64) {
	pos := make([]int, len(in.payments)) // payment -> its first send
	for k := len(in.sends) - 1; k >= 0; k-- {
		pos[in.sends[k]] = k
	}
	next := make([]int, len(in.payments)) // payment -> its payer's next one (0: none)
	last := map[string]int{}
	for i, p := range in.payments {
		if j, ok := last[p.Payer]; ok {
			next[j] = i
		}
		last[p.Payer] = i
	}
	for i := range in.payments {
		j := next[i]
		if j == 0 || rng.Float64() >= share {
			continue
		}
		a, b := pos[i], pos[j]
		in.sends[a], in.sends[b] = j, i
		pos[i], pos[j] = b, a
	}
}

// drawPayment draws an ordinary payment between two accounts, or now and
// then one that a stage must reject.
func drawPayment(rng *rand.Rand, accounts []string) Payment {
	m := len(accounts)
	payer := rng.IntN(m)
	if rng.Float64() < hotShare {
		payer = rng.IntN(max(1, m/10))
	}
	payee := rng.IntN(m - 1)
	if payee >= payer {
		payee++ // anyone but the payer
	}
	p := Payment{Payer: accounts[payer], Payee: accounts[payee], Amount: 100 + int64(rng.ExpFloat64()*meanAmount)}
	ghost := "ghost-" + strconv.Itoa(rng.IntN(3))
	switch r := rng.Float64(); {
	case r < 0.01:
		p.Amount = -rng.Int64N(1000) // zero or negative
	case r < 0.02:
		p.Payee = p.Payer
	case r < 0.03:
		p.Payer = ghost
	case r < 0.04:
		p.Payee = ghost
	case r < 0.055:
		p.Amount = amountLimit + 1 + rng.Int64N(50000)
	}
	return p
}

// pubStats counts the client's publishes.
type pubStats struct {
	acked    atomic.Int64 // sends acknowledged (resends included)
	unknown  atomic.Int64 // sends retried after an unknown outcome: each may have landed too
	refused  atomic.Int64 // sends retried after an error that applied nothing
	payments atomic.Int64 // distinct payments acknowledged at least once
}

// publish publishes in.sends through nd with cfg.Publishers concurrent
// senders at about cfg.Rate per second (0: as fast as they go). Senders
// run side by side, so a payer's payments may land out of their order:
// validate puts them back in it.
func publish(ctx context.Context, nd *grid.Node, in *inputs, cfg Config, st *pubStats) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan int)
	errc := make(chan error, cfg.Publishers)
	acked := make([]atomic.Bool, len(in.payments))
	var wg sync.WaitGroup
	for range cfg.Publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := publishOne(ctx, nd, in.payments[i], st); err != nil {
					errc <- err
					cancel()
					return
				}
				if !acked[i].Swap(true) {
					st.payments.Add(1)
				}
			}
		}()
	}
	feed(ctx, jobs, in.sends, cfg.Rate)
	close(jobs)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return ctx.Err()
	}
}

// feed hands sends to the senders, paced at rate per second.
func feed(ctx context.Context, jobs chan<- int, sends []int, rate int) {
	start := time.Now()
	for k, i := range sends {
		if rate > 0 {
			at := start.Add(time.Duration(k) * time.Second / time.Duration(rate))
			if d := time.Until(at); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case jobs <- i:
		}
	}
}

// publishOne publishes p until the grid acknowledges it. After an unknown
// outcome (ErrTimeout) it publishes again: the payment may now be in the
// stream twice, and validate drops the second by its Seq.
func publishOne(ctx context.Context, nd *grid.Node, p Payment, st *pubStats) error {
	value, key := encode(p), accountKey(p.Payer)
	giveUp := time.Now().Add(time.Minute)
	wait := 20 * time.Millisecond
	for {
		_, err := nd.Publish(ctx, streamRequested, key, value)
		switch {
		case err == nil:
			st.acked.Add(1)
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, grid.ErrTimeout) || errors.Is(err, grid.ErrReplication):
			st.unknown.Add(1)
		case nothingApplied(err):
			st.refused.Add(1)
		default:
			return fmt.Errorf("publish %s: %w", p.ID, err)
		}
		if time.Now().After(giveUp) {
			return fmt.Errorf("publish %s: still failing after a minute: %w", p.ID, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// nothingApplied reports errors after which a publish applied nothing and
// may simply be sent again.
func nothingApplied(err error) bool {
	return errors.Is(err, grid.ErrUnavailable) || errors.Is(err, grid.ErrBusy) ||
		errors.Is(err, grid.ErrNotOwner) || errors.Is(err, grid.ErrStreamFull)
}
