package grid

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

// API types shared with the client SDK.
type (
	// Map is the byte-level map interface, implemented alike by the
	// embedded node and the client SDK.
	Map = api.Map
	// Option modifies a mutation.
	Option = api.Option
	// Entry is a value with its version.
	Entry = api.Entry
	// NotOwnerError says which node owns a partition.
	NotOwnerError = api.NotOwnerError
)

// Errors; match with errors.Is.
var (
	ErrNotFound      = api.ErrNotFound
	ErrNotOwner      = api.ErrNotOwner
	ErrTimeout       = api.ErrTimeout
	ErrUnavailable   = api.ErrUnavailable
	ErrBadRequest    = api.ErrBadRequest
	ErrReplication   = api.ErrReplication
	ErrStaleSequence = api.ErrStaleSequence
	ErrClosed        = api.ErrClosed
)

// WithTTL makes an entry expire ttl after the write.
func WithTTL(ttl time.Duration) Option { return api.WithTTL(ttl) }

// Map returns the byte-level map named name. Maps need no creation.
func (n *Node) Map(name string) Map { return &nodeMap{n: n, name: name} }

type nodeMap struct {
	n    *Node
	name string
}

var _ Map = (*nodeMap)(nil)

func (m *nodeMap) Name() string { return m.name }

// withTimeout applies the node's RequestTimeout to a ctx without deadline.
func (n *Node) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, n.cfg.RequestTimeout)
}

// backoff sleeps before retry attempt a; false if ctx ended or node closed.
func (n *Node) backoff(ctx context.Context, a int) bool {
	d := time.Duration(min(5<<a, 200)) * time.Millisecond
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-n.done:
		return false
	}
}

// afterError reacts to a failed attempt: a NotOwner from a node with a newer
// table makes us fetch that table. It reports whether to retry.
func (n *Node) afterError(ctx context.Context, err error) bool {
	var ne *api.NotOwnerError
	if errors.As(err, &ne) {
		if t := n.table.Load(); t != nil && ne.Version > t.Version {
			n.pullTable(ctx, ne.Version)
		}
	}
	return api.Retryable(err)
}

// pullTable asks the authority's leader for its table when ours is older
// than version, then waits briefly for it to be installed.
func (n *Node) pullTable(ctx context.Context, version uint64) {
	if leader := n.cluster.Leader(); leader != "" && leader != n.RPCAddr() {
		if conn, err := n.pool.Get(ctx, leader); err == nil {
			var resp wire.TableResponse
			if err := conn.Call(ctx, wire.MsgTable, &wire.TableRequest{}, &resp); err == nil {
				n.offerTable(&resp.Table)
			}
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_ = n.waitVersion(wctx, version)
	cancel()
}

// owner returns the installed table and the primary's name and address.
func (n *Node) owner(ctx context.Context, part int) (*wire.Table, string, string, error) {
	t := n.table.Load()
	if t == nil {
		if err := n.WaitReady(ctx); err != nil {
			return nil, "", "", err
		}
		t = n.table.Load()
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
func (n *Node) doMap(ctx context.Context, req *wire.MapRequest) (wire.MapResponse, error) {
	if n.closed.Load() {
		return wire.MapResponse{}, api.ErrClosed
	}
	var cancel context.CancelFunc // set once ctx is bounded
	defer func() {
		if cancel != nil {
			cancel()
		}
	}()
	req.Partition = int32(affinity.Partition(req.Key, len(n.parts)))
	if wire.IsMutation(req.Op) {
		seq, low := n.seqs.begin()
		defer n.seqs.end(seq)
		req.Session = wire.Session{Client: n.clientID, Seq: seq, Low: low}
	}
	for a := 0; ; a++ {
		t, name, addr, err := n.owner(ctx, int(req.Partition))
		if err == nil {
			req.Version = t.Version
			if name == n.name {
				var resp wire.MapResponse
				if resp, err = n.execMap(ctx, req); err == nil {
					return resp, nil
				}
			} else {
				if cancel == nil {
					ctx, cancel = n.withTimeout(ctx)
				}
				var conn *transport.Conn
				if conn, err = n.pool.Get(ctx, addr); err == nil {
					resp := new(wire.MapResponse)
					if err = conn.Call(ctx, wire.MsgMap, req, resp); err == nil {
						return *resp, nil
					}
				}
			}
		}
		if cancel == nil {
			ctx, cancel = n.withTimeout(ctx)
		}
		if ctx.Err() != nil || !n.afterError(ctx, err) || !n.backoff(ctx, a) {
			return wire.MapResponse{}, err
		}
	}
}

func (m *nodeMap) req(op uint8, key string) *wire.MapRequest {
	return &wire.MapRequest{Op: op, Map: m.name, Key: key}
}

func (m *nodeMap) write(op uint8, key string, value []byte, opts []Option) *wire.MapRequest {
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

func (m *nodeMap) GetEntry(ctx context.Context, key string) (Entry, error) {
	resp, err := m.n.doMap(ctx, m.req(wire.OpGetEntry, key))
	if err != nil {
		return Entry{}, err
	}
	if !resp.Found {
		return Entry{}, api.ErrNotFound
	}
	return Entry{Value: bytes.Clone(resp.Value), Version: resp.Version}, nil
}

func (m *nodeMap) Put(ctx context.Context, key string, value []byte, opts ...Option) error {
	r := m.write(wire.OpPut, key, value, opts)
	_, err := m.n.doMap(ctx, r)
	return err
}

func (m *nodeMap) PutIfAbsent(ctx context.Context, key string, value []byte, opts ...Option) ([]byte, bool, error) {
	r := m.write(wire.OpPutIfAbsent, key, value, opts)
	resp, err := m.n.doMap(ctx, r)
	if err != nil {
		return nil, false, err
	}
	if resp.Done {
		return nil, true, nil
	}
	return bytes.Clone(resp.Value), false, nil
}

func (m *nodeMap) Replace(ctx context.Context, key string, value []byte, opts ...Option) (bool, error) {
	r := m.write(wire.OpReplace, key, value, opts)
	resp, err := m.n.doMap(ctx, r)
	return resp.Done, err
}

func (m *nodeMap) CompareAndSwap(ctx context.Context, key string, expected, value []byte, opts ...Option) (bool, error) {
	r := m.write(wire.OpCAS, key, value, opts)
	r.Expected = expected
	resp, err := m.n.doMap(ctx, r)
	return resp.Done, err
}

func (m *nodeMap) CompareAndSwapVersion(ctx context.Context, key string, version uint64, value []byte, opts ...Option) (bool, error) {
	r := m.write(wire.OpCASVersion, key, value, opts)
	r.ExpectedVersion = version
	resp, err := m.n.doMap(ctx, r)
	return resp.Done, err
}

func (m *nodeMap) Delete(ctx context.Context, key string) (bool, error) {
	resp, err := m.n.doMap(ctx, m.req(wire.OpDelete, key))
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
func (n *Node) splitKeys(keys []string) []partKeys {
	idx := map[int32]int{}
	var out []partKeys
	for _, k := range keys {
		p := int32(affinity.Partition(k, len(n.parts)))
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
func (n *Node) allParts() []partKeys {
	out := make([]partKeys, len(n.parts))
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
func (n *Node) fanoutParts(ctx context.Context, parts []partKeys, call func(t *wire.Table, g *nodeGroup) ([]error, error)) error {
	for a := 0; len(parts) > 0; a++ {
		t := n.table.Load()
		if t == nil {
			if err := n.WaitReady(ctx); err != nil {
				return err
			}
			t = n.table.Load()
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
		if !api.Retryable(firstErr) || !n.afterError(ctx, firstErr) || !n.backoff(ctx, a) {
			return firstErr
		}
		parts = retry
	}
	return nil
}

// callGroup runs a group's request locally or sends it to its node.
func callGroup[Resp any](ctx context.Context, n *Node, g *nodeGroup, typ uint8, req any, local func() (*Resp, error)) (*Resp, error) {
	if g.name == n.name {
		return local()
	}
	if g.addr == "" {
		return nil, fmt.Errorf("%w: no address for %q", api.ErrUnavailable, g.name)
	}
	conn, err := n.pool.Get(ctx, g.addr)
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
	n := m.n
	ctx, cancel := n.withTimeout(ctx)
	defer cancel()
	out := make(map[string][]byte, len(keys))
	var mu sync.Mutex
	err := n.fanoutParts(ctx, n.splitKeys(keys), func(t *wire.Table, g *nodeGroup) ([]error, error) {
		req := &wire.GetAllRequest{Version: t.Version, Map: m.name, Partitions: g.parts, Keys: g.keys}
		resp, err := callGroup(ctx, n, g, wire.MsgGetAll, req, func() (*wire.GetAllResponse, error) { return n.execGetAll(ctx, req) })
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

func (m *nodeMap) PutAll(ctx context.Context, entries map[string][]byte, opts ...Option) error {
	n := m.n
	ctx, cancel := n.withTimeout(ctx)
	defer cancel()
	o := api.Apply(opts)
	seq, low := n.seqs.begin()
	defer n.seqs.end(seq)
	sess := wire.Session{Client: n.clientID, Seq: seq, Low: low}
	keys := make([]string, 0, len(entries))
	for k := range entries {
		keys = append(keys, k)
	}
	return n.fanoutParts(ctx, n.splitKeys(keys), func(t *wire.Table, g *nodeGroup) ([]error, error) {
		req := &wire.PutAllRequest{Version: t.Version, Map: m.name, Partitions: g.parts, Keys: g.keys, TTL: int64(o.TTL), Session: sess}
		req.Values = make([][][]byte, len(g.keys))
		for i, ks := range g.keys {
			req.Values[i] = make([][]byte, len(ks))
			for j, k := range ks {
				// The caller may reuse its slices: the store keeps copies.
				req.Values[i][j] = append([]byte{}, entries[k]...)
			}
		}
		resp, err := callGroup(ctx, n, g, wire.MsgPutAll, req, func() (*wire.PartsResponse, error) { return n.execPutAll(ctx, req) })
		if err != nil {
			return nil, err
		}
		return bodyErrs(resp.Errs), nil
	})
}

func (m *nodeMap) Size(ctx context.Context) (int, error) {
	n := m.n
	ctx, cancel := n.withTimeout(ctx)
	defer cancel()
	var total atomic.Int64
	err := n.fanoutParts(ctx, n.allParts(), func(t *wire.Table, g *nodeGroup) ([]error, error) {
		req := &wire.SizeRequest{Version: t.Version, Map: m.name, Partitions: g.parts}
		resp, err := callGroup(ctx, n, g, wire.MsgSize, req, func() (*wire.SizeResponse, error) { return n.execSize(ctx, req) })
		if err != nil {
			return nil, err
		}
		if len(resp.Counts) != len(resp.Errs) {
			return nil, fmt.Errorf("%w: malformed Size response", api.ErrInternal)
		}
		errs := bodyErrs(resp.Errs)
		for i, c := range resp.Counts {
			if errs[i] == nil {
				total.Add(c)
			}
		}
		return errs, nil
	})
	return int(total.Load()), err
}

func (m *nodeMap) Clear(ctx context.Context) error {
	n := m.n
	ctx, cancel := n.withTimeout(ctx)
	defer cancel()
	seq, low := n.seqs.begin()
	defer n.seqs.end(seq)
	sess := wire.Session{Client: n.clientID, Seq: seq, Low: low}
	return n.fanoutParts(ctx, n.allParts(), func(t *wire.Table, g *nodeGroup) ([]error, error) {
		req := &wire.ClearRequest{Version: t.Version, Map: m.name, Partitions: g.parts, Session: sess}
		resp, err := callGroup(ctx, n, g, wire.MsgClear, req, func() (*wire.PartsResponse, error) { return n.execClear(ctx, req) })
		if err != nil {
			return nil, err
		}
		return bodyErrs(resp.Errs), nil
	})
}

const scanPage = 512

func (m *nodeMap) Scan(ctx context.Context, errp *error) iter.Seq2[string, []byte] {
	n := m.n
	return func(yield func(string, []byte) bool) {
		for p := range len(n.parts) {
			after := ""
			for {
				resp, err := n.scanPage(ctx, m.name, int32(p), after)
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

func (n *Node) scanPage(ctx context.Context, name string, part int32, after string) (*wire.ScanResponse, error) {
	ctx, cancel := n.withTimeout(ctx)
	defer cancel()
	for a := 0; ; a++ {
		t, owner, addr, err := n.owner(ctx, int(part))
		var resp *wire.ScanResponse
		if err == nil {
			req := &wire.ScanRequest{Version: t.Version, Map: name, Partition: part, After: after, Limit: scanPage}
			if owner == n.name {
				resp, err = n.execScan(ctx, req)
			} else {
				c, cerr := n.pool.Get(ctx, addr)
				if err = cerr; err == nil {
					resp = &wire.ScanResponse{}
					err = c.Call(ctx, wire.MsgScan, req, resp)
				}
			}
		}
		if err == nil {
			return resp, nil
		}
		if ctx.Err() != nil || !n.afterError(ctx, err) || !n.backoff(ctx, a) {
			return nil, err
		}
	}
}

// Typed is a typed view of a Map (see NewTyped).
type Typed[K comparable, V any] = api.Typed[K, V]

// Codec turns values into bytes and back.
type Codec[T any] = api.Codec[T]

// NewTyped returns a typed view of m whose values are msgpack-encoded.
func NewTyped[K comparable, V any](m Map) *Typed[K, V] { return api.NewTyped[K, V](m) }

// NewTypedCodec returns a typed view of m with a value codec of your own.
func NewTypedCodec[K comparable, V any](m Map, codec Codec[V]) *Typed[K, V] {
	return api.NewTypedCodec[K, V](m, codec)
}
