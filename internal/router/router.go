// Package router sends map operations to the partition primaries: the one
// implementation of api.Map behind both the embedded node (with a local fast
// path) and the client SDK. It groups batches per node, follows NotOwner
// answers by refreshing the table, re-routes a request whose primary a new
// table replaced, and retries retryable failures with the same (clientID,
// seq) so that a retried mutation applies once. A mutation that may have
// been applied ends in its result or ErrTimeout (retry.go).
package router

import (
	"bytes"
	"context"
	"fmt"
	"iter"
	"sync/atomic"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
)

// Executor serves requests for partitions this process leads (the embedded
// node). Its methods have the semantics of the matching wire messages.
type Executor interface {
	ExecMap(ctx context.Context, req *wire.MapRequest) (wire.MapResponse, error)
	ExecGetAll(ctx context.Context, req *wire.GetAllRequest) (*wire.GetAllResponse, error)
	ExecPutAll(ctx context.Context, req *wire.PutAllRequest) (*wire.PartsResponse, error)
	ExecScan(ctx context.Context, req *wire.ScanRequest) (*wire.ScanResponse, error)
	ExecSize(ctx context.Context, req *wire.SizeRequest) (*wire.SizeResponse, error)
	ExecClear(ctx context.Context, req *wire.ClearRequest) (*wire.PartsResponse, error)
	ExecDeleteAll(ctx context.Context, req *wire.DeleteAllRequest) (*wire.DeleteAllResponse, error)
	ExecMapBatch(ctx context.Context, req *wire.MapBatchRequest) (*wire.MapBatchResponse, error)
	ExecStep(ctx context.Context, req *wire.StepRequest) (wire.StepResponse, error)
	ExecStepParts(ctx context.Context, req *wire.StepPartsRequest) (*wire.StepPartsResponse, error)
	ExecCall(ctx context.Context, req *wire.CallRequest) (*wire.CallResponse, error)
	ExecJournal(ctx context.Context, req *wire.JournalRequest) (*wire.JournalResponse, error)
}

// Config wires a Router to its table and connections.
type Config struct {
	// Partitions is the cluster's partition count.
	Partitions int
	// Pool reaches the members' RPC addresses.
	Pool *transport.Pool
	// Table returns the current table, or nil before the first.
	Table func() *wire.Table
	// WaitTable waits until Table returns a table.
	WaitTable func(ctx context.Context) error
	// Refresh is called when a node answered NotOwner from a table newer
	// than ours (version); it should fetch that table (coalescing calls).
	Refresh func(ctx context.Context, version uint64)
	// LocalName and Local: requests for partitions whose primary is
	// LocalName run on Local without the network. Empty for clients.
	LocalName string
	Local     Executor
	// TableChanged, if set, returns a channel that closes when the next
	// table is installed: a request waiting on a primary that the new
	// table replaced is then abandoned and retried on the new primary
	// with the same session. Optional.
	TableChanged func() <-chan struct{}
	// DefaultTimeout bounds calls whose ctx has no deadline.
	DefaultTimeout time.Duration
	// ClientID names this router's mutations for deduplication; non-zero.
	ClientID uint64
	// Done closes when the owner shuts down: calls fail with ErrClosed.
	Done <-chan struct{}
}

// Router implements api.Map over a partition table.
type Router struct {
	cfg  Config
	seqs seqTracker
	// Remote requests waiting for an answer, by the parity of the Pulse
	// period they started in (see Pulse).
	waitGen   atomic.Uint32
	waiting   [2]atomic.Int32
	pulseSlow atomic.Bool // the last Pulse reported a waiting request
}

// New returns a router.
func New(cfg Config) *Router {
	r := &Router{cfg: cfg}
	r.seqs.init()
	return r
}

func (r *Router) isLocal(name string) bool {
	return r.cfg.Local != nil && name == r.cfg.LocalName
}

func (r *Router) closed() bool {
	select {
	case <-r.cfg.Done:
		return true
	default:
		return false
	}
}

// Map returns the byte-level map named name.
func (r *Router) Map(name string) api.Map { return &nodeMap{r: r, name: name} }

type nodeMap struct {
	r    *Router
	name string
}

var _ api.Map = (*nodeMap)(nil)

func (m *nodeMap) Name() string { return m.name }

// table returns the installed table, waiting for the first one.
func (r *Router) table(ctx context.Context) (*wire.Table, error) {
	if t := r.cfg.Table(); t != nil {
		return t, nil
	}
	if err := r.cfg.WaitTable(ctx); err != nil {
		return nil, err
	}
	return r.cfg.Table(), nil
}

// owner returns the installed table and the primary's name and address.
func (r *Router) owner(ctx context.Context, part int) (*wire.Table, string, string, error) {
	t, err := r.table(ctx)
	if err != nil {
		return nil, "", "", err
	}
	name := t.Partitions[part].Primary
	for _, m := range t.Members {
		if m.Name == name {
			return t, name, m.RPC, nil
		}
	}
	return t, name, "", fmt.Errorf("%w: partition %d has no reachable primary (%q)", api.ErrUnavailable, part, name)
}

// doMap numbers a mutation and sends a single-key request to its primary.
func (r *Router) doMap(ctx context.Context, req *wire.MapRequest) (wire.MapResponse, error) {
	if r.closed() {
		return wire.MapResponse{}, api.ErrClosed
	}
	req.Partition = int32(affinity.Partition(req.Key, r.cfg.Partitions))
	if wire.IsMutation(req.Op) {
		seq, low := r.seqs.begin()
		defer r.seqs.end(seq)
		req.Session = wire.Session{Client: r.cfg.ClientID, Seq: seq, Low: low}
	}
	return r.send(ctx, req)
}

// send sends a request whose partition and session are set to its primary,
// locally or over TCP, retrying with the same session (see retry).
func (r *Router) send(ctx context.Context, req *wire.MapRequest) (wire.MapResponse, error) {
	var resp wire.MapResponse
	err := r.retry(ctx, wire.IsMutation(req.Op), func(tr *try) error {
		t, name, addr, err := r.owner(tr.ctx, int(req.Partition))
		if err != nil {
			return err
		}
		req.Version = t.Version
		if r.isLocal(name) {
			resp, err = r.cfg.Local.ExecMap(tr.ctx, req)
			return err
		}
		resp = wire.MapResponse{}
		return r.remote(tr.bound(r), name, addr, wire.MsgMap, req, &resp, req.Partition)
	})
	if err != nil {
		return wire.MapResponse{}, err
	}
	return resp, nil
}

func (m *nodeMap) req(op uint8, key string) *wire.MapRequest {
	return &wire.MapRequest{Op: op, Map: m.name, Key: key}
}

func (m *nodeMap) write(op uint8, key string, value []byte, opts []api.Option) *wire.MapRequest {
	o := api.Apply(opts)
	r := m.req(op, key)
	// The caller may reuse its slice: the store keeps its own copy.
	r.Value = bytes.Clone(value)
	if r.Value == nil {
		r.Value = []byte{}
	}
	r.TTL = int64(o.TTL)
	return r
}

func (m *nodeMap) Get(ctx context.Context, key string) ([]byte, error) {
	e, err := m.GetEntry(ctx, key)
	return e.Value, err
}

func (m *nodeMap) GetEntry(ctx context.Context, key string) (api.Entry, error) {
	resp, err := m.r.doMap(ctx, m.req(wire.OpGetEntry, key))
	if err != nil {
		return api.Entry{}, err
	}
	if !resp.Found {
		return api.Entry{}, api.ErrNotFound
	}
	return api.Entry{Value: bytes.Clone(resp.Value), Version: resp.Version}, nil
}

func (m *nodeMap) Put(ctx context.Context, key string, value []byte, opts ...api.Option) error {
	r := m.write(wire.OpPut, key, value, opts)
	_, err := m.r.doMap(ctx, r)
	return err
}

func (m *nodeMap) PutIfAbsent(ctx context.Context, key string, value []byte, opts ...api.Option) ([]byte, bool, error) {
	r := m.write(wire.OpPutIfAbsent, key, value, opts)
	resp, err := m.r.doMap(ctx, r)
	if err != nil {
		return nil, false, err
	}
	if resp.Done {
		return nil, true, nil
	}
	return bytes.Clone(resp.Value), false, nil
}

func (m *nodeMap) Replace(ctx context.Context, key string, value []byte, opts ...api.Option) (bool, error) {
	r := m.write(wire.OpReplace, key, value, opts)
	resp, err := m.r.doMap(ctx, r)
	return resp.Done, err
}

func (m *nodeMap) CompareAndSwap(ctx context.Context, key string, expected, value []byte, opts ...api.Option) (bool, error) {
	r := m.write(wire.OpCAS, key, value, opts)
	r.Expected = expected
	resp, err := m.r.doMap(ctx, r)
	return resp.Done, err
}

func (m *nodeMap) CompareAndSwapVersion(ctx context.Context, key string, version uint64, value []byte, opts ...api.Option) (bool, error) {
	r := m.write(wire.OpCASVersion, key, value, opts)
	r.ExpectedVersion = version
	resp, err := m.r.doMap(ctx, r)
	return resp.Done, err
}

func (m *nodeMap) Delete(ctx context.Context, key string) (bool, error) {
	resp, err := m.r.doMap(ctx, m.req(wire.OpDelete, key))
	return resp.Found, err
}

const scanPage = 512

func (m *nodeMap) Scan(ctx context.Context, errp *error) iter.Seq2[string, []byte] {
	r := m.r
	return func(yield func(string, []byte) bool) {
		for p := range r.cfg.Partitions {
			after := ""
			for {
				resp, err := r.scan(ctx, &wire.ScanRequest{Map: m.name, Partition: int32(p), After: after, Limit: scanPage})
				if err != nil {
					if errp != nil {
						*errp = err
					}
					return
				}
				for i, k := range resp.Keys {
					if !yield(k, bytes.Clone(resp.Values[i])) {
						return
					}
				}
				if !resp.More || len(resp.Keys) == 0 {
					break
				}
				after = resp.Keys[len(resp.Keys)-1]
			}
		}
	}
}

// scan sends one page request to the partition's primary, retrying
// retryable failures. It sets req.Version.
func (r *Router) scan(ctx context.Context, req *wire.ScanRequest) (*wire.ScanResponse, error) {
	var resp *wire.ScanResponse
	err := r.retry(ctx, false, func(tr *try) error {
		t, owner, addr, err := r.owner(tr.ctx, int(req.Partition))
		if err != nil {
			return err
		}
		req.Version = t.Version
		if r.isLocal(owner) {
			resp, err = r.cfg.Local.ExecScan(tr.ctx, req)
			return err
		}
		resp = &wire.ScanResponse{}
		return r.remote(tr.bound(r), owner, addr, wire.MsgScan, req, resp, req.Partition)
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}
