// Package txn will provide distributed transactions: two-phase commit
// across partitions with strict two-phase locking, a replicated decision
// record in a coordinator partition chosen by transaction id, replicated
// prepare records at participants, deadlock breaking and timeouts.
//
// Not built yet: this package holds no code until its issue is taken. It
// may import grid and affinity; grid never imports it.
package txn
