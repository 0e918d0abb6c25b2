package workpool

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPoolReusesAndStops(t *testing.T) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	p := New(done, &wg, time.Minute)
	var ran atomic.Int64
	// Blocking tasks never delay others: 50 tasks that wait on each other
	// all run at once.
	var start sync.WaitGroup
	start.Add(50)
	var finished sync.WaitGroup
	finished.Add(50)
	for range 50 {
		p.Go(func() {
			start.Done()
			start.Wait()
			ran.Add(1)
			finished.Done()
		})
	}
	finished.Wait()
	// Sequential tasks reuse the idle workers.
	for range 1000 {
		var one sync.WaitGroup
		one.Add(1)
		p.Go(func() { ran.Add(1); one.Done() })
		one.Wait()
	}
	if ran.Load() != 1050 {
		t.Fatalf("ran %d tasks", ran.Load())
	}
	close(done)
	wg.Wait()
}

func TestIdleWorkersExit(t *testing.T) {
	done := make(chan struct{})
	defer close(done)
	var wg sync.WaitGroup
	p := New(done, &wg, 20*time.Millisecond)
	for range 10 {
		p.Go(func() {})
	}
	wg.Wait() // returns once every worker has been idle for 20 ms
}
