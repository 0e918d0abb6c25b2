package txn

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/txn/internal/proto"
)

// Grid is what transactions run on: a txnnode.Service (embedded) or
// Client(c) (the client SDK).
type Grid interface {
	// Step runs one of txn's steps at partition part's primary, applied
	// at most once however often it is retried, and returns its result.
	Step(ctx context.Context, part int, name string, args []byte) ([]byte, error)
	// Read returns key's committed entry of map m (api.ErrNotFound if
	// absent), waiting while a transaction being committed holds it.
	Read(ctx context.Context, m, key string) (api.Entry, error)
	// Partitions is the partition count.
	Partitions() int
}

// BatchReader is a Grid that also reads many keys of a map at once, one
// round trip per member (Prefetch uses it): like Read for each key, the
// present ones in the map.
type BatchReader interface {
	ReadAll(ctx context.Context, m string, keys []string) (map[string]api.Entry, error)
}

var (
	// ErrConflict: the transaction was aborted, nothing applied; a key it
	// read changed, or an older transaction held a key it needs. Run
	// retries it.
	ErrConflict = errors.New("txn: conflict; the transaction was aborted and nothing applied")
	// ErrExpired: the transaction reached its Timeout before it could
	// commit; aborted, nothing applied. Run retries it.
	ErrExpired = errors.New("txn: the transaction's timeout passed; aborted, nothing applied")
	// ErrCondition: an Add would take a value below its floor, or its key
	// does not hold an integer; the transaction aborted, nothing applied.
	// It is the data's answer: Run does not retry it.
	ErrCondition = errors.New("txn: a condition of the transaction failed; aborted, nothing applied")
	// ErrDone: the transaction already committed or rolled back.
	ErrDone = errors.New("txn: the transaction is already finished")
	// ErrTooLarge: too many keys for one transaction (Options.MaxKeys).
	ErrTooLarge = errors.New("txn: too many keys for one transaction")
	// ErrNotFound is the grid's: a key that is absent.
	ErrNotFound = api.ErrNotFound
	// ErrUnknown: the commit's outcome could not be learned before ctx
	// ended (it is decided by the transaction's deadline: ask again with
	// a new transaction reading the keys). It is api.ErrTimeout.
	ErrUnknown = api.ErrTimeout
)

// Options tune a transaction.
type Options struct {
	// Timeout bounds the transaction from Begin to its commit decision:
	// past it the transaction can only abort, and locks a dead caller
	// left are released about Timeout+2s after Begin. Default 5s, at
	// most 5m.
	Timeout time.Duration
	// LockWait bounds how long an older transaction waits for a younger
	// one's lock at commit before it gives up with ErrConflict. Default
	// 500ms.
	LockWait time.Duration
	// MaxKeys bounds the keys a transaction reads and writes. Default 4096.
	MaxKeys int
	// Locking: strict two-phase locking: every Get locks its key at once
	// (wait-die), so reads never conflict at commit; costs one replicated
	// step per partition read. Prefetch locks a partition's keys in one
	// step. The default (false) is optimistic: Get reads without a lock
	// and Commit validates what it read.
	Locking bool
	// prio keeps a retried transaction's age (Run).
	prio int64
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.LockWait <= 0 {
		o.LockWait = 500 * time.Millisecond
	}
	if o.MaxKeys <= 0 {
		o.MaxKeys = 4096
	}
	return o
}

type key struct{ m, k string }

// Tx is one transaction. It is not safe for concurrent use.
type Tx struct {
	g        Grid
	opts     Options
	id       string
	prio     int64
	deadline time.Time

	reads map[key]proto.Read
	rvals map[key][]byte // read values (nil: absent)
	// watched: reads recorded by Watch whose value Get has not read yet
	watched map[key]struct{}
	writes  map[key]proto.Write
	order   []key // writes in first-write order
	done    bool

	// Locking: the coordinator partition, fixed by the first lock step
	// (-1 before), the partitions a lock step was sent to (it may have
	// applied) and the keys locked.
	coord  int
	held   map[int]bool
	locked map[key]bool
}

// Begin starts a transaction on g. Nothing crosses the network until the
// first Get.
func Begin(ctx context.Context, g Grid, opts Options) (*Tx, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if g == nil {
		return nil, fmt.Errorf("%w: txn.Begin needs a Grid", api.ErrBadRequest)
	}
	opts = opts.withDefaults()
	if opts.Timeout > 5*time.Minute {
		return nil, fmt.Errorf("%w: Timeout %v is above 5m", api.ErrBadRequest, opts.Timeout)
	}
	now := time.Now()
	prio := opts.prio
	if prio == 0 {
		prio = now.UnixNano()
	}
	return &Tx{g: g, opts: opts, id: newID(), prio: prio, deadline: now.Add(opts.Timeout),
		reads: map[key]proto.Read{}, rvals: map[key][]byte{}, writes: map[key]proto.Write{}, coord: -1}, nil
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ID is the transaction's id (it names its records in the grid).
func (t *Tx) ID() string { return t.id }

func (t *Tx) usable(m, k string) error {
	switch {
	case t.done:
		return ErrDone
	case m == "" || k == "":
		return fmt.Errorf("%w: a transaction's key needs a map and a key", api.ErrBadRequest)
	case m[0] == 0:
		return fmt.Errorf("%w: map %q is the grid's own", api.ErrBadRequest, m)
	case len(t.reads)+len(t.writes) >= t.opts.MaxKeys:
		if _, r := t.reads[key{m, k}]; !r {
			if _, w := t.writes[key{m, k}]; !w {
				return fmt.Errorf("%w: %d keys (Options.MaxKeys)", ErrTooLarge, t.opts.MaxKeys)
			}
		}
	}
	return nil
}

// Get returns key's value in map m as the transaction sees it: its own
// write if any, else the committed value (ErrNotFound if absent), which
// Commit checks is still current. A second Get of a key answers the
// first one's value. With Options.Locking it first locks the key (waiting
// for a younger transaction's lock, up to LockWait; ErrConflict if an
// older one holds it), and the key stays locked until the transaction
// ends.
func (t *Tx) Get(ctx context.Context, m, k string) ([]byte, error) {
	if err := t.usable(m, k); err != nil {
		return nil, err
	}
	kk := key{m, k}
	if w, ok := t.writes[kk]; ok && !w.Add {
		if w.Delete {
			return nil, ErrNotFound
		}
		return w.Value, nil
	}
	_, watched := t.watched[kk]
	if _, ok := t.reads[kk]; ok && !watched {
		if v := t.rvals[kk]; v != nil {
			return v, nil
		}
		return nil, ErrNotFound
	}
	var e api.Entry
	var err error
	if t.opts.Locking {
		e, err = t.lockOne(ctx, kk)
	} else {
		e, err = t.g.Read(ctx, m, k)
	}
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	if err := t.record(kk, e, err == nil); err != nil {
		return nil, err
	}
	if w, ok := t.writes[kk]; ok && w.Add {
		// A deferred Add becomes a write of the value now known.
		if err := t.addTo(kk, w); err != nil {
			return nil, err
		}
		return t.writes[kk].Value, nil
	}
	if err != nil {
		return nil, ErrNotFound
	}
	return t.rvals[kk], nil
}

// record remembers what a read of kk found (found false: absent, e's
// Version 0). A watched key must still be at its watched version.
func (t *Tx) record(kk key, e api.Entry, found bool) error {
	if _, watched := t.watched[kk]; watched {
		delete(t.watched, kk)
		if want := t.reads[kk].Version; e.Version != want {
			return fmt.Errorf("%w: key %q of map %q changed since it was watched (version %d, now %d)", ErrConflict, kk.k, kk.m, want, e.Version)
		}
	}
	t.reads[kk] = proto.Read{Map: kk.m, Key: kk.k, Version: e.Version}
	if found {
		v := e.Value
		if v == nil {
			v = []byte{}
		}
		t.rvals[kk] = v
	}
	return nil
}

// prefetchParallel bounds the reads one Prefetch runs at once.
const prefetchParallel = 32

// Prefetch reads, in parallel, the keys of map m that a Get would read
// (not yet read or written by the transaction, or only watched), so that
// the Gets of them that follow answer without a round trip each. What it
// reads is validated at Commit like any Get; a watched key found changed
// fails it with ErrConflict, as Get would.
func (t *Tx) Prefetch(ctx context.Context, m string, keys []string) error {
	var todo []string
	seen := make(map[string]struct{}, len(keys))
	for _, k := range keys {
		if _, dup := seen[k]; dup {
			continue
		}
		seen[k] = struct{}{}
		if err := t.usable(m, k); err != nil {
			return err
		}
		kk := key{m, k}
		_, written := t.writes[kk]
		_, read := t.reads[kk]
		_, watched := t.watched[kk]
		if !written && (!read || watched) {
			todo = append(todo, k)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	if t.opts.Locking {
		return t.prefetchLocked(ctx, m, todo)
	}
	ents, errs := t.readAll(ctx, m, todo)
	for i, k := range todo {
		if errs[i] != nil && !errors.Is(errs[i], ErrNotFound) {
			return errs[i]
		}
		if err := t.usable(m, k); err != nil {
			return err
		}
		if err := t.record(key{m, k}, ents[i], errs[i] == nil); err != nil {
			return err
		}
	}
	return nil
}

// readAll reads keys of map m: with one request per member if the grid
// is a BatchReader, else prefetchParallel reads at a time. errs[i] is
// ErrNotFound for an absent key.
func (t *Tx) readAll(ctx context.Context, m string, keys []string) ([]api.Entry, []error) {
	ents := make([]api.Entry, len(keys))
	errs := make([]error, len(keys))
	if br, ok := t.g.(BatchReader); ok {
		got, err := br.ReadAll(ctx, m, keys)
		for i, k := range keys {
			e, found := got[k]
			switch {
			case err != nil:
				errs[i] = err
			case found:
				ents[i] = e
			default:
				errs[i] = ErrNotFound
			}
		}
		return ents, errs
	}
	sem := make(chan struct{}, prefetchParallel)
	var wg sync.WaitGroup
	for i, k := range keys {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ents[i], errs[i] = t.g.Read(ctx, m, k)
		}()
	}
	wg.Wait()
	return ents, errs
}

// Put buffers a write of value to key of map m; it applies at Commit.
func (t *Tx) Put(m, k string, value []byte) error {
	if err := t.usable(m, k); err != nil {
		return err
	}
	v := append([]byte{}, value...)
	t.write(proto.Write{Map: m, Key: k, Value: v})
	return nil
}

// PutTTL is Put with an expiry: the key expires ttl after the write
// applies (at its participant's finish), at most 100 years. A ttl of 0
// is Put.
func (t *Tx) PutTTL(m, k string, value []byte, ttl time.Duration) error {
	if ttl < 0 || ttl > proto.MaxTTL {
		return fmt.Errorf("%w: TTL %v out of range [0, %v]", api.ErrBadRequest, ttl, proto.MaxTTL)
	}
	if err := t.usable(m, k); err != nil {
		return err
	}
	t.write(proto.Write{Map: m, Key: k, Value: append([]byte{}, value...), TTL: int64(ttl)})
	return nil
}

// PutKeepTTL is Put keeping the key's expiry, as Redis's INCR, APPEND and
// SET KEEPTTL do: the one this transaction gave it (none after its Put or
// Delete, PutTTL's after a PutTTL), else the expiry of the key it reads
// (a Get, if the transaction has not read the key yet); none if absent.
// Should the key expire between Commit's validation and the write's
// application at its participant, the write expires with it.
func (t *Tx) PutKeepTTL(ctx context.Context, m, k string, value []byte) error {
	if err := t.usable(m, k); err != nil {
		return err
	}
	kk := key{m, k}
	w := proto.Write{Map: m, Key: k, Value: append([]byte{}, value...)}
	if prev, ok := t.writes[kk]; !ok || prev.Add {
		_, err := t.Get(ctx, m, k) // also turns a deferred Add into a write
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		w.KeepTTL = err == nil
	}
	if prev, ok := t.writes[kk]; ok {
		w.KeepTTL, w.TTL = prev.KeepTTL, prev.TTL
	}
	t.write(w)
	return nil
}

// Watch makes the transaction depend on key of map m being at version
// (0: absent) when it commits, as if a Get had read that version, without
// a network call: Redis's WATCH, whose caller learned the version earlier
// (Map.GetEntry). A later Get of the key reads it, and fails with
// ErrConflict if its version is no longer version. Watch a key before
// any Get or Put of it; watching a key already read compares the two
// versions at once. Under Run, a changed watched key fails every
// attempt: fn should check (Get) its watched keys on a retry and stop.
func (t *Tx) Watch(m, k string, version uint64) error {
	if err := t.usable(m, k); err != nil {
		return err
	}
	kk := key{m, k}
	if r, ok := t.reads[kk]; ok {
		if r.Version != version {
			return fmt.Errorf("%w: key %q of map %q changed since it was watched (version %d, read %d)", ErrConflict, k, m, version, r.Version)
		}
		return nil
	}
	t.reads[kk] = proto.Read{Map: m, Key: k, Version: version}
	if t.watched == nil {
		t.watched = map[key]struct{}{}
	}
	t.watched[kk] = struct{}{}
	return nil
}

// Delete buffers the deletion of key of map m; it applies at Commit.
func (t *Tx) Delete(m, k string) error {
	if err := t.usable(m, k); err != nil {
		return err
	}
	t.write(proto.Write{Map: m, Key: k, Delete: true})
	return nil
}

func (t *Tx) write(w proto.Write) {
	kk := key{w.Map, w.Key}
	if _, ok := t.writes[kk]; !ok {
		t.order = append(t.order, kk)
	}
	t.writes[kk] = w
}

// Add buffers adding delta to the integer held by key of map m (absent:
// 0). Unless the transaction read or wrote the key, nothing is read now:
// the key's partition applies it at commit, so a transfer with Add costs
// no read round trip.
func (t *Tx) Add(m, k string, delta int64) error {
	return t.add(m, k, proto.Write{Map: m, Key: k, Add: true, Delta: delta})
}

// AddAtLeast is Add, and the commit fails with ErrCondition (nothing
// applied) if the result would be below min: a transfer's debit that
// must not overdraw.
func (t *Tx) AddAtLeast(m, k string, delta, min int64) error {
	return t.add(m, k, proto.Write{Map: m, Key: k, Add: true, Delta: delta, HasMin: true, Min: min})
}

func (t *Tx) add(m, k string, w proto.Write) error {
	if err := t.usable(m, k); err != nil {
		return err
	}
	kk := key{m, k}
	if prev, ok := t.writes[kk]; ok && prev.Add {
		// Two deferred Adds: one, with the floor both imply.
		sum := prev.Delta + w.Delta
		if (w.Delta > 0 && sum < prev.Delta) || (w.Delta < 0 && sum > prev.Delta) {
			return fmt.Errorf("%w: key %q of map %q would overflow", ErrCondition, k, m)
		}
		merged := proto.Write{Map: m, Key: k, Add: true, Delta: sum, HasMin: prev.HasMin || w.HasMin, Min: w.Min}
		if prev.HasMin {
			floor, ok := shiftFloor(prev.Min, w.Delta)
			if !ok {
				return fmt.Errorf("%w: key %q of map %q would overflow", ErrCondition, k, m)
			}
			if !w.HasMin || floor > w.Min {
				merged.Min = floor
			}
		}
		t.writes[kk] = merged
		return nil
	}
	_, written := t.writes[kk]
	_, read := t.reads[kk]
	if !written && !read {
		t.write(w)
		return nil
	}
	return t.addTo(kk, w)
}

// shiftFloor is the floor min of a first Add seen after a second Add of
// delta: min+delta, saturated below (a floor under MinInt64 is none);
// false if it is above MaxInt64 (the first Add's floor implies the result
// overflows).
func shiftFloor(min, delta int64) (int64, bool) {
	floor := min + delta
	switch {
	case delta > 0 && floor < min:
		return 0, false
	case delta < 0 && floor > min:
		return math.MinInt64, true
	}
	return floor, true
}

// addTo applies the Add w to the value the transaction knows for kk (its
// own write, or what it read) and buffers the result as a write.
func (t *Tx) addTo(kk key, w proto.Write) error {
	var cur []byte
	if prev, ok := t.writes[kk]; ok && !prev.Add {
		if !prev.Delete {
			cur = prev.Value
		}
	} else {
		cur = t.rvals[kk]
	}
	var n int64
	if cur != nil {
		v, err := strconv.ParseInt(string(cur), 10, 64)
		if err != nil {
			return fmt.Errorf("%w: key %q of map %q does not hold an integer", ErrCondition, kk.k, kk.m)
		}
		n = v
	}
	next := n + w.Delta
	if (w.Delta > 0 && next < n) || (w.Delta < 0 && next > n) {
		return fmt.Errorf("%w: key %q of map %q would overflow", ErrCondition, kk.k, kk.m)
	}
	if w.HasMin && next < w.Min {
		return fmt.Errorf("%w: key %q of map %q would go below %d", ErrCondition, kk.k, kk.m, w.Min)
	}
	t.write(proto.Write{Map: kk.m, Key: kk.k, Value: strconv.AppendInt(nil, next, 10)})
	return nil
}

// Rollback abandons the transaction: nothing was applied before Commit.
// Without Locking nothing was locked either, so nothing crosses the
// network; with it, the partitions its Gets locked release their locks.
func (t *Tx) Rollback(ctx context.Context) error {
	if t.done {
		return ErrDone
	}
	t.done = true
	if len(t.held) > 0 {
		t.finishAll(ctx, t.heldParts(), false)
	}
	return nil
}

// Commit applies every write of the transaction, or none. It returns nil
// once the transaction is committed (its writes visible to every later
// read), ErrConflict or ErrExpired when it aborted (nothing applied), or
// ErrUnknown when ctx ended before the outcome was known.
func (t *Tx) Commit(ctx context.Context) error {
	if t.done {
		return ErrDone
	}
	t.done = true
	if len(t.held) > 0 {
		return t.commitLocked(ctx)
	}
	if len(t.writes) == 0 && len(t.reads) == 0 {
		return nil
	}
	parts := t.split()
	if len(parts) == 1 {
		for p, w := range parts {
			return t.commitOne(ctx, p, w)
		}
	}
	return t.commitTwoPhase(ctx, parts)
}

// split groups the transaction's reads and writes by partition.
func (t *Tx) split() map[int]*proto.Work {
	n := t.g.Partitions()
	parts := map[int]*proto.Work{}
	at := func(m, k string) *proto.Work {
		p := affinity.Partition(k, n)
		w := parts[p]
		if w == nil {
			w = &proto.Work{}
			parts[p] = w
		}
		return w
	}
	for _, r := range t.reads {
		w := at(r.Map, r.Key)
		w.Reads = append(w.Reads, r)
	}
	for _, kk := range t.order {
		w := at(kk.m, kk.k)
		w.Writes = append(w.Writes, t.writes[kk])
	}
	return parts
}

func (t *Tx) header(coord int) proto.Header {
	return proto.Header{ID: t.id, Coord: coord, Deadline: t.deadline.UnixNano(), Prio: t.prio}
}

// sortedParts lists parts' partitions in order.
func sortedParts(parts map[int]*proto.Work) []int {
	out := make([]int, 0, len(parts))
	for p := range parts {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}
