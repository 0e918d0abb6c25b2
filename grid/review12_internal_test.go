package grid

import (
	"reflect"
	"testing"
	"time"

	"github.com/collocate/grid/internal/wire"
)

// A replica filled by a snapshot cut after an entry's TTL passed (but
// before the primary's expiry sweep removed it) must journal the same
// event as its primary when the sweep's MutExpire arrives: promoted, it
// would otherwise answer that position without the expired event, a
// silent loss for every listener reading it there.
func TestSnapshotReplicaJournalsTheSameExpiry(t *testing.T) {
	p := newPartition(0, time.Second)
	p.epoch = 1
	p.applyRecord(&wire.Record{LSN: 1, Epoch: 1, Time: 10, Muts: []wire.Mutation{{Kind: wire.MutSet, Map: "m", Key: "k", Value: []byte("v"), ExpireAt: 100}}}, 10)
	chunks := p.snapshot("a", snapshotChunkBytes) // the TTL (100) has passed, the sweep not run yet
	q := newPartition(0, time.Second)
	for i := range chunks {
		if _, err := q.receiveChunk(nil, &chunks[i]); err != nil {
			t.Fatal(err)
		}
	}
	exp := &wire.Record{LSN: 2, Epoch: 1, Time: 210, Muts: []wire.Mutation{{Kind: wire.MutExpire, Map: "m", Key: "k"}}}
	p.applyRecord(exp, 210)
	q.applyRecord(exp, 210)
	pe, qe := p.journal.retained(), q.journal.retained()
	if !reflect.DeepEqual(pe[len(pe)-1].Events, qe[len(qe)-1].Events) {
		t.Fatalf("position 2: primary journals %+v, the snapshot-filled replica %+v", pe[len(pe)-1].Events, qe[len(qe)-1].Events)
	}
	if pd, qd := fmtDigest(p), fmtDigest(q); pd != qd {
		t.Fatalf("digests differ after the expiry: %v vs %v", pd, qd)
	}
}

func fmtDigest(p *partition) [2]uint64 {
	n, s := p.digest()
	return [2]uint64{uint64(n), s}
}
