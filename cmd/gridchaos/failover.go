package main

// The failover mode measures what writers see when one member fails, with
// gridnode's default flags (docs/chaos.md, "Failover measurements"):
//
//	go run ./cmd/gridchaos failover -runs 10 kill stop sets fp
//
// Each mode gets a fresh cluster of -nodes gridnode processes (3, one
// backup, no -profile unless given, a Redis endpoint on every node), then:
//
//   - kill, stop, netns, isolate: -writers goroutines rewrite a key of their
//     own (each in its own partition) through one default client; after
//     -warmup one member (the raft leader and a follower in turn) is
//     SIGKILLed (then restarted), SIGSTOPped for -hold, cut off from its
//     peers by a network partition for -hold (netns; the harness still
//     reaches it) or cut off from everyone (isolate). Per run: the
//     longest wait of any writer between acknowledged writes spanning the
//     fault, writers stalled longer than 0.5 s, errors by kind, and the time
//     until a write issued at the fault was acknowledged in every partition.
//   - sets: a member is SIGSTOPped for -hold and -sets single Redis SETs
//     are sent to the others at once (one connection each), then again one
//     after another; each should answer OK within -set-wait.
//   - fp: a member is stopped for -pause-for every -pause-every for
//     -duration while the writers run; the other members' logs and tables
//     tell whether it was suspected, declared failed, or lost its copies.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// failoverModes are the measurements of the failover mode.
var failoverModes = []string{"kill", "stop", "netns", "isolate", "sets", "fp"}

// failoverConfig is one invocation of the failover mode.
type failoverConfig struct {
	Modes      []string      // any of failoverModes, in order
	Nodes      int           // members (default 3)
	Backups    int           // synchronous backups (default 1)
	Profile    string        // gridnode -profile; "" passes none (gridnode's default)
	Runs       int           // faults per fault mode (kill, stop, netns, isolate); default 10
	SetsRuns   int           // sets: rounds (a concurrent and a sequential phase each); default 3
	FPRuns     int           // fp: pause trains; default 2
	Writers    int           // default 32
	Warmup     time.Duration // writes before each fault; default 3s
	Hold       time.Duration // how long stop, netns, isolate and sets' pause last; default 10s
	Duration   time.Duration // fp: how long the pauses go on; default 60s
	PauseEvery time.Duration // fp: default 1s
	PauseFor   time.Duration // fp: default 300ms
	Sets       int           // sets: SETs per phase; default 60
	SetWait    time.Duration // sets: an OK later than this is late; default 5s
	Gridnode   string        // binary ("" builds ./cmd/gridnode)
	Out        string        // node logs and views, one directory per mode
	BasePort   int           // gossip port; rpc +1, http +2, resp +3
	Log        io.Writer
}

func (c failoverConfig) withDefaults() (failoverConfig, error) {
	if len(c.Modes) == 0 {
		return c, fmt.Errorf("failover: name at least one mode (%s)", strings.Join(failoverModes, ", "))
	}
	for _, m := range c.Modes {
		if !slices.Contains(failoverModes, m) {
			return c, fmt.Errorf("failover: unknown mode %q (known: %s)", m, strings.Join(failoverModes, ", "))
		}
	}
	orDefault(&c.Nodes, 3)
	orDefault(&c.Backups, 1)
	orDefault(&c.Runs, 10)
	orDefault(&c.SetsRuns, 3)
	orDefault(&c.FPRuns, 2)
	orDefault(&c.Writers, 32)
	orDefault(&c.Sets, 60)
	orDefault(&c.BasePort, 29946)
	orDefault(&c.Warmup, 3*time.Second)
	orDefault(&c.Hold, 10*time.Second)
	orDefault(&c.Duration, 60*time.Second)
	orDefault(&c.PauseEvery, time.Second)
	orDefault(&c.PauseFor, 300*time.Millisecond)
	orDefault(&c.SetWait, 5*time.Second)
	if c.Nodes < 3 {
		return c, errors.New("failover: -nodes must be at least 3")
	}
	if c.PauseFor >= c.PauseEvery {
		return c, errors.New("failover: -pause-for must be shorter than -pause-every")
	}
	return c, finishModeConfig("failover", c.Profile, &c.Out, &c.Log)
}

// failoverSummary is the JSON the failover mode prints.
type failoverSummary struct {
	Date       string                   `json:"date"`
	Commit     string                   `json:"commit,omitempty"`
	Profile    string                   `json:"profile"`
	Nodes      int                      `json:"nodes"`
	Backups    int                      `json:"backups"`
	Writers    int                      `json:"writers"`
	Partitions int                      `json:"partitions"`
	Faults     map[string]*faultSummary `json:"faults,omitempty"`
	Sets       *setsSummary             `json:"sets,omitempty"`
	FP         []fpRun                  `json:"false_positives,omitempty"`
	Skipped    map[string]string        `json:"skipped,omitempty"`
	Load       map[string]string        `json:"loadavg,omitempty"` // per mode: 1-minute load average at its start and end (the machine may be shared)
	Errors     map[string]string        `json:"errors,omitempty"`
}

// dist is the nearest-rank p50, p99 and max of some values.
type dist struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func distOf(v []float64) dist {
	if len(v) == 0 {
		return dist{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	rank := func(p float64) float64 {
		i := int(float64(len(s))*p+0.999999) - 1
		return s[max(0, min(len(s)-1, i))]
	}
	return dist{N: len(s), P50: rank(0.5), P99: rank(0.99), Max: s[len(s)-1]}
}

func msOf(ns int64) float64 { return float64(ns/1e5) / 10 }

// failover runs the modes of one invocation.
type failover struct {
	cfg failoverConfig
	bin string
	sum *failoverSummary
}

// RunFailover runs every mode of cfg, each on a fresh cluster. A mode that
// cannot run here (netns without root) is skipped with the reason; a mode
// that fails records its error and the next one runs.
func RunFailover(ctx context.Context, cfg failoverConfig) (*failoverSummary, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	profile := cfg.Profile
	if profile == "" {
		profile = "default"
	}
	f := &failover{cfg: cfg, sum: &failoverSummary{
		Date: time.Now().UTC().Format(time.RFC3339), Profile: profile, Nodes: cfg.Nodes, Backups: cfg.Backups,
		Writers: cfg.Writers, Faults: map[string]*faultSummary{}, Skipped: map[string]string{}, Errors: map[string]string{},
		Load: map[string]string{},
	}}
	f.sum.Commit = gitCommit()
	bin, cleanup, err := gridnodeBinary(cfg.Gridnode)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	f.bin = bin
	defer httpClient.CloseIdleConnections()
	for _, mode := range cfg.Modes {
		if ctx.Err() != nil {
			break
		}
		if why := f.cannotRun(mode); why != "" {
			f.sum.Skipped[mode] = why
			fmt.Fprintf(cfg.Log, "failover %s: skipped: %s\n", mode, why)
			continue
		}
		before := loadavg()
		err := f.runMode(ctx, mode)
		f.sum.Load[mode] = before + " -> " + loadavg()
		if err != nil {
			f.sum.Errors[mode] = err.Error()
			fmt.Fprintf(cfg.Log, "failover %s: %v\n", mode, err)
		}
	}
	return f.sum, ctx.Err()
}

// loadavg returns the 1-minute load average, or "?".
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}

// cannotRun says why mode cannot run on this machine, or "".
func (f *failover) cannotRun(mode string) string {
	if mode != "netns" && mode != "isolate" {
		return ""
	}
	return netnsUnusable()
}

// runMode starts a fresh cluster, runs mode on it and tears it down.
func (f *failover) runMode(ctx context.Context, mode string) error {
	netns := mode == "netns" || mode == "isolate"
	h, err := f.startCluster(ctx, mode, netns)
	if h != nil {
		defer f.stopCluster(h, netns)
	}
	if err != nil {
		return err
	}
	switch mode {
	case "sets":
		s, err := f.setsMode(ctx, h)
		f.sum.Sets = s
		return err
	case "fp":
		runs, err := f.fpMode(ctx, h)
		f.sum.FP = runs
		return err
	default:
		fs, err := f.faultMode(ctx, h, mode)
		f.sum.Faults[mode] = fs
		return err
	}
}

// startCluster starts cfg.Nodes members with gridnode's default flags
// (plus -profile if given and a Redis endpoint) and waits until the
// cluster is safe (every partition with a live primary and its backups).
func (f *failover) startCluster(ctx context.Context, mode string, netns bool) (*harness, error) {
	dir, err := os.MkdirTemp("", "gridfailover")
	if err != nil {
		return nil, err
	}
	cfg := Config{Nodes: f.cfg.Nodes, Backups: f.cfg.Backups, BasePort: f.cfg.BasePort, Netns: netns,
		Out: filepath.Join(f.cfg.Out, mode), Log: f.cfg.Log}
	h := &harness{cfg: cfg, bin: f.bin, t0: time.Now(), dir: dir, amnesiac: map[string]bool{}, restartedAt: map[string]uint64{},
		rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))}
	h.logf = func(format string, args ...any) {
		fmt.Fprintf(cfg.Log, "[%s %6.1fs] %s\n", mode, time.Since(h.t0).Seconds(), fmt.Sprintf(format, args...))
	}
	h.nodeArgs = func(p *proc) []string {
		args := []string{"-resp", respAddrOf(h, p)}
		if f.cfg.Profile != "" {
			args = append(args, "-profile", f.cfg.Profile)
		}
		return args
	}
	if netns {
		if err := netSetup(); err != nil {
			return h, fmt.Errorf("netns: %w", err)
		}
	}
	for i := range cfg.Nodes {
		if err := h.start(h.slot(i)); err != nil {
			return h, err
		}
	}
	if err := h.waitSafe(ctx, 120*time.Second); err != nil {
		return h, fmt.Errorf("cluster never became safe: %w", err)
	}
	cv, err := h.latest(ctx)
	if err != nil {
		return h, err
	}
	f.sum.Partitions = len(cv.Partitions)
	h.logf("cluster of %d safe at table %d (%d partitions)", cfg.Nodes, cv.Version, len(cv.Partitions))
	return h, nil
}

// stopCluster kills the members, keeps their logs under Out/<mode> and
// removes the namespaces.
func (f *failover) stopCluster(h *harness, netns bool) {
	h.stopAll()
	h.saveLogs()
	if netns {
		netTeardown()
	}
	os.RemoveAll(h.dir)
}

// respAddrOf is p's Redis endpoint: the port after its HTTP port.
func respAddrOf(h *harness, p *proc) string {
	return fmt.Sprintf("%s:%d", p.ip, h.cfg.BasePort+3)
}

// failoverMain is `gridchaos failover [flags] mode...`.
func failoverMain(args []string) int {
	var cfg failoverConfig
	fs := flag.NewFlagSet("gridchaos failover", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: gridchaos failover [flags] %s ...\n", strings.Join(failoverModes, "|"))
		fs.PrintDefaults()
	}
	fs.IntVar(&cfg.Nodes, "nodes", 3, "members")
	fs.IntVar(&cfg.Backups, "backups", 1, "synchronous backups per partition")
	fs.StringVar(&cfg.Profile, "profile", "", "gridnode -profile (default: none, gridnode's default)")
	fs.IntVar(&cfg.Runs, "runs", 10, "faults per fault mode (kill, stop, netns, isolate)")
	fs.IntVar(&cfg.SetsRuns, "sets-runs", 3, "sets: rounds, each a concurrent and a sequential phase")
	fs.IntVar(&cfg.FPRuns, "fp-runs", 2, "fp: pause trains (on the raft leader and a follower in turn)")
	fs.IntVar(&cfg.Writers, "writers", 32, "writers, each rewriting a key of its own")
	fs.DurationVar(&cfg.Warmup, "warmup", 3*time.Second, "writes before each fault")
	fs.DurationVar(&cfg.Hold, "hold", 10*time.Second, "how long a stop, a network cut and the sets' pause last")
	fs.DurationVar(&cfg.Duration, "duration", 60*time.Second, "fp: how long the pauses go on")
	fs.DurationVar(&cfg.PauseEvery, "pause-every", time.Second, "fp: one pause per this period")
	fs.DurationVar(&cfg.PauseFor, "pause-for", 300*time.Millisecond, "fp: length of each pause")
	fs.IntVar(&cfg.Sets, "sets", 60, "sets: SETs per phase")
	fs.DurationVar(&cfg.SetWait, "set-wait", 5*time.Second, "sets: an OK later than this counts as late")
	fs.StringVar(&cfg.Gridnode, "gridnode", "", "gridnode binary (default: build ./cmd/gridnode)")
	fs.StringVar(&cfg.Out, "out", "failover-out", "directory for node logs, one subdirectory per mode")
	fs.IntVar(&cfg.BasePort, "port", 29946, "gossip port; rpc, http and resp use the next three, on every 127.0.0.x")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg.Modes = fs.Args()
	cfg.Log = os.Stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := RunFailover(ctx, cfg)
	if sum != nil {
		b, _ := json.MarshalIndent(sum, "", "  ")
		fmt.Println(string(b))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gridchaos failover:", err)
		return 2
	}
	if len(sum.Errors) > 0 {
		return 1
	}
	return 0
}
