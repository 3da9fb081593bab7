package queue

// Waiting senders: in auto mode a sender whose webhook is recorded waits
// for the outcome of the first attempt of its job that starts after the
// record. Waiters are registered inside the recording transaction (the job
// cannot be claimed before it commits) and taken by the worker when it
// claims the booking, so an attempt that was already running when a webhook
// merged into its job never answers for that webhook.

import (
	"sync"

	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"
)

// Outcome is how one attempt of a queued sync ended, as a waiting
// sender is told.
type Outcome struct {
	Result *upstream.Result
	// Final: no retry follows (success, a permanent failure, or the last
	// attempt).
	Final bool
	// Err is the failure's scrubbed description; "" on success.
	Err string
}

type waiters struct {
	mu      sync.Mutex
	pending map[int64][]chan *Outcome
}

func (w *waiters) init() { w.pending = make(map[int64][]chan *Outcome) }

// add registers ch for the next attempt of job id to start.
func (w *waiters) add(id int64, ch chan *Outcome) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending[id] = append(w.pending[id], ch)
}

// remove withdraws ch (its sender stopped waiting) if it was not taken.
func (w *waiters) remove(id int64, ch chan *Outcome) {
	w.mu.Lock()
	defer w.mu.Unlock()
	chs := w.pending[id]
	for i, c := range chs {
		if c == ch {
			chs = append(chs[:i:i], chs[i+1:]...)
			break
		}
	}
	if len(chs) == 0 {
		delete(w.pending, id)
	} else {
		w.pending[id] = chs
	}
}

// take hands the waiters of job id to the attempt that has just claimed it.
func (w *waiters) take(id int64) []chan *Outcome {
	w.mu.Lock()
	defer w.mu.Unlock()
	chs := w.pending[id]
	delete(w.pending, id)
	return chs
}

// deliver tells every waiter the outcome; a waiter that left is skipped
// (its channel has room for one value, so this never blocks).
func deliver(chs []chan *Outcome, out *Outcome) {
	for _, ch := range chs {
		select {
		case ch <- out:
		default:
		}
	}
}
