// Command gridnode runs one grid member.
//
// With no flags it runs a single node on loopback that serves at once:
//
//	go run ./cmd/gridnode
//
// Every flag can also be set as GRID_<FLAG> (for example GRID_JOIN) and as
// a key of the YAML file given by -config; precedence is flag > env > file >
// default. SIGINT/SIGTERM leave the cluster gracefully (primaries and
// replicas are handed over first, bounded by -leave-timeout); a second
// signal exits at once.
//
// HTTP (-http): GET /healthz, GET /v1/cluster (JSON), GET /v1/functions
// (the functions callers may run, JSON), GET /metrics (Prometheus), and
// /debug/pprof/ with -pprof.
//
// Functions: every gridnode registers compute's built-ins (counter.add,
// cas, list.append, agg.map, agg.key, echo; filters key.prefix,
// key.glob), callable from the client SDK and from RESP (FCALL).
//
// Redis protocol (-resp host:port, off by default): redis-cli and every
// Redis client work against the node's maps; see docs/redis.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/collocate/grid/cluster"
	"github.com/collocate/grid/compute"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/process"
	"github.com/collocate/grid/process/builtin"
	"github.com/collocate/grid/resp"
	"github.com/collocate/grid/txn/txnnode"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.yaml.in/yaml/v3"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	opts, err := parse(args, os.Getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "gridnode:", err)
		return 2
	}
	cfg := opts.cfg
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: opts.level}))
	cfg.Logger = log
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg.Registerer = reg
	funcs := compute.NewRegistry()
	if err := compute.RegisterBuiltins(funcs); err != nil {
		fmt.Fprintln(stderr, "gridnode:", err)
		return 1
	}
	cfg.Functions = funcs // installed before the node serves
	cfg.InternalSteps = txnnode.Steps()
	var httpLn net.Listener
	if opts.http != "" {
		if httpLn, err = net.Listen("tcp", opts.http); err != nil {
			fmt.Fprintln(stderr, "gridnode: -http:", err)
			return 1
		}
		cfg.HTTPAddr = httpLn.Addr().String()
	}

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
	rt, err := startProcessors(node, opts.processors, opts.linger, log, reg)
	if err != nil {
		node.Kill()
		fmt.Fprintln(stderr, "gridnode: -processors:", err)
		return 1
	}
	defer rt.Close()
	tcfg := txnnode.DefaultConfig()
	tcfg.Logger = log
	txs, err := txnnode.Start(node, tcfg)
	if err != nil {
		node.Kill()
		fmt.Fprintln(stderr, "gridnode: transactions:", err)
		return 1
	}
	defer txs.Close()
	var srv *http.Server
	if httpLn != nil {
		srv = &http.Server{Handler: newHTTPHandler(node, reg, funcs, rt, txs, opts.pprof), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("http server", "err", err)
			}
		}()
	}
	var rs *resp.Server
	if opts.resp != "" {
		rcfg := respConfig(opts.resp, opts.respMap, node.Config().MaxValueSize)
		rcfg.Logger = log
		if rs, err = resp.Listen(node, rcfg); err != nil {
			fmt.Fprintln(stderr, "gridnode: -resp:", err)
			_ = node.Close(ctx)
			return 1
		}
	}
	log.Info("serving", "name", node.Name(), "rpc", node.RPCAddr(), "gossip", node.GossipAddr(),
		"http", cfg.HTTPAddr, "resp", respAddr(rs), "partitions", cfg.Partitions, "backups", cfg.Backups)

	<-ctx.Done()
	stop() // a second signal now kills the process
	if rs != nil {
		// Redis clients reconnect elsewhere while this node hands its data over.
		_ = rs.Close()
	}
	// Processors stop before the node hands its partitions over; their
	// new primaries go on from the last committed positions.
	rt.Close()
	_ = txs.Close()
	log.Info("leaving the cluster", "timeout", opts.leaveTimeout)
	leaveCtx, cancel := context.WithTimeout(context.Background(), opts.leaveTimeout)
	defer cancel()
	if err := node.Close(leaveCtx); err != nil {
		log.Warn("leave", "err", err)
	}
	if srv != nil {
		_ = srv.Close()
	}
	log.Info("left")
	return 0
}

// startProcessors starts the node's processor runtime with the built-in
// sets named in list (the runtime runs with none too: operations and
// status answer for an empty set).
func startProcessors(node *grid.Node, list string, linger time.Duration, log *slog.Logger, reg prometheus.Registerer) (*process.Runtime, error) {
	pcfg := process.DefaultConfig()
	pcfg.Logger, pcfg.Registerer = log, reg
	rt, err := process.Start(node, pcfg)
	if err != nil {
		return nil, err
	}
	if err := builtin.Register(rt, list, linger); err != nil {
		rt.Close()
		return nil, err
	}
	return rt, nil
}

// respConfig is the Redis endpoint's config: a bulk argument may be as
// large as the grid's largest entry (-max-value).
func respConfig(addr, defaultMap string, maxValue int) resp.Config {
	rc := resp.DefaultConfig()
	rc.Addr, rc.DefaultMap = addr, defaultMap
	if maxValue > 0 {
		rc.MaxBulk = maxValue
		rc.MaxQueryBuffer = max(rc.MaxQueryBuffer, maxValue+128<<10)
	}
	return rc
}

func respAddr(rs *resp.Server) string {
	if rs == nil {
		return ""
	}
	return rs.Addr().String()
}

type options struct {
	cfg          grid.Config
	resp         string
	respMap      string
	level        slog.Level
	http         string
	pprof        bool
	leaveTimeout time.Duration
	processors   string
	linger       time.Duration
}

// parse merges flags over GRID_* environment variables over the -config
// YAML file over defaults.
func parse(args []string, getenv func(string) string, out io.Writer) (options, error) {
	cfg := grid.DefaultConfig()
	var o options
	fs := flag.NewFlagSet("gridnode", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.String("config", "", "YAML file whose keys are these flag names (flag > env > file > default)")
	name := fs.String("name", "", "member name, unique in the cluster (default: node-<random>)")
	gossip := fs.String("gossip", "127.0.0.1:7946", "gossip (serf) host:port, UDP and TCP")
	rpc := fs.String("rpc", "127.0.0.1:7070", "RPC host:port for clients, peers and raft")
	httpAddr := fs.String("http", "127.0.0.1:7080", "HTTP host:port for /healthz, /v1/cluster, /v1/functions, /metrics; empty disables")
	join := fs.String("join", "", "comma-separated gossip addresses of members to join; empty starts a new cluster")
	partitions := fs.Int("partitions", cfg.Partitions, "partition count (every member must agree)")
	backups := fs.Int("backups", cfg.Backups, "synchronous backups per partition")
	maxValue := fs.Int("max-value", cfg.MaxValueSize, "largest entry in bytes (map, key and value); larger writes fail with ErrValueTooLarge (at most 16 MiB with the default 64 MiB frames)")
	profile := fs.String("profile", string(cluster.ProfileLAN), "failure detection profile: lan or test")
	lease := fs.Duration("lease", 0, "read lease, and how long a silent member waits before it is failed over (0: 1s); longer for slow or lossy networks")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	pprofOn := fs.Bool("pprof", false, "serve /debug/pprof/ on the HTTP address")
	leave := fs.Duration("leave-timeout", 20*time.Second, "how long a graceful leave may take to hand data over")
	respFlag := fs.String("resp", "", "Redis protocol host:port (for example 127.0.0.1:6379); empty disables")
	respMap := fs.String("resp-map", resp.DefaultConfig().DefaultMap, "map that Redis connections use before SELECT")
	journalRecs := fs.Int("journal-records", cfg.JournalRecords, "records each partition's journal retains (listeners resume and replicas catch up by tail within it)")
	journalBytes := fs.Int("journal-bytes", cfg.JournalBytes, "bytes each partition's journal retains at most")
	streamRecs := fs.Int("stream-records", cfg.StreamRecords, "events each stream retains per partition (never dropping one a consumer group or processor has not committed: publishers get ErrStreamFull)")
	streamBytes := fs.Int("stream-bytes", cfg.StreamBytes, "bytes each stream retains per partition at most")
	linger := fs.Duration("processor-linger", 0, "least time between two records of a built-in processor at a partition once caught up: arrivals share records (fewer replicated records, up to this much more latency); 0: none")
	procs := fs.String("processors", "", "built-in event processor sets to run, comma-separated ("+strings.Join(builtin.Names(), ", ")+"); every member must run the same")

	envKey := func(name string) string { return "GRID_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_")) }
	// The config file's path may come from a flag or the environment.
	path := getenv(envKey("config"))
	for i, a := range args {
		for _, p := range []string{"-config", "--config"} {
			if a == p && i+1 < len(args) {
				path = args[i+1]
			} else if v, ok := strings.CutPrefix(a, p+"="); ok {
				path = v
			}
		}
	}
	if path != "" {
		if err := applyFile(fs, path); err != nil {
			return o, err
		}
	}
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		key := envKey(f.Name)
		if v := getenv(key); v != "" && f.Name != "config" {
			if err := f.Value.Set(v); err != nil && envErr == nil {
				envErr = fmt.Errorf("%s=%q: %v", key, v, err)
			}
		}
	})
	if envErr != nil {
		return o, envErr
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err := o.level.UnmarshalText([]byte(*logLevel)); err != nil {
		return o, fmt.Errorf("-log-level %q: %v", *logLevel, err)
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
	cfg.MaxValueSize = *maxValue
	cfg.JournalRecords, cfg.JournalBytes = *journalRecs, *journalBytes
	cfg.StreamRecords, cfg.StreamBytes = *streamRecs, *streamBytes
	cfg.Profile = cluster.Profile(*profile)
	cfg.LeaseDuration = *lease
	if cfg.Profile != cluster.ProfileLAN && cfg.Profile != cluster.ProfileTest {
		return o, fmt.Errorf("-profile %q: want lan or test", *profile)
	}
	if *httpAddr != "" {
		if _, _, err := net.SplitHostPort(*httpAddr); err != nil {
			return o, fmt.Errorf("-http %q: %v", *httpAddr, err)
		}
	}
	if *respFlag != "" {
		rc := respConfig(*respFlag, *respMap, *maxValue)
		if err := rc.Validate(); err != nil {
			return o, fmt.Errorf("-resp: %v", err)
		}
	}
	if *leave <= 0 {
		return o, fmt.Errorf("-leave-timeout %v: must be positive", *leave)
	}
	if err := cfg.Validate(); err != nil {
		return o, err
	}
	o.cfg, o.http, o.pprof, o.leaveTimeout = cfg, *httpAddr, *pprofOn, *leave
	o.resp, o.respMap = *respFlag, *respMap
	if err := builtin.Valid(*procs); err != nil {
		return o, fmt.Errorf("-processors: %v", err)
	}
	o.processors = *procs
	if *linger < 0 {
		return o, fmt.Errorf("-processor-linger %v: must not be negative", *linger)
	}
	o.linger = *linger
	return o, nil
}

// applyFile sets flags from a YAML file of flag-name keys. Lists (join) may
// be YAML sequences or comma-separated strings.
func applyFile(fs *flag.FlagSet, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("-config: %w", err)
	}
	var kv map[string]any
	if err := yaml.Unmarshal(data, &kv); err != nil {
		return fmt.Errorf("-config %s: %w", path, err)
	}
	for k, v := range kv {
		f := fs.Lookup(k)
		if f == nil || k == "config" {
			return fmt.Errorf("-config %s: unknown key %q", path, k)
		}
		var val string
		switch x := v.(type) {
		case []any:
			parts := make([]string, len(x))
			for i, e := range x {
				parts[i] = fmt.Sprint(e)
			}
			val = strings.Join(parts, ",")
		case nil:
			val = ""
		default:
			val = fmt.Sprint(x)
		}
		if err := f.Value.Set(val); err != nil {
			return fmt.Errorf("-config %s: %s: %v", path, k, err)
		}
	}
	return nil
}
