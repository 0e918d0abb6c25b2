package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
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
