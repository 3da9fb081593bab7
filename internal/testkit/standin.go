// Package testkit holds the test helpers every package's tests share: one
// import-bookings stand-in, one throwaway PostgreSQL database per test, one
// way to build the Caddy binary. It is imported only by tests.
package testkit

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Path is the stand-in's import-bookings path.
const Path = "/functions/v1/import-bookings"

// Call is one request the stand-in received.
type Call struct {
	Method, Path, RawQuery, RemoteAddr string
	Header                             http.Header
	Body                               string
	// Booking is the request's booking_id as text ("42" for 42).
	Booking   string
	RequestID string
	Start     time.Time
	End       time.Time
	// Status is what it answered, 0 when its Responder wrote nothing (as
	// Hold and BlockUntil do when the caller hangs up); Cancelled that the
	// caller had hung up by the time the answer was written.
	Status    int
	Cancelled bool
	// Synced: the answer was import-bookings' success envelope (outcome
	// applied or already_current); a 2xx is not by itself a sync.
	Synced bool
}

// isSuccessEnvelope reports whether an answer is the success envelope.
func isSuccessEnvelope(body []byte) bool {
	var env struct {
		Success   bool   `json:"success"`
		Completed bool   `json:"completed"`
		Outcome   string `json:"outcome"`
	}
	return json.Unmarshal(body, &env) == nil && env.Success && env.Completed &&
		(env.Outcome == "applied" || env.Outcome == "already_current")
}

// Responder answers one call. It may block (it holds the call in flight)
// and should return when r's context ends if it models a caller-bound
// call.
type Responder func(w http.ResponseWriter, r *http.Request, c *Call)

// StandIn is import-bookings on a real loopback HTTP server. Like the real
// Edge Function it works for Delay on every call and goes on to its end
// when its caller hangs up (a Responder may choose otherwise); it records
// every call and counts the calls in flight, per booking and in total, so
// that "one sync per booking at a time" is probed at the far end.
type StandIn struct {
	*httptest.Server
	delay   atomic.Int64
	respond atomic.Pointer[Responder]

	// Arrived receives each call when it has been recorded; Cancelled each
	// call whose caller had gone when it was answered. Each buffers 4096
	// calls; a call that finds it full is not sent, so that the stand-in
	// never blocks on a test that does not read them.
	Arrived   chan *Call
	Cancelled chan *Call

	mu            sync.Mutex
	calls         []*Call
	inFlight      map[string]int
	total         int
	maxPerBooking int
	maxTotal      int
}

// NewStandIn starts a stand-in that answers the success envelope.
func NewStandIn(t testing.TB) *StandIn {
	t.Helper()
	s := &StandIn{inFlight: map[string]int{}, Arrived: make(chan *Call, 4096), Cancelled: make(chan *Call, 4096)}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

// Target is the stand-in's import-bookings URL.
func (s *StandIn) Target() string { return s.URL + Path }

// SetDelay makes every later call work for d before it answers.
func (s *StandIn) SetDelay(d time.Duration) { s.delay.Store(int64(d)) }

// Respond makes every later call answer with f; nil restores the success
// envelope.
func (s *StandIn) Respond(f Responder) {
	if f == nil {
		s.respond.Store(nil)
		return
	}
	s.respond.Store(&f)
}

// Answer makes every later call answer with the status and body f chooses.
func (s *StandIn) Answer(f func(c *Call) (int, string)) {
	s.Respond(func(w http.ResponseWriter, _ *http.Request, c *Call) {
		status, body := f(c)
		writeJSON(w, status, body)
	})
}

func (s *StandIn) serve(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(r.Body)
	c := &Call{Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, RemoteAddr: r.RemoteAddr,
		Header: r.Header.Clone(), Body: string(raw), Booking: bookingOf(raw), RequestID: r.Header.Get("X-Request-Id"),
		Start: time.Now()}
	s.mu.Lock()
	s.calls = append(s.calls, c)
	s.inFlight[c.Booking]++
	s.total++
	s.maxPerBooking = max(s.maxPerBooking, s.inFlight[c.Booking])
	s.maxTotal = max(s.maxTotal, s.total)
	s.mu.Unlock()
	send(s.Arrived, c)
	if d := time.Duration(s.delay.Load()); d > 0 {
		time.Sleep(d) // the work goes on whether or not the caller waits
	}
	rec := &statusRecorder{ResponseWriter: w}
	if f := s.respond.Load(); f != nil {
		(*f)(rec, r, c)
	} else {
		writeJSON(rec, http.StatusOK, Envelope(c, "applied"))
	}
	gone := r.Context().Err() != nil
	s.mu.Lock()
	s.inFlight[c.Booking]--
	s.total--
	c.End, c.Status, c.Cancelled = time.Now(), rec.status, gone
	c.Synced = rec.status/100 == 2 && isSuccessEnvelope(rec.body)
	s.mu.Unlock()
	if gone {
		send(s.Cancelled, c)
	}
}

// send delivers c unless ch is full.
func send(ch chan *Call, c *Call) {
	select {
	case ch <- c:
	default:
	}
}

// Envelope is import-bookings' answer for a call with the given outcome.
func Envelope(c *Call, outcome string) string {
	var req struct {
		BookingID      json.RawMessage `json:"booking_id"`
		OrganizationID json.RawMessage `json:"organization_id"`
	}
	_ = json.Unmarshal([]byte(c.Body), &req)
	org := req.OrganizationID
	if org == nil {
		org = json.RawMessage(`null`)
	}
	ok := outcome == "applied" || outcome == "already_current"
	return fmt.Sprintf(`{"success":%t,"queued":false,"completed":%t,"sync_mode":"single","booking_id":%s,"organization_id":%s,"outcome":%q}`,
		ok, ok, req.BookingID, org, outcome)
}

func bookingOf(body []byte) string {
	var req struct {
		BookingID json.RawMessage `json:"booking_id"`
	}
	_ = json.Unmarshal(body, &req)
	var s string
	if json.Unmarshal(req.BookingID, &s) == nil {
		return s
	}
	return string(req.BookingID)
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	// body keeps the start of the answer, to tell a sync from a failure.
	body []byte
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	if room := 4096 - len(r.body); room > 0 {
		r.body = append(r.body, b[:min(room, len(b))]...)
	}
	return r.ResponseWriter.Write(b)
}

// Flush lets a Responder send what it has written so far.
func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		if r.status == 0 {
			r.status = http.StatusOK
		}
		f.Flush()
	}
}

// JSON answers with a fixed status and JSON body.
func JSON(status int, body string) Responder {
	return Typed(status, "application/json", body)
}

// Typed answers with a fixed status, content type and body.
func Typed(status int, contentType, body string) Responder {
	return func(w http.ResponseWriter, _ *http.Request, _ *Call) {
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// BlockUntil holds each call until release is closed (then answers the
// success envelope), the caller hangs up, or a safety limit passes, so that
// a broken test never hangs.
func BlockUntil(release <-chan struct{}) Responder {
	return func(w http.ResponseWriter, r *http.Request, c *Call) {
		select {
		case <-release:
			writeJSON(w, http.StatusOK, Envelope(c, "applied"))
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}
}

// Hold holds each call for d, as a call bound to its caller: if the caller
// hangs up first, the call ends there unanswered (Status 0: no sync);
// otherwise it answers with then (nil: the success envelope).
func Hold(d time.Duration, then Responder) Responder {
	return func(w http.ResponseWriter, r *http.Request, c *Call) {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
		if then == nil {
			writeJSON(w, http.StatusOK, Envelope(c, "applied"))
			return
		}
		then(w, r, c)
	}
}

// Calls returns copies of the calls received so far.
func (s *StandIn) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Call, len(s.calls))
	for i, c := range s.calls {
		out[i] = *c
	}
	return out
}

// CallsFor returns the calls for one booking.
func (s *StandIn) CallsFor(booking string) []Call {
	var out []Call
	for _, c := range s.Calls() {
		if c.Booking == booking {
			out = append(out, c)
		}
	}
	return out
}

// MaxInFlight returns the most calls seen in flight at once for one
// booking, and for all bookings together.
func (s *StandIn) MaxInFlight() (perBooking, total int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxPerBooking, s.maxTotal
}

// SyncedAfter reports whether booking has a call that started after t and
// was answered with the success envelope.
func (s *StandIn) SyncedAfter(booking string, t time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.calls {
		if c.Booking == booking && c.Start.After(t) && c.Synced && !c.End.IsZero() {
			return true
		}
	}
	return false
}

// WaitFor receives one value from ch or fails the test after d.
func WaitFor[T any](t testing.TB, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("timed out after %v waiting for %s", d, what)
		var zero T
		return zero
	}
}

// ClosedPortURL is an http URL on loopback where nothing listens.
func ClosedPortURL(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return "http://" + addr
}

// WriteJSON answers with a status and a JSON body.
func WriteJSON(w http.ResponseWriter, status int, body string) { writeJSON(w, status, body) }
