package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// stub stands in for the import-bookings Edge Function: it answers every
// POST with the JSON envelope the real one sends, after a configurable
// delay (or once released, while it holds its calls), and counts the
// calls it gets, in all and per booking.
type stub struct {
	addr string
	srv  *http.Server

	delay       atomic.Int64 // nanoseconds
	hold        atomic.Pointer[chan struct{}]
	calls       atomic.Int64 // calls received
	done        atomic.Int64 // calls answered
	inflight    atomic.Int64
	maxInflight atomic.Int64

	// perBooking counts the calls in flight for each booking_id: the
	// plugin promises never to run two syncs of one booking at once.
	mu            sync.Mutex
	perBooking    map[string]int
	maxPerBooking int
}

func startStub() (*stub, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &stub{addr: ln.Addr().String(), perBooking: map[string]int{}}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

func (s *stub) url() string { return "http://" + s.addr + "/functions/v1/import-bookings" }

// reset zeroes the counters, sets the per-call delay and releases any
// held calls.
func (s *stub) reset(delay time.Duration) {
	s.release()
	s.delay.Store(int64(delay))
	s.calls.Store(0)
	s.done.Store(0)
	s.maxInflight.Store(s.inflight.Load())
	s.mu.Lock()
	s.maxPerBooking = 0
	for _, n := range s.perBooking {
		s.maxPerBooking = max(s.maxPerBooking, n)
	}
	s.mu.Unlock()
}

// holdCalls makes every call wait until release.
func (s *stub) holdCalls() {
	ch := make(chan struct{})
	s.hold.Store(&ch)
}

// release answers the held calls, and the later ones at once (after the
// delay).
func (s *stub) release() {
	if ch := s.hold.Swap(nil); ch != nil {
		close(*ch)
	}
}

// maxForOneBooking is the most calls seen in flight at once for one
// booking since the last reset.
func (s *stub) maxForOneBooking() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int64(s.maxPerBooking)
}

func (s *stub) enter(booking string) {
	s.calls.Add(1)
	n := s.inflight.Add(1)
	for {
		m := s.maxInflight.Load()
		if n <= m || s.maxInflight.CompareAndSwap(m, n) {
			break
		}
	}
	s.mu.Lock()
	s.perBooking[booking]++
	s.maxPerBooking = max(s.maxPerBooking, s.perBooking[booking])
	s.mu.Unlock()
}

func (s *stub) leave(booking string) {
	s.inflight.Add(-1)
	s.mu.Lock()
	if s.perBooking[booking]--; s.perBooking[booking] <= 0 {
		delete(s.perBooking, booking)
	}
	s.mu.Unlock()
}

func (s *stub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, `{"success":false,"error":"reading body"}`, http.StatusBadRequest)
		return
	}
	var req struct {
		BookingID json.RawMessage `json:"booking_id"`
	}
	_ = json.Unmarshal(body, &req)
	id := req.BookingID
	if len(id) == 0 {
		id = json.RawMessage("null")
	}
	// "42" and 42 name the same booking.
	booking := strings.Trim(string(id), `"`)
	s.enter(booking)
	defer s.leave(booking)
	if ch := s.hold.Load(); ch != nil {
		select {
		case <-*ch:
		case <-r.Context().Done():
			return
		}
	}
	if d := time.Duration(s.delay.Load()); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	var out bytes.Buffer
	// import-bookings' envelope for a single-booking sync (the driver
	// sends organization_id "org-1").
	out.Grow(160 + len(id))
	out.WriteString(`{"success":true,"queued":false,"completed":true,"sync_mode":"single","booking_id":`)
	out.Write(id)
	out.WriteString(`,"organization_id":"org-1","outcome":"applied"}`)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out.Bytes())
	s.done.Add(1)
}

// waitQuiet waits until the call count has not moved and no call has been
// in flight for quiet (and at least one call was made), or until limit
// passes.
func (s *stub) waitQuiet(quiet, limit time.Duration) int64 {
	deadline := time.Now().Add(limit)
	last, since := s.calls.Load(), time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		n := s.calls.Load()
		if n != last || s.inflight.Load() > 0 {
			last, since = n, time.Now()
			continue
		}
		if n > 0 && time.Since(since) >= quiet {
			break
		}
	}
	return s.calls.Load()
}

// waitDone waits until n calls have been answered since the last reset,
// or until limit passes, and reports whether they were.
func (s *stub) waitDone(n int64, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for s.done.Load() < n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}
