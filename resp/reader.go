package resp

import (
	"errors"
	"io"
	"strconv"
	"sync/atomic"

	"github.com/collocate/grid/internal/api"
)

// ProtocolError is a request that breaks the protocol. The server answers it
// with "-ERR Protocol error: <msg>" and closes the connection, as Redis does.
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return "Protocol error: " + e.Msg }

var (
	errMultibulkLen = &ProtocolError{"invalid multibulk length"}
	errBulkLen      = &ProtocolError{"invalid bulk length"}
	errBigInline    = &ProtocolError{"too big inline request"}
	errBigCount     = &ProtocolError{"too big mbulk count string"}
	errBigBulkCount = &ProtocolError{"too big bulk count string"}
	errQuotes       = &ProtocolError{"unbalanced quotes in request"}
)

// Query buffer limits. Like Redis at client-query-buffer-limit, the server
// closes the connection without a reply.
var (
	errQueryBuffer      = errors.New("resp: request exceeds the connection's query buffer limit (MaxQueryBuffer)")
	errQueryBufferTotal = errors.New("resp: request exceeds the server's query buffer limit (MaxQueryBufferTotal)")
)

const (
	// maxInline bounds an inline command line and a multibulk or bulk
	// header line, as Redis's PROTO_INLINE_MAX_SIZE does.
	maxInline = 64 << 10
	// baseBuffer is a connection's read buffer while its requests are small.
	baseBuffer = 16 << 10
	// shrinkAbove: an empty buffer bigger than this is given back.
	shrinkAbove = 1 << 20
)

// budget is a byte allowance shared by all connections of a server: the
// total of their query buffers. A nil budget has no limit.
type budget struct {
	used  atomic.Int64
	limit int64
}

// take reserves n bytes, or reports false if that would pass the limit.
func (b *budget) take(n int) bool {
	if b == nil {
		return true
	}
	if b.used.Add(int64(n)) > b.limit {
		b.used.Add(-int64(n))
		return false
	}
	return true
}

// force reserves n bytes whatever the limit (a connection's base buffer).
func (b *budget) force(n int) {
	if b != nil {
		b.used.Add(int64(n))
	}
}

func (b *budget) give(n int) {
	if b != nil {
		b.used.Add(-int64(n))
	}
}

// readerLimits bound what one connection's requests may hold.
type readerLimits struct {
	maxBulk int // one bulk argument (Config.MaxBulk)
	maxArgs int // arguments of one command (Config.MaxArgs)
	maxBuf  int // unparsed bytes buffered (Config.MaxQueryBuffer)
}

// span is an argument of the request being parsed: its offset from the
// request's first byte, and its length.
type span struct{ off, n int }

// reader parses requests from a connection: RESP arrays of bulk strings, and
// inline commands (a line of space-separated words, for telnet). Parsed
// arguments point into the read buffer and stay valid until the next call
// to fill.
//
// A request that arrives over many reads is parsed as its bytes arrive: the
// parse position is kept between reads, so every byte is examined once. The
// buffer grows with the data that arrived (doubling, capped at maxBuf and
// the server's budget), never with a length a header merely declares.
type reader struct {
	rd     io.Reader
	buf    []byte
	start  int // first byte of the request being parsed
	end    int // end of data read
	lim    readerLimits
	budget *budget

	// The request at buf[start:], parsed so far (offsets from start).
	multi bool   // its "*<count>" header is parsed
	left  int    // bulks still to parse
	pos   int    // next unparsed byte
	scan  int    // where the search for the current line's end resumes
	bulk  int    // length of the bulk at pos once its header is parsed; -1 before
	spans []span // bulks parsed

	scanned int64 // bytes examined for line ends (tests check it is linear)
}

func newReader(rd io.Reader, lim readerLimits, b *budget) *reader {
	b.force(baseBuffer)
	return &reader{rd: rd, buf: make([]byte, baseBuffer), lim: lim, budget: b, bulk: -1}
}

// release gives the buffer's bytes back to the server's budget; the reader
// must not be used after.
func (r *reader) release() {
	r.budget.give(len(r.buf))
	r.buf = nil
}

// capacity is the size of the read buffer.
func (r *reader) capacity() int { return len(r.buf) }

// fill reads more data. It first moves the unparsed bytes to the front of
// the buffer (which invalidates every argument returned before) if the
// buffer is full, and grows it if the request being parsed needs more room.
func (r *reader) fill() error {
	if r.start > 0 && (r.end == len(r.buf) || r.start == r.end) {
		r.end = copy(r.buf, r.buf[r.start:r.end])
		r.start = 0
	}
	if r.end == len(r.buf) {
		if err := r.grow(); err != nil {
			return err
		}
	} else if r.end == 0 && len(r.buf) > shrinkAbove {
		r.budget.give(len(r.buf) - baseBuffer)
		r.buf = make([]byte, baseBuffer) // give a big buffer back once it is empty
	}
	n, err := r.rd.Read(r.buf[r.end:])
	r.end += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// grow doubles the full buffer, or gives it just the room the bulk being
// read still needs if that is less, within the connection's limit and the
// server's budget.
func (r *reader) grow() error {
	size := min(2*len(r.buf), r.lim.maxBuf)
	if need := r.pos + r.bulk + 2; r.multi && r.bulk >= 0 && need > len(r.buf) && need < size {
		size = need
	}
	if size <= len(r.buf) {
		return errQueryBuffer
	}
	if !r.budget.take(size - len(r.buf)) {
		return errQueryBufferTotal
	}
	nb := make([]byte, size)
	copy(nb, r.buf[:r.end])
	r.buf = nb
	return nil
}

// next parses one request from the buffer into args (reset first). It
// returns ok false if the buffer does not hold a whole request yet. An empty
// request (an empty line or "*0") gives ok true with no args.
func (r *reader) next(args [][]byte) ([][]byte, bool, error) {
	args = args[:0]
	if r.start == r.end {
		return args, false, nil
	}
	if !r.multi && r.buf[r.start] != '*' {
		return r.inline(args)
	}
	if !r.multi {
		count, ok, err := r.header(1, errMultibulkLen, errBigCount)
		if err != nil || !ok {
			return args, false, err
		}
		if count > int64(r.lim.maxArgs) {
			return args, false, errMultibulkLen
		}
		if count <= 0 {
			r.done()
			return args, true, nil
		}
		r.multi, r.left, r.spans = true, int(count), r.spans[:0]
	}
	for r.left > 0 {
		ok, err := r.nextBulk()
		if err != nil || !ok {
			return args, false, err
		}
	}
	for _, s := range r.spans {
		at := r.start + s.off
		args = append(args, r.buf[at:at+s.n:at+s.n])
	}
	r.done()
	return args, true, nil
}

// nextBulk parses the bulk at pos: "$<len>\r\n<bytes>\r\n".
func (r *reader) nextBulk() (bool, error) {
	if r.bulk < 0 {
		if r.start+r.pos >= r.end {
			return false, nil
		}
		if c := r.buf[r.start+r.pos]; c != '$' {
			return false, &ProtocolError{"expected '$', got '" + printable(c) + "'"}
		}
		n, ok, err := r.header(r.pos+1, errBulkLen, errBigBulkCount)
		if err != nil || !ok {
			return false, err
		}
		if n < 0 || n > int64(r.lim.maxBulk) {
			return false, errBulkLen
		}
		r.bulk = int(n)
	}
	end := r.start + r.pos + r.bulk + 2
	if end > r.end {
		return false, nil
	}
	if r.buf[end-2] != '\r' || r.buf[end-1] != '\n' {
		return false, errBulkLen
	}
	r.spans = append(r.spans, span{r.pos, r.bulk})
	r.pos += r.bulk + 2
	r.scan = r.pos
	r.bulk = -1
	r.left--
	return true, nil
}

// header parses the line "<int>\r\n" that starts at offset at (after its
// type byte at at-1) and moves pos past it; ok false if the line is not
// complete. As in Redis, more than maxInline bytes without a CR is an error
// (big), and so is a line that is not a canonical decimal int64 (bad).
func (r *reader) header(at int, bad, big error) (int64, bool, error) {
	line := r.buf[r.start+at : r.end]
	from := max(r.scan-at, 0)
	cr := -1
	for i := from; i < len(line); i++ {
		r.scanned++
		if line[i] == '\r' {
			cr = i
			break
		}
	}
	if cr < 0 {
		if len(line) > maxInline {
			return 0, false, big
		}
		r.scan = at + len(line)
		return 0, false, nil
	}
	r.scan = at + cr
	if cr+1 >= len(line) {
		return 0, false, nil
	}
	v, ok := api.ParseInt(line[:cr])
	if !ok || line[cr+1] != '\n' {
		return 0, false, bad
	}
	r.pos = at + cr + 2
	r.scan = r.pos
	return v, true, nil
}

// done ends the request at pos: the next one starts after it.
func (r *reader) done() {
	r.start += r.pos
	r.multi, r.left, r.pos, r.scan, r.bulk = false, 0, 0, 0, -1
	if cap(r.spans) > 4096 {
		r.spans = nil // do not keep a huge command's index
	}
}

func printable(c byte) string {
	if c < ' ' || c > '~' {
		return "\\x" + strconv.FormatUint(uint64(c), 16)
	}
	return string(c)
}

// inline parses a telnet-style line.
func (r *reader) inline(args [][]byte) ([][]byte, bool, error) {
	b := r.buf[r.start:r.end]
	nl := -1
	for i := r.scan; i < len(b); i++ {
		r.scanned++
		if b[i] == '\n' {
			nl = i
			break
		}
	}
	if nl < 0 {
		if len(b) > maxInline {
			return args, false, errBigInline
		}
		r.scan = len(b)
		return args, false, nil
	}
	line := b[:nl]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	args, err := splitArgs(args, line)
	if err != nil {
		return args, false, err
	}
	if len(args) > r.lim.maxArgs {
		return args, false, errMultibulkLen
	}
	r.pos = nl + 1
	r.done()
	return args, true, nil
}
