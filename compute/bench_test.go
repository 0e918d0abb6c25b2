package compute_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/collocate/grid/compute"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// BenchmarkOrderTotal compares the total of a customer's order lines
// computed at the customer's primary (one ExecuteOnKey of agg.key) with
// fetching the lines to the caller (GetAll) and summing there, on a
// 3-node in-process cluster over loopback TCP, the customer led by
// another member than the caller. bytes/op is the msgpack body of the
// request and the answer (plus a 14-byte frame header each way) that the
// call puts on the caller's connection.
func BenchmarkOrderTotal(b *testing.B) {
	e := newEnv(b, 3, nil, nil)
	caller, ex := e.c.Nodes[0], e.ex[0]
	for _, lines := range []int{10, 100, 1000} {
		cust := keyLedBy(b, e.c.Nodes[1], fmt.Sprintf("bench%d-", lines))
		want := putLines(b, caller.Map("lines"), cust, lines)
		key := "{" + cust + "}"
		keys := make([]string, lines)
		for i := range keys {
			keys[i] = fmt.Sprintf("{%s}:line:%d", cust, i)
		}
		ctx := ctxT(b, 10*time.Minute)
		b.Run(fmt.Sprintf("lines=%d/collocated", lines), func(b *testing.B) {
			var agg compute.Agg
			var err error
			for b.Loop() {
				if agg, err = compute.AggregateKey(ctx, ex, "lines", key, compute.AggArgs{}); err != nil || agg.IntSum != want {
					b.Fatalf("total %d, %v; want %d", agg.IntSum, err, want)
				}
			}
			args, _ := wire.Marshal(compute.AggArgs{})
			res, _ := wire.Marshal(agg)
			req, _ := wire.Marshal(&wire.StepRequest{Version: 1, Map: "lines", Key: key, Name: compute.FnAggKey, Args: args, Session: wire.Session{Client: 1 << 62, Seq: 1 << 20, Low: 1 << 20}})
			resp, _ := wire.Marshal(&wire.StepResponse{Result: res, Epoch: 1})
			report(b, len(req)+len(resp)+28)
		})
		b.Run(fmt.Sprintf("lines=%d/fetched", lines), func(b *testing.B) {
			var vals map[string][]byte
			for b.Loop() {
				var err error
				if vals, err = caller.Map("lines").GetAll(ctx, keys); err != nil {
					b.Fatal(err)
				}
				var total int64
				for _, v := range vals {
					n, _ := api.ParseInt(v)
					total += n
				}
				if total != want {
					b.Fatalf("total %d, want %d", total, want)
				}
			}
			part := wire.GetAllPart{Found: make([]bool, lines), Values: make([][]byte, lines)}
			for i, k := range keys {
				part.Found[i], part.Values[i] = true, vals[k]
			}
			req, _ := wire.Marshal(&wire.GetAllRequest{Version: 1, Map: "lines", Partitions: []int32{0}, Keys: [][]string{keys}})
			resp, _ := wire.Marshal(&wire.GetAllResponse{Parts: []wire.GetAllPart{part}})
			report(b, len(req)+len(resp)+28)
		})
	}
}

func report(b *testing.B, bytes int) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	b.ReportMetric(float64(bytes), "bytes/op")
}
