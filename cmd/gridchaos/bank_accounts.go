package main

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/collocate/grid/affinity"
)

// The bank mode's data: accounts, planned transfers and their ledger
// entries.

const (
	bankMap   = "bank"       // account -> balance (decimal)
	ledgerMap = "bankledger" // ledgerKey -> amount (decimal), written by the transfer itself
)

// bankBook names a round's accounts.
type bankBook struct {
	accounts []string
	spread   []string    // accounts named on their own, spread over the partitions
	pairs    [][2]string // two accounts sharing an affinity key each
	idle     []string    // touched only before the first fault and after the heal
	parts    int
}

// newBankBook names n accounts: 2*pairs of them in pairs ({pair-j}a,
// {pair-j}b), idle of the rest idle, the others acct-i.
func newBankBook(n, pairs, idle, parts int) *bankBook {
	b := &bankBook{parts: parts}
	for j := range pairs {
		p := [2]string{fmt.Sprintf("{pair-%d}a", j), fmt.Sprintf("{pair-%d}b", j)}
		b.pairs = append(b.pairs, p)
		b.accounts = append(b.accounts, p[0], p[1])
	}
	for i := range n - 2*pairs {
		a := fmt.Sprintf("acct-%d", i)
		b.accounts = append(b.accounts, a)
		if i >= n-2*pairs-idle {
			b.idle = append(b.idle, a)
		} else {
			b.spread = append(b.spread, a)
		}
	}
	return b
}

// transferPlan is one transfer: from, to, amount, and what became of it.
type transferPlan struct {
	id       string
	from, to string
	amount   int
	single   bool // both accounts in one partition
	outcome  transferOutcome
	kind     string // the final error's kind, if any
	declined bool   // set by the transaction's last attempt
	latency  time.Duration
}

type transferOutcome uint8

const (
	tNone            transferOutcome = iota // not run
	tCommitted                              // moved the money
	tDeclined                               // committed without moving money
	tAborted                                // an error that promises nothing was applied
	tUnknown                                // txn.ErrUnknown
	tAbandonedBefore                        // its client died before its commit step: nothing may apply
	tAbandonedMid                           // its client died with the commit step in flight: unknown
)

// mayApply says which ledger states (entries present: 0 or 2) an outcome
// allows.
func (o transferOutcome) mayApply() (none, both bool) {
	switch o {
	case tCommitted:
		return false, true
	case tUnknown, tAbandonedMid:
		return true, true
	default:
		return true, false
	}
}

func (o transferOutcome) String() string {
	return [...]string{"not run", "committed", "declined", "aborted", "unknown", "abandoned before its commit", "abandoned mid-commit"}[o]
}

// plan draws a transfer: a pair's two accounts with probability 1/4,
// otherwise two distinct accounts among the spread ones (and the idle
// ones when withIdle), in a random order; amount 1..60.
func (b *bankBook) plan(rng *rand.Rand, id string, withIdle bool) *transferPlan {
	p := &transferPlan{id: id, amount: 1 + rng.IntN(60)}
	if len(b.pairs) > 0 && rng.IntN(4) == 0 {
		pr := b.pairs[rng.IntN(len(b.pairs))]
		p.from, p.to = pr[0], pr[1]
	} else {
		pool := b.spread
		if withIdle {
			pool = append(append([]string{}, b.spread...), b.idle...)
		}
		i := rng.IntN(len(pool))
		j := rng.IntN(len(pool) - 1)
		if j >= i {
			j++
		}
		p.from, p.to = pool[i], pool[j]
	}
	if rng.IntN(2) == 0 {
		p.from, p.to = p.to, p.from
	}
	p.single = affinity.Partition(p.from, b.parts) == affinity.Partition(p.to, b.parts)
	return p
}

// ledgerKey is the ledger entry of transfer id at account acct (side
// "out" at the source, "in" at the destination): in acct's partition, so
// the ledger adds no participant to the transfer.
func ledgerKey(acct, id, side string) string {
	return "{" + affinity.Tag(acct) + "}L/" + id + "/" + side
}

func itoa(v int) []byte { return []byte(strconv.Itoa(v)) }

// balanceOf parses a balance; ok false if it is no integer.
func balanceOf(b []byte) (int, bool) {
	v, err := strconv.Atoi(string(b))
	return v, err == nil
}
