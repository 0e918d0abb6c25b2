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
	"time"

	"github.com/anishathalye/porcupine"
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

// registerLog is the history of the register workload.
type registerLog struct {
	mu  sync.Mutex
	ops []porcupine.Operation
}

func (l *registerLog) add(op porcupine.Operation) {
	l.mu.Lock()
	l.ops = append(l.ops, op)
	l.mu.Unlock()
}

// registerKey names register r in the current 10 s window: registers are
// renamed (independent keys) so that each key's history stays short enough
// to check.
func (h *harness) registerKey(r int) string {
	return fmt.Sprintf("r%d-%d", r, time.Since(h.t0)/(10*time.Second))
}

// registerWorker reads and writes random registers until the stop.
func (h *harness) registerWorker(ctx context.Context, w *workloads, m client.Map, id int, pr *progress) {
	rng := randNew(h.cfg.Seed + uint64(id)*7919)
	for i := 0; !w.stopped(); i++ {
		in := regInput{Key: h.registerKey(rng.IntN(h.cfg.Registers)), Write: rng.IntN(2) == 0}
		opCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
		call := h.now()
		var out regOutput
		var err error
		if in.Write {
			in.Value = strconv.Itoa(id*1_000_000 + i)
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
		pr.ops++
		switch {
		case err != nil && !in.Write:
			continue // a failed read has no effect
		case out.Unknown:
			ret = math.MaxInt64 // may take effect at any time after its call
		case in.Write:
			pr.writes = append(pr.writes, ret)
		default:
			pr.reads = append(pr.reads, ret)
		}
		w.register.add(porcupine.Operation{ClientId: id, Input: in, Call: call, Output: out, Return: ret})
	}
}

// checkRegisters runs porcupine on the history; a checker timeout is a
// failure (nothing was checked).
func (h *harness) checkRegisters(l *registerLog, sum *Summary, violation func(string, ...any)) {
	l.mu.Lock()
	ops := slices.Clone(l.ops)
	l.mu.Unlock()
	h.logf("checking linearizability of %d register operations", len(ops))
	start := time.Now()
	res, info := porcupine.CheckOperationsVerbose(registerModel, ops, 3*time.Minute)
	h.logf("linearizability check: %v in %v", res, time.Since(start).Round(time.Millisecond))
	switch res {
	case porcupine.Ok:
		sum.Linearizable = "yes"
	case porcupine.Illegal:
		sum.Linearizable = "no"
		violation("register history is not linearizable")
		h.artifacts(ops, info)
	default:
		sum.Linearizable = "unknown (checker timed out)"
		violation("linearizability checker timed out: the register history was not checked")
	}
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
