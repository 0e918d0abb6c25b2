package main

import (
	"context"
	"fmt"
	"strconv"

	"github.com/collocate/grid/process"
)

// The stages, each a processor on its own stream. Every stream is keyed by
// an account ("{acct-17}"), and every entry a stage reads or writes carries
// the hash tag of the event's key, so a handler touches only its event's
// partition (a write elsewhere would fail with ErrNotCollocated and, after
// the retries, park the event in the dead letters). What goes to another
// account (the payee's credit) goes there as an emitted event, through the
// partition's outbox.
//
//	payments.requested  {payer}  -> validate: in payer order, once per Seq
//	payments.validated  {payer}  -> fraud: amount limit, payments per payer
//	payments.approved   {payer}  -> book: funds, ledger debit, two entries
//	ledger.entries      {account}-> project: the account's balance
//
// A rejected payment is recorded in map payments.rejected under its
// payer's tag, with the reason.

// Streams.
const (
	streamRequested = "payments.requested"
	streamValidated = "payments.validated"
	streamApproved  = "payments.approved"
	streamLedger    = "ledger.entries"
)

// Maps: each entry's key starts with its account's tag.
const (
	mapIntake   = "validate.intake"   // {payer} -> intake
	mapHeld     = "validate.held"     // {payer}#seq -> a payment waiting for its turn
	mapVelocity = "fraud.velocity"    // {payer} -> payments that passed fraud
	mapAccounts = "bank.accounts"     // {account} -> Account (opening, debited)
	mapLedger   = "bank.ledger"       // {payer}id -> the payment's debit LedgerEntry
	mapBalances = "bank.balances"     // {account} -> Balance
	mapRejected = "payments.rejected" // {payer}id -> Rejection
)

// Processor names.
const (
	procValidate = "validate"
	procFraud    = "fraud"
	procBook     = "book"
	procProject  = "project"
)

// stageNames lists the processors in flow order.
var stageNames = [...]string{procValidate, procFraud, procBook, procProject}

// bank holds the rules the stages apply.
type bank struct{ rules *Rules }

// processors returns the flow's processors (every node registers them).
func (b *bank) processors() []process.Processor {
	return []process.Processor{
		{Name: procValidate, Stream: streamRequested, Handler: b.validate},
		{Name: procFraud, Stream: streamValidated, Handler: b.fraud},
		{Name: procBook, Stream: streamApproved, Handler: b.book},
		{Name: procProject, Stream: streamLedger, Handler: b.project},
	}
}

// intake is validate's state per payer: the next Seq it expects, and
// counts of what it dropped or held.
type intake struct {
	Next       uint64 `json:"next"`
	Duplicates int64  `json:"duplicates"` // payments seen before (resends), dropped
	Held       int64  `json:"held"`       // arrived before an earlier one of the payer, held
}

// validate admits each payer's payments once, in the payer's order: a Seq
// below the next expected one is a duplicate and dropped; one above it
// waits in mapHeld until the ones before it came. An admitted payment is
// rejected if invalid, or else passed on to fraud.
func (b *bank) validate(_ context.Context, c *process.Context, e process.Event) error {
	p, err := payerEvent(e)
	if err != nil {
		return err
	}
	in, err := get[intake](c, mapIntake, e.Key)
	if err != nil {
		return err
	}
	if in.Next == 0 {
		in.Next = 1
	}
	switch {
	case p.Seq < in.Next:
		in.Duplicates++
	case p.Seq > in.Next:
		if _, held := c.Get(mapHeld, heldKey(e.Key, p.Seq)); held {
			in.Duplicates++
		} else {
			c.Set(mapHeld, heldKey(e.Key, p.Seq), e.Value, 0)
			in.Held++
		}
	default:
		b.admit(c, e.Key, p)
		in.Next++
		if err := b.admitHeld(c, e.Key, &in); err != nil {
			return err
		}
	}
	c.Set(mapIntake, e.Key, encode(in), 0)
	return nil
}

// admitHeld admits the held payments that are now next in line.
func (b *bank) admitHeld(c *process.Context, key string, in *intake) error {
	for {
		k := heldKey(key, in.Next)
		v, ok := c.Get(mapHeld, k)
		if !ok {
			return nil
		}
		p, err := decode[Payment](v)
		if err != nil {
			return err
		}
		c.Delete(mapHeld, k)
		b.admit(c, key, p)
		in.Next++
	}
}

func (b *bank) admit(c *process.Context, key string, p Payment) {
	if reason := b.rules.validation(p); reason != "" {
		reject(c, key, p, reason)
		return
	}
	c.Emit(streamValidated, key, encode(p))
}

// fraud rejects a payment above the amount limit, or past the payer's
// count of payments; it passes the others on to book.
func (b *bank) fraud(_ context.Context, c *process.Context, e process.Event) error {
	p, err := payerEvent(e)
	if err != nil {
		return err
	}
	passed := 0
	if v, ok := c.Get(mapVelocity, e.Key); ok {
		if passed, err = strconv.Atoi(string(v)); err != nil {
			return fmt.Errorf("velocity of %s: %w", e.Key, err)
		}
	}
	if reason := b.rules.fraud(p, passed); reason != "" {
		reject(c, e.Key, p, reason)
		return nil
	}
	c.Set(mapVelocity, e.Key, []byte(strconv.Itoa(passed+1)), 0)
	c.Emit(streamApproved, e.Key, encode(p))
	return nil
}

// book books a payment the payer's funds cover: it adds it to the payer's
// debits, writes the debit in the ledger (both in the payer's partition),
// and emits the two ledger entries, the debit to the payer's projection
// and the credit to the payee's, wherever that lives.
func (b *bank) book(_ context.Context, c *process.Context, e process.Event) error {
	p, err := payerEvent(e)
	if err != nil {
		return err
	}
	v, ok := c.Get(mapAccounts, e.Key)
	if !ok {
		return fmt.Errorf("book %s: payer %s has no account entry", p.ID, p.Payer)
	}
	a, err := decode[Account](v)
	if err != nil {
		return err
	}
	if reason := funds(p, a); reason != "" {
		reject(c, e.Key, p, reason)
		return nil
	}
	a.Debited += p.Amount
	c.Set(mapAccounts, e.Key, encode(a), 0)
	debit := LedgerEntry{Payment: p.ID, Account: p.Payer, Amount: -p.Amount}
	c.Set(mapLedger, e.Key+p.ID, encode(debit), 0)
	c.Emit(streamLedger, e.Key, encode(debit))
	c.Emit(streamLedger, accountKey(p.Payee), encode(LedgerEntry{Payment: p.ID, Account: p.Payee, Amount: p.Amount}))
	return nil
}

// project applies a ledger entry to its account's balance.
func (b *bank) project(_ context.Context, c *process.Context, e process.Event) error {
	le, err := decode[LedgerEntry](e.Value)
	if err != nil {
		return err
	}
	if accountKey(le.Account) != e.Key {
		return fmt.Errorf("ledger entry of %s under key %q", le.Account, e.Key)
	}
	bal, err := get[Balance](c, mapBalances, e.Key)
	if err != nil {
		return err
	}
	bal.Balance += le.Amount
	bal.Entries++
	c.Set(mapBalances, e.Key, encode(bal), 0)
	return nil
}

// payerEvent decodes a payment event, which must be keyed by its payer: a
// handler error, so an event published under another key goes to the dead
// letters rather than touch another partition.
func payerEvent(e process.Event) (Payment, error) {
	p, err := decode[Payment](e.Value)
	if err != nil {
		return p, err
	}
	if accountKey(p.Payer) != e.Key {
		return p, fmt.Errorf("payment %s of %s published under key %q", p.ID, p.Payer, e.Key)
	}
	return p, nil
}

// reject records why p was not booked, under its payer's tag.
func reject(c *process.Context, key string, p Payment, reason string) {
	c.Set(mapRejected, key+p.ID, encode(Rejection{Payment: p, Reason: reason}), 0)
}

// heldKey is the key of the payer's held payment number seq.
func heldKey(key string, seq uint64) string { return key + "#" + strconv.FormatUint(seq, 10) }

// get decodes the entry key of map m, or returns a zero T if it is absent.
func get[T any](c *process.Context, m, key string) (T, error) {
	var zero T
	v, ok := c.Get(m, key)
	if !ok {
		return zero, nil
	}
	return decode[T](v)
}
