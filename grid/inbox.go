package grid

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// Exactly-once delivery into a partition (the inbox side of an outbox).
//
// A sender (an event processor's outbox in package process) delivers the
// events of one source in order of their ids (Pos, Index). The receiving
// partition keeps, per source, the id of the last event it applied: its
// inbox watermark, an entry of the internal map inboxMap keyed with the
// partition's tag so that it lives in that partition. A delivery applies
// (publishes its event and moves the watermark, in one record) only if its
// id is above the watermark; otherwise it is a duplicate and applies
// nothing. So a sender may retry a delivery, or a new sender after a
// failover may deliver again from its last committed position, and each
// event still applies once. The watermark is replicated and travels in
// snapshots like any entry; one per (source, receiving partition).

// Internal names of the inbox.
const (
	inboxMap    = ReservedPrefix + "inbox"
	deliverStep = ReservedPrefix + "deliver"
)

// Delivery is one event for stream, at key's partition, from Source with
// id (Pos, Index). A Source's deliveries must be sent in id order.
type Delivery struct {
	_msgpack struct{} `msgpack:",as_array"`
	Source   string
	Pos      uint64
	Index    uint32
	Stream   string
	Key      string
	Value    []byte
}

// Deliver applies d at its partition's primary unless an event of d's
// source with an id at or above d's was applied there before. applied
// reports which. Errors are those of a step (ErrStreamFull when the
// target stream has no room: nothing applied, retry later).
func (n *Node) Deliver(ctx context.Context, d Delivery) (applied bool, err error) {
	if d.Source == "" || d.Stream == "" {
		return false, fmt.Errorf("%w: a delivery needs a source and a stream", api.ErrBadRequest)
	}
	args, err := msgpack.Marshal(&d)
	if err != nil {
		return false, fmt.Errorf("%w: %v", api.ErrBadRequest, err)
	}
	// The partition is named too: the router derives it only from a
	// non-empty key, and the empty key lives in a partition of its own.
	part := int32(affinity.Partition(d.Key, len(n.parts)))
	resp, err := n.router.Step(ctx, &wire.StepRequest{Partition: part, Key: d.Key, Name: deliverStep, Args: args})
	if err != nil {
		return false, err
	}
	return len(resp.Result) == 1 && resp.Result[0] == 1, nil
}

// bindDeliver decodes a delivery into its step.
func (n *Node) bindDeliver(args []byte) (StepFunc, error) {
	var d Delivery
	if err := msgpack.Unmarshal(args, &d); err != nil {
		return nil, fmt.Errorf("%w: delivery: %v", api.ErrBadArgs, err)
	}
	return func(_ context.Context, v *StepView) ([]byte, error) {
		wk := "{" + n.PartitionTag(v.Partition()) + "}" + d.Source
		if cur, ok := v.Get(inboxMap, wk); ok && !idAfter(d.Pos, d.Index, cur) {
			return []byte{0}, v.Err()
		}
		v.Publish(d.Stream, d.Key, d.Value)
		v.Set(inboxMap, wk, encodeID(d.Pos, d.Index), 0)
		return []byte{1}, v.Err()
	}, nil
}

func encodeID(pos uint64, idx uint32) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 12), pos)
	return binary.BigEndian.AppendUint32(b, idx)
}

// idAfter reports whether (pos, idx) comes after the encoded id cur (a
// malformed cur counts as nothing applied yet).
func idAfter(pos uint64, idx uint32, cur []byte) bool {
	if len(cur) != 12 {
		return true
	}
	cp, ci := binary.BigEndian.Uint64(cur), binary.BigEndian.Uint32(cur[8:])
	return pos > cp || (pos == cp && idx > ci)
}
