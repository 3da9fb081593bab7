package upstream

// The import-bookings client against the testkit stand-in: what each kind
// of answer comes to, cancellation, scrubbed errors, Retry-After.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"

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
			got := TruncateText([]byte(tc.in), tc.n)
			assert.Equal(t, tc.want, got)
			assert.True(t, utf8.ValidString(got))
		})
	}

	// Every cut of a multi-byte text is valid UTF-8, at most n bytes, a
	// prefix of the input, and loses at most the one rune that straddles n.
	text := strings.Repeat("aé✓😀", 600)
	for n := 0; n <= 2100; n++ {
		got := TruncateText([]byte(text), n)
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
		assert.LessOrEqual(t, len(TruncateText([]byte(in), MaxDetailsText)), MaxDetailsText)
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
	assert.Equal(t, "timed out", scrubError(fmt.Errorf("reading Body: %w", context.DeadlineExceeded)).Error())
	assert.Equal(t, "plain", scrubError(errors.New("plain")).Error())

	// The scrubbed error is a new value: unwrapping cannot reach the URL.
	var uerr *url.Error
	assert.False(t, errors.As(err, &uerr))

	// A real failed call through net/http, to a closed port.
	req, _ := http.NewRequest(http.MethodPost, testkit.ClosedPortURL(t)+"/import?key=SECRETQ", nil)
	_, real := http.DefaultClient.Do(req)
	require.Error(t, real)
	require.Contains(t, real.Error(), "SECRETQ", "net/http does name the URL")
	assert.NotContains(t, scrubError(real).Error(), "SECRETQ")
	assert.NotContains(t, scrubError(real).Error(), "/import")
}

func TestSyncResultOkPermanent(t *testing.T) {
	okBody := []byte(`{"success":true,"queued":false,"completed":true,"sync_mode":"single","booking_id":null,"outcome":"applied"}`)
	cases := []struct {
		name      string
		res       Result
		ok        bool
		permanent bool
	}{
		{"200 JSON", Result{Status: 200, Body: okBody}, true, false},
		{"200 JSON without outcome", Result{Status: 200, Body: []byte(`{"synced":1}`)}, false, true},
		{"200 JSON array", Result{Status: 200, Body: []byte(`[]`)}, false, true},
		{"200 JSON null", Result{Status: 200, Body: []byte(`null`)}, false, false},
		{"200 success string false", Result{Status: 200, Body: []byte(`{"success":"false"}`)}, false, true},
		{"204 no body", Result{Status: 204}, false, false},
		{"200 success false", Result{Status: 200, Body: []byte(`{"success":false}`)}, false, true},
		{"201 success false", Result{Status: 201, Body: []byte(`{"success":false,"error":"x"}`)}, false, true},
		{"200 non-JSON", Result{Status: 200, Text: "<html>"}, false, false},
		{"200 with transport error", Result{Status: 200, Body: okBody, Err: errors.New("reset")}, false, false},
		{"300", Result{Status: 300, Body: okBody}, false, true},
		{"400", Result{Status: 400, Body: []byte(`{"error":"bad"}`)}, false, true},
		{"401", Result{Status: 401, Body: []byte(`{}`)}, false, true},
		{"404", Result{Status: 404, Body: []byte(`{}`)}, false, true},
		{"408", Result{Status: 408, Body: []byte(`{}`)}, false, true},
		{"422", Result{Status: 422, Text: "bad"}, false, true},
		{"429", Result{Status: 429, Body: []byte(`{}`)}, false, false},
		{"499", Result{Status: 499}, false, true},
		{"500", Result{Status: 500, Body: []byte(`{}`)}, false, false},
		{"502", Result{Status: 502, Text: "bad gateway"}, false, false},
		{"503", Result{Status: 503, Body: []byte(`{}`)}, false, false},
		{"504", Result{Status: 504, Text: "timeout"}, false, false},
		{"546 (Supabase resource limit)", Result{Status: 546, Body: []byte(`{"code":"WORKER_LIMIT"}`)}, false, false},
		{"unreachable", Result{Err: errors.New("connection refused")}, false, false},
		{"timed out", Result{Err: errors.New("timed out"), TimedOut: true}, false, false},
		{"400 but transport error", Result{Status: 400, Err: errors.New("reset")}, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			(&Contract{}).judge(Request{}, &tc.res, "")
			assert.Equal(t, tc.ok, tc.res.OK(), "ok")
			assert.Equal(t, tc.permanent, tc.res.Permanent(), "permanent")
			assert.NotEmpty(t, tc.res.Describe())
		})
	}
}

func TestSyncResultDetailsAndDescribe(t *testing.T) {
	assert.Equal(t, "connection refused", (&Result{Err: errors.New("connection refused")}).Details())
	assert.Equal(t, `{"e":1}`, fmt.Sprintf("%s", (&Result{Status: 500, Body: []byte(`{"e":1}`)}).Details()))
	assert.Equal(t, "oops", (&Result{Status: 500, Text: "oops"}).Details())

	assert.Equal(t, "upstream timed out", (&Result{TimedOut: true, Err: errors.New("timed out")}).Describe())
	assert.Equal(t, "upstream unreachable: connection refused", (&Result{Err: errors.New("connection refused")}).Describe())
	judged := func(r Result) *Result { (&Contract{}).judge(Request{}, &r, ""); return &r }
	assert.Equal(t, "upstream status 200: non-JSON answer", judged(Result{Status: 200, Text: "x"}).Describe())
	assert.Equal(t, `upstream status 200: contract violation: no "outcome"`, judged(Result{Status: 200, Body: []byte(`{"success":false}`)}).Describe())
	assert.Equal(t, "upstream status 503", (&Result{Status: 503}).Describe())
}

func TestMarshalJSONKeepsBytes(t *testing.T) {
	b, err := payload.MarshalJSON(Request{BookingID: []byte(`"a&b<c>\u2028"`), SyncMode: "single", OrganizationID: []byte(`"o&<>"`)})
	require.NoError(t, err)
	assert.Equal(t, `{"booking_id":"a&b<c>\u2028","syncMode":"single","organization_id":"o&<>"}`, string(b))
	b, err = payload.MarshalJSON(Request{BookingID: []byte(`12`)})
	require.NoError(t, err)
	assert.Equal(t, `{"booking_id":12,"syncMode":""}`, string(b), "no trailing newline; empty optional fields omitted")
}

// TestUpstreamSync calls a real stand-in through upstream.sync and checks
// the result it builds for each kind of answer.
func TestUpstreamSync(t *testing.T) {
	big := strings.Repeat("x", maxUpstreamBody+10)
	cases := []struct {
		name    string
		respond testkit.Responder
		check   func(t *testing.T, res *Result)
	}{
		{"200 envelope", testkit.JSON(200, `{"success":true,"queued":false,"completed":true,"sync_mode":"single","booking_id":"b-1","outcome":"applied"}`), func(t *testing.T, res *Result) {
			assert.True(t, res.OK(), res.Reason)
			assert.Contains(t, string(res.Body), `"outcome":"applied"`)
		}},
		{"Retry-After", func(w http.ResponseWriter, r *http.Request, c *testkit.Call) {
			w.Header().Set("Retry-After", "7")
			testkit.JSON(429, `{}`)(w, r, c)
		}, func(t *testing.T, res *Result) {
			assert.Equal(t, 429, res.Status)
			assert.Equal(t, 7*time.Second, res.RetryAfter)
		}},
		{"non-JSON", testkit.Typed(502, "text/html", "<h1>Bad gateway</h1>"), func(t *testing.T, res *Result) {
			assert.Equal(t, 502, res.Status)
			assert.Nil(t, res.Body)
			assert.Equal(t, "<h1>Bad gateway</h1>", res.Text)
		}},
		{"JSON over 1 MiB is text, cut", testkit.JSON(200, `"`+big+`"`), func(t *testing.T, res *Result) {
			assert.Nil(t, res.Body)
			assert.False(t, res.OK())
			assert.Len(t, res.Text, MaxDetailsText)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := testkit.NewStandIn(t)
			up.Respond(tc.respond)
			res := newTestClient(t, up.Target()).Sync(context.Background(), Request{BookingID: []byte(`"b-1"`)}, "rid-1")
			require.NoError(t, res.Err)
			assert.Greater(t, res.Duration, time.Duration(0))
			tc.check(t, res)
			calls := up.Calls()
			require.Len(t, calls, 1)
			assert.Equal(t, `{"booking_id":"b-1","syncMode":"single"}`, calls[0].Body, "syncMode is always single")
			assert.Equal(t, "rid-1", calls[0].Header.Get("X-Request-Id"))
			assert.Equal(t, "application/json", calls[0].Header.Get("Accept"))
		})
	}
}

func TestUpstreamSyncCancelled(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	up := testkit.NewStandIn(t)
	up.Respond(testkit.BlockUntil(release))
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		testkit.WaitFor(t, up.Arrived, time.Second, "the call")
		cancel()
	}()
	res := newTestClient(t, up.Target()).Sync(ctx, Request{BookingID: []byte(`"b-1"`)}, "")
	require.Error(t, res.Err)
	assert.Equal(t, "canceled", res.Err.Error())
	assert.False(t, res.TimedOut)
	assert.False(t, res.OK())
	testkit.WaitFor(t, up.Cancelled, time.Second, "the stand-in to see the cancellation")
}

// newTestClient is a client of target with a distinctive key.
func newTestClient(t *testing.T, target string) *Client {
	t.Helper()
	u, err := url.Parse(target)
	require.NoError(t, err)
	return New(u, "tk-SECRET-123", "caddy-receive-booking/test", nil)
}
