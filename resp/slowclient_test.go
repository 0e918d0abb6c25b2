package resp_test

import (
	"bytes"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

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
	_ = slow.nc.SetReadDeadline(time.Now().Add(60 * time.Second))
	want := "$" + strconv.Itoa(valueSize) + "\r\n"
	for i := range gets {
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
