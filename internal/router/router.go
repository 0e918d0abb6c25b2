// Package router sends map operations to the partition primaries: the one
// implementation of api.Map behind both the embedded node (with a local fast
// path) and the client SDK. It groups batches per node, follows NotOwner
// answers by refreshing the table, and retries retryable failures with the
// same (clientID, seq) so that a retried mutation applies once.
package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"iter"
	"sync"
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

// withTimeout applies DefaultTimeout to a ctx without deadline (none if
// DefaultTimeout is zero).
func (r *Router) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || r.cfg.DefaultTimeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, r.cfg.DefaultTimeout)
}

// backoff sleeps before retry attempt a; false if ctx ended or node closed.
func (r *Router) backoff(ctx context.Context, a int) bool {
	d := time.Duration(min(5<<min(a, 6), 200)) * time.Millisecond
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-r.cfg.Done:
		return false
	}
}

// afterError reacts to a failed attempt and reports whether to retry. A
// NotOwner from a newer table asks for that table; an unreachable node asks
// for a fresh table without waiting (Refresh(ctx, 0)).
func (r *Router) afterError(ctx context.Context, err error) bool {
	var ne *api.NotOwnerError
	if errors.As(err, &ne) {
		if t := r.cfg.Table(); t != nil && ne.Version > t.Version {
			r.cfg.Refresh(ctx, ne.Version)
		}
	} else if errors.Is(err, api.ErrUnavailable) || errors.Is(err, api.ErrClosed) {
		r.cfg.Refresh(ctx, 0)
	}
	return api.Retryable(err)
}

// owner returns the installed table and the primary's name and address.
func (r *Router) owner(ctx context.Context, part int) (*wire.Table, string, string, error) {
	t := r.cfg.Table()
	if t == nil {
		if err := r.cfg.WaitTable(ctx); err != nil {
			return nil, "", "", err
		}
		t = r.cfg.Table()
	}
	name := t.Partitions[part].Primary
	for _, m := range t.Members {
		if m.Name == name {
			return t, name, m.RPC, nil
		}
	}
	return t, name, "", fmt.Errorf("%w: partition %d has no reachable primary (%q)", api.ErrUnavailable, part, name)
}

// doMap sends a single-key request to its primary, locally or over TCP,
// retrying retryable failures with the same session until ctx ends. A ctx
// without deadline gets RequestTimeout, created only when the request
// leaves the process or is retried: a local read allocates no timer.
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

// send sends a request whose partition and session are set, retrying
// retryable failures with the same session until ctx ends.
func (r *Router) send(ctx context.Context, req *wire.MapRequest) (wire.MapResponse, error) {
	var cancel context.CancelFunc // set once ctx is bounded
	defer func() {
		if cancel != nil {
			cancel()
		}
	}()
	for a := 0; ; a++ {
		t, name, addr, err := r.owner(ctx, int(req.Partition))
		if err == nil {
			req.Version = t.Version
			if r.isLocal(name) {
				var resp wire.MapResponse
				if resp, err = r.cfg.Local.ExecMap(ctx, req); err == nil {
					return resp, nil
				}
			} else {
				if cancel == nil {
					ctx, cancel = r.withTimeout(ctx)
				}
				var conn *transport.Conn
				if conn, err = r.cfg.Pool.Get(ctx, addr); err == nil {
					resp := new(wire.MapResponse)
					if err = conn.Call(ctx, wire.MsgMap, req, resp); err == nil {
						return *resp, nil
					}
				}
			}
		}
		if cancel == nil {
			ctx, cancel = r.withTimeout(ctx)
		}
		if ctx.Err() != nil || !r.afterError(ctx, err) || !r.backoff(ctx, a) {
			return wire.MapResponse{}, err
		}
	}
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

// partKeys is one partition of a batch, with its keys (nil for
// whole-partition operations).
type partKeys struct {
	part int32
	keys []string
}

// nodeGroup is the share of a batch that one node owns.
type nodeGroup struct {
	name, addr string
	parts      []int32
	keys       [][]string
}

// splitKeys groups keys by partition.
func (r *Router) splitKeys(keys []string) []partKeys {
	idx := map[int32]int{}
	var out []partKeys
	for _, k := range keys {
		p := int32(affinity.Partition(k, r.cfg.Partitions))
		i, ok := idx[p]
		if !ok {
			i = len(out)
			idx[p] = i
			out = append(out, partKeys{part: p})
		}
		out[i].keys = append(out[i].keys, k)
	}
	return out
}

// allParts lists every partition without keys.
func (r *Router) allParts() []partKeys {
	out := make([]partKeys, r.cfg.Partitions)
	for i := range out {
		out[i].part = int32(i)
	}
	return out
}

// fanoutParts sends a batch as one request per owner node, concurrently.
// call sends (or runs locally) one node's request and returns one error per
// partition, or a single error for all of them; it records successes itself
// (it may run concurrently with other calls). Failed partitions are grouped
// again under the newest table and retried while the error is retryable.
func (r *Router) fanoutParts(ctx context.Context, parts []partKeys, call func(t *wire.Table, g *nodeGroup) ([]error, error)) error {
	for a := 0; len(parts) > 0; a++ {
		t := r.cfg.Table()
		if t == nil {
			if err := r.cfg.WaitTable(ctx); err != nil {
				return err
			}
			t = r.cfg.Table()
		}
		addrs := make(map[string]string, len(t.Members))
		for _, m := range t.Members {
			addrs[m.Name] = m.RPC
		}
		groups := map[string]*nodeGroup{}
		for _, pk := range parts {
			owner := t.Partitions[pk.part].Primary
			g := groups[owner]
			if g == nil {
				g = &nodeGroup{name: owner, addr: addrs[owner]}
				groups[owner] = g
			}
			g.parts = append(g.parts, pk.part)
			g.keys = append(g.keys, pk.keys)
		}
		var mu sync.Mutex
		var retry []partKeys
		var firstErr error
		var wg sync.WaitGroup
		for _, g := range groups {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs, err := call(t, g)
				if err == nil && len(errs) != len(g.parts) {
					err = fmt.Errorf("%w: %d answers for %d partitions", api.ErrInternal, len(errs), len(g.parts))
				}
				mu.Lock()
				defer mu.Unlock()
				for i := range g.parts {
					perr := err
					if perr == nil {
						perr = errs[i]
					}
					if perr == nil {
						continue
					}
					if firstErr == nil || !api.Retryable(perr) {
						firstErr = perr
					}
					retry = append(retry, partKeys{g.parts[i], g.keys[i]})
				}
			}()
		}
		wg.Wait()
		if len(retry) == 0 {
			return nil
		}
		if !api.Retryable(firstErr) || !r.afterError(ctx, firstErr) || !r.backoff(ctx, a) {
			return firstErr
		}
		parts = retry
	}
	return nil
}

// callGroup runs a group's request locally or sends it to its node.
func callGroup[Resp any](ctx context.Context, r *Router, g *nodeGroup, typ uint8, req any, local func() (*Resp, error)) (*Resp, error) {
	if r.isLocal(g.name) {
		return local()
	}
	if g.addr == "" {
		return nil, fmt.Errorf("%w: no address for %q", api.ErrUnavailable, g.name)
	}
	conn, err := r.cfg.Pool.Get(ctx, g.addr)
	if err != nil {
		return nil, err
	}
	resp := new(Resp)
	return resp, conn.Call(ctx, typ, req, resp)
}

func bodyErrs(bodies []wire.ErrorBody) []error {
	errs := make([]error, len(bodies))
	for i := range bodies {
		errs[i] = bodies[i].Err()
	}
	return errs
}

func (m *nodeMap) GetAll(ctx context.Context, keys []string) (map[string][]byte, error) {
	r := m.r
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	out := make(map[string][]byte, len(keys))
	var mu sync.Mutex
	err := r.fanoutParts(ctx, r.splitKeys(keys), func(t *wire.Table, g *nodeGroup) ([]error, error) {
		req := &wire.GetAllRequest{Version: t.Version, Map: m.name, Partitions: g.parts, Keys: g.keys}
		resp, err := callGroup(ctx, r, g, wire.MsgGetAll, req, func() (*wire.GetAllResponse, error) { return r.cfg.Local.ExecGetAll(ctx, req) })
		if err != nil {
			return nil, err
		}
		errs := make([]error, len(resp.Parts))
		mu.Lock()
		defer mu.Unlock()
		for i, part := range resp.Parts {
			if errs[i] = part.Err.Err(); errs[i] != nil || i >= len(g.keys) {
				continue
			}
			for j, k := range g.keys[i] {
				if j < len(part.Found) && j < len(part.Values) && part.Found[j] {
					out[k] = bytes.Clone(part.Values[j])
				}
			}
		}
		return errs, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (m *nodeMap) PutAll(ctx context.Context, entries map[string][]byte, opts ...api.Option) error {
	r := m.r
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	o := api.Apply(opts)
	seq, low := r.seqs.begin()
	defer r.seqs.end(seq)
	sess := wire.Session{Client: r.cfg.ClientID, Seq: seq, Low: low}
	keys := make([]string, 0, len(entries))
	for k := range entries {
		keys = append(keys, k)
	}
	return r.fanoutParts(ctx, r.splitKeys(keys), func(t *wire.Table, g *nodeGroup) ([]error, error) {
		req := &wire.PutAllRequest{Version: t.Version, Map: m.name, Partitions: g.parts, Keys: g.keys, TTL: int64(o.TTL), Session: sess}
		req.Values = make([][][]byte, len(g.keys))
		for i, ks := range g.keys {
			req.Values[i] = make([][]byte, len(ks))
			for j, k := range ks {
				// The caller may reuse its slices: the store keeps copies.
				req.Values[i][j] = append([]byte{}, entries[k]...)
			}
		}
		resp, err := callGroup(ctx, r, g, wire.MsgPutAll, req, func() (*wire.PartsResponse, error) { return r.cfg.Local.ExecPutAll(ctx, req) })
		if err != nil {
			return nil, err
		}
		return bodyErrs(resp.Errs), nil
	})
}

func (m *nodeMap) Size(ctx context.Context) (int, error) {
	r := m.r
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	var total atomic.Int64
	err := r.fanoutParts(ctx, r.allParts(), func(t *wire.Table, g *nodeGroup) ([]error, error) {
		req := &wire.SizeRequest{Version: t.Version, Map: m.name, Partitions: g.parts}
		resp, err := callGroup(ctx, r, g, wire.MsgSize, req, func() (*wire.SizeResponse, error) { return r.cfg.Local.ExecSize(ctx, req) })
		if err != nil {
			return nil, err
		}
		return addCounts(&total, resp.Counts, resp.Errs, "Size")
	})
	return int(total.Load()), err
}

// addCounts adds the counts of the partitions that succeeded to total and
// returns the per-partition errors.
func addCounts(total *atomic.Int64, counts []int64, bodies []wire.ErrorBody, what string) ([]error, error) {
	if len(counts) != len(bodies) {
		return nil, fmt.Errorf("%w: malformed %s response", api.ErrInternal, what)
	}
	errs := bodyErrs(bodies)
	for i, c := range counts {
		if errs[i] == nil {
			total.Add(c)
		}
	}
	return errs, nil
}

func (m *nodeMap) Clear(ctx context.Context) error {
	r := m.r
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	seq, low := r.seqs.begin()
	defer r.seqs.end(seq)
	sess := wire.Session{Client: r.cfg.ClientID, Seq: seq, Low: low}
	return r.fanoutParts(ctx, r.allParts(), func(t *wire.Table, g *nodeGroup) ([]error, error) {
		req := &wire.ClearRequest{Version: t.Version, Map: m.name, Partitions: g.parts, Session: sess}
		resp, err := callGroup(ctx, r, g, wire.MsgClear, req, func() (*wire.PartsResponse, error) { return r.cfg.Local.ExecClear(ctx, req) })
		if err != nil {
			return nil, err
		}
		return bodyErrs(resp.Errs), nil
	})
}

const scanPage = 512

func (m *nodeMap) Scan(ctx context.Context, errp *error) iter.Seq2[string, []byte] {
	r := m.r
	return func(yield func(string, []byte) bool) {
		for p := range r.cfg.Partitions {
			after := ""
			for {
				resp, err := r.scanPage(ctx, m.name, int32(p), after)
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

func (r *Router) scanPage(ctx context.Context, name string, part int32, after string) (*wire.ScanResponse, error) {
	return r.scan(ctx, &wire.ScanRequest{Map: name, Partition: part, After: after, Limit: scanPage})
}

// scan sends one page request to the partition's primary, retrying
// retryable failures. It sets req.Version.
func (r *Router) scan(ctx context.Context, req *wire.ScanRequest) (*wire.ScanResponse, error) {
	ctx, cancel := r.withTimeout(ctx)
	defer cancel()
	for a := 0; ; a++ {
		t, owner, addr, err := r.owner(ctx, int(req.Partition))
		var resp *wire.ScanResponse
		if err == nil {
			req.Version = t.Version
			if r.isLocal(owner) {
				resp, err = r.cfg.Local.ExecScan(ctx, req)
			} else {
				c, cerr := r.cfg.Pool.Get(ctx, addr)
				if err = cerr; err == nil {
					resp = &wire.ScanResponse{}
					err = c.Call(ctx, wire.MsgScan, req, resp)
				}
			}
		}
		if err == nil {
			return resp, nil
		}
		if ctx.Err() != nil || !r.afterError(ctx, err) || !r.backoff(ctx, a) {
			return nil, err
		}
	}
}

// seqTracker numbers a router's mutations for at-most-once retries and
// tracks the lowest sequence still awaiting an answer.
type seqTracker struct {
	mu       sync.Mutex
	next     uint64
	low      uint64
	inflight map[uint64]struct{}
}

func (t *seqTracker) init() { t.inflight = map[uint64]struct{}{} }

// begin returns a new sequence number and the current low watermark.
func (t *seqTracker) begin() (seq, low uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	seq = t.next
	if len(t.inflight) == 0 {
		t.low = seq
	}
	t.inflight[seq] = struct{}{}
	return seq, t.low
}

// end marks seq answered (or abandoned).
func (t *seqTracker) end(seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.inflight, seq)
	if seq != t.low {
		return
	}
	t.low = t.next + 1
	for s := range t.inflight {
		if s < t.low {
			t.low = s
		}
	}
}
