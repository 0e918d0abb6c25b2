package grid

import (
	"context"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// API types shared with the client SDK.
type (
	// Map is the byte-level map interface, implemented alike by the
	// embedded node and the client SDK.
	Map = api.Map
	// Option modifies a mutation.
	Option = api.Option
	// Entry is a value with its version.
	Entry = api.Entry
	// NotOwnerError says which node owns a partition.
	NotOwnerError = api.NotOwnerError
	// SetArgs are the conditions and effects of Map.Set.
	SetArgs = api.SetArgs
	// SetResult is what Map.Set did and found.
	SetResult = api.SetResult
	// ExpireCond is Map.Expire's condition.
	ExpireCond = api.ExpireCond
	// BatchOp is one operation of Map.Batch.
	BatchOp = api.BatchOp
	// BatchResult is the outcome of one BatchOp.
	BatchResult = api.BatchResult
	// Listener receives a map's committed changes (Node.Listen).
	Listener = api.Listener
	// Event is one committed change of a map entry.
	Event = api.Event
	// EventKind says what an Event did.
	EventKind = api.EventKind
	// TrimmedError says which positions a partition's journal no longer
	// retains.
	TrimmedError = api.TrimmedError
	// StreamEvent is one event of a stream.
	StreamEvent = api.StreamEvent
	// Consumer is a consumer group's reader of a stream.
	Consumer = api.Consumer
)

// Map change kinds.
const (
	EventAdded   = api.EventAdded
	EventUpdated = api.EventUpdated
	EventRemoved = api.EventRemoved
	EventExpired = api.EventExpired
	EventCleared = api.EventCleared
	// EventPublished: an event of a stream (ReadLocal, package process).
	EventPublished = api.EventPublished
)

// Errors; match with errors.Is.
var (
	ErrNotFound      = api.ErrNotFound
	ErrNotOwner      = api.ErrNotOwner
	ErrTimeout       = api.ErrTimeout
	ErrUnavailable   = api.ErrUnavailable
	ErrBadRequest    = api.ErrBadRequest
	ErrReplication   = api.ErrReplication
	ErrStaleSequence = api.ErrStaleSequence
	ErrClosed        = api.ErrClosed
	ErrNotInteger    = api.ErrNotInteger
	ErrOverflow      = api.ErrOverflow
	ErrValueTooLarge = api.ErrValueTooLarge
	ErrBusy          = api.ErrBusy
	// Function errors (package compute); nothing was applied.
	ErrNoFunction     = api.ErrNoFunction
	ErrBadArgs        = api.ErrBadArgs
	ErrFunctionPanic  = api.ErrFunctionPanic
	ErrFunctionBudget = api.ErrFunctionBudget
	ErrFunctionFailed = api.ErrFunctionFailed
	ErrNotCollocated  = api.ErrNotCollocated
	// Journal errors.
	ErrJournalTrimmed = api.ErrJournalTrimmed
	ErrStreamFull     = api.ErrStreamFull
)

// Expire conditions (Redis EXPIRE's NX, XX, GT and LT).
const (
	ExpireAlways    = api.ExpireAlways
	ExpireIfNone    = api.ExpireIfNone
	ExpireIfSet     = api.ExpireIfSet
	ExpireIfGreater = api.ExpireIfGreater
	ExpireIfLess    = api.ExpireIfLess
	// Batch operations.
	BatchGet = api.BatchGet
	BatchSet = api.BatchSet
	// ExpireIfSetAndLess is Redis's XX LT.
	ExpireIfSetAndLess = api.ExpireIfSetAndLess
)

// WithTTL makes an entry expire ttl after the write.
func WithTTL(ttl time.Duration) Option { return api.WithTTL(ttl) }

// Map returns the byte-level map named name. Maps need no creation.
func (n *Node) Map(name string) Map { return n.router.Map(name) }

// Listen delivers the committed changes of l.Map (every map if "") to l's
// handlers, in each partition's order, until ctx ends or a handler fails
// (api.Listener says how positions resume).
func (n *Node) Listen(ctx context.Context, l *Listener) error { return n.router.Listen(ctx, l) }

// JournalEnds returns every partition's position after its last committed
// record: as a Listener's Positions, it hears exactly the changes
// committed after this call.
func (n *Node) JournalEnds(ctx context.Context) ([]uint64, error) { return n.router.JournalEnds(ctx) }

// exec adapts the node's request handlers to router.Executor.
type exec struct{ n *Node }

func (e exec) ExecMap(ctx context.Context, req *wire.MapRequest) (wire.MapResponse, error) {
	return e.n.execMap(ctx, req)
}
func (e exec) ExecGetAll(ctx context.Context, req *wire.GetAllRequest) (*wire.GetAllResponse, error) {
	return e.n.execGetAll(ctx, req)
}
func (e exec) ExecPutAll(ctx context.Context, req *wire.PutAllRequest) (*wire.PartsResponse, error) {
	return e.n.execPutAll(ctx, req)
}
func (e exec) ExecScan(ctx context.Context, req *wire.ScanRequest) (*wire.ScanResponse, error) {
	return e.n.execScan(ctx, req)
}
func (e exec) ExecSize(ctx context.Context, req *wire.SizeRequest) (*wire.SizeResponse, error) {
	return e.n.execSize(ctx, req)
}
func (e exec) ExecMapBatch(ctx context.Context, req *wire.MapBatchRequest) (*wire.MapBatchResponse, error) {
	return e.n.execMapBatch(ctx, req)
}
func (e exec) ExecDeleteAll(ctx context.Context, req *wire.DeleteAllRequest) (*wire.DeleteAllResponse, error) {
	return e.n.execDeleteAll(ctx, req)
}
func (e exec) ExecStep(ctx context.Context, req *wire.StepRequest) (wire.StepResponse, error) {
	return e.n.execStep(ctx, req)
}
func (e exec) ExecStepParts(ctx context.Context, req *wire.StepPartsRequest) (*wire.StepPartsResponse, error) {
	return e.n.execStepParts(ctx, req)
}
func (e exec) ExecCall(ctx context.Context, req *wire.CallRequest) (*wire.CallResponse, error) {
	return e.n.execCall(ctx, req)
}
func (e exec) ExecJournal(ctx context.Context, req *wire.JournalRequest) (*wire.JournalResponse, error) {
	return e.n.execJournal(ctx, req)
}
func (e exec) ExecClear(ctx context.Context, req *wire.ClearRequest) (*wire.PartsResponse, error) {
	return e.n.execClear(ctx, req)
}

// pullTable asks the authority's leader for its table when ours is older
// than version, then waits briefly for it to be installed.
func (n *Node) pullTable(ctx context.Context, version uint64) {
	if version == 0 {
		return // tables reach members through raft; nothing to force
	}
	if leader := n.cluster.Leader(); leader != "" && leader != n.RPCAddr() {
		if conn, err := n.pool.Get(ctx, leader); err == nil {
			var resp wire.TableResponse
			if err := conn.Call(ctx, wire.MsgTable, &wire.TableRequest{}, &resp); err == nil {
				n.offerTable(&resp.Table)
			}
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_ = n.waitVersion(wctx, version)
	cancel()
}

// Typed is a typed view of a Map (see NewTyped).
type Typed[K comparable, V any] = api.Typed[K, V]

// Codec turns values into bytes and back.
type Codec[T any] = api.Codec[T]

// NewTyped returns a typed view of m whose values are msgpack-encoded.
func NewTyped[K comparable, V any](m Map) *Typed[K, V] { return api.NewTyped[K, V](m) }

// NewTypedCodec returns a typed view of m with a value codec of your own.
func NewTypedCodec[K comparable, V any](m Map, codec Codec[V]) *Typed[K, V] {
	return api.NewTypedCodec[K, V](m, codec)
}

// Publish appends event to stream at key's partition (ordered within the
// partition, replicated like any write) and returns its position there.
// When the stream's retention there is full of events a consumer group has
// not committed, it fails with ErrStreamFull and applies nothing.
func (n *Node) Publish(ctx context.Context, stream, key string, event []byte) (uint64, error) {
	return n.router.Publish(ctx, stream, key, event)
}

// ReadStream returns up to max (0: a default) committed events of stream
// in partition part from position from, and the position to read next. A
// position older than the partition retains fails with a *TrimmedError
// naming the oldest.
func (n *Node) ReadStream(ctx context.Context, stream string, part int, from uint64, max int) ([]StreamEvent, uint64, error) {
	return n.router.ReadStream(ctx, stream, part, from, max)
}

// Consume runs consumer group con.Group on con.Stream until ctx ends or
// con.Handle fails, with at-least-once delivery and positions committed in
// the grid (api.Consumer).
func (n *Node) Consume(ctx context.Context, con *Consumer) error { return n.router.Consume(ctx, con) }

// DeleteGroup removes a consumer group from every partition of stream, so
// that it no longer holds back the stream's retention.
func (n *Node) DeleteGroup(ctx context.Context, stream, group string) error {
	return n.router.DeleteGroup(ctx, stream, group)
}
