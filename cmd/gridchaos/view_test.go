package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestUnusedNamesTheMemberAndItsStatus(t *testing.T) {
	// Run 2 of 2026-11-30: n5 left, restarted at once, and the leader
	// dropped it from the table while its process ran; the old message
	// ("table uses 4 of 5 members") did not say which member or why.
	cv := &clusterView{Version: 3004, Leader: "n3", Members: []memberView{
		{Name: "n1", Status: "alive"}, {Name: "n3", Status: "alive"}, {Name: "n4", Status: "alive"},
		{Name: "n5", Status: "leaving"}, {Name: "n6", Status: "alive"},
	}}
	names := []string{"n1", "n3", "n4", "n5", "n6"}
	seen := map[string]bool{"n1": true, "n3": true, "n4": true, "n6": true}
	got := unused("n3", names, seen, cv)
	for _, want := range []string{"table 3004 uses 4 of 5 members", "n5 (n3 sees it leaving)", "leader: n3"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q does not say %q", got, want)
		}
	}
	if strings.Contains(got, "n1 (") {
		t.Errorf("%q names a used member", got)
	}
	cv.Leader = ""
	if got := unused("n3", names, map[string]bool{}, cv); !strings.Contains(got, "leader: none") {
		t.Errorf("%q does not say there is no leader", got)
	}
	if got := (&clusterView{}).status("n9"); got != "absent" {
		t.Errorf("status of an unknown member = %q, want absent", got)
	}
}

func TestDumpViewsWritesEveryRunningNodesView(t *testing.T) {
	body := `{"node":"n1","leader":"","voters":["n1","n3"],"members":[{"name":"n2","status":"failed"}]}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/cluster" {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, body)
	}))
	defer srv.Close()
	defer httpClient.CloseIdleConnections()
	out := t.TempDir()
	h := &harness{cfg: Config{Out: out}, t0: time.Now(), logf: t.Logf}
	h.procs = []*proc{
		{name: "n1", httpURL: srv.URL, running: true},
		{name: "n2", httpURL: srv.URL, running: false}, // dead: no view
		{name: "n3", httpURL: srv.URL, running: true, paused: true},
	}
	dir := h.dumpViews(context.Background())
	if !strings.HasPrefix(dir, out) {
		t.Fatalf("views in %q, want under %q", dir, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "n1.json"))
	if err != nil || string(b) != body {
		t.Fatalf("n1.json = %q, %v; want the node's /v1/cluster", b, err)
	}
	for _, n := range []string{"n2", "n3"} {
		if _, err := os.Stat(filepath.Join(dir, n+".json")); err == nil {
			t.Errorf("%s.json written for a member that is dead or paused", n)
		}
	}
}
