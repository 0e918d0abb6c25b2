// Command gridchaos runs real gridnode processes on 127.0.0.x, drives them
// with client workloads, injects faults, and checks the grid's promises.
//
//	go run ./cmd/gridchaos -nodes 5 -duration 60s -seed 7
//
// Workloads: a register workload (reads and writes of a few keys, renamed
// every 10 s, checked for linearizability with porcupine) and a set workload (unique keys; every
// acknowledged put must be present at the end). The nemesis, driven by
// -seed, SIGKILLs random nodes and current primaries (then restarts them),
// SIGSTOPs nodes past failure detection (then SIGCONTs them), makes nodes
// leave gracefully and rejoin, and adds a member; one fault at a time, and it
// waits for the cluster to be safe (converged, full backups) before the next.
// At the end it heals everything and checks: (a) linearizable registers,
// (b) no acknowledged write lost, (c) every partition has its primary and
// full backups, (d) every backup equals its primary. It prints a one-line
// JSON summary and exits non-zero on any violation, writing the history and
// porcupine's visualization to -out.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config is one chaos run.
type Config struct {
	Nodes     int           // initial members
	Backups   int           // synchronous backups
	Duration  time.Duration // how long the nemesis runs
	Seed      uint64        // replays the same fault schedule
	Gridnode  string        // path to the gridnode binary ("" builds it)
	Out       string        // where failure artifacts go
	BasePort  int           // gossip port; rpc = +1, http = +2 on every 127.0.0.x
	Registers int
	Writers   int
	Netns     bool // one network namespace per node; adds network partitions
	Log       io.Writer
}

// Summary is the one-line result.
type Summary struct {
	Seed          uint64         `json:"seed"`
	Nodes         int            `json:"nodes"`
	Seconds       float64        `json:"seconds"`
	Ops           int            `json:"ops"`
	AckedWrites   int            `json:"acked_writes"`
	Lost          int            `json:"lost"`
	Linearizable  string         `json:"linearizable"`
	Converged     bool           `json:"converged"`
	ReplicasEqual bool           `json:"replicas_equal"`
	Faults        map[string]int `json:"faults"`
	UnavailP50ms  float64        `json:"unavailability_p50_ms"`
	UnavailP99ms  float64        `json:"unavailability_p99_ms"`
	UnavailMaxms  float64        `json:"unavailability_max_ms"`
	Violations    []string       `json:"violations"`
	OK            bool           `json:"ok"`
}

func main() {
	var cfg Config
	flag.IntVar(&cfg.Nodes, "nodes", 5, "initial members (3 or more)")
	flag.IntVar(&cfg.Backups, "backups", 1, "synchronous backups per partition")
	flag.DurationVar(&cfg.Duration, "duration", 60*time.Second, "how long to inject faults")
	flag.Uint64Var(&cfg.Seed, "seed", uint64(time.Now().UnixNano()), "seed of the fault schedule")
	flag.StringVar(&cfg.Gridnode, "gridnode", "", "gridnode binary (default: build ./cmd/gridnode)")
	flag.StringVar(&cfg.Out, "out", "chaos-out", "directory for failure artifacts")
	flag.IntVar(&cfg.BasePort, "port", 27946, "gossip port; rpc and http use the next two, on every 127.0.0.x")
	flag.IntVar(&cfg.Registers, "registers", 8, "registers in the linearizability workload")
	flag.IntVar(&cfg.Writers, "writers", 8, "workers per workload")
	flag.BoolVar(&cfg.Netns, "netns", false, "run each node in its own network namespace (root) and add network partitions to the faults")
	flag.Parse()
	cfg.Log = os.Stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gridchaos:", err)
		os.Exit(2)
	}
	b, _ := json.Marshal(sum)
	fmt.Println(string(b))
	if !sum.OK {
		os.Exit(1)
	}
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

// proc is one gridnode process slot (a name on its own 127.0.0.x).
type proc struct {
	idx                  int // 1-based
	name, ip             string
	gossip, rpc, httpURL string
	cmd                  *exec.Cmd
	done                 chan struct{}
	running, paused      bool
	logPath              string
}

type harness struct {
	cfg   Config
	bin   string
	rng   *rand.Rand
	procs []*proc
	mu    sync.Mutex
	t0    time.Time
	logf  func(format string, args ...any)
	dir   string
}

// Run executes one chaos run.
func Run(ctx context.Context, cfg Config) (*Summary, error) {
	if cfg.Nodes < 3 {
		return nil, errors.New("-nodes must be at least 3 (automatic failover needs a raft majority)")
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	if cfg.Registers <= 0 {
		cfg.Registers = 8
	}
	if cfg.Writers <= 0 {
		cfg.Writers = 8
	}
	if cfg.BasePort == 0 {
		cfg.BasePort = 27946
	}
	dir, err := os.MkdirTemp("", "gridchaos")
	if err != nil {
		return nil, err
	}
	h := &harness{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)), t0: time.Now(), dir: dir}
	h.logf = func(format string, args ...any) {
		fmt.Fprintf(cfg.Log, "[%6.1fs] %s\n", time.Since(h.t0).Seconds(), fmt.Sprintf(format, args...))
	}
	h.bin = cfg.Gridnode
	if h.bin == "" {
		h.bin = filepath.Join(dir, "gridnode")
		out, err := exec.Command("go", "build", "-o", h.bin, "./cmd/gridnode").CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("build gridnode: %v\n%s", err, out)
		}
	}
	if cfg.Netns {
		if err := netSetup(); err != nil {
			return nil, fmt.Errorf("-netns: %w", err)
		}
		defer netTeardown()
	}
	defer h.stopAll()
	for i := range cfg.Nodes {
		if err := h.start(h.slot(i)); err != nil {
			return nil, err
		}
	}
	if err := h.waitSafe(ctx, 60*time.Second); err != nil {
		return nil, fmt.Errorf("cluster never became safe: %w", err)
	}
	return h.run(ctx)
}

func (h *harness) slot(i int) *proc {
	for len(h.procs) <= i {
		j := len(h.procs)
		ip := fmt.Sprintf("127.0.0.%d", j+1)
		if h.cfg.Netns {
			ip = nsAddr(j + 1)
			if err := netAddNode(j + 1); err != nil {
				h.logf("netns for n%d: %v", j+1, err)
			}
		}
		h.procs = append(h.procs, &proc{
			idx:     j + 1,
			name:    fmt.Sprintf("n%d", j+1),
			ip:      ip,
			gossip:  fmt.Sprintf("%s:%d", ip, h.cfg.BasePort),
			rpc:     fmt.Sprintf("%s:%d", ip, h.cfg.BasePort+1),
			httpURL: fmt.Sprintf("http://%s:%d", ip, h.cfg.BasePort+2),
			logPath: filepath.Join(h.dir, fmt.Sprintf("n%d.log", j+1)),
		})
	}
	return h.procs[i]
}

func (h *harness) running() []*proc {
	var out []*proc
	for _, p := range h.procs {
		if p.running {
			out = append(out, p)
		}
	}
	return out
}

func (h *harness) start(p *proc) error {
	var join []string
	for _, q := range h.running() {
		if !q.paused {
			join = append(join, q.gossip)
		}
	}
	args := []string{"-name", p.name, "-gossip", p.gossip, "-rpc", p.rpc, "-http", strings.TrimPrefix(p.httpURL, "http://"),
		"-backups", fmt.Sprint(h.cfg.Backups), "-profile", "test", "-log-level", "info", "-leave-timeout", "15s"}
	if len(join) > 0 {
		args = append(args, "-join", strings.Join(join, ","))
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	if h.cfg.Netns {
		p.cmd = exec.Command("ip", append([]string{"netns", "exec", nsName(p.idx), h.bin}, args...)...)
	} else {
		p.cmd = exec.Command(h.bin, args...)
	}
	p.cmd.Stderr = logf
	p.cmd.Stdout = logf
	// If the harness dies, its nodes die with it (no orphan cluster left to
	// capture the next run's nodes).
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}(p.cmd, p.done)
	p.running, p.paused = true, false
	return nil
}

func (h *harness) signal(p *proc, sig syscall.Signal) {
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(sig)
	}
}

func (h *harness) kill(p *proc) {
	h.signal(p, syscall.SIGKILL)
	<-p.done
	p.running, p.paused = false, false
}

func (h *harness) stopAll() {
	for _, p := range h.procs {
		if p.running {
			if p.paused {
				h.signal(p, syscall.SIGCONT)
			}
			h.kill(p)
		}
	}
}

func getJSON(ctx context.Context, url string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

type clusterView struct {
	Version    uint64   `json:"version"`
	Voters     []string `json:"voters"`
	Partitions []struct {
		Primary string   `json:"primary"`
		Backups []string `json:"backups"`
		Pending []string `json:"pending"`
	} `json:"partitions"`
}

// unsafe says why the cluster is not safe for the next fault, or "".
func (h *harness) unsafe(ctx context.Context) string {
	live := h.running()
	var names []string
	for _, p := range live {
		if p.paused {
			return p.name + " is paused"
		}
		names = append(names, p.name)
	}
	want := min(h.cfg.Backups, len(live)-1)
	var version uint64
	for i, p := range live {
		resp, err := httpClient.Get(p.httpURL + "/healthz")
		if err != nil {
			return p.name + ": " + err.Error()
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return p.name + " not healthy"
		}
		var cv clusterView
		if err := getJSON(ctx, p.httpURL+"/v1/cluster", &cv); err != nil {
			return err.Error()
		}
		if i == 0 {
			version = cv.Version
		} else if cv.Version != version {
			return fmt.Sprintf("%s at table %d, %s at %d", live[0].name, version, p.name, cv.Version)
		}
		for pid, part := range cv.Partitions {
			if !slices.Contains(names, part.Primary) || len(part.Backups) != want || len(part.Pending) > 0 {
				return fmt.Sprintf("partition %d not converged: %+v", pid, part)
			}
		}
		seen := map[string]bool{}
		for _, part := range cv.Partitions {
			seen[part.Primary] = true
			for _, b := range part.Backups {
				seen[b] = true
			}
		}
		if len(seen) != len(names) {
			return fmt.Sprintf("table uses %d of %d members", len(seen), len(names))
		}
	}
	return ""
}

func (h *harness) waitSafe(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	why := ""
	for time.Now().Before(deadline) {
		if why = h.unsafe(ctx); why == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return errors.New(why)
}
