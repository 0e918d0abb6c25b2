package cluster

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// nopFSM is a raft state machine that keeps nothing.
type nopFSM struct{}

func (nopFSM) Apply(*raft.Log) any                 { return nil }
func (nopFSM) Snapshot() (raft.FSMSnapshot, error) { return nopSnapshot{}, nil }
func (nopFSM) Restore(r io.ReadCloser) error {
	_, err := io.Copy(io.Discard, r)
	return errorsJoin(err, r.Close())
}

type nopSnapshot struct{}

func (nopSnapshot) Persist(s raft.SnapshotSink) error { return s.Close() }
func (nopSnapshot) Release()                          {}

func errorsJoin(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// TestFollowerPastItsSnapshotCatchesUp is a reproduction of a livelock the
// bank chaos mode hit (docs/chaos.md, "Transactions under failure";
// 2026-11-30, -netns, seed 23, fault restart-now): a member SIGKILLed and
// restarted at once under its name (new raft id, same RPC address) got,
// from the leader's replication to its previous raft id, a snapshot at
// index 179 and the entries 180 and 181; the replication to its new id
// then sent AppendEntries whose previous entry is 179. hashicorp/raft's
// follower looks that entry up in its log store (its last entry is 181,
// 179 only in the snapshot), rejects, the leader walks back to the first
// index and sends the snapshot at 179 again, which installs, keeps 180
// and 181 (compaction keeps TrailingLogs), and the next AppendEntries is
// rejected again: 31,252 rejections in 30 s, the member never got a newer
// table and exited (WaitReady: "waiting for a read lease").
//
// This test drives a follower built like an incarnation's raft
// (raftConfig, raftStores) with the leader's side of that sequence, and
// wants it to accept an AppendEntries within three snapshot rounds.
func TestFollowerPastItsSnapshotCatchesUp(t *testing.T) {
	t.Skip("hashicorp/raft's defect, not ours to fix: a follower whose log holds entries past its snapshot rejects AppendEntries after the snapshot's last index for good (its appendEntries does not take the snapshot's index as a match; its installSnapshot keeps the later entries). What led a member there, a leader's replication to the member's previous incarnation at the same address, is refused since raft addresses name the incarnation (raftaddr.go, TestRaftConnMeantForAnotherIncarnationIsRefused)")
	_, ft := raft.NewInmemTransport("follower")
	_, lt := raft.NewInmemTransport("leader")
	ft.Connect("leader", lt)
	lt.Connect("follower", ft)
	logs, snaps := raftStores()
	rc := raftConfig("follower", hclog.NewNullLogger(), ProfileLAN)
	r, err := raft.NewRaft(rc, nopFSM{}, logs, logs, snaps, ft)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Shutdown().Error() }()

	const term, snapIdx = 3, 179
	conf := raft.Configuration{Servers: []raft.Server{
		{Suffrage: raft.Voter, ID: "leader", Address: "leader"},
		{Suffrage: raft.Voter, ID: "follower", Address: "follower"},
	}}
	header := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("leader"), Addr: []byte("leader")}
	snapshot := func() {
		t.Helper()
		data := []byte("state")
		req := &raft.InstallSnapshotRequest{RPCHeader: header, SnapshotVersion: raft.SnapshotVersionMax, Term: term,
			LastLogIndex: snapIdx, LastLogTerm: term, Configuration: raft.EncodeConfiguration(conf),
			ConfigurationIndex: 1, Size: int64(len(data))}
		var resp raft.InstallSnapshotResponse
		if err := lt.InstallSnapshot("follower", "follower", req, &resp, bytes.NewReader(data)); err != nil || !resp.Success {
			t.Fatalf("install snapshot: %v, success %v", err, resp.Success)
		}
	}
	appendAfterSnapshot := func() bool {
		t.Helper()
		req := &raft.AppendEntriesRequest{RPCHeader: header, Term: term, PrevLogEntry: snapIdx, PrevLogTerm: term,
			Entries: []*raft.Log{
				{Index: snapIdx + 1, Term: term, Type: raft.LogCommand, Data: []byte("a")},
				{Index: snapIdx + 2, Term: term, Type: raft.LogCommand, Data: []byte("b")},
			}, LeaderCommitIndex: snapIdx + 2}
		var resp raft.AppendEntriesResponse
		if err := lt.AppendEntries("follower", "follower", req, &resp); err != nil {
			t.Fatal(err)
		}
		return resp.Success
	}
	// The replication to the previous raft id: the snapshot, then 180, 181.
	snapshot()
	if !appendAfterSnapshot() {
		t.Fatal("the first AppendEntries after the snapshot was rejected")
	}
	// The replication to the new id starts after the snapshot again: on a
	// rejection the leader falls back to its snapshot and tries again.
	for round := range 3 {
		if appendAfterSnapshot() {
			return
		}
		t.Logf("round %d: AppendEntries after index %d rejected; the leader sends its snapshot again", round+1, snapIdx)
		snapshot()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the follower still rejects AppendEntries after index %d: the leader and it loop for good", snapIdx)
}
