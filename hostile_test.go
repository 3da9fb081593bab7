package receivebooking

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHostileInputs sends what a careless or malicious sender might, through
// a real in-process Caddy, and checks each answer against the contract: the
// exact status and JSON error, and that import-bookings is never called.
// Afterwards the server must still sync valid webhooks. It shares
// caddytest's admin port with the other end-to-end tests, so it does not
// run in parallel.
//
// max_body is 512KiB rather than the default 1MiB: small enough that the
// over-limit bodies are quick, large enough that a 100,000-level nested
// body (200,000 bytes) reaches the JSON parser and is refused there, and
// that a body of 75,000 distinct keys shows whether duplicate detection
// is linear.
func TestHostileInputs(t *testing.T) {
	const (
		// Mixed case, so that both case variants differ from it. It
		// belongs to org-1: a body without organization_id is org-1's.
		secret = "Hostile-S3cret-Value"
		// shared may act for any organization: a body must name one.
		shared      = "Hostile-Shared-K3y"
		maxBody     = 512 << 10
		bodyTimeout = 500 * time.Millisecond
	)
	up := testkit.NewStandIn(t) // answers the envelope: a sync
	tester := initE2E(t, "", fmt.Sprintf(`receive_booking {
		secret %s
		organization org-1 {
			secret %s second-secret
		}
		target %s/functions/v1/import-bookings
		target_key %s
		timeout 2s
		max_body 512KiB
		body_timeout 500ms
	}`, shared, secret, up.URL, e2eTargetKey))

	const (
		errMethod  = `{"error":"Method not allowed"}`
		errAuth    = `{"error":"Unauthorized"}`
		errLarge   = `{"error":"Request body too large"}`
		errJSON    = `{"error":"Invalid JSON body"}`
		errMissing = `{"error":"Missing required field: booking_id"}`
		errNoOrg   = `{"error":"Missing required field: organization_id"}`
		errForbid  = `{"error":"Forbidden"}`
		errBooking = `{"error":"Invalid field: booking_id"}`
		errEvent   = `{"error":"Invalid field: event_type"}`
		errOrg     = `{"error":"Invalid field: organization_id"}`
		errTimeout = `{"error":"Request body timeout"}`
		valid      = `{"booking_id":"b1"}`
	)
	type hdr = [][2]string // ordered, repeatable header lines
	key := hdr{{"X-Api-Key", secret}}
	sharedKey := hdr{{"X-Api-Key", shared}}
	withKey := func(h ...[2]string) hdr { return append(hdr{{"X-Api-Key", secret}}, h...) }
	nested := func(n int) string {
		return `{"booking_id":"b1","deep":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}`
	}
	nineKeys := hdr{}
	for i := range 8 {
		nineKeys = append(nineKeys, [2]string{"X-Api-Key", fmt.Sprintf("wrong-%d", i)})
	}
	nineKeys = append(nineKeys, [2]string{"Authorization", "Bearer " + secret})

	type hostileCase struct {
		name    string
		method  string // POST when empty
		headers hdr    // Content-Type: application/json is added unless noCT or set here
		noCT    bool
		body    string
		chunked bool // send without Content-Length
		status  int
		want    string
	}
	cases := []hostileCase{
		// Every method but POST and OPTIONS.
		{name: "GET", method: http.MethodGet, headers: key, status: 405, want: errMethod},
		{name: "GET with body", method: http.MethodGet, headers: key, body: valid, status: 405, want: errMethod},
		{name: "PUT", method: http.MethodPut, headers: key, body: valid, status: 405, want: errMethod},
		{name: "PATCH", method: http.MethodPatch, headers: key, body: valid, status: 405, want: errMethod},
		{name: "DELETE", method: http.MethodDelete, headers: key, status: 405, want: errMethod},
		{name: "HEAD", method: http.MethodHead, headers: key, status: 405, want: ""}, // no body on HEAD
		{name: "TRACE", method: http.MethodTrace, headers: key, status: 405, want: errMethod},
		{name: "PROPFIND", method: "PROPFIND", headers: key, status: 405, want: errMethod},
		{name: "custom FOO", method: "FOO", headers: key, body: valid, status: 405, want: errMethod},
		{name: "lower-case post", method: "post", headers: key, body: valid, status: 405, want: errMethod},

		// Credentials.
		{name: "no credential", body: valid, status: 401, want: errAuth},
		{name: "empty x-api-key", headers: hdr{{"X-Api-Key", ""}}, body: valid, status: 401, want: errAuth},
		{name: "repeated wrong x-api-key", headers: hdr{{"X-Api-Key", "nope"}, {"X-Api-Key", "nope"}, {"X-Api-Key", "also-nope"}}, body: valid, status: 401, want: errAuth},
		{name: "8KiB x-api-key", headers: hdr{{"X-Api-Key", strings.Repeat("k", 8<<10)}}, body: valid, status: 401, want: errAuth},
		{name: "8KiB key ending in the secret", headers: hdr{{"X-Api-Key", strings.Repeat("k", 8<<10-len(secret)) + secret}}, body: valid, status: 401, want: errAuth},
		{name: "Bearer without token", headers: hdr{{"Authorization", "Bearer"}}, body: valid, status: 401, want: errAuth},
		{name: "Bearer and spaces", headers: hdr{{"Authorization", "Bearer    "}}, body: valid, status: 401, want: errAuth},
		{name: "Basic scheme", headers: hdr{{"Authorization", "Basic " + secret}}, body: valid, status: 401, want: errAuth},
		{name: "Token scheme", headers: hdr{{"Authorization", "Token " + secret}}, body: valid, status: 401, want: errAuth},
		{name: "Bearer glued to secret", headers: hdr{{"Authorization", "Bearer" + secret}}, body: valid, status: 401, want: errAuth},
		{name: "Bearer scheme inside x-api-key", headers: hdr{{"X-Api-Key", "Bearer " + secret}}, body: valid, status: 401, want: errAuth},
		{name: "secret prefix", headers: hdr{{"X-Api-Key", secret[:len(secret)-1]}}, body: valid, status: 401, want: errAuth},
		{name: "secret with trailing bytes", headers: hdr{{"X-Api-Key", secret + "x"}}, body: valid, status: 401, want: errAuth},
		{name: "bearer secret with trailing bytes", headers: hdr{{"Authorization", "Bearer " + secret + ".x"}}, body: valid, status: 401, want: errAuth},
		{name: "secret lower case", headers: hdr{{"X-Api-Key", strings.ToLower(secret)}}, body: valid, status: 401, want: errAuth},
		{name: "secret upper case", headers: hdr{{"X-Api-Key", strings.ToUpper(secret)}}, body: valid, status: 401, want: errAuth},
		{name: "two secrets joined", headers: hdr{{"X-Api-Key", secret + ",second-secret"}}, body: valid, status: 401, want: errAuth},
		{name: "secret in apikey header", headers: hdr{{"Apikey", secret}}, body: valid, status: 401, want: errAuth},
		{name: "9 credentials, one valid", headers: nineKeys, body: valid, status: 401, want: errAuth},

		// Any Content-Type is accepted, as by the Edge Function: the body is
		// parsed, and must be one JSON object (refused here).
		{name: "form-urlencoded", headers: withKey([2]string{"Content-Type", "application/x-www-form-urlencoded"}), body: "booking_id=b1", status: 400, want: errJSON},
		{name: "multipart", headers: withKey([2]string{"Content-Type", "multipart/form-data; boundary=xyz"}),
			body: "--xyz\r\nContent-Disposition: form-data; name=\"booking_id\"\r\n\r\nb1\r\n--xyz--\r\n", status: 400, want: errJSON},
		{name: "no Content-Type, body parsed", headers: key, noCT: true, body: `booking_id=b1`, status: 400, want: errJSON},

		// Size.
		{name: "one byte over max_body, declared", headers: key, body: `{"pad":"` + strings.Repeat("x", maxBody-9) + `"}`, status: 413, want: errLarge},
		{name: "one byte over max_body, chunked", headers: key, body: `{"pad":"` + strings.Repeat("x", maxBody-9) + `"}`, chunked: true, status: 413, want: errLarge},
		{name: "exactly max_body is parsed", headers: key, body: `{"pad":"` + strings.Repeat("x", maxBody-10) + `"}`, status: 400, want: errMissing},
		{name: "small chunked body is parsed", headers: key, body: `[1,2,3]`, chunked: true, status: 400, want: errJSON},

		// Bodies that are not one JSON object.
		{name: "empty body", headers: key, body: "", status: 400, want: errJSON},
		{name: "whitespace only", headers: key, body: " \r\n\t ", status: 400, want: errJSON},
		{name: "truncated", headers: key, body: `{"booking_id":"b1"`, status: 400, want: errJSON},
		{name: "truncated in string", headers: key, body: `{"booking_id":"b`, status: 400, want: errJSON},
		{name: "not JSON", headers: key, body: `booking_id=b1`, status: 400, want: errJSON},
		{name: "array", headers: key, body: `[{"booking_id":"b1"}]`, status: 400, want: errJSON},
		{name: "string scalar", headers: key, body: `"b1"`, status: 400, want: errJSON},
		{name: "number scalar", headers: key, body: `42`, status: 400, want: errJSON},
		{name: "bool scalar", headers: key, body: `true`, status: 400, want: errJSON},
		{name: "null", headers: key, body: `null`, status: 400, want: errJSON},
		{name: "100,000-level nesting", headers: key, body: nested(100_000), status: 400, want: errJSON},
		{name: "100,000 open brackets", headers: key, body: `{"booking_id":"b1","deep":` + strings.Repeat("[", 100_000), status: 400, want: errJSON},
		{name: "duplicate booking_id", headers: key, body: `{"booking_id":"b1","booking_id":"b2"}`, status: 400, want: errJSON},
		{name: "duplicate key via escape", headers: key, body: `{"booking_id":"b1","booking\u005fid":"b2"}`, status: 400, want: errJSON},
		{name: "duplicate unrelated key", headers: key, body: `{"booking_id":"b1","x":1,"x":2}`, status: 400, want: errJSON},
		{name: "invalid UTF-8 in string", headers: key, body: "{\"booking_id\":\"b\xff1\"}", status: 400, want: errJSON},
		{name: "invalid UTF-8 in ignored field", headers: key, body: "{\"booking_id\":\"b1\",\"x\":\"\xc3\x28\"}", status: 400, want: errJSON},
		{name: "NUL byte outside strings", headers: key, body: "{\"booking_id\":\"b1\"\x00}", status: 400, want: errJSON},
		{name: "raw control character in string", headers: key, body: "{\"booking_id\":\"a\x01b\"}", status: 400, want: errJSON},
		{name: "trailing garbage", headers: key, body: `{"booking_id":"b1"}x`, status: 400, want: errJSON},
		{name: "two objects", headers: key, body: `{"booking_id":"b1"}{"booking_id":"b2"}`, status: 400, want: errJSON},
		{name: "byte order mark", headers: key, body: "\xef\xbb\xbf" + valid, status: 400, want: errJSON},
		{name: "single quotes", headers: key, body: `{'booking_id':'b1'}`, status: 400, want: errJSON},
		{name: "trailing comma", headers: key, body: `{"booking_id":"b1",}`, status: 400, want: errJSON},

		// booking_id missing.
		{name: "booking_id absent", headers: key, body: `{"event_type":"created"}`, status: 400, want: errMissing},
		{name: "booking_id null", headers: key, body: `{"booking_id":null}`, status: 400, want: errMissing},
		{name: "booking_id empty", headers: key, body: `{"booking_id":""}`, status: 400, want: errMissing},
		{name: "empty object", headers: key, body: `{}`, status: 400, want: errMissing},
		{name: "booking_id only nested", headers: key, body: `{"data":{"booking_id":"b1"}}`, status: 400, want: errMissing},

		// booking_id invalid.
		{name: "booking_id float", headers: key, body: `{"booking_id":1.5}`, status: 400, want: errBooking},
		{name: "booking_id 1e3", headers: key, body: `{"booking_id":1e3}`, status: 400, want: errBooking},
		{name: "booking_id true", headers: key, body: `{"booking_id":true}`, status: 400, want: errBooking},
		{name: "booking_id object", headers: key, body: `{"booking_id":{"id":"b1"}}`, status: 400, want: errBooking},
		{name: "booking_id array", headers: key, body: `{"booking_id":["b1"]}`, status: 400, want: errBooking},
		{name: "booking_id 10,000 characters", headers: key, body: `{"booking_id":"` + strings.Repeat("b", 10_000) + `"}`, status: 400, want: errBooking},
		{name: "booking_id 257 bytes", headers: key, body: `{"booking_id":"` + strings.Repeat("b", 257) + `"}`, status: 400, want: errBooking},
		{name: "booking_id 300-digit integer", headers: key, body: `{"booking_id":` + strings.Repeat("9", 300) + `}`, status: 400, want: errBooking},
		{name: "booking_id newline (log injection)", headers: key, body: `{"booking_id":"b1\n{\"level\":\"info\",\"msg\":\"forged\"}"}`, status: 400, want: errBooking},
		{name: "booking_id carriage return", headers: key, body: `{"booking_id":"b1\rforged"}`, status: 400, want: errBooking},
		{name: "booking_id NUL escape", headers: key, body: `{"booking_id":"b1\u0000"}`, status: 400, want: errBooking},
		{name: "booking_id tab", headers: key, body: `{"booking_id":"b\t1"}`, status: 400, want: errBooking},
		{name: "booking_id U+2028", headers: key, body: `{"booking_id":"b\u20281"}`, status: 400, want: errBooking},
		{name: "booking_id raw U+2029", headers: key, body: "{\"booking_id\":\"b\u20291\"}", status: 400, want: errBooking},
		{name: "booking_id DEL", headers: key, body: `{"booking_id":"b\u007f1"}`, status: 400, want: errBooking},
		{name: "booking_id C1 NEL", headers: key, body: `{"booking_id":"b\u00851"}`, status: 400, want: errBooking},
		{name: "booking_id ANSI escape", headers: key, body: `{"booking_id":"\u001b[31mred"}`, status: 400, want: errBooking},
		{name: "booking_id blank", headers: key, body: `{"booking_id":"   "}`, status: 400, want: errBooking},

		// The other identifiers.
		{name: "event_type number", headers: key, body: `{"booking_id":"b1","event_type":5}`, status: 400, want: errEvent},
		{name: "event_type object", headers: key, body: `{"booking_id":"b1","event_type":{"type":"created"}}`, status: 400, want: errEvent},
		{name: "event_type newline", headers: key, body: `{"booking_id":"b1","event_type":"created\nforged"}`, status: 400, want: errEvent},
		{name: "event_type 10,000 characters", headers: key, body: `{"booking_id":"b1","event_type":"` + strings.Repeat("e", 10_000) + `"}`, status: 400, want: errEvent},
		{name: "organization_id float", headers: key, body: `{"booking_id":"b1","organization_id":1.5}`, status: 400, want: errOrg},
		{name: "organization_id array", headers: key, body: `{"booking_id":"b1","organization_id":["o"]}`, status: 400, want: errOrg},
		{name: "organization_id NUL", headers: key, body: `{"booking_id":"b1","organization_id":"o\u0000"}`, status: 400, want: errOrg},
		{name: "organization_id 300 bytes", headers: key, body: `{"booking_id":"b1","organization_id":"` + strings.Repeat("o", 300) + `"}`, status: 400, want: errOrg},

		// Every webhook is one organization's: a shared key's body names it
		// (checked before booking_id), an organization's key acts for no
		// other (exact match).
		{name: "shared key, organization_id absent", headers: sharedKey, body: valid, status: 400, want: errNoOrg},
		{name: "shared key, empty object", headers: sharedKey, body: `{}`, status: 400, want: errNoOrg},
		{name: "shared key, organization_id null", headers: sharedKey, body: `{"booking_id":"b1","organization_id":null}`, status: 400, want: errNoOrg},
		{name: "shared key, organization_id empty", headers: sharedKey, body: `{"booking_id":"b1","organization_id":""}`, status: 400, want: errNoOrg},
		{name: "shared key, invalid organization_id", headers: sharedKey, body: `{"organization_id":1.5}`, status: 400, want: errOrg},
		{name: "another organization", headers: key, body: `{"booking_id":"b1","organization_id":"org-2"}`, status: 403, want: errForbid},
		{name: "another organization, second key", headers: hdr{{"X-Api-Key", "second-secret"}}, body: `{"booking_id":"b1","organization_id":"org-2"}`, status: 403, want: errForbid},
		{name: "another organization, bearer", headers: hdr{{"Authorization", "Bearer " + secret}}, body: `{"booking_id":"b1","organization_id":"org-2"}`, status: 403, want: errForbid},
		{name: "organization_id in upper case", headers: key, body: `{"booking_id":"b1","organization_id":"ORG-1"}`, status: 403, want: errForbid},
		{name: "organization_id with a space", headers: key, body: `{"booking_id":"b1","organization_id":"org-1 "}`, status: 403, want: errForbid},
		{name: "organization_id as a number", headers: key, body: `{"booking_id":"b1","organization_id":1}`, status: 403, want: errForbid},
		{name: "another organization, booking_id invalid", headers: key, body: `{"booking_id":1.5,"organization_id":"org-2"}`, status: 403, want: errForbid},
		{name: "another organization, both keys", headers: hdr{{"X-Api-Key", secret}, {"X-Api-Key", shared}}, body: `{"booking_id":"b1","organization_id":"org-2"}`, status: 403, want: errForbid},
	}

	sent := 0
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = http.MethodPost
			}
			var body io.Reader
			if tc.body != "" || method == http.MethodPost {
				body = strings.NewReader(tc.body)
			}
			if tc.chunked {
				body = io.MultiReader(body) // hides the length
			}
			req, err := http.NewRequest(method, e2eSite+"/", body)
			require.NoError(t, err)
			if tc.chunked {
				req.ContentLength = -1
			}
			if !tc.noCT {
				req.Header.Set("Content-Type", "application/json")
			}
			for _, h := range tc.headers {
				if h[0] == "Content-Type" {
					req.Header.Set(h[0], h[1])
				} else {
					req.Header.Add(h[0], h[1])
				}
			}
			sent++
			resp, err := tester.Client.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			raw, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			assert.Equal(t, tc.status, resp.StatusCode, "body: %.200s", raw)
			assert.Equal(t, tc.want, string(raw))
			if method != http.MethodHead {
				assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			}
			if tc.status == http.StatusMethodNotAllowed {
				assert.Equal(t, "POST, OPTIONS", resp.Header.Get("Allow"))
			}
			assert.Empty(t, up.Calls(), "a rejected request reached import-bookings")
		})
	}

	// Many distinct top-level keys: refusing duplicates must not cost
	// quadratic time. 512KiB holds about 75,000 short keys; the one
	// duplicate is at the very end, so every key is looked at. A linear
	// check takes well under a second even under -race on a busy 2-core
	// machine; a quadratic one takes many seconds.
	t.Run("75,000 distinct keys, duplicate at the end", func(t *testing.T) {
		sent++
		var b strings.Builder
		b.WriteString(`{"booking_id":"b1"`)
		for i := 0; b.Len() < maxBody-32; i++ {
			fmt.Fprintf(&b, `,"%x":0`, i)
		}
		b.WriteString(`,"0":1}`)
		req, err := http.NewRequest(http.MethodPost, e2eSite+"/", strings.NewReader(b.String()))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Api-Key", secret)
		start := time.Now()
		resp, err := tester.Client.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		elapsed := time.Since(start)
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
		assert.Equal(t, errJSON, string(raw))
		assert.Less(t, elapsed, 3*time.Second, "duplicate-key detection is quadratic in the number of keys")
		assert.Empty(t, up.Calls())
	})

	// Slow and broken clients, over raw connections.
	headers := func(contentLength int) string {
		return "POST / HTTP/1.1\r\nHost: localhost:9080\r\nX-Api-Key: " + secret +
			"\r\nContent-Type: application/json\r\n" + fmt.Sprintf("Content-Length: %d\r\n\r\n", contentLength)
	}
	slowBody := `{"booking_id":"slow-1","event_type":"created"}`
	t.Run("body stalls halfway", func(t *testing.T) {
		sent++
		conn := dialCaddy(t)
		start := time.Now()
		_, err := io.WriteString(conn, headers(len(slowBody))+slowBody[:len(slowBody)/2])
		require.NoError(t, err)
		resp := readRawResponse(t, conn)
		elapsed := time.Since(start)
		assert.Equal(t, http.StatusRequestTimeout, resp.status)
		assert.Equal(t, errTimeout, resp.body)
		assert.GreaterOrEqual(t, elapsed, bodyTimeout-50*time.Millisecond, "answered before body_timeout")
		assert.Less(t, elapsed, bodyTimeout+2*time.Second, "body_timeout not enforced")
		assert.Empty(t, up.Calls())
	})
	t.Run("body dripped byte by byte", func(t *testing.T) {
		sent++
		conn := dialCaddy(t)
		_, err := io.WriteString(conn, headers(len(slowBody)))
		require.NoError(t, err)
		// 100 ms a byte: the whole body would take seconds, the budget is
		// 500 ms for all of it, however steadily it trickles in.
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := range len(slowBody) {
				if _, err := conn.Write([]byte{slowBody[i]}); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		resp := readRawResponse(t, conn)
		assert.Equal(t, http.StatusRequestTimeout, resp.status)
		assert.Equal(t, errTimeout, resp.body)
		_ = conn.Close()
		<-done
		assert.Empty(t, up.Calls())
	})
	t.Run("client disconnects halfway through the body", func(t *testing.T) {
		for range 5 {
			sent++
			conn := dialCaddy(t)
			_, err := io.WriteString(conn, headers(len(slowBody))+slowBody[:len(slowBody)/2])
			require.NoError(t, err)
			require.NoError(t, conn.Close())
		}
		sent++
		conn := dialCaddy(t) // and once after the headers only
		_, err := io.WriteString(conn, headers(len(slowBody)))
		require.NoError(t, err)
		require.NoError(t, conn.Close())
		// Still healthy: the next request is answered normally.
		status, body, _ := postWebhook(t, tester, map[string]string{"X-Api-Key": secret}, `{"booking_id":"a\nb"}`)
		sent++
		assert.Equal(t, 400, status)
		assert.Equal(t, map[string]any{"error": "Invalid field: booking_id"}, body)
		assert.Empty(t, up.Calls())
	})
	t.Run("CONNECT", func(t *testing.T) {
		sent++
		conn := dialCaddy(t)
		_, err := io.WriteString(conn, "CONNECT localhost:9080 HTTP/1.1\r\nHost: localhost:9080\r\nX-Api-Key: "+secret+"\r\n\r\n")
		require.NoError(t, err)
		resp := readRawResponse(t, conn)
		assert.Equal(t, http.StatusMethodNotAllowed, resp.status)
		assert.Equal(t, errMethod, resp.body)
		assert.Empty(t, up.Calls())
	})

	t.Logf("%d hostile requests sent; import-bookings called %d times", sent, len(up.Calls()))
	require.GreaterOrEqual(t, sent, 40)
	require.Empty(t, up.Calls(), "no hostile request may reach import-bookings")

	// After all that, valid webhooks are synced, and they are the only
	// calls: the organization's key naming its organization, or none (it
	// is sent as org-1), and the shared key naming any.
	for i, c := range []struct{ key, body, sent string }{
		{secret, `{"booking_id":"after-1","organization_id":"org-1","event_type":"booking.created"}`,
			`{"booking_id":"after-1","syncMode":"single","organization_id":"org-1","event_type":"booking.created"}`},
		{secret, `{"booking_id":"after-2","event_type":"BOOKING_UPDATED"}`,
			`{"booking_id":"after-2","syncMode":"single","organization_id":"org-1","event_type":"booking.updated"}`},
		{shared, `{"booking_id":"after-3","organization_id":"org-9"}`,
			`{"booking_id":"after-3","syncMode":"single","organization_id":"org-9"}`},
	} {
		status, body, _ := postWebhook(t, tester, map[string]string{"X-Api-Key": c.key}, c.body)
		assert.Equal(t, http.StatusOK, status, "%v", body)
		assert.Equal(t, true, body["success"], "%v", body)
		assert.Equal(t, fmt.Sprintf("after-%d", i+1), body["booking_id"])
		calls := up.Calls()
		require.Len(t, calls, i+1)
		assert.JSONEq(t, c.sent, calls[i].Body)
	}
}

// dialCaddy opens a raw connection to the test Caddy (caddytest's client
// redirects localhost:9080 to 127.0.0.1 the same way).
func dialCaddy(t *testing.T) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", "127.0.0.1:9080", 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	return conn
}

type rawResponse struct {
	status int
	body   string
	header http.Header
}

func readRawResponse(t *testing.T, conn net.Conn) rawResponse {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return rawResponse{status: resp.StatusCode, body: string(bytes.TrimSpace(raw)), header: resp.Header}
}
