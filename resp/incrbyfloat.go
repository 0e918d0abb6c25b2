package resp

import (
	"math/big"
	"strings"
)

// INCRBYFLOAT computes as Redis does on x86-64: in long double (64-bit
// mantissa, rounded to nearest even), printed with 17 decimals and the
// trailing zeros removed, so that 0.1 + 0.2 gives "0.3", not
// "0.30000000000000004".

const (
	errNotFloat  = "ERR value is not a valid float"
	errFloatNaN  = "ERR increment would produce NaN or Infinity"
	ldPrec       = 64
	ldMaxExp     = 16384  // a larger binary exponent overflows a long double
	ldMinExp     = -16444 // a smaller one underflows to zero
	maxFloatText = 5 << 10
)

func txIncrByFloat(x *txExec, a [][]byte, out []byte) ([]byte, error) {
	incr, ok := parseLongDouble(a[2])
	if !ok {
		return appendError(out, errNotFloat), nil
	}
	cur, found, err := x.get(a[1])
	if err != nil {
		return out, err
	}
	sum := new(big.Float).SetPrec(ldPrec)
	if found {
		v, ok := parseLongDouble(cur)
		if !ok {
			return appendError(out, errNotFloat), nil
		}
		sum.Set(v)
	}
	if sum.IsInf() || incr.IsInf() {
		return appendError(out, errFloatNaN), nil
	}
	sum.Add(sum, incr)
	if sum.MantExp(nil) > ldMaxExp {
		return appendError(out, errFloatNaN), nil
	}
	v := []byte(formatLongDouble(sum))
	if err := x.putKeep(a[1], v); err != nil {
		return out, err
	}
	return appendBulk(out, v), nil
}

// parseLongDouble parses b as Redis's string2ld (strtold) does: a decimal
// or hexadecimal number, or inf/infinity, with an optional sign, and
// nothing else (no spaces); NaN, overflow and underflow to zero are
// refused.
func parseLongDouble(b []byte) (*big.Float, bool) {
	if len(b) == 0 || len(b) >= maxFloatText {
		return nil, false
	}
	s := string(b)
	body := strings.TrimLeft(s, "+-")
	if len(s)-len(body) > 1 {
		return nil, false
	}
	f := new(big.Float).SetPrec(ldPrec).SetMode(big.ToNearestEven)
	lower := strings.ToLower(body)
	var mant string // the digits before the exponent
	switch {
	case lower == "inf" || lower == "infinity":
		return f.SetInf(s[0] == '-'), true
	case strings.HasPrefix(lower, "0x"):
		if !hexFloat(lower[2:]) {
			return nil, false
		}
		mant, _, _ = strings.Cut(lower[2:], "p")
		if _, _, err := f.Parse(s, 0); err != nil {
			return nil, false
		}
	default:
		if !decFloat(lower) {
			return nil, false
		}
		mant, _, _ = strings.Cut(lower, "e")
		if _, _, err := f.Parse(s, 10); err != nil {
			return nil, false
		}
	}
	if f.Sign() == 0 {
		// A zero is fine; a non-zero number that underflowed is not.
		return f, strings.Trim(mant, "0.") == ""
	}
	if exp := f.MantExp(nil); exp > ldMaxExp || exp < ldMinExp {
		return nil, false
	}
	return f, true
}

// decFloat: digits, an optional fraction, an optional exponent (e); at
// least one digit before the exponent.
func decFloat(s string) bool { return floatSyntax(s, isDigit, 'e') }

// hexFloat: hex digits, an optional fraction, an optional binary exponent
// (p).
func hexFloat(s string) bool {
	return floatSyntax(s, func(c byte) bool { return isDigit(c) || c >= 'a' && c <= 'f' }, 'p')
}

// floatSyntax reports whether s is mantissa digits (digit), an optional
// fraction, and an optional exponent: exp, a sign, decimal digits.
func floatSyntax(s string, digit func(byte) bool, exp byte) bool {
	digits := 0
	i := 0
	for ; i < len(s) && digit(s[i]); i++ {
		digits++
	}
	if i < len(s) && s[i] == '.' {
		for i++; i < len(s) && digit(s[i]); i++ {
			digits++
		}
	}
	if digits == 0 {
		return false
	}
	if i < len(s) && s[i] == exp {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		start := i
		for ; i < len(s) && isDigit(s[i]); i++ {
		}
		if i == start {
			return false
		}
	}
	return i == len(s)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// formatLongDouble is Redis's ld2string(LD_STR_HUMAN): "%.17Lf" without
// trailing zeros, "-0" as "0".
func formatLongDouble(f *big.Float) string {
	s := f.Text('f', 17)
	if strings.IndexByte(s, '.') >= 0 {
		s = strings.TrimRight(s, "0")
		s = strings.TrimSuffix(s, ".")
	}
	if s == "-0" {
		s = "0"
	}
	return s
}
