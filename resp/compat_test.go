package resp_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/collocate/grid/resp"
)

// rawConn speaks RESP by hand, so tests see the exact bytes of replies.
type rawConn struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return &rawConn{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func encode(args ...string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b.Bytes()
}

// do sends one command and returns its raw reply.
func (c *rawConn) do(args ...string) string {
	c.t.Helper()
	c.send(encode(args...))
	r, err := c.reply()
	if err != nil {
		c.t.Fatalf("%q: %v", args, err)
	}
	return r
}

func (c *rawConn) send(b []byte) {
	c.t.Helper()
	_ = c.nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

// reply reads one whole RESP2/RESP3 reply.
func (c *rawConn) reply() (string, error) {
	var out bytes.Buffer
	err := readReply(c.br, &out)
	return out.String(), err
}

func readReply(br *bufio.Reader, out *bytes.Buffer) error {
	line, err := br.ReadString('\n')
	if err != nil {
		return err
	}
	out.WriteString(line)
	if len(line) < 3 {
		return fmt.Errorf("short line %q", line)
	}
	n, _ := strconv.Atoi(strings.TrimRight(line[1:], "\r\n"))
	switch line[0] {
	case '$', '=', '!':
		if n < 0 {
			return nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return err
		}
		out.Write(buf)
	case '*', '~', '>':
		for range max(n, 0) {
			if err := readReply(br, out); err != nil {
				return err
			}
		}
	case '%', '|':
		for range 2 * n {
			if err := readReply(br, out); err != nil {
				return err
			}
		}
	}
	return nil
}

// closed reports whether the server closed the connection.
func (c *rawConn) closed() bool {
	_ = c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.br.ReadByte()
	return err == io.EOF
}

// startRedis runs a real redis-server on a free port, with extra
// configuration args (as on its command line).
func startRedis(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	requireTool(t, err, "redis-server")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no")
	cmd.Args = append(cmd.Args, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for range 100 {
		if nc, err := net.Dial("tcp", addr); err == nil {
			_ = nc.Close()
			return addr
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("redis-server did not start")
	return ""
}

// compatScript is run against Redis and the grid on one connection each;
// the replies must be byte-identical. A leading "~" compares only the reply
// type (time-dependent answers).
var compatScript = [][]string{
	{"FLUSHDB"},
	{"PING"}, {"PING", "hello"}, {"ECHO", "x"}, {"PING", "a", "b"}, {"ECHO"},
	{"SET", "k", "v"}, {"GET", "k"}, {"SET", "k", "v2", "NX"}, {"SET", "k", "v3", "XX", "GET"},
	{"SET", "k", "v4", "NX", "GET"}, {"SET", "new", "v", "XX"}, {"GET", "new"},
	{"SET", "k", "v", "EX", "100"}, {"TTL", "k"}, {"SET", "k", "v", "KEEPTTL"}, {"TTL", "k"},
	{"SET", "k", "v"}, {"TTL", "k"}, {"SET", "k", "v", "ex", "1000", "ex", "100"}, {"TTL", "k"},
	{"SET", "k", "v", "EX", "0"}, {"SET", "k", "v", "EX", "-1"}, {"SET", "k", "v", "EX", "abc"},
	{"SET", "k", "v", "PX", "10", "EX", "10"}, {"SET", "k", "v", "KEEPTTL", "EX", "10"},
	{"SET", "k", "v", "EX", "10", "KEEPTTL"}, {"SET", "k", "v", "NX", "XX"}, {"SET", "k", "v", "FOO"},
	{"SET", "k", "v", "EX"}, {"SET", "k", "v", "EX", "9223372036854775807"},
	{"SET", "gone", "v", "EXAT", "1"}, {"GET", "gone"}, {"SET", "gone", "v", "PXAT", "1000"}, {"EXISTS", "gone"},
	{"SETNX", "k", "a"}, {"SETNX", "k2", "a"}, {"GETDEL", "k2"}, {"GETDEL", "k2"}, {"GETSET", "k", "b"}, {"GETSET", "k3", "c"},
	{"SETEX", "k4", "0", "v"}, {"SETEX", "k4", "100", "v"}, {"TTL", "k4"}, {"PSETEX", "k4", "abc", "v"},
	{"DEL", "k", "k", "nope"}, {"EXISTS", "k"}, {"MSET", "a", "1", "b", "2", "c", "3"}, {"MGET", "a", "b", "nope", "c"},
	{"MSET", "a"}, {"MSET", "a", "1", "b"}, {"MSET", "d", "1", "d", "2"}, {"GET", "d"},
	{"EXISTS", "a", "a", "nope"}, {"DEL", "a", "b", "c", "d"}, {"UNLINK", "k3", "k4"},
	{"INCR", "n"}, {"INCRBY", "n", "10"}, {"DECR", "n"}, {"DECRBY", "n", "3"}, {"INCRBY", "n", "abc"},
	{"INCRBY", "n", "1.5"}, {"SET", "n", "9223372036854775807"}, {"INCR", "n"}, {"DECRBY", "n", "-9223372036854775808"},
	{"SET", "n", "-9223372036854775808"}, {"DECR", "n"}, {"SET", "n", " 1"}, {"INCR", "n"}, {"SET", "n", "01"}, {"INCR", "n"},
	{"SET", "n", "-0"}, {"INCR", "n"}, {"INCR", "fresh"}, {"INCR", "a", "b"},
	{"APPEND", "s", "abc"}, {"APPEND", "s", "def"}, {"GET", "s"}, {"STRLEN", "s"}, {"STRLEN", "nope"},
	{"EXPIRE", "s", "100"}, {"TTL", "s"}, {"EXPIRE", "s", "100", "NX"}, {"EXPIRE", "s", "200", "GT"}, {"TTL", "s"},
	{"EXPIRE", "s", "50", "LT"}, {"TTL", "s"}, {"EXPIRE", "s", "10", "XX", "LT"}, {"TTL", "s"}, {"EXPIRE", "s", "20", "XX", "GT"}, {"TTL", "s"},
	{"APPEND", "s", "g"}, {"TTL", "s"}, {"INCR", "s"}, {"PERSIST", "s"}, {"PERSIST", "s"}, {"TTL", "s"},
	{"EXPIRE", "s", "10", "XX", "LT"}, {"EXPIRE", "s", "10", "GT"}, {"EXPIRE", "s", "10", "LT"}, {"TTL", "s"},
	{"EXPIRE", "s", "10", "NX", "XX"}, {"EXPIRE", "s", "10", "GT", "LT"}, {"EXPIRE", "s", "10", "FOO"},
	{"EXPIRE", "s", "abc"}, {"EXPIRE", "nope", "10"}, {"PEXPIRE", "s", "100000"}, {"~PTTL", "s"},
	{"EXPIRE", "s", "9223372036854775807"}, {"EXPIRE", "s", "-1"}, {"EXISTS", "s"},
	{"SET", "t", "v"}, {"EXPIREAT", "t", "1"}, {"EXISTS", "t"}, {"SET", "t", "v"}, {"PEXPIREAT", "t", "4102444800000"}, {"~PTTL", "t"},
	{"EXPIRETIME", "t"}, {"PEXPIRETIME", "t"}, {"EXPIRETIME", "nope"}, {"SET", "t", "v"}, {"PEXPIRETIME", "t"},
	{"TYPE", "t"}, {"TYPE", "nope"}, {"TTL", "nope"}, {"PTTL", "nope"}, {"PERSIST", "nope"},
	{"DBSIZE"}, {"SELECT", "1"}, {"SET", "t", "other"}, {"GET", "t"}, {"DBSIZE"}, {"FLUSHDB"}, {"SELECT", "0"}, {"GET", "t"},
	{"SELECT", "-1"}, {"SELECT"},
	{"CLIENT", "SETNAME", "a b"}, {"CLIENT", "SETNAME", "a\nid=1"}, {"CLIENT", "SETNAME", "\x7f"}, {"CLIENT", "GETNAME"}, {"CLIENT", "SETNAME", "me"}, {"CLIENT", "GETNAME"},
	{"CLIENT", "SETNAME"}, {"CLIENT", "FOO"}, {"CLIENT"},
	{"FOO"}, {"FOO", "bar", "baz"}, {"foo", strings.Repeat("x", 200)}, {"GET"}, {"GET", "a", "b"}, {"SET", "a"},
	{"HELLO", "4"}, {"HELLO", "abc"}, {"HELLO", "2", "FOO"}, {"AUTH", "x"}, {"AUTH", "a", "b"}, {"AUTH", "default", "x"},
	{"CONFIG", "GET", "save"}, {"CONFIG", "GET", "appendonly"}, {"CONFIG", "GET", "nosuchparam"},
	{"SCAN", "abc"}, {"SCAN", "0", "COUNT", "0"}, {"SCAN", "0", "COUNT"}, {"SCAN", "0", "FOO", "bar"}, {"SCAN", "0", "COUNT", "x"},
	{"KEYS"}, {"FLUSHDB", "FOO"}, {"DBSIZE"},
	{"QUIT"},
}

// TestCompatWithRedis runs compatScript against a real redis-server and a
// grid node and compares the replies byte for byte.
func TestCompatWithRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	redisAddr := startRedis(t)
	c := newCluster(t, 1)
	for _, proto := range []string{"2", "3"} {
		t.Run("resp"+proto, func(t *testing.T) {
			rd, gd := dialRaw(t, redisAddr), dialRaw(t, c.addrs[0])
			rd.do("HELLO", proto)
			gd.do("HELLO", proto)
			for _, cmd := range compatScript {
				loose := strings.HasPrefix(cmd[0], "~")
				args := append([]string{strings.TrimPrefix(cmd[0], "~")}, cmd[1:]...)
				want, got := rd.do(args...), gd.do(args...)
				if loose {
					want, got = want[:1], got[:1]
				}
				if want != got {
					t.Errorf("%q:\nredis: %q\ngrid:  %q", args, want, got)
				}
			}
			if !rd.closed() || !gd.closed() {
				t.Error("QUIT must close the connection")
			}
		})
	}
}

// TestCompatProtocolErrors sends malformed requests to Redis and the grid:
// both must answer with the same error and close the connection, and the
// grid node must keep serving.
func TestCompatProtocolErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	// The grid's MaxBulk default is 16 MiB; Redis's proto-max-bulk-len is
	// set to the same.
	redisAddr := startRedis(t, "--proto-max-bulk-len", strconv.Itoa(resp.DefaultConfig().MaxBulk))
	c := newCluster(t, 1)
	bad := []string{
		"*1\r\n$9223372036854775807\r\n",
		"*1\r\n$-5\r\n",
		"*1\r\n$abc\r\n",
		"*abc\r\n",
		"*1\r\nfoo\r\n",
		"*2\r\n$3\r\nGET\r\n:1\r\n",
		"SET k \"unbalanced\r\n",
		"SET k \"a\"b\r\n",
		"*3000000000\r\n",
		"*1\r\n$4\r\nPING\r\n*1\r\n$-1\r\n",           // a good command, then a bad one
		"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$16777217\r\n", // over MaxBulk, refused at the header
		"*01\r\n$4\r\nPING\r\n",
		"*1\r\n$+4\r\nPING\r\n",
		"*1\r\n$04\r\nPING\r\n",
		"*" + strings.Repeat("1", 70<<10) + "\r\n",
		"*1\r\n$" + strings.Repeat("1", 70<<10) + "\r\n",
		strings.Repeat("x", 70<<10) + "\r\n",
	}
	for _, in := range bad {
		rd, gd := dialRaw(t, redisAddr), dialRaw(t, c.addrs[0])
		rd.send([]byte(in))
		gd.send([]byte(in))
		_ = rd.nc.SetReadDeadline(time.Now().Add(time.Second))
		want, _ := io.ReadAll(rd.br)
		_ = gd.nc.SetReadDeadline(time.Now().Add(time.Second))
		got, _ := io.ReadAll(gd.br)
		if !bytes.Equal(want, got) {
			t.Errorf("%.60q:\nredis: %q\ngrid:  %q", in, want, got)
		}
	}
	g := dialRaw(t, c.addrs[0])
	if r := g.do("PING"); r != "+PONG\r\n" {
		t.Fatalf("after bad clients: %q", r)
	}
	// Inline commands, as telnet sends them.
	g.send([]byte("SET inl \"a b\\x41\"\r\nGET inl\r\n\r\nECHO 'it\\'s'\n"))
	for _, want := range []string{"+OK\r\n", "$4\r\na bA\r\n", "$4\r\nit's\r\n"} {
		if r, err := g.reply(); err != nil || r != want {
			t.Fatalf("inline: %q %v, want %q", r, err, want)
		}
	}
}
