package main

import (
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/client"
)

// bulkValueSize is the size of one bulk value.
const bulkValueSize = 16 << 10

// dataset is data written once before the faults and left idle: every
// acknowledged key must be present with its value at the end. Idle keys
// find replicas that were never refilled (a restarted member reported in
// sync while empty); bulk data makes partitions large, so that fills take
// long enough for the nemesis to kill their sender or receiver.
type dataset struct {
	name  string // the map
	keys  []string
	value func(key string) []byte
	acked []string
}

// idleKeys returns at least n keys, the same number in every partition.
func idleKeys(n, partitions int) []string {
	per := (max(n, partitions) + partitions - 1) / partitions
	count := make([]int, partitions)
	var keys []string
	for c := 0; len(keys) < per*partitions; c++ {
		k := fmt.Sprintf("idle-%d", c)
		if p := affinity.Partition(k, partitions); count[p] < per {
			count[p]++
			keys = append(keys, k)
		}
	}
	return keys
}

func idleValue(key string) []byte { return []byte("v-" + key) }

// bulkValue is key's 16 KiB value, derived from the key (nothing to keep
// in the harness' memory).
func bulkValue(key string) []byte {
	f := fnv.New64a()
	f.Write([]byte(key))
	rng := randNew(f.Sum64())
	b := make([]byte, bulkValueSize)
	for i := 0; i < len(b); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < len(b); j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func (h *harness) datasets(partitions int) []*dataset {
	var sets []*dataset
	if h.cfg.IdleKeys > 0 {
		sets = append(sets, &dataset{name: "idle", keys: idleKeys(h.cfg.IdleKeys, partitions), value: idleValue})
	}
	if n := h.cfg.BulkMB * (1 << 20) / bulkValueSize; n > 0 {
		b := &dataset{name: "bulk", value: bulkValue}
		for i := range n {
			b.keys = append(b.keys, fmt.Sprintf("bulk-%d", i))
		}
		sets = append(sets, b)
	}
	return sets
}

// load writes every key of d once (a put of the same value may be repeated
// safely until it is acknowledged: 5 tries of 5 s). It returns how many
// keys were never acknowledged.
func (h *harness) load(ctx context.Context, c *client.Client, d *dataset) int {
	m := c.Map(d.name)
	var mu sync.Mutex
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(d.keys) {
					return
				}
				k := d.keys[i]
				for range 5 {
					opCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
					err := m.Put(opCtx, k, d.value(k))
					cancel()
					if err == nil {
						mu.Lock()
						d.acked = append(d.acked, k)
						mu.Unlock()
						break
					}
					if ctx.Err() != nil {
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	return len(d.keys) - len(d.acked)
}

// present returns how many acknowledged keys of d hold their value now.
func (h *harness) present(ctx context.Context, c *client.Client, d *dataset) int {
	got := h.readBack(ctx, c.Map(d.name), d.acked, 512)
	n := 0
	for _, k := range d.acked {
		if v, ok := got[k]; ok && bytes.Equal(v, d.value(k)) {
			n++
		}
	}
	return n
}

// checkDataset reads back every acknowledged key of d and returns how many
// are missing or wrong.
func (h *harness) checkDataset(ctx context.Context, c *client.Client, d *dataset) int {
	got := h.readBack(ctx, c.Map(d.name), d.acked, 64)
	lost := 0
	for _, k := range d.acked {
		if v, ok := got[k]; !ok || !bytes.Equal(v, d.value(k)) {
			lost++
			if lost <= 5 {
				h.logf("%s: key %s lost or wrong (present %v, %d bytes)", d.name, k, ok, len(v))
			}
		}
	}
	return lost
}
