package main

// The stub import-bookings: internal/testkit's stand-in, held or delayed
// as a scenario needs, counting calls in flight per booking.

import (
	"net/http"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

// stub stands in for the import-bookings Edge Function: testkit's
// stand-in, the tests' own, keeping counters only (a load's calls are not
// recorded). It answers every POST with the JSON envelope the real one
// sends, after a per-scenario delay, or once released while it holds its
// calls, and counts the calls, in all and in flight per booking.
type stub struct {
	*testkit.StandIn
	// held is closed to release the held calls; nil when none are held.
	held chan struct{}
}

func startStub() (*stub, error) {
	s, err := testkit.StartStandIn(testkit.StandInOptions{CountOnly: true})
	if err != nil {
		return nil, err
	}
	return &stub{StandIn: s}, nil
}

// addr is the stub's host:port.
func (s *stub) addr() string { return s.Listener.Addr().String() }

// reset releases any held calls, sets the per-call delay and zeroes the
// counters.
func (s *stub) reset(delay time.Duration) {
	s.release()
	s.SetDelay(delay)
	s.ResetCounts()
}

// holdCalls makes every call wait until release (or until its caller
// hangs up), however long that takes.
func (s *stub) holdCalls() {
	held := make(chan struct{})
	s.held = held
	s.Respond(func(w http.ResponseWriter, r *http.Request, c *testkit.Call) {
		select {
		case <-held:
			testkit.WriteJSON(w, http.StatusOK, testkit.Envelope(c, "applied"))
		case <-r.Context().Done():
		}
	})
}

// release answers the held calls, and the later ones at once (after the
// delay).
func (s *stub) release() {
	if s.held != nil {
		close(s.held)
		s.held = nil
		s.Respond(nil)
	}
}

// waitQuiet waits until the call count has not moved and no call has been
// in flight for quiet (and at least one call was made), or until limit
// passes, and returns the calls received.
func (s *stub) waitQuiet(quiet, limit time.Duration) int64 {
	deadline := time.Now().Add(limit)
	last, since := s.Counts().Received, time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		c := s.Counts()
		if c.Received != last || c.InFlight > 0 {
			last, since = c.Received, time.Now()
			continue
		}
		if c.Received > 0 && time.Since(since) >= quiet {
			break
		}
	}
	return s.Counts().Received
}

// waitDone waits until n calls have been answered with the envelope since
// the last reset, or until limit passes, and reports whether they were.
func (s *stub) waitDone(n int64, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for s.Counts().Synced < n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}
