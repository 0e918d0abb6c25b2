package resp_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"github.com/collocate/grid/resp"
)

// infoField reads one INFO field through conn.
func infoField(t *testing.T, c *rawConn, field string) int64 {
	t.Helper()
	r := c.do("INFO", "everything")
	i := strings.Index(r, "\r\n"+field+":")
	if i < 0 {
		t.Fatalf("INFO has no %s", field)
	}
	v := r[i+len(field)+3:]
	v = v[:strings.IndexByte(v, '\r')]
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatalf("INFO %s: %q", field, v)
	}
	return n
}

func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestSlowReaderIsBounded: a client that pipelines GETs of a large value
// and never reads its replies holds a bounded amount of the server's
// memory (issue 10 item 7b), the server keeps serving other clients, and
// with a WriteTimeout such a client is closed.
func TestSlowReaderIsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 1, nil)
	c.WaitStable(30 * time.Second)
	listen := func(writeTimeout time.Duration) *resp.Server {
		cfg := resp.DefaultConfig()
		cfg.Addr, cfg.Logger = "127.0.0.1:0", c.Logger(0)
		cfg.MaxReplyBuffer, cfg.MaxInFlight, cfg.WriteTimeout = 1<<20, 4, writeTimeout
		s, err := resp.Listen(c.Nodes[0], cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	s := listen(0)
	const valueSize, gets = 1 << 20, 300
	other := dialRaw(t, s.Addr().String())
	if r := other.do("SET", "big", strings.Repeat("v", valueSize)); r != "+OK\r\n" {
		t.Fatalf("SET: %q", r)
	}
	before := liveHeap()
	pipeline := bytes.Repeat(encode("GET", "big"), gets)

	slow := dialRaw(t, s.Addr().String())
	go func() { _, _ = slow.nc.Write(pipeline) }() // may block: the server stops reading
	// The server runs commands until the replies waiting for the client
	// reach MaxReplyBuffer, then waits: sample its memory meanwhile.
	bound := int64(1<<20 + 4*(valueSize+64) + 1<<20) // MaxReplyBuffer + MaxInFlight replies + buffers
	var maxHeap uint64
	var maxClients int64
	for range 20 {
		time.Sleep(100 * time.Millisecond)
		maxHeap = max(maxHeap, liveHeap()-min(before, liveHeap()))
		maxClients = max(maxClients, infoField(t, other, "mem_clients_normal"))
		if r := other.do("GET", "nope"); r != "$-1\r\n" {
			t.Fatalf("another client while the slow one waits: %q", r)
		}
	}
	t.Logf("slow client: server heap grew by at most %d bytes, client buffers at most %d bytes", maxHeap, maxClients)
	if maxClients > bound {
		t.Errorf("client buffers reached %d bytes, bound %d", maxClients, bound)
	}
	if maxHeap > 64<<20 {
		t.Errorf("the server's live heap grew by %d bytes for a client that reads nothing", maxHeap)
	}
	// It still gets every reply, in order, once it reads.
	want := "$" + strconv.Itoa(valueSize) + "\r\n"
	for i := range gets {
		// A deadline per reply: under -race on a loaded machine the whole
		// transfer may take longer than any fixed total.
		_ = slow.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
		r, err := slow.reply()
		if err != nil || !strings.HasPrefix(r, want) || len(r) != len(want)+valueSize+2 {
			t.Fatalf("reply %d: %.20q, %v", i, r, err)
		}
	}

	// With a WriteTimeout, a client that reads nothing is closed.
	s2 := listen(300 * time.Millisecond)
	slow2 := dialRaw(t, s2.Addr().String())
	go func() { _, _ = slow2.nc.Write(pipeline) }()
	watcher := dialRaw(t, s2.Addr().String())
	deadline := time.Now().Add(20 * time.Second)
	for infoField(t, watcher, "connected_clients") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("a client that reads nothing was not closed after WriteTimeout")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := infoField(t, watcher, "client_output_buffer_limit_disconnections"); n != 1 {
		t.Fatalf("client_output_buffer_limit_disconnections %d, want 1", n)
	}
}

// dropped reports whether the server closed c without a reply (with a FIN,
// or a RST when it left requests unread).
func dropped(c *rawConn) bool {
	_ = c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.br.Read(make([]byte, 1))
	var ne net.Error
	return n == 0 && err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// TestQueryBufferLimits: a request larger than MaxQueryBuffer, or one that
// would take the server's query buffers past MaxQueryBufferTotal, closes
// its connection without a reply (as Redis does at
// client-query-buffer-limit); other connections are served on.
func TestQueryBufferLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 1, nil)
	c.WaitStable(30 * time.Second)
	cfg := resp.DefaultConfig()
	cfg.Addr, cfg.Logger = "127.0.0.1:0", c.Logger(0)
	cfg.MaxBulk = 1 << 20
	cfg.MaxQueryBuffer = 1<<20 + 64<<10
	cfg.MaxQueryBufferTotal = 2 << 20
	s, err := resp.Listen(c.Nodes[0], cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := s.Addr().String()
	watcher := dialRaw(t, addr)
	bulk := func(n int) string { return fmt.Sprintf("$%d\r\n%s\r\n", n, strings.Repeat("v", n)) }

	// One connection: two bulks of MaxBulk do not fit MaxQueryBuffer.
	big := dialRaw(t, addr)
	go func() { _, _ = big.nc.Write([]byte("*3\r\n$4\r\nMSET\r\n" + bulk(1<<20) + bulk(1<<20))) }()
	if !dropped(big) {
		t.Fatal("a request over MaxQueryBuffer did not close its connection")
	}
	if n := infoField(t, watcher, "client_query_buffer_limit_disconnections"); n != 1 {
		t.Fatalf("client_query_buffer_limit_disconnections %d, want 1", n)
	}

	// Two connections each hold most of a MaxBulk argument: together they
	// pass MaxQueryBufferTotal, and the one that grows last is closed.
	partial := "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n" + bulk(1 << 20)[:900<<10]
	a, b := dialRaw(t, addr), dialRaw(t, addr)
	a.send([]byte(partial))
	deadline := time.Now().Add(10 * time.Second)
	for infoField(t, watcher, "mem_clients_normal") < 900<<10 {
		if time.Now().After(deadline) {
			t.Fatal("the first partial request never buffered")
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.send([]byte(partial))
	if !dropped(b) {
		t.Fatal("a request past MaxQueryBufferTotal did not close its connection")
	}
	// The first one completes and is answered.
	a.send([]byte(bulk(1 << 20)[900<<10:]))
	if r, err := a.reply(); err != nil || r != "+OK\r\n" {
		t.Fatalf("the request within the limits: %q %v", r, err)
	}
	if n := infoField(t, watcher, "client_query_buffer_limit_disconnections"); n != 2 {
		t.Fatalf("client_query_buffer_limit_disconnections %d, want 2", n)
	}
}

// TestValueTooLarge: a write past the grid's maximum value size (issue 10
// item 4) is answered with Redis's text for a string past
// proto-max-bulk-len, and the connection and the partition keep serving.
func TestValueTooLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 1, func(_ int, cfg *grid.Config) { cfg.MaxValueSize = 64 << 10 })
	c.WaitStable(30 * time.Second)
	cfg := resp.DefaultConfig()
	cfg.Addr, cfg.Logger = "127.0.0.1:0", c.Logger(0)
	s, err := resp.Listen(c.Nodes[0], cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	g := dialRaw(t, s.Addr().String())
	const tooLarge = "-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"SET", "k", strings.Repeat("v", 60<<10)}, "+OK\r\n"},
		{[]string{"APPEND", "k", strings.Repeat("v", 8<<10)}, tooLarge},
		{[]string{"SET", "k2", strings.Repeat("v", 70<<10)}, tooLarge},
		{[]string{"MSET", "k3", "v", "k4", strings.Repeat("v", 70<<10)}, tooLarge},
		{[]string{"STRLEN", "k"}, ":61440\r\n"},
		{[]string{"APPEND", "k", "v"}, ":61441\r\n"},
	} {
		if got := g.do(tc.args...); got != tc.want {
			t.Errorf("%s %s: %q, want %q", tc.args[0], tc.args[1], got, tc.want)
		}
	}
}
