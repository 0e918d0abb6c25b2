package wire

import "encoding/binary"

// Journal event kinds: what a mutation did to its map entry.
const (
	EventAdded     uint8 = 1 // a key that held nothing was set
	EventUpdated   uint8 = 2 // a key that held a value was set
	EventRemoved   uint8 = 3 // a key was deleted
	EventExpired   uint8 = 4 // a key was deleted because its TTL passed
	EventCleared   uint8 = 5 // the whole map was cleared
	EventPublished uint8 = 6 // an event published to stream Map
)

// JournalEvent is one change of a journal record.
type JournalEvent struct {
	_msgpack struct{} `msgpack:",as_array"`
	Kind     uint8
	Map      string
	Key      string
	Value    []byte // the new value (added, updated)
	Old      []byte // the value it replaced or removed, if any
	ExpireAt int64
}

// JournalRecord is one record of a partition's journal: the changes one
// replicated record made, at position LSN, written by the primary of
// Epoch at Time (unix nanoseconds). Records that changed nothing (a
// delete of a missing key) keep their position with no events.
type JournalRecord struct {
	_msgpack struct{} `msgpack:",as_array"`
	LSN      uint64
	Epoch    uint64
	Time     int64
	Events   []JournalEvent
}

// JournalEntry is a record as a replica retains it in its journal: the
// record as it was replicated (so that it can be sent again to a replica
// catching up) and the events it made.
type JournalEntry struct {
	_msgpack struct{} `msgpack:",as_array"`
	Record   Record
	Events   []JournalEvent
}

// JournalRequest reads journal records from partitions led by the member it
// is sent to (MsgJournal). From[i] is the next position wanted in
// Partitions[i]. Map limits events to one map ("" all; records without
// events of Map are skipped but advance Next). The answer waits up to
// Wait nanoseconds (capped by the member) for a committed record when
// none is there yet.
type JournalRequest struct {
	_msgpack   struct{} `msgpack:",as_array"`
	Version    uint64
	Partitions []int32
	From       []uint64
	Map        string
	Max        int32 // records per partition; 0: the member's default
	Wait       int64
	// Stream: read the events of stream Map instead of the journal.
	Stream bool
	// Group, with Stream: answer the group's committed positions too.
	Group string
}

// JournalPart is one partition's answer: its committed records from the
// position asked (Next is the position to ask next), the oldest retained
// position, or an error (ErrJournalTrimmed names Oldest).
type JournalPart struct {
	_msgpack struct{} `msgpack:",as_array"`
	Records  []JournalRecord
	Next     uint64
	Oldest   uint64
	Epoch    uint64 // the primary's epoch when it answered
	Err      ErrorBody
	// Committed is the Group's committed position (0: none).
	Committed uint64
}

// SnapStream is a piece of one stream of a partition in a snapshot: its
// groups' positions and trim point (first piece) and events.
type SnapStream struct {
	_msgpack struct{} `msgpack:",as_array"`
	Name     string
	Trimmed  uint64
	Groups   []string
	Pos      []uint64
	Events   []JournalEntry
}

// JournalResponse answers a JournalRequest, one part per partition asked.
type JournalResponse struct {
	_msgpack struct{} `msgpack:",as_array"`
	Parts    []JournalPart
}

// EncodePos encodes a stream position as a MutGroup value.
func EncodePos(pos uint64) []byte { return binary.BigEndian.AppendUint64(nil, pos) }

// DecodePos decodes a MutGroup value; ok is false for a malformed one.
func DecodePos(b []byte) (uint64, bool) {
	if len(b) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(b), true
}

// TailProbe asks a replica where its copy of Partition ends, for the
// primary From of Epoch, which may send it the missing records only (a
// tail) instead of a snapshot.
type TailProbe struct {
	_msgpack  struct{} `msgpack:",as_array"`
	Partition int32
	Epoch     uint64
	From      string
}

// TailState answers a TailProbe: the replica's last record (LSN, and the
// epoch of the primary that wrote it) and whether it holds a complete copy.
type TailState struct {
	_msgpack  struct{} `msgpack:",as_array"`
	LSN       uint64
	LastEpoch uint64
	Complete  bool
}

// TailStart tells a replica that the primary From of Epoch sends, on this
// connection, the records after LSN, which must be its last record,
// written at LastEpoch (MsgReplicate frames follow).
type TailStart struct {
	_msgpack  struct{} `msgpack:",as_array"`
	Partition int32
	Epoch     uint64
	From      string
	LSN       uint64
	LastEpoch uint64
}
