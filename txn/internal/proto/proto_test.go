package proto

import (
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// TestEncodedAsArrays: every message and record is a msgpack array of its
// fields, as the other wire messages of the grid, not a map that repeats
// every field's name in every step's arguments, answer and record.
func TestEncodedAsArrays(t *testing.T) {
	h := Header{ID: "id", Coord: 3, Deadline: 9, Prio: 1}
	for name, v := range map[string]any{
		"Read": Read{Map: "m", Key: "k", Version: 2}, "Write": Write{Map: "m", Key: "k", Value: []byte("v")}, "Header": h,
		"Work": Work{H: h}, "Prepared": Prepared{H: h}, "Decision": Decision{Commit: true}, "Finish": Finish{ID: "id"},
		"IDs": IDs{IDs: []string{"id"}}, "Result": Result{Status: Done},
	} {
		b, err := Encode(v)
		if err != nil {
			t.Fatal(err)
		}
		if code := b[0]; code&0xf0 != 0x90 {
			t.Errorf("%s encodes as %x (code %#x), want a fixed array", name, b, code)
		}
	}
	// A Result decodes as an array whose first element is its status.
	b, _ := Encode(Result{Status: Done, Detail: "x"})
	var arr []any
	if err := msgpack.Unmarshal(b, &arr); err != nil || len(arr) != 3 {
		t.Fatalf("Result as an array: %v, %v", arr, err)
	}
}
