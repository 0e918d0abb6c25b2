package main

import (
	"context"
	"fmt"
	"os"
)

// roundOutcome is what a measurement round (compute, journal) reports
// besides its own figures.
type roundOutcome struct {
	Error      string
	Violations []string
	Partitions int
}

// runRound starts a fresh cluster with start, hands body the harness, the
// partition count and a violation recorder, and tears the cluster down,
// keeping the node logs if the round failed or found a violation.
func runRound(ctx context.Context, start func() (*harness, error),
	body func(h *harness, partitions int, violation func(format string, args ...any)) error) (out roundOutcome) {
	h, err := start()
	if h != nil {
		defer func() {
			h.stopAll()
			if out.Error != "" || len(out.Violations) > 0 {
				h.saveLogs()
			}
			os.RemoveAll(h.dir)
		}()
	}
	if err != nil {
		out.Error = err.Error()
		return out
	}
	cv, err := h.latest(ctx)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	out.Partitions = len(cv.Partitions)
	violation := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		h.logf("VIOLATION: %s", msg)
		out.Violations = append(out.Violations, msg)
	}
	if err := body(h, out.Partitions, violation); err != nil {
		out.Error = err.Error()
	}
	return out
}
