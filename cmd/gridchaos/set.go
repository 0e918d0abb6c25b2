package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/collocate/grid/client"
)

// setLog holds the set workload's acknowledged writes (key -> value).
type setLog struct {
	mu    sync.Mutex
	acked map[string]string
}

// setWorker writes unique keys until the stop.
func (h *harness) setWorker(ctx context.Context, w *workloads, m client.Map, id int, pr *progress) {
	for i := 0; !w.stopped(); i++ {
		key := fmt.Sprintf("s%d-%d", id, i)
		opCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := m.Put(opCtx, key, []byte(key))
		cancel()
		pr.ops++
		if err == nil {
			pr.writes = append(pr.writes, h.now())
			w.set.mu.Lock()
			w.set.acked[key] = key
			w.set.mu.Unlock()
		}
	}
}
