package process

import "github.com/prometheus/client_golang/prometheus"

// collector exports the runtime's counters and lags at scrape time, per
// processor, over the partitions this node leads (per partition:
// Runtime.Status and gridnode's GET /v1/processors).
type collector struct{ r *Runtime }

var (
	descHandled   = prometheus.NewDesc("grid_processor_events_total", "Events a processor handled (committed) at this node's partitions.", []string{"processor"}, nil)
	descFailures  = prometheus.NewDesc("grid_processor_failures_total", "Handler failures (errors, panics, budgets) at this node.", []string{"processor"}, nil)
	descParked    = prometheus.NewDesc("grid_processor_dead_letters_total", "Events parked in a processor's dead-letter stream at this node.", []string{"processor"}, nil)
	descGaps      = prometheus.NewDesc("grid_processor_gaps_total", "Gaps past retention a processor skipped (each parked in its dead letters).", []string{"processor"}, nil)
	descLag       = prometheus.NewDesc("grid_processor_lag_events", "Committed events not handled yet, over this node's partitions.", []string{"processor"}, nil)
	descLagAge    = prometheus.NewDesc("grid_processor_lag_seconds", "Age of the oldest event not handled yet, over this node's partitions.", []string{"processor"}, nil)
	descDelivered = prometheus.NewDesc("grid_outbox_delivered_total", "Outbox events this node delivered (applied at their target).", nil, nil)
	descDelivRetr = prometheus.NewDesc("grid_outbox_delivery_retries_total", "Outbox delivery attempts that failed and were retried.", nil, nil)
	descRunErrs   = prometheus.NewDesc("grid_processor_run_errors_total", "Partition runs (processors' and outboxes') that ended on an error and started again after a backoff.", nil, nil)
	descOutLag    = prometheus.NewDesc("grid_outbox_lag_records", "Outbox records (a batch's emitted events each) not yet delivered, over this node's partitions.", nil, nil)
	descOutAge    = prometheus.NewDesc("grid_outbox_lag_seconds", "Age of the oldest outbox record not yet delivered, over this node's partitions.", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHandled, descFailures, descParked, descGaps, descLag, descLagAge, descDelivered, descDelivRetr, descOutLag, descOutAge, descRunErrs} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.r.Status() {
		ch <- prometheus.MustNewConstMetric(descHandled, prometheus.CounterValue, float64(s.Handled), s.Name)
		ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(s.Failures), s.Name)
		ch <- prometheus.MustNewConstMetric(descParked, prometheus.CounterValue, float64(s.Parked), s.Name)
		ch <- prometheus.MustNewConstMetric(descGaps, prometheus.CounterValue, float64(s.Gaps), s.Name)
		ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, float64(s.Lag), s.Name)
		ch <- prometheus.MustNewConstMetric(descLagAge, prometheus.GaugeValue, s.MaxLagAge, s.Name)
	}
	ob := c.r.Outbox()
	ch <- prometheus.MustNewConstMetric(descDelivered, prometheus.CounterValue, float64(ob.Delivered))
	ch <- prometheus.MustNewConstMetric(descDelivRetr, prometheus.CounterValue, float64(ob.Retries))
	ch <- prometheus.MustNewConstMetric(descOutLag, prometheus.GaugeValue, float64(ob.Lag))
	ch <- prometheus.MustNewConstMetric(descRunErrs, prometheus.CounterValue, float64(c.r.stats.runErrors.Load()))
	ch <- prometheus.MustNewConstMetric(descOutAge, prometheus.GaugeValue, ob.MaxLagAge)
}
