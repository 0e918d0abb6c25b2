package affinity

import (
	"fmt"
	"testing"
)

func TestTag(t *testing.T) {
	cases := map[string]string{
		"":                     "",
		"plain":                "plain",
		"user:{42}:cart":       "42",
		"{42}":                 "42",
		"a{}b":                 "a{}b",
		"a{b":                  "a{b",
		"a}b{c}":               "c",
		"{x}{y}":               "x",
		"{{x}}":                "{x",
		"user:{}:{42}":         "user:{}:{42}",
		"{user1000}.following": "user1000",
	}
	for in, want := range cases {
		if got := Tag(in); got != want {
			t.Errorf("Tag(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestPartitionVectors pins the key -> partition mapping. These values are a
// compatibility promise: if this test fails, the change breaks every
// deployed cluster and client. Do not update the vectors.
func TestPartitionVectors(t *testing.T) {
	vectors := []struct {
		key  string
		n    int
		want int
	}{
		{"", 271, 171},
		{"a", 271, 122},
		{"hello", 271, 103},
		{"user:1", 271, 142},
		{"user:{1}:cart", 271, 246},
		{"{1}", 271, 246},
		{"key-123456", 271, 135},
		{"hello", 1024, 419},
		{"hello", 7, 1},
	}
	for _, v := range vectors {
		if got := Partition(v.key, v.n); got != v.want {
			t.Errorf("Partition(%q, %d) = %d, want %d", v.key, v.n, got, v.want)
		}
	}
}

func TestCollocation(t *testing.T) {
	for i := 0; i < 1000; i++ {
		tag := fmt.Sprintf("customer-%d", i)
		a := Partition("orders:{"+tag+"}", 271)
		b := Partition("{"+tag+"}:profile", 271)
		c := Partition(TaggedKey(tag, []byte{0x92, 1, 2}), 271)
		if a != b || b != c {
			t.Fatalf("tag %q: partitions %d %d %d differ", tag, a, b, c)
		}
	}
}

func TestSpread(t *testing.T) {
	const n, keys = 271, 271 * 200
	counts := make([]int, n)
	for i := 0; i < keys; i++ {
		counts[Partition(fmt.Sprintf("key:%d", i), n)]++
	}
	for p, c := range counts {
		if c < 100 || c > 300 {
			t.Fatalf("partition %d holds %d of %d keys: spread too uneven", p, c, keys)
		}
	}
}

func TestBadCount(t *testing.T) {
	if Partition("x", 0) != 0 || Partition("x", -5) != 0 {
		t.Fatal("non-positive partition count must map to 0")
	}
}

func BenchmarkPartition(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		Partition("user:{12345}:cart", DefaultPartitionCount)
	}
}
