// Package compute will run code next to the data: functions registered by
// name on every node, ExecuteOnKey at a key's primary, ExecuteOnPartitions
// and map-reduce fanned out per partition (re-run on the new owner if
// ownership moves), entry processors whose result (not the function) is
// replicated, and event processors with exactly-once handling built on the
// per-partition journal and atomic replicated batches of package grid.
//
// Not built yet: this package holds no code until its issue is taken. It
// may import grid and affinity; grid never imports it.
package compute
