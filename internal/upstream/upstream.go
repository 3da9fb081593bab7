// Package upstream calls import-bookings: one single-booking sync per
// call, with the service-role key sent to the target only, a bounded
// answer read, and every outcome described by a Result (no error escapes).
package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"github.com/bookingwebhook/caddy-receive-booking/internal/tracing"
)

const (
	// maxUpstreamBody bounds how much of an import-bookings answer is read.
	maxUpstreamBody = 1 << 20
	// MaxDetailsText is how much of a non-JSON answer is passed on.
	MaxDetailsText = 2 << 10

	HeaderRequestID = "X-Request-Id"

	// maxRetryAfterSeconds bounds a Retry-After header: a week.
	maxRetryAfterSeconds = 7 * 24 * 3600
)

// Client calls import-bookings. One per handler, so that connections are
// reused across webhooks.
type Client struct {
	target    string
	targetKey string
	userAgent string
	client    *http.Client
	observe   func(*Result)
	contract  *Contract
}

// New returns a client of the target that sends key (as "Authorization:
// Bearer" and "apikey") and userAgent; observe, if set, sees every result.
func New(target *url.URL, key, userAgent string, observe func(*Result)) *Client {
	transport := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &Client{
		target:    target.String(),
		targetKey: key,
		// No client timeout: every call carries a context deadline, which
		// is the one the sender or the worker can afford.
		// Never follow a redirect: Go's client would send the POST, and
		// the apikey header with it, to whatever host the target names;
		// a 3xx is a final failure instead.
		client: &http.Client{Transport: transport, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}},
		observe:   observe,
		userAgent: userAgent,
	}
}

// SetContract sets how answers are judged (default: DefaultOutcomes).
func (u *Client) SetContract(c *Contract) { u.contract = c }

// SameTarget reports whether o calls the same URL with the same key.
func (u *Client) SameTarget(o *Client) bool {
	return u.target == o.target && u.targetKey == o.targetKey
}

// Request is the body import-bookings expects for a single-booking sync.
type Request struct {
	BookingID      json.RawMessage `json:"booking_id"`
	SyncMode       string          `json:"syncMode"`
	OrganizationID json.RawMessage `json:"organization_id,omitempty"`
	EventType      string          `json:"event_type,omitempty"`
	// Trace is sent as the traceparent and tracestate headers.
	Trace tracing.Context `json:"-"`
}

// Result is what one call to import-bookings came to.
type Result struct {
	// Status is the upstream HTTP status; 0 when no answer arrived.
	Status int
	// Body is the upstream answer when it is JSON.
	Body json.RawMessage
	// Text is the start of a non-JSON answer.
	Text string
	// Err is the transport failure, scrubbed of URLs and keys.
	Err error
	// TimedOut is set when the deadline passed before an answer.
	TimedOut bool
	// RetryAfter is the upstream's Retry-After, if any.
	RetryAfter time.Duration
	// Duration is how long the call took.
	Duration time.Duration

	// Verdict is what the answer means by import-bookings' contract;
	// Outcome is its "outcome", if it gave one; Reason says why a sync
	// that did not happen is retried or final.
	Verdict Verdict
	Outcome string
	Reason  string
	// OutcomeMisleads: Outcome names a success (applied) although the
	// answer is not a sync (it broke the contract).
	OutcomeMisleads bool
}

// OK reports a synced booking.
func (r *Result) OK() bool { return r.Verdict == Synced }

// Permanent reports a failure no retry will fix.
func (r *Result) Permanent() bool { return r.Verdict == Final }

// details is what an answer or a job error says about the failure.
func (r *Result) Details() any {
	switch {
	case r.Err != nil:
		return r.Err.Error()
	case r.Body != nil:
		return r.Body
	default:
		return r.Text
	}
}

// Describe is a one-line account of a failed sync, for logs and job errors.
func (r *Result) Describe() string {
	switch {
	case r.TimedOut:
		return "upstream timed out"
	case r.Err != nil:
		return "upstream unreachable: " + r.Err.Error()
	case r.Reason != "":
		return fmt.Sprintf("upstream status %d: %s", r.Status, r.Reason)
	default:
		return fmt.Sprintf("upstream status %d", r.Status)
	}
}

// sync asks import-bookings to sync one booking. It never returns an error:
// every outcome is described by the result.
func (u *Client) Sync(ctx context.Context, req Request, requestID string) *Result {
	start := time.Now()
	res, location := u.do(ctx, req, requestID)
	res.Duration = time.Since(start)
	u.contract.judge(req, res, location)
	if u.observe != nil {
		u.observe(res)
	}
	return res
}

// do makes the call; it returns the Location of a redirect too.
func (u *Client) do(ctx context.Context, sr Request, requestID string) (*Result, string) {
	sr.SyncMode = "single"
	body, err := payload.MarshalJSON(sr)
	if err != nil {
		return &Result{Err: errors.New("encoding sync request")}, ""
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.target, bytes.NewReader(body))
	if err != nil {
		return &Result{Err: errors.New("building sync request")}, ""
	}
	u.setHeaders(req.Header, requestID)
	sr.Trace.SetHeader(req.Header)
	resp, err := u.client.Do(req)
	if err != nil {
		return &Result{Err: scrubError(err), TimedOut: errors.Is(err, context.DeadlineExceeded)}, ""
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamBody+1))
	res := &Result{Status: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"))}
	if err != nil {
		res.Err = scrubError(err)
		res.TimedOut = errors.Is(err, context.DeadlineExceeded)
		return res, ""
	}
	if len(raw) <= maxUpstreamBody && json.Valid(raw) {
		res.Body = raw
	} else {
		res.Text = TruncateText(raw, MaxDetailsText)
	}
	// Drain a little so the connection can be reused.
	_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	return res, resp.Header.Get("Location")
}

func (u *Client) setHeaders(h http.Header, requestID string) {
	h.Set("Content-Type", "application/json")
	h.Set("Accept", "application/json")
	h.Set("User-Agent", u.userAgent)
	if u.targetKey != "" {
		h.Set("Authorization", "Bearer "+u.targetKey)
		h.Set("Apikey", u.targetKey)
	}
	if requestID != "" {
		h.Set(HeaderRequestID, requestID)
	}
}

// scrubError keeps the cause of a transport failure and drops the URL the
// net/http client wraps it with: the target may carry a key in its query.
func scrubError(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return errors.New("timed out")
	case errors.Is(err, context.Canceled):
		return errors.New("canceled")
	}
	return errors.New(err.Error())
}

// TruncateText cuts b to at most n bytes of valid UTF-8: invalid bytes are
// replaced first (U+FFFD is 3 bytes), then the text is cut on a rune
// boundary.
func TruncateText(b []byte, n int) string {
	s := strings.ToValidUTF8(string(b[:min(len(b), 4*n)]), "\uFFFD")
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// parseRetryAfter reads a Retry-After header in seconds or as an HTTP date.
// Absurd values are capped by the caller's retry policy.
func parseRetryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil && secs > 0 {
		// Bounded before multiplying, so a huge value cannot wrap around
		// into a short wait; the retry policy caps it further.
		return time.Duration(min(secs, maxRetryAfterSeconds)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}

// CloseIdleConnections closes the client's idle keep-alive connections.
func (u *Client) CloseIdleConnections() { u.client.CloseIdleConnections() }
