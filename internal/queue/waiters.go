package queue

// Waiting senders: in auto mode a sender whose webhook is recorded waits
// for the outcome of the first attempt of its job that starts after the
// record. Waiters are registered inside the recording transaction (the job
// cannot be claimed before it commits) and taken by the worker when it
// claims the booking, so an attempt that was already running when a webhook
// merged into its job never answers for that webhook.
//
// On PostgreSQL the attempt may run on another instance: it publishes its
// outcome with its claim number (notify.go), and each waiter keeps the mark
// its record read under the booking's row lock. Every claim that locked the
// booking before the record got a number at most the mark, every later one
// a greater number; so a waiter takes an outcome only from a claim numbered
// above its mark (takeClaimed). SQLite runs one instance: marks are 0.

import (
	"math"
	"slices"
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
	pending map[int64][]waiter
}

// waiter is a sender's channel and the claim mark of its record: the
// highest claim number taken when it was recorded.
type waiter struct {
	ch   chan *Outcome
	mark int64
}

func (w *waiters) init() { w.pending = make(map[int64][]waiter) }

// add registers ch for the next attempt of job id to start; mark is the
// record's claim mark.
func (w *waiters) add(id int64, ch chan *Outcome, mark int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending[id] = append(w.pending[id], waiter{ch, mark})
}

// remove withdraws ch (its sender stopped waiting) if it was not taken.
func (w *waiters) remove(id int64, ch chan *Outcome) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.keep(id, func(o waiter) bool { return o.ch != ch })
}

// take hands the waiters of job id to the attempt that has just claimed it
// in this process: every one of them was recorded before that claim (a
// record merges only into a job that waits, and it waits again only once
// that attempt has finished).
func (w *waiters) take(id int64) []chan *Outcome {
	return w.takeClaimed(id, maxMark)
}

// takeClaimed hands over the waiters of job id that were recorded before
// its attempt with the given claim number (which ran on another
// instance): those whose mark is below it. Later records wait on.
func (w *waiters) takeClaimed(id, claim int64) []chan *Outcome {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []chan *Outcome
	w.keep(id, func(o waiter) bool {
		if o.mark < claim {
			out = append(out, o.ch)
			return false
		}
		return true
	})
	return out
}

// maxMark is above every claim number.
const maxMark = math.MaxInt64

// keep keeps the waiters of job id for which f is true (w.mu held).
func (w *waiters) keep(id int64, f func(waiter) bool) {
	ws := slices.DeleteFunc(w.pending[id], func(o waiter) bool { return !f(o) })
	if len(ws) == 0 {
		delete(w.pending, id)
	} else {
		w.pending[id] = ws
	}
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
