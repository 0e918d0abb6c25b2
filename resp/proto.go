package resp

import (
	"io"
	"strconv"
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

// maxInline bounds an inline command line and a multibulk or bulk header
// line, as Redis's PROTO_INLINE_MAX_SIZE does.
const maxInline = 64 << 10

// reader parses requests from a connection: RESP arrays of bulk strings, and
// inline commands (a line of space-separated words, for telnet). Parsed
// arguments point into the read buffer and stay valid until the next call
// to fill.
type reader struct {
	rd      io.Reader
	buf     []byte
	start   int // first unparsed byte
	end     int // end of data read
	need    int // buf[start:end] cannot hold a whole request before this many bytes
	maxBulk int
	maxArgs int
}

func newReader(rd io.Reader, maxBulk, maxArgs int) *reader {
	return &reader{rd: rd, buf: make([]byte, 16<<10), maxBulk: maxBulk, maxArgs: maxArgs}
}

// buffered reports whether unparsed bytes remain.
func (r *reader) buffered() int { return r.end - r.start }

// fill reads more data, first moving the unparsed bytes to the front of the
// buffer (which invalidates every argument parsed before) and growing it if
// a request needs more room.
func (r *reader) fill() error {
	if r.start > 0 {
		n := copy(r.buf, r.buf[r.start:r.end])
		if r.need > 0 {
			r.need -= r.start
		}
		r.start, r.end = 0, n
	}
	want := max(r.need, r.end+1)
	if want > len(r.buf) {
		nb := make([]byte, max(want, 2*len(r.buf)))
		copy(nb, r.buf[:r.end])
		r.buf = nb
	} else if r.end == 0 && len(r.buf) > 1<<20 {
		r.buf = make([]byte, 16<<10) // give a big buffer back once it is empty
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

// next parses one request from the buffer into args (reset first). It
// returns ok false if the buffer does not hold a whole request yet. An empty
// request (an empty line or "*0") gives ok true with no args.
func (r *reader) next(args [][]byte) ([][]byte, bool, error) {
	args = args[:0]
	b := r.buf[r.start:r.end]
	if len(b) == 0 || r.end < r.need {
		return args, false, nil
	}
	if b[0] != '*' {
		return r.inline(args, b)
	}
	// "*<count>\r\n" then count times "$<len>\r\n<bytes>\r\n".
	count, pos, ok, err := header(b, 1, errMultibulkLen, errBigCount)
	if err != nil || !ok {
		return args, false, err
	}
	if count > int64(r.maxArgs) {
		return args, false, errMultibulkLen
	}
	if count <= 0 {
		r.start += pos
		r.need = 0
		return args, true, nil
	}
	for range count {
		if pos >= len(b) {
			r.need = r.start + pos + 1
			return args, false, nil
		}
		if b[pos] != '$' {
			return args, false, &ProtocolError{"expected '$', got '" + printable(b[pos]) + "'"}
		}
		n, p, ok, err := header(b, pos+1, errBulkLen, errBigBulkCount)
		if err != nil {
			return args, false, err
		}
		if !ok {
			r.need = r.start + len(b) + 1
			return args, false, nil
		}
		if n < 0 || n > int64(r.maxBulk) {
			return args, false, errBulkLen
		}
		end := p + int(n) + 2
		if end > len(b) {
			r.need = r.start + end
			return args, false, nil
		}
		if b[end-2] != '\r' || b[end-1] != '\n' {
			return args, false, errBulkLen
		}
		args = append(args, b[p:p+int(n):p+int(n)])
		pos = end
	}
	r.start += pos
	r.need = 0
	return args, true, nil
}

// header parses "<int>\r\n" at b[at:] and returns the value and the offset
// after it; ok false if the line is not complete.
func header(b []byte, at int, bad, big error) (int64, int, bool, error) {
	for i := at; i < len(b); i++ {
		if b[i] != '\r' {
			if i-at > 20 {
				return 0, 0, false, bad
			}
			continue
		}
		if i+1 >= len(b) {
			return 0, 0, false, nil
		}
		if b[i+1] != '\n' {
			return 0, 0, false, bad
		}
		v, err := strconv.ParseInt(string(b[at:i]), 10, 64)
		if err != nil {
			return 0, 0, false, bad
		}
		return v, i + 2, true, nil
	}
	if len(b)-at > maxInline {
		return 0, 0, false, big
	}
	return 0, 0, false, nil
}

func printable(c byte) string {
	if c < ' ' || c > '~' {
		return "\\x" + strconv.FormatUint(uint64(c), 16)
	}
	return string(c)
}

// inline parses a telnet-style line.
func (r *reader) inline(args [][]byte, b []byte) ([][]byte, bool, error) {
	nl := -1
	for i, c := range b {
		if c == '\n' {
			nl = i
			break
		}
	}
	if nl < 0 {
		if len(b) > maxInline {
			return args, false, errBigInline
		}
		r.need = r.end + 1
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
	if len(args) > r.maxArgs {
		return args, false, errMultibulkLen
	}
	r.start += nl + 1
	r.need = 0
	return args, true, nil
}

// splitArgs splits an inline command like Redis's sdssplitargs: words
// separated by spaces, "double quotes" with \n \r \t \b \a \\ \" and \xHH
// escapes, 'single quotes' with \' only. A closing quote must be followed by
// a space or the end of the line. Quoted words are unescaped in place.
func splitArgs(args [][]byte, line []byte) ([][]byte, error) {
	i := 0
	for {
		for i < len(line) && isSpace(line[i]) {
			i++
		}
		if i == len(line) {
			return args, nil
		}
		out := line[i:i] // unescaped bytes are written over the input
		inDQ, inSQ := false, false
		for {
			if inDQ {
				if i == len(line) {
					return args, errQuotes
				}
				c := line[i]
				switch {
				case c == '\\' && i+3 < len(line) && line[i+1] == 'x' && isHex(line[i+2]) && isHex(line[i+3]):
					out = append(out, unhex(line[i+2])<<4|unhex(line[i+3]))
					i += 4
				case c == '\\' && i+1 < len(line):
					i++
					switch e := line[i]; e {
					case 'n':
						out = append(out, '\n')
					case 'r':
						out = append(out, '\r')
					case 't':
						out = append(out, '\t')
					case 'b':
						out = append(out, '\b')
					case 'a':
						out = append(out, '\a')
					default:
						out = append(out, e)
					}
					i++
				case c == '"':
					i++
					if i < len(line) && !isSpace(line[i]) {
						return args, errQuotes
					}
					inDQ = false
					goto word
				default:
					out = append(out, c)
					i++
				}
			} else if inSQ {
				if i == len(line) {
					return args, errQuotes
				}
				c := line[i]
				switch {
				case c == '\\' && i+1 < len(line) && line[i+1] == '\'':
					out = append(out, '\'')
					i += 2
				case c == '\'':
					i++
					if i < len(line) && !isSpace(line[i]) {
						return args, errQuotes
					}
					inSQ = false
					goto word
				default:
					out = append(out, c)
					i++
				}
			} else {
				if i == len(line) || isSpace(line[i]) {
					goto word
				}
				switch c := line[i]; c {
				case '"':
					inDQ = true
				case '\'':
					inSQ = true
				default:
					out = append(out, c)
				}
				i++
			}
		}
	word:
		args = append(args, out[:len(out):len(out)])
	}
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// Reply encoding. proto is 2 or 3 (RESP3 after HELLO 3).

func appendSimple(b []byte, s string) []byte {
	b = append(b, '+')
	b = append(b, s...)
	return append(b, '\r', '\n')
}

// appendError writes an error reply; msg must start with its code ("ERR ...").
// CR and LF are replaced by spaces, as Redis does.
func appendError(b []byte, msg string) []byte {
	b = append(b, '-')
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		b = append(b, c)
	}
	return append(b, '\r', '\n')
}

func appendInt(b []byte, n int64) []byte {
	b = append(b, ':')
	b = strconv.AppendInt(b, n, 10)
	return append(b, '\r', '\n')
}

func appendBulk(b []byte, v []byte) []byte {
	b = append(b, '$')
	b = strconv.AppendInt(b, int64(len(v)), 10)
	b = append(b, '\r', '\n')
	b = append(b, v...)
	return append(b, '\r', '\n')
}

func appendBulkString(b []byte, v string) []byte {
	b = append(b, '$')
	b = strconv.AppendInt(b, int64(len(v)), 10)
	b = append(b, '\r', '\n')
	b = append(b, v...)
	return append(b, '\r', '\n')
}

func appendNull(b []byte, proto int) []byte {
	if proto >= 3 {
		return append(b, '_', '\r', '\n')
	}
	return append(b, '$', '-', '1', '\r', '\n')
}

func appendArray(b []byte, n int) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(n), 10)
	return append(b, '\r', '\n')
}

// appendMap writes a map header of n pairs (an array of 2n items in RESP2).
func appendMap(b []byte, n int, proto int) []byte {
	if proto >= 3 {
		b = append(b, '%')
		b = strconv.AppendInt(b, int64(n), 10)
		return append(b, '\r', '\n')
	}
	return appendArray(b, 2*n)
}

// appendVerbatim writes text (INFO, CLIENT INFO): a verbatim string in
// RESP3, a bulk string in RESP2.
func appendVerbatim(b []byte, text string, proto int) []byte {
	if proto < 3 {
		return appendBulkString(b, text)
	}
	b = append(b, '=')
	b = strconv.AppendInt(b, int64(len(text)+4), 10)
	b = append(b, "\r\ntxt:"...)
	b = append(b, text...)
	return append(b, '\r', '\n')
}
