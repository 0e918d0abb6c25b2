package api

import "time"

// EventKind says what a map change did to its entry.
type EventKind uint8

// Map change kinds (the same values as the wire's).
const (
	EventAdded   EventKind = 1 // a key that held nothing was set
	EventUpdated EventKind = 2 // a key that held a value was set
	EventRemoved EventKind = 3 // a key was deleted
	EventExpired EventKind = 4 // a key was deleted because its TTL passed
	EventCleared EventKind = 5 // the whole map was cleared (Key is empty)
	// EventPublished is an event published to a stream (local reads of
	// streams, package process).
	EventPublished EventKind = 6
)

func (k EventKind) String() string {
	switch k {
	case EventAdded:
		return "added"
	case EventUpdated:
		return "updated"
	case EventRemoved:
		return "removed"
	case EventExpired:
		return "expired"
	case EventCleared:
		return "cleared"
	case EventPublished:
		return "published"
	}
	return "unknown"
}

// Event is one committed change of a map entry, read from its partition's
// journal. Position is the partition's position of the record that made
// it: the same on every replica, so it survives failover. Events of one
// record (a PutAll's share of a partition, a function's writes) share a
// position.
type Event struct {
	Partition int
	Position  uint64
	Kind      EventKind
	Map       string
	Key       string
	Value     []byte    // the new value (added, updated)
	Old       []byte    // the value replaced or removed, when the journal kept it
	ExpireAt  time.Time // the new value's expiry; zero: none
	Time      time.Time // when the primary committed the record
}

// Listener receives the committed changes of a map (or of every map) in
// each partition's order, from its Positions, through failovers and
// reconnections: no gap and no duplicate while the journal retains the
// positions (Config.JournalRecords and JournalBytes per partition).
type Listener struct {
	// Map is the map listened to; "" listens to every map.
	Map string
	// Positions holds the next position wanted per partition (length: the
	// cluster's partition count). nil starts at the current end of every
	// partition. Listen advances it past every record whose events
	// OnEvent accepted; after Listen returns, calling it again with the
	// same Listener resumes where it stopped. Read it only while Listen
	// is not running.
	Positions []uint64
	// OnEvent handles one event. Calls are serialized. An error ends
	// Listen with that error; the event's record is delivered again on
	// resume (every event of it, from the first).
	OnEvent func(Event) error
	// OnGap, if set, is told that a partition's events from Asked to
	// Oldest are no longer retained, and listening goes on at Oldest. nil:
	// Listen returns the *TrimmedError and Positions stay before the gap.
	OnGap func(*TrimmedError) error
}

// StreamEvent is one event of a stream, at its position in its
// partition (the position of the record that published it: positions of
// one stream are increasing, not consecutive).
type StreamEvent struct {
	Stream    string
	Partition int
	Position  uint64
	Key       string
	Value     []byte
	Time      time.Time // when the primary committed it
}

// Consumer is a consumer group's reader of a stream (Consume).
type Consumer struct {
	Stream string
	Group  string
	// Handle handles one event. Calls are serialized, each partition's
	// events in order. An error ends Consume with it; the events handled
	// since the group's last commit (in that partition, at most one
	// batch) come again at the next Consume.
	Handle func(StreamEvent) error
	// Partitions limits the partitions this consumer reads (nil: all).
	// Several consumers of one group must split the partitions between
	// them: the grid does not assign them.
	Partitions []int
}
