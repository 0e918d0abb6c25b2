// Command payments is the payments flow of event-driven banking on the
// grid's exactly-once event processors (package process), on an embedded
// 3-node cluster in this one process:
//
//	payment requested -> validate -> fraud -> book (ledger) -> project (balances)
//
// Each stage is a processor on its own stream, keyed by account, so that an
// account's events, its ledger and its balance live in one partition. In
// the middle of the run one node is killed and, a few seconds later,
// started again as a new, empty member; at the end every payment's outcome
// and every balance is compared with a recomputation from the inputs.
//
//	go run ./examples/payments [-payments 2000] [-accounts 50] [-seed 1]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Config is a run's shape.
type Config struct {
	Payments   int     // payment requests (default 2000)
	Accounts   int     // accounts, at least 2 (default 50)
	Seed       uint64  // draws the accounts' balances and the payments (default 1)
	Partitions int     // the grid's partitions (default 271)
	Rate       int     // payments published per second; 0: as fast as possible (default 250)
	Publishers int     // concurrent senders of the client (default 8)
	Resend     float64 // share of payments the client sends twice (default 0.02)
	Overtake   float64 // share of payments sent after their payer's next one (default 0.02)
	// Down is how long the killed node stays down (default 3s).
	Down time.Duration
	// Progress is the interval of the progress lines (default 1s).
	Progress time.Duration
	// Drain bounds the wait for the flow to finish once every payment is
	// published and the node is back (default 2m).
	Drain time.Duration
	// Logger receives the nodes' and runtimes' logs (nil: none).
	Logger *slog.Logger
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Payments: 2000, Accounts: 50, Seed: 1, Partitions: 271, Rate: 250, Publishers: 8,
		Resend: 0.02, Overtake: 0.02, Down: 3 * time.Second, Progress: time.Second, Drain: 2 * time.Minute}
}

// Validate reports whether c can run.
func (c *Config) Validate() error {
	switch {
	case c.Payments < 1 || c.Accounts < 2 || c.Partitions < 1:
		return fmt.Errorf("payments: need at least 1 payment, 2 accounts and 1 partition: %+v", *c)
	case c.Rate < 0 || c.Publishers < 1 || c.Resend < 0 || c.Resend > 1 || c.Overtake < 0 || c.Overtake > 1:
		return fmt.Errorf("payments: rate >= 0, publishers >= 1, resend and overtake in [0, 1]: %+v", *c)
	case c.Down < 0 || c.Progress <= 0 || c.Drain <= 0:
		return fmt.Errorf("payments: down >= 0, progress and drain > 0: %+v", *c)
	}
	return nil
}

func main() {
	cfg := DefaultConfig()
	flag.IntVar(&cfg.Payments, "payments", cfg.Payments, "payment requests")
	flag.IntVar(&cfg.Accounts, "accounts", cfg.Accounts, "accounts")
	flag.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed of the accounts' balances and the payments")
	flag.IntVar(&cfg.Partitions, "partitions", cfg.Partitions, "the grid's partitions")
	flag.IntVar(&cfg.Rate, "rate", cfg.Rate, "payments published per second (0: as fast as possible)")
	flag.IntVar(&cfg.Publishers, "publishers", cfg.Publishers, "concurrent senders")
	flag.Float64Var(&cfg.Resend, "resend", cfg.Resend, "share of payments the client sends twice")
	flag.Float64Var(&cfg.Overtake, "overtake", cfg.Overtake, "share of payments the client sends after their payer's next one")
	flag.DurationVar(&cfg.Down, "down", cfg.Down, "how long the killed node stays down")
	verbose := flag.Bool("v", false, "log the nodes' warnings to stderr")
	flag.Parse()
	if *verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "payments:", err)
		stop()
		os.Exit(1)
	}
}

// errMismatch marks a run whose final state differs from the
// recomputation (the report lists the differences).
var errMismatch = errors.New("the grid's state differs from the recomputation")

// run runs the flow of cfg and writes its progress and report to out. It
// fails if the flow does not finish, or if its outcome differs from the
// recomputation (errMismatch).
func run(ctx context.Context, cfg Config, out io.Writer) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &flow{cfg: cfg, out: out, in: generate(cfg), began: time.Now()}
	fmt.Fprintf(out, "payments: %d payment requests between %d accounts (seed %d), %d sends with the client's resends\n",
		cfg.Payments, cfg.Accounts, cfg.Seed, len(f.in.sends))
	b := &bank{rules: f.in.rules}
	c, err := startCluster(ctx, cfg, log, b.processors)
	if err != nil {
		return err
	}
	defer c.close()
	f.c = c
	fmt.Fprintf(out, "cluster: n1, n2, n3 up in %.1fs; %d partitions with 1 backup each; validate, fraud, book and project run on every node\n",
		time.Since(f.began).Seconds(), cfg.Partitions)
	if err := openAccounts(ctx, c.members[0].node, f.in); err != nil {
		return err
	}
	if err := f.drive(ctx); err != nil {
		return err
	}
	return f.finish(ctx)
}
