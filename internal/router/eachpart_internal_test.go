package router

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// eachPart stops starting writes once one failed (a ctx canceled midway
// fails every later one): DeleteGroup once stopped at its first error, and
// a canceled consumer must not go on sending a write to every partition
// and answer an error of one line per partition.
func TestEachPartStopsStartingAfterAFailure(t *testing.T) {
	parts := make([]int, 100)
	for i := range parts {
		parts[i] = i
	}
	release := make(chan struct{})
	var blocked, after atomic.Int32
	failed := make(chan struct{})
	// eachPart formats the failure once it recorded it: only then may the
	// first writes end and free their slots.
	fail := &signalError{once: &sync.Once{}, signal: failed}
	done := make(chan error, 1)
	go func() {
		done <- eachPart(parts, func(p int) error {
			switch {
			case p == 0:
				// It fails once every other first write is under way.
				for end := time.Now().Add(10 * time.Second); blocked.Load() < partsAtOnce-1 && time.Now().Before(end); {
					time.Sleep(time.Millisecond)
				}
				return fail
			case p < partsAtOnce:
				blocked.Add(1)
				<-release
				return nil
			}
			after.Add(1)
			return nil
		})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for blocked.Load() < partsAtOnce-1 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of the first writes started", blocked.Load())
		}
		time.Sleep(time.Millisecond)
	}
	<-failed
	close(release)
	err := <-done
	if !errors.Is(err, fail) {
		t.Fatalf("eachPart: %v, want the failure", err)
	}
	if n := after.Load(); n != 0 {
		t.Fatalf("%d writes started after one failed", n)
	}
}

type signalError struct {
	once   *sync.Once
	signal chan struct{}
}

func (e *signalError) Error() string {
	e.once.Do(func() { close(e.signal) })
	return "canceled"
}
