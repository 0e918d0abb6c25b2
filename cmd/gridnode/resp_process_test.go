package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// redisCLI runs redis-cli against addr and returns its trimmed output.
func redisCLI(t *testing.T, addr string, stdin string, args ...string) string {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	cmd := exec.Command("redis-cli", append([]string{"-h", host, "-p", port}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestProcessRedisCLI drives a 3-process cluster with redis-cli: single
// commands on different nodes, mass insertion with --pipe, --scan, -n
// (SELECT), INFO, then a SIGKILL of the node that took the writes.
func TestProcessRedisCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("process test")
	}
	if _, err := exec.LookPath("redis-cli"); err != nil {
		if os.Getenv("GRID_REQUIRE_REDIS") != "" {
			t.Fatalf("redis-cli is required (GRID_REQUIRE_REDIS is set): %v", err)
		}
		t.Skip("redis-cli not installed")
	}
	bin := buildBinary(t)
	respAddr := func() string { return fmt.Sprintf("127.0.0.1:%d", freePort(t)) }
	ra, rb, rc := respAddr(), respAddr(), respAddr()
	a := startProc(t, bin, "a", "", "-resp", ra)
	b := startProc(t, bin, "b", a.gossip, "-resp", rb)
	_ = startProc(t, bin, "c", a.gossip, "-resp", rc)
	waitConverged(t, a, []string{"a", "b", "c"}, 30*time.Second)

	if got := redisCLI(t, ra, "", "SET", "greeting", "hello grid"); got != "OK" {
		t.Fatalf("SET: %q", got)
	}
	if got := redisCLI(t, rc, "", "GET", "greeting"); got != "hello grid" {
		t.Fatalf("GET via another node: %q", got)
	}
	if got := redisCLI(t, rb, "", "NOSUCH", "x"); got != "ERR unknown command 'NOSUCH', with args beginning with: 'x'" {
		t.Fatalf("unknown command: %q", got)
	}

	// Mass insertion, as the Redis docs teach it.
	const n = 20000
	var in strings.Builder
	for i := range n {
		k, v := fmt.Sprintf("pipe:%05d", i), strconv.Itoa(i)
		fmt.Fprintf(&in, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(k), k, len(v), v)
	}
	out := redisCLI(t, rb, in.String(), "--pipe")
	if !strings.Contains(out, fmt.Sprintf("errors: 0, replies: %d", n)) {
		t.Fatalf("--pipe: %s", out)
	}
	scanned := strings.Fields(redisCLI(t, rc, "", "--scan", "--pattern", "pipe:*"))
	if len(scanned) != n {
		t.Fatalf("--scan found %d keys, want %d", len(scanned), n)
	}
	if got := redisCLI(t, ra, "", "DBSIZE"); got != strconv.Itoa(n+1) {
		t.Fatalf("DBSIZE %s, want %d", got, n+1)
	}
	if got := redisCLI(t, ra, "", "-n", "2", "SET", "x", "in db2"); got != "OK" {
		t.Fatalf("-n 2 SET: %q", got)
	}
	if got := redisCLI(t, rc, "", "-n", "2", "GET", "x"); got != "in db2" {
		t.Fatalf("-n 2 GET: %q", got)
	}
	if got := redisCLI(t, rc, "", "GET", "x"); got != "" {
		t.Fatalf("db0 must not see db2's key: %q", got)
	}
	if info := redisCLI(t, rb, "", "INFO", "grid"); !strings.Contains(info, "grid_members:3") {
		t.Fatalf("INFO grid: %s", info)
	}

	// SIGKILL the node that took the mass insertion: every acknowledged
	// write must still be readable through the survivors.
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := redisCLI(t, ra, "", "DBSIZE")
		if got == strconv.Itoa(n+1) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("DBSIZE after kill: %s, want %d", got, n+1)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var mget []string
	for i := 0; i < n; i += 97 {
		mget = append(mget, fmt.Sprintf("pipe:%05d", i))
	}
	vals := strings.Fields(redisCLI(t, rc, "", append([]string{"MGET"}, mget...)...))
	for j, v := range vals {
		if want := strconv.Itoa(j * 97); v != want {
			t.Fatalf("after kill, %s = %q, want %q", mget[j], v, want)
		}
	}
	if len(vals) != len(mget) {
		t.Fatalf("MGET after kill: %d values, want %d", len(vals), len(mget))
	}
}
