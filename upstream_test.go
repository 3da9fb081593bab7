package receivebooking

import (
	"context"
	"errors"
	"fmt"
	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTruncateText(t *testing.T) {
	cases := []struct {
		name string
		in   string
		n    int
		want string
	}{
		{"short", "hello", 10, "hello"},
		{"exact", "hello", 5, "hello"},
		{"cut ASCII", "hello world", 5, "hello"},
		{"empty", "", 5, ""},
		{"cut before 2-byte rune", "abcé", 4, "abc"}, // é is 2 bytes at 3..4
		{"2-byte rune fits", "abcé", 5, "abcé"},
		{"cut inside 3-byte rune", "ab✓cd", 3, "ab"}, // ✓ is 3 bytes at 2..4
		{"cut inside 3-byte rune, 2nd byte", "ab✓cd", 4, "ab"},
		{"3-byte rune fits", "ab✓cd", 5, "ab✓"},
		{"cut inside 4-byte rune", "a😀b", 2, "a"}, // 😀 is 4 bytes at 1..4
		{"cut inside 4-byte rune, 3rd byte", "a😀b", 4, "a"},
		{"4-byte rune fits", "a😀b", 5, "a😀"},
		{"zero", "abc", 0, ""},
		{"invalid UTF-8 replaced", "a\xffb", 10, "a\uFFFDb"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := truncateText([]byte(tc.in), tc.n)
			assert.Equal(t, tc.want, got)
			assert.True(t, utf8.ValidString(got))
		})
	}

	// Every cut of a multi-byte text is valid UTF-8, at most n bytes, a
	// prefix of the input, and loses at most the one rune that straddles n.
	text := strings.Repeat("aé✓😀", 600)
	for n := 0; n <= 2100; n++ {
		got := truncateText([]byte(text), n)
		require.LessOrEqual(t, len(got), n)
		require.True(t, strings.HasPrefix(text, got), "n=%d", n)
		require.GreaterOrEqual(t, len(got), n-3, "n=%d", n)
		require.True(t, utf8.ValidString(got))
	}
}

// TestTruncateTextInvalidUTF8Bound: the answer's details text is "cut to
// 2 KiB" whatever the upstream sent. Replacing invalid bytes with U+FFFD
// (3 bytes) after the cut can make the text longer than n.
func TestTruncateTextInvalidUTF8Bound(t *testing.T) {
	for _, in := range []string{strings.Repeat("\xffa", 1000), strings.Repeat("\xffa", 3000), strings.Repeat("\xc3(", 3000)} {
		assert.LessOrEqual(t, len(truncateText([]byte(in), maxDetailsText)), maxDetailsText)
	}
}

func TestParseRetryAfter(t *testing.T) {
	assert.Equal(t, time.Duration(0), parseRetryAfter(""))
	assert.Equal(t, 5*time.Second, parseRetryAfter("5"))
	assert.Equal(t, 120*time.Second, parseRetryAfter("120"))
	assert.Equal(t, time.Duration(0), parseRetryAfter("0"))
	assert.Equal(t, time.Duration(0), parseRetryAfter("-5"))
	for _, junk := range []string{"soon", "5s", "1.5", " 5", "5 ", "0x10", "Mon, 32 Foo 2024", "99999999999999999999"} {
		assert.Equal(t, time.Duration(0), parseRetryAfter(junk), "%q", junk)
	}

	future := time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)
	d := parseRetryAfter(future)
	assert.Greater(t, d, 85*time.Second, future)
	assert.LessOrEqual(t, d, 90*time.Second, future)
	rfc850 := time.Now().Add(time.Hour).UTC().Format("Monday, 02-Jan-06 15:04:05 GMT")
	assert.Greater(t, parseRetryAfter(rfc850), 59*time.Minute)
	past := time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat)
	assert.Equal(t, time.Duration(0), parseRetryAfter(past), "a date in the past means now")
}

// TestParseRetryAfterHugeSeconds: a huge number of seconds must not wrap
// around into a short (or negative) wait.
func TestParseRetryAfterHugeSeconds(t *testing.T) {
	for _, v := range []string{"10000000000", "18446744074"} {
		d := parseRetryAfter(v)
		assert.True(t, d == 0 || d > 24*time.Hour, "%q gave %v", v, d)
	}
}

func TestScrubError(t *testing.T) {
	target := "https://proj.supabase.co/functions/v1/import-bookings?key=SECRETQ"
	cause := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}
	err := scrubError(&url.Error{Op: "Post", URL: target, Err: cause})
	assert.NotContains(t, err.Error(), "SECRETQ")
	assert.NotContains(t, err.Error(), "import-bookings")
	assert.NotContains(t, err.Error(), "https://")
	assert.Contains(t, err.Error(), "connection refused", "the cause is kept")

	assert.Equal(t, "timed out", scrubError(&url.Error{Op: "Post", URL: target, Err: context.DeadlineExceeded}).Error())
	assert.Equal(t, "canceled", scrubError(&url.Error{Op: "Post", URL: target, Err: context.Canceled}).Error())
	assert.Equal(t, "timed out", scrubError(fmt.Errorf("reading body: %w", context.DeadlineExceeded)).Error())
	assert.Equal(t, "plain", scrubError(errors.New("plain")).Error())

	// The scrubbed error is a new value: unwrapping cannot reach the URL.
	var uerr *url.Error
	assert.False(t, errors.As(err, &uerr))

	// A real failed call through net/http, to a closed port.
	req, _ := http.NewRequest(http.MethodPost, closedPortURL(t)+"/import?key=SECRETQ", nil)
	_, real := http.DefaultClient.Do(req)
	require.Error(t, real)
	require.Contains(t, real.Error(), "SECRETQ", "net/http does name the URL")
	assert.NotContains(t, scrubError(real).Error(), "SECRETQ")
	assert.NotContains(t, scrubError(real).Error(), "/import")
}

func TestSyncResultOkPermanent(t *testing.T) {
	okBody := []byte(`{"success":true}`)
	cases := []struct {
		name      string
		res       syncResult
		ok        bool
		permanent bool
	}{
		{"200 JSON", syncResult{status: 200, body: okBody}, true, false},
		{"200 JSON without success", syncResult{status: 200, body: []byte(`{"synced":1}`)}, true, false},
		{"200 JSON array", syncResult{status: 200, body: []byte(`[]`)}, true, false},
		{"200 success string false", syncResult{status: 200, body: []byte(`{"success":"false"}`)}, true, false},
		{"204 no body", syncResult{status: 204}, false, false},
		{"200 success false", syncResult{status: 200, body: []byte(`{"success":false}`)}, false, false},
		{"201 success false", syncResult{status: 201, body: []byte(`{"success":false,"error":"x"}`)}, false, false},
		{"299 success false", syncResult{status: 299, body: []byte(`{"success":false}`)}, false, false},
		{"200 non-JSON", syncResult{status: 200, text: "<html>"}, false, false},
		{"200 with transport error", syncResult{status: 200, body: okBody, err: errors.New("reset")}, false, false},
		{"300", syncResult{status: 300, body: okBody}, false, false},
		{"400", syncResult{status: 400, body: []byte(`{"error":"bad"}`)}, false, true},
		{"401", syncResult{status: 401, body: []byte(`{}`)}, false, true},
		{"404", syncResult{status: 404, body: []byte(`{}`)}, false, true},
		{"408", syncResult{status: 408, body: []byte(`{}`)}, false, false},
		{"422", syncResult{status: 422, text: "bad"}, false, true},
		{"429", syncResult{status: 429, body: []byte(`{}`)}, false, false},
		{"499", syncResult{status: 499}, false, true},
		{"500", syncResult{status: 500, body: []byte(`{}`)}, false, false},
		{"502", syncResult{status: 502, text: "bad gateway"}, false, false},
		{"503", syncResult{status: 503, body: []byte(`{}`)}, false, false},
		{"504", syncResult{status: 504, text: "timeout"}, false, false},
		{"546 (Supabase resource limit)", syncResult{status: 546, body: []byte(`{"code":"WORKER_LIMIT"}`)}, false, false},
		{"unreachable", syncResult{err: errors.New("connection refused")}, false, false},
		{"timed out", syncResult{err: errors.New("timed out"), timedOut: true}, false, false},
		{"400 but transport error", syncResult{status: 400, err: errors.New("reset")}, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.ok, tc.res.ok(), "ok")
			assert.Equal(t, tc.permanent, tc.res.permanent(), "permanent")
			assert.NotEmpty(t, tc.res.describe())
		})
	}
}

func TestSyncResultDetailsAndDescribe(t *testing.T) {
	assert.Equal(t, "connection refused", (&syncResult{err: errors.New("connection refused")}).details())
	assert.Equal(t, `{"e":1}`, fmt.Sprintf("%s", (&syncResult{status: 500, body: []byte(`{"e":1}`)}).details()))
	assert.Equal(t, "oops", (&syncResult{status: 500, text: "oops"}).details())

	assert.Equal(t, "upstream timed out", (&syncResult{timedOut: true, err: errors.New("timed out")}).describe())
	assert.Equal(t, "upstream unreachable: connection refused", (&syncResult{err: errors.New("connection refused")}).describe())
	assert.Equal(t, "upstream status 200 with a non-JSON body", (&syncResult{status: 200, text: "x"}).describe())
	assert.Equal(t, `upstream status 200 reporting "success": false`, (&syncResult{status: 200, body: []byte(`{"success":false}`)}).describe())
	assert.Equal(t, "upstream status 503", (&syncResult{status: 503}).describe())
}

func TestMarshalJSONKeepsBytes(t *testing.T) {
	b, err := marshalJSON(syncRequest{BookingID: []byte(`"a&b<c>\u2028"`), SyncMode: "single", OrganizationID: []byte(`"o&<>"`)})
	require.NoError(t, err)
	assert.Equal(t, `{"booking_id":"a&b<c>\u2028","syncMode":"single","organization_id":"o&<>"}`, string(b))
	b, err = marshalJSON(syncRequest{BookingID: []byte(`12`)})
	require.NoError(t, err)
	assert.Equal(t, `{"booking_id":12,"syncMode":""}`, string(b), "no trailing newline; empty optional fields omitted")
}

// TestUpstreamSync calls a real stand-in through upstream.sync and checks
// the result it builds for each kind of answer.
func TestUpstreamSync(t *testing.T) {
	big := strings.Repeat("x", maxUpstreamBody+10)
	cases := []struct {
		name    string
		respond func(http.ResponseWriter, *http.Request)
		check   func(t *testing.T, res *syncResult)
	}{
		{"200 JSON", answerJSON(200, `{"success":true}`), func(t *testing.T, res *syncResult) {
			assert.True(t, res.ok())
			assert.Equal(t, `{"success":true}`, string(res.body))
		}},
		{"Retry-After", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "7")
			answerJSON(429, `{}`)(w, r)
		}, func(t *testing.T, res *syncResult) {
			assert.Equal(t, 429, res.status)
			assert.Equal(t, 7*time.Second, res.retryAfter)
		}},
		{"non-JSON", answerTyped(502, "text/html", "<h1>Bad gateway</h1>"), func(t *testing.T, res *syncResult) {
			assert.Equal(t, 502, res.status)
			assert.Nil(t, res.body)
			assert.Equal(t, "<h1>Bad gateway</h1>", res.text)
		}},
		{"JSON over 1 MiB is text, cut", answerJSON(200, `"`+big+`"`), func(t *testing.T, res *syncResult) {
			assert.Nil(t, res.body)
			assert.False(t, res.ok())
			assert.Len(t, res.text, maxDetailsText)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := newImportStandIn(t, tc.respond)
			h := newTestHandler(t, up.target(), nil)
			res := h.upstream.sync(context.Background(), syncRequest{BookingID: []byte(`"b-1"`)}, "rid-1")
			require.NoError(t, res.err)
			assert.Greater(t, res.duration, time.Duration(0))
			tc.check(t, res)
			calls := up.calls()
			require.Len(t, calls, 1)
			assert.Equal(t, `{"booking_id":"b-1","syncMode":"single"}`, calls[0].body, "syncMode is always single")
			assert.Equal(t, "rid-1", calls[0].header.Get("X-Request-Id"))
			assert.Equal(t, "application/json", calls[0].header.Get("Accept"))
		})
	}
}

func TestUpstreamSyncCancelled(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	up := newImportStandIn(t, blockUntil(release))
	h := newTestHandler(t, up.target(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		waitFor(t, up.arrived, time.Second, "the call")
		cancel()
	}()
	res := h.upstream.sync(ctx, syncRequest{BookingID: []byte(`"b-1"`)}, "")
	require.Error(t, res.err)
	assert.Equal(t, "canceled", res.err.Error())
	assert.False(t, res.timedOut)
	assert.False(t, res.ok())
	waitFor(t, up.cancelled, time.Second, "the stand-in to see the cancellation")
}

func TestSyncRequestFromWebhook(t *testing.T) {
	wh, err := payload.Parse([]byte(`{"booking_id":7,"organization_id":"o","event_type":"booking.created"}`), false)
	require.NoError(t, err)
	sr := syncRequestOf(wh)
	assert.Equal(t, `7`, string(sr.BookingID))
	assert.Equal(t, `"o"`, string(sr.OrganizationID), "organization_id is forwarded as received")
	assert.Equal(t, "booking.created", sr.EventType)
}
