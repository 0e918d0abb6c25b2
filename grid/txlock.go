package grid

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// This file is the grid's side of transactions (package txn builds two-phase
// commit on it): key locks that live in the partition's data, so they are
// replicated, travel in snapshots and survive a failover like any entry.
// A lock is an entry of the internal map lockMap keyed by the locked map
// and key; only steps that manage locks (LockOf, Lock, Unlock) write them.
//
// What a lock does to everything else at the partition's primary:
//   - a read (Get, GetEntry, GetAll, TTL) of a key write-locked by a
//     prepared transaction waits until the lock is released (the
//     transaction's outcome is applied), bounded by the caller's ctx: a read
//     never sees half of a committed transaction;
//   - a single-key write waits the same way for any lock; PutAll,
//     DeleteAll and Clear touching a locked key answer ErrBusy (retried by
//     the router);
//   - a step that writes a locked key, or reads a write-locked one, fails
//     with ErrBusy at commit (retried by the router), unless it manages
//     locks itself (it called LockOf).
// Scans, Range and journal reads see committed values and ignore locks.

// LockMap is the internal map holding key locks, keyed by the locked map,
// a zero byte and the key (for inspection: Node.LocalEntries).
const LockMap = ReservedPrefix + "lock"

const lockMap = LockMap

// lockWaitSlice is how long a waiting read or write sleeps before it
// checks again that this node still leads the partition.
const lockWaitSlice = 250 * time.Millisecond

// KeyLock is a transaction's lock on one key.
type KeyLock struct {
	Owner string // the transaction's id
	Write bool   // false: the key is only read (shared with plain reads)
	Prio  int64  // the transaction's age (its start, unix nanoseconds): smaller is older
}

func lockKey(m, key string) string { return m + "\x00" + key }

func encodeLock(l KeyLock) []byte {
	b := make([]byte, 9, 9+len(l.Owner))
	if l.Write {
		b[0] = 1
	}
	binary.BigEndian.PutUint64(b[1:9], uint64(l.Prio))
	return append(b, l.Owner...)
}

func decodeLock(b []byte) (KeyLock, bool) {
	if len(b) < 9 {
		return KeyLock{}, false
	}
	return KeyLock{Write: b[0] == 1, Prio: int64(binary.BigEndian.Uint64(b[1:9])), Owner: string(b[9:])}, true
}

// lockOf returns the lock on (m, k) in the partition's state. It allocates
// nothing when the partition holds no lock. Caller holds p.mu.
func (p *partition) lockOf(m, k string) (KeyLock, bool) {
	locks := p.maps[lockMap]
	if len(locks) == 0 {
		return KeyLock{}, false
	}
	var buf [128]byte
	b := append(append(append(buf[:0], m...), 0), k...)
	e := locks[string(b)]
	if e == nil {
		return KeyLock{}, false
	}
	return decodeLock(e.value)
}

// blocks reports whether a lock on (m, k) holds back a plain operation:
// any lock a write, a write lock a read. Caller holds p.mu.
func (p *partition) blocks(m, k string, write bool) bool {
	l, ok := p.lockOf(m, k)
	return ok && (write || l.Write)
}

// mapLocked reports whether any key of map m is locked here (Clear). Caller
// holds p.mu.
func (p *partition) mapLocked(m string) bool {
	for k := range p.maps[lockMap] {
		if len(k) > len(m) && k[:len(m)] == m && k[len(m)] == 0 {
			return true
		}
	}
	return false
}

// waitUnlocked waits, without p.mu, for the partition's next commit or a
// slice of time, whichever comes first, so a caller blocked by a lock
// checks again. It fails once ctx ends (ErrBusy: nothing applied, the lock
// is still held) or the node no longer leads p at epoch (NotOwner).
func (p *partition) waitUnlocked(ctx context.Context, epoch uint64, m, k string) error {
	p.mu.Lock()
	if p.role != rolePrimary || p.epoch != epoch {
		err := p.notOwner()
		p.mu.Unlock()
		return err
	}
	ch := p.commitCh
	p.mu.Unlock()
	t := time.NewTimer(lockWaitSlice)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	case <-ctx.Done():
		return lockedErr(p.id, m, k, ctx.Err())
	}
	return nil
}

// lockedErr is the error of an operation that gave up waiting for a lock.
func lockedErr(part int, m, k string, cause error) error {
	return fmt.Errorf("%w: partition %d: key %q of map %q is locked by a transaction being committed (%v)", api.ErrBusy, part, k, m, cause)
}

// LockOf returns the lock on key of map m, this step's own Lock and Unlock
// included. A step that calls it manages locks itself: its commit does not
// refuse locked keys (see checkLocks), unless it is a function callers name.
func (v *StepView) LockOf(m, key string) (KeyLock, bool) {
	v.managesLocks = true
	if !v.usable(key, true) {
		return KeyLock{}, false
	}
	lk := mapKey{lockMap, lockKey(m, key)}
	if i, ok := v.written[lk]; ok {
		w := &v.writes[i]
		if w.Kind != wire.MutSet {
			return KeyLock{}, false
		}
		return decodeLock(w.Value)
	}
	if !v.lockPrimary() {
		return KeyLock{}, false
	}
	l, ok := v.p.lockOf(m, key)
	v.p.mu.Unlock()
	return l, ok
}

// Lock buffers a lock on key of map m (replacing any). Only steps the grid
// or its packages run (not functions callers name) may lock.
func (v *StepView) Lock(m, key string, l KeyLock) {
	v.managesLocks = true
	if !v.usable(key, true) || !v.writable(lockMap) {
		return
	}
	v.write(wire.Mutation{Kind: wire.MutSet, Map: lockMap, Key: lockKey(m, key), Value: encodeLock(l)})
}

// Unlock buffers the release of the lock on key of map m.
func (v *StepView) Unlock(m, key string) {
	v.managesLocks = true
	if !v.usable(key, true) || !v.writable(lockMap) {
		return
	}
	v.write(wire.Mutation{Kind: wire.MutDelete, Map: lockMap, Key: lockKey(m, key)})
}

// checkLocks refuses a step that writes a locked key or read a
// write-locked one (ErrBusy: nothing applied, the router retries), unless
// the step manages locks (a function callers name never does, even if it
// called LockOf). Caller holds p.mu.
func (v *StepView) checkLocks() error {
	if (v.managesLocks && !v.callers) || len(v.p.maps[lockMap]) == 0 {
		return nil
	}
	for mk := range v.reads {
		if !reserved(mk.m) && v.p.blocks(mk.m, mk.k, false) {
			return lockedErr(v.p.id, mk.m, mk.k, nil)
		}
	}
	for i := range v.writes {
		w := &v.writes[i]
		if (w.Kind == wire.MutSet || w.Kind == wire.MutDelete) && !reserved(w.Map) && v.p.blocks(w.Map, w.Key, true) {
			return lockedErr(v.p.id, w.Map, w.Key, nil)
		}
	}
	return nil
}

// waitLock waits once for a lock on (m, k) to be released (see
// waitUnlocked). A caller without a deadline is not kept waiting: after one
// slice it gets ErrBusy (its router retries within its own timeout).
func (n *Node) waitLock(ctx context.Context, p *partition, epoch uint64, m, k string, write bool) error {
	if _, ok := ctx.Deadline(); !ok {
		if err := p.waitUnlocked(ctx, epoch, m, k); err != nil {
			return err
		}
		p.mu.Lock()
		blocked := p.blocks(m, k, write)
		p.mu.Unlock()
		if blocked {
			return lockedErr(p.id, m, k, context.DeadlineExceeded)
		}
		return nil
	}
	return p.waitUnlocked(ctx, epoch, m, k)
}

// unlockedKeys locks p once it is primary, none of keys of map m is
// write-locked and it is committed up to floor, waiting as needed. On
// success the caller holds p.mu.
func (n *Node) unlockedKeys(ctx context.Context, p *partition, m string, keys []string, floor func() uint64) error {
	for {
		if err := n.primaryLocked(ctx, p, floor); err != nil {
			return err
		}
		blocked := ""
		for _, k := range keys {
			if p.blocks(m, k, false) {
				blocked = k
				break
			}
		}
		if blocked == "" {
			return nil
		}
		epoch := p.epoch
		p.mu.Unlock()
		if err := n.waitLock(ctx, p, epoch, m, blocked, false); err != nil {
			return err
		}
	}
}
