package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// stub stands in for the import-bookings Edge Function: it answers every
// POST with the JSON envelope the real one sends, after a configurable
// delay, and counts the calls it gets.
type stub struct {
	addr string
	srv  *http.Server

	delay       atomic.Int64 // nanoseconds
	calls       atomic.Int64
	inflight    atomic.Int64
	maxInflight atomic.Int64
}

func startStub() (*stub, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &stub{addr: ln.Addr().String()}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

func (s *stub) url() string { return "http://" + s.addr + "/functions/v1/import-bookings" }

// reset zeroes the counters and sets the per-request delay.
func (s *stub) reset(delay time.Duration) {
	s.delay.Store(int64(delay))
	s.calls.Store(0)
	s.maxInflight.Store(s.inflight.Load())
}

func (s *stub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.calls.Add(1)
	n := s.inflight.Add(1)
	defer s.inflight.Add(-1)
	for {
		m := s.maxInflight.Load()
		if n <= m || s.maxInflight.CompareAndSwap(m, n) {
			break
		}
	}
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
}

// waitQuiet waits until the call count has not moved for quiet (and at
// least one call was made, or wait gave up), or until limit passes.
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
