package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/collocate/grid/grid"
)

// stageProgress is one processor's counts over the live runtimes.
type stageProgress struct {
	handled int64 // events handled (by the runtimes since they started, and by stopped ones)
	lag     int   // events waiting, at the partitions led now
	parked  int64 // events parked in its dead letters
}

// progress sums every processor's status over the live runtimes.
func (c *embedded) progress() map[string]stageProgress {
	out := map[string]stageProgress{}
	for name, r := range c.retired {
		out[name] = r
	}
	for _, rt := range c.runtimes() {
		for _, s := range rt.Status() {
			p := out[s.Name]
			p.handled += s.Handled
			p.lag += s.Lag
			p.parked += s.Parked
			out[s.Name] = p
		}
	}
	return out
}

// parked sums the events the stages parked in their dead letters.
func parked(prog map[string]stageProgress) int64 {
	var n int64
	for _, p := range prog {
		n += p.parked
	}
	return n
}

// printProgress prints one line: the client's publishes and each stage's
// counts.
func printProgress(out io.Writer, elapsed time.Duration, st *pubStats, total int, c *embedded) {
	var b strings.Builder
	fmt.Fprintf(&b, "%6.1fs  published %4d/%d", elapsed.Seconds(), st.payments.Load(), total)
	prog := c.progress()
	for _, name := range stageNames {
		p := prog[name]
		fmt.Fprintf(&b, " | %s %5d lag %3d", name, p.handled, p.lag)
	}
	fmt.Fprintf(&b, " | dead %d | leads", parked(prog))
	for _, m := range c.members {
		fmt.Fprintf(&b, " %s %s", m.name, leads(m.node))
	}
	b.WriteByte('\n')
	io.WriteString(out, b.String())
}

// leads counts the partitions nd leads ("-" if it is down).
func leads(nd *grid.Node) string {
	if nd == nil {
		return "-"
	}
	n := 0
	for p := range nd.Partitions() {
		if nd.Leads(p) {
			n++
		}
	}
	return strconv.Itoa(n)
}
