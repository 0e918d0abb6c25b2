// Package workpool runs short tasks on goroutines that outlive them.
//
// A goroutine started per request begins with a small stack and grows it,
// copying frames, on every deep call path; under load that copying cost a
// tenth of a node's CPU. A Pool hands each task to an idle worker whose
// stack has already grown, and starts a new worker only when none is idle,
// so it never limits concurrency (a task that blocks never delays another).
// Workers exit after being idle for a while, or when the owner stops.
package workpool

import (
	"sync"
	"time"
)

// Pool is an elastic set of worker goroutines.
type Pool struct {
	work chan func()
	idle time.Duration
	done <-chan struct{}
	wg   *sync.WaitGroup
}

// New returns a pool whose workers are counted in wg (the owner waits on
// it), exit when done closes, and exit after idle without work.
func New(done <-chan struct{}, wg *sync.WaitGroup, idle time.Duration) *Pool {
	return &Pool{work: make(chan func()), idle: idle, done: done, wg: wg}
}

// Go runs f on an idle worker, or on a new one if none is idle. After done
// has closed, f still runs (on a new goroutine counted in wg).
func (p *Pool) Go(f func()) {
	select {
	case p.work <- f:
	default:
		p.wg.Add(1)
		go p.worker(f)
	}
}

func (p *Pool) worker(f func()) {
	defer p.wg.Done()
	t := time.NewTimer(p.idle)
	defer t.Stop()
	for {
		f()
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(p.idle)
		select {
		case f = <-p.work:
		case <-t.C:
			return
		case <-p.done:
			return
		}
	}
}
