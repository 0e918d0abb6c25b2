// Package compute runs code next to the data: functions registered by name
// on every member (Registry), run at a key's primary with access to every
// collocated entry (ExecuteOnKey, entry processors), once per partition at
// its primary with the partial results reduced at the caller
// (ExecuteOnPartitions, MapReduce), or on every member (Broadcast).
//
// It builds on grid's partition step (ARCHITECTURE.md, "Partition steps"):
// a function's writes and result commit as one replicated record,
// remembered under the caller's (clientID, seq), so a call retried after a
// failover or a move applies once and answers its first result. Only the
// writes are replicated: functions need not be deterministic.
//
// Arguments and results are msgpack. Errors match the sentinels of
// package grid with errors.Is, also across the wire: ErrNoFunction,
// ErrBadArgs, ErrFunctionPanic, ErrFunctionBudget, ErrFunctionFailed,
// ErrNotCollocated (nothing applied in each case), ErrTimeout (outcome
// unknown), ErrBusy (nothing applied, retry).
//
// The caller's side (the Executor interface, typed Call, MapReduce,
// BroadcastTo, Aggregate, the built-ins' names and arguments) lives in the
// leaf package compute/invoke, re-exported here: a program that only runs
// a client (client.Client is an Executor) imports invoke and links no
// grid, serf or raft.
//
// compute may import grid and affinity; grid never imports it. There is no
// package-level mutable state: a Registry belongs to whoever created it,
// and N nodes in one process may share one or have their own.
package compute
