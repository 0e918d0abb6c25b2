package gridtest

import (
	"net"
	"testing"

	"github.com/collocate/grid/internal/transport"
	"github.com/collocate/grid/internal/wire"
)

// RawConn dials a node's RPC port as a bare peer (tests that speak the wire
// protocol directly: forged frames, retries of one session).
func RawConn(t testing.TB, addr string) *transport.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Write([]byte{transport.PreambleGrid}); err != nil {
		t.Fatal(err)
	}
	conn := transport.NewConn(nc, nil, wire.DefaultMaxFrame, nil)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}
