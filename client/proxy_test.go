package client

import (
	"context"
	"net"
	"sync"
	"testing"
)

// stallProxy forwards TCP connections to one address. Once stalled it
// behaves as a stopped (SIGSTOP) process whose kernel still holds the
// sockets: it keeps every connection open, accepts new ones, and forwards
// nothing in either direction, not even the target's close.
type stallProxy struct {
	ln     net.Listener
	target string
	stall  chan struct{} // closed by Stall
	once   sync.Once
	closed chan struct{}

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: target, stall: make(chan struct{}), closed: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *stallProxy) Addr() string { return p.ln.Addr().String() }

// Stall stops forwarding for good.
func (p *stallProxy) Stall() { p.once.Do(func() { close(p.stall) }) }

func (p *stallProxy) stalled() bool {
	select {
	case <-p.stall:
		return true
	default:
		return false
	}
}

func (p *stallProxy) track(c net.Conn) {
	p.mu.Lock()
	p.conns = append(p.conns, c)
	p.mu.Unlock()
}

func (p *stallProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.track(c)
		if p.stalled() {
			continue // held open, never read
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.track(up)
		p.wg.Add(2)
		go p.pipe(up, c)
		go p.pipe(c, up)
	}
}

// pipe copies src to dst until either fails; once stalled it holds both
// ends open until the proxy closes.
func (p *stallProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if p.stalled() {
			<-p.closed
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil && err == nil {
				err = werr
			}
		}
		if err != nil {
			_ = src.Close()
			_ = dst.Close()
			return
		}
	}
}

func (p *stallProxy) close() {
	close(p.closed)
	_ = p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// proxiedDial routes dials to the addresses in proxies through their proxy.
func proxiedDial(proxies map[string]*stallProxy) func(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, addr string) (net.Conn, error) {
		if p := proxies[addr]; p != nil {
			addr = p.Addr()
		}
		return d.DialContext(ctx, "tcp", addr)
	}
}
