package receivebooking

// mode sync without a queue: bursts for one booking share syncs inside
// this instance (the in-process coalescer), one running per booking.

import (
	"context"
	"sync"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"
)

// coalescer shares upstream syncs between concurrent requests for one
// booking inside this instance, by the rule the queue follows too: at most
// one sync per booking runs at a time; a request that arrives while one
// runs does not join it (the running sync may have read the booking before
// the change this request reports) but waits for the next one, which all
// requests arriving meanwhile share.
type coalescer struct {
	mu       sync.Mutex
	bookings map[payload.Key]*bookingFlights
}

type bookingFlights struct {
	running *flight
	next    *flight
}

// flight is one upstream sync and the requests waiting for its result.
type flight struct {
	req       upstream.Request
	requestID string
	waiters   int
	started   bool
	cancel    context.CancelFunc
	done      chan struct{}
	res       *upstream.Result
}

type syncFunc func(ctx context.Context, req upstream.Request, requestID string) *upstream.Result

func newCoalescer() *coalescer {
	return &coalescer{bookings: make(map[payload.Key]*bookingFlights)}
}

// do returns the result of a sync that started after this call, shared with
// the other callers for the same booking. shared reports that another
// request already waited for that sync. A caller whose ctx ends first gets
// ctx.Err(); the sync is cancelled once no caller waits for it any more.
// timeout bounds each sync from the moment it starts.
func (c *coalescer) do(ctx context.Context, key payload.Key, req upstream.Request, requestID string,
	timeout time.Duration, fn syncFunc) (res *upstream.Result, shared bool, err error) {
	f, shared := c.join(key, req, requestID, timeout, fn)
	select {
	case <-f.done:
		return f.res, shared, nil
	case <-ctx.Done():
		c.leave(key, f)
		return nil, shared, ctx.Err()
	}
}

func (c *coalescer) join(key payload.Key, req upstream.Request, requestID string, timeout time.Duration, fn syncFunc) (*flight, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	bf := c.bookings[key]
	if bf == nil {
		bf = &bookingFlights{}
		c.bookings[key] = bf
	}
	var f *flight
	switch {
	case bf.running == nil:
		f = newFlight(req, requestID)
		bf.running = f
		c.startLocked(key, bf, f, timeout, fn)
	case bf.next == nil:
		f = newFlight(req, requestID)
		bf.next = f
	default:
		// The latest webhook's fields describe the booking best.
		f = bf.next
		f.req, f.requestID = req, requestID
	}
	shared := f.waiters > 0
	f.waiters++
	return f, shared
}

func newFlight(req upstream.Request, requestID string) *flight {
	return &flight{req: req, requestID: requestID, done: make(chan struct{})}
}

// startLocked runs f in the background; when it ends, the next flight of
// the booking (if any request waits for one) starts.
func (c *coalescer) startLocked(key payload.Key, bf *bookingFlights, f *flight, timeout time.Duration, fn syncFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	f.started, f.cancel = true, cancel
	req, id := f.req, f.requestID
	go func() {
		res := fn(ctx, req, id)
		cancel()
		c.finish(key, bf, f, res, timeout, fn)
	}()
}

func (c *coalescer) finish(key payload.Key, bf *bookingFlights, f *flight, res *upstream.Result, timeout time.Duration, fn syncFunc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f.res = res
	close(f.done)
	bf.running = nil
	if bf.next != nil {
		bf.running, bf.next = bf.next, nil
		c.startLocked(key, bf, bf.running, timeout, fn)
		return
	}
	delete(c.bookings, key)
}

// leave withdraws one waiter. A started sync nobody waits for is cancelled;
// a pending one is dropped.
func (c *coalescer) leave(key payload.Key, f *flight) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f.waiters--
	if f.waiters > 0 {
		return
	}
	if f.started {
		f.cancel()
		return
	}
	if bf := c.bookings[key]; bf != nil && bf.next == f {
		bf.next = nil
	}
}
