package grid

import (
	"errors"
	"time"

	"github.com/collocate/grid/internal/api"
	"github.com/prometheus/client_golang/prometheus"
)

// This file counts named functions per function: calls served at this
// member by result, their latency, and runs that ran again (a conflict
// with a concurrent write, or a move of the partition under the
// function). The function label is a resolved name, or unknownFunction
// for a name no Functions resolved, so that callers cannot grow the
// label set beyond the registered functions.

// unknownFunction labels calls of names that did not resolve.
const unknownFunction = "_unknown"

// Re-run reasons.
const (
	rerunConflict = "conflict" // the step's reads changed under it
	rerunMoved    = "moved"    // the partition moved while it ran: it runs again at the new primary
)

type funcMetrics struct {
	calls   *prometheus.CounterVec   // function, result
	seconds *prometheus.HistogramVec // function
	reruns  *prometheus.CounterVec   // function, reason
}

func newFuncMetrics(reg prometheus.Registerer) *funcMetrics {
	m := &funcMetrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "grid", Name: "function_calls_total",
			Help: "Named function calls served by this member (one per step, partition task or member call), by function and result.",
		}, []string{"function", "result"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "grid", Name: "function_seconds",
			Help:    "Time to serve a function call at this member, waiting for the partition's step, re-runs and replication included.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"function"}),
		reruns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "grid", Name: "function_reruns_total",
			Help: "Function runs whose effects were discarded, by function and reason: conflict (run again here) or moved (the partition moved under it: run again at the new primary).",
		}, []string{"function", "reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.calls, m.seconds, m.reruns)
	}
	return m
}

// observe counts one call of function name (resolved: name is a function
// the member knows) that ended with err.
func (m *funcMetrics) observe(name string, resolved bool, start time.Time, err error) {
	if !resolved {
		name = unknownFunction
	}
	m.calls.WithLabelValues(name, funcResult(err)).Inc()
	m.seconds.WithLabelValues(name).Observe(time.Since(start).Seconds())
}

func (m *funcMetrics) rerun(name, reason string) {
	m.reruns.WithLabelValues(name, reason).Inc()
}

// funcResult is err's result label.
func funcResult(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, api.ErrNotOwner):
		return "not_owner"
	case errors.Is(err, api.ErrNoFunction):
		return "no_function"
	case errors.Is(err, api.ErrBadArgs):
		return "bad_args"
	case errors.Is(err, api.ErrFunctionPanic):
		return "panic"
	case errors.Is(err, api.ErrFunctionBudget):
		return "budget"
	case errors.Is(err, api.ErrFunctionFailed):
		return "failed"
	case errors.Is(err, api.ErrNotCollocated):
		return "not_collocated"
	case errors.Is(err, api.ErrBusy):
		return "busy"
	}
	return "error"
}
