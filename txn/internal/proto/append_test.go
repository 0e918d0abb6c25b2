package proto

import (
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func rint(r *rand.Rand) int64 {
	switch r.IntN(6) {
	case 0:
		return int64(r.Uint64())
	case 1:
		return -int64(r.IntN(200))
	case 2:
		return int64(r.IntN(70000)) - 35000
	case 3:
		return int64(r.Uint32()) * int64(1-2*r.IntN(2))
	case 4:
		return []int64{-1 << 63, 1<<63 - 1, -33, -32, 127, 128, 255, 256, 65535, 65536, -129, -32769, -2147483649}[r.IntN(13)]
	}
	return int64(r.IntN(128))
}
func rstr(r *rand.Rand) string {
	n := []int{0, 1, 31, 32, 255, 256, 65535, 65536, r.IntN(100), r.IntN(100), r.IntN(100), r.IntN(100)}[r.IntN(12)]
	return strings.Repeat(string(rune('a'+r.IntN(26))), n)
}
func rbytes(r *rand.Rand) []byte {
	switch r.IntN(3) {
	case 0:
		return nil
	case 1:
		return []byte{}
	}
	return []byte(rstr(r))
}
func rlen(r *rand.Rand) int { return []int{0, 1, 15, 16, 17, r.IntN(40)}[r.IntN(6)] }

// The append encoders agree with msgpack.Marshal for random values: what
// each encodes decodes to the value, and to what msgpack.Marshal's
// encoding decodes to (nil and empty slices and bytes, ints at every
// size class and sign, strings across every length class).
func TestAppendEncodersAgreeWithMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		h := Header{ID: rstr(r), Coord: int(rint(r)), Deadline: rint(r), Prio: rint(r)}
		var reads []Read
		if r.IntN(3) > 0 {
			reads = make([]Read, rlen(r))
			for i := range reads {
				reads[i] = Read{Map: rstr(r), Key: rstr(r), Version: uint64(rint(r))}
			}
		}
		var writes []Write
		if r.IntN(3) > 0 {
			writes = make([]Write, rlen(r))
			for i := range writes {
				writes[i] = Write{Map: rstr(r), Key: rstr(r), Value: rbytes(r), Delete: r.IntN(2) == 0, Add: r.IntN(2) == 0, Delta: rint(r), HasMin: r.IntN(2) == 0, Min: rint(r), TTL: rint(r), KeepTTL: r.IntN(2) == 0}
			}
		}
		var parts []int
		if r.IntN(3) > 0 {
			parts = make([]int, rlen(r))
			for i := range parts {
				parts[i] = int(rint(r))
			}
		}
		for _, c := range []struct{ v, a, b any }{
			{Work{H: h, Reads: reads, Writes: writes, Parts: parts}, &Work{}, &Work{}},
			{&Work{H: h, Reads: reads, Writes: writes, Parts: parts}, &Work{}, &Work{}},
			{Prepared{H: h, Writes: writes, Locked: reads}, &Prepared{}, &Prepared{}},
			{Decision{Commit: r.IntN(2) == 0, Deadline: rint(r), Parts: parts}, &Decision{}, &Decision{}},
			{Finish{ID: rstr(r), Commit: r.IntN(2) == 0, Deadline: rint(r)}, &Finish{}, &Finish{}},
		} {
			b, err := Encode(c.v)
			if err != nil {
				t.Fatal(err)
			}
			ref, err := msgpack.Marshal(c.v)
			if err != nil {
				t.Fatal(err)
			}
			if err := Decode(b, c.a); err != nil {
				t.Fatalf("%T: %v", c.v, err)
			}
			if err := msgpack.Unmarshal(ref, c.b); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c.a, c.b) {
				t.Fatalf("%T differs:\n%+v\n%+v", c.v, c.a, c.b)
			}
			want := reflect.ValueOf(c.v)
			if want.Kind() == reflect.Pointer {
				want = want.Elem()
			}
			if !reflect.DeepEqual(reflect.ValueOf(c.a).Elem().Interface(), want.Interface()) {
				t.Fatalf("%T did not round trip", c.v)
			}
		}
	}
}
