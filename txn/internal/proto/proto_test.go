package proto

import (
	"reflect"
	"testing"
)

func TestResultRoundTrip(t *testing.T) {
	for _, r := range []Result{{Status: Done}, {Status: Conflict, Detail: "why"}, {Status: Done, IDs: []string{"a"}}, {Status: Condition}} {
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
