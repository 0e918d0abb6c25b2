package glob

import "testing"

func TestMatch(t *testing.T) {
	cases := []struct {
		p, s string
		want bool
	}{
		{"*", "", true},
		{"*", "anything", true},
		{"", "", true},
		{"", "a", false},
		{"a*", "abc", true},
		{"a*", "bac", false},
		{"*c", "abc", true},
		{"a*c", "ac", true},
		{"a*c", "abbbc", true},
		{"a*c", "abbbd", false},
		{"h?llo", "hello", true},
		{"h?llo", "hllo", false},
		{"h[ae]llo", "hallo", true},
		{"h[ae]llo", "hillo", false},
		{"h[^e]llo", "hallo", true},
		{"h[^e]llo", "hello", false},
		{"h[a-b]llo", "hbllo", true},
		{"h[b-a]llo", "hallo", true}, // reversed range
		{"h[a-b]llo", "hcllo", false},
		{`h\*llo`, "h*llo", true},
		{`h\*llo`, "hello", false},
		{`[\]]`, "]", true},
		{"[abc", "a", true}, // unterminated bracket, as Redis
		{"[abc", "ab", false},
		{"user:{42}:*", "user:{42}:cart", true},
		{"**a", "a", true},
		{"a**", "a", true},
		{"?", "", false},
		{`\`, `\`, true},
		{"*a*a*a*a*a*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false},
	}
	for _, c := range cases {
		if got := Match(c.p, c.s); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.p, c.s, got, c.want)
		}
	}
}

func FuzzMatch(f *testing.F) {
	f.Add("a*b?[c-d]", "axxbzc")
	f.Add(`[^\]x]*`, "abc")
	f.Fuzz(func(t *testing.T, p, s string) {
		Match(p, s) // must not panic
		// A leading star may eat any prefix.
		if Match(p, s) && !Match("*"+p, "xy"+s) {
			t.Fatalf("%q matches %q but %q does not match %q", p, s, "*"+p, "xy"+s)
		}
	})
}
