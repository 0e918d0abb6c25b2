package grid

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The replication lag counts the records a primary wrote that a replica
// has not acknowledged: a replica that acknowledged nothing yet (a fill
// under way) lacks the records of this history, not the 2^40 positions
// below its start.
func TestReplicationLagOfAFreshHistoryCountsItsRecords(t *testing.T) {
	p := newPartition(0, time.Second)
	n := bareNode()
	n.parts = []*partition{p}
	if !n.becomePrimary(p, wire.Part{Primary: "me", Epoch: 1, Fresh: true}) {
		t.Fatal("a Fresh partition refused primacy")
	}
	for i := range 3 {
		p.applyRecord(&wire.Record{LSN: p.lsn + 1, Epoch: 1, Time: 1, Muts: []wire.Mutation{{Kind: wire.MutSet, Map: "m", Key: fmt.Sprint(i), Value: []byte("v")}}}, 1)
	}
	p.streams["b"] = &stream{node: "b", broken: true}
	if got := lagOf(t, n); got != 3 {
		t.Fatalf("grid_replication_lag_records %v, want 3 (the records written)", got)
	}
}

func lagOf(t *testing.T, n *Node) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 64)
	(&collector{n}).Collect(ch)
	close(ch)
	for m := range ch {
		if m.Desc() != descLag {
			continue
		}
		var out dto.Metric
		if err := m.Write(&out); err != nil {
			t.Fatal(err)
		}
		return out.GetGauge().GetValue()
	}
	t.Fatal("no lag metric")
	return 0
}

// A Fresh partition's primary may still hold a complete copy that is not
// the lost history's end (a copy kept past its replica's move, a pending
// replica's): its history diverges from the lost one right after that
// copy's end, so a reader holding a position of the lost history must be
// told the gap there too, not read the new history from it.
func TestFreshPrimaryWithAStaleCopyStartsANewHistory(t *testing.T) {
	p := newPartition(0, time.Second)
	n := bareNode()
	n.parts = []*partition{p}
	write := func(epoch uint64, count int, prefix string) {
		for i := range count {
			p.applyRecord(&wire.Record{LSN: p.lsn + 1, Epoch: epoch, Time: 1, Muts: []wire.Mutation{{Kind: wire.MutSet, Map: "m", Key: "k", Value: []byte(fmt.Sprint(prefix, i))}}}, 1)
		}
		p.commit = p.lsn
	}
	if !n.becomePrimary(p, wire.Part{Primary: "me", Epoch: 1, Fresh: true}) {
		t.Fatal("a Fresh partition refused primacy")
	}
	write(1, 50, "old") // this node's copy ends here (it then lost the partition, keeping the copy)
	p.role = roleNone
	listenerAt := p.lsn + 40 // the lost history went on elsewhere; a listener heard 39 more records

	// Every copy the authority knew of is lost; it restarts the partition
	// Fresh at this node, which still holds its complete, older copy.
	if !n.becomePrimary(p, wire.Part{Primary: "me", Epoch: 5, Fresh: true}) {
		t.Fatal("a Fresh partition refused primacy")
	}
	write(5, 120, "new")
	budget := 1 << 20
	var out wire.JournalPart
	err := p.readJournal(listenerAt, "", 100, &budget, &out)
	if !errors.Is(err, api.ErrJournalTrimmed) {
		t.Fatalf("a position of the lost history: %v, %d records from %d", err, len(out.Records), listenerAt)
	}
}
