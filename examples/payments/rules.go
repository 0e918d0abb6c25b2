package main

import (
	"encoding/json"
	"fmt"
)

// The bank's rules, as pure functions: the stages apply them to events at
// the partitions' primaries, and the final check applies the same ones to
// the input list to recompute what every payment and balance must be.

// Payment is a payment request, the flow's input.
type Payment struct {
	ID     string `json:"id"`
	Payer  string `json:"payer"`
	Payee  string `json:"payee"`
	Amount int64  `json:"amount"` // in cents
	// Seq numbers the payer's payments 1, 2, 3... in the order the payer
	// issued them: validate handles them in that order whatever order
	// they arrive in, and drops a number it has seen (a resend).
	Seq uint64 `json:"seq"`
}

// Rejection is why a payment was not booked (map mapRejected).
type Rejection struct {
	Payment Payment `json:"payment"`
	Reason  string  `json:"reason"`
}

// LedgerEntry is one side of a booked payment: a debit (negative amount)
// of the payer or a credit of the payee.
type LedgerEntry struct {
	Payment string `json:"payment"`
	Account string `json:"account"`
	Amount  int64  `json:"amount"`
}

// Account is what book keeps of an account, in its partition.
type Account struct {
	Opening int64 `json:"opening"` // the balance it was opened with
	Debited int64 `json:"debited"` // the payments booked against it so far
}

// Balance is the balance projection of an account.
type Balance struct {
	Balance int64 `json:"balance"`
	Entries int64 `json:"entries"` // ledger entries applied
}

// Rejection reasons, by stage.
const (
	reasonAmount       = "invalid: amount not positive"
	reasonSelf         = "invalid: payer is payee"
	reasonUnknownPayer = "invalid: unknown payer"
	reasonUnknownPayee = "invalid: unknown payee"
	reasonOverLimit    = "fraud: amount over the limit"
	reasonVelocity     = "fraud: too many payments from the payer"
	reasonFunds        = "book: insufficient funds"
)

// Rules are the bank's parameters, the same on every node.
type Rules struct {
	// Accounts is the account directory: every account that exists.
	Accounts map[string]bool
	// AmountLimit: a larger payment is taken for fraud.
	AmountLimit int64
	// MaxPerPayer: a payer's payments past this many that passed the
	// fraud check are taken for fraud.
	MaxPerPayer int
}

// validation returns why p is invalid ("" if valid).
func (r *Rules) validation(p Payment) string {
	switch {
	case p.Amount <= 0:
		return reasonAmount
	case p.Payer == p.Payee:
		return reasonSelf
	case !r.Accounts[p.Payer]:
		return reasonUnknownPayer
	case !r.Accounts[p.Payee]:
		return reasonUnknownPayee
	}
	return ""
}

// fraud returns why p looks fraudulent ("" if not), given how many of the
// payer's payments passed the check before it.
func (r *Rules) fraud(p Payment, passed int) string {
	switch {
	case p.Amount > r.AmountLimit:
		return reasonOverLimit
	case passed >= r.MaxPerPayer:
		return reasonVelocity
	}
	return ""
}

// funds returns why the payer's account a cannot pay p ("" if it can).
//
// The rule: the payments booked against an account never exceed the
// balance it was opened with. Credits from other accounts are not
// spendable here, because they arrive from other partitions at times no one
// can predict: counting them would make an outcome depend on timing. The
// debits are all decided in the payer's partition, in the payer's order,
// so this rule gives the same answer on every run, and balances never go
// negative.
func funds(p Payment, a Account) string {
	if a.Debited+p.Amount > a.Opening {
		return reasonFunds
	}
	return ""
}

// accountKey is the key of everything that belongs to account: its
// events, its balance and its state share the hash tag {account}, so they
// live in one partition.
func accountKey(account string) string { return "{" + account + "}" }

// encode marshals v as JSON (the example's values are small structs).
func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("encode %T: %v", v, err)) // the types above always encode
	}
	return b
}

// decode unmarshals b into a T.
func decode[T any](b []byte) (T, error) {
	var v T
	err := json.Unmarshal(b, &v)
	if err != nil {
		err = fmt.Errorf("decode %T: %w", v, err)
	}
	return v, err
}
