// Package testkit holds the helpers every package's tests share, and the
// bench with them: one import-bookings stand-in, one throwaway PostgreSQL
// database per test, one way to build the Caddy binary (at the versions
// the Makefile pins). It is imported only by tests and by the bench.
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

	"github.com/bookingwebhook/caddy-receive-booking/internal/jsonobj"
)

// Path is the stand-in's import-bookings path.
const Path = "/functions/v1/import-bookings"

// Call is one request the stand-in received.
type Call struct {
	Method, Path, RawQuery, RemoteAddr string
	// Header is the request's header (a copy, for a recorded call).
	Header http.Header
	Body   string
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

	// bookingID and organizationID are the body's, as sent, for Envelope.
	bookingID, organizationID json.RawMessage
}

// isSuccessEnvelope reports whether an answer is the success envelope,
// read key for key as import-bookings' callers read it (a key given twice
// is no envelope).
func isSuccessEnvelope(body []byte) bool {
	var success, completed bool
	var outcome string
	err := jsonobj.Members(body, func(key string, value []byte) {
		switch key {
		case "success":
			success = string(value) == "true"
		case "completed":
			completed = string(value) == "true"
		case "outcome":
			_ = json.Unmarshal(value, &outcome)
		}
	})
	return err == nil && success && completed && (outcome == "applied" || outcome == "already_current")
}

// Responder answers one call. It may block (it holds the call in flight)
// and should return when r's context ends if it models a caller-bound
// call.
type Responder func(w http.ResponseWriter, r *http.Request, c *Call)

// StandIn is import-bookings on a real loopback HTTP server, for the tests
// and the bench alike. Like the real Edge Function it works for Delay on
// every call and goes on to its end when its caller hangs up (a Responder
// may choose otherwise); it records every call (unless CountOnly) and
// counts the calls in flight, per booking and in total, so that "one sync
// per booking at a time" is probed at the far end.
type StandIn struct {
	*httptest.Server
	countOnly bool
	delay     atomic.Int64
	respond   atomic.Pointer[Responder]

	// Arrived receives each call when it has been recorded; Cancelled each
	// call whose caller had gone when it was answered. Each buffers 4096
	// calls; a call that finds it full is not sent, so that the stand-in
	// never blocks on a test that does not read them. Both are nil with
	// CountOnly.
	Arrived   chan *Call
	Cancelled chan *Call

	mu       sync.Mutex
	calls    []*Call
	inFlight map[string]int64 // calls in flight per booking; no entry for none
	counts   Counts
}

// StandInOptions configure StartStandIn.
type StandInOptions struct {
	// CountOnly keeps the counters (Counts, MaxInFlight) and no call:
	// Calls, CallsFor and SyncedAfter find none, Arrived and Cancelled are
	// nil, and a Responder's Call carries the request's own Header. For a
	// load (the bench), whose millions of calls would cost memory and
	// time. Default: every call recorded.
	CountOnly bool
}

// Counts are what the stand-in has counted since it started or since
// ResetCounts.
type Counts struct {
	// Received is the calls that arrived; Synced those answered with the
	// success envelope.
	Received, Synced int64
	// InFlight is the calls in flight now.
	InFlight int64
	// MaxPerBooking and MaxInFlight are the most calls seen in flight at
	// once for one booking, and for all bookings together.
	MaxPerBooking, MaxInFlight int64
}

// NewStandIn starts a stand-in that answers the success envelope and
// records every call; it is closed when the test ends.
func NewStandIn(t testing.TB) *StandIn {
	t.Helper()
	s, err := StartStandIn(StandInOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// StartStandIn starts a stand-in that answers the success envelope, on a
// loopback port of its own; the caller closes it.
func StartStandIn(opts StandInOptions) (*StandIn, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("stand-in: %w", err)
	}
	s := &StandIn{countOnly: opts.CountOnly, inFlight: map[string]int64{}}
	if !opts.CountOnly {
		s.Arrived, s.Cancelled = make(chan *Call, 4096), make(chan *Call, 4096)
	}
	s.Server = &httptest.Server{Listener: ln, Config: &http.Server{
		Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 10 * time.Second}}
	s.Start()
	return s, nil
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
	c := s.arrive(r)
	if d := time.Duration(s.delay.Load()); d > 0 {
		time.Sleep(d) // the work goes on whether or not the caller waits
	}
	rec := &statusRecorder{ResponseWriter: w}
	var synced bool
	if f := s.respond.Load(); f != nil {
		(*f)(rec, r, c)
		synced = rec.status/100 == 2 && isSuccessEnvelope(rec.body)
	} else {
		// The stand-in's own envelope: a sync without parsing it back, so
		// that a load pays for one JSON decoding per call.
		writeJSON(rec, http.StatusOK, Envelope(c, "applied"))
		synced = true
	}
	s.leave(c, rec.status, synced, r.Context().Err() != nil)
}

// arrive reads a call, records it (unless CountOnly) and counts it in
// flight.
func (s *StandIn) arrive(r *http.Request) *Call {
	raw, _ := io.ReadAll(r.Body)
	c := &Call{Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, RemoteAddr: r.RemoteAddr,
		Header: r.Header, Body: string(raw), RequestID: r.Header.Get("X-Request-Id"), Start: time.Now()}
	c.bookingID, c.organizationID = idsOf(raw)
	c.Booking = bookingText(c.bookingID)
	if !s.countOnly {
		c.Header = r.Header.Clone()
	}
	s.mu.Lock()
	if !s.countOnly {
		s.calls = append(s.calls, c)
	}
	s.counts.Received++
	s.counts.InFlight++
	s.inFlight[c.Booking]++
	s.counts.MaxPerBooking = max(s.counts.MaxPerBooking, s.inFlight[c.Booking])
	s.counts.MaxInFlight = max(s.counts.MaxInFlight, s.counts.InFlight)
	s.mu.Unlock()
	send(s.Arrived, c)
	return c
}

// leave ends a call: what it answered, and one call fewer in flight.
func (s *StandIn) leave(c *Call, status int, synced, gone bool) {
	s.mu.Lock()
	if s.inFlight[c.Booking]--; s.inFlight[c.Booking] <= 0 {
		delete(s.inFlight, c.Booking)
	}
	s.counts.InFlight--
	if synced {
		s.counts.Synced++
	}
	c.End, c.Status, c.Cancelled, c.Synced = time.Now(), status, gone, synced
	s.mu.Unlock()
	if gone {
		send(s.Cancelled, c)
	}
}

// Counts returns the counters.
func (s *StandIn) Counts() Counts {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts
}

// ResetCounts zeroes Received and Synced, and brings the maxima down to
// what is in flight now (a held call still counts); recorded calls stay.
func (s *StandIn) ResetCounts() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts = Counts{InFlight: s.counts.InFlight, MaxInFlight: s.counts.InFlight}
	for _, n := range s.inFlight {
		s.counts.MaxPerBooking = max(s.counts.MaxPerBooking, n)
	}
}

// send delivers c unless ch is full.
func send(ch chan *Call, c *Call) {
	select {
	case ch <- c:
	default:
	}
}

// Envelope is import-bookings' answer for a call with the given outcome:
// booking_id and organization_id echoed as sent (null when missing).
func Envelope(c *Call, outcome string) string {
	booking, org := c.bookingID, c.organizationID
	if booking == nil && org == nil {
		booking, org = idsOf([]byte(c.Body)) // a Call a test made
	}
	ok := outcome == "applied" || outcome == "already_current"
	return fmt.Sprintf(`{"success":%t,"queued":false,"completed":%t,"sync_mode":"single","booking_id":%s,"organization_id":%s,"outcome":%q}`,
		ok, ok, orNull(booking), orNull(org), outcome)
}

// idsOf returns a body's booking_id and organization_id as sent.
func idsOf(body []byte) (booking, org json.RawMessage) {
	var req struct {
		BookingID      json.RawMessage `json:"booking_id"`
		OrganizationID json.RawMessage `json:"organization_id"`
	}
	_ = json.Unmarshal(body, &req)
	return req.BookingID, req.OrganizationID
}

func orNull(v json.RawMessage) json.RawMessage {
	if v == nil {
		return json.RawMessage(`null`)
	}
	return v
}

// bookingText is a booking_id as text: "42" and 42 name the same booking.
func bookingText(id json.RawMessage) string {
	var s string
	if json.Unmarshal(id, &s) == nil {
		return s
	}
	return string(id)
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
	c := s.Counts()
	return int(c.MaxPerBooking), int(c.MaxInFlight)
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
