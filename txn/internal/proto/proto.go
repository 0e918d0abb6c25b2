// Package proto is what package txn's callers and its members' steps
// exchange: the steps' names, arguments, results and the records the
// steps keep in each partition. Both sides encode with msgpack; a field
// added breaks mixed builds, like every wire message of the grid.
package proto

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// The steps (installed on every member by txnnode.Start). Names start
// with "\x00txn." (client.TxnStepPrefix): clients may call them.
const (
	StepOne     = "\x00txn.one"     // a transaction of one partition: validate and apply
	StepPrepare = "\x00txn.prepare" // a participant: validate, lock, keep the writes
	StepCommit  = "\x00txn.commit"  // the coordinator: validate, apply its writes, record the decision
	StepFinish  = "\x00txn.finish"  // a participant: apply or drop what it prepared, unlock
	StepResolve = "\x00txn.resolve" // the coordinator: the decision; abort if none and past the deadline
	StepHeld    = "\x00txn.held"    // a participant: which of these transactions it still holds prepared
	StepForget  = "\x00txn.forget"  // the coordinator: drop decisions nobody needs any more
	StepLock    = "\x00txn.lock"    // a Get with Options.Locking: lock keys, answer their entries
)

// The internal maps of transaction records, one per kind so that a scan
// of one kind reads only its own. Keys are "{tag}<id>" (Key), so each
// record lives in its partition.
const (
	MapPrepared = "\x00txn.p" // a prepared participant's Prepared record
	MapDecision = "\x00txn.d" // the coordinator's Decision
	MapTomb     = "\x00txn.t" // a finished participant's tombstone (a late prepare is refused): its deadline (TombValue), swept by the members' recovery
)

// Key is transaction id's record key in partition tag.
func Key(tag, id string) string { return "{" + tag + "}" + id }

// Read is a key the transaction read, with the version it saw (0: absent).
type Read struct {
	_msgpack struct{} `msgpack:",as_array"`
	Map      string
	Key      string
	Version  uint64
}

// Write is a key the transaction writes: a value, a deletion, or (Add)
// an integer delta the participant applies to the key's current value
// (absent: 0), refusing (Condition) a result below Min when HasMin.
type Write struct {
	_msgpack struct{} `msgpack:",as_array"`
	Map      string
	Key      string
	Value    []byte
	Delete   bool
	Add      bool
	Delta    int64
	HasMin   bool
	Min      int64
	TTL      int64 // nanoseconds from when the write applies; 0: none; at most MaxTTL
	// KeepTTL: keep the expiry the key has when the write applies; the
	// transaction read it present, so absent then means it expired
	// meanwhile and the write expires at once. TTL is unused.
	KeepTTL bool
}

// MaxTTL bounds a write's TTL: its expiry is counted from when the write
// applies (a participant's finish, possibly minutes after the prepare
// accepted it) and must never overflow there, or the finish could never
// apply.
const MaxTTL = 100 * 365 * 24 * time.Hour

// Header names a transaction and its limits.
type Header struct {
	_msgpack struct{} `msgpack:",as_array"`
	ID       string
	Coord    int   // the coordinator partition
	Deadline int64 // unix nanoseconds: no commit decision after it
	Prio     int64 // wait-die age: smaller is older
}

// Work is a transaction's reads and writes at one partition (StepOne,
// StepPrepare, StepCommit).
type Work struct {
	_msgpack struct{} `msgpack:",as_array"`
	H        Header
	Reads    []Read
	Writes   []Write
	// Parts are the other participants (StepCommit: the decision keeps
	// them for its collection).
	Parts []int
	// Held: the transaction's Gets locked keys here (StepLock, so a
	// Prepared record of it may exist): StepPrepare adds to that record,
	// StepOne and StepCommit release those locks and drop the record.
	Held bool
}

// Prepared is a participant's record of what it prepared. StepLock
// creates it without writes (the keys a Locking transaction's Gets
// locked); a StepPrepare then adds the writes and their keys.
type Prepared struct {
	_msgpack struct{} `msgpack:",as_array"`
	H        Header
	Writes   []Write
	Locked   []Read // every key it locked (Version unused)
}

// Decision is the coordinator's record of a transaction's outcome.
type Decision struct {
	_msgpack struct{} `msgpack:",as_array"`
	Commit   bool
	Deadline int64
	Parts    []int
}

// Finish tells a participant the outcome (StepFinish).
type Finish struct {
	_msgpack struct{} `msgpack:",as_array"`
	ID       string
	Commit   bool
	Deadline int64 // for the tombstone's lifetime
}

// IDs names transactions (StepResolve: one with its deadline; StepHeld,
// StepForget: a batch).
type IDs struct {
	_msgpack struct{} `msgpack:",as_array"`
	IDs      []string
	Deadline int64
	// Abort (StepResolve): decide abort now if there is no decision yet
	// (the caller gives up on its commit).
	Abort bool
	// Tombs (StepForget): transactions whose tombstones to drop.
	Tombs []string
}

// TombValue is a tombstone's value: the transaction's deadline, after
// which (with a margin for the clocks) no step of it applies any more.
func TombValue(deadline int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(deadline)) }

// TombDeadline reads a tombstone's value; ok is false for a malformed one.
func TombDeadline(v []byte) (int64, bool) {
	if len(v) != 8 {
		return 0, false
	}
	return int64(binary.BigEndian.Uint64(v)), true
}

// Status is a step's outcome.
type Status uint8

const (
	Done      Status = iota + 1 // prepared, committed, finished, or resolved as committed
	Aborted                     // resolved as aborted
	Pending                     // no decision yet, before the deadline (StepResolve)
	Wait                        // a younger transaction holds a key: retry shortly (wait-die)
	Conflict                    // a read changed, or an older transaction holds a key (die)
	Expired                     // past the deadline: nothing applied
	Finished                    // StepPrepare, StepLock: the transaction was already finished here
	Condition                   // an Add's condition failed, or its value is not an integer: nothing applied
)

func (s Status) String() string {
	switch s {
	case Done:
		return "done"
	case Aborted:
		return "aborted"
	case Pending:
		return "pending"
	case Wait:
		return "wait"
	case Conflict:
		return "conflict"
	case Expired:
		return "expired"
	case Finished:
		return "finished"
	case Condition:
		return "condition"
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// Result is a step's answer.
type Result struct {
	_msgpack struct{} `msgpack:",as_array"`
	Status   Status
	Detail   string   // why (a conflict's key, the holder)
	IDs      []string // StepHeld: the ones still prepared
	Entries  []Entry  // StepLock: the locked keys' entries, in the order asked
}

// Entry is a key's committed entry as StepLock found it.
type Entry struct {
	_msgpack struct{} `msgpack:",as_array"`
	Found    bool
	Value    []byte
	Version  uint64
}

// Encode marshals v. A Result with only a status is its one status byte
// (most steps answer that; a msgpack array never starts with 1-8).
func Encode(v any) ([]byte, error) {
	switch v := v.(type) {
	case Result:
		if v.Detail == "" && v.IDs == nil && v.Entries == nil {
			return []byte{byte(v.Status)}, nil
		}
	case Work:
		return appendWork(make([]byte, 0, 64+sizeOfWrites(v.Writes)+32*len(v.Reads)), &v), nil
	case *Work:
		return appendWork(make([]byte, 0, 64+sizeOfWrites(v.Writes)+32*len(v.Reads)), v), nil
	case Prepared:
		return appendPrepared(make([]byte, 0, 64+sizeOfWrites(v.Writes)+32*len(v.Locked)), &v), nil
	case Decision:
		return appendDecision(make([]byte, 0, 16+4*len(v.Parts)), &v), nil
	case Finish:
		return appendFinish(make([]byte, 0, 24+len(v.ID)), &v), nil
	}
	return msgpack.Marshal(v)
}

// Decode unmarshals b into v.
func Decode(b []byte, v any) error {
	if r, ok := v.(*Result); ok && len(b) == 1 {
		*r = Result{Status: Status(b[0])}
		return nil
	}
	return msgpack.Unmarshal(b, v)
}
