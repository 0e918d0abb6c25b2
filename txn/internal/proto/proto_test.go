package proto

import (
	"bytes"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func TestResultRoundTrip(t *testing.T) {
	for _, r := range []Result{{Status: Done}, {Status: Conflict, Detail: "why"}, {Status: Done, IDs: []string{"a"}}, {Status: Condition},
		{Status: Done, Entries: []Entry{{Found: true, Value: []byte("v"), Version: 7}, {}}}} {
		b, err := Encode(r)
		if err != nil {
			t.Fatal(err)
		}
		var got Result
		if err := Decode(b, &got); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("%+v came back as %+v", r, got)
		}
	}
	var r Result
	if err := Decode([]byte{0xc1, 0xc1}, &r); err == nil {
		t.Fatal("garbage decoded")
	}
}

func TestWorkRoundTrip(t *testing.T) {
	w := Work{H: Header{ID: "id", Coord: 17, Deadline: 1 << 60, Prio: -3},
		Reads:  []Read{{Map: "m", Key: "k", Version: 1 << 41}},
		Writes: []Write{{Map: "m", Key: "a", Value: []byte("v"), TTL: 5}, {Map: "m", Key: "b", Delete: true}, {Map: "m", Key: "d", Value: []byte{}, KeepTTL: true}, {Map: "m", Key: "c", Add: true, Delta: -9, HasMin: true, Min: 2}},
		Parts:  []int{3, 4}, Held: true}
	b, err := Encode(w)
	if err != nil {
		t.Fatal(err)
	}
	var got Work
	if err := Decode(b, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, w) {
		t.Fatalf("%+v came back as %+v", w, got)
	}
	p := Prepared{H: w.H, Writes: w.Writes, Locked: w.Reads}
	if b, err = Encode(p); err != nil {
		t.Fatal(err)
	}
	var gp Prepared
	if err := Decode(b, &gp); err != nil || !reflect.DeepEqual(gp, p) {
		t.Fatalf("prepared %+v came back as %+v (%v)", p, gp, err)
	}
	// Truncated input fails, never panics.
	for i := range b {
		_ = Decode(b[:i], &gp)
	}
}

// TestEncodedAsArrays: every message and record is a msgpack array of its
// fields, as the other wire messages of the grid, not a map that repeats
// every field's name in every step's arguments, answer and record (a
// status-only Result is its one byte, TestResultRoundTrip).
func TestEncodedAsArrays(t *testing.T) {
	h := Header{ID: "id", Coord: 3, Deadline: 9, Prio: 1}
	for name, v := range map[string]any{
		"Read": Read{Map: "m", Key: "k", Version: 2}, "Write": Write{Map: "m", Key: "k", Value: []byte("v")}, "Header": h,
		"Work": Work{H: h}, "Prepared": Prepared{H: h}, "Decision": Decision{Commit: true}, "Finish": Finish{ID: "id"},
		"IDs": IDs{IDs: []string{"id"}}, "Result": Result{Status: Done, Detail: "x"}, "Entry": Entry{Found: true},
	} {
		b, err := Encode(v)
		if err != nil {
			t.Fatal(err)
		}
		if code := b[0]; code&0xf0 != 0x90 && code != 0xdc {
			t.Errorf("%s encodes as %x (code %#x), want an array", name, b, code)
		}
	}
	// A Result decodes as an array whose first element is its status.
	b, _ := Encode(Result{Status: Done, Detail: "x"})
	var arr []any
	if err := msgpack.Unmarshal(b, &arr); err != nil || len(arr) != 4 {
		t.Fatalf("Result as an array: %v, %v", arr, err)
	}
}

// The append encoders give what the msgpack decoders read back, for
// values at every size class of msgpack's ints, strings, bytes and arrays.
func TestAppendEncodersRoundTrip(t *testing.T) {
	ints := []int64{0, 1, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0xffffffff, 1 << 40, math.MaxInt64,
		-1, -32, -33, -128, -129, -32768, -32769, math.MinInt32, math.MinInt32 - 1, math.MinInt64}
	strs := []string{"", "k", strings.Repeat("s", 31), strings.Repeat("s", 32), strings.Repeat("s", 255), strings.Repeat("s", 256), strings.Repeat("s", 70000)}
	vals := [][]byte{nil, {}, []byte("v"), bytes.Repeat([]byte("b"), 255), bytes.Repeat([]byte("b"), 256), bytes.Repeat([]byte("b"), 70000)}
	identical, cases := 0, 0
	check := func(v, into any) {
		t.Helper()
		b, err := Encode(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := Decode(b, into); err != nil {
			t.Fatalf("%T: %v", v, err)
		}
		got := reflect.ValueOf(into).Elem().Interface()
		if !reflect.DeepEqual(got, v) {
			t.Fatalf("%+v came back as %+v", v, got)
		}
		ref, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		cases++
		if bytes.Equal(ref, b) {
			identical++
		}
	}
	for i, n := range ints {
		s, val := strs[i%len(strs)], vals[i%len(vals)]
		writes := make([]Write, 1+i%17)
		for j := range writes {
			writes[j] = Write{Map: s, Key: strs[j%len(strs)], Value: val, Delete: j%2 == 0, Add: j%3 == 0, Delta: n, HasMin: j%5 == 0, Min: -n, TTL: n, KeepTTL: j%7 == 0}
		}
		reads := make([]Read, i%18)
		for j := range reads {
			reads[j] = Read{Map: s, Key: strs[(i+j)%len(strs)], Version: uint64(n)}
		}
		parts := make([]int, i%20)
		for j := range parts {
			parts[j] = int(ints[j%len(ints)])
		}
		h := Header{ID: s, Coord: int(n), Deadline: n, Prio: -n}
		if i%4 == 0 {
			reads, parts = nil, nil
		}
		check(Work{H: h, Reads: reads, Writes: writes, Parts: parts}, &Work{})
		check(Prepared{H: h, Writes: writes, Locked: reads}, &Prepared{})
		check(Decision{Commit: i%2 == 0, Deadline: n, Parts: parts}, &Decision{})
		check(Finish{ID: s, Commit: i%2 == 1, Deadline: n}, &Finish{})
	}
	t.Logf("%d of %d encodings byte for byte as msgpack.Marshal's", identical, cases)
}
