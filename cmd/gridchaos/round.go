package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
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
			if h.cfg.Netns {
				netTeardown()
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

// roundCluster is a measurement round's cluster (startRoundCluster).
type roundCluster struct {
	mode    string // names the log lines and the temporary directory
	seed    uint64 // seeds the harness' choices
	nodes   int
	backups int
	port    int    // gossip port; rpc +1, http +2
	out     string // where the node logs go if the round fails
	log     io.Writer
	netns   bool // every node in its own network namespace (netns.go; root)
	// args are a node's flags after the common ones (-name, -gossip, -rpc,
	// -http, -backups, -log-level, -leave-timeout, -join); nil: none, so
	// gridnode's defaults. A restart uses the same.
	args func(p *proc) []string
}

// startRoundCluster starts rc.nodes members and waits until the cluster
// is safe. The harness it returns (also on an error, if it started
// anything) belongs to runRound, which tears it down.
func startRoundCluster(ctx context.Context, rc roundCluster, bin string) (*harness, error) {
	dir, err := os.MkdirTemp("", "grid"+rc.mode)
	if err != nil {
		return nil, err
	}
	hc := Config{Nodes: rc.nodes, Backups: rc.backups, BasePort: rc.port, Netns: rc.netns, Out: rc.out, Log: rc.log}
	h := &harness{cfg: hc, bin: bin, t0: time.Now(), dir: dir, amnesiac: map[string]bool{}, restartedAt: map[string]uint64{},
		rng: rand.New(rand.NewPCG(rc.seed, rc.seed^0x9e3779b97f4a7c15))}
	h.logf = func(format string, args ...any) {
		fmt.Fprintf(rc.log, "[%s %d %6.1fs] %s\n", rc.mode, rc.seed, time.Since(h.t0).Seconds(), fmt.Sprintf(format, args...))
	}
	h.nodeArgs = func(p *proc) []string {
		if rc.args == nil {
			return nil
		}
		return rc.args(p)
	}
	if rc.netns {
		if err := netSetup(); err != nil {
			return h, fmt.Errorf("-netns: %w", err)
		}
	}
	for i := range hc.Nodes {
		if err := h.start(h.slot(i)); err != nil {
			return h, err
		}
	}
	if err := h.waitSafe(ctx, 120*time.Second); err != nil {
		return h, fmt.Errorf("cluster never became safe: %w", err)
	}
	return h, nil
}

// profileArgs is -profile profile unless it is "" (gridnode's default).
func profileArgs(profile string) []string {
	if profile == "" {
		return nil
	}
	return []string{"-profile", profile}
}

// gridnodeBinary returns bin, or builds ./cmd/gridnode into a temporary
// directory when bin is empty; call cleanup when done with it.
func gridnodeBinary(bin string) (path string, cleanup func(), err error) {
	if bin != "" {
		return bin, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "gridchaos-bin")
	if err != nil {
		return "", nil, err
	}
	path = filepath.Join(dir, "gridnode")
	if out, err := exec.Command("go", "build", "-o", path, "github.com/collocate/grid/cmd/gridnode").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("build gridnode: %v\n%s", err, out)
	}
	return path, func() { os.RemoveAll(dir) }, nil
}

// seedRounds runs round for seeds seed0, seed0+1, ... (runs of them, fewer
// if ctx ends) and returns the seeds run and their violations and errors,
// each prefixed by its seed.
func seedRounds(ctx context.Context, mode string, runs int, seed0 uint64, log io.Writer,
	round func(seed uint64) (errMsg string, violations []string)) (seeds []uint64, violations, errs []string) {
	for r := range runs {
		if ctx.Err() != nil {
			break
		}
		seed := seed0 + uint64(r)
		errMsg, vs := round(seed)
		seeds = append(seeds, seed)
		for _, v := range vs {
			violations = append(violations, fmt.Sprintf("seed %d: %s", seed, v))
		}
		if errMsg != "" {
			errs = append(errs, fmt.Sprintf("seed %d: %s", seed, errMsg))
			fmt.Fprintf(log, "%s seed %d: %s\n", mode, seed, errMsg)
		}
	}
	return seeds, violations, errs
}

// orDefault sets *v to d unless it is positive (a flag left at zero).
func orDefault[T int | int64 | time.Duration](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

// finishModeConfig applies what every mode's config shares: the gridnode
// profile (lan or test; "" passes none), the output folder (<mode>-out by
// default) and the log.
func finishModeConfig(mode, profile string, out *string, log *io.Writer) error {
	switch profile {
	case "", "lan", "test":
	default:
		return fmt.Errorf("%s: -profile %q: want lan or test", mode, profile)
	}
	if *out == "" {
		*out = mode + "-out"
	}
	if *log == nil {
		*log = io.Discard
	}
	return nil
}

// gitCommit names the tree a summary was measured on ("" outside git).
func gitCommit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// parseModeArgs parses a mode's flags; positional arguments are refused.
func parseModeArgs(mode string, fs *flag.FlagSet, args []string) bool {
	if err := fs.Parse(args); err != nil {
		return false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "gridchaos %s: unexpected arguments %v\n", mode, fs.Args())
		return false
	}
	return true
}

// runMode runs a mode until it ends or SIGINT/SIGTERM, prints its summary
// as one JSON line, and returns the exit status: 1 with violations, 2 on
// an error or a summary that is not ok, 0 otherwise. verdict reports the
// summary's violations and whether it is ok.
func runMode[S any](mode string, run func(context.Context) (*S, error), verdict func(*S) (violated, ok bool)) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := run(ctx)
	if sum != nil {
		b, _ := json.Marshal(sum)
		fmt.Println(string(b))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gridchaos "+mode+":", err)
		return 2
	}
	switch violated, ok := verdict(sum); {
	case violated:
		return 1
	case !ok:
		return 2
	}
	return 0
}
