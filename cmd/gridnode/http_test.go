package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/collocate/grid/compute"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/prometheus/client_golang/prometheus"
)

// GET /v1/functions lists the built-ins every gridnode registers, and
// /metrics counts their calls per function.
func TestHTTPFunctionsAndMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	funcs := compute.NewRegistry()
	if err := compute.RegisterBuiltins(funcs); err != nil {
		t.Fatal(err)
	}
	metrics := prometheus.NewRegistry()
	c := gridtest.New(t, 1, func(i int, cfg *grid.Config) {
		cfg.Functions = funcs
		cfg.Registerer = metrics
	})
	node := c.Nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := node.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	h := newHTTPHandler(node, metrics, funcs, nil, nil, false)

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/functions", nil))
	var list []compute.FunctionInfo
	if err := json.NewDecoder(rec.Body).Decode(&list); err != nil || rec.Code != http.StatusOK {
		t.Fatalf("GET /v1/functions: %d, %v", rec.Code, err)
	}
	kinds := map[string]string{}
	for _, f := range list {
		kinds[f.Name] = f.Kind
	}
	for name, kind := range map[string]string{compute.FnCounterAdd: compute.KindPartition, compute.FnAggMap: compute.KindPartition,
		compute.FnEcho: compute.KindMember, compute.FilterKeyPrefix: compute.KindFilter} {
		if kinds[name] != kind {
			t.Errorf("%s listed as %q, want %q (list %v)", name, kinds[name], kind, list)
		}
	}

	// Installed through Config.Functions: callable without SetFunctions.
	if _, err := node.Execute(ctx, grid.StepCall{Map: "m", Key: "k", Name: compute.FnCounterAdd}); err != nil {
		t.Fatal(err)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if want := `grid_function_calls_total{function="counter.add",result="ok"} 1`; !strings.Contains(rec.Body.String(), want) {
		t.Fatalf("/metrics lacks %s", want)
	}
}
