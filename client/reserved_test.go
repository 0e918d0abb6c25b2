package client_test

import (
	"errors"
	"testing"
	"time"

	"github.com/collocate/grid/client"
	"github.com/collocate/grid/compute/invoke"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/vmihailenco/msgpack/v5"
)

// A client cannot run the grid's internal steps (names starting with
// "\x00"): ExecuteOnKey of the inbox's delivery step set a watermark, so
// later deliveries from that outbox were dropped as duplicates.
func TestClientCannotRunInternalSteps(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 1, nil)
	c.WaitStable(30 * time.Second)
	ctx := ctxT(t, 30*time.Second)
	cl, err := client.Dial(ctx, client.Config{Addrs: []string{c.Nodes[0].RPCAddr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	// Delivery{Source, Pos, Index, Stream, Key, Value}
	args, err := msgpack.Marshal([]any{"outbox/3", uint64(1 << 62), uint32(0), "s", "{k}", []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.ExecuteOnKey(ctx, "m", "{k}", "\x00deliver", args); !errors.Is(err, client.ErrBadRequest) {
		t.Fatalf("ExecuteOnKey of the delivery step: %v, want ErrBadRequest", err)
	}
	err = cl.ExecuteOnPartitions(ctx, "\x00proc.seek", nil, invoke.PartsOptions{}, func(int, []byte) {})
	if !errors.Is(err, client.ErrBadRequest) {
		t.Fatalf("ExecuteOnPartitions of an internal step: %v, want ErrBadRequest", err)
	}
}
