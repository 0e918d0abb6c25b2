// Package txn runs ACID transactions over any maps and partitions of the
// grid, for the embedded node and the client SDK alike.
//
//	err := txn.Run(ctx, g, txn.Options{}, func(ctx context.Context, tx *txn.Tx) error {
//		a, err := tx.Get(ctx, "accounts", "alice")
//		...
//		tx.Put("accounts", "alice", a2)
//		tx.Put("accounts", "bob", b2)
//		return nil
//	})
//
// g is a txnnode.Service (embedded: txnnode.Start on every member) or
// txn.Client(c) for a client.Client.
//
// # Isolation
//
// Serializable for the keys a transaction touches, by optimistic
// concurrency with two-phase locking at commit: Get reads the committed
// value and remembers its version; Put and Delete are buffered. Commit
// checks every read at its partition (unchanged, else ErrConflict) while
// locking every key, so a transaction commits only on top of exactly the
// state it read. Values read before Commit may come from different points
// in time; a transaction that saw an inconsistent state never commits.
//
// Options.Locking chooses strict two-phase locking instead: every Get
// locks its key at once (a replicated lock step at its partition; Prefetch
// locks one partition's keys in one step) and the locks are held until the
// transaction ends, so its reads never conflict at commit. It suits
// transactions that read many keys others write (an audit of every
// account), which optimistic validation fails again and again; it costs a
// replicated step per partition read, and holds plain writers of the keys
// read (not plain readers) back from the Get on. The partition of the
// first lock is the transaction's coordinator. Rollback (and Run, when fn
// fails) releases the locks; a caller that dies leaves them to recovery,
// like a prepared participant's.
//
// # Commit
//
// One partition (every key shares an affinity key): one replicated step
// validates and applies, no coordinator record. Several: two-phase commit
// with the coordinator a participant. Every other participant prepares in
// parallel (a replicated record with the writes, and a lock per key); the
// coordinator partition then checks its own reads and applies its own
// writes together with the decision record, in one replicated step: that
// is the commit point. The prepared participants apply their writes and
// release their locks (finish). A prepared participant whose caller died
// is finished by its member's recovery after the deadline: it asks the
// coordinator, which decides abort if it holds no decision (a commit is
// refused past the deadline). Prepared records, locks and decisions are
// partition entries, replicated like any write: a promoted backup holds
// them.
//
// # Locks and plain operations
//
// A key is locked only between its participant's prepare and finish. A
// plain read of a key a transaction locked for writing waits until the
// transaction's outcome is applied (so no read sees half of a
// transaction); a plain write of a locked key waits too. Both are bounded
// by the caller's ctx.
//
// # Deadlocks
//
// Wait-die: a prepare (or a Locking Get) that finds a key locked by a
// younger transaction waits (retries for up to Options.LockWait); an older
// holder makes it die with ErrConflict. Run restarts a transaction that died, keeping its
// age, so it grows older than its rivals and eventually wins.
package txn
