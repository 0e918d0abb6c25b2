package wire

import (
	"github.com/collocate/grid/internal/api"
	"github.com/vmihailenco/msgpack/v5"
)

// Message types. Append only: a value never changes meaning.
const (
	MsgMap        uint8 = 1  // MapRequest -> MapResponse
	MsgGetAll     uint8 = 2  // GetAllRequest -> GetAllResponse
	MsgPutAll     uint8 = 3  // PutAllRequest -> PartsResponse
	MsgScan       uint8 = 4  // ScanRequest -> ScanResponse
	MsgSize       uint8 = 5  // SizeRequest -> SizeResponse
	MsgClear      uint8 = 6  // ClearRequest -> PartsResponse
	MsgReplicate  uint8 = 7  // ReplicateRequest -> Ack
	MsgSnapshot   uint8 = 8  // SnapshotChunk -> Ack
	MsgSynced     uint8 = 9  // SyncedReport -> Ack (to the table authority's leader)
	MsgTable      uint8 = 10 // TableRequest -> TableResponse
	MsgPing       uint8 = 11 // Ack -> Ack
	MsgDrain      uint8 = 12 // DrainRequest -> Ack (to the table authority's leader)
	MsgSubscribe  uint8 = 13 // SubscribeRequest -> Ack: push invalidations of a map on this connection
	MsgInvalidate uint8 = 14 // Invalidation, one-way from a node to a subscribed client (id 0, no answer)
	MsgLease      uint8 = 15 // LeaseRequest -> LeaseResponse (to the table authority's leader)
	MsgDeleteAll  uint8 = 16 // DeleteAllRequest -> DeleteAllResponse
	MsgMapBatch   uint8 = 17 // MapBatchRequest -> MapBatchResponse
	MsgActivity   uint8 = 18 // ActivityRequest -> ActivityResponse (a new authority leader asks the voters)
	MsgStep       uint8 = 19 // StepRequest -> StepResponse: run a named function at a partition's primary
	MsgStepParts  uint8 = 20 // StepPartsRequest -> StepPartsResponse: one task per listed partition
	MsgCall       uint8 = 21 // CallRequest -> CallResponse: run a named member function (broadcast)
	MsgJournal    uint8 = 22 // JournalRequest -> JournalResponse: read partitions' journals from positions
	MsgTailProbe  uint8 = 23 // TailProbe -> TailState: where a replica's copy of a partition ends
	MsgTail       uint8 = 24 // TailStart -> Ack: the records after the replica's last follow on this connection
)

// Map operations carried by MapRequest.Op.
const (
	OpGet         uint8 = 1
	OpGetEntry    uint8 = 2
	OpPut         uint8 = 3
	OpPutIfAbsent uint8 = 4
	OpReplace     uint8 = 5
	OpCAS         uint8 = 6
	OpCASVersion  uint8 = 7
	OpDelete      uint8 = 8
	OpSet         uint8 = 9  // Flags: SetIfAbsent, SetIfPresent, SetReturnOld, SetKeepTTL
	OpGetDelete   uint8 = 10 // delete, answering the old value
	OpIncr        uint8 = 11 // add Delta to a decimal integer value; Int is the result
	OpAppend      uint8 = 12 // append Value; Int is the new length
	OpExpire      uint8 = 13 // set the expiry to TTL from now (<= 0 deletes); Flags: ExpireXxx
	OpPersist     uint8 = 14 // remove the expiry
	OpTTL         uint8 = 15 // read the remaining time to live (TTL; 0: none)
	OpPublish     uint8 = 16 // append Value to stream Map at Key's partition; Version is its position
	OpGroupSet    uint8 = 17 // set consumer group Key's committed position of stream Map in Partition to Delta (<= 0 deletes the group there)
	opMax         uint8 = 17
)

// OpSet flags.
const (
	SetIfAbsent  uint8 = 1 << 0 // only if the key is absent (Redis NX)
	SetIfPresent uint8 = 1 << 1 // only if the key is present (Redis XX)
	SetReturnOld uint8 = 1 << 2 // answer the previous value (Redis GET)
	SetKeepTTL   uint8 = 1 << 3 // keep the current expiry (Redis KEEPTTL)
)

// OpExpire conditions (Flags); zero sets unconditionally.
const (
	ExpireIfNone    uint8 = 1 // only if the key has no expiry (Redis NX)
	ExpireIfSet     uint8 = 2 // only if the key has an expiry (Redis XX)
	ExpireIfGreater uint8 = 3 // only if the new expiry is later (Redis GT; none counts as infinite)
	ExpireIfLess    uint8 = 4 // only if the new expiry is sooner (Redis LT)
	ExpireIfSetLess uint8 = 5 // only if the key has an expiry and the new one is sooner (Redis XX LT)
)

// ValidOp reports whether op is a known map operation.
func ValidOp(op uint8) bool { return op >= OpGet && op <= opMax }

// IsMutation reports whether op may change the map.
func IsMutation(op uint8) bool {
	return op >= OpPut && op <= opMax && op != OpTTL
}

// Session identifies a client's mutation for at-most-once application.
// Client 0 means no deduplication. Low is the client's lowest sequence
// number still awaiting an answer: results below it may be forgotten.
type Session struct {
	_msgpack struct{} `msgpack:",as_array"`
	Client   uint64
	Seq      uint64
	Low      uint64
}

// MapRequest is a single-key operation. Version is the sender's table
// version; Partition is the key's partition as the sender computed it.
type MapRequest struct {
	_msgpack        struct{} `msgpack:",as_array"`
	Version         uint64
	Partition       int32
	Op              uint8
	Map             string
	Key             string
	Value           []byte
	Expected        []byte
	ExpectedVersion uint64
	TTL             int64 // nanoseconds; <= 0 means none
	Session         Session
	Flags           uint8 // OpSet and OpExpire options
	Delta           int64 // OpIncr
}

// MapResponse answers a MapRequest. Found: the key was present; Done: the
// (conditional) write happened; Value: the value read, the existing value of
// a failed PutIfAbsent, or the old value of OpSet with SetReturnOld and of
// OpGetDelete; Version: the entry's version; TTL: OpTTL's remaining time to
// live in nanoseconds (0: no expiry); Int: OpIncr's new value, OpAppend's
// new length.
type MapResponse struct {
	_msgpack struct{} `msgpack:",as_array"`
	Found    bool
	Done     bool
	Value    []byte
	Version  uint64
	TTL      int64
	Int      int64
}

// MapBatchRequest carries single-key requests for one node. Requests on
// the same partition run in order; requests on different partitions may run
// in parallel.
type MapBatchRequest struct {
	_msgpack struct{} `msgpack:",as_array"`
	Reqs     []MapRequest
}

// MapBatchResponse answers a MapBatchRequest: Resps[i] and Errs[i] answer
// Reqs[i].
type MapBatchResponse struct {
	_msgpack struct{} `msgpack:",as_array"`
	Resps    []MapResponse
	Errs     []ErrorBody
}

// MaxBatch bounds the requests of one MapBatchRequest.
const MaxBatch = 4096

// ErrorBody is the body of a frame with FlagError.
type ErrorBody struct {
	_msgpack  struct{} `msgpack:",as_array"`
	Code      uint16
	Msg       string
	Partition int32
	Version   uint64
	Owner     string
}

// Err converts e to an error matching the sentinel of its code, or nil.
func (e *ErrorBody) Err() error {
	if e == nil || api.Code(e.Code) == api.CodeOK {
		return nil
	}
	if api.Code(e.Code) == api.CodeNotOwner {
		return &api.NotOwnerError{Partition: int(e.Partition), Version: e.Version, Owner: e.Owner}
	}
	return &api.Error{Code: api.Code(e.Code), Msg: e.Msg}
}

// ErrBody converts err to its wire form. nil gives the zero (OK) body.
func ErrBody(err error) ErrorBody {
	if err == nil {
		return ErrorBody{}
	}
	if ne, ok := err.(*api.NotOwnerError); ok {
		return ErrorBody{Code: uint16(api.CodeNotOwner), Msg: ne.Error(), Partition: int32(ne.Partition), Version: ne.Version, Owner: ne.Owner}
	}
	return ErrorBody{Code: uint16(api.CodeOf(err)), Msg: err.Error()}
}

// GetAllRequest reads many keys grouped by partition: Keys[i] belong to
// Partitions[i].
type GetAllRequest struct {
	_msgpack   struct{} `msgpack:",as_array"`
	Version    uint64
	Map        string
	Partitions []int32
	Keys       [][]string
	// WithVersions asks for every found entry's version (GetAllPart.Versions).
	WithVersions bool
}

// GetAllPart is the answer for one partition of a GetAllRequest.
type GetAllPart struct {
	_msgpack struct{} `msgpack:",as_array"`
	Err      ErrorBody
	Found    []bool
	Values   [][]byte
	Versions []uint64 // with GetAllRequest.WithVersions
}

// GetAllResponse answers a GetAllRequest, one part per requested partition.
type GetAllResponse struct {
	_msgpack struct{} `msgpack:",as_array"`
	Parts    []GetAllPart
}

// PutAllRequest writes many entries; the entries of one partition form one
// atomic replicated record.
type PutAllRequest struct {
	_msgpack   struct{} `msgpack:",as_array"`
	Version    uint64
	Map        string
	Partitions []int32
	Keys       [][]string
	Values     [][][]byte
	TTL        int64
	Session    Session
}

// DeleteAllRequest deletes many keys grouped by partition; the deletions of
// one partition form one atomic replicated record.
type DeleteAllRequest struct {
	_msgpack   struct{} `msgpack:",as_array"`
	Version    uint64
	Map        string
	Partitions []int32
	Keys       [][]string
	Session    Session
}

// DeleteAllResponse answers a DeleteAllRequest: per partition, an error body
// (Code 0: done) and how many of its keys were present.
type DeleteAllResponse struct {
	_msgpack struct{} `msgpack:",as_array"`
	Errs     []ErrorBody
	Counts   []int64
}

// PartsResponse carries one error body per requested partition (Code 0: done).
type PartsResponse struct {
	_msgpack struct{} `msgpack:",as_array"`
	Errs     []ErrorBody
}

// ScanRequest asks a partition's primary for a page of entries. In key
// order (Hashed false): up to Limit entries with keys greater than After.
// In hash order (Hashed true): the entries whose KeyHash is at least From,
// lowest hash first; the page examines about Limit keys and always ends on a
// hash boundary, and keys not matching the glob Match (if not empty) are
// left out of it. KeysOnly leaves Values empty.
type ScanRequest struct {
	_msgpack  struct{} `msgpack:",as_array"`
	Version   uint64
	Map       string
	Partition int32
	After     string
	Limit     int32
	Hashed    bool
	From      uint64
	Match     string
	KeysOnly  bool
}

// ScanResponse is one page of a scan. More reports whether keys remain; in
// hash order, Next is the From of the following page.
type ScanResponse struct {
	_msgpack struct{} `msgpack:",as_array"`
	Keys     []string
	Values   [][]byte
	More     bool
	Next     uint64
}

// SizeRequest counts a map's entries in the listed partitions.
type SizeRequest struct {
	_msgpack   struct{} `msgpack:",as_array"`
	Version    uint64
	Map        string
	Partitions []int32
}

// SizeResponse answers a SizeRequest, one count and error per partition.
type SizeResponse struct {
	_msgpack struct{} `msgpack:",as_array"`
	Counts   []int64
	Errs     []ErrorBody
}

// ClearRequest empties a map in the listed partitions.
type ClearRequest struct {
	_msgpack   struct{} `msgpack:",as_array"`
	Version    uint64
	Map        string
	Partitions []int32
	Session    Session
}

// Mutation kinds.
const (
	MutSet     uint8 = 1
	MutDelete  uint8 = 2
	MutClear   uint8 = 3 // clears Map
	MutExpire  uint8 = 4 // deletes Key because its TTL passed (the primary's expiry)
	MutPublish uint8 = 5 // appends event Value with Key to stream Map
	MutGroup   uint8 = 6 // sets group Key's committed position of stream Map to Value (EncodePos; empty: deletes the group)
)

// Mutation is one change inside a replicated record.
type Mutation struct {
	_msgpack struct{} `msgpack:",as_array"`
	Kind     uint8
	Map      string
	Key      string
	Value    []byte
	ExpireAt int64 // unix nanoseconds; 0 means none
}

// Record is one atomic, replicated change of a partition at position LSN:
// its mutations, and the session result that makes a retry apply once.
type Record struct {
	_msgpack struct{} `msgpack:",as_array"`
	LSN      uint64
	Muts     []Mutation
	Session  Session
	Result   MapResponse
	Epoch    uint64 // the epoch of the primary that wrote it
	Time     int64  // the writing primary's clock, unix nanoseconds
}

// ReplicateRequest ships one record from a partition's primary to a backup.
type ReplicateRequest struct {
	_msgpack  struct{} `msgpack:",as_array"`
	Partition int32
	Epoch     uint64
	Record    Record
	From      string // the sending primary's member name
}

// Ack acknowledges replication up to LSN.
type Ack struct {
	_msgpack struct{} `msgpack:",as_array"`
	LSN      uint64
}

// SnapEntry is one entry of a snapshot.
type SnapEntry struct {
	_msgpack struct{} `msgpack:",as_array"`
	Map      string
	Key      string
	Value    []byte
	Version  uint64
	ExpireAt int64
}

// SnapSession is one client's remembered results in a snapshot.
type SnapSession struct {
	_msgpack struct{} `msgpack:",as_array"`
	Client   uint64
	Low      uint64
	Seqs     []uint64
	Results  []MapResponse
	Seen     int64
	Last     uint64   // LSN of the session's latest result (eviction order)
	NoValue  []uint64 // seqs whose returned value was not kept
	LastTime int64    // the primary's time of that result (eviction guard)
}

// SnapshotChunk carries part of a partition's state at LSN. First resets
// the receiver's copy; Last makes it complete at LSN.
type SnapshotChunk struct {
	_msgpack  struct{} `msgpack:",as_array"`
	Partition int32
	Epoch     uint64
	LSN       uint64
	First     bool
	Last      bool
	Entries   []SnapEntry
	Sessions  []SnapSession
	From      string // the sending primary's member name
	// Journal is a piece of the partition's retained journal, oldest
	// first, every record at or below LSN.
	Journal []JournalEntry
	// Streams are pieces of the partition's streams.
	Streams []SnapStream
}

// SyncedReport tells the authority's leader that Node (incarnation ID)
// holds a complete copy of Partition, fed by its primary at Epoch, under
// table Version. For a partition's Former primary it also means: fenced at
// Epoch.
type SyncedReport struct {
	_msgpack  struct{} `msgpack:",as_array"`
	Partition int32
	Epoch     uint64
	Node      string
	Version   uint64
	ID        string
}

// DrainRequest asks the authority to move every replica off Node before it
// leaves.
type DrainRequest struct {
	_msgpack struct{} `msgpack:",as_array"`
	Node     string
	ID       string // the incarnation (raft id) that drains
}

// SubscribeRequest asks a node to push invalidations of Map's keys, for
// every write its primaries apply, on the requesting connection.
type SubscribeRequest struct {
	_msgpack struct{} `msgpack:",as_array"`
	Map      string
}

// Invalidation names keys of Map that a primary has just written; All means
// every key (a clear).
type Invalidation struct {
	_msgpack struct{} `msgpack:",as_array"`
	Map      string
	Keys     []string
	All      bool
}

// ActivityRequest asks a raft voter when it last heard from, or acted as,
// a leader other than Asker (cluster/activity.go).
type ActivityRequest struct {
	_msgpack struct{} `msgpack:",as_array"`
	Asker    string   // raft id of the new leader
}

// ActivityResponse: Known is false if the voter cannot bound it (it just
// started, or its voter set changed lately); else the activity was at most
// AgoNanos before the voter answered.
type ActivityResponse struct {
	_msgpack struct{} `msgpack:",as_array"`
	Known    bool
	AgoNanos int64
}

// LeaseRequest renews Node's read lease with the authority's leader. ID is
// the incarnation's raft id: a process restarted under the same name must
// not renew its predecessor's lease.
type LeaseRequest struct {
	_msgpack struct{} `msgpack:",as_array"`
	Node     string
	ID       string
}

// LeaseResponse grants a lease of Duration nanoseconds, valid once the
// holder has installed table Version.
type LeaseResponse struct {
	_msgpack struct{} `msgpack:",as_array"`
	Version  uint64
	Duration int64
}

// TableRequest asks for the sender's committed partition table.
type TableRequest struct {
	_msgpack struct{} `msgpack:",as_array"`
	Have     uint64
}

// TableResponse carries a partition table.
type TableResponse struct {
	_msgpack struct{} `msgpack:",as_array"`
	Table    Table
}

// Member is a cluster member as the partition table names it.
type Member struct {
	_msgpack struct{} `msgpack:",as_array"`
	Name     string
	RPC      string
	// ID names the incarnation (raft server id: name plus start time). A
	// process restarted with the same name has a new ID: it never takes
	// the roles of its predecessor.
	ID string
}

// Part is one partition's replica set. Epoch counts primaries: it grows
// whenever the primary changes and fences every older primary. Backups are
// in-sync and synchronous; Pending members are being filled and do not
// count for acknowledgement.
type Part struct {
	_msgpack struct{} `msgpack:",as_array"`
	Primary  string
	Backups  []string
	Pending  []string
	Epoch    uint64
	// Former is the primary a planned move superseded at Epoch. It stays
	// in Backups (so no write commits without its acknowledgement) until
	// the new primary reports it fenced (a SyncedReport for it at Epoch),
	// or, once it failed, until its read lease must have lapsed: until then
	// it may still serve reads under the old epoch.
	Former string
	// Fresh: the primary started this epoch without a copy (bootstrap, or
	// a loss the authority accepted). A replica takes primacy without a
	// complete copy only of a Fresh partition.
	Fresh bool
	// PendingSince is the table version that (last) added each Pending
	// member: a synced report sent under an older table describes an
	// earlier fill of that member and is ignored.
	PendingSince map[string]uint64
	// Since is the table version at which Primary took the partition. The
	// authority's placement moves a member's most recent partitions first
	// when it leads more than its share (after a failover put them there).
	Since uint64
	// Spares are members that left this partition's in-sync copies because
	// they failed (a lapsed lease, or membership's verdict, either possibly
	// false), with the incarnation whose copy was complete then. Seat is
	// the table version that left the last of them out: while it is set
	// the primary commits nothing, so every spare still holds every
	// acknowledged write, and if the primary dies a spare takes over
	// instead of the partition waiting or restarting empty. The authority
	// clears both once the primary renewed its lease bound to Seat or later
	// (cluster/spare.go).
	Spares []Spare
	Seat   uint64
}

// Spare names a spare copy: a member and its incarnation.
type Spare struct {
	_msgpack struct{} `msgpack:",as_array"`
	Name     string
	ID       string
}

// Table is a committed partition table. Version grows with every commit.
type Table struct {
	_msgpack   struct{} `msgpack:",as_array"`
	Version    uint64
	Backups    int
	Members    []Member
	Partitions []Part
}

// Marshal encodes v as msgpack.
func Marshal(v any) ([]byte, error) { return msgpack.Marshal(v) }

// Unmarshal decodes msgpack data into v.
func Unmarshal(data []byte, v any) error { return msgpack.Unmarshal(data, v) }

// StepRequest runs the function Name with Args at the primary of
// Partition (a partition step, grid/step.go). Key, if not empty, must be in
// Partition; Map and Key are handed to the function (ExecuteOnKey). Budget
// bounds the function's run in nanoseconds (0: the member's maximum).
// Session makes the step's writes and result apply once.
type StepRequest struct {
	_msgpack  struct{} `msgpack:",as_array"`
	Version   uint64
	Partition int32
	Map       string
	Key       string
	Name      string
	Args      []byte
	Budget    int64
	Session   Session
}

// StepResponse answers a StepRequest: the function's result, and the
// primary epoch under which it ran (a retry that found the first
// attempt's result answers that result with the current epoch).
type StepResponse struct {
	_msgpack struct{} `msgpack:",as_array"`
	Result   []byte
	Epoch    uint64
}

// StepPartsRequest runs one step of Name per listed partition on the
// node that leads them (ExecuteOnPartitions); Map, if set, is handed to
// every task. One Session for all of them: dedup is per partition.
// Filter, if set, names a predicate (with FilterArgs) that limits the
// entries of Map a task iterates.
type StepPartsRequest struct {
	_msgpack   struct{} `msgpack:",as_array"`
	Version    uint64
	Partitions []int32
	Map        string
	Name       string
	Args       []byte
	Budget     int64
	Session    Session
	Filter     string
	FilterArgs []byte
}

// StepPartsResponse answers a StepPartsRequest: per partition, a result
// and its epoch, or an error body.
type StepPartsResponse struct {
	_msgpack struct{} `msgpack:",as_array"`
	Results  [][]byte
	Epochs   []uint64
	Errs     []ErrorBody
}

// CallRequest runs the member function Name with Args on the receiving
// member, outside any partition (Broadcast). Budget as in StepRequest.
type CallRequest struct {
	_msgpack struct{} `msgpack:",as_array"`
	Name     string
	Args     []byte
	Budget   int64
}

// CallResponse carries a member function's result.
type CallResponse struct {
	_msgpack struct{} `msgpack:",as_array"`
	Result   []byte
}
