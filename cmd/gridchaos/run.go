package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/client"
)

type regInput struct {
	Key   string
	Write bool
	Value string
}

type regOutput struct {
	Value   string
	Found   bool
	Unknown bool // a write whose outcome is unknown (it failed or timed out)
}

// registerModel is a map of independent registers, partitioned by key.
var registerModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(regInput).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		in, out, st := input.(regInput), output.(regOutput), state.(string)
		if in.Write {
			return true, in.Value // acknowledged or unknown: it may take effect
		}
		if !out.Found {
			return st == "", st
		}
		return out.Value == st, st
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(regInput), output.(regOutput)
		if in.Write {
			if out.Unknown {
				return fmt.Sprintf("put(%s, %s) -> ?", in.Key, in.Value)
			}
			return fmt.Sprintf("put(%s, %s)", in.Key, in.Value)
		}
		if !out.Found {
			return fmt.Sprintf("get(%s) -> none", in.Key)
		}
		return fmt.Sprintf("get(%s) -> %s", in.Key, out.Value)
	},
}

type recorder struct {
	mu      sync.Mutex
	ops     []porcupine.Operation
	acked   map[string]string // set workload: acknowledged writes
	success [][]int64         // per writer: end times of successful writes
	count   int
}

func (h *harness) now() int64 { return time.Since(h.t0).Nanoseconds() }

func (h *harness) workloads(ctx context.Context, rec *recorder, stop <-chan struct{}) (func(), error) {
	var addrs []string
	for _, p := range h.running() {
		addrs = append(addrs, p.rpc)
	}
	clients := make([]*client.Client, 3)
	for i := range clients {
		c, err := client.Dial(ctx, client.Config{Addrs: addrs, RefreshInterval: time.Second})
		if err != nil {
			return nil, err
		}
		clients[i] = c
	}
	var wg sync.WaitGroup
	rec.success = make([][]int64, h.cfg.Writers)
	for w := range h.cfg.Writers {
		// Register worker.
		wg.Add(2)
		go func() {
			defer wg.Done()
			m := clients[w%len(clients)].Map("reg")
			rng := randNew(h.cfg.Seed + uint64(w)*7919)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// Registers are renamed every 10 s (independent keys), so each
				// key's history stays short enough to check.
				window := time.Since(h.t0) / (10 * time.Second)
				in := regInput{Key: fmt.Sprintf("r%d-%d", rng.IntN(h.cfg.Registers), window), Write: rng.IntN(2) == 0}
				opCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
				call := h.now()
				var out regOutput
				var err error
				if in.Write {
					in.Value = strconv.Itoa(w*1_000_000 + i)
					err = m.Put(opCtx, in.Key, []byte(in.Value))
					out.Unknown = err != nil
				} else {
					var v []byte
					v, err = m.Get(opCtx, in.Key)
					switch {
					case errors.Is(err, client.ErrNotFound):
						err = nil
					case err == nil:
						out.Found, out.Value = true, string(v)
					}
				}
				ret := h.now()
				cancel()
				if err != nil && !in.Write {
					continue // a failed read has no effect
				}
				if out.Unknown {
					ret = math.MaxInt64 // may take effect at any time after its call
				}
				rec.mu.Lock()
				rec.ops = append(rec.ops, porcupine.Operation{ClientId: w, Input: in, Call: call, Output: out, Return: ret})
				rec.count++
				rec.mu.Unlock()
			}
		}()
		// Set worker.
		go func() {
			defer wg.Done()
			m := clients[(w+1)%len(clients)].Map("set")
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("s%d-%d", w, i)
				opCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
				err := m.Put(opCtx, key, []byte(key))
				cancel()
				rec.mu.Lock()
				rec.count++
				if err == nil {
					rec.acked[key] = key
					rec.success[w] = append(rec.success[w], h.now())
				}
				rec.mu.Unlock()
			}
		}()
	}
	return func() {
		wg.Wait()
		for _, c := range clients {
			c.Close()
		}
	}, nil
}

func (h *harness) run(ctx context.Context) (*Summary, error) {
	sum := &Summary{Seed: h.cfg.Seed, Nodes: h.cfg.Nodes, Faults: map[string]int{}}
	rec := &recorder{acked: map[string]string{}}
	stop := make(chan struct{})
	wait, err := h.workloads(ctx, rec, stop)
	if err != nil {
		return nil, err
	}
	var faultTimes []int64
	violation := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		sum.Violations = append(sum.Violations, msg)
		h.logf("VIOLATION: %s", msg)
	}
	deadline := time.Now().Add(h.cfg.Duration)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(time.Duration(500+h.rng.IntN(1500)) * time.Millisecond)
		kind, err := h.fault(ctx, &faultTimes)
		if err != nil {
			violation("%s: %v", kind, err)
			break
		}
		sum.Faults[kind]++
		if err := h.waitSafe(ctx, 60*time.Second); err != nil {
			violation("after %s the cluster was not safe within 60s: %v", kind, err)
			break
		}
	}
	// Heal: every paused process resumes, the initial membership is back.
	for _, p := range h.procs {
		if p.paused {
			h.signal(p, syscall.SIGCONT)
			p.paused = false
		}
	}
	for i := range h.cfg.Nodes {
		if p := h.slot(i); !p.running {
			if err := h.start(p); err != nil {
				return nil, err
			}
		}
	}
	if err := h.waitSafe(ctx, 60*time.Second); err != nil {
		violation("not converged after heal: %v", err)
	} else {
		sum.Converged = true
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wait()
	sum.Seconds = time.Since(h.t0).Seconds()

	// (a) linearizability of the registers.
	rec.mu.Lock()
	ops := slices.Clone(rec.ops)
	sum.Ops = rec.count
	acked := rec.acked
	rec.mu.Unlock()
	h.logf("checking linearizability of %d register operations", len(ops))
	checkStart := time.Now()
	res, info := porcupine.CheckOperationsVerbose(registerModel, ops, 3*time.Minute)
	h.logf("linearizability check: %v in %v", res, time.Since(checkStart).Round(time.Millisecond))
	switch res {
	case porcupine.Ok:
		sum.Linearizable = "yes"
	case porcupine.Illegal:
		sum.Linearizable = "no"
		violation("register history is not linearizable")
		h.artifacts(ops, info)
	default:
		sum.Linearizable = "unknown (checker timed out)"
	}
	// (b) every acknowledged write of the set workload is present.
	sum.AckedWrites = len(acked)
	h.logf("reading back %d acknowledged writes", len(acked))
	lost, err := h.checkSet(ctx, acked)
	if err != nil {
		violation("set check: %v", err)
	}
	sum.Lost = lost
	if lost > 0 {
		violation("%d acknowledged writes lost", lost)
	}
	// (d) every backup equals its primary.
	if err := h.checkReplicas(ctx); err != nil {
		violation("replicas differ: %v", err)
	} else {
		sum.ReplicasEqual = true
	}
	// Unavailability: per fault, the longest wait of any writer for its next
	// acknowledged write.
	var windows []float64
	for _, tf := range faultTimes {
		worst := 0.0
		for _, s := range rec.success {
			i, _ := slices.BinarySearch(s, tf)
			if i < len(s) {
				worst = max(worst, float64(s[i]-tf)/1e6)
			}
		}
		windows = append(windows, worst)
	}
	slices.Sort(windows)
	if n := len(windows); n > 0 {
		sum.UnavailP50ms = windows[n/2]
		sum.UnavailP99ms = windows[min(n-1, n*99/100)]
		sum.UnavailMaxms = windows[n-1]
	}
	sum.OK = len(sum.Violations) == 0
	if !sum.OK {
		h.saveLogs()
	}
	return sum, nil
}

// fault injects one fault and undoes it; it returns the fault's kind.
func (h *harness) fault(ctx context.Context, times *[]int64) (string, error) {
	live := h.running()
	pick := live[h.rng.IntN(len(live))]
	kinds := []string{"kill", "kill-primary", "pause", "leave", "join"}
	if h.cfg.Netns {
		kinds = append(kinds, "partition", "partition")
	}
	if h.cfg.Backups >= 2 && len(live) >= 5 {
		kinds = append(kinds, "kill-two", "kill-two")
	}
	kind := kinds[h.rng.IntN(len(kinds))]
	if kind == "join" && len(h.procs) > h.cfg.Nodes {
		kind = "kill" // the extra member is already there
	}
	switch kind {
	case "kill-primary":
		window := time.Since(h.t0) / (10 * time.Second)
		if p := h.primaryOf(ctx, fmt.Sprintf("r%d-%d", h.rng.IntN(h.cfg.Registers), window)); p != nil {
			pick = p
		}
		fallthrough
	case "kill":
		h.logf("SIGKILL %s (%s)", pick.name, kind)
		*times = append(*times, h.now())
		h.kill(pick)
		if err := h.waitSafe(ctx, 60*time.Second); err != nil {
			return kind, fmt.Errorf("no failover after killing %s: %v", pick.name, err)
		}
		h.logf("restart %s", pick.name)
		return kind, h.start(pick)
	case "kill-two":
		// Two failures at once, which 2 backups must survive. At most one
		// raft voter: losing two of three voters freezes the table by
		// design (docs/operations.md), which is not this fault.
		var cv clusterView
		_ = getJSON(ctx, live[0].httpURL+"/v1/cluster", &cv)
		var pair []*proc
		voters := 0
		for _, o := range h.rng.Perm(len(live)) {
			p := live[o]
			isVoter := slices.Contains(cv.Voters, p.name)
			if isVoter && voters == 1 {
				continue
			}
			pair = append(pair, p)
			if isVoter {
				voters++
			}
			if len(pair) == 2 {
				break
			}
		}
		h.logf("SIGKILL %s and %s at once", pair[0].name, pair[1].name)
		*times = append(*times, h.now())
		for _, p := range pair {
			h.signal(p, syscall.SIGKILL)
		}
		for _, p := range pair {
			<-p.done
			p.running, p.paused = false, false
		}
		if err := h.waitSafe(ctx, 60*time.Second); err != nil {
			return kind, fmt.Errorf("no failover after killing %s and %s: %v", pair[0].name, pair[1].name, err)
		}
		for _, p := range pair {
			h.logf("restart %s", p.name)
			if err := h.start(p); err != nil {
				return kind, err
			}
		}
		return kind, nil
	case "pause":
		d := time.Duration(2000+h.rng.IntN(2000)) * time.Millisecond
		h.logf("SIGSTOP %s for %v", pick.name, d)
		*times = append(*times, h.now())
		h.signal(pick, syscall.SIGSTOP)
		pick.paused = true
		time.Sleep(d)
		h.signal(pick, syscall.SIGCONT)
		pick.paused = false
		h.logf("SIGCONT %s", pick.name)
		return kind, nil
	case "leave":
		h.logf("SIGTERM %s (graceful leave)", pick.name)
		*times = append(*times, h.now())
		h.signal(pick, syscall.SIGTERM)
		select {
		case <-pick.done:
		case <-time.After(30 * time.Second):
			return kind, fmt.Errorf("%s did not exit within 30s of SIGTERM", pick.name)
		}
		pick.running = false
		if err := h.waitSafe(ctx, 60*time.Second); err != nil {
			return kind, fmt.Errorf("not safe after %s left: %v", pick.name, err)
		}
		h.logf("restart %s", pick.name)
		return kind, h.start(pick)
	case "partition":
		// Cut a minority (1 .. (n-1)/2 members) off for 4-7 s: past failure
		// detection and the lease, so the majority takes over its primaries.
		k := 1 + h.rng.IntN(max(1, (len(live)-1)/2))
		order := h.rng.Perm(len(live))
		var idx []int
		var names []string
		for _, o := range order[:k] {
			idx = append(idx, live[o].idx)
			names = append(names, live[o].name)
		}
		d := time.Duration(4000+h.rng.IntN(3000)) * time.Millisecond
		h.logf("partition %v from the rest for %v", names, d)
		*times = append(*times, h.now())
		if err := netSplit(idx); err != nil {
			return kind, err
		}
		time.Sleep(d)
		h.logf("heal partition of %v", names)
		return kind, netHeal(idx)
	case "join":
		p := h.slot(len(h.procs))
		h.logf("join %s", p.name)
		*times = append(*times, h.now())
		return kind, h.start(p)
	}
	return kind, nil
}

// primaryOf returns the process that is primary of key's partition.
func (h *harness) primaryOf(ctx context.Context, key string) *proc {
	for _, p := range h.running() {
		var cv clusterView
		if err := getJSON(ctx, p.httpURL+"/v1/cluster", &cv); err != nil || len(cv.Partitions) == 0 {
			continue
		}
		owner := cv.Partitions[affinity.Partition(key, len(cv.Partitions))].Primary
		for _, q := range h.running() {
			if q.name == owner {
				return q
			}
		}
	}
	return nil
}

func (h *harness) checkSet(ctx context.Context, acked map[string]string) (int, error) {
	var addrs []string
	for _, p := range h.running() {
		addrs = append(addrs, p.rpc)
	}
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c, err := client.Dial(cctx, client.Config{Addrs: addrs})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	keys := make([]string, 0, len(acked))
	for k := range acked {
		keys = append(keys, k)
	}
	got, err := c.Map("set").GetAll(cctx, keys)
	if err != nil {
		return 0, err
	}
	lost := 0
	for k, v := range acked {
		if string(got[k]) != v {
			lost++
			if lost <= 5 {
				h.logf("lost: %s", k)
			}
		}
	}
	return lost, nil
}

type partInfo struct {
	Role    string `json:"role"`
	LSN     uint64 `json:"lsn"`
	Entries int    `json:"entries"`
	Digest  uint64 `json:"digest"`
}

func (h *harness) checkReplicas(ctx context.Context) error {
	live := h.running()
	var cv clusterView
	if err := getJSON(ctx, live[0].httpURL+"/v1/cluster", &cv); err != nil {
		return err
	}
	infos := map[string][]partInfo{}
	for _, p := range live {
		var pi []partInfo
		if err := getJSON(ctx, p.httpURL+"/v1/partitions", &pi); err != nil {
			return err
		}
		infos[p.name] = pi
	}
	for id, part := range cv.Partitions {
		pp := infos[part.Primary]
		if pp == nil || pp[id].Role != "primary" {
			return fmt.Errorf("partition %d: %s is not primary", id, part.Primary)
		}
		for _, b := range part.Backups {
			bp := infos[b]
			if bp == nil {
				return fmt.Errorf("partition %d: backup %s not live", id, b)
			}
			if bp[id].LSN != pp[id].LSN || bp[id].Entries != pp[id].Entries || bp[id].Digest != pp[id].Digest {
				return fmt.Errorf("partition %d: backup %s %+v, primary %s %+v", id, b, bp[id], part.Primary, pp[id])
			}
		}
	}
	return nil
}

func (h *harness) artifacts(ops []porcupine.Operation, info porcupine.LinearizationInfo) {
	_ = os.MkdirAll(h.cfg.Out, 0o755)
	if b, err := json.MarshalIndent(ops, "", " "); err == nil {
		_ = os.WriteFile(filepath.Join(h.cfg.Out, "history.json"), b, 0o644)
	}
	path := filepath.Join(h.cfg.Out, "linearizability.html")
	if err := porcupine.VisualizePath(registerModel, info, path); err == nil {
		h.logf("porcupine visualization: %s", path)
	}
}

func (h *harness) saveLogs() {
	_ = os.MkdirAll(h.cfg.Out, 0o755)
	for _, p := range h.procs {
		if b, err := os.ReadFile(p.logPath); err == nil {
			_ = os.WriteFile(filepath.Join(h.cfg.Out, p.name+".log"), b, 0o644)
		}
	}
	h.logf("node logs in %s", h.cfg.Out)
}
