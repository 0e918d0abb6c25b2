package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/collocate/grid/internal/transport"
	"github.com/hashicorp/raft"
)

// A raft server's address names its incarnation: the member's RPC address
// and the incarnation's raft id ("rpc/id"). A connection carries the raft
// id it is meant for, and a member refuses one meant for another id.
//
// Without it, a member SIGKILLed and restarted at once under its name (a
// new raft id, the same RPC address) received the leader's replication to
// its previous id as well as to its new one: two streams of one leader at
// different positions into one raft log, which left hashicorp/raft's
// follower rejecting every AppendEntries after its snapshot for good
// (TestFollowerPastItsSnapshotCatchesUp), and the member exited without
// a read lease.

// errOtherIncarnation: a raft connection meant for another incarnation of
// the member at this address.
var errOtherIncarnation = errors.New("cluster: raft connection meant for another incarnation")

// raftAddr is the raft address of incarnation id of the member at rpc.
func raftAddr(rpc, id string) raft.ServerAddress { return raft.ServerAddress(rpc + "/" + id) }

// rpcOf is the RPC address in raft address a (a itself if it names no
// incarnation).
func rpcOf(a raft.ServerAddress) string {
	rpc, _, _ := strings.Cut(string(a), "/")
	return rpc
}

// maxRaftID bounds a raft id on the wire (its length is a uint16).
const maxRaftID = 1<<16 - 1

// raftStream is the raft transport's stream layer over the member's RPC
// listener, for incarnation id at address self.
type raftStream struct {
	*transport.RaftLayer
	id   string
	self raft.ServerAddress
}

func newRaftStream(l *transport.RaftLayer, rpc, id string) raftStream {
	return raftStream{RaftLayer: l, id: id, self: raftAddr(rpc, id)}
}

// Dial connects to the member at a's RPC address and names the
// incarnation the connection is meant for.
func (s raftStream) Dial(a raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	rpc, id, _ := strings.Cut(string(a), "/")
	if len(id) > maxRaftID {
		return nil, fmt.Errorf("cluster: raft id of %d bytes", len(id))
	}
	conn, err := s.RaftLayer.Dial(rpc, timeout)
	if err != nil {
		return nil, err
	}
	hdr := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(id)), uint16(len(id)))
	hdr = append(hdr, id...)
	_ = conn.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := conn.Write(hdr); err != nil {
		_ = conn.Close()
		return nil, err
	}
	_ = conn.SetWriteDeadline(time.Time{})
	return conn, nil
}

// Accept returns the next connection; its first read checks the
// incarnation it is meant for.
func (s raftStream) Accept() (net.Conn, error) {
	c, err := s.RaftLayer.Accept()
	if err != nil {
		return nil, err
	}
	return &addressedConn{Conn: c, want: s.id}, nil
}

// Addr is this incarnation's raft address (raft's local address, which
// followers learn as their leader's).
func (s raftStream) Addr() net.Addr { return raftNetAddr(s.self) }

type raftNetAddr string

func (a raftNetAddr) Network() string { return "tcp" }
func (a raftNetAddr) String() string  { return string(a) }

// addressedConn is an accepted raft connection whose header (the raft id
// it is meant for) is read and checked before its first byte of raft
// traffic. An empty id (a dialer that names none) is not checked.
type addressedConn struct {
	net.Conn
	want    string
	checked bool
}

func (c *addressedConn) Read(p []byte) (int, error) {
	if !c.checked {
		if err := c.check(); err != nil {
			_ = c.Conn.Close()
			return 0, err
		}
		c.checked = true
	}
	return c.Conn.Read(p)
}

func (c *addressedConn) check() error {
	var n [2]byte
	if _, err := io.ReadFull(c.Conn, n[:]); err != nil {
		return err
	}
	id := make([]byte, binary.BigEndian.Uint16(n[:]))
	if _, err := io.ReadFull(c.Conn, id); err != nil {
		return err
	}
	if len(id) > 0 && string(id) != c.want {
		return fmt.Errorf("%w: %q, this is %q", errOtherIncarnation, id, c.want)
	}
	return nil
}
