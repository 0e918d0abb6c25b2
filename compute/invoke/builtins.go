package invoke

// Built-in function names (registered by compute.RegisterBuiltins on every
// gridnode).
const (
	// FnCounterAdd adds CounterArgs.Delta to the decimal integer at the
	// key (absent: 0; the format of Map.Increment and Redis INCR), keeping
	// its TTL; answers the new value (int64).
	FnCounterAdd = "counter.add"
	// FnCAS replaces the key's value if it equals CASArgs.Expected (or is
	// absent, with CASArgs.Absent); answers CASResult.
	FnCAS = "cas"
	// FnListAppend appends AppendArgs.Values to the list at the key (a
	// msgpack array of byte strings); answers the new length (int).
	FnListAppend = "list.append"
	// FnAggMap is a partition task (ExecuteOnPartitions with
	// PartsOptions.Map): the Agg of the map's numeric values in the
	// partition. See Aggregate.
	FnAggMap = "agg.map"
	// FnAggKey runs at a key (ExecuteOnKey): the Agg of the numeric
	// values of AggArgs.Map (default: the call's map) whose keys are
	// collocated with the key (same affinity key). See AggregateKey.
	FnAggKey = "agg.key"
	// FnEcho is a member function answering its arguments ([]byte).
	FnEcho = "echo"

	// FilterKeyPrefix is a filter (PartsOptions.Filter): keys starting
	// with its argument (a msgpack string).
	FilterKeyPrefix = "key.prefix"
	// FilterKeyGlob is a filter: keys matching its argument, a
	// path.Match pattern (a msgpack string; '*' does not match '/').
	FilterKeyGlob = "key.glob"
)

// CounterArgs are FnCounterAdd's arguments.
type CounterArgs struct {
	Delta int64 `msgpack:"delta"`
}

// CASArgs are FnCAS's arguments. Delete deletes instead of writing Value.
type CASArgs struct {
	Expected []byte `msgpack:"expected"`
	Absent   bool   `msgpack:"absent"`
	Value    []byte `msgpack:"value"`
	Delete   bool   `msgpack:"delete"`
}

// CASResult is FnCAS's answer: Done if it wrote; the value found.
type CASResult struct {
	Done    bool   `msgpack:"done"`
	Found   bool   `msgpack:"found"`
	Current []byte `msgpack:"current"`
}

// AppendArgs are FnListAppend's arguments.
type AppendArgs struct {
	Values [][]byte `msgpack:"values"`
}

// AggArgs are FnAggKey's (and FnAggMap's) arguments: Map overrides the
// call's map; Msgpack says the values are msgpack numbers, not decimal
// text.
type AggArgs struct {
	Map     string `msgpack:"map"`
	Msgpack bool   `msgpack:"msgpack"`
}
