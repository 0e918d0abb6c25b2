package txnnode

import (
	"context"
	"fmt"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/txn/internal/proto"
)

// This file is the members' side of Options.Locking (strict two-phase
// locking): a Get locks its key at once with a lock step, which keeps the
// keys in a Prepared record without writes, so recovery releases the locks
// of a caller that died as it finishes any prepared participant.

func (s steps) bindLock(args []byte) (grid.StepFunc, error) { return s.bindWork(args, s.lock) }

// lock locks w's reads for transaction w.H (wait-die against other
// transactions' locks), adds them to its Prepared record here (created
// without writes if none) and answers their committed entries. A
// transaction finished here (tombstone) or decided (this is its
// coordinator) refuses it: a copy of the step arriving late must not lock
// anything again.
func (s steps) lock(_ context.Context, v *grid.StepView, w *proto.Work) ([]byte, error) {
	if len(w.Writes) > 0 || len(w.Reads) == 0 {
		return nil, fmt.Errorf("%w: a lock step names keys to read and no writes", grid.ErrBadArgs)
	}
	key := proto.Key(s.tag(v), w.H.ID)
	if _, ok := v.Get(proto.MapTomb, key); ok {
		return answer(proto.Finished, "")
	}
	if _, ok := v.Get(proto.MapDecision, key); ok {
		return answer(proto.Finished, "")
	}
	if time.Now().UnixNano() > w.H.Deadline {
		return answer(proto.Expired, "")
	}
	if st, why := lockConflict(v, w); st != 0 {
		return answer(st, why)
	}
	rec, err := heldRecord(v, key, w.H)
	if err != nil {
		return nil, err
	}
	res := proto.Result{Status: proto.Done, Entries: make([]proto.Entry, len(w.Reads))}
	for i, r := range w.Reads {
		if e, ok := v.Entry(r.Map, r.Key); ok {
			val := e.Value
			if val == nil {
				val = []byte{}
			}
			res.Entries[i] = proto.Entry{Found: true, Value: val, Version: e.Version}
		}
	}
	// A read lock: plain reads of the key go on (they see the committed
	// value the transaction read), plain writes and other transactions
	// wait. A prepare of a write to the key makes it a write lock.
	rec.Locked = addLocks(v, w.H, rec.Locked, w.Reads, false)
	if err := setPrepared(v, key, rec); err != nil {
		return nil, err
	}
	return proto.Encode(res)
}

// heldRecord is the transaction's Prepared record here, or a new one
// without writes or keys.
func heldRecord(v *grid.StepView, key string, h proto.Header) (proto.Prepared, error) {
	raw, ok := v.Get(proto.MapPrepared, key)
	if !ok {
		return proto.Prepared{H: h}, nil
	}
	var rec proto.Prepared
	if err := proto.Decode(raw, &rec); err != nil {
		return rec, fmt.Errorf("txn: prepared record of %s: %w", h.ID, err)
	}
	return rec, nil
}

func setPrepared(v *grid.StepView, key string, rec proto.Prepared) error {
	raw, err := proto.Encode(rec)
	if err != nil {
		return err
	}
	v.Set(proto.MapPrepared, key, raw, 0)
	return nil
}

// addLocks locks keys for h (write: as write locks; a key h already holds
// keeps its lock unless write upgrades it) and returns locked with the
// keys it did not list yet.
func addLocks(v *grid.StepView, h proto.Header, locked []proto.Read, keys []proto.Read, write bool) []proto.Read {
	listed := make(map[[2]string]bool, len(locked)+len(keys))
	for _, k := range locked {
		listed[[2]string{k.Map, k.Key}] = true
	}
	for _, k := range keys {
		l, own := v.LockOf(k.Map, k.Key)
		own = own && l.Owner == h.ID
		if !own || (write && !l.Write) {
			v.Lock(k.Map, k.Key, grid.KeyLock{Owner: h.ID, Write: write, Prio: h.Prio})
		}
		if mk := [2]string{k.Map, k.Key}; !listed[mk] {
			listed[mk] = true
			locked = append(locked, proto.Read{Map: k.Map, Key: k.Key})
		}
	}
	return locked
}

// releaseHeld releases the locks of the transaction's Prepared record here
// and drops the record (StepOne and StepCommit of a Locking transaction,
// which apply its writes here in the same record).
func releaseHeld(v *grid.StepView, key, id string) error {
	raw, ok := v.Get(proto.MapPrepared, key)
	if !ok {
		return nil
	}
	var rec proto.Prepared
	if err := proto.Decode(raw, &rec); err != nil {
		return fmt.Errorf("txn: prepared record of %s: %w", id, err)
	}
	unlockOwn(v, id, rec.Locked)
	v.Delete(proto.MapPrepared, key)
	return nil
}

// unlockOwn releases the locks transaction id holds on keys.
func unlockOwn(v *grid.StepView, id string, keys []proto.Read) {
	for _, k := range keys {
		if l, ok := v.LockOf(k.Map, k.Key); ok && l.Owner == id {
			v.Unlock(k.Map, k.Key)
		}
	}
}

// prepareHeld is StepPrepare where the transaction's Gets locked keys: it
// validates w (its own locks do not conflict), locks w's keys and adds
// them and the writes to the Prepared record the lock steps left (a new
// one if none). A duplicate prepare finds the same state (the keys stay
// locked) and does the same.
func (s steps) prepareHeld(v *grid.StepView, w *proto.Work) ([]byte, error) {
	key := proto.Key(s.tag(v), w.H.ID)
	raw, ok := v.Get(proto.MapPrepared, key)
	if !ok {
		if _, done := v.Get(proto.MapTomb, key); done {
			return answer(proto.Finished, "")
		}
	}
	if time.Now().UnixNano() > w.H.Deadline {
		return answer(proto.Expired, "")
	}
	writes, st, why := validate(v, w)
	if st != 0 {
		return answer(st, why)
	}
	rec := proto.Prepared{H: w.H}
	if ok {
		if err := proto.Decode(raw, &rec); err != nil {
			return nil, fmt.Errorf("txn: prepared record of %s: %w", w.H.ID, err)
		}
	}
	var wk, rk []proto.Read
	for _, k := range keysOf(w) {
		if k.Version == 1 {
			wk = append(wk, k)
		} else {
			rk = append(rk, k)
		}
	}
	rec.Locked = addLocks(v, w.H, rec.Locked, wk, true)
	rec.Locked = addLocks(v, w.H, rec.Locked, rk, false)
	rec.Writes = writes
	if err := setPrepared(v, key, rec); err != nil {
		return nil, err
	}
	return answer(proto.Done, "")
}
