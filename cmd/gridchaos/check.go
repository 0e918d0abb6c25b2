package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/client"
)

// readBack reads keys in batches (GetAll, retried; then key by key). A key
// that cannot be read is absent from the result.
func (h *harness) readBack(ctx context.Context, m client.Map, keys []string, batch int) map[string][]byte {
	out := make(map[string][]byte, len(keys))
	unreadable := 0
	for start := 0; start < len(keys); start += batch {
		part := keys[start:min(start+batch, len(keys))]
		var got map[string][]byte
		var err error
		for range 3 {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			got, err = m.GetAll(cctx, part)
			cancel()
			if err == nil {
				break
			}
		}
		if err != nil {
			h.logf("read back %s: %v; reading key by key", m.Name(), err)
			got = map[string][]byte{}
			for _, k := range part {
				cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				v, err := m.Get(cctx, k)
				cancel()
				if err == nil {
					got[k] = v
				} else if !errors.Is(err, client.ErrNotFound) {
					unreadable++
				}
			}
		}
		for k, v := range got {
			out[k] = v
		}
	}
	if unreadable > 0 {
		h.logf("read back %s: %d keys unreadable (counted as missing)", m.Name(), unreadable)
	}
	return out
}

// probePartitions writes one key into every partition: after the heal,
// each must accept a write. It returns the partitions that did not.
func (h *harness) probePartitions(ctx context.Context, c *client.Client, partitions int) []int {
	m := c.Map("probe")
	var failed []int
	found := make([]string, partitions)
	left := partitions
	for i := 0; left > 0; i++ {
		k := fmt.Sprintf("probe-%d", i)
		if p := affinity.Partition(k, partitions); found[p] == "" {
			found[p] = k
			left--
		}
	}
	for p, k := range found {
		var err error
		for range 3 {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = m.Put(cctx, k, []byte(k))
			cancel()
			if err == nil {
				break
			}
		}
		if err != nil {
			failed = append(failed, p)
			if len(failed) <= 5 {
				h.logf("partition %d takes no write: %v", p, err)
			}
		}
	}
	return failed
}

// checkSet returns how many acknowledged writes of the set workload are
// missing or wrong.
func (h *harness) checkSet(ctx context.Context, c *client.Client, l *setLog) int {
	keys := make([]string, 0, len(l.acked))
	for k := range l.acked {
		keys = append(keys, k)
	}
	got := h.readBack(ctx, c.Map("set"), keys, 2000)
	lost := 0
	for k, v := range l.acked {
		if string(got[k]) != v {
			lost++
			if lost <= 5 {
				h.logf("set: lost %s", k)
			}
		}
	}
	return lost
}

type partInfo struct {
	Role    string `json:"role"`
	LSN     uint64 `json:"lsn"`
	Entries int    `json:"entries"`
	Digest  uint64 `json:"digest"`
}

// checkReplicas compares every backup with its primary (LSN, entries,
// digest).
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
