package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/collocate/grid/process"
	"github.com/collocate/grid/process/builtin"
	"github.com/prometheus/client_golang/prometheus"
)

// GET /v1/processors reports the built-in processors with their lag and
// counts, POST pauses and resumes them (404 for an unknown one, 400 for a
// replay without its parameters), and /metrics has their series.
func TestHTTPProcessors(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	metrics := prometheus.NewRegistry()
	c := gridtest.New(t, 1, func(i int, cfg *grid.Config) { cfg.Registerer = metrics })
	node := c.Nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := node.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	rt, err := startProcessors(node, "single", 0, c.Logger(0), metrics)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	h := newHTTPHandler(node, metrics, nil, rt, nil, false)
	for i := range 20 {
		if _, err := node.Publish(ctx, builtin.SingleIn, builtin.InKey(string(rune('a'+i))), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	var st []process.ProcessorStatus
	deadline := time.Now().Add(20 * time.Second)
	for {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/processors", nil))
		if err := json.NewDecoder(rec.Body).Decode(&st); err != nil || rec.Code != http.StatusOK {
			t.Fatalf("GET /v1/processors: %d, %v", rec.Code, err)
		}
		if len(st) == 1 && st[0].Name == "single" && st[0].Handled == 20 && st[0].Lag == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never showed 20 handled and no lag: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	post := func(path string) int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, nil))
		return rec.Code
	}
	for path, want := range map[string]int{
		"/v1/processors/single/pause":                     http.StatusOK,
		"/v1/processors/single/resume":                    http.StatusOK,
		"/v1/processors/nope/pause":                       http.StatusNotFound,
		"/v1/processors/single/replay":                    http.StatusBadRequest,
		"/v1/processors/single/replay?partition=0&from=1": http.StatusOK,
	} {
		if got := post(path); got != want {
			t.Errorf("POST %s: %d, want %d", path, got, want)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if want := `grid_processor_events_total{processor="single"} 20`; !strings.Contains(rec.Body.String(), want) {
		t.Fatalf("/metrics lacks %s", want)
	}
}
