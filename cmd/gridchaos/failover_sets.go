package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/collocate/grid/affinity"
)

// setNoAnswer is how long a SET may go unanswered before it counts as
// never answered.
const setNoAnswer = 30 * time.Second

// setsSummary is the sets mode: single Redis SETs right after a member was
// SIGSTOPped, sent to the other members.
type setsSummary struct {
	Concurrent setOutcomes `json:"concurrent"` // every run's concurrent phase
	Sequential setOutcomes `json:"sequential"` // every run's sequential phase
	Runs       []setsRun   `json:"runs"`
}

type setsRun struct {
	Victim     string      `json:"victim"`
	Leader     bool        `json:"victim_was_leader"`
	Concurrent setOutcomes `json:"concurrent"`
	Sequential setOutcomes `json:"sequential"`
	Note       string      `json:"note,omitempty"`
}

// setOutcomes counts the answers of a batch of SETs.
type setOutcomes struct {
	Sent      int                       `json:"sent"`
	OK        int                       `json:"ok"`        // +OK within SetWait
	Late      int                       `json:"ok_late"`   // +OK after SetWait
	Timeout   int                       `json:"timeout"`   // -TIMEOUT ...
	Other     int                       `json:"other"`     // another error reply, or no connection
	NoAnswer  int                       `json:"no_answer"` // nothing within 30 s
	Replies   []string                  `json:"other_replies,omitempty"`
	LatencyMs dist                      `json:"latency_ms"` // of the answered
	ByRole    map[string]map[string]int `json:"by_victim_role"`
	latencies []float64
}

// setResult is one SET's answer.
type setResult struct {
	role    string // the victim's role in the key's partition
	reply   string // the reply line, "" if none
	err     error
	latency time.Duration
}

func (o *setOutcomes) add(r setResult, wait time.Duration) {
	o.Sent++
	kind := "no_answer"
	switch {
	case r.err != nil && r.reply == "":
		if ne, ok := r.err.(net.Error); ok && ne.Timeout() {
			o.NoAnswer++
		} else {
			kind = "other"
			o.Other++
			o.note("error: " + r.err.Error())
		}
	case r.reply == "+OK" && r.latency <= wait:
		kind = "ok"
		o.OK++
	case r.reply == "+OK":
		kind = "ok_late"
		o.Late++
	case strings.HasPrefix(r.reply, "-TIMEOUT"):
		kind = "timeout"
		o.Timeout++
	default:
		kind = "other"
		o.Other++
		o.note(r.reply)
	}
	if kind != "no_answer" && r.reply != "" {
		o.latencies = append(o.latencies, msOf(int64(r.latency)))
	}
	if o.ByRole == nil {
		o.ByRole = map[string]map[string]int{}
	}
	if o.ByRole[r.role] == nil {
		o.ByRole[r.role] = map[string]int{}
	}
	o.ByRole[r.role][kind]++
}

func (o *setOutcomes) note(reply string) {
	if len(o.Replies) < 5 && !slices.Contains(o.Replies, reply) {
		o.Replies = append(o.Replies, reply)
	}
}

func (o *setOutcomes) merge(p setOutcomes) {
	o.Sent += p.Sent
	o.OK += p.OK
	o.Late += p.Late
	o.Timeout += p.Timeout
	o.Other += p.Other
	o.NoAnswer += p.NoAnswer
	for _, r := range p.Replies {
		o.note(r)
	}
	o.latencies = append(o.latencies, p.latencies...)
	o.LatencyMs = distOf(o.latencies)
	if o.ByRole == nil {
		o.ByRole = map[string]map[string]int{}
	}
	for role, m := range p.ByRole {
		if o.ByRole[role] == nil {
			o.ByRole[role] = map[string]int{}
		}
		for k, n := range m {
			o.ByRole[role][k] += n
		}
	}
}

// setsMode runs cfg.SetsRuns rounds, on the raft leader and on a follower
// in turn; each round pauses it twice: once for concurrent SETs, once for
// sequential ones.
func (f *failover) setsMode(ctx context.Context, h *harness) (*setsSummary, error) {
	s := &setsSummary{}
	initial := slices.Clone(h.procs[:f.cfg.Nodes])
	for run := range f.cfg.SetsRuns {
		victim := h.pickVictim(ctx, run, initial)
		r := setsRun{Victim: victim.name}
		for _, concurrent := range []bool{true, false} {
			o, leader, err := f.setsPhase(ctx, h, victim, run, concurrent, &r.Note)
			if err != nil {
				return s, fmt.Errorf("run %d (%s): %w", run+1, victim.name, err)
			}
			r.Leader = r.Leader || leader
			if concurrent {
				r.Concurrent = o
				s.Concurrent.merge(o)
			} else {
				r.Sequential = o
				s.Sequential.merge(o)
			}
			h.logf("run %d: SIGSTOP %s (leader %v), %d %s SETs: %d OK, %d late, %d TIMEOUT, %d other, %d no answer; latency %+v",
				run+1, victim.name, leader, o.Sent, map[bool]string{true: "concurrent", false: "sequential"}[concurrent],
				o.OK, o.Late, o.Timeout, o.Other, o.NoAnswer, o.LatencyMs)
		}
		s.Runs = append(s.Runs, r)
	}
	return s, nil
}

// setsPhase SIGSTOPs victim, sends cfg.Sets SETs to the other members
// (all at once, or one after another), SIGCONTs it after cfg.Hold, waits
// for the answers and for the cluster to be safe again.
func (f *failover) setsPhase(ctx context.Context, h *harness, victim *proc, run int, concurrent bool, note *string) (setOutcomes, bool, error) {
	var o setOutcomes
	cv, err := h.latest(ctx)
	if err != nil {
		return o, false, err
	}
	leader := h.leaderOf(cv) == victim
	roles := victimRoles(cv, victim.name)
	var addrs []string
	for _, p := range h.running() {
		if p != victim {
			addrs = append(addrs, respAddrOf(h, p))
		}
	}
	keys := make([]string, f.cfg.Sets)
	for i := range keys {
		keys[i] = fmt.Sprintf("set-%d-%v-%d", run, concurrent, i)
	}
	h.logf("SIGSTOP %s", victim.name)
	h.signal(victim, syscall.SIGSTOP)
	victim.paused = true
	results := make(chan []setResult, 1)
	go func() {
		results <- sendSets(ctx, keys, addrs, roles, concurrent)
	}()
	sleepCtx(ctx, f.cfg.Hold)
	h.signal(victim, syscall.SIGCONT)
	victim.paused = false
	h.logf("SIGCONT %s", victim.name)
	for _, r := range <-results {
		o.add(r, f.cfg.SetWait)
	}
	o.LatencyMs = distOf(o.latencies)
	if err := h.waitSafe(ctx, 90*time.Second); err != nil {
		*note = fmt.Sprintf("%s did not rejoin within 90 s (%v); restarted", victim.name, err)
		h.logf("%s", *note)
		h.kill(victim)
		if err := h.restart(ctx, victim); err != nil {
			return o, leader, err
		}
		if err := h.waitSafe(ctx, 90*time.Second); err != nil {
			return o, leader, fmt.Errorf("not safe after restarting %s: %w", victim.name, err)
		}
	}
	return o, leader, nil
}

// sendSets sends one SET per key, each on its own connection to one of
// addrs in turn: all at once, or each after the previous one's answer.
func sendSets(ctx context.Context, keys, addrs []string, roles []string, concurrent bool) []setResult {
	out := make([]setResult, len(keys))
	one := func(i int) {
		k := keys[i]
		start := time.Now()
		reply, err := respSet(ctx, addrs[i%len(addrs)], k, k)
		out[i] = setResult{role: roles[affinity.Partition(k, len(roles))], reply: reply, err: err, latency: time.Since(start)}
	}
	if !concurrent {
		for i := range keys {
			one(i)
		}
		return out
	}
	var wg sync.WaitGroup
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			one(i)
		}()
	}
	wg.Wait()
	return out
}

// respSet sends SET key value on a new connection to addr and returns the
// reply line (without CRLF), waiting up to setNoAnswer.
func respSet(ctx context.Context, addr, key, value string) (string, error) {
	d := net.Dialer{Timeout: 2 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(setNoAnswer))
	if _, err := fmt.Fprintf(conn, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(key), key, len(value), value); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}
