package resp

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// oneByte yields its input one byte per Read, the worst fragmentation.
type oneByte struct{ b []byte }

func (r *oneByte) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	p[0] = r.b[0]
	r.b = r.b[1:]
	return 1, nil
}

// parseAll reads every request from rd, copying the arguments.
func parseAll(rd *reader) ([][]string, error) {
	var out [][]string
	var args [][]byte
	for {
		var ok bool
		var err error
		args, ok, err = rd.next(args)
		if err != nil {
			return out, err
		}
		if ok {
			if len(args) > 0 {
				cmd := make([]string, len(args))
				for i, a := range args {
					cmd[i] = string(a)
				}
				out = append(out, cmd)
			}
			continue
		}
		if err := rd.fill(); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return out, err
		}
	}
}

func TestReaderFragmented(t *testing.T) {
	in := "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n" +
		"*0\r\n" +
		"PING\r\n" +
		"\r\n" +
		"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n" +
		"  SET  \"a\\tb\"   'c d'\n" +
		"*1\r\n$" + "20000\r\n" + strings.Repeat("x", 20000) + "\r\n"
	want := "[SET k hello] [PING] [ECHO ] [SET a\tb c d] [" + strings.Repeat("x", 20000) + "]"
	for name, src := range map[string]io.Reader{"whole": strings.NewReader(in), "bytewise": &oneByte{[]byte(in)}} {
		got, err := parseAll(newReader(src, readerLimits{maxBulk: 1 << 20, maxArgs: 100, maxBuf: 1 << 30}, nil))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var b bytes.Buffer
		for i, c := range got {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString("[" + strings.Join(c, " ") + "]")
		}
		if b.String() != want {
			t.Fatalf("%s: got %.200q", name, b.String())
		}
	}
}

func TestReaderErrors(t *testing.T) {
	cases := map[string]string{
		"*1\r\n$9223372036854775807\r\n":  "invalid bulk length",
		"*1\r\n$99999999999999999999\r\n": "invalid bulk length",
		"*1\r\n$3\r\nGETxx":               "invalid bulk length",
		"*1\r\n$2000000\r\n":              "invalid bulk length", // over maxBulk
		"*101\r\n":                        "invalid multibulk length",
		"*-\r\n":                          "invalid multibulk length",
		"*1\r\n:1\r\n":                    "expected '$', got ':'",
		"*1\r\n\x00\r\n":                  `expected '$', got '\x0'`,
		"SET \"a\r\n":                     "unbalanced quotes in request",
		strings.Repeat("a", 70<<10):       "too big inline request",
	}
	for in, want := range cases {
		for _, src := range []io.Reader{strings.NewReader(in), &oneByte{[]byte(in)}} {
			_, err := parseAll(newReader(src, readerLimits{maxBulk: 1 << 20, maxArgs: 100, maxBuf: 1 << 30}, nil))
			var pe *ProtocolError
			if !errors.As(err, &pe) || pe.Msg != want {
				t.Errorf("%.40q: %v, want %q", in, err, want)
			}
		}
	}
}

func FuzzReader(f *testing.F) {
	f.Add([]byte("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"))
	f.Add([]byte("SET a \"b\\x41\" 'c'\r\n"))
	f.Add([]byte("*1\r\n$9223372036854775807\r\n"))
	f.Add([]byte("*1\r\n$16777216\r\n"))
	f.Add([]byte("*3\r\n$3\r\nDEL\r\n$1\r\na\r\n$1"))
	// The real limits: a header may declare the largest bulk, and the
	// reader must not allocate for it before the data arrives.
	lim := DefaultConfig().readerLimits()
	f.Fuzz(func(t *testing.T, data []byte) {
		a, errA := parseAll(newReader(bytes.NewReader(data), lim, nil))
		b, errB := parseAll(newReader(&oneByte{data}, lim, nil))
		// Fragmentation must not change what is parsed.
		if (errA == nil) != (errB == nil) || len(a) != len(b) {
			t.Fatalf("whole: %d cmds, %v; bytewise: %d cmds, %v", len(a), errA, len(b), errB)
		}
		for i := range a {
			if strings.Join(a[i], "\x00") != strings.Join(b[i], "\x00") {
				t.Fatalf("command %d differs: %q vs %q", i, a[i], b[i])
			}
		}
	})
}
