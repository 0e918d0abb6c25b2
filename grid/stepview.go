package grid

import (
	"bytes"
	"errors"
	"fmt"
	"iter"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// StepView is a step function's access to its partition (see step.go).
// Reads take the partition lock briefly, one access at a time, and record
// what they saw (an entry's version; 0 for an absent key; a map's last
// write for an iteration); writes are only buffered. The step commits only
// if nothing it read changed in between, so a step sees one consistent
// state of its partition, and its writes apply on top of exactly that
// state.
//
// Every key passed to a StepView must belong to the step's partition
// (collocated: the same affinity key). Another partition's key, or a view
// used after its step ended, fails the whole step with a clear error and
// nothing is applied: methods do not return errors, Err reports the first.
// A StepView is not safe for concurrent use. Returned values are shared
// with the store: never modify them.
type StepView struct {
	n       *Node
	p       *partition
	epoch   uint64
	mapName string
	key     string
	filter  Filter // limits Range(mapName); nil: none

	reads   map[mapKey]uint64 // version seen (0: absent or expired)
	ranged  map[string]uint64 // map -> mapLSN when iterated
	expiry  int64             // earliest expiry among iterated entries (0: none)
	writes  []wire.Mutation
	written map[mapKey]int // index into writes, for read-your-writes
	wbytes  int            // size of writes as checkSize counts it

	// Streams (stepstream.go): writes' indexes by stream (published) and
	// by (stream, group) (positioned); group positions read.
	published  map[mapKey]int
	positioned map[mapKey]int
	groupReads map[mapKey]uint64

	// callers: a function callers name (not the grid's own steps nor
	// StepAt's): it may not write reserved names.
	callers bool
	// managesLocks: the step inspects or changes key locks itself
	// (txlock.go), so its commit does not refuse locked keys.
	managesLocks bool

	err    error
	closed atomic.Bool
}

// errConflict marks a step whose reads changed under it: it runs again.
var errConflict = errors.New("grid: step conflicted with a concurrent write")

func newStepView(n *Node, p *partition, epoch uint64, mapName, key string) *StepView {
	return &StepView{n: n, p: p, epoch: epoch, mapName: mapName, key: key,
		reads: map[mapKey]uint64{}, ranged: map[string]uint64{}, written: map[mapKey]int{}}
}

// Partition is the step's partition.
func (v *StepView) Partition() int { return v.p.id }

// Map and Key are the map and key the call targeted (ExecuteOnKey); both
// empty for a partition task, Key empty for a task over one map.
func (v *StepView) Map() string { return v.mapName }

// Key is the key the call targeted (see Map).
func (v *StepView) Key() string { return v.key }

// Err is the first error the view met; the step fails with it.
func (v *StepView) Err() error { return v.err }

func (v *StepView) fail(err error) {
	if v.err == nil {
		v.err = err
	}
}

// usable checks the view before an access: not closed, no error yet, and
// key (if not empty-checked) in the step's partition.
func (v *StepView) usable(key string, check bool) bool {
	if v.closed.Load() {
		v.fail(fmt.Errorf("%w: partition %d: view used after its step ended", api.ErrFunctionBudget, v.p.id))
	}
	if v.err != nil {
		return false
	}
	if check {
		if part := affinity.Partition(key, len(v.n.parts)); part != v.p.id {
			v.fail(fmt.Errorf("%w: key %q is in partition %d, the step runs in partition %d", api.ErrNotCollocated, key, part, v.p.id))
			return false
		}
	}
	return true
}

// lockPrimary locks the partition if this node still leads it at the
// view's epoch; otherwise it fails the step (NotOwner: the router runs it
// again at the new primary) and returns false unlocked.
func (v *StepView) lockPrimary() bool {
	v.p.mu.Lock()
	if v.p.role != rolePrimary || v.p.epoch != v.epoch {
		err := v.p.notOwner()
		v.p.mu.Unlock()
		v.fail(err)
		return false
	}
	return true
}

// StepEntry is an entry as a step sees it.
type StepEntry struct {
	Value    []byte
	Version  uint64 // LSN of the write that set it (0: written by this step)
	ExpireAt int64  // unix nanoseconds; 0: no expiry
}

// Get returns the value of key in map m and whether it is present.
func (v *StepView) Get(m, key string) ([]byte, bool) {
	e, ok := v.Entry(m, key)
	return e.Value, ok
}

// Entry returns the entry of key in map m and whether it is present,
// including this step's own earlier writes.
func (v *StepView) Entry(m, key string) (StepEntry, bool) {
	if !v.usable(key, true) {
		return StepEntry{}, false
	}
	mk := mapKey{m, key}
	if i, ok := v.written[mk]; ok {
		w := &v.writes[i]
		return StepEntry{Value: w.Value, ExpireAt: w.ExpireAt}, w.Kind == wire.MutSet
	}
	if !v.lockPrimary() {
		return StepEntry{}, false
	}
	e := v.p.get(m, key, nowNano())
	v.p.mu.Unlock()
	var ver uint64
	if e != nil {
		ver = e.version
	}
	if seen, ok := v.reads[mk]; ok && seen != ver {
		v.fail(errConflict) // it changed between two reads: run again
		return StepEntry{}, false
	}
	v.reads[mk] = ver
	if e == nil {
		return StepEntry{}, false
	}
	return StepEntry{Value: e.value, Version: e.version, ExpireAt: e.expireAt}, true
}

// Range yields map m's live entries of this partition, in no particular
// order, as they were when the iteration started (this step's own writes
// are not included). The entries are taken under the partition lock in one
// pass (a slice of references, O(entries) time and memory); the iteration
// itself runs outside the lock and stops when the consumer stops.
func (v *StepView) Range(m string) iter.Seq2[string, []byte] {
	return func(yield func(string, []byte) bool) {
		if !v.usable("", false) || !v.lockPrimary() {
			return
		}
		lsn := v.p.mapLSN[m]
		now := nowNano()
		kv := v.p.maps[m]
		keys := make([]string, 0, len(kv))
		vals := make([]*entry, 0, len(kv))
		for k, e := range kv {
			if e.live(now) {
				keys, vals = append(keys, k), append(vals, e)
			}
		}
		v.p.mu.Unlock()
		if seen, ok := v.ranged[m]; ok && seen != lsn {
			v.fail(errConflict)
			return
		}
		v.ranged[m] = lsn
		filter := v.filter
		if m != v.mapName {
			filter = nil
		}
		for i, e := range vals {
			if e.expireAt != 0 && (v.expiry == 0 || e.expireAt < v.expiry) {
				v.expiry = e.expireAt
			}
			if v.closed.Load() {
				return
			}
			if filter != nil && !filter(keys[i], e.value) {
				continue
			}
			if !yield(keys[i], e.value) {
				return
			}
		}
	}
}

// writable reports whether the step may write name (a map, stream or
// group), failing it if not: a function callers name may not write the
// grid's internal names.
func (v *StepView) writable(name string) bool {
	if v.callers && reserved(name) {
		v.fail(errReservedName())
		return false
	}
	return true
}

// Set buffers a write of value to key in map m, expiring after ttl (0:
// never). The view keeps its own copy of value.
func (v *StepView) Set(m, key string, value []byte, ttl time.Duration) {
	if !v.usable(key, true) || !v.writable(m) {
		return
	}
	var exp int64
	if ttl > 0 {
		now := nowNano()
		if exp = now + int64(ttl); exp < now {
			v.fail(fmt.Errorf("%w: TTL %v overflows", api.ErrBadRequest, ttl))
			return
		}
	}
	val := bytes.Clone(value)
	if val == nil {
		val = []byte{}
	}
	v.write(wire.Mutation{Kind: wire.MutSet, Map: m, Key: key, Value: val, ExpireAt: exp})
}

// Delete buffers the deletion of key in map m.
func (v *StepView) Delete(m, key string) {
	if !v.usable(key, true) || !v.writable(m) {
		return
	}
	v.write(wire.Mutation{Kind: wire.MutDelete, Map: m, Key: key})
}

// write buffers mu, replacing an earlier write of the same key. Writes
// that could not commit (checkSize) fail the step at once, so a function
// that keeps writing cannot grow the member's memory for its whole budget.
func (v *StepView) write(mu wire.Mutation) {
	mk := mapKey{mu.Map, mu.Key}
	i, ok := v.written[mk]
	if ok {
		v.wbytes -= mutSize(&v.writes[i])
	}
	v.wbytes += mutSize(&mu)
	if err := v.checkWrite(&mu); err != nil {
		v.fail(err)
		return
	}
	if ok {
		v.writes[i] = mu
		return
	}
	v.written[mk] = len(v.writes)
	v.writes = append(v.writes, mu)
}

// checkWrite applies checkSize's limits to the buffered writes.
func (v *StepView) checkWrite(mu *wire.Mutation) error {
	sz := len(mu.Map) + len(mu.Key) + len(mu.Value)
	if mu.Kind == wire.MutSet && sz > v.n.cfg.MaxValueSize {
		return fmt.Errorf("%w: entry of %d bytes (map %q, max %d)", api.ErrValueTooLarge, sz, mu.Map, v.n.cfg.MaxValueSize)
	}
	if total := recordOverhead + v.wbytes; total > v.n.cfg.MaxFrame/2 {
		return fmt.Errorf("%w: the step's writes reached %d bytes (max %d for one record)", api.ErrValueTooLarge, total, v.n.cfg.MaxFrame/2)
	}
	return nil
}

// mutSize is a mutation's share of a record as checkSize counts it.
func mutSize(mu *wire.Mutation) int { return len(mu.Map) + len(mu.Key) + len(mu.Value) + 32 }

// close ends the view: later accesses fail and write nothing.
func (v *StepView) close() { v.closed.Store(true) }

// validate reports whether everything the step read is unchanged at now.
// Caller holds p.mu.
func (v *StepView) validate(now int64) bool {
	p := v.p
	for mk, ver := range v.reads {
		var cur uint64
		if e := p.get(mk.m, mk.k, now); e != nil {
			cur = e.version
		}
		if cur != ver {
			return false
		}
	}
	for m, lsn := range v.ranged {
		if p.mapLSN[m] != lsn {
			return false
		}
	}
	// An entry seen live may have expired since (expiry is not a write).
	return v.expiry == 0 || now < v.expiry
}

// readFloor is the commit the step's answer must wait for when it writes
// nothing: what it read must be on every in-sync backup. Caller holds p.mu.
func (v *StepView) readFloor() uint64 {
	p := v.p
	if len(v.ranged) > 0 || len(v.groupReads) > 0 {
		return p.partFloor()
	}
	f := p.ready
	for mk := range v.reads {
		f = max(f, p.readFloor(mk.m, mk.k))
	}
	return f
}
