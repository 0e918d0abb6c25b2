package resp_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/api"
)

// FCALL cannot run the grid's internal steps (names starting with
// grid.ReservedPrefix): a Redis client called the inbox's delivery step
// with the highest id, so every later delivery from that outbox to the
// partition was dropped as a duplicate.
func TestFCallOfAnInternalStepIsRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := newCluster(t, 1)
	ctx := ctxT(t, 20*time.Second)
	rc := c.client(t, 0, 3)
	// Delivery{Source, Pos, Index, Stream, Key, Value}
	args := `["outbox/3", 9223372036854775807, 4294967295, "s", "{k}", "x"]`
	_, err := rc.Do(ctx, "FCALL", grid.ReservedPrefix+"deliver", 1, "{k}", args).Result()
	if err == nil || !strings.Contains(err.Error(), "grid's own") {
		t.Fatalf("FCALL of the delivery step: %v, want an error naming the grid's own names", err)
	}
	m := c.Nodes[0].Map(grid.ReservedPrefix + "inbox")
	for part := range c.Nodes[0].Partitions() {
		key := "{" + c.Nodes[0].PartitionTag(part) + "}outbox/3"
		if v, err := m.Get(ctx, key); !errors.Is(err, api.ErrNotFound) {
			t.Fatalf("inbox watermark %q set by a client: %q, %v", key, v, err)
		}
	}
}
