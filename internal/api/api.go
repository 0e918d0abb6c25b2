// Package api holds the types that the embedded node (package grid) and the
// client SDK (package client) share: the byte-level Map interface, options
// and errors. It imports nothing of ours but the wire codes, so the client can
// use it without pulling serf or raft. Both grid and client re-export these
// names as aliases.
package api

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"math"
	"time"
)

// Code is a stable error code carried over the wire. Values never change.
type Code uint16

// Wire error codes. Append only.
const (
	CodeOK             Code = 0
	CodeNotOwner       Code = 1  // the node is not the partition's primary at the request's table version
	CodeStaleEpoch     Code = 2  // replication or handoff from a superseded primary
	CodeGap            Code = 3  // a backup saw an LSN gap and needs a snapshot
	CodeTimeout        Code = 4  // the deadline passed; the outcome of a mutation is unknown
	CodeUnavailable    Code = 5  // no table yet, or the partition cannot serve right now
	CodeBadRequest     Code = 6  // malformed or invalid request
	CodeInternal       Code = 7  // a bug: reported, never a panic
	CodeStaleSequence  Code = 8  // a retry of a request whose result the client had already acknowledged
	CodeClosed         Code = 9  // the node is shutting down
	CodeReplication    Code = 10 // a synchronous backup did not acknowledge; the outcome is unknown
	CodeUnknownMessage Code = 11 // the peer does not know the message type
	CodeNoTarget       Code = 12 // a drain has no member left to hand data to
	CodeNotInteger     Code = 13 // the value is not a decimal 64-bit integer
	CodeOverflow       Code = 14 // an increment would overflow 64 bits
	CodeValueTooLarge  Code = 15 // a value, a record or a request exceeds its size limit; nothing was applied
	CodeBusy           Code = 16 // a per-connection or per-node limit is reached; nothing was applied, retry later
	CodeNoFunction     Code = 17 // no function is registered under that name on the member; nothing was applied
	CodeBadArgs        Code = 18 // a function's arguments did not decode; nothing was applied
	CodeFunctionPanic  Code = 19 // a function panicked; nothing was applied
	CodeFunctionBudget Code = 20 // a function ran past its time budget; nothing was applied
	CodeFunctionFailed Code = 21 // a function returned an error; nothing was applied
	CodeNotCollocated  Code = 22 // a function wrote a key of another partition; nothing was applied
	CodeJournalTrimmed Code = 23 // a journal position older than the partition retains
	CodeStreamFull     Code = 24 // a stream's retention is full of events a consumer group has not committed; nothing was applied, retry later
)

// Sentinel errors. Match with errors.Is; remote errors carrying the same code
// match the same sentinel.
var (
	ErrNotFound       = errors.New("grid: key not found")
	ErrNotOwner       = errors.New("grid: not the partition owner")
	ErrStaleEpoch     = errors.New("grid: stale partition epoch")
	ErrGap            = errors.New("grid: replication gap")
	ErrTimeout        = errors.New("grid: timed out; outcome unknown")
	ErrUnavailable    = errors.New("grid: unavailable")
	ErrBadRequest     = errors.New("grid: bad request")
	ErrInternal       = errors.New("grid: internal error")
	ErrStaleSequence  = errors.New("grid: request sequence already acknowledged")
	ErrClosed         = errors.New("grid: closed")
	ErrReplication    = errors.New("grid: backup did not acknowledge; outcome unknown")
	ErrUnknownMessage = errors.New("grid: unknown message type")
	ErrNoTarget       = errors.New("grid: no member left to hand data to")
	ErrNotInteger     = errors.New("grid: value is not an integer or out of range")
	ErrOverflow       = errors.New("grid: increment or decrement would overflow")
	ErrValueTooLarge  = errors.New("grid: value exceeds the maximum allowed size")
	ErrBusy           = errors.New("grid: limit reached; nothing applied")
	ErrNoFunction     = errors.New("grid: no function registered under that name; nothing applied")
	ErrBadArgs        = errors.New("grid: function arguments do not decode; nothing applied")
	ErrFunctionPanic  = errors.New("grid: function panicked; nothing applied")
	ErrFunctionBudget = errors.New("grid: function exceeded its time budget; nothing applied")
	ErrFunctionFailed = errors.New("grid: function failed; nothing applied")
	ErrNotCollocated  = errors.New("grid: key is not in the function's partition; nothing applied")
	ErrJournalTrimmed = errors.New("grid: position no longer retained in the partition's journal")
	ErrStreamFull     = errors.New("grid: stream full of events not yet committed by a consumer group; nothing applied, retry later")
)

var codeErr = map[Code]error{
	CodeNotOwner:       ErrNotOwner,
	CodeStaleEpoch:     ErrStaleEpoch,
	CodeGap:            ErrGap,
	CodeTimeout:        ErrTimeout,
	CodeUnavailable:    ErrUnavailable,
	CodeBadRequest:     ErrBadRequest,
	CodeInternal:       ErrInternal,
	CodeStaleSequence:  ErrStaleSequence,
	CodeClosed:         ErrClosed,
	CodeReplication:    ErrReplication,
	CodeUnknownMessage: ErrUnknownMessage,
	CodeNoTarget:       ErrNoTarget,
	CodeNotInteger:     ErrNotInteger,
	CodeOverflow:       ErrOverflow,
	CodeValueTooLarge:  ErrValueTooLarge,
	CodeBusy:           ErrBusy,
	CodeNoFunction:     ErrNoFunction,
	CodeBadArgs:        ErrBadArgs,
	CodeFunctionPanic:  ErrFunctionPanic,
	CodeFunctionBudget: ErrFunctionBudget,
	CodeFunctionFailed: ErrFunctionFailed,
	CodeNotCollocated:  ErrNotCollocated,
	CodeJournalTrimmed: ErrJournalTrimmed,
	CodeStreamFull:     ErrStreamFull,
}

// Sentinel returns the sentinel error of code c, or nil for CodeOK and
// unknown codes.
func Sentinel(c Code) error { return codeErr[c] }

// CodeOf returns the wire code of err: the code of the first sentinel it
// matches, CodeTimeout for context deadlines, CodeInternal otherwise.
func CodeOf(err error) Code {
	if err == nil {
		return CodeOK
	}
	var ne *NotOwnerError
	if errors.As(err, &ne) {
		return CodeNotOwner
	}
	var re *Error
	if errors.As(err, &re) {
		return re.Code
	}
	for c, s := range codeErr {
		if errors.Is(err, s) {
			return c
		}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return CodeTimeout
	}
	return CodeInternal
}

// Error is an error received from a peer: a stable code and its message.
type Error struct {
	Code Code
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("%s (code %d)", e.Msg, e.Code) }

// Is matches the sentinel of e's code.
func (e *Error) Is(target error) bool {
	s := codeErr[e.Code]
	return s != nil && s == target
}

// NotOwnerError says that the node is not the primary of Partition in its
// table of version Version; Owner is the primary it knows ("" if none).
type NotOwnerError struct {
	Partition int
	Version   uint64
	Owner     string
}

func (e *NotOwnerError) Error() string {
	return fmt.Sprintf("grid: not owner of partition %d at table version %d (owner %q)", e.Partition, e.Version, e.Owner)
}

// Is matches ErrNotOwner.
func (e *NotOwnerError) Is(target error) bool { return target == ErrNotOwner }

// TrimmedError says that a journal read asked Partition for a position
// older than the oldest it retains (Oldest): the events in between are
// gone. It matches ErrJournalTrimmed.
type TrimmedError struct {
	Partition int
	Asked     uint64
	Oldest    uint64
}

func (e *TrimmedError) Error() string {
	return fmt.Sprintf("%v: partition %d asked from %d, oldest retained %d", ErrJournalTrimmed, e.Partition, e.Asked, e.Oldest)
}

// Is matches ErrJournalTrimmed.
func (e *TrimmedError) Is(target error) bool { return target == ErrJournalTrimmed }

// Retryable reports whether a request that failed with err may be sent again
// (after a table refresh) without the caller's help. Mutations are only
// retried with their original (clientID, seq), which makes the retry apply
// once.
func Retryable(err error) bool {
	return errors.Is(err, ErrNotOwner) || errors.Is(err, ErrUnavailable) ||
		errors.Is(err, ErrStaleEpoch) || errors.Is(err, ErrReplication) || errors.Is(err, ErrClosed)
}

// Options modify a single mutation.
type Options struct {
	// TTL, if positive, makes the entry expire TTL after the write.
	TTL time.Duration
}

// Option sets an Options field.
type Option func(*Options)

// WithTTL makes the entry expire ttl after the write. Zero or negative means
// no expiry.
func WithTTL(ttl time.Duration) Option { return func(o *Options) { o.TTL = ttl } }

// Apply folds opts into an Options value.
func Apply(opts []Option) Options {
	var o Options
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Entry is a value with its version (the partition LSN of its last write).
type Entry struct {
	Value   []byte
	Version uint64
}

// Map is a named, partitioned map of string keys to byte values. The
// embedded node and the client SDK implement it alike. Every method may
// cross the network; ctx bounds it. Missing keys give ErrNotFound.
type Map interface {
	Name() string
	Get(ctx context.Context, key string) ([]byte, error)
	// GetEntry returns the value and its version, for CompareAndSwapVersion.
	GetEntry(ctx context.Context, key string) (Entry, error)
	Put(ctx context.Context, key string, value []byte, opts ...Option) error
	// PutIfAbsent stores value if key is absent. It returns the existing
	// value and false if key was present, or nil and true if it stored.
	PutIfAbsent(ctx context.Context, key string, value []byte, opts ...Option) ([]byte, bool, error)
	// Replace stores value only if key is present; it reports whether it did.
	Replace(ctx context.Context, key string, value []byte, opts ...Option) (bool, error)
	// CompareAndSwap stores value if the current value equals expected
	// (byte-wise); it reports whether it did. A missing key never matches.
	CompareAndSwap(ctx context.Context, key string, expected, value []byte, opts ...Option) (bool, error)
	// CompareAndSwapVersion stores value if the entry's version is version.
	CompareAndSwapVersion(ctx context.Context, key string, version uint64, value []byte, opts ...Option) (bool, error)
	// Delete removes key; it reports whether the key was present.
	Delete(ctx context.Context, key string) (bool, error)
	// GetAll returns the present keys among keys. One round trip per node.
	GetAll(ctx context.Context, keys []string) (map[string][]byte, error)
	// GetEntries is GetAll with each present key's version (as GetEntry).
	GetEntries(ctx context.Context, keys []string) (map[string]Entry, error)
	// PutAll stores every entry; the entries of one partition are applied
	// atomically. One round trip per node.
	PutAll(ctx context.Context, entries map[string][]byte, opts ...Option) error
	// Size counts the map's entries across the cluster.
	Size(ctx context.Context) (int, error)
	// Scan yields every entry, partition by partition, fetching a page at a
	// time; it stops fetching when the consumer stops. A failure ends the
	// scan and is stored in *errp (errp must not be nil). Entries written
	// during the scan may or may not be seen; none is yielded twice.
	Scan(ctx context.Context, errp *error) iter.Seq2[string, []byte]
	// Clear removes every entry.
	Clear(ctx context.Context) error

	// Set is the general write behind Put, PutIfAbsent and Replace, with
	// Redis SET's options: see SetArgs and SetResult.
	Set(ctx context.Context, key string, value []byte, args SetArgs) (SetResult, error)
	// GetAndDelete removes key and returns the value it had
	// (ErrNotFound if absent).
	GetAndDelete(ctx context.Context, key string) ([]byte, error)
	// DeleteAll removes keys and returns how many were present; the
	// deletions of one partition are applied atomically. One round trip
	// per node.
	DeleteAll(ctx context.Context, keys []string) (int, error)
	// Increment adds delta to the value of key, which must be a decimal
	// 64-bit integer in canonical form (a missing key counts as 0), stores
	// the result in the same form and returns it; the expiry is kept.
	// ErrNotInteger and ErrOverflow leave the value unchanged.
	Increment(ctx context.Context, key string, delta int64) (int64, error)
	// Append appends suffix to the value of key (a missing key counts as
	// empty) and returns the new length; the expiry is kept.
	Append(ctx context.Context, key string, suffix []byte) (int, error)
	// Expire makes key expire ttl from now if cond allows; a ttl <= 0
	// deletes it. It reports whether it changed anything (false if key is
	// absent or cond failed).
	Expire(ctx context.Context, key string, ttl time.Duration, cond ExpireCond) (bool, error)
	// Persist removes key's expiry; it reports whether key had one.
	Persist(ctx context.Context, key string) (bool, error)
	// TTL returns key's remaining time to live, 0 if it has no expiry,
	// ErrNotFound if it is absent.
	TTL(ctx context.Context, key string) (time.Duration, error)
	// ScanKeys returns one page of the map's keys from a stateless cursor:
	// start with 0, pass each returned cursor back, stop when it is 0. A key
	// present for the whole scan is returned at least once, whatever
	// happens to the map or the cluster in between; count is the amount of
	// work per page (about count keys examined, 10 if <= 0), and match, if
	// not empty, is a Redis glob that returned keys must match. See
	// ScanCursor for the cursor's layout.
	ScanKeys(ctx context.Context, cursor uint64, count int, match string) ([]string, uint64, error)
	// Batch runs ops with one request per owner node (pipelining): ops on
	// the same partition run in order, ops on different partitions may run
	// in parallel. results[i] answers ops[i]; each op fails or succeeds on
	// its own.
	Batch(ctx context.Context, ops []BatchOp) []BatchResult
}

// BatchKind is the operation of a BatchOp.
type BatchKind uint8

// Batch operations.
const (
	BatchGet BatchKind = iota + 1 // Get: Found and Value
	BatchSet                      // Set with SetArgs: Done, Found, and the old Value with ReturnOld
)

// BatchOp is one operation of Map.Batch.
type BatchOp struct {
	Kind  BatchKind
	Key   string
	Value []byte  // BatchSet
	Set   SetArgs // BatchSet
}

// BatchResult is the outcome of one BatchOp.
type BatchResult struct {
	Found bool
	Done  bool
	Value []byte
	Err   error
}

// SetArgs are Set's conditions and effects.
type SetArgs struct {
	// TTL, if positive, makes the entry expire TTL after the write.
	TTL time.Duration
	// KeepTTL keeps the entry's current expiry (TTL must be zero).
	KeepTTL bool
	// IfAbsent writes only if the key is absent (Redis NX).
	IfAbsent bool
	// IfPresent writes only if the key is present (Redis XX).
	IfPresent bool
	// ReturnOld returns the previous value in SetResult.Old (Redis GET).
	ReturnOld bool
}

// SetResult is what Set did and found.
type SetResult struct {
	// Done: the value was written.
	Done bool
	// Found: the key was present before the call.
	Found bool
	// Old is the previous value, with SetArgs.ReturnOld (nil if absent).
	Old []byte
}

// ExpireCond is Expire's condition.
type ExpireCond uint8

// Expire conditions, as Redis EXPIRE's NX, XX, GT and LT.
const (
	ExpireAlways    ExpireCond = 0
	ExpireIfNone    ExpireCond = 1 // only if the key has no expiry
	ExpireIfSet     ExpireCond = 2 // only if the key has an expiry
	ExpireIfGreater ExpireCond = 3 // only if later than the current expiry (none counts as never)
	ExpireIfLess    ExpireCond = 4 // only if sooner than the current expiry (none counts as never)
	// ExpireIfSetAndLess: only if the key has an expiry and the new one is
	// sooner (Redis XX LT).
	ExpireIfSetAndLess ExpireCond = 5
)

// ScanCursor builds a ScanKeys cursor: the partition in the top 16 bits, the
// key position (affinity.ScanPosition) to resume from in the low 48. The
// cursor after the last partition is 0.
func ScanCursor(partition int, position uint64) uint64 {
	return uint64(partition)<<48 | position&(1<<48-1)
}

// SplitScanCursor is the inverse of ScanCursor.
func SplitScanCursor(c uint64) (partition int, position uint64) {
	return int(c >> 48), c & (1<<48 - 1)
}

// ParseInt parses a value the way Redis parses an integer argument or an
// INCR operand: optional '-', then decimal digits without leading zeros
// ("0" itself, but not "-0"), within int64.
func ParseInt(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	if len(b) == 1 && b[0] == '0' {
		return 0, true
	}
	neg := b[0] == '-'
	d := b
	if neg {
		d = b[1:]
	}
	if len(d) == 0 || d[0] < '1' || d[0] > '9' {
		return 0, false
	}
	var u uint64
	for _, c := range d {
		if c < '0' || c > '9' {
			return 0, false
		}
		if u > (math.MaxUint64-9)/10 {
			return 0, false
		}
		u = u*10 + uint64(c-'0')
	}
	if neg {
		if u > 1<<63 {
			return 0, false
		}
		return -int64(u), true
	}
	if u > math.MaxInt64 {
		return 0, false
	}
	return int64(u), true
}

// MemberResult is one member's answer to a broadcast member function.
type MemberResult struct {
	Member string
	Result []byte
	Err    error
}
