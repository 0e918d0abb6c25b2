package wire

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func frameBytes(t testing.TB, typ uint8, id uint64, v any) []byte {
	body, err := Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	b := AppendHeader(nil, typ, 0, id, 0)
	b = append(b, body...)
	PutLength(b)
	return b
}

func TestRoundTrip(t *testing.T) {
	req := MapRequest{Version: 7, Partition: 12, Op: OpPut, Map: "m", Key: "k", Value: []byte("v"), TTL: 5, Session: Session{Client: 1, Seq: 2, Low: 1}}
	b := frameBytes(t, MsgMap, 42, &req)
	f, err := ReadFrame(bytes.NewReader(b), DefaultMaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	if f.Type != MsgMap || f.ID != 42 || f.IsResponse() {
		t.Fatalf("header = %+v", f)
	}
	var got MapRequest
	if err := Unmarshal(f.Body, &got); err != nil {
		t.Fatal(err)
	}
	if got.Key != "k" || string(got.Value) != "v" || got.Session.Seq != 2 || got.Partition != 12 {
		t.Fatalf("decoded %+v", got)
	}
}

func TestMalformed(t *testing.T) {
	if _, err := ReadFrame(bytes.NewReader([]byte{0, 0, 0, 3, 1, 2, 3}), DefaultMaxFrame); !errors.Is(err, ErrFrameTooShort) {
		t.Fatalf("short frame: %v", err)
	}
	if _, err := ReadFrame(bytes.NewReader([]byte{0xff, 0xff, 0xff, 0xff}), 1024); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("large frame: %v", err)
	}
	if _, err := ReadFrame(bytes.NewReader([]byte{0, 0, 0, 20, 1, 0, 0}), 1024); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated frame: %v", err)
	}
}

// decodeAll decodes a frame and its body as every message type: it must
// return errors, never panic or hang.
func decodeAll(data []byte) {
	r := bytes.NewReader(data)
	for {
		f, err := ReadFrame(r, 1<<20)
		if err != nil {
			return
		}
		for _, v := range []any{
			&MapRequest{}, &MapResponse{}, &ErrorBody{}, &GetAllRequest{}, &GetAllResponse{},
			&PutAllRequest{}, &PartsResponse{}, &ScanRequest{}, &ScanResponse{}, &SizeRequest{},
			&SizeResponse{}, &ClearRequest{}, &ReplicateRequest{}, &Ack{}, &SnapshotChunk{},
			&SyncedReport{}, &TableRequest{}, &TableResponse{}, &DrainRequest{}, &SubscribeRequest{}, &Invalidation{}, &LeaseRequest{}, &LeaseResponse{},
		} {
			_ = Decode(f.Body, v)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(frameBytes(f, MsgMap, 1, &MapRequest{Op: OpGet, Map: "m", Key: "k"}))
	f.Add(frameBytes(f, MsgReplicate, 2, &ReplicateRequest{Partition: 1, Epoch: 2, Record: Record{LSN: 3, Muts: []Mutation{{Kind: MutSet, Map: "m", Key: "k", Value: []byte{1}}}}}))
	f.Add(frameBytes(f, MsgTable, 3, &TableResponse{Table: Table{Version: 1, Members: []Member{{Name: "a", RPC: "x"}}, Partitions: []Part{{Primary: "a", Epoch: 1}}}}))
	f.Add([]byte{0, 0, 0, 10, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Add([]byte{0, 0, 0, 12, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xdd, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		decodeAll(data)
	})
}
