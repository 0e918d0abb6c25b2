package compute

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// View is a function's access to its partition: Get, Entry and Range read
// any map's entries of the partition, Set and Delete buffer writes to keys
// of the same partition (grid.StepView).
type View = grid.StepView

// Func is a partition function: it runs at the primary of its partition
// with v, and its writes (through v) and result commit together, once.
// ctx ends at the call's time budget. An error applies nothing.
type Func[A, R any] func(ctx context.Context, v *View, args A) (R, error)

// MemberFunc is a member function (Broadcast): it runs on a member,
// outside any partition, and is not deduplicated.
type MemberFunc[A, R any] func(ctx context.Context, args A) (R, error)

// Registry holds named functions; install it on a node with New. Safe for
// concurrent use; functions may be registered while the node serves.
type Registry struct {
	mu      sync.RWMutex
	steps   map[string]func(args []byte) (grid.StepFunc, error)
	members map[string]func(args []byte) (grid.MemberFunc, error)
	filters map[string]func(args []byte) (grid.Filter, error)
}

var _ grid.Functions = (*Registry)(nil)

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{
		steps:   map[string]func([]byte) (grid.StepFunc, error){},
		members: map[string]func([]byte) (grid.MemberFunc, error){},
		filters: map[string]func([]byte) (grid.Filter, error){},
	}
}

// Register adds the partition function fn under name. A name is
// registered once (partition and member functions share the names).
func Register[A, R any](r *Registry, name string, fn Func[A, R]) error {
	bind := func(raw []byte) (grid.StepFunc, error) {
		args, err := decodeArgs[A](name, raw)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context, v *grid.StepView) ([]byte, error) {
			res, err := fn(ctx, v, args)
			if err != nil {
				return nil, err
			}
			return encodeResult(name, res)
		}, nil
	}
	return r.add(name, func() { r.steps[name] = bind })
}

// RegisterMember adds the member function fn under name.
func RegisterMember[A, R any](r *Registry, name string, fn MemberFunc[A, R]) error {
	bind := func(raw []byte) (grid.MemberFunc, error) {
		args, err := decodeArgs[A](name, raw)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context) ([]byte, error) {
			res, err := fn(ctx, args)
			if err != nil {
				return nil, err
			}
			return encodeResult(name, res)
		}, nil
	}
	return r.add(name, func() { r.members[name] = bind })
}

// Predicate is a filter of partition tasks (PartsOptions.Filter): true
// for the entries a task iterates. It must not modify value.
type Predicate[A any] func(args A, key string, value []byte) bool

// RegisterFilter adds the predicate fn under name. bind, if not nil,
// checks the arguments once per task (a bad pattern, say); its error
// reaches the caller as ErrBadArgs.
func RegisterFilter[A any](r *Registry, name string, fn Predicate[A], bind func(A) error) error {
	b := func(raw []byte) (grid.Filter, error) {
		args, err := decodeArgs[A](name, raw)
		if err != nil {
			return nil, err
		}
		if bind != nil {
			if err := bind(args); err != nil {
				return nil, fmt.Errorf("%w: filter %q: %v", grid.ErrBadArgs, name, err)
			}
		}
		return func(key string, value []byte) bool { return fn(args, key, value) }, nil
	}
	return r.add(name, func() { r.filters[name] = b })
}

func (r *Registry) add(name string, set func()) error {
	if name == "" {
		return fmt.Errorf("compute: empty function name")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.steps[name] != nil || r.members[name] != nil || r.filters[name] != nil {
		return fmt.Errorf("compute: function %q is already registered", name)
	}
	set()
	return nil
}

// Kinds of registered names (FunctionInfo.Kind).
const (
	KindPartition = "partition" // Register: ExecuteOnKey, ExecuteOnPartitions
	KindMember    = "member"    // RegisterMember: Broadcast
	KindFilter    = "filter"    // RegisterFilter: PartsOptions.Filter
)

// FunctionInfo describes one registered name.
type FunctionInfo struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
}

// List lists the registered functions and filters, sorted by name.
func (r *Registry) List() []FunctionInfo {
	r.mu.RLock()
	out := make([]FunctionInfo, 0, len(r.steps)+len(r.members)+len(r.filters))
	for n := range r.steps {
		out = append(out, FunctionInfo{n, KindPartition})
	}
	for n := range r.members {
		out = append(out, FunctionInfo{n, KindMember})
	}
	for n := range r.filters {
		out = append(out, FunctionInfo{n, KindFilter})
	}
	r.mu.RUnlock()
	slices.SortFunc(out, func(a, b FunctionInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Names lists the registered functions, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.steps)+len(r.members)+len(r.filters))
	for n := range r.steps {
		out = append(out, n)
	}
	for n := range r.members {
		out = append(out, n)
	}
	for n := range r.filters {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Step implements grid.Functions.
func (r *Registry) Step(name string, args []byte) (grid.StepFunc, error) {
	r.mu.RLock()
	bind := r.steps[name]
	_, member := r.members[name]
	r.mu.RUnlock()
	if bind == nil {
		if member {
			return nil, fmt.Errorf("%w: %q is a member function (Broadcast), not a partition function", grid.ErrNoFunction, name)
		}
		return nil, fmt.Errorf("%w: %q", grid.ErrNoFunction, name)
	}
	return bind(args)
}

// Member implements grid.Functions.
func (r *Registry) Member(name string, args []byte) (grid.MemberFunc, error) {
	r.mu.RLock()
	bind := r.members[name]
	r.mu.RUnlock()
	if bind == nil {
		return nil, fmt.Errorf("%w: no member function %q", grid.ErrNoFunction, name)
	}
	return bind(args)
}

// Filter implements grid.Functions.
func (r *Registry) Filter(name string, args []byte) (grid.Filter, error) {
	r.mu.RLock()
	bind := r.filters[name]
	r.mu.RUnlock()
	if bind == nil {
		return nil, fmt.Errorf("%w: no filter %q", grid.ErrNoFunction, name)
	}
	return bind(args)
}

// decodeArgs decodes msgpack args; empty args decode to A's zero value.
func decodeArgs[A any](name string, raw []byte) (A, error) {
	var a A
	if len(raw) == 0 {
		return a, nil
	}
	if err := wire.Decode(raw, &a); err != nil {
		return a, fmt.Errorf("%w: %q takes %T: %v", grid.ErrBadArgs, name, a, err)
	}
	return a, nil
}

func encodeResult[R any](name string, res R) ([]byte, error) {
	b, err := msgpack.Marshal(res)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: encoding its %T result: %v", grid.ErrFunctionFailed, name, res, err)
	}
	return b, nil
}
