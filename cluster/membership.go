// Package cluster owns membership (the only package that imports serf), node
// metadata, the partition-table authority (raft among up to three voters)
// and the versioned partition table it commits.
//
// Invariants: cluster never imports grid; the table is changed only by the
// authority's leader, through raft; every member applies committed tables in
// version order.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
)

// Status is a member's liveness as membership sees it.
type Status int

// Member statuses.
const (
	StatusAlive Status = iota
	StatusLeaving
	StatusLeft
	StatusFailed
)

func (s Status) String() string {
	switch s {
	case StatusAlive:
		return "alive"
	case StatusLeaving:
		return "leaving"
	case StatusLeft:
		return "left"
	case StatusFailed:
		return "failed"
	}
	return "unknown"
}

// MemberInfo is a member and the metadata it gossips in its tags.
type MemberInfo struct {
	Name   string
	RPC    string // host:port of grid RPC and raft
	HTTP   string // host:port of HTTP, if any
	RaftID string // name plus incarnation: a restarted process never reuses it
	Start  time.Time
	Status Status
}

// Membership is cluster membership and failure detection.
type Membership interface {
	// LocalName is this member's name.
	LocalName() string
	// Members returns every known member with its status. The caller owns
	// the slice.
	Members() []MemberInfo
	// Notify returns a channel that receives a value (coalesced) after any
	// membership change. It never closes.
	Notify() <-chan struct{}
	// Join contacts seeds and returns how many it reached.
	Join(ctx context.Context, seeds []string) (int, error)
	// Leave announces a graceful departure and waits for it to spread.
	Leave(ctx context.Context) error
	// Shutdown stops membership without a leave; idempotent.
	Shutdown() error
}

// Profile is a failure detection and consensus timing preset.
type Profile string

// Profiles. Both fail a silent member over within about a lease (1 s, see
// profile.go); they differ in membership's own failure detection, which
// confirms a failure and changes the raft voters: ProfileLAN is
// memberlist's LAN default (a SIGKILLed node is declared failed in about
// 5 s), ProfileTest detects in about 1 s on loopback (probe 200 ms, timeout
// 100 ms, suspicion multiplier 3).
const (
	ProfileLAN  Profile = "lan"
	ProfileTest Profile = "test"
)

// SerfConfig configures serf membership.
type SerfConfig struct {
	Name     string
	BindAddr string // gossip host:port (UDP and TCP); port 0 picks one
	Meta     MemberInfo
	Profile  Profile
	Logger   *slog.Logger
}

const (
	tagRPC   = "rpc"
	tagHTTP  = "http"
	tagRaft  = "raft"
	tagStart = "start"
)

type serfMembership struct {
	s      *serf.Serf
	rejoin time.Duration
	events chan serf.Event
	notify chan struct{}
	done   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once
	log    *slog.Logger
}

// slogWriter turns the log lines of serf, memberlist and raft into slog
// records: DEBUG lines are dropped, the rest logged with their level.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	switch {
	case strings.Contains(line, "[DEBUG]"), strings.Contains(line, "[TRACE]"):
	case strings.Contains(line, "[ERR"), strings.Contains(line, "[WARN"):
		w.log.Warn(line)
	default:
		w.log.Info(line)
	}
	return len(p), nil
}

// NewSerf starts serf membership bound to cfg.BindAddr. Its event channel is
// drained by a goroutine it owns (a blocked channel stalls serf).
func NewSerf(cfg SerfConfig) (Membership, string, error) {
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	host, portStr, err := net.SplitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, "", fmt.Errorf("gossip address %q: %w", cfg.BindAddr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, "", fmt.Errorf("gossip address %q: bad port", cfg.BindAddr)
	}
	if port == 0 {
		// memberlist needs one port for UDP and TCP: find one free for both.
		port, err = freeDualPort(host)
		if err != nil {
			return nil, "", err
		}
	}
	m := &serfMembership{
		rejoin: 10 * time.Second,
		events: make(chan serf.Event, 256),
		notify: make(chan struct{}, 1),
		done:   make(chan struct{}),
		log:    lg,
	}
	logger := log.New(slogWriter{lg.With("from", "serf")}, "", 0)
	conf := serf.DefaultConfig()
	conf.Init()
	conf.NodeName = cfg.Name
	conf.EventCh = m.events
	conf.Logger = logger
	conf.Tags = map[string]string{
		tagRPC:   cfg.Meta.RPC,
		tagRaft:  cfg.Meta.RaftID,
		tagStart: strconv.FormatInt(cfg.Meta.Start.UnixNano(), 10),
	}
	if cfg.Meta.HTTP != "" {
		conf.Tags[tagHTTP] = cfg.Meta.HTTP
	}
	ml := memberlist.DefaultLANConfig()
	if cfg.Profile == ProfileTest {
		ml = memberlist.DefaultLocalConfig()
		ml.ProbeInterval = 200 * time.Millisecond
		ml.ProbeTimeout = 100 * time.Millisecond
		ml.SuspicionMult = 3
		ml.GossipInterval = 50 * time.Millisecond
		ml.PushPullInterval = 5 * time.Second
		conf.ReapInterval = time.Second
		conf.ReconnectInterval = 2 * time.Second
		conf.ReconnectTimeout = 30 * time.Second
		conf.TombstoneTimeout = 30 * time.Second
		m.rejoin = time.Second
	}
	ml.BindAddr = host
	ml.BindPort = port
	ml.AdvertiseAddr = host
	ml.AdvertisePort = port
	ml.Logger = logger
	conf.MemberlistConfig = ml
	// Keep serf's member events prompt: coalescing would delay failover.
	conf.CoalescePeriod = 0
	conf.QuiescentPeriod = 0

	m.wg.Add(1)
	go m.drain()
	s, err := serf.Create(conf)
	if err != nil {
		close(m.done)
		m.wg.Wait()
		return nil, "", fmt.Errorf("start gossip on %s: %w", cfg.BindAddr, err)
	}
	m.s = s
	m.wg.Add(1)
	go m.rejoinLoop()
	return m, net.JoinHostPort(host, strconv.Itoa(port)), nil
}

// rejoinLoop contacts every member serf holds as failed, every rejoin
// interval. Serf's own reconnect tries one random failed member per
// interval, gated by the ratio of failed to alive members, so after a
// partition heals the two sides could take tens of seconds to merge.
func (m *serfMembership) rejoinLoop() {
	defer m.wg.Done()
	t := time.NewTicker(m.rejoin)
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-t.C:
		}
		var addrs []string
		for _, mem := range m.s.Members() {
			if mem.Status == serf.StatusFailed {
				addrs = append(addrs, net.JoinHostPort(mem.Addr.String(), strconv.Itoa(int(mem.Port))))
			}
		}
		if len(addrs) > 0 {
			if n, err := m.s.Join(addrs, true); n > 0 {
				m.log.Info("rejoined failed members", "reached", n, "of", len(addrs), "err", err)
			}
		}
	}
}

func freeDualPort(host string) (int, error) {
	for range 50 {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", net.JoinHostPort(host, strconv.Itoa(port)))
		_ = l.Close()
		if err == nil {
			_ = u.Close()
			return port, nil
		}
	}
	return 0, errors.New("no free port for gossip")
}

func (m *serfMembership) drain() {
	defer m.wg.Done()
	for {
		select {
		case e := <-m.events:
			if me, ok := e.(serf.MemberEvent); ok {
				for _, mem := range me.Members {
					m.log.Info("membership", "event", me.Type.String(), "member", mem.Name, "addr", mem.Addr.String())
				}
				select {
				case m.notify <- struct{}{}:
				default:
				}
			}
		case <-m.done:
			return
		}
	}
}

func (m *serfMembership) LocalName() string { return m.s.LocalMember().Name }

func (m *serfMembership) Notify() <-chan struct{} { return m.notify }

func (m *serfMembership) Members() []MemberInfo {
	ms := m.s.Members()
	out := make([]MemberInfo, 0, len(ms))
	for _, sm := range ms {
		mi := MemberInfo{Name: sm.Name, RPC: sm.Tags[tagRPC], HTTP: sm.Tags[tagHTTP], RaftID: sm.Tags[tagRaft]}
		if ns, err := strconv.ParseInt(sm.Tags[tagStart], 10, 64); err == nil {
			mi.Start = time.Unix(0, ns)
		}
		switch sm.Status {
		case serf.StatusAlive:
			mi.Status = StatusAlive
		case serf.StatusLeaving:
			mi.Status = StatusLeaving
		case serf.StatusLeft:
			mi.Status = StatusLeft
		default:
			mi.Status = StatusFailed
		}
		out = append(out, mi)
	}
	slices.SortFunc(out, func(a, b MemberInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (m *serfMembership) Join(ctx context.Context, seeds []string) (int, error) {
	type res struct {
		n   int
		err error
	}
	ch := make(chan res, 1)
	go func() { n, err := m.s.Join(seeds, true); ch <- res{n, err} }()
	select {
	case r := <-ch:
		return r.n, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (m *serfMembership) Leave(ctx context.Context) error {
	ch := make(chan error, 1)
	go func() { ch <- m.s.Leave() }()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *serfMembership) Shutdown() error {
	var err error
	m.once.Do(func() {
		err = m.s.Shutdown()
		close(m.done)
		m.wg.Wait()
	})
	return err
}
