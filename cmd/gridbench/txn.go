package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/client"
	"github.com/collocate/grid/txn"
)

// Transaction workloads (package txn through the client SDK): each
// operation is one transfer of 1 between two of -keys accounts, txn.Run
// reading both (one Prefetch) and writing both (-txn-reads=false: writing both without
// reading, a transactional 2-key put; -txn-adds: AddAtLeast(from, -1, 0)
// and Add(to, 1), the balances checked and changed where they live;
// -txn-locking: with txn.Options.Locking, the Prefetch locking both).
const (
	workloadTxnCross  = "txn-cross"  // the two accounts in different partitions: two-phase commit
	workloadTxnSingle = "txn-single" // the two accounts share an affinity key: one step
)

// openingBalance is every account's balance after the preload.
const openingBalance = 1_000_000_000

func (w *workload) transactions() bool {
	return w.name == workloadTxnCross || w.name == workloadTxnSingle
}

// account names the accounts: acct:i (txn-cross), {acct:i}a and {acct:i}b
// (txn-single).
func (w *workload) account(i int, second bool) string {
	if w.name == workloadTxnSingle {
		if second {
			return fmt.Sprintf("{acct:%d}b", i)
		}
		return fmt.Sprintf("{acct:%d}a", i)
	}
	return fmt.Sprintf("acct:%d", i)
}

// preloadAccounts opens every account the workload uses.
func (w *workload) preloadAccounts(add func(key string, value []byte) error) error {
	v := []byte(strconv.Itoa(openingBalance))
	for i := range w.keys {
		if err := add(w.account(i, false), v); err != nil {
			return err
		}
		if w.name == workloadTxnSingle {
			if err := add(w.account(i, true), v); err != nil {
				return err
			}
		}
	}
	return nil
}

// pair draws a transfer's two accounts: for txn-cross two accounts in
// different partitions, for txn-single a pair sharing its affinity key.
func (w *workload) pair(rng *rand.Rand, parts int) (string, string) {
	i := rng.IntN(w.keys)
	if w.name == workloadTxnSingle {
		if rng.IntN(2) == 0 {
			return w.account(i, false), w.account(i, true)
		}
		return w.account(i, true), w.account(i, false)
	}
	a := w.account(i, false)
	for {
		b := w.account(rng.IntN(w.keys), false)
		if affinity.Partition(a, parts) != affinity.Partition(b, parts) {
			return a, b
		}
	}
}

// transfer moves 1 from one account to the other in a transaction.
func (w *workload) transfer(ctx context.Context, c *client.Client, rng *rand.Rand) error {
	from, to := w.pair(rng, c.Partitions())
	return txn.Run(ctx, txn.Client(c), txn.Options{Locking: w.txnLocking}, func(ctx context.Context, tx *txn.Tx) error {
		if w.txnAdds {
			// The balance check where the key lives, at commit: no reads.
			return errors.Join(tx.AddAtLeast(w.mapName, from, -1, 0), tx.Add(w.mapName, to, 1))
		}
		if !w.txnReads {
			return errors.Join(tx.Put(w.mapName, from, w.value), tx.Put(w.mapName, to, w.value))
		}
		// Both reads in one request per member.
		if err := tx.Prefetch(ctx, w.mapName, []string{from, to}); err != nil {
			return err
		}
		a, err := balance(ctx, tx, w.mapName, from)
		if err != nil {
			return err
		}
		b, err := balance(ctx, tx, w.mapName, to)
		if err != nil {
			return err
		}
		return errors.Join(tx.Put(w.mapName, from, strconv.AppendInt(nil, a-1, 10)),
			tx.Put(w.mapName, to, strconv.AppendInt(nil, b+1, 10)))
	})
}

func balance(ctx context.Context, tx *txn.Tx, m, key string) (int64, error) {
	v, err := tx.Get(ctx, m, key)
	if err != nil {
		return 0, fmt.Errorf("account %s: %w", key, err)
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("account %s holds %q", key, v)
	}
	return n, nil
}
