package resp

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/collocate/grid/affinity"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/internal/api"
	"github.com/collocate/grid/internal/wire"
)

// This file maps Redis streams onto the grid's streams (docs/redis.md,
// "Streams"): a Redis stream is the grid stream of the same name, all its
// events published with the stream's name as key, so they live in one
// partition and keep one order. An entry's ID is "<position>-0", where
// position is the partition's journal position of the record that
// published it (increasing, not consecutive). Fields and values are kept
// as one msgpack array of strings.
//
//	XADD key [NOMKSTREAM] * field value [field value ...]
//	XRANGE key start end [COUNT count]
//	XREAD [COUNT count] [BLOCK ms] STREAMS key [key ...] id [id ...]
//
// Differences: IDs are always assigned by the grid (XADD takes only *);
// MAXLEN/MINID trimming is the grid's retention (StreamRecords and
// StreamBytes per partition, oldest first); no XDEL, XTRIM, XLEN,
// XREVRANGE, XGROUP or XREADGROUP (consumer groups are the SDK's Consume).

// maxXRead bounds the entries one XRANGE or XREAD answers per stream.
const maxXRead = 10000

// maxBlock bounds an XREAD BLOCK (BLOCK 0 waits this long, then answers
// null like a timeout: clients reissue it). A blocked connection reads
// nothing, so it cannot see its client leave: the bound is also how long a
// departed client's connection lingers.
const maxBlock = 5 * time.Second

func streamPartition(c *conn, key []byte) int {
	return affinity.Partition(string(key), c.s.node.Partitions())
}

func cmdXAdd(c *conn, cmd *command, out []byte) []byte {
	a := cmd.args
	i := 2
	if i < len(a) && strings.EqualFold(string(a[i]), "NOMKSTREAM") {
		i++ // a grid stream exists once an event was published: nothing to create
	}
	if i >= len(a) {
		return appendError(out, "ERR wrong number of arguments for 'xadd' command")
	}
	switch id := string(a[i]); {
	case strings.EqualFold(id, "MAXLEN"), strings.EqualFold(id, "MINID"):
		return appendError(out, "ERR MAXLEN and MINID are not supported: the grid trims streams by its retention (StreamRecords, StreamBytes)")
	case id != "*":
		return appendError(out, "ERR the grid assigns stream IDs: use * as the ID")
	}
	fields := a[i+1:]
	if len(fields) == 0 || len(fields)%2 != 0 {
		return appendError(out, "ERR wrong number of arguments for 'xadd' command")
	}
	strs := make([]string, len(fields))
	for j, f := range fields {
		strs[j] = string(f)
	}
	event, err := wire.Marshal(strs)
	if err != nil {
		return appendError(out, "ERR "+err.Error())
	}
	key := string(a[1])
	pos, err := c.s.node.Publish(cmd.ctx, key, key, event)
	if err != nil {
		return cmd.errReply(out, err)
	}
	return appendBulkString(out, formatID(pos))
}

func formatID(pos uint64) string { return strconv.FormatUint(pos, 10) + "-0" }

// parseID parses "<ms>[-<seq>]" as a position; "-" and "+" are the ends.
// exclusive ("(" prefix) moves it one past.
func parseID(s string, end bool) (uint64, error) {
	switch s {
	case "-":
		return 1, nil
	case "+":
		return ^uint64(0), nil
	}
	excl := strings.HasPrefix(s, "(")
	s = strings.TrimPrefix(s, "(")
	ms, seq, hasSeq := strings.Cut(s, "-")
	pos, err := strconv.ParseUint(ms, 10, 64)
	if err != nil {
		return 0, errors.New("ERR Invalid stream ID specified as stream command argument")
	}
	if hasSeq {
		if _, err := strconv.ParseUint(seq, 10, 64); err != nil {
			return 0, errors.New("ERR Invalid stream ID specified as stream command argument")
		}
	}
	switch {
	case excl && end:
		if pos == 0 {
			return 0, nil
		}
		return pos - 1, nil
	case excl:
		return pos + 1, nil
	case !end && pos == 0:
		return 1, nil
	}
	return pos, nil
}

// appendEntries writes events as [[id, [field, value, ...]], ...].
func appendEntries(out []byte, evs []grid.StreamEvent) []byte {
	out = appendArray(out, len(evs))
	for _, ev := range evs {
		out = appendArray(out, 2)
		out = appendBulkString(out, formatID(ev.Position))
		var fields []string
		if err := wire.Decode(ev.Value, &fields); err != nil || len(fields)%2 != 0 {
			// Published through the SDK, not as fields: one "value" field.
			out = appendArray(out, 2)
			out = appendBulkString(out, "value")
			out = appendBulk(out, ev.Value)
			continue
		}
		out = appendArray(out, len(fields))
		for _, f := range fields {
			out = appendBulkString(out, f)
		}
	}
	return out
}

// readRange returns key's entries from position from up to to, at most
// count of them.
func readRange(ctx context.Context, c *conn, key []byte, from, to uint64, count int) ([]grid.StreamEvent, error) {
	part := streamPartition(c, key)
	var out []grid.StreamEvent
	for from <= to && len(out) < count {
		evs, next, err := c.s.node.ReadStream(ctx, string(key), part, from, min(count-len(out), 1024))
		var te *api.TrimmedError
		if errors.As(err, &te) {
			if te.Oldest <= from {
				// A position beyond the stream's history: no entry is
				// there (the oldest retained is before it).
				return out, nil
			}
			from = te.Oldest // the range starts before what is retained
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, ev := range evs {
			if ev.Position > to || len(out) == count {
				return out, nil
			}
			out = append(out, ev)
		}
		if len(evs) == 0 || next <= from {
			return out, nil
		}
		from = next
	}
	return out, nil
}

func parseCount(s []byte) (int, bool) {
	n, ok := api.ParseInt(s)
	if !ok || n < 0 {
		return 0, false
	}
	return int(min(n, maxXRead)), true
}

func cmdXRange(c *conn, cmd *command, out []byte) []byte {
	a := cmd.args
	from, err := parseID(string(a[2]), false)
	if err != nil {
		return appendError(out, err.Error())
	}
	to, err := parseID(string(a[3]), true)
	if err != nil {
		return appendError(out, err.Error())
	}
	count := maxXRead
	switch {
	case len(a) == 6 && strings.EqualFold(string(a[4]), "COUNT"):
		var ok bool
		if count, ok = parseCount(a[5]); !ok {
			return appendError(out, "ERR value is not an integer or out of range")
		}
	case len(a) != 4:
		return appendError(out, "ERR syntax error")
	}
	if count == 0 || from > to {
		return appendArray(out, 0)
	}
	evs, err := readRange(cmd.ctx, c, a[1], from, to, count)
	if err != nil {
		return cmd.errReply(out, err)
	}
	return appendEntries(out, evs)
}

// xreadArgs are XREAD's parsed options.
type xreadArgs struct {
	count int
	block time.Duration // < 0: no BLOCK
	keys  [][]byte
	ids   []string
}

func parseXRead(a [][]byte) (xreadArgs, string) {
	x := xreadArgs{count: maxXRead, block: -1}
	i := 1
	for ; i < len(a); i++ {
		switch strings.ToUpper(string(a[i])) {
		case "COUNT":
			if i+1 >= len(a) {
				return x, "ERR syntax error"
			}
			n, ok := parseCount(a[i+1])
			if !ok {
				return x, "ERR value is not an integer or out of range"
			}
			x.count, i = max(n, 1), i+1
		case "BLOCK":
			if i+1 >= len(a) {
				return x, "ERR syntax error"
			}
			ms, ok := api.ParseInt(a[i+1])
			if !ok || ms < 0 {
				return x, "ERR timeout is not an integer or out of range"
			}
			x.block, i = maxBlock, i+1 // BLOCK 0 too
			if ms > 0 && ms < maxBlock.Milliseconds() {
				// Compared in milliseconds: a huge count's nanoseconds overflow.
				x.block = time.Duration(ms) * time.Millisecond
			}
		case "STREAMS":
			rest := a[i+1:]
			if len(rest) == 0 || len(rest)%2 != 0 {
				return x, "ERR Unbalanced 'xread' list of streams: for each stream key an ID or '$' must be specified."
			}
			x.keys = rest[:len(rest)/2]
			for _, id := range rest[len(rest)/2:] {
				x.ids = append(x.ids, string(id))
			}
			return x, ""
		default:
			return x, "ERR syntax error"
		}
	}
	return x, "ERR syntax error"
}

func cmdXRead(c *conn, cmd *command, out []byte) []byte {
	x, msg := parseXRead(cmd.args)
	if msg != "" {
		return appendError(out, msg)
	}
	ctx := cmd.ctx
	if x.block >= 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, x.block+5*time.Second)
		defer cancel()
	}
	from := make([]uint64, len(x.keys))
	for i, id := range x.ids {
		if id == "$" {
			// Only what is published from now on.
			_, next, err := c.s.node.ReadStream(ctx, string(x.keys[i]), streamPartition(c, x.keys[i]), 0, 1)
			if err != nil {
				return cmd.errReply(out, err)
			}
			from[i] = next
			continue
		}
		pos, err := parseID(id, false)
		if err != nil {
			return appendError(out, err.Error())
		}
		from[i] = pos + 1 // XREAD answers entries after the ID
	}
	deadline := time.Now().Add(max(x.block, 0))
	for {
		got := make([][]grid.StreamEvent, len(x.keys))
		found := false
		for i, key := range x.keys {
			evs, err := readRange(ctx, c, key, from[i], ^uint64(0), x.count)
			if err != nil {
				return cmd.errReply(out, err)
			}
			got[i], found = evs, found || len(evs) > 0
		}
		if found {
			n := 0
			for i := range got {
				if len(got[i]) > 0 {
					n++
				}
			}
			out = appendArray(out, n)
			for i, key := range x.keys {
				if len(got[i]) == 0 {
					continue
				}
				out = appendArray(out, 2)
				out = appendBulk(out, key)
				out = appendEntries(out, got[i])
			}
			return out
		}
		if x.block < 0 || !time.Now().Before(deadline) {
			if c.proto >= 3 {
				return appendNull(out, c.proto)
			}
			return append(out, "*-1\r\n"...)
		}
		select {
		case <-ctx.Done():
			return cmd.errReply(out, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
