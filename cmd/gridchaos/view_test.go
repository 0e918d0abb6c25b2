package main

import (
	"context"
	"fmt"
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

func TestNotServingNamesPartitionsWhosePrimaryRefuses(t *testing.T) {
	// Run 3 of 2026-11-30 (-netns): the converged table 978 named n4, a new
	// empty incarnation, primary of 48 partitions; n4 held them as empty
	// backups (it refuses primacy without a complete copy) and nothing was
	// served, yet the old safety check passed.
	cv := &clusterView{Version: 978, Partitions: []partView{
		{Primary: "n4", Backups: []string{"n1"}},
		{Primary: "n1", Backups: []string{"n4"}},
		{Primary: "n9", Backups: []string{"n1"}},
	}}
	infos := map[string][]partInfo{
		"n1": {{Role: "backup"}, {Role: "primary"}, {Role: "backup"}},
		"n4": {{Role: "backup"}, {Role: "backup"}, {Role: "none"}},
	}
	got := notServing(cv, infos)
	for _, want := range []string{"table 978", "2 partitions", "0 (n4 is backup)", "2 (n9 is absent)"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q does not say %q", got, want)
		}
	}
	infos["n4"][0].Role = "primary"
	cv.Partitions[2].Primary = "n1"
	infos["n1"][2].Role = "primary"
	if got := notServing(cv, infos); got != "" {
		t.Errorf("every primary serves, got %q", got)
	}
}

// stuckMap answers no batch and blocks every single read until its
// deadline: a partition whose primary serves nothing.
type stuckMap struct{ gets int }

func (m *stuckMap) Name() string { return "idle" }
func (m *stuckMap) GetAll(ctx context.Context, keys []string) (map[string][]byte, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (m *stuckMap) Get(ctx context.Context, key string) ([]byte, error) {
	m.gets++
	<-ctx.Done()
	return nil, ctx.Err()
}

func TestReadBackGivesUpKeyByKeyReads(t *testing.T) {
	// Run 3 of 2026-11-30: 48 partitions served nothing and the idle
	// read-back went key by key at 3 s a key, blocking the nemesis for
	// minutes (it would have taken about half an hour).
	h := &harness{t0: time.Now(), logf: t.Logf}
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprint("k", i)
	}
	m := &stuckMap{}
	start := time.Now()
	got := h.readBackWithin(context.Background(), m, keys, 100, time.Millisecond, 20*time.Millisecond, 200*time.Millisecond)
	took := time.Since(start)
	if len(got) != 0 {
		t.Fatalf("read %d keys from a map that serves nothing", len(got))
	}
	// Without the bound: 1000 keys x 20 ms = 20 s.
	if took > 5*time.Second || m.gets >= len(keys) {
		t.Fatalf("key-by-key reads went on for %v (%d of %d keys tried); patience was 200ms", took, m.gets, len(keys))
	}
}
