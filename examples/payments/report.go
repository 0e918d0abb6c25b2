package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"
)

// finish reads the dead letters, compares the grid's state with the
// recomputation, and prints the final table.
func (f *flow) finish(ctx context.Context) error {
	nd := f.c.members[0].node
	ob := f.last
	dead, err := deadLetters(ctx, nd)
	if err != nil {
		return err
	}
	ob.dead = dead
	ex := recompute(f.in)
	bad := compare(ex, ob)
	bad = append(bad, f.checkDuplicates(ob)...)
	if sum, opened := totalMoney(ob, f.in); sum != opened {
		bad = append(bad, fmt.Sprintf("money not conserved: the balances sum to %s, the accounts opened with %s", money(sum), money(opened)))
	}
	f.report(ob)
	if len(bad) > 0 || len(ob.dead) > 0 {
		for i, b := range bad {
			if i == maxListed {
				fmt.Fprintf(f.out, "MISMATCH: ... and %d more\n", len(bad)-i)
				break
			}
			fmt.Fprintln(f.out, "MISMATCH:", b)
		}
		return fmt.Errorf("%w: %d differences, %d dead letters", errMismatch, len(bad), len(ob.dead))
	}
	fmt.Fprintf(f.out, "OK: every balance equals its recomputation (%d accounts), and so does every payment's outcome (%d payments)\n",
		len(ex.balances), len(ex.outcome))
	return nil
}

// checkDuplicates: validate must have dropped every resend, and at most
// as many more as the sends whose outcome was unknown (each of those may
// have landed besides its retry).
func (f *flow) checkDuplicates(ob *observed) []string {
	resends := int64(len(f.in.sends) - len(f.in.payments))
	unknown := f.st.unknown.Load()
	if ob.duplicates < resends || ob.duplicates > resends+unknown {
		return []string{fmt.Sprintf("validate dropped %d duplicates; the client resent %d payments and retried %d sends of unknown outcome",
			ob.duplicates, resends, unknown)}
	}
	return nil
}

// maxListed bounds the differences and dead letters the report lists.
const maxListed = 20

// report prints the final table.
func (f *flow) report(ob *observed) {
	w := f.out
	row := func(label string, n any, note string) {
		if note != "" {
			note = "  (" + note + ")"
		}
		fmt.Fprintf(w, "  %-42s %9v%s\n", label, n, note)
	}
	fmt.Fprintf(w, "\nresult after %.1fs\n", time.Since(f.began).Seconds())
	row("payments requested", len(f.in.payments), "")
	row("sends acknowledged", f.st.acked.Load(), fmt.Sprintf("%d resends; %d sends retried after an unknown outcome, %d after a refusal",
		len(f.in.sends)-len(f.in.payments), f.st.unknown.Load(), f.st.refused.Load()))
	row("duplicates dropped by validate", ob.duplicates, "a payer's sequence number seen before")
	row("held by validate for their turn", ob.held, "arrived before an earlier payment of their payer")
	row("booked", len(ob.booked), "")
	row("rejected", len(ob.rejected), "")
	reasons := map[string]int{}
	for _, r := range ob.rejected {
		reasons[r]++
	}
	for _, r := range slices.Sorted(maps.Keys(reasons)) {
		row("  "+r, reasons[r], "")
	}
	var entries int64
	for _, b := range ob.balances {
		entries += b.Entries
	}
	row("ledger entries projected", entries, "a debit and a credit per booked payment")
	row("dead letters", len(ob.dead), "")
	for i, d := range ob.dead {
		if i == maxListed {
			fmt.Fprintf(w, "    ... and %d more\n", len(ob.dead)-i)
			break
		}
		key := ""
		if len(d.Events) > 0 {
			key = d.Events[0].Key
		}
		fmt.Fprintf(w, "    %s, partition %d, position %d, key %q: %s\n", d.Processor, d.Partition, d.Position, key, d.Error)
	}
	sum, opened := totalMoney(ob, f.in)
	verdict := "conserved"
	if sum != opened {
		verdict = "NOT conserved"
	}
	row("money: sum of the balances", money(sum), fmt.Sprintf("opened with %s: %s", money(opened), verdict))
}

// totalMoney returns the sum of the balances and of the opening balances.
func totalMoney(ob *observed, in *inputs) (sum, opened int64) {
	for _, b := range ob.balances {
		sum += b.Balance
	}
	for _, o := range in.opening {
		opened += o
	}
	return sum, opened
}
