// Package glob matches strings against Redis glob patterns, with the rules
// of Redis's stringmatchlen (used by KEYS, SCAN MATCH and friends): a star
// matches any run of bytes, including none; '?' exactly one byte; "[abc]"
// one byte of the set, "[^abc]" one byte not in it, "[a-z]" a range (either
// order), and inside brackets "\x" is a literal x; "\x" elsewhere is a
// literal x.
//
// Matching is by bytes, case-sensitive. An unterminated bracket matches up to
// the end of the pattern, as in Redis.
package glob

// Match reports whether s matches pattern.
func Match(pattern, s string) bool {
	var giveUp bool
	return match(pattern, s, 0, &giveUp)
}

// maxNesting bounds the recursion on '*' (Redis bounds it the same way), so
// a pattern of many stars cannot take exponential time or stack.
const maxNesting = 1000

// match is Redis's algorithm. When the rest of the pattern after a star
// matches nowhere in the rest of the string, no earlier star can help by
// matching more: giveUp then ends the search, which keeps patterns like
// "*a*a*a*b" polynomial.
func match(p, s string, nesting int, giveUp *bool) bool {
	if nesting > maxNesting {
		return false
	}
	for len(p) > 0 && len(s) > 0 {
		switch p[0] {
		case '*':
			for len(p) > 1 && p[1] == '*' {
				p = p[1:]
			}
			if len(p) == 1 {
				return true
			}
			for i := 0; i < len(s); i++ {
				if match(p[1:], s[i:], nesting+1, giveUp) {
					return true
				}
				if *giveUp {
					return false
				}
			}
			*giveUp = true
			return false
		case '?':
			s = s[1:]
			p = p[1:]
			continue
		case '[':
			p = p[1:]
			not := len(p) > 0 && p[0] == '^'
			if not {
				p = p[1:]
			}
			matched := false
			for {
				if len(p) == 0 {
					break // unterminated: like Redis, stop at the pattern's end
				}
				if p[0] == '\\' && len(p) >= 2 {
					p = p[1:]
					if p[0] == s[0] {
						matched = true
					}
				} else if p[0] == ']' {
					break
				} else if len(p) >= 3 && p[1] == '-' {
					lo, hi := p[0], p[2]
					if lo > hi {
						lo, hi = hi, lo
					}
					p = p[2:]
					if s[0] >= lo && s[0] <= hi {
						matched = true
					}
				} else if p[0] == s[0] {
					matched = true
				}
				p = p[1:]
			}
			if not {
				matched = !matched
			}
			if !matched {
				return false
			}
			s = s[1:]
			if len(p) > 0 {
				p = p[1:] // the ']'
			}
			continue
		case '\\':
			if len(p) >= 2 {
				p = p[1:]
			}
		}
		if p[0] != s[0] {
			return false
		}
		p = p[1:]
		s = s[1:]
	}
	if len(s) > 0 {
		return false
	}
	for len(p) > 0 && p[0] == '*' {
		p = p[1:]
	}
	return len(p) == 0
}
