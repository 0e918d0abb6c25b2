// Command gridnode runs one grid member.
//
// With no flags it runs a single node on loopback that serves at once:
//
//	go run ./cmd/gridnode
//
// Every flag can also be set as GRID_<FLAG> (for example GRID_JOIN);
// a flag given on the command line wins over the environment.
// SIGINT/SIGTERM leave the cluster gracefully; a second signal exits at once.
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
	"strings"
	"syscall"
	"time"

	"github.com/collocate/grid/cluster"
	"github.com/collocate/grid/grid"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	cfg, level, err := parse(args, os.Getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "gridnode:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg.Logger = log

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	node, err := grid.Start(startCtx, cfg)
	cancel()
	if err != nil {
		fmt.Fprintln(stderr, "gridnode:", err)
		return 1
	}
	readyCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = node.WaitReady(readyCtx)
	cancel()
	if err != nil {
		node.Kill()
		fmt.Fprintln(stderr, "gridnode: no partition table:", err)
		return 1
	}
	log.Info("serving", "name", node.Name(), "rpc", node.RPCAddr(), "gossip", node.GossipAddr(),
		"partitions", cfg.Partitions, "backups", cfg.Backups)

	<-ctx.Done()
	stop() // a second signal now kills the process
	log.Info("leaving the cluster")
	leaveCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := node.Close(leaveCtx); err != nil {
		log.Warn("leave", "err", err)
	}
	return 0
}

// parse merges flags over GRID_* environment variables over defaults.
func parse(args []string, getenv func(string) string, out io.Writer) (grid.Config, slog.Level, error) {
	cfg := grid.DefaultConfig()
	fs := flag.NewFlagSet("gridnode", flag.ContinueOnError)
	fs.SetOutput(out)
	name := fs.String("name", "", "member name, unique in the cluster (default: node-<random>)")
	gossip := fs.String("gossip", "127.0.0.1:7946", "gossip (serf) host:port, UDP and TCP")
	rpc := fs.String("rpc", "127.0.0.1:7070", "RPC host:port for clients, peers and raft")
	join := fs.String("join", "", "comma-separated gossip addresses of members to join; empty starts a new cluster")
	partitions := fs.Int("partitions", cfg.Partitions, "partition count (every member must agree)")
	backups := fs.Int("backups", cfg.Backups, "synchronous backups per partition")
	profile := fs.String("profile", string(cluster.ProfileLAN), "failure detection profile: lan or test")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	// Environment first, so that flags given on the command line win.
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		key := "GRID_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := getenv(key); v != "" {
			if err := f.Value.Set(v); err != nil && envErr == nil {
				envErr = fmt.Errorf("%s=%q: %v", key, v, err)
			}
		}
	})
	if envErr != nil {
		return cfg, 0, envErr
	}
	if err := fs.Parse(args); err != nil {
		return cfg, 0, err
	}
	if fs.NArg() > 0 {
		return cfg, 0, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return cfg, 0, fmt.Errorf("-log-level %q: %v", *logLevel, err)
	}
	cfg.Name = *name
	cfg.GossipAddr = *gossip
	cfg.RPCAddr = *rpc
	if *join != "" {
		for _, s := range strings.Split(*join, ",") {
			if s = strings.TrimSpace(s); s != "" {
				cfg.Seeds = append(cfg.Seeds, s)
			}
		}
	}
	cfg.Partitions = *partitions
	cfg.Backups = *backups
	cfg.Profile = cluster.Profile(*profile)
	if cfg.Profile != cluster.ProfileLAN && cfg.Profile != cluster.ProfileTest {
		return cfg, 0, fmt.Errorf("-profile %q: want lan or test", *profile)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, 0, err
	}
	return cfg, level, nil
}
