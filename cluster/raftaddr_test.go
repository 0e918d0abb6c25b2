package cluster

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
)

func TestRaftAddrNamesTheIncarnation(t *testing.T) {
	a := raftAddr("127.0.0.3:7070", "n3-abc")
	if a != "127.0.0.3:7070/n3-abc" || rpcOf(a) != "127.0.0.3:7070" {
		t.Fatalf("raftAddr %q, rpcOf %q", a, rpcOf(a))
	}
	if rpcOf("127.0.0.3:7070") != "127.0.0.3:7070" || rpcOf(raftAddr("h:1", "odd/name-1")) != "h:1" {
		t.Fatal("rpcOf of an address without or with a slash in the id")
	}
}

// A raft connection meant for an earlier incarnation of the member at the
// same address is refused before any raft traffic is read; one meant for
// this incarnation, or naming none, passes through unchanged.
func TestRaftConnMeantForAnotherIncarnationIsRefused(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want error
	}{{"n3-old", errOtherIncarnation}, {"n3-new", nil}, {"", nil}} {
		client, server := net.Pipe()
		c := &addressedConn{Conn: server, want: "n3-new"}
		go func() {
			hdr := binary.BigEndian.AppendUint16(nil, uint16(len(tc.id)))
			_, _ = client.Write(append(append(hdr, tc.id...), "raft"...))
			_ = client.Close()
		}()
		got, err := io.ReadAll(c)
		if tc.want != nil {
			if !errors.Is(err, tc.want) || len(got) != 0 {
				t.Fatalf("meant for %q: read %q, %v; want nothing and %v", tc.id, got, err, tc.want)
			}
			continue
		}
		if err != nil || string(got) != "raft" {
			t.Fatalf("meant for %q: read %q, %v; want the raft bytes", tc.id, got, err)
		}
	}
}
