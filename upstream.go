package receivebooking

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
)

const (
	// maxUpstreamBody bounds how much of an import-bookings answer is read.
	maxUpstreamBody = 1 << 20
	// maxDetailsText is how much of a non-JSON answer is passed on.
	maxDetailsText = 2 << 10

	headerRequestID = "X-Request-Id"

	// maxRetryAfterSeconds bounds a Retry-After header: a week.
	maxRetryAfterSeconds = 7 * 24 * 3600
)

// upstream calls import-bookings. One per handler, so that connections are
// reused across webhooks.
type upstream struct {
	target    string
	targetKey string
	client    *http.Client
	metrics   *metrics
}

func newUpstream(target *url.URL, key string, m *metrics) *upstream {
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
	return &upstream{
		target:    target.String(),
		targetKey: key,
		// No client timeout: every call carries a context deadline, which
		// is the one the sender or the worker can afford.
		client:  &http.Client{Transport: transport},
		metrics: m,
	}
}

// sameTarget reports whether o calls the same URL with the same key.
func (u *upstream) sameTarget(o *upstream) bool {
	return u.target == o.target && u.targetKey == o.targetKey
}

// syncRequest is the body import-bookings expects for a single-booking sync.
type syncRequest struct {
	BookingID      json.RawMessage `json:"booking_id"`
	SyncMode       string          `json:"syncMode"`
	OrganizationID json.RawMessage `json:"organization_id,omitempty"`
	EventType      string          `json:"event_type,omitempty"`
}

// syncResult is what one call to import-bookings came to.
type syncResult struct {
	// status is the upstream HTTP status; 0 when no answer arrived.
	status int
	// body is the upstream answer when it is JSON.
	body json.RawMessage
	// text is the start of a non-JSON answer.
	text string
	// err is the transport failure, scrubbed of URLs and keys.
	err error
	// timedOut is set when the deadline passed before an answer.
	timedOut bool
	// retryAfter is the upstream's Retry-After, if any.
	retryAfter time.Duration
	duration   time.Duration
}

// ok reports a successful sync: a 2xx JSON answer that does not say
// "success": false.
func (r *syncResult) ok() bool {
	return r.err == nil && r.status >= 200 && r.status < 300 && r.body != nil && !saysFailure(r.body)
}

// permanent reports an upstream rejection that no retry will fix: a 4xx
// other than 408 and 429.
func (r *syncResult) permanent() bool {
	return r.err == nil && r.status >= 400 && r.status < 500 &&
		r.status != http.StatusRequestTimeout && r.status != http.StatusTooManyRequests
}

// details is what an answer or a job error says about the failure.
func (r *syncResult) details() any {
	switch {
	case r.err != nil:
		return r.err.Error()
	case r.body != nil:
		return r.body
	default:
		return r.text
	}
}

// describe is a one-line account of a failed sync, for logs and job errors.
func (r *syncResult) describe() string {
	switch {
	case r.timedOut:
		return "upstream timed out"
	case r.err != nil:
		return "upstream unreachable: " + r.err.Error()
	case r.status >= 200 && r.status < 300 && r.body == nil:
		return fmt.Sprintf("upstream status %d with a non-JSON body", r.status)
	case r.status >= 200 && r.status < 300:
		return fmt.Sprintf("upstream status %d reporting \"success\": false", r.status)
	default:
		return fmt.Sprintf("upstream status %d", r.status)
	}
}

func saysFailure(body json.RawMessage) bool {
	var env struct {
		Success *bool `json:"success"`
	}
	if json.Unmarshal(body, &env) != nil {
		return false // valid JSON, but not an object: nothing says it failed
	}
	return env.Success != nil && !*env.Success
}

// sync asks import-bookings to sync one booking. It never returns an error:
// every outcome is described by the result.
func (u *upstream) sync(ctx context.Context, req syncRequest, requestID string) *syncResult {
	start := time.Now()
	res := u.do(ctx, req, requestID)
	res.duration = time.Since(start)
	u.metrics.observeUpstream(res)
	return res
}

func (u *upstream) do(ctx context.Context, sr syncRequest, requestID string) *syncResult {
	sr.SyncMode = "single"
	payload, err := marshalJSON(sr)
	if err != nil {
		return &syncResult{err: errors.New("encoding sync request")}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.target, bytes.NewReader(payload))
	if err != nil {
		return &syncResult{err: errors.New("building sync request")}
	}
	u.setHeaders(req.Header, requestID)
	resp, err := u.client.Do(req)
	if err != nil {
		return &syncResult{err: scrubError(err), timedOut: errors.Is(err, context.DeadlineExceeded)}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamBody+1))
	res := &syncResult{status: resp.StatusCode, retryAfter: parseRetryAfter(resp.Header.Get("Retry-After"))}
	if err != nil {
		res.err = scrubError(err)
		res.timedOut = errors.Is(err, context.DeadlineExceeded)
		return res
	}
	if len(raw) <= maxUpstreamBody && json.Valid(raw) {
		res.body = raw
	} else {
		res.text = truncateText(raw, maxDetailsText)
	}
	// Drain a little so the connection can be reused.
	_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	return res
}

// marshalJSON encodes v without Go's HTML escaping, so that JSON passed
// through (the booking_id literal, the upstream's answer) keeps every byte
// as received: "&" stays "&", not "\u0026".
func marshalJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func (u *upstream) setHeaders(h http.Header, requestID string) {
	h.Set("Content-Type", "application/json")
	h.Set("Accept", "application/json")
	h.Set("User-Agent", "caddy-receive-booking/"+version)
	if u.targetKey != "" {
		h.Set("Authorization", "Bearer "+u.targetKey)
		h.Set("Apikey", u.targetKey)
	}
	if requestID != "" {
		h.Set(headerRequestID, requestID)
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

// truncateText cuts b to at most n bytes of valid UTF-8: invalid bytes are
// replaced first (U+FFFD is 3 bytes), then the text is cut on a rune
// boundary.
func truncateText(b []byte, n int) string {
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
