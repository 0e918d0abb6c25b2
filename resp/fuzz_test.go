package resp

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/collocate/grid/grid/gridtest"
)

// FuzzServe feeds arbitrary bytes to a connection of a real single-node
// grid: whatever arrives, the connection must answer or close, never panic
// or hang.
func FuzzServe(f *testing.F) {
	for _, seed := range []string{
		"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
		"INCR n\r\nINCRBY n 9223372036854775807\r\nAPPEND n x\r\n",
		"SET k v EX 10 KEEPTTL\r\nEXPIRE k 5 XX LT\r\nTTL k\r\nPERSIST k\r\n",
		"SCAN 0 MATCH * COUNT 3 TYPE string\r\nKEYS [a-\r\nDBSIZE\r\n",
		"MSET a 1 b 2\r\nMGET a b c\r\nDEL a b\r\nEXISTS a a\r\n",
		"HELLO 3 SETNAME x\r\nGET nope\r\nCLIENT LIST\r\nINFO\r\nCOMMAND INFO get\r\n",
		"SELECT other\r\nSET k v\r\nFLUSHDB\r\nQUIT\r\nPING\r\n",
		"*1\r\n$9223372036854775807\r\n",
		"SET \"a\\x4",
		"*1\r\n$16777216\r\n",
		"*1\r\n$16777217\r\n",
		"*4\r\n$3\r\nDEL\r\n$1\r\na\r\n$1\r\nb\r\n$1",
		"CLIENT SETINFO lib-name \"a\\nb\"\r\nCLIENT SETINFO lib-ver 1.0\r\nCLIENT LIST\r\n",
	} {
		f.Add([]byte(seed))
	}
	c := gridtest.New(f, 1, nil)
	c.WaitStable(30 * time.Second)
	// The real limits: a header may declare the largest bulk, and the
	// connection must not allocate for it before the data arrives.
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	s, err := Listen(c.Nodes[0], cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = s.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		conn := s.newConn(server)
		served := make(chan struct{})
		go func() {
			defer close(served)
			conn.serve()
		}()
		go func() { _, _ = io.Copy(io.Discard, client) }()
		_ = client.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_, _ = client.Write(data)
		_ = client.Close()
		select {
		case <-served:
		case <-time.After(30 * time.Second):
			t.Fatalf("connection still served 30 s after the client closed")
		}
	})
}

// A client that sends XREAD BLOCK 0 and leaves frees its connection within
// the block bound: a blocked connection reads nothing and cannot see the
// client go, so BLOCK 0 must not mean forever.
func TestBlockedXReadOfADepartedClientEnds(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 1, nil)
	c.WaitStable(30 * time.Second)
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	s, err := Listen(c.Nodes[0], cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	client, server := net.Pipe()
	conn := s.newConn(server)
	served := make(chan struct{})
	go func() {
		defer close(served)
		conn.serve()
	}()
	go func() { _, _ = io.Copy(io.Discard, client) }()
	start := time.Now()
	_, _ = client.Write([]byte("XREAD BLOCK 0 STREAMS s $\r\n"))
	_ = client.Close()
	select {
	case <-served:
	case <-time.After(maxBlock + 5*time.Second):
		t.Fatalf("connection still served %v after the client left", time.Since(start))
	}
}
