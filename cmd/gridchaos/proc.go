package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// proc is one gridnode process slot (a name on its own 127.0.0.x).
type proc struct {
	idx                  int // 1-based
	name, ip             string
	gossip, rpc, httpURL string
	cmd                  *exec.Cmd
	done                 chan struct{}
	running, paused      bool
	logPath              string
}

// exited reports whether a process the harness believes running has died
// on its own.
func (p *proc) exited() bool {
	if !p.running || p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// harness owns the processes and the nemesis' state. Only the run's own
// goroutine touches it (workloads use clients, not the harness).
type harness struct {
	cfg   Config
	bin   string
	rng   *rand.Rand
	procs []*proc
	t0    time.Time
	logf  func(format string, args ...any)
	dir   string

	// amnesiac names members restarted (same name, empty) while the table
	// may still list their previous incarnation: their listed copies do
	// not count as copies until the cluster converged (or the table
	// stopped naming them).
	amnesiac map[string]bool
	// restartedAt is, per amnesiac member, the newest table version before
	// its restart: only a later table can name its new incarnation, so an
	// older one (say, while the leader is dead) is not converged for it.
	restartedAt map[string]uint64
	// safeAt are the times (ns since t0) at which the cluster was seen
	// safe; faults' recovery points are taken from it.
	safeAt []int64
	// nodeArgs, if set, returns p's flags after the common ones, in place
	// of "-profile <cfg.Profile>" (the failover mode runs gridnode's
	// defaults).
	nodeArgs func(p *proc) []string
}

func (h *harness) now() int64 { return time.Since(h.t0).Nanoseconds() }

func (h *harness) slot(i int) *proc {
	for len(h.procs) <= i {
		j := len(h.procs)
		ip := fmt.Sprintf("127.0.0.%d", j+1)
		if h.cfg.Netns {
			ip = nsAddr(j + 1)
			if err := netAddNode(j + 1); err != nil {
				h.logf("netns for n%d: %v", j+1, err)
			}
		}
		h.procs = append(h.procs, &proc{
			idx:     j + 1,
			name:    fmt.Sprintf("n%d", j+1),
			ip:      ip,
			gossip:  fmt.Sprintf("%s:%d", ip, h.cfg.BasePort),
			rpc:     fmt.Sprintf("%s:%d", ip, h.cfg.BasePort+1),
			httpURL: fmt.Sprintf("http://%s:%d", ip, h.cfg.BasePort+2),
			logPath: filepath.Join(h.dir, fmt.Sprintf("n%d.log", j+1)),
		})
	}
	return h.procs[i]
}

func (h *harness) byName(name string) *proc {
	for _, p := range h.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

func (h *harness) running() []*proc {
	var out []*proc
	for _, p := range h.procs {
		if p.running {
			out = append(out, p)
		}
	}
	return out
}

func (h *harness) rpcAddrs() []string {
	var addrs []string
	for _, p := range h.running() {
		addrs = append(addrs, p.rpc)
	}
	return addrs
}

// start starts p's process with the harness' flags; a restart uses the
// same name and flags (only -join follows the current members).
func (h *harness) start(p *proc) error {
	var join []string
	for _, q := range h.running() {
		if !q.paused && q != p {
			join = append(join, q.gossip)
		}
	}
	args := []string{"-name", p.name, "-gossip", p.gossip, "-rpc", p.rpc, "-http", strings.TrimPrefix(p.httpURL, "http://"),
		"-backups", fmt.Sprint(h.cfg.Backups), "-log-level", "info", "-leave-timeout", "15s"}
	if h.nodeArgs != nil {
		args = append(args, h.nodeArgs(p)...)
	} else {
		args = append(args, "-profile", h.cfg.Profile)
	}
	if len(join) > 0 {
		args = append(args, "-join", strings.Join(join, ","))
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== gridchaos: start at %.3fs\n", time.Since(h.t0).Seconds())
	if h.cfg.Netns {
		p.cmd = exec.Command("ip", append([]string{"netns", "exec", nsName(p.idx), h.bin}, args...)...)
	} else {
		p.cmd = exec.Command(h.bin, args...)
	}
	p.cmd.Stderr = logf
	p.cmd.Stdout = logf
	// If the harness dies, its nodes die with it (no orphan cluster left to
	// capture the next run's nodes).
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}(p.cmd, p.done)
	p.running, p.paused = true, false
	return nil
}

func (h *harness) signal(p *proc, sig syscall.Signal) {
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(sig)
	}
}

// kill SIGKILLs p and waits for it to exit. Its data is gone: until the
// table shows it again as a fresh member, its listed copies do not count.
func (h *harness) kill(p *proc) {
	h.signal(p, syscall.SIGKILL)
	<-p.done
	p.running, p.paused = false, false
	h.amnesiac[p.name] = true
}

func (h *harness) stopAll() {
	for _, p := range h.procs {
		if p.running {
			if p.paused {
				h.signal(p, syscall.SIGCONT)
			}
			h.signal(p, syscall.SIGKILL)
			<-p.done
			p.running, p.paused = false, false
		}
	}
}

func (h *harness) saveLogs() {
	_ = os.MkdirAll(h.cfg.Out, 0o755)
	for _, p := range h.procs {
		if b, err := os.ReadFile(p.logPath); err == nil {
			_ = os.WriteFile(filepath.Join(h.cfg.Out, p.name+".log"), b, 0o644)
		}
	}
	h.logf("node logs in %s", h.cfg.Out)
}

// logTail returns the last n lines of p's log, joined by " | " (a node's
// last words for an error message: the logs of a test's temporary
// directory are gone when CI prints it).
func (p *proc) logTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
