package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/collocate/grid/client"
	"github.com/collocate/grid/txn"
)

// A client process that dies in its commit (fault kill-client): the
// harness runs itself again as a bank client (bankClientEnv set), which
// runs one transfer and says on stdout when it prepared ("prepared COORD
// P1,P2,...") and, with -mid, when it sends its commit step
// ("committing"); the harness SIGKILLs it right then. Its connections die
// with it, its frames half written or not.

// bankClientEnv makes the gridchaos binary (or its test binary, through
// TestMain) run bankClientMain instead.
const bankClientEnv = "GRIDCHAOS_BANK_CLIENT"

// bankClientMain runs one transfer: -from, -to, -amount, -id through
// -addrs. It blocks for good once prepared (unless -mid, where it sends
// the commit step after saying so); if the transfer ends before, it
// prints "done OUTCOME KIND" and exits 0.
func bankClientMain(args []string) int {
	fs := flag.NewFlagSet("bank client", flag.ContinueOnError)
	addrs := fs.String("addrs", "", "RPC addresses")
	id := fs.String("id", "", "transfer id")
	from := fs.String("from", "", "source account")
	to := fs.String("to", "", "destination account")
	amount := fs.Int("amount", 1, "amount")
	mid := fs.Bool("mid", false, "send the commit step (the harness kills the client as it does)")
	timeout := fs.Duration("txn-timeout", 0, "txn.Options.Timeout")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{Addrs: strings.Split(*addrs, ",")})
	if err != nil {
		fmt.Printf("done aborted dial:%s\n", errKind(err))
		return 0
	}
	defer c.Close()
	l := &bankLoad{examples: map[string]string{}}
	p := &transferPlan{id: *id, from: *from, to: *to, amount: *amount}
	hg := &hookGrid{Grid: txn.Client(c)}
	hg.before = func(_ context.Context, coord int, prepared []int) error {
		fmt.Printf("prepared %d %s\n", coord, joinInts(prepared))
		if !*mid {
			select {} // the harness kills this process
		}
		fmt.Println("committing")
		return nil
	}
	err = txn.Run(ctx, hg, txn.Options{Timeout: *timeout}, func(ctx context.Context, tx *txn.Tx) error {
		hg.reset()
		return l.transferBody(ctx, tx, p)
	})
	l.record(p, err)
	fmt.Printf("done %s %s\n", strings.ReplaceAll(p.outcome.String(), " ", "-"), p.kind)
	return 0
}

func joinInts(xs []int) string {
	var s []string
	for _, x := range xs {
		s = append(s, strconv.Itoa(x))
	}
	return strings.Join(s, ",")
}

// killClient runs a transfer across partitions in a client process of
// its own and SIGKILLs the process right after its prepares (mid false:
// nothing may apply) or as it sends its commit step (mid: unknown), then
// files it. onPrepared, if set, runs before the kill. A transfer that ends
// before its commit (declined) is filed as such and another is tried, up
// to 10. It returns the transfer killed and the participants it said it
// prepared.
func (l *bankLoad) killClient(ctx context.Context, rng *rand.Rand, id string, mid bool) (*transferPlan, []int, error) {
	for try := range 10 {
		p := l.book.plan(rng, fmt.Sprintf("%s.%d", id, try), false)
		for p.single {
			p = l.book.plan(rng, p.id, false)
		}
		prepared, killed, err := l.runClientProcess(ctx, rng, p, mid)
		if err != nil || killed {
			return p, prepared, err
		}
	}
	return nil, nil, fmt.Errorf("10 client transfers ended before their commit")
}

// runClientProcess runs p in a client process and kills it at its
// commit; killed false: it ended before (filed with its outcome).
// prepared: the participants it said it prepared.
func (l *bankLoad) runClientProcess(ctx context.Context, rng *rand.Rand, p *transferPlan, mid bool) (prepared []int, killed bool, err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, false, err
	}
	args := []string{"-addrs", strings.Join(l.addrs, ","), "-id", p.id, "-from", p.from, "-to", p.to,
		"-amount", strconv.Itoa(p.amount), "-txn-timeout", l.cfg.TxnTimeout.String()}
	if mid {
		args = append(args, "-mid")
	}
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Env = append(os.Environ(), bankClientEnv+"=1")
	cmd.Stderr = io.Discard
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, false, err
	}
	if err := cmd.Start(); err != nil {
		return nil, false, err
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	kill := func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		for range lines {
		}
		_ = cmd.Wait()
	}
	timeout := time.After(l.cfg.TransferTimeout + 10*time.Second)
	for {
		select {
		case line, ok := <-lines:
			switch f := strings.Fields(line); {
			case !ok:
				_ = cmd.Wait()
				return nil, false, errors.New("the client process ended without a word")
			case len(f) > 0 && f[0] == "prepared":
				prepared = parseInts(f[2:])
				if mid {
					continue
				}
				kill()
				p.outcome = tAbandonedBefore
				l.filePlan(p)
				return prepared, true, nil
			case len(f) > 0 && f[0] == "committing":
				time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
				kill()
				p.outcome = tAbandonedMid
				l.filePlan(p)
				return prepared, true, nil
			case len(f) >= 2 && f[0] == "done":
				for range lines {
				}
				_ = cmd.Wait()
				p.outcome, p.kind = parseOutcome(f[1]), strings.Join(f[2:], " ")
				l.file(p)
				return prepared, false, nil
			}
		case <-timeout:
			kill()
			return nil, false, errors.New("the client process did not reach its commit in time")
		}
	}
}

// parseInts reads "1,2,3" (the first field of fs; none: nil).
func parseInts(fs []string) []int {
	if len(fs) == 0 || fs[0] == "" {
		return nil
	}
	var out []int
	for _, x := range strings.Split(fs[0], ",") {
		if n, err := strconv.Atoi(x); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// filePlan files an abandoned transfer.
func (l *bankLoad) filePlan(p *transferPlan) {
	l.mu.Lock()
	l.abandons++
	l.mu.Unlock()
	l.file(p)
}

// parseOutcome reads an outcome printed by the client process.
func parseOutcome(s string) transferOutcome {
	for o := tNone; o <= tAbandonedMid; o++ {
		if strings.ReplaceAll(o.String(), " ", "-") == s {
			return o
		}
	}
	return tUnknown
}
