package resp

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
)

// chunked yields its input at most n bytes per Read, as a socket does.
type chunked struct {
	b []byte
	n int
}

func (r *chunked) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), r.n)], r.b)
	r.b = r.b[k:]
	return k, nil
}

// bytesAllocated is the heap bytes f allocates (all goroutines; the
// callers run nothing else meanwhile).
func bytesAllocated(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// TestReaderAllocatesAsDataArrives: a header that declares a huge bulk and
// then no data must not make the reader allocate for the declared length
// (issue 15 item 2: 17 bytes made a connection allocate 512 MiB).
func TestReaderAllocatesAsDataArrives(t *testing.T) {
	for _, in := range []string{
		"*1\r\n$536870000\r\n",
		"*2\r\n$3\r\nSET\r\n$536870000\r\n" + strings.Repeat("x", 100<<10),
	} {
		got := bytesAllocated(func() {
			_, _ = parseAll(newReader(strings.NewReader(in), readerLimits{maxBulk: 1 << 30, maxArgs: 10, maxBuf: 1 << 31}, nil))
		})
		if got > 1<<20 {
			t.Errorf("%.30q: the reader allocated %d bytes for %d bytes of input", in, got, len(in))
		}
	}
}

// bigDel is a DEL of n keys in RESP, as a client library sends it.
func bigDel(n int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n$3\r\nDEL\r\n", n+1)
	for i := range n {
		k := fmt.Sprintf("key:%07d", i)
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(k), k)
	}
	return b.Bytes()
}

// TestReaderResumesLargeCommand: a command that arrives over many reads is
// parsed once, not again from its start on every read (issue 15 item 7: a
// DEL of 400k keys in 64 KiB reads took 1.7 s). The parser counts the
// header bytes it examines; each must be examined about once.
func TestReaderResumesLargeCommand(t *testing.T) {
	const n = 400_000
	in := bigDel(n)
	rd := newReader(&chunked{in, 64 << 10}, readerLimits{maxBulk: 1 << 20, maxArgs: 1 << 20, maxBuf: 1 << 30}, nil)
	cmds, err := parseAll(rd)
	if err != nil || len(cmds) != 1 || len(cmds[0]) != n+1 || cmds[0][n] != fmt.Sprintf("key:%07d", n-1) {
		t.Fatalf("parsed %d commands, %v", len(cmds), err)
	}
	t.Logf("examined %d header bytes for a %d-byte command", rd.scanned, len(in))
	if rd.scanned > int64(len(in)) {
		t.Fatalf("the parser examined %d header bytes for a %d-byte command: it re-parses from the start", rd.scanned, len(in))
	}
}

// BenchmarkReaderLargeCommand parses a DEL of 400k keys arriving in 64 KiB
// reads.
func BenchmarkReaderLargeCommand(b *testing.B) {
	in := bigDel(400_000)
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if _, err := parseAll(newReader(&chunked{in, 64 << 10}, readerLimits{maxBulk: 1 << 20, maxArgs: 1 << 20, maxBuf: 1 << 30}, nil)); err != nil {
			b.Fatal(err)
		}
	}
}

// TestReaderQueryBufferLimits: a request that does not fit the
// connection's query buffer limit, or the server's total, is an error
// (the connection closes); one that fits is parsed, and an empty buffer
// gives its memory back.
func TestReaderQueryBufferLimits(t *testing.T) {
	bulk := func(n int) string { return fmt.Sprintf("$%d\r\n%s\r\n", n, strings.Repeat("v", n)) }
	lim := readerLimits{maxBulk: 1 << 20, maxArgs: 10, maxBuf: 1<<20 + maxInline}
	fits := "*2\r\n$3\r\nSET\r\n" + bulk(1<<20)
	tooBig := "*3\r\n$3\r\nSET\r\n" + bulk(1<<20) + bulk(1<<20)

	b := &budget{limit: 4 << 20}
	rd := newReader(&chunked{[]byte(fits + "*1\r\n$4\r\nPING\r\n"), 64 << 10}, lim, b)
	cmds, err := parseAll(rd)
	if err != nil || len(cmds) != 2 || len(cmds[0][1]) != 1<<20 {
		t.Fatalf("a request within the limit: %d commands, %v", len(cmds), err)
	}
	if rd.capacity() != baseBuffer || b.used.Load() != baseBuffer {
		t.Fatalf("after the request: buffer %d, budget used %d; want both %d", rd.capacity(), b.used.Load(), baseBuffer)
	}
	rd.release()
	if b.used.Load() != 0 {
		t.Fatalf("budget used %d after release", b.used.Load())
	}

	if _, err := parseAll(newReader(&chunked{[]byte(tooBig), 64 << 10}, lim, nil)); err != errQueryBuffer {
		t.Fatalf("a request over MaxQueryBuffer: %v", err)
	}

	// Two connections share a 2 MiB budget: the first holds 1 MiB of an
	// unfinished request, the second cannot grow past what is left.
	b = &budget{limit: 2 << 20}
	first := newReader(&chunked{[]byte(fits[:1<<20]), 64 << 10}, lim, b)
	if _, err := parseAll(first); err != nil {
		t.Fatalf("first connection: %v", err)
	}
	second := newReader(&chunked{[]byte(fits), 64 << 10}, lim, b)
	if _, err := parseAll(second); err != errQueryBufferTotal {
		t.Fatalf("second connection over the total: %v", err)
	}
	if used := b.used.Load(); used > b.limit {
		t.Fatalf("budget used %d > limit %d", used, b.limit)
	}
	first.release()
	second.release()
	if b.used.Load() != 0 {
		t.Fatalf("budget used %d after release", b.used.Load())
	}
}
