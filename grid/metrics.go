package grid

import (
	"context"
	"errors"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// Request operations as metric labels.
const (
	opGet = iota
	opPut
	opPutIfAbsent
	opReplace
	opCAS
	opDelete
	opGetAll
	opPutAll
	opScan
	opSize
	opClear
	opSet
	opIncr
	opAppend
	opExpire
	opTTL
	opDeleteAll
	opStep
	opStepParts
	opCall
	numOps
)

var opNames = [numOps]string{"get", "put", "put_if_absent", "replace", "cas", "delete", "get_all", "put_all", "scan", "size", "clear",
	"set", "incr", "append", "expire", "ttl", "delete_all", "step", "step_parts", "call"}

// Results as metric labels.
const (
	resOK = iota
	resNotFound
	resNotOwner
	resError
	numResults
)

var resultNames = [numResults]string{"ok", "not_found", "not_owner", "error"}

// metrics are the node's Prometheus series. Counters are resolved once, so
// counting a request is two atomic adds and a histogram observation.
type metrics struct {
	requests [numOps][numResults]prometheus.Counter
	latency  [numOps]prometheus.Observer
	// replays counts mutations answered from the result remembered for
	// their (client, seq): retries of a mutation applied before.
	replays prometheus.Counter
}

func newMetrics(n *Node, reg prometheus.Registerer) *metrics {
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "grid", Name: "requests_total",
		Help: "Requests served by partition primaries on this node, by operation and result.",
	}, []string{"op", "result"})
	lat := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "grid", Name: "request_seconds",
		Help:    "Time to serve a request at the primary, replication included.",
		Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"op"})
	replays := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "grid", Name: "dedup_replays_total",
		Help: "Mutations answered from the result remembered for their (client, seq) instead of being applied again: retries of a mutation that was applied before.",
	})
	m := &metrics{replays: replays}
	for o := range numOps {
		for r := range numResults {
			m.requests[o][r] = reqs.WithLabelValues(opNames[o], resultNames[r])
		}
		m.latency[o] = lat.WithLabelValues(opNames[o])
	}
	if reg != nil {
		reg.MustRegister(reqs, lat, replays, &collector{n: n})
	}
	return m
}

func (m *metrics) observe(op int, start time.Time, found bool, err error) {
	res := resOK
	switch {
	case errors.Is(err, api.ErrNotOwner):
		res = resNotOwner
	case err != nil:
		res = resError
	case !found:
		res = resNotFound
	}
	m.requests[op][res].Inc()
	m.latency[op].Observe(time.Since(start).Seconds())
}

// observed runs a whole-batch request handler and counts it as op.
func observed[Req, Resp any](n *Node, op int, ctx context.Context, req Req, f func(context.Context, Req) (Resp, error)) (Resp, error) {
	start := time.Now()
	resp, err := f(ctx, req)
	n.metrics.observe(op, start, true, err)
	return resp, err
}

func opIndex(op uint8) int {
	switch op {
	case 1, 2:
		return opGet
	case 3:
		return opPut
	case 4:
		return opPutIfAbsent
	case 5:
		return opReplace
	case 6, 7:
		return opCAS
	case wire.OpDelete, wire.OpGetDelete:
		return opDelete
	case wire.OpSet:
		return opSet
	case wire.OpIncr:
		return opIncr
	case wire.OpAppend:
		return opAppend
	case wire.OpExpire, wire.OpPersist:
		return opExpire
	case wire.OpTTL:
		return opTTL
	}
	return opGet
}

var (
	descPartitions = prometheus.NewDesc("grid_partitions", "Partitions this node holds, by role.", []string{"role"}, nil)
	descEntries    = prometheus.NewDesc("grid_map_entries", "Entries of each map in the partitions this node leads.", []string{"map"}, nil)
	descBytes      = prometheus.NewDesc("grid_map_bytes", "Key and value bytes of each map in the partitions this node leads.", []string{"map"}, nil)
	descMigrations = prometheus.NewDesc("grid_migrations_in_flight", "Replicas this node is filling (snapshot sent, not yet in sync).", nil, nil)
	descLag        = prometheus.NewDesc("grid_replication_lag_records", "Records written by this node's primaries not yet acknowledged by their replicas.", nil, nil)
	descTable      = prometheus.NewDesc("grid_table_version", "Version of the installed partition table.", nil, nil)
	descJournal    = prometheus.NewDesc("grid_journal_records", "Records retained in the journals of the partitions this node holds (any role).", nil, nil)
	descJournalB   = prometheus.NewDesc("grid_journal_bytes", "Bytes retained in the journals of the partitions this node holds (any role).", nil, nil)
	descStreamEv   = prometheus.NewDesc("grid_stream_events", "Stream events retained in the partitions this node holds (any role).", nil, nil)
	descFills      = prometheus.NewDesc("grid_fills_total", "Replica fills by kind (snapshot or tail) and direction (sent as primary, received as replica); over_copy: snapshots received that replaced a copy this node held.", []string{"kind", "direction"}, nil)
)

// collector computes the gauges at scrape time from per-partition counters.
type collector struct{ n *Node }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPartitions, descEntries, descBytes, descMigrations, descLag, descTable, descJournal, descJournalB, descStreamEv, descFills} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	var primaries, backups, migrations, lag, jrecs, jbytes, sevents float64
	entries := map[string]float64{}
	bytes := map[string]float64{}
	for _, p := range c.n.parts {
		p.mu.Lock()
		jrecs += float64(p.journal.len())
		jbytes += float64(p.journal.bytes)
		for _, s := range p.logs {
			sevents += float64(s.events.len())
		}
		switch p.role {
		case rolePrimary:
			primaries++
			for m, st := range p.stats {
				entries[m] += float64(st.entries)
				bytes[m] += float64(st.bytes)
			}
			for _, s := range p.streams {
				if !s.inSync && !s.filled {
					migrations++
				}
				// Only this term's records: a replica that acknowledged
				// nothing yet is not 2^40 positions behind a Fresh history.
				if from := max(s.acked, p.ready); from < p.lsn {
					lag += float64(p.lsn - from)
				}
			}
		case roleBackup:
			backups++
		}
		p.mu.Unlock()
	}
	ch <- prometheus.MustNewConstMetric(descPartitions, prometheus.GaugeValue, primaries, "primary")
	ch <- prometheus.MustNewConstMetric(descPartitions, prometheus.GaugeValue, backups, "backup")
	for m, v := range entries {
		ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, v, m)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.GaugeValue, bytes[m], m)
	}
	ch <- prometheus.MustNewConstMetric(descMigrations, prometheus.GaugeValue, migrations)
	ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, lag)
	var version float64
	if t := c.n.table.Load(); t != nil {
		version = float64(t.Version)
	}
	ch <- prometheus.MustNewConstMetric(descTable, prometheus.GaugeValue, version)
	ch <- prometheus.MustNewConstMetric(descJournal, prometheus.GaugeValue, jrecs)
	ch <- prometheus.MustNewConstMetric(descJournalB, prometheus.GaugeValue, jbytes)
	ch <- prometheus.MustNewConstMetric(descStreamEv, prometheus.GaugeValue, sevents)
	n := c.n
	for _, f := range []struct {
		kind, dir string
		v         int64
	}{
		{"snapshot", "sent", n.snapshotsSent.Load()}, {"tail", "sent", n.tailsSent.Load()},
		{"snapshot", "received", n.snapshotsIn.Load()}, {"tail", "received", n.tailsIn.Load()},
		{"over_copy", "received", n.snapshotsOver.Load()},
	} {
		ch <- prometheus.MustNewConstMetric(descFills, prometheus.CounterValue, float64(f.v), f.kind, f.dir)
	}
}
