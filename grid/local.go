package grid

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// This file is the partition-local API that runs next to a partition's
// primary (package process builds event processors on it): which
// partitions this node leads, committed reads of a local stream that wait
// for the next commit of that partition only, and steps run here without
// a network hop. None of it forwards: a partition this node does not lead
// answers ErrNotOwner, and the caller moves on.

// Leads reports whether this node is the serving primary of partition
// part now (it may lose it at any moment: a step it then runs fails).
func (n *Node) Leads(part int) bool {
	if part < 0 || part >= len(n.parts) {
		return false
	}
	p := n.parts[part]
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.role == rolePrimary && p.seated()
}

// StepAt runs fn as a step of partition part, which this node must lead
// (ErrNotOwner otherwise, nothing run), within budget (0: MaxStepTime).
// It returns fn's result and the epoch it committed at. Unlike Execute it
// carries no client session: the caller makes its retries idempotent (a
// processor by the group position its step checks).
func (n *Node) StepAt(ctx context.Context, part int, name string, fn StepFunc, budget time.Duration) ([]byte, uint64, error) {
	if part < 0 || part >= len(n.parts) {
		return nil, 0, fmt.Errorf("%w: partition %d out of range [0, %d)", api.ErrBadRequest, part, len(n.parts))
	}
	if err := n.checkLease(); err != nil {
		return nil, 0, err
	}
	c := stepCall{name: name, fn: fn, budget: n.budget(int64(budget))}
	return n.runStep(ctx, n.parts[part], c)
}

// LocalRead asks for committed events of one partition led here.
type LocalRead struct {
	Part int
	// Name is a stream, or with Feed a map whose changes are read from
	// the partition's journal.
	Name string
	Feed bool
	// Group's committed position is answered too (a feed's groups are
	// kept in the stream FeedStream(Name)).
	Group string
	From  uint64 // the first position wanted (0: none, just the end)
	Max   int    // records at most (0: a default)
	Wait  time.Duration
}

// LocalEvents is a local read's answer.
type LocalEvents struct {
	Events    []Event // Map is the stream's or the map's name; a stream's events are of kind EventPublished
	Next      uint64  // the position to read next
	Committed uint64  // the group's committed position (0: no group)
	Oldest    uint64  // the oldest retained position
	Epoch     uint64  // the primary epoch that answered
}

// FeedStream is where the consumer groups of map m's change feed keep
// their positions (a stream without events).
func FeedStream(m string) string { return ReservedPrefix + "feed:" + m }

// ReadLocal returns committed events of partition r.Part from position
// r.From (at most r.Max records), with r.Group's committed position; the
// partition must be led here (ErrNotOwner). With none to answer it waits
// up to r.Wait for the next commit that changes the stream (an event, a
// group position; for a feed: the partition's next commit). A position older than
// retention answers ErrJournalTrimmed (a *TrimmedError naming the oldest).
func (n *Node) ReadLocal(ctx context.Context, r LocalRead) (LocalEvents, error) {
	if r.Part < 0 || r.Part >= len(n.parts) {
		return LocalEvents{}, fmt.Errorf("%w: partition %d out of range [0, %d)", api.ErrBadRequest, r.Part, len(n.parts))
	}
	if r.Max <= 0 || r.Max > maxJournalMax {
		r.Max = defaultJournalMax
	}
	p := n.parts[r.Part]
	timer := time.NewTimer(r.Wait)
	defer timer.Stop()
	for {
		out, committed, err := n.readLocalOnce(p, &r)
		if err != nil {
			return LocalEvents{}, err
		}
		if len(out.Records) > 0 || out.Next != r.From {
			return localEvents(&r, &out), nil
		}
		select {
		case <-committed:
		case <-timer.C:
			return localEvents(&r, &out), nil
		case <-ctx.Done():
			return LocalEvents{}, ctx.Err()
		case <-n.done:
			return LocalEvents{}, api.ErrClosed
		}
	}
}

// readLocalOnce reads what there is now, and the channel the partition's
// next commit closes.
func (n *Node) readLocalOnce(p *partition, r *LocalRead) (wire.JournalPart, <-chan struct{}, error) {
	var out wire.JournalPart
	budget := n.cfg.MaxFrame / 4
	err := n.checkLease()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		return out, nil, err
	}
	if r.Feed {
		err = p.readJournal(r.From, r.Name, r.Max, &budget, &out)
		out.Committed, _ = p.groupPos(FeedStream(r.Name), r.Group)
		return out, p.commitCh, err
	}
	err = p.readStream(r.From, r.Name, r.Group, r.Max, &budget, &out)
	if s := p.logs[r.Name]; s != nil && err == nil {
		// Woken by this stream's commits only, not by every commit of
		// the partition (other streams', the runs' own steps).
		return out, p.streamWait(s), nil
	}
	return out, p.commitCh, err
}

func localEvents(r *LocalRead, out *wire.JournalPart) LocalEvents {
	le := LocalEvents{Next: out.Next, Committed: out.Committed, Oldest: out.Oldest, Epoch: out.Epoch}
	for _, rec := range out.Records {
		for _, ev := range rec.Events {
			e := Event{Partition: r.Part, Position: rec.LSN, Kind: EventKind(ev.Kind), Map: r.Name, Key: ev.Key, Value: ev.Value, Old: ev.Old, Time: time.Unix(0, rec.Time)}
			if ev.ExpireAt != 0 {
				e.ExpireAt = time.Unix(0, ev.ExpireAt)
			}
			le.Events = append(le.Events, e)
		}
	}
	return le
}

// PartitionTag returns an affinity tag of partition part: any key
// containing "{" + tag + "}" as its first hash tag lives in part. Internal
// per-partition records (inbox watermarks) are keyed with it.
func (n *Node) PartitionTag(part int) string {
	n.tagsOnce.Do(func() { n.tags = partitionTags(len(n.parts)) })
	return n.tags[part]
}

// Partitions is the cluster's partition count.
func (v *StepView) Partitions() int { return len(v.n.parts) }

// PartitionTag is the tag of the step's partition (Node.PartitionTag).
func (v *StepView) PartitionTag() string { return v.n.PartitionTag(v.p.id) }

// partitionTags finds, for every partition, the first of "p0", "p1", ...
// that hashes to it.
func partitionTags(parts int) []string {
	tags := make([]string, parts)
	left := parts
	for i := 0; left > 0; i++ {
		t := "p" + strconv.Itoa(i)
		if p := affinity.Partition(t, parts); tags[p] == "" {
			tags[p] = t
			left--
		}
	}
	return tags
}

// tagCache is the lazily built PartitionTag table, and the internal steps
// (embedded in Node).
type tagCache struct {
	tagsOnce sync.Once
	tags     []string

	internalMu sync.RWMutex
	internal   map[string]func(args []byte) (StepFunc, error)
}

// SetInternalStep installs the step name, bound to its arguments by bind,
// for callers of Execute on this node and remote ones (install it on
// every member). The name must start with ReservedPrefix; it takes
// precedence over the functions of SetFunctions.
func (n *Node) SetInternalStep(name string, bind func(args []byte) (StepFunc, error)) error {
	if !reserved(name) || name == deliverStep {
		return fmt.Errorf("%w: internal step names start with %q (and %q is the grid's)", api.ErrBadRequest, ReservedPrefix, deliverStep)
	}
	n.internalMu.Lock()
	defer n.internalMu.Unlock()
	if n.internal == nil {
		n.internal = map[string]func([]byte) (StepFunc, error){}
	}
	n.internal[name] = bind
	return nil
}

// internalStep returns the binder of an internal step, if installed.
func (n *Node) internalStep(name string) (func([]byte) (StepFunc, error), bool) {
	if !reserved(name) {
		return nil, false
	}
	n.internalMu.RLock()
	defer n.internalMu.RUnlock()
	b, ok := n.internal[name]
	return b, ok
}

// Backlog is what a group has not consumed of a local stream or feed.
type Backlog struct {
	Position uint64    // the group's committed position (0: no group)
	Events   int       // committed events at or after it
	Oldest   time.Time // when the first of them was committed (zero: none)
}

// Backlog counts what r.Group has not consumed of r.Name (a stream, or
// with r.Feed a map's changes) at partition r.Part, which must be led
// here (ErrNotOwner). Without a group, everything retained counts.
func (n *Node) Backlog(r LocalRead) (Backlog, error) {
	if r.Part < 0 || r.Part >= len(n.parts) {
		return Backlog{}, fmt.Errorf("%w: partition %d out of range [0, %d)", api.ErrBadRequest, r.Part, len(n.parts))
	}
	p := n.parts[r.Part]
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.role != rolePrimary {
		return Backlog{}, p.notOwner()
	}
	var b Backlog
	var j *journal
	if r.Feed {
		b.Position, _ = p.groupPos(FeedStream(r.Name), r.Group)
		j = &p.journal
	} else {
		s := p.logs[r.Name]
		if s == nil {
			return b, nil
		}
		b.Position = s.groups[r.Group]
		j = &s.events
	}
	recs, _ := j.from(max(b.Position, j.oldest()), p.commit, j.len())
	for i := range recs {
		evs := recs[i].Events
		if r.Feed {
			evs = eventsOf(evs, r.Name)
		}
		if len(evs) > 0 && b.Events == 0 {
			b.Oldest = time.Unix(0, recs[i].Record.Time)
		}
		b.Events += len(evs)
	}
	return b, nil
}

// LocalEntry is an entry of a partition led here, as LocalEntries sees it.
type LocalEntry struct {
	Key   string
	Value []byte // shared with the store: never modify it
}

// LocalEntries returns the live entries of map m whose keys start with
// prefix in partition part, which must be led here (ErrNotOwner), at most
// max of them (0: all). It reads what the primary applied, which may not be
// committed yet: callers act on it only through steps, which check again.
func (n *Node) LocalEntries(part int, m, prefix string, max int) ([]LocalEntry, error) {
	if part < 0 || part >= len(n.parts) {
		return nil, fmt.Errorf("%w: partition %d out of range [0, %d)", api.ErrBadRequest, part, len(n.parts))
	}
	p := n.parts[part]
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.role != rolePrimary {
		return nil, p.notOwner()
	}
	now := nowNano()
	var out []LocalEntry
	for k, e := range p.maps[m] {
		if !e.live(now) || !strings.HasPrefix(k, prefix) {
			continue
		}
		out = append(out, LocalEntry{Key: k, Value: e.value})
		if max > 0 && len(out) >= max {
			break
		}
	}
	return out, nil
}
