package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// procClient talks to every member's processor endpoints (gridnode's
// /v1/processors): status, pause and resume.
type procClient struct {
	hc    *http.Client
	addrs []string
}

func newProcClient(addrs []string) *procClient {
	return &procClient{hc: &http.Client{Timeout: 10 * time.Second}, addrs: addrs}
}

// procStatus is what GET /v1/processors reports of one processor on one
// member (the fields the benchmark reads).
type procStatus struct {
	Name       string  `json:"name"`
	Paused     bool    `json:"paused"`
	Handled    int64   `json:"handled"`
	Failures   int64   `json:"failures"`
	Parked     int64   `json:"dead_letters"`
	Lag        int64   `json:"lag"`
	MaxLagAge  float64 `json:"max_lag_seconds"`
	Partitions []struct {
		Partition int    `json:"partition"`
		Position  uint64 `json:"position"`
	} `json:"partitions"`
}

// procTotals sums the members' status per processor.
type procTotals struct {
	handled, lag map[string]int64
	members      map[string]int // members that run it
	paused       map[string]int // members that see it paused
	failures     int64
	parked       int64
	maxLagAge    float64
}

func newProcTotals() procTotals {
	return procTotals{handled: map[string]int64{}, lag: map[string]int64{}, members: map[string]int{}, paused: map[string]int{}}
}

func (t *procTotals) add(node []procStatus) {
	for _, s := range node {
		t.handled[s.Name] += s.Handled
		t.lag[s.Name] += s.Lag
		t.members[s.Name]++
		if s.Paused {
			t.paused[s.Name]++
		}
		t.failures += s.Failures
		t.parked += s.Parked
		t.maxLagAge = max(t.maxLagAge, s.MaxLagAge)
	}
}

// has reports whether every one of members runs every processor of procs.
func (t *procTotals) has(procs []string, members int) error {
	for _, p := range procs {
		if t.members[p] != members {
			return fmt.Errorf("processor %s runs on %d of %d members: %w", p, t.members[p], members, errProcessors)
		}
	}
	return nil
}

// caughtUp reports whether no member reports lag for any of stages.
func (t *procTotals) caughtUp(stages []string) bool {
	for _, s := range stages {
		if t.lag[s] != 0 {
			return false
		}
	}
	return true
}

// status fetches one member's status.
func (c *procClient) status(ctx context.Context, addr string) ([]procStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/processors", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("GET %s/v1/processors: %s: %s", addr, resp.Status, strings.TrimSpace(string(b)))
	}
	var out []procStatus
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("GET %s/v1/processors: %w", addr, err)
	}
	return out, nil
}

// poll fetches every member's status at once, calls seen with each
// member's answer and the time it arrived, and returns the totals.
func (c *procClient) poll(ctx context.Context, seen func([]procStatus, time.Time)) (procTotals, error) {
	type answer struct {
		st  []procStatus
		at  time.Time
		err error
	}
	answers := make([]answer, len(c.addrs))
	var wg sync.WaitGroup
	for i, a := range c.addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := c.status(ctx, a)
			answers[i] = answer{st, time.Now(), err}
		}()
	}
	wg.Wait()
	tot := newProcTotals()
	for _, a := range answers {
		if a.err != nil {
			return tot, a.err
		}
		if seen != nil {
			seen(a.st, a.at)
		}
		tot.add(a.st)
	}
	return tot, nil
}

func (c *procClient) totals(ctx context.Context) (procTotals, error) { return c.poll(ctx, nil) }

// setPaused pauses or resumes processor name on every member at once
// (each member takes the flag at once; one would be enough, the others
// would see it within a poll of theirs).
func (c *procClient) setPaused(ctx context.Context, name string, paused bool) error {
	op := "resume"
	if paused {
		op = "pause"
	}
	errs := make([]error, len(c.addrs))
	var wg sync.WaitGroup
	for i, a := range c.addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.post(ctx, "http://"+a+"/v1/processors/"+name+"/"+op)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c *procClient) post(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	return nil
}

// pauseSettle is how long a paused processor may still handle a batch
// after every member reports the pause: a partition's run looks at the
// flag between reads, and a read waits up to the runtime's poll (250 ms
// by default).
const pauseSettle = time.Second

// waitPaused waits until every member reports name paused, then for
// pauseSettle.
func (c *procClient) waitPaused(ctx context.Context, name string, members int) error {
	for {
		tot, err := c.totals(ctx)
		if err != nil {
			return err
		}
		if tot.paused[name] == members {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to be paused on %d members: %w", name, members, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(pauseSettle):
		return nil
	}
}
