// Command gridbench drives a grid cluster through the client SDK and reports
// throughput, latency percentiles and, given the servers' pids, their CPU
// time per operation.
//
//	go run ./cmd/gridbench -addrs 127.0.0.1:7070 -clients 50 -depth 1 \
//	    -get-ratio 0.5 -value 100 -keys 100000 -duration 10s
//
// Each of -clients clients has its own connections; -depth requests are in
// flight per client at once (pipelining on the multiplexed connection).
//
// -workload picks what an operation is: kv (gets and puts of single keys),
// or the total of a customer's -lines order lines (-keys customers, the
// lines collocated with their customer): order-collocated sums them at the
// customer's primary with the built-in agg.key, order-fetched fetches them
// with GetAll and sums them here. -server-pids (gridnode processes on this
// machine) adds their user+system CPU time per operation, read from
// /proc/PID/stat before and after the measured run.
//
// publish publishes -value bytes to stream -map with a random key of -keys
// per operation; consume publishes -keys events to a new stream first, then
// measures one consumer group reading them (partitions split over the
// clients; -duration caps it).
//
// process-single and process-chain measure gridnode's built-in event
// processors (gridnode -processors chain,single): -keys events published
// by the writers, until every member's GET /v1/processors (-http: every
// member's HTTP address) shows them all handled; -drain publishes them
// with the processors paused and times the drain alone (process.go).
//
// txn-cross and txn-single run transactions (package txn): each operation
// moves 1 between two of -keys accounts with txn.Run, reading both and
// writing both, the two in different partitions (two-phase commit) or
// sharing an affinity key (one step); -txn-reads=false writes both without
// reading them; -txn-locking runs them with txn.Options.Locking (each Get
// locks its key at once) (txn.go).
package main

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
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/client"
)

type result struct {
	Workload  string  `json:"workload"`
	Clients   int     `json:"clients"`
	Depth     int     `json:"depth"`
	GetRatio  float64 `json:"get_ratio"`
	ValueSize int     `json:"value_size"`
	Keys      int     `json:"keys"`
	Lines     int     `json:"lines,omitempty"`
	Ops       int64   `json:"ops"`
	Errors    int64   `json:"errors"`
	Seconds   float64 `json:"seconds"`
	OpsPerSec float64 `json:"ops_per_sec"`
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	P999us    float64 `json:"p999_us"`
	MaxUs     float64 `json:"max_us"`

	// TxnLocking: txn-* ran with txn.Options.Locking.
	TxnLocking bool `json:"txn_locking,omitempty"`
	// ServerCPUusPerOp is the servers' CPU time (user+system, all
	// -server-pids) per operation, in µs; 0 without -server-pids.
	ServerCPUusPerOp float64 `json:"server_cpu_us_per_op,omitempty"`
	FirstError       string  `json:"first_error,omitempty"`

	// process-* workloads (process.go). Ops are the events, OpsPerSec
	// the events handled per second over the measured window (end to
	// end, or the drain), the latency percentiles the first stage's
	// (end to end only).
	Drain         bool    `json:"drain,omitempty"`
	PublishPerSec float64 `json:"publish_per_sec,omitempty"`
	// Records is the replicated records every partition wrote in the
	// measured window; EventsPerRecord (process-single) the events per
	// processor record (the Publish records not counted).
	Records         uint64  `json:"records,omitempty"`
	EventsPerRecord float64 `json:"events_per_record,omitempty"`
	// MaxLagSeconds is the age of the oldest unhandled event, the most
	// any poll saw.
	MaxLagSeconds float64 `json:"max_lag_seconds,omitempty"`
	// PublishCPUusPerEvent (-drain) is the servers' CPU per event while
	// the events were published, the processors paused.
	PublishCPUusPerEvent float64 `json:"publish_server_cpu_us_per_event,omitempty"`
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// options are the parsed flags.
type options struct {
	addrs    string
	clients  int
	depth    int
	duration time.Duration
	ops      int64
	preload  bool
	asJSON   bool
	pids     []int
	w        workload

	cpuProfile string // a file for the client's CPU profile of the measured run

	httpAddrs []string      // process-*: every member's HTTP address
	drain     bool          // process-*: time the drain of a paused backlog
	poll      time.Duration // process-*: status poll interval
}

func parseFlags(args []string, stderr io.Writer) (*options, int) {
	fs := flag.NewFlagSet("gridbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &options{}
	fs.StringVar(&o.addrs, "addrs", "127.0.0.1:7070", "comma-separated RPC addresses of cluster members")
	fs.IntVar(&o.clients, "clients", 50, "concurrent clients, each with its own connections")
	fs.IntVar(&o.depth, "depth", 1, "requests in flight per client (pipelining)")
	fs.StringVar(&o.w.name, "workload", workloadKV, "kv, order-collocated, order-fetched, publish (to stream -map), consume (-keys events published first, then read by one consumer group over the clients), process-single or process-chain (-keys events through gridnode's built-in processors), txn-cross or txn-single (transfers between two of -keys accounts in different partitions, or sharing an affinity key)")
	fs.BoolVar(&o.w.txnReads, "txn-reads", true, "txn-*: read both accounts before writing them (false: a transactional 2-key put of -value bytes)")
	fs.BoolVar(&o.w.txnAdds, "txn-adds", false, "txn-*: transfer with AddAtLeast(from, -1, 0) and Add(to, 1): no reads, the balance checked where it lives (overrides -txn-reads)")
	fs.BoolVar(&o.w.txnLocking, "txn-locking", false, "txn-*: pessimistic transactions (txn.Options.Locking: each Get locks its key at once) instead of optimistic ones")
	fs.Float64Var(&o.w.ratio, "get-ratio", 0.5, "kv: fraction of operations that are gets; the rest are puts")
	valueSize := fs.Int("value", 100, "kv: value size in bytes")
	fs.IntVar(&o.w.keys, "keys", 100000, "key space (kv, publish), customers (order-*) or events (consume)")
	fs.IntVar(&o.w.lines, "lines", 100, "order-*: order lines per customer")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "how long to run (ignored with -ops)")
	fs.Int64Var(&o.ops, "ops", 0, "total operations to run instead of a duration")
	fs.BoolVar(&o.preload, "preload", true, "write every key once before measuring, so reads find values (txn-*: open every account; without it they must exist)")
	fs.StringVar(&o.w.mapName, "map", "bench", "kv: map to use")
	fs.BoolVar(&o.asJSON, "json", false, "print one JSON object instead of text")
	httpList := fs.String("http", "", "process-*: comma-separated HTTP addresses of every member (GET /v1/processors, pause and resume)")
	fs.BoolVar(&o.drain, "drain", false, "process-*: publish with the first stage paused, then time the drain alone")
	fs.DurationVar(&o.poll, "poll", 100*time.Millisecond, "process-*: how often to poll the members' processor status (the latency's resolution)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write this process's CPU profile of the measured run (not the preload) to the file")
	pids := fs.String("server-pids", "", "comma-separated pids of the servers (on this machine) whose CPU time per operation to report")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, 0
		}
		return nil, 2
	}
	var err error
	if o.pids, err = parsePids(*pids); err != nil {
		fmt.Fprintln(stderr, "gridbench:", err)
		return nil, 2
	}
	if *httpList != "" {
		o.httpAddrs = strings.Split(*httpList, ",")
	}
	if o.w.processes() && (len(o.httpAddrs) == 0 || o.poll <= 0 || o.duration <= 0) {
		fmt.Fprintln(stderr, "gridbench: process-* workloads need -http (every member), a positive -poll and -duration (the cap)")
		return nil, 2
	}
	if o.clients < 1 || o.depth < 1 || o.w.keys < 1 || *valueSize < 0 || o.w.ratio < 0 || o.w.ratio > 1 || (o.ops <= 0 && o.duration <= 0) {
		fmt.Fprintln(stderr, "gridbench: -clients, -depth and -keys must be positive, -get-ratio in [0,1], and -ops or -duration set")
		return nil, 2
	}
	if err := o.w.validate(); err != nil {
		fmt.Fprintln(stderr, "gridbench:", err)
		return nil, 2
	}
	o.w.value = make([]byte, *valueSize)
	for i := range o.w.value {
		o.w.value[i] = byte('a' + i%26)
	}
	return o, -1
}

func run(args []string, stdout, stderr io.Writer) int {
	o, code := parseFlags(args, stderr)
	if o == nil {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	cfg := client.DefaultConfig()
	cfg.Addrs = strings.Split(o.addrs, ",")
	cls := make([]*client.Client, o.clients)
	for i := range cls {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := client.Dial(dctx, cfg)
		cancel()
		if err != nil {
			fmt.Fprintln(stderr, "gridbench:", err)
			return 1
		}
		defer c.Close()
		cls[i] = c
	}
	timeout := func(ctx context.Context) (context.Context, context.CancelFunc) {
		return context.WithTimeout(ctx, 30*time.Second)
	}
	if (o.preload && o.w.name != workloadPublish && o.w.name != workloadConsume && !o.w.processes()) || o.w.name == workloadFetch {
		if err := o.w.preload(ctx, cls[0], timeout); err != nil {
			fmt.Fprintln(stderr, "gridbench: preload:", err)
			return 1
		}
	}
	measureFn := measure
	switch {
	case o.w.name == workloadConsume:
		measureFn = measureConsume
	case o.w.processes():
		measureFn = measureProcess
	}
	stopProfile, err := startProfile(o.cpuProfile)
	if err != nil {
		fmt.Fprintln(stderr, "gridbench:", err)
		return 1
	}
	r, err := measureFn(ctx, o, cls)
	stopProfile()
	if err != nil {
		fmt.Fprintln(stderr, "gridbench:", err)
		return 1
	}
	report(stdout, o, r)
	if r.Errors > 0 {
		return 1
	}
	return 0
}

// startProfile starts a CPU profile into path (none if empty); the
// returned function stops it.
func startProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// measure runs the workload and returns its figures.
func measure(ctx context.Context, o *options, cls []*client.Client) (result, error) {
	var (
		done     atomic.Int64
		errs     atomic.Int64
		firstErr atomic.Value
		mu       sync.Mutex
		samples  []int64
		wg       sync.WaitGroup
	)
	runCtx := ctx
	var cancelRun context.CancelFunc = func() {}
	if o.ops <= 0 {
		runCtx, cancelRun = context.WithTimeout(ctx, o.duration)
	}
	defer cancelRun()
	cpu0, err := serverCPU(o.pids)
	if err != nil {
		return result{}, err
	}
	start := time.Now()
	for ci := range o.clients {
		for range o.depth {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
				local := make([]int64, 0, 4096)
				for runCtx.Err() == nil {
					if o.ops > 0 && done.Add(1) > o.ops {
						break
					}
					t0 := time.Now()
					if err := o.w.op(runCtx, cls[ci], rng); err != nil {
						if runCtx.Err() != nil {
							break
						}
						errs.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
						continue
					}
					local = append(local, time.Since(t0).Nanoseconds())
				}
				mu.Lock()
				samples = append(samples, local...)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	cpu1, err := serverCPU(o.pids)
	if err != nil {
		return result{}, err
	}
	r := summarize(o, samples, elapsed)
	r.Errors = errs.Load()
	if s, ok := firstErr.Load().(string); ok {
		r.FirstError = s
	}
	if len(o.pids) > 0 && r.Ops > 0 {
		r.ServerCPUusPerOp = float64(cpu1-cpu0) * (1e6 / clockTicks) / float64(r.Ops)
	}
	return r, nil
}

func summarize(o *options, samples []int64, elapsed float64) result {
	slices.Sort(samples)
	pct := func(q float64) float64 {
		if len(samples) == 0 {
			return 0
		}
		return float64(samples[min(len(samples)-1, int(q*float64(len(samples))))]) / 1e3
	}
	r := result{
		Workload: o.w.name, Clients: o.clients, Depth: o.depth, GetRatio: o.w.ratio, ValueSize: len(o.w.value), Keys: o.w.keys,
		Ops: int64(len(samples)), Seconds: elapsed,
		OpsPerSec: float64(len(samples)) / elapsed,
		P50us:     pct(0.50), P99us: pct(0.99), P999us: pct(0.999),
	}
	switch o.w.name {
	case workloadCollocate, workloadFetch:
		r.Lines = o.w.lines
	case workloadConsume:
		r.GetRatio = 0
	case workloadPublish, workloadProcSingle, workloadProcChain:
		r.GetRatio = 0
	case workloadTxnCross, workloadTxnSingle:
		r.GetRatio = 0
		r.TxnLocking = o.w.txnLocking
	}
	if len(samples) > 0 {
		r.MaxUs = float64(samples[len(samples)-1]) / 1e3
	}
	return r
}

func report(stdout io.Writer, o *options, r result) {
	if o.asJSON {
		_ = json.NewEncoder(stdout).Encode(r)
		return
	}
	fmt.Fprintf(stdout, "workload=%s clients=%d depth=%d get-ratio=%.2f value=%dB keys=%d lines=%d\n", r.Workload, r.Clients, r.Depth, r.GetRatio, r.ValueSize, r.Keys, r.Lines)
	if o.w.transactions() {
		fmt.Fprintf(stdout, "txn-reads=%v txn-locking=%v\n", o.w.txnReads, r.TxnLocking)
	}
	fmt.Fprintf(stdout, "ops=%d errors=%d time=%.1fs throughput=%.0f ops/s\n", r.Ops, r.Errors, r.Seconds, r.OpsPerSec)
	if o.w.processes() {
		reportProcess(stdout, o, r)
	} else {
		fmt.Fprintf(stdout, "latency p50=%.0fµs p99=%.0fµs p99.9=%.0fµs max=%.0fµs\n", r.P50us, r.P99us, r.P999us, r.MaxUs)
	}
	if r.ServerCPUusPerOp > 0 {
		fmt.Fprintf(stdout, "server cpu=%.1fµs/op\n", r.ServerCPUusPerOp)
	}
	if r.FirstError != "" {
		fmt.Fprintf(stdout, "first error: %s\n", r.FirstError)
	}
}

func reportProcess(stdout io.Writer, o *options, r result) {
	mode := "end to end (first publish to last handled)"
	if r.Drain {
		mode = "drain (resume to last handled, published while paused)"
	}
	fmt.Fprintf(stdout, "%s; publish %.0f events/s\n", mode, r.PublishPerSec)
	perRecord := ""
	if r.EventsPerRecord > 0 {
		perRecord = " events/processor record=" + strconv.FormatFloat(r.EventsPerRecord, 'f', 1, 64)
	}
	fmt.Fprintf(stdout, "records=%d (%.2f per event)%s max lag=%.2fs\n", r.Records, float64(r.Records)/float64(max(r.Ops, 1)), perRecord, r.MaxLagSeconds)
	if r.Drain && r.PublishCPUusPerEvent > 0 {
		fmt.Fprintf(stdout, "publishing (processors paused): server cpu=%.1fµs/event\n", r.PublishCPUusPerEvent)
	}
	if !r.Drain {
		fmt.Fprintf(stdout, "first-stage latency (publish call to a poll seeing it handled, poll %v) p50=%.1fms p99=%.1fms max=%.1fms\n", o.poll, r.P50us/1e3, r.P99us/1e3, r.MaxUs/1e3)
	}
}
