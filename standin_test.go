package receivebooking

// The import-bookings stand-in of the guarantee tests: a real loopback HTTP
// server that behaves as the real function does where it matters here. A
// call takes its time and, like an Edge Function, goes on to its end when
// its caller hangs up; it counts the calls in flight per booking (the
// property "one sync per booking at a time" is probed here, at the far
// end, not in the module's own bookkeeping) and in total.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"
)

// standInCall is one call import-bookings received.
type standInCall struct {
	booking   string
	requestID string
	header    http.Header
	body      string
	start     time.Time
	end       time.Time
	status    int
}

type standIn struct {
	*httptest.Server
	// delay is how long each call works (nanoseconds).
	delay atomic.Int64
	// answer chooses each call's status and body; nil: 200 and the
	// success envelope.
	answer atomic.Pointer[func(c *standInCall) (int, string)]

	mu            sync.Mutex
	calls         []*standInCall
	inFlight      map[string]int
	maxPerBooking int
	total         int
	maxTotal      int
}

func newStandIn(t testing.TB, delay time.Duration) *standIn {
	t.Helper()
	s := &standIn{inFlight: map[string]int{}}
	s.delay.Store(int64(delay))
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *standIn) serve(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(r.Body)
	var req struct {
		BookingID json.RawMessage `json:"booking_id"`
	}
	_ = json.Unmarshal(raw, &req)
	var booking string
	if json.Unmarshal(req.BookingID, &booking) != nil {
		booking = string(req.BookingID)
	}
	c := &standInCall{booking: booking, requestID: r.Header.Get(upstream.HeaderRequestID), header: r.Header.Clone(),
		body: string(raw), start: time.Now()}
	s.mu.Lock()
	s.calls = append(s.calls, c)
	s.inFlight[booking]++
	s.total++
	s.maxPerBooking = max(s.maxPerBooking, s.inFlight[booking])
	s.maxTotal = max(s.maxTotal, s.total)
	s.mu.Unlock()
	// The work goes on whether or not the caller still waits.
	time.Sleep(time.Duration(s.delay.Load()))
	status, body := http.StatusOK, appliedEnvelope(c)
	if f := s.answer.Load(); f != nil {
		status, body = (*f)(c)
	}
	s.mu.Lock()
	s.inFlight[booking]--
	s.total--
	c.end, c.status = time.Now(), status
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// setAnswer makes every later call answer with f.
func (s *standIn) setAnswer(f func(c *standInCall) (int, string)) { s.answer.Store(&f) }

// snapshot returns the calls so far (copies) and the maxima seen.
func (s *standIn) snapshot() (calls []standInCall, maxPerBooking, maxTotal int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.calls {
		calls = append(calls, *c)
	}
	return calls, s.maxPerBooking, s.maxTotal
}

// syncedAfter reports whether booking has a call that started after t and
// ended with a 2xx.
func (s *standIn) syncedAfter(booking string, t time.Time) bool {
	calls, _, _ := s.snapshot()
	for _, c := range calls {
		if c.booking == booking && c.start.After(t) && c.status/100 == 2 {
			return true
		}
	}
	return false
}

// callsFor counts the calls for a booking.
func (s *standIn) callsFor(booking string) int {
	calls, _, _ := s.snapshot()
	n := 0
	for _, c := range calls {
		if c.booking == booking {
			n++
		}
	}
	return n
}

// appliedEnvelope is import-bookings' answer to the call: synced, with the
// ids echoed.
func appliedEnvelope(c *standInCall) string {
	var req struct {
		BookingID      json.RawMessage `json:"booking_id"`
		OrganizationID json.RawMessage `json:"organization_id"`
	}
	_ = json.Unmarshal([]byte(c.body), &req)
	org := req.OrganizationID
	if org == nil {
		org = json.RawMessage("null")
	}
	return fmt.Sprintf(`{"success":true,"queued":false,"completed":true,"sync_mode":"single","booking_id":%s,"organization_id":%s,"outcome":"applied"}`,
		req.BookingID, org)
}
