// Package process runs event processors next to the data, with
// exactly-once effects inside the grid.
//
// A processor is bound to a stream. At every partition's primary one run
// of it reads the partition's committed events after its position and
// handles them in order; a batch of events is handled in ONE partition
// step (grid.StepAt) whose single replicated record carries:
//
//   - the handler's writes to the partition's maps (its state),
//   - the processor's new position (a consumer group of the stream),
//   - one outbox event with everything the batch emitted (Context.Emit).
//
// The step commits only if the position is still the one the batch
// started from, so a batch applies at most once; a promoted backup holds
// the same record or none of it, and its run starts after the last
// committed batch. So inside the grid every event's effects apply exactly
// once through SIGKILLs of any node. A partition's outbox deliverer sends
// each emitted event to its target partition with the id (outbox
// position, index); the target applies an id only once (grid.Deliver's
// inbox watermark), however often delivery is retried, by whichever
// primary.
//
// Effects outside the grid (an HTTP call, an email) happen inside the
// handler and may happen more than once: at-least-once, with
// Context.IdempotencyKey() the same for every attempt at one event.
//
// A handler error or panic is retried with backoff (Processor.MaxAttempts);
// then the event is parked in the dead-letter stream Name+".dlq" together
// with the new position, and the processor goes on. Pause, Resume and
// Replay are operations; Status and the Prometheus metrics report lag.
//
// Every member of the grid must register the same processors.
package process
