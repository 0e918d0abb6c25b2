package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/collocate/grid/client"
)

// buildBinary compiles gridnode once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gridnode")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// freePort returns a port free for both TCP and UDP on 127.0.0.1.
func freePort(t *testing.T) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		_ = l.Close()
		if err == nil {
			_ = u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

type proc struct {
	name, rpc, gossip, http string
	cmd                     *exec.Cmd
	mu                      sync.Mutex
	log                     strings.Builder
	done                    chan error
}

func startProc(t *testing.T, bin, name string, join string, extra ...string) *proc {
	t.Helper()
	p := &proc{
		name:   name,
		rpc:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		gossip: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		http:   fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		done:   make(chan error, 1),
	}
	args := []string{"-name", name, "-rpc", p.rpc, "-gossip", p.gossip, "-http", p.http, "-profile", "test", "-log-level", "warn"}
	if join != "" {
		args = append(args, "-join", join)
	}
	p.cmd = exec.Command(bin, append(args, extra...)...)
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			p.mu.Lock()
			t.Logf("--- %s log:\n%s", name, p.log.String())
			p.mu.Unlock()
		}
	})
	waitHTTP(t, p.http+"/healthz", 30*time.Second)
	return p
}

func waitHTTP(t *testing.T, url string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not healthy after %v", url, d)
}

func getCluster(t *testing.T, p *proc) clusterJSON {
	t.Helper()
	resp, err := http.Get("http://" + p.http + "/v1/cluster")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out clusterJSON
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// waitConverged waits until p's table names exactly members and every
// partition has a primary and one backup, nothing pending.
func waitConverged(t *testing.T, p *proc, members []string, d time.Duration) clusterJSON {
	t.Helper()
	deadline := time.Now().Add(d)
	var c clusterJSON
	for time.Now().Before(deadline) {
		c = getCluster(t, p)
		if converged(c, members) {
			return c
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("not converged on %v after %v (version %d)", members, d, c.Version)
	return c
}

func converged(c clusterJSON, members []string) bool {
	want := map[string]bool{}
	for _, m := range members {
		want[m] = true
	}
	if len(c.Partitions) == 0 {
		return false
	}
	seen := map[string]bool{}
	for _, p := range c.Partitions {
		if !want[p.Primary] || len(p.Backups) != 1 || !want[p.Backups[0]] || p.Backups[0] == p.Primary || len(p.Pending) != 0 {
			return false
		}
		seen[p.Primary] = true
	}
	return len(seen) == len(members)
}

func TestProcessCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("process test")
	}
	bin := buildBinary(t)
	a := startProc(t, bin, "a", "")
	b := startProc(t, bin, "b", a.gossip)
	c := startProc(t, bin, "c", a.gossip)
	waitConverged(t, a, []string{"a", "b", "c"}, 30*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, client.Config{Addrs: []string{b.rpc}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	m := cl.Map("proc")
	const n = 10000
	entries := map[string][]byte{}
	keys := make([]string, 0, n)
	for i := range n {
		k := fmt.Sprintf("k%05d", i)
		entries[k] = []byte(strconv.Itoa(i))
		keys = append(keys, k)
	}
	for i, k := range keys[:n/2] { // one by one
		if err := m.Put(ctx, k, entries[k]); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	batch := map[string][]byte{}
	for _, k := range keys[n/2:] {
		batch[k] = entries[k]
	}
	if err := m.PutAll(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if ok, err := m.Delete(ctx, keys[0]); !ok || err != nil {
		t.Fatalf("delete: %v %v", ok, err)
	}
	delete(entries, keys[0])
	if _, err := m.Get(ctx, keys[0]); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("deleted key: %v", err)
	}
	check := func(stage string) {
		t.Helper()
		var serr error
		seen := 0
		for k, v := range m.Scan(ctx, &serr) {
			if string(v) != string(entries[k]) {
				t.Fatalf("%s: scan %s = %q want %q", stage, k, v, entries[k])
			}
			seen++
		}
		if serr != nil || seen != len(entries) {
			t.Fatalf("%s: scan saw %d of %d: %v", stage, seen, len(entries), serr)
		}
		all := make([]string, 0, len(entries))
		for k := range entries {
			all = append(all, k)
		}
		got, err := m.GetAll(ctx, all)
		if err != nil || len(got) != len(entries) {
			t.Fatalf("%s: GetAll %d of %d: %v", stage, len(got), len(entries), err)
		}
	}
	check("3 nodes")

	// Metrics count what was served.
	resp, err := http.Get("http://" + a.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`grid_requests_total{op="put",result="ok"}`, "grid_request_seconds_bucket", `grid_partitions{role="primary"}`, `grid_map_entries{map="proc"}`, "grid_replication_lag_records"} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("/metrics lacks %s", want)
		}
	}

	// SIGTERM c while a writer runs: nothing lost, the client copes alone.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writeErr error
	var writes int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			k := fmt.Sprintf("during-%d", i)
			if err := m.Put(ctx, k, []byte("x")); err != nil {
				writeErr = err
				return
			}
			entries[k] = []byte("x")
			writes++
		}
	}()
	time.Sleep(300 * time.Millisecond)
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-c.done:
		if err != nil {
			t.Fatalf("gridnode exited with %v after SIGTERM", err)
		}
		c.done <- err
	case <-time.After(30 * time.Second):
		t.Fatal("gridnode did not exit after SIGTERM")
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if writeErr != nil {
		t.Fatalf("write during graceful leave: %v", writeErr)
	}
	t.Logf("%d writes during the leave, none failed", writes)
	waitConverged(t, a, []string{"a", "b"}, 30*time.Second)
	check("after SIGTERM")

	// A 4th node joins: data migrates and the client's table refreshes.
	before := cl.TableVersion()
	d := startProc(t, bin, "d", a.gossip)
	waitConverged(t, d, []string{"a", "b", "d"}, 30*time.Second)
	check("after join")
	deadline := time.Now().Add(10 * time.Second)
	for !contains(cl.Members(), "d") {
		if time.Now().After(deadline) {
			t.Fatalf("client table %d (was %d) does not name d", cl.TableVersion(), before)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestBadFlagsExitNonZero(t *testing.T) {
	if testing.Short() {
		t.Skip("process test")
	}
	bin := buildBinary(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-backups", "x"}, "invalid value"},
		{[]string{"-partitions", "0"}, "Partitions"},
		{[]string{"-rpc", busy.Addr().String(), "-http", ""}, "address already in use"},
		{[]string{"-join", "127.0.0.1:1", "-rpc", "127.0.0.1:0", "-gossip", "127.0.0.1:0", "-http", "", "-profile", "test"}, "no seed"},
	} {
		cmd := exec.Command(bin, tc.args...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() == 0 {
			t.Fatalf("%v: exit %v, want non-zero\n%s", tc.args, err, out)
		}
		if !strings.Contains(string(out), tc.want) {
			t.Fatalf("%v: output lacks %q:\n%s", tc.args, tc.want, out)
		}
	}
}
