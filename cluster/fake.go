package cluster

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
)

// FakeNetwork is an in-memory membership service for tests: members join it
// and every change notifies all of them at once. Failures are injected with
// Fail. It runs no goroutines.
type FakeNetwork struct {
	mu      sync.Mutex
	members map[string]*MemberInfo
	nodes   map[string]*fakeMember
}

// NewFakeNetwork returns an empty fake network.
func NewFakeNetwork() *FakeNetwork {
	return &FakeNetwork{members: map[string]*MemberInfo{}, nodes: map[string]*fakeMember{}}
}

// Add registers a member (alive) and returns its Membership.
func (n *FakeNetwork) Add(info MemberInfo) Membership {
	n.mu.Lock()
	info.Status = StatusAlive
	n.members[info.Name] = &info
	fm := &fakeMember{net: n, name: info.Name, notify: make(chan struct{}, 1)}
	n.nodes[info.Name] = fm
	n.mu.Unlock()
	n.broadcast()
	return fm
}

// Fail marks a member failed, as failure detection would.
func (n *FakeNetwork) Fail(name string) { n.set(name, StatusFailed) }

// SetStatus sets name's status as every member sees it.
func (n *FakeNetwork) SetStatus(name string, s Status) { n.set(name, s) }

func (n *FakeNetwork) set(name string, s Status) {
	n.mu.Lock()
	if m, ok := n.members[name]; ok {
		m.Status = s
	}
	n.mu.Unlock()
	n.broadcast()
}

func (n *FakeNetwork) broadcast() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, fm := range n.nodes {
		select {
		case fm.notify <- struct{}{}:
		default:
		}
	}
}

type fakeMember struct {
	net    *FakeNetwork
	name   string
	notify chan struct{}
}

func (f *fakeMember) LocalName() string       { return f.name }
func (f *fakeMember) Notify() <-chan struct{} { return f.notify }

func (f *fakeMember) Members() []MemberInfo {
	f.net.mu.Lock()
	defer f.net.mu.Unlock()
	out := make([]MemberInfo, 0, len(f.net.members))
	for _, m := range f.net.members {
		out = append(out, *m)
	}
	slices.SortFunc(out, func(a, b MemberInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (f *fakeMember) Join(ctx context.Context, seeds []string) (int, error) {
	if len(seeds) == 0 {
		return 0, errors.New("no seeds")
	}
	return len(seeds), nil
}

func (f *fakeMember) Leave(ctx context.Context) error {
	f.net.set(f.name, StatusLeft)
	return nil
}

func (f *fakeMember) Shutdown() error {
	f.net.mu.Lock()
	delete(f.net.nodes, f.name)
	f.net.mu.Unlock()
	return nil
}
