// Command gridbench drives a grid cluster through the client SDK and reports
// throughput and latency percentiles.
//
//	go run ./cmd/gridbench -addrs 127.0.0.1:7070 -clients 50 -depth 1 \
//	    -get-ratio 0.5 -value 100 -keys 100000 -duration 10s
//
// Each of -clients clients has its own connections; -depth requests are in
// flight per client at once (pipelining on the multiplexed connection).
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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/client"
)

type result struct {
	Clients   int     `json:"clients"`
	Depth     int     `json:"depth"`
	GetRatio  float64 `json:"get_ratio"`
	ValueSize int     `json:"value_size"`
	Keys      int     `json:"keys"`
	Ops       int64   `json:"ops"`
	Errors    int64   `json:"errors"`
	Seconds   float64 `json:"seconds"`
	OpsPerSec float64 `json:"ops_per_sec"`
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	P999us    float64 `json:"p999_us"`
	MaxUs     float64 `json:"max_us"`
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gridbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addrs := fs.String("addrs", "127.0.0.1:7070", "comma-separated RPC addresses of cluster members")
	clients := fs.Int("clients", 50, "concurrent clients, each with its own connections")
	depth := fs.Int("depth", 1, "requests in flight per client (pipelining)")
	ratio := fs.Float64("get-ratio", 0.5, "fraction of operations that are gets; the rest are puts")
	valueSize := fs.Int("value", 100, "value size in bytes")
	keys := fs.Int("keys", 100000, "key space")
	duration := fs.Duration("duration", 10*time.Second, "how long to run (ignored with -ops)")
	ops := fs.Int64("ops", 0, "total operations to run instead of a duration")
	preload := fs.Bool("preload", true, "write every key once before measuring, so gets find values")
	mapName := fs.String("map", "bench", "map to use")
	asJSON := fs.Bool("json", false, "print one JSON object instead of text")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *clients < 1 || *depth < 1 || *keys < 1 || *valueSize < 0 || *ratio < 0 || *ratio > 1 || (*ops <= 0 && *duration <= 0) {
		fmt.Fprintln(stderr, "gridbench: -clients, -depth and -keys must be positive, -get-ratio in [0,1], and -ops or -duration set")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	cfg := client.DefaultConfig()
	cfg.Addrs = strings.Split(*addrs, ",")
	cls := make([]*client.Client, *clients)
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
	value := make([]byte, *valueSize)
	for i := range value {
		value[i] = byte('a' + i%26)
	}
	keyName := func(i int) string { return fmt.Sprintf("key:%d", i) }
	if *preload {
		m := cls[0].Map(*mapName)
		for start := 0; start < *keys; start += 1000 {
			batch := map[string][]byte{}
			for i := start; i < min(start+1000, *keys); i++ {
				batch[keyName(i)] = value
			}
			pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := m.PutAll(pctx, batch)
			cancel()
			if err != nil {
				fmt.Fprintln(stderr, "gridbench: preload:", err)
				return 1
			}
		}
	}

	var (
		done    atomic.Int64
		errs    atomic.Int64
		mu      sync.Mutex
		samples []int64
		wg      sync.WaitGroup
	)
	runCtx := ctx
	var cancelRun context.CancelFunc = func() {}
	if *ops <= 0 {
		runCtx, cancelRun = context.WithTimeout(ctx, *duration)
	}
	defer cancelRun()
	start := time.Now()
	for ci := range *clients {
		m := cls[ci].Map(*mapName)
		for range *depth {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
				local := make([]int64, 0, 4096)
				for runCtx.Err() == nil {
					if *ops > 0 && done.Add(1) > *ops {
						break
					}
					k := keyName(rng.IntN(*keys))
					t0 := time.Now()
					var err error
					if rng.Float64() < *ratio {
						_, err = m.Get(runCtx, k)
						if errors.Is(err, client.ErrNotFound) {
							err = nil
						}
					} else {
						err = m.Put(runCtx, k, value)
					}
					if err != nil {
						if runCtx.Err() != nil {
							break
						}
						errs.Add(1)
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
	slices.Sort(samples)
	pct := func(q float64) float64 {
		if len(samples) == 0 {
			return 0
		}
		return float64(samples[min(len(samples)-1, int(q*float64(len(samples))))]) / 1e3
	}
	r := result{
		Clients: *clients, Depth: *depth, GetRatio: *ratio, ValueSize: *valueSize, Keys: *keys,
		Ops: int64(len(samples)), Errors: errs.Load(), Seconds: elapsed,
		OpsPerSec: float64(len(samples)) / elapsed,
		P50us:     pct(0.50), P99us: pct(0.99), P999us: pct(0.999),
	}
	if len(samples) > 0 {
		r.MaxUs = float64(samples[len(samples)-1]) / 1e3
	}
	if *asJSON {
		_ = json.NewEncoder(stdout).Encode(r)
	} else {
		fmt.Fprintf(stdout, "clients=%d depth=%d get-ratio=%.2f value=%dB keys=%d\n", r.Clients, r.Depth, r.GetRatio, r.ValueSize, r.Keys)
		fmt.Fprintf(stdout, "ops=%d errors=%d time=%.1fs throughput=%.0f ops/s\n", r.Ops, r.Errors, r.Seconds, r.OpsPerSec)
		fmt.Fprintf(stdout, "latency p50=%.0fµs p99=%.0fµs p99.9=%.0fµs max=%.0fµs\n", r.P50us, r.P99us, r.P999us, r.MaxUs)
	}
	if r.Errors > 0 {
		return 1
	}
	return 0
}
