package txnnode

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/txn/internal/proto"
)

// This file holds the steps every member runs for transactions. Each is a
// grid partition step: its reads, its writes and the records it keeps
// (prepared records, locks, decisions, tombstones) commit as one
// replicated record, so a promoted backup holds all of it or none of it.

// maxTimeout bounds a transaction's deadline from now (plus tombMargin for
// a caller's clock ahead of the member's): a caller that dies cannot leave
// locks held longer than this (plus recovery's grace).
const maxTimeout = 5 * time.Minute

// tombMargin is how long past a transaction's deadline a participant
// remembers that it finished it: no prepare is accepted past the deadline,
// so the margin only covers the members' clock differences.
const tombMargin = 10 * time.Second

// tombFallback is how long past tombMargin a tombstone expires by itself
// if no member's Service swept it (a member that does not run
// txnnode.Start); the sweep, every Keep/4, normally comes first.
const tombFallback = 5 * time.Minute

// setTomb leaves the tombstone of transaction key with its deadline.
func setTomb(v *grid.StepView, key string, deadline int64) {
	ttl := max(time.Duration(deadline-time.Now().UnixNano()), 0) + tombMargin + tombFallback
	v.Set(proto.MapTomb, key, proto.TombValue(deadline), ttl)
}

// maxIDs bounds the transactions one StepHeld or StepForget names (each
// of StepForget's lists): an internal step runs inline, without a time
// budget, so its work must be bounded by its arguments' checks.
const maxIDs = 4096

// steps are the members' transaction steps.
type steps struct{}

func (steps) tag(v *grid.StepView) string { return v.PartitionTag() }

// Steps returns the transaction steps, for grid.Config.InternalSteps:
// installed before a member serves, no caller ever finds a member without
// them. Start installs them too.
func Steps() map[string]func(args []byte) (grid.StepFunc, error) {
	s := steps{}
	return map[string]func([]byte) (grid.StepFunc, error){
		proto.StepOne:     s.bindOne,
		proto.StepPrepare: s.bindPrepare,
		proto.StepCommit:  s.bindCommit,
		proto.StepFinish:  s.bindFinish,
		proto.StepResolve: s.bindResolve,
		proto.StepHeld:    s.bindHeld,
		proto.StepForget:  s.bindForget,
		proto.StepLock:    s.bindLock,
	}
}

func decodeArgs(args []byte, v any) error {
	if err := proto.Decode(args, v); err != nil {
		return fmt.Errorf("%w: %v", grid.ErrBadArgs, err)
	}
	return nil
}

func answer(st proto.Status, detail string) ([]byte, error) {
	return proto.Encode(proto.Result{Status: st, Detail: detail})
}

// checkWork refuses what no step may do: keys of internal maps, no id, or
// a TTL out of range.
func checkWork(w *proto.Work) error {
	for _, r := range w.Reads {
		if len(r.Map) > 0 && r.Map[0] == 0 {
			return fmt.Errorf("%w: map %q is the grid's own", grid.ErrBadArgs, r.Map)
		}
	}
	for _, wr := range w.Writes {
		if len(wr.Map) > 0 && wr.Map[0] == 0 {
			return fmt.Errorf("%w: map %q is the grid's own", grid.ErrBadArgs, wr.Map)
		}
		if wr.TTL < 0 || wr.TTL > int64(proto.MaxTTL) {
			// A finish could never apply it: refused before anything is prepared.
			return fmt.Errorf("%w: TTL %d out of range [0, %v]", grid.ErrBadArgs, wr.TTL, proto.MaxTTL)
		}
	}
	if w.H.ID == "" {
		return fmt.Errorf("%w: a transaction needs an id", grid.ErrBadArgs)
	}
	return nil
}

func (s steps) bindWork(args []byte, run func(context.Context, *grid.StepView, *proto.Work) ([]byte, error)) (grid.StepFunc, error) {
	var w proto.Work
	if err := decodeArgs(args, &w); err != nil {
		return nil, err
	}
	if err := checkWork(&w); err != nil {
		return nil, err
	}
	return func(ctx context.Context, v *grid.StepView) ([]byte, error) {
		if w.H.Coord < 0 || w.H.Coord >= v.Partitions() {
			return nil, fmt.Errorf("%w: coordinator partition %d out of range", grid.ErrBadArgs, w.H.Coord)
		}
		for _, p := range w.Parts {
			if p < 0 || p >= v.Partitions() {
				// A decision naming it could never be collected.
				return nil, fmt.Errorf("%w: participant partition %d out of range", grid.ErrBadArgs, p)
			}
		}
		if w.H.Deadline > time.Now().Add(maxTimeout+tombMargin).UnixNano() {
			// tombMargin: the caller's clock may run ahead of this member's.
			return nil, fmt.Errorf("%w: a transaction's deadline is at most %v away", grid.ErrBadArgs, maxTimeout)
		}
		return run(ctx, v, &w)
	}, nil
}

func (s steps) bindOne(args []byte) (grid.StepFunc, error)     { return s.bindWork(args, s.one) }
func (s steps) bindPrepare(args []byte) (grid.StepFunc, error) { return s.bindWork(args, s.prepare) }
func (s steps) bindCommit(args []byte) (grid.StepFunc, error)  { return s.bindWork(args, s.commit) }

// one runs a transaction whose keys all live in this partition: one
// record, no coordinator, no lock held past the step. A tombstone (the
// caller aborted it after a conflict) refuses it. With w.Held (Locking)
// it leaves one when it commits, against a late copy of a lock step.
func (s steps) one(_ context.Context, v *grid.StepView, w *proto.Work) ([]byte, error) {
	if _, ok := v.Get(proto.MapTomb, proto.Key(s.tag(v), w.H.ID)); ok {
		// Its caller gave up on it (a copy of the step arriving late).
		return answer(proto.Finished, "")
	}
	if time.Now().UnixNano() > w.H.Deadline {
		return answer(proto.Expired, "")
	}
	writes, st, why := validate(v, w)
	if st != 0 {
		return answer(st, why)
	}
	apply(v, writes)
	if w.Held {
		// The lock steps' record goes; a tombstone refuses a copy of a
		// lock step still on its way, which would lock again.
		key := proto.Key(s.tag(v), w.H.ID)
		if err := releaseHeld(v, key, w.H.ID); err != nil {
			return nil, err
		}
		setTomb(v, key, w.H.Deadline)
	}
	return answer(proto.Done, "")
}

// validate is what every step that may commit a transaction's share
// checks, in this order: no other transaction's lock on its keys
// (wait-die), every read unchanged, every Add's condition. It returns the
// writes with the Adds evaluated, or the status that refuses them.
func validate(v *grid.StepView, w *proto.Work) ([]proto.Write, proto.Status, string) {
	if st, why := lockConflict(v, w); st != 0 {
		return nil, st, why
	}
	if why := changedRead(v, w.Reads); why != "" {
		return nil, proto.Conflict, why
	}
	writes, why := evaluate(v, w.Writes)
	if why != "" {
		return nil, proto.Condition, why
	}
	return writes, 0, ""
}

// prepare makes this partition a participant: it checks the reads, locks
// every key and keeps the writes in a prepared record, all in one record.
// A second prepare of the same transaction answers Done again. With
// w.Held (its Gets locked keys here) it adds to their record
// (prepareHeld).
func (s steps) prepare(_ context.Context, v *grid.StepView, w *proto.Work) ([]byte, error) {
	if w.Held {
		return s.prepareHeld(v, w)
	}
	tag := s.tag(v)
	if _, ok := v.Get(proto.MapPrepared, proto.Key(tag, w.H.ID)); ok {
		return answer(proto.Done, "")
	}
	if _, ok := v.Get(proto.MapTomb, proto.Key(tag, w.H.ID)); ok {
		return answer(proto.Finished, "")
	}
	if time.Now().UnixNano() > w.H.Deadline {
		return answer(proto.Expired, "")
	}
	writes, st, why := validate(v, w)
	if st != 0 {
		return answer(st, why)
	}
	locked := keysOf(w)
	for _, k := range locked {
		v.Lock(k.Map, k.Key, grid.KeyLock{Owner: w.H.ID, Write: k.Version == 1, Prio: w.H.Prio})
	}
	rec, err := proto.Encode(proto.Prepared{H: w.H, Writes: writes, Locked: locked})
	if err != nil {
		return nil, err
	}
	v.Set(proto.MapPrepared, proto.Key(tag, w.H.ID), rec, 0)
	return answer(proto.Done, "")
}

// commit is the coordinator's decision: with every other participant
// prepared, it checks its own reads and applies its own writes together
// with the decision record, in one record. The decision is the
// transaction's commit point; once it exists it never changes. With
// w.Held it also releases the locks the transaction's Gets took here.
func (s steps) commit(_ context.Context, v *grid.StepView, w *proto.Work) ([]byte, error) {
	key := proto.Key(s.tag(v), w.H.ID)
	if d, ok := decision(v, key); ok {
		return decided(d)
	}
	if time.Now().UnixNano() > w.H.Deadline {
		return s.decide(v, key, w, proto.Decision{Deadline: w.H.Deadline, Parts: w.Parts}, proto.Expired)
	}
	writes, st, why := validate(v, w)
	if st != 0 {
		return answer(st, why)
	}
	apply(v, writes)
	return s.decide(v, key, w, proto.Decision{Commit: true, Deadline: w.H.Deadline, Parts: w.Parts}, proto.Done)
}

// decide records the coordinator's decision d (releasing what the
// transaction's Gets held here, with w.Held) and answers st.
func (s steps) decide(v *grid.StepView, key string, w *proto.Work, d proto.Decision, st proto.Status) ([]byte, error) {
	if w.Held {
		if err := releaseHeld(v, key, w.H.ID); err != nil {
			return nil, err
		}
	}
	if err := setDecision(v, key, d); err != nil {
		return nil, err
	}
	return answer(st, "")
}

func (s steps) bindFinish(args []byte) (grid.StepFunc, error) {
	var f proto.Finish
	if err := decodeArgs(args, &f); err != nil {
		return nil, err
	}
	if f.Deadline > time.Now().Add(maxTimeout+tombMargin).UnixNano() {
		// Its tombstone would stay that long.
		return nil, fmt.Errorf("%w: a transaction's deadline is at most %v away", grid.ErrBadArgs, maxTimeout)
	}
	return func(_ context.Context, v *grid.StepView) ([]byte, error) { return s.finish(v, &f) }, nil
}

// finish applies (commit) or drops (abort) what this participant
// prepared, releases its locks and leaves a tombstone until shortly past
// the deadline: a prepare arriving later (one whose answer the caller
// never got, still on its way; or any duplicate) is refused, and no
// prepare is accepted past the deadline. Without a prepared record an
// abort leaves the tombstone too.
func (s steps) finish(v *grid.StepView, f *proto.Finish) ([]byte, error) {
	key := proto.Key(s.tag(v), f.ID)
	raw, ok := v.Get(proto.MapPrepared, key)
	if !ok {
		if _, done := v.Get(proto.MapTomb, key); !done && !f.Commit {
			setTomb(v, key, f.Deadline)
		}
		return answer(proto.Done, "")
	}
	var rec proto.Prepared
	if err := proto.Decode(raw, &rec); err != nil {
		return nil, fmt.Errorf("txn: prepared record of %s: %w", f.ID, err)
	}
	if f.Commit {
		apply(v, rec.Writes)
	}
	for _, k := range rec.Locked {
		if l, ok := v.LockOf(k.Map, k.Key); ok && l.Owner == f.ID {
			v.Unlock(k.Map, k.Key)
		}
	}
	v.Delete(proto.MapPrepared, key)
	setTomb(v, key, rec.H.Deadline)
	return answer(proto.Done, "")
}

// tombExpired reports whether a tombstone of value raw can go: its
// transaction's deadline is tombMargin past (a malformed one can too).
// No step of the transaction applies past its deadline, and tombMargin
// covers the members' clock difference.
func tombExpired(raw []byte, now int64) bool {
	d, ok := proto.TombDeadline(raw)
	return !ok || now > d+int64(tombMargin)
}

func (s steps) bindResolve(args []byte) (grid.StepFunc, error) {
	var ids proto.IDs
	if err := decodeArgs(args, &ids); err != nil {
		return nil, err
	}
	if len(ids.IDs) != 1 {
		return nil, fmt.Errorf("%w: resolve names one transaction", grid.ErrBadArgs)
	}
	return func(_ context.Context, v *grid.StepView) ([]byte, error) {
		return s.resolve(v, ids.IDs[0], ids.Deadline, ids.Abort)
	}, nil
}

// resolve answers a transaction's decision; with none past its deadline
// it decides abort (no commit can come after the deadline), so a
// participant left prepared learns the outcome. With abort, the caller
// that gave up on its commit decides abort at once unless the commit
// already happened.
func (s steps) resolve(v *grid.StepView, id string, deadline int64, abort bool) ([]byte, error) {
	key := proto.Key(s.tag(v), id)
	if d, ok := decision(v, key); ok {
		return decided(d)
	}
	if !abort && time.Now().UnixNano() <= deadline {
		return answer(proto.Pending, "")
	}
	if err := setDecision(v, key, proto.Decision{Deadline: deadline}); err != nil {
		return nil, err
	}
	return answer(proto.Aborted, "")
}

// checkIDs refuses a list of more than maxIDs transactions.
func checkIDs(what string, ids []string) error {
	if len(ids) > maxIDs {
		return fmt.Errorf("%w: %s names %d transactions, at most %d", grid.ErrBadArgs, what, len(ids), maxIDs)
	}
	return nil
}

func (s steps) bindHeld(args []byte) (grid.StepFunc, error) {
	var ids proto.IDs
	if err := decodeArgs(args, &ids); err != nil {
		return nil, err
	}
	if err := checkIDs("held", ids.IDs); err != nil {
		return nil, err
	}
	return func(_ context.Context, v *grid.StepView) ([]byte, error) {
		tag := s.tag(v)
		var held []string
		for _, id := range ids.IDs {
			if _, ok := v.Get(proto.MapPrepared, proto.Key(tag, id)); ok {
				held = append(held, id)
			}
		}
		return proto.Encode(proto.Result{Status: proto.Done, IDs: held})
	}, nil
}

func (s steps) bindForget(args []byte) (grid.StepFunc, error) {
	var ids proto.IDs
	if err := decodeArgs(args, &ids); err != nil {
		return nil, err
	}
	if err := errors.Join(checkIDs("forget", ids.IDs), checkIDs("forget's tombstones", ids.Tombs)); err != nil {
		return nil, err
	}
	return func(_ context.Context, v *grid.StepView) ([]byte, error) {
		tag := s.tag(v)
		for _, id := range ids.IDs {
			key := proto.Key(tag, id)
			if _, ok := v.Get(proto.MapDecision, key); ok {
				v.Delete(proto.MapDecision, key)
			}
		}
		now := time.Now().UnixNano()
		for _, id := range ids.Tombs {
			key := proto.Key(tag, id)
			if raw, ok := v.Get(proto.MapTomb, key); ok && tombExpired(raw, now) {
				v.Delete(proto.MapTomb, key)
			}
		}
		return answer(proto.Done, "")
	}, nil
}

func decision(v *grid.StepView, key string) (proto.Decision, bool) {
	raw, ok := v.Get(proto.MapDecision, key)
	if !ok {
		return proto.Decision{}, false
	}
	var d proto.Decision
	if err := proto.Decode(raw, &d); err != nil {
		return proto.Decision{}, false
	}
	return d, true
}

func decided(d proto.Decision) ([]byte, error) {
	if d.Commit {
		return answer(proto.Done, "")
	}
	return answer(proto.Aborted, "")
}

func setDecision(v *grid.StepView, key string, d proto.Decision) error {
	raw, err := proto.Encode(d)
	if err != nil {
		return err
	}
	v.Set(proto.MapDecision, key, raw, 0)
	return nil
}

// keysOf lists every key w touches once, Version 1 marking a written one.
func keysOf(w *proto.Work) []proto.Read {
	out := make([]proto.Read, 0, len(w.Reads)+len(w.Writes))
	seen := make(map[[2]string]int, cap(out))
	for _, wr := range w.Writes {
		k := [2]string{wr.Map, wr.Key}
		if _, ok := seen[k]; !ok {
			seen[k] = len(out)
			out = append(out, proto.Read{Map: wr.Map, Key: wr.Key, Version: 1})
		}
	}
	for _, r := range w.Reads {
		k := [2]string{r.Map, r.Key}
		if _, ok := seen[k]; !ok {
			seen[k] = len(out)
			out = append(out, proto.Read{Map: r.Map, Key: r.Key})
		}
	}
	return out
}

// lockConflict checks w's keys against other transactions' locks: a
// lock held by a younger transaction makes an older one wait (Wait: the
// caller retries shortly), any other conflict makes it die (Conflict):
// wait-die, so waits never form a cycle. Zero: no conflict.
func lockConflict(v *grid.StepView, w *proto.Work) (proto.Status, string) {
	var st proto.Status
	var why string
	for _, k := range keysOf(w) {
		l, ok := v.LockOf(k.Map, k.Key)
		if !ok || l.Owner == w.H.ID {
			continue
		}
		if !older(w.H, l) {
			return proto.Conflict, fmt.Sprintf("key %q of map %q is locked by an older transaction", k.Key, k.Map)
		}
		st, why = proto.Wait, fmt.Sprintf("key %q of map %q is locked by a younger transaction", k.Key, k.Map)
	}
	return st, why
}

// older reports whether h is older than the holder of l (wait-die's
// order; ties broken by id).
func older(h proto.Header, l grid.KeyLock) bool {
	if h.Prio != l.Prio {
		return h.Prio < l.Prio
	}
	return h.ID < l.Owner
}

// changedRead names the first read whose version changed, or "".
func changedRead(v *grid.StepView, reads []proto.Read) string {
	for _, r := range reads {
		e, ok := v.Entry(r.Map, r.Key)
		var ver uint64
		if ok {
			ver = e.Version
		}
		if ver != r.Version {
			return fmt.Sprintf("key %q of map %q changed since it was read", r.Key, r.Map)
		}
	}
	return ""
}

// evaluate turns every Add of writes into the value it sets, from the
// key's current value; why names a failed condition (nothing applies).
// The key is read through v, so the step commits only on that value, and
// a prepared participant keeps it locked until it finishes.
func evaluate(v *grid.StepView, writes []proto.Write) ([]proto.Write, string) {
	out := writes
	copied := false
	for i, w := range writes {
		if !w.Add {
			continue
		}
		if !copied {
			out = append([]proto.Write(nil), writes...)
			copied = true
		}
		var cur int64
		if raw, ok := v.Get(w.Map, w.Key); ok {
			n, err := strconv.ParseInt(string(raw), 10, 64)
			if err != nil {
				return nil, fmt.Sprintf("key %q of map %q does not hold an integer", w.Key, w.Map)
			}
			cur = n
		}
		next := cur + w.Delta
		if (w.Delta > 0 && next < cur) || (w.Delta < 0 && next > cur) {
			return nil, fmt.Sprintf("key %q of map %q would overflow", w.Key, w.Map)
		}
		if w.HasMin && next < w.Min {
			return nil, fmt.Sprintf("key %q of map %q would go below %d (%d%+d)", w.Key, w.Map, w.Min, cur, w.Delta)
		}
		out[i] = proto.Write{Map: w.Map, Key: w.Key, Value: strconv.AppendInt(nil, next, 10)}
	}
	return out, ""
}

func apply(v *grid.StepView, writes []proto.Write) {
	for _, w := range writes {
		if w.Delete {
			if _, ok := v.Get(w.Map, w.Key); ok {
				v.Delete(w.Map, w.Key)
			}
			continue
		}
		v.Set(w.Map, w.Key, w.Value, ttlOf(v, w))
	}
}

// ttlOf is the expiry a write of a value sets: its own TTL, or with
// KeepTTL (the transaction read the key present) the time the key has
// left now; a key that expired since it was read expires the write too.
func ttlOf(v *grid.StepView, w proto.Write) time.Duration {
	if !w.KeepTTL {
		return time.Duration(w.TTL)
	}
	e, ok := v.Entry(w.Map, w.Key)
	switch {
	case !ok:
		return time.Nanosecond
	case e.ExpireAt == 0:
		return 0
	}
	return max(time.Until(time.Unix(0, e.ExpireAt)), time.Nanosecond)
}
