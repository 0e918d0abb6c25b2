package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/collocate/grid/client"
	"github.com/collocate/grid/grid"
	"github.com/collocate/grid/grid/gridtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, gridtest.LeakOptions()...)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestDialBadConfig(t *testing.T) {
	if _, err := client.Dial(context.Background(), client.Config{}); err == nil {
		t.Fatal("empty Addrs accepted")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := client.Dial(ctx, client.Config{Addrs: []string{"127.0.0.1:1"}}); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
}

func TestClientAgainstInProcessCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := gridtest.New(t, 3, nil)
	c.WaitStable(30 * time.Second)
	ctx := ctxT(t, 60*time.Second)
	cl, err := client.Dial(ctx, client.Config{Addrs: []string{c.Nodes[1].RPCAddr()}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	defer cl.Close() // twice is fine

	// The same function works on the embedded node and on the client.
	exercise := func(t *testing.T, m grid.Map) {
		if err := m.Put(ctx, "a", []byte("1")); err != nil {
			t.Fatal(err)
		}
		if v, err := m.Get(ctx, "a"); err != nil || string(v) != "1" {
			t.Fatalf("get: %q %v", v, err)
		}
		if _, err := m.Get(ctx, "nope"); !errors.Is(err, client.ErrNotFound) {
			t.Fatalf("missing: %v", err)
		}
		if ok, err := m.CompareAndSwap(ctx, "a", []byte("1"), []byte("2")); !ok || err != nil {
			t.Fatalf("cas: %v %v", ok, err)
		}
		if ok, err := m.Delete(ctx, "a"); !ok || err != nil {
			t.Fatalf("delete: %v %v", ok, err)
		}
	}
	exercise(t, c.Nodes[0].Map("shared"))
	exercise(t, cl.Map("shared"))

	m := cl.Map("data")
	entries := map[string][]byte{}
	for i := range 10000 {
		entries[fmt.Sprintf("key-%05d", i)] = []byte(fmt.Sprint(i))
	}
	if err := m.PutAll(ctx, entries); err != nil {
		t.Fatal(err)
	}
	if n, err := m.Size(ctx); err != nil || n != 10000 {
		t.Fatalf("size %d %v", n, err)
	}
	// Written through the client, read through an embedded node.
	if v, err := c.Nodes[2].Map("data").Get(ctx, "key-04242"); err != nil || string(v) != "4242" {
		t.Fatalf("embedded read of client write: %q %v", v, err)
	}
	var serr error
	seen := 0
	for k, v := range m.Scan(ctx, &serr) {
		if !bytes.Equal(v, entries[k]) {
			t.Fatalf("scan %s = %q", k, v)
		}
		seen++
	}
	if serr != nil || seen != 10000 {
		t.Fatalf("scan saw %d, %v", seen, serr)
	}

	// Kill a node: the client keeps working without the caller's help and
	// nothing acknowledged is lost.
	version := cl.TableVersion()
	c.Kill(2)
	for i := range 500 {
		key := fmt.Sprintf("after-%d", i)
		if err := m.Put(ctx, key, []byte("x")); err != nil {
			t.Fatalf("put during failover: %v", err)
		}
	}
	got, err := m.GetAll(ctx, keysOf(entries))
	if err != nil || len(got) != len(entries) {
		t.Fatalf("after kill: %d of %d keys, %v", len(got), len(entries), err)
	}
	if cl.TableVersion() <= version {
		t.Fatalf("client table not refreshed: %d", cl.TableVersion())
	}
}

func keysOf(m map[string][]byte) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
