package process

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/api"
	"github.com/vmihailenco/msgpack/v5"
)

// The outbox of a partition: the events its processors emitted, in the
// order they committed. A processor's record publishes one outbox event
// holding everything its batch emitted (an outbox event's position is the
// record's LSN); the partition's deliverer, at its primary, sends each
// emitted event to its target with the id (outbox position, index), and
// the target's inbox applies it once (grid.Deliver). The deliverer's own
// position is a consumer group of the outbox, committed after a batch of
// outbox events was delivered: a new primary delivers again from there,
// and the targets' inboxes drop what they already applied. The group holds
// the outbox's retention, so a processor whose deliveries cannot keep up
// (a target down) gets ErrStreamFull at its commit and waits: backpressure,
// never loss.

// Internal names of the outbox.
const (
	outboxStream = grid.ReservedPrefix + "outbox"
	deliverGroup = grid.ReservedPrefix + "deliver"
)

// outEvent is one emitted event.
type outEvent struct {
	_msgpack struct{} `msgpack:",as_array"`
	Proc     string
	Stream   string
	Key      string
	Value    []byte
}

// outboxKey is the key outbox events of partition part are published with.
func outboxKey(n *grid.Node, part int) string { return "{" + n.PartitionTag(part) + "}" }

// source names partition part's outbox in the targets' inboxes.
func source(part int) string { return "outbox/" + strconv.Itoa(part) }

func encodeOut(evs []outEvent) ([]byte, error) { return msgpack.Marshal(evs) }

// outboxLimit bounds the encoded events of one outbox event: a value the
// node stores, in a stream it keeps.
func (r *Runtime) outboxLimit() int {
	cfg := r.node.Config()
	return min(cfg.MaxValueSize, cfg.StreamBytes) - len(outboxStream) - len(outboxKey(r.node, 0)) - outEventOverhead
}

func decodeOut(b []byte) ([]outEvent, error) {
	var evs []outEvent
	err := msgpack.Unmarshal(b, &evs)
	return evs, err
}

// deliverBatch is how many outbox events one read takes.
const deliverBatch = 64

// deliver runs partition part's deliverer while this node leads it.
func (r *Runtime) deliver(ctx context.Context, part int) {
	src := grid.LocalRead{Name: outboxStream}
	pos, err := r.startPosition(ctx, part, src, outboxStream, deliverGroup)
	if err != nil {
		r.quiet(ctx, part, "outbox position", err)
		return
	}
	for ctx.Err() == nil {
		le, err := r.node.ReadLocal(ctx, grid.LocalRead{Part: part, Name: outboxStream, Group: deliverGroup, From: pos, Max: deliverBatch, Wait: r.cfg.Poll})
		if err != nil {
			r.quiet(ctx, part, "outbox read", err)
			return
		}
		if len(le.Events) == 0 {
			continue
		}
		for _, ev := range le.Events {
			if err := r.deliverOne(ctx, part, ev); err != nil {
				r.quiet(ctx, part, "outbox delivery", err)
				return
			}
		}
		next := le.Events[len(le.Events)-1].Position + 1
		if err := r.commitPosition(ctx, part, outboxStream, deliverGroup, pos, next); err != nil {
			r.quiet(ctx, part, "outbox commit", err)
			return
		}
		pos = next
	}
}

// deliverOne delivers every event of one outbox entry, in order, retrying
// each until its target applied it or had it already. An event no target
// can ever take (bad input) is parked in its processor's dead letters.
func (r *Runtime) deliverOne(ctx context.Context, part int, ev grid.Event) error {
	outs, err := decodeOut(ev.Value)
	if err != nil {
		return r.park(ctx, part, "", ev.Key, ev.Position, ParkedEvent{Kind: ev.Kind, Key: ev.Key, Value: ev.Value}, fmt.Errorf("undecodable outbox entry: %w", err))
	}
	for i, o := range outs {
		d := grid.Delivery{Source: source(part), Pos: ev.Position, Index: uint32(i), Stream: o.Stream, Key: o.Key, Value: o.Value}
		if err := r.deliverRetrying(ctx, part, d); err != nil {
			if !permanent(err) {
				return err
			}
			if err := r.park(ctx, part, o.Proc, ev.Key, ev.Position, ParkedEvent{Kind: grid.EventPublished, Key: o.Key, Value: o.Value}, fmt.Errorf("delivery to stream %q key %q: %w", o.Stream, o.Key, err)); err != nil {
				return err
			}
		}
	}
	return nil
}

// deliverRetrying sends d until it is applied or a duplicate, this node
// stops leading part, or the error is permanent.
func (r *Runtime) deliverRetrying(ctx context.Context, part int, d grid.Delivery) error {
	wait := r.cfg.Backoff
	for {
		applied, err := r.node.Deliver(ctx, d)
		if err == nil {
			if applied {
				r.stats.delivered.Add(1)
			}
			return nil
		}
		if permanent(err) || ctx.Err() != nil {
			return err
		}
		if !r.node.Leads(part) {
			return fmt.Errorf("%w: partition %d moved while delivering its outbox", api.ErrNotOwner, part)
		}
		r.stats.deliveryRetries.Add(1)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, r.cfg.MaxBackoff)
	}
}

// permanent reports errors that no retry cures.
func permanent(err error) bool {
	return errors.Is(err, api.ErrBadRequest) || errors.Is(err, api.ErrValueTooLarge) || errors.Is(err, api.ErrBadArgs)
}
