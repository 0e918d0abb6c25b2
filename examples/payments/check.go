package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/process"
)

// The check: read what the grid holds at the end (every payment's outcome,
// every balance, the dead letters), recompute what it must hold from the
// inputs alone, and compare.

// observed is the grid's state at the end of a run.
type observed struct {
	booked     map[string]bool   // payment id -> booked (its ledger debit exists)
	rejected   map[string]string // payment id -> reason
	balances   map[string]Balance
	duplicates int64 // resends validate dropped
	held       int64 // payments validate held for their turn
	dead       []process.DeadLetter
}

// expected is what the inputs say the grid must hold.
type expected struct {
	outcome  map[string]string // payment id -> "" (booked) or the reason it was rejected
	balances map[string]int64
	entries  map[string]int64 // ledger entries per account
}

// recompute applies the rules to the payments in the order the client
// issued them. That is each payer's Seq order, the only order the flow
// promises (payments of different payers are independent), and the only
// one the rules depend on.
func recompute(in *inputs) *expected {
	ex := &expected{outcome: map[string]string{}, balances: map[string]int64{}, entries: map[string]int64{}}
	accounts := map[string]Account{}
	for a, open := range in.opening {
		ex.balances[a] = open
		accounts[a] = Account{Opening: open}
	}
	passed := map[string]int{}
	for _, p := range in.payments {
		reason := in.rules.validation(p)
		if reason == "" {
			reason = in.rules.fraud(p, passed[p.Payer])
			if reason == "" {
				passed[p.Payer]++
				reason = funds(p, accounts[p.Payer])
			}
		}
		ex.outcome[p.ID] = reason
		if reason != "" {
			continue
		}
		a := accounts[p.Payer]
		a.Debited += p.Amount
		accounts[p.Payer] = a
		ex.balances[p.Payer] -= p.Amount
		ex.balances[p.Payee] += p.Amount
		ex.entries[p.Payer]++
		ex.entries[p.Payee]++
	}
	return ex
}

// observe reads the outcomes, balances and validate's counts from the
// grid.
func observe(ctx context.Context, nd *grid.Node) (*observed, error) {
	ob := &observed{booked: map[string]bool{}, rejected: map[string]string{}, balances: map[string]Balance{}}
	err := scan(ctx, nd, mapLedger, func(_ string, v []byte) error {
		le, err := decode[LedgerEntry](v)
		ob.booked[le.Payment] = true
		return err
	})
	if err == nil {
		err = scan(ctx, nd, mapRejected, func(_ string, v []byte) error {
			r, err := decode[Rejection](v)
			ob.rejected[r.Payment.ID] = r.Reason
			return err
		})
	}
	if err == nil {
		err = scan(ctx, nd, mapBalances, func(k string, v []byte) error {
			b, err := decode[Balance](v)
			ob.balances[strings.Trim(k, "{}")] = b
			return err
		})
	}
	if err == nil {
		err = scan(ctx, nd, mapIntake, func(_ string, v []byte) error {
			in, err := decode[intake](v)
			ob.duplicates += in.Duplicates
			ob.held += in.Held
			return err
		})
	}
	return ob, err
}

// scan calls fn for every entry of map m.
func scan(ctx context.Context, nd *grid.Node, m string, fn func(k string, v []byte) error) error {
	var err error
	for k, v := range nd.Map(m).Scan(ctx, &err) {
		if ferr := fn(k, v); ferr != nil {
			return fmt.Errorf("map %s key %q: %w", m, k, ferr)
		}
	}
	if err != nil {
		return fmt.Errorf("scan %s: %w", m, err)
	}
	return nil
}

// missing says what has not gone through yet, of n payments: those with
// no outcome, and the booked payments' ledger entries not yet in the
// balances ("" if nothing). An event parked in the dead letters went as
// far as it will go: it counts as through (and fails the check).
func (ob *observed) missing(n int) string {
	parked, parkedEntries := parkedOf(ob.dead)
	outcomes := len(ob.booked) + len(ob.rejected)
	for id := range parked {
		if _, rejected := ob.rejected[id]; !rejected && !ob.booked[id] {
			outcomes++
		}
	}
	var entries int64
	for _, b := range ob.balances {
		entries += b.Entries
	}
	want := 2 * int64(len(ob.booked))
	if outcomes >= n && entries+parkedEntries >= want {
		return ""
	}
	return fmt.Sprintf("%d of %d payments have an outcome; %d of the %d ledger entries of the booked ones are in the balances",
		outcomes, n, entries, want)
}

// parkedOf returns the payments and counts the ledger entries in dead
// letters.
func parkedOf(dead []process.DeadLetter) (map[string]bool, int64) {
	payments := map[string]bool{}
	var entries int64
	for _, d := range dead {
		if d.Source == streamLedger {
			entries += int64(len(d.Events))
			continue
		}
		for _, ev := range d.Events {
			if p, err := decode[Payment](ev.Value); err == nil && p.ID != "" {
				payments[p.ID] = true
			}
		}
	}
	return payments, entries
}

// deadLetters reads every processor's dead-letter stream (and the
// outbox's) in every partition.
func deadLetters(ctx context.Context, nd *grid.Node) ([]process.DeadLetter, error) {
	var out []process.DeadLetter
	names := append(stageNames[:], "outbox")
	for _, name := range names {
		for part := range nd.Partitions() {
			evs, err := readAll(ctx, nd, process.DeadLetters(name), part)
			if err != nil {
				return nil, err
			}
			for _, ev := range evs {
				dl, err := process.DecodeDeadLetter(ev.Value)
				if err != nil {
					dl = process.DeadLetter{Processor: name, Partition: part, Position: ev.Position, Error: "undecodable dead letter: " + err.Error()}
				}
				out = append(out, dl)
			}
		}
	}
	return out, nil
}

// readAll reads stream's retained events of partition part.
func readAll(ctx context.Context, nd *grid.Node, stream string, part int) ([]grid.StreamEvent, error) {
	var out []grid.StreamEvent
	from := uint64(1)
	for {
		evs, next, err := nd.ReadStream(ctx, stream, part, from, 256)
		var trimmed *grid.TrimmedError
		if errors.As(err, &trimmed) {
			from = trimmed.Oldest
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s of partition %d: %w", stream, part, err)
		}
		out = append(out, evs...)
		if len(evs) == 0 || next <= from {
			return out, nil
		}
		from = next
	}
}

// compare lists every difference between what the grid holds and what it
// must hold (empty: none).
func compare(ex *expected, ob *observed) []string {
	return append(comparePayments(ex, ob), compareBalances(ex, ob)...)
}

// comparePayments compares every payment's outcome.
func comparePayments(ex *expected, ob *observed) []string {
	var bad []string
	parked, _ := parkedOf(ob.dead)
	for _, id := range slices.Sorted(maps.Keys(ex.outcome)) {
		want := ex.outcome[id]
		got, rejected := ob.rejected[id]
		switch {
		case ob.booked[id] && rejected:
			bad = append(bad, fmt.Sprintf("payment %s: booked and rejected (%s)", id, got))
		case parked[id] && !ob.booked[id] && !rejected:
			bad = append(bad, fmt.Sprintf("payment %s: parked in the dead letters, want %s", id, outcome(want == "", want)))
		case want == "" && !ob.booked[id]:
			bad = append(bad, fmt.Sprintf("payment %s: not booked (%s), want booked", id, outcome(false, got)))
		case want != "" && got != want:
			bad = append(bad, fmt.Sprintf("payment %s: %s, want rejected: %s", id, outcome(ob.booked[id], got), want))
		}
	}
	for id := range ob.booked {
		if _, ok := ex.outcome[id]; !ok {
			bad = append(bad, fmt.Sprintf("payment %s: booked, but never requested", id))
		}
	}
	return bad
}

// compareBalances compares every account's balance and its count of
// ledger entries.
func compareBalances(ex *expected, ob *observed) []string {
	var bad []string
	for _, a := range slices.Sorted(maps.Keys(ex.balances)) {
		got, ok := ob.balances[a]
		switch {
		case !ok:
			bad = append(bad, fmt.Sprintf("account %s: no balance, want %s", a, money(ex.balances[a])))
		case got.Balance != ex.balances[a] || got.Entries != ex.entries[a]:
			bad = append(bad, fmt.Sprintf("account %s: balance %s from %d entries, recomputed %s from %d entries",
				a, money(got.Balance), got.Entries, money(ex.balances[a]), ex.entries[a]))
		}
	}
	for a := range ob.balances {
		if _, ok := ex.balances[a]; !ok {
			bad = append(bad, fmt.Sprintf("account %s: has a balance, but does not exist", a))
		}
	}
	return bad
}

// outcome describes a payment's outcome: booked, rejected with a reason,
// or none.
func outcome(booked bool, reason string) string {
	if booked {
		return "booked"
	}
	if reason == "" {
		return "no outcome"
	}
	return "rejected: " + reason
}

// money formats cents.
func money(c int64) string {
	sign := ""
	if c < 0 {
		sign, c = "-", -c
	}
	return fmt.Sprintf("%s%d.%02d", sign, c/100, c%100)
}
