package receivebooking

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
	"github.com/bookingwebhook/caddy-receive-booking/internal/tracing"
	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"
	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

const (
	errMethodNotAllowed = `{"error":"Method not allowed"}`
	errUnauthorized     = `{"error":"Unauthorized"}`
	errTooLarge         = `{"error":"Request body too large"}`
	errInvalidJSONBody  = `{"error":"Invalid JSON body"}`
	errMissingBooking   = `{"error":"Missing required field: booking_id"}`
	errInvalidBooking   = `{"error":"Invalid field: booking_id"}`
	errMissingOrg       = `{"error":"Missing required field: organization_id"}`
	errInvalidOrg       = `{"error":"Invalid field: organization_id"}`
	errInvalidEvent     = `{"error":"Invalid field: event_type"}`

	validBody    = `{"booking_id":"b-1","event_type":"booking.created"}`
	validForward = `{"booking_id":"b-1","syncMode":"single","organization_id":"org-1","event_type":"booking.created"}`
	validAnswer  = `{"success":true,"booking_id":"b-1","event_type":"booking.created","sync_result":` + utUpstreamOK + `}`
)

// contractCase is one row of the request contract, run through ServeHTTP
// against a real loopback import-bookings.
type contractCase struct {
	name   string
	method string   // default POST
	header []string // name, value pairs; nil: x-api-key utSecret and Content-Type application/json
	body   string
	// chunked sends the body without a declared Content-Length.
	chunked   bool
	configure func(*Handler)
	upstream  testkit.Responder // nil: the stand-in's success envelope

	wantStatus int
	wantBody   string // exact JSON (JSONEq); "" for no body
	checkBody  func(t *testing.T, body map[string]any)
	wantHeader map[string]string // exact values; "" means absent
	// wantForward is the exact body import-bookings must receive; "" means
	// import-bookings must not be called at all.
	wantForward string
}

var corsPreflightHeaders = map[string]string{
	"Access-Control-Allow-Origin":  "*",
	"Access-Control-Allow-Headers": "authorization, x-client-info, apikey, content-type, x-api-key",
	"Access-Control-Allow-Methods": "POST, OPTIONS",
}

func noCORS(h map[string]string) map[string]string {
	out := map[string]string{
		"Access-Control-Allow-Origin":  "",
		"Access-Control-Allow-Headers": "",
		"Access-Control-Allow-Methods": "",
	}
	for k, v := range h {
		out[k] = v
	}
	return out
}

func maxBody64(h *Handler)  { h.MaxBody = "64" }
func requireOrg(h *Handler) { sharedKey(h); h.Require = []string{"organization_id"} }
func twoSecrets(h *Handler) { h.Organizations[0].Secrets = []string{utSecret, utSecret2} }
func corsOffCfg(h *Handler) { h.CORS = "off" }
func withBody(n int) string { return padBody(`{"booking_id":"b-1","pad":"`, `"}`, n) }

// padBody returns prefix + x… + suffix of exactly n bytes.
func padBody(prefix, suffix string, n int) string {
	return prefix + strings.Repeat("x", n-len(prefix)-len(suffix)) + suffix
}

func contractCases() []contractCase {
	html5k := bigHTML(5 << 10)
	cases := []contractCase{
		// Preflight and methods.
		{name: "OPTIONS preflight", method: http.MethodOptions, header: []string{},
			wantStatus: 204, wantHeader: corsPreflightHeaders},
		{name: "OPTIONS preflight with custom origin", method: http.MethodOptions, header: []string{},
			configure:  func(h *Handler) { h.CORS = "https://app.example.com" },
			wantStatus: 204, wantHeader: map[string]string{"Access-Control-Allow-Origin": "https://app.example.com"}},
		{name: "OPTIONS with cors off is 405", method: http.MethodOptions, header: []string{}, configure: corsOffCfg,
			wantStatus: 405, wantBody: errMethodNotAllowed, wantHeader: noCORS(map[string]string{"Allow": "POST, OPTIONS"})},
		{name: "POST with cors off has no CORS headers", configure: corsOffCfg, body: validBody,
			wantStatus: 200, wantBody: validAnswer, wantForward: validForward, wantHeader: noCORS(nil)},
		{name: "POST answer carries CORS headers", body: validBody,
			wantStatus: 200, wantBody: validAnswer, wantForward: validForward, wantHeader: corsPreflightHeaders},
		{name: "401 answer carries CORS headers", header: []string{}, body: validBody,
			wantStatus: 401, wantBody: errUnauthorized, wantHeader: corsPreflightHeaders},
	}
	for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodHead, "PROPFIND"} {
		cases = append(cases,
			contractCase{name: m + " is 405", method: m, body: validBody,
				wantStatus: 405, wantBody: errMethodNotAllowed, wantHeader: map[string]string{"Allow": "POST, OPTIONS"}},
			contractCase{name: m + " without credentials is 405", method: m, header: []string{},
				wantStatus: 405, wantBody: errMethodNotAllowed, wantHeader: map[string]string{"Allow": "POST, OPTIONS"}},
		)
	}

	// Credentials.
	unauth := func(name string, header ...string) contractCase {
		return contractCase{name: name, header: header, body: validBody, wantStatus: 401, wantBody: errUnauthorized}
	}
	ok := func(name string, configure func(*Handler), header ...string) contractCase {
		return contractCase{name: name, header: header, configure: configure, body: validBody,
			wantStatus: 200, wantBody: validAnswer, wantForward: validForward}
	}
	cases = append(cases,
		unauth("no credential", "Content-Type", "application/json"),
		unauth("wrong x-api-key", "X-Api-Key", "wrong"),
		unauth("x-api-key prefix of the secret", "X-Api-Key", utSecret[:len(utSecret)-1]),
		unauth("x-api-key secret plus a byte", "X-Api-Key", utSecret+"x"),
		unauth("x-api-key in other case", "X-Api-Key", strings.ToUpper(utSecret)),
		unauth("wrong bearer", "Authorization", "Bearer wrong"),
		ok("secret without a scheme (the Edge Function took it)", nil, "Authorization", utSecret),
		unauth("secret with the Basic scheme", "Authorization", "Basic "+utSecret),
		unauth("secret with the Token scheme", "Authorization", "Token "+utSecret),
		unauth("empty bearer", "Authorization", "Bearer "),
		unauth("secret in apikey header", "Apikey", utSecret),
		unauth("unrelated header only", "X-Client-Info", "x"),
		unauth("rotated-out secret", "X-Api-Key", utSecret2),
		ok("x-api-key", nil, "X-Api-Key", utSecret),
		ok("x-api-key with surrounding spaces", nil, "X-Api-Key", "  "+utSecret+" "),
		ok("Bearer", nil, "Authorization", "Bearer "+utSecret),
		ok("bearer lower case", nil, "Authorization", "bearer "+utSecret),
		ok("BEARER upper case", nil, "Authorization", "BEARER "+utSecret),
		ok("bEaReR mixed case", nil, "Authorization", "bEaReR "+utSecret),
		ok("wrong x-api-key but valid bearer", nil, "X-Api-Key", "wrong", "Authorization", "Bearer "+utSecret),
		ok("valid x-api-key but wrong bearer", nil, "X-Api-Key", utSecret, "Authorization", "Bearer wrong"),
		ok("two secrets: first by x-api-key", twoSecrets, "X-Api-Key", utSecret),
		ok("two secrets: second by x-api-key", twoSecrets, "X-Api-Key", utSecret2),
		ok("two secrets: first by bearer", twoSecrets, "Authorization", "Bearer "+utSecret),
		ok("two secrets: second by bearer", twoSecrets, "Authorization", "bearer "+utSecret2),
		ok("three secrets from one multi-value line: third", func(h *Handler) {
			h.Organizations[0].Secrets = []string{"alpha-one", "beta-two", utSecret}
		}, "X-Api-Key", utSecret),
		ok("no Content-Type header", nil, "X-Api-Key", utSecret),
		ok("JSON Content-Type with charset", nil, "X-Api-Key", utSecret, "Content-Type", "application/json; charset=utf-8"),
	)

	// Body size.
	cases = append(cases,
		contractCase{name: "declared Content-Length over max_body", configure: maxBody64, body: withBody(65),
			wantStatus: 413, wantBody: errTooLarge},
		contractCase{name: "chunked body over max_body", configure: maxBody64, body: withBody(65), chunked: true,
			wantStatus: 413, wantBody: errTooLarge},
		contractCase{name: "chunked body far over max_body", configure: maxBody64, body: withBody(64 << 10), chunked: true,
			wantStatus: 413, wantBody: errTooLarge},
		contractCase{name: "over default 1MiB", body: withBody(1<<20 + 1), chunked: true,
			wantStatus: 413, wantBody: errTooLarge},
		contractCase{name: "body of exactly max_body", configure: maxBody64, body: withBody(64),
			wantStatus: 200, wantBody: `{"success":true,"booking_id":"b-1","event_type":"unknown","sync_result":` + utUpstreamOK + `}`,
			wantForward: `{"booking_id":"b-1","syncMode":"single","organization_id":"org-1"}`},
		contractCase{name: "chunked body of exactly max_body", configure: maxBody64, body: withBody(64), chunked: true,
			wantStatus: 200, wantBody: `{"success":true,"booking_id":"b-1","event_type":"unknown","sync_result":` + utUpstreamOK + `}`,
			wantForward: `{"booking_id":"b-1","syncMode":"single","organization_id":"org-1"}`},
	)

	// Not a JSON object.
	for name, body := range map[string]string{
		"not JSON":             `booking_id=b-1`,
		"array":                `[{"booking_id":"b-1"}]`,
		"string scalar":        `"b-1"`,
		"number scalar":        `42`,
		"null":                 `null`,
		"true":                 `true`,
		"empty body":           ``,
		"whitespace body":      " \n\t ",
		"truncated object":     `{"booking_id":"b-1"`,
		"trailing garbage":     `{"booking_id":"b-1"} x`,
		"two objects":          `{"booking_id":"b-1"}{"booking_id":"b-2"}`,
		"duplicate booking_id": `{"booking_id":"b-1","booking_id":"b-2"}`,
		"escaped duplicate":    `{"booking_id":"b-1","booking\u005fid":"b-2"}`,
		"invalid UTF-8":        "{\"booking_id\":\"b-\xff\"}",
		"single quotes":        `{'booking_id':'b-1'}`,
		"trailing comma":       `{"booking_id":"b-1",}`,
	} {
		cases = append(cases, contractCase{name: "invalid JSON: " + name, body: body, wantStatus: 400, wantBody: errInvalidJSONBody})
	}

	// booking_id.
	for name, body := range map[string]string{
		"missing":    `{"organization_id":"org-1"}`,
		"empty obj":  `{}`,
		"null":       `{"booking_id":null}`,
		"empty":      `{"booking_id":""}`,
		"nested one": `{"data":{"booking_id":"b-1"}}`,
	} {
		cases = append(cases, contractCase{name: "booking_id " + name, body: body, wantStatus: 400, wantBody: errMissingBooking})
	}
	for name, body := range map[string]string{
		"float":             `{"booking_id":1.5}`,
		"integral float":    `{"booking_id":1.0}`,
		"exponent":          `{"booking_id":1e3}`,
		"bool":              `{"booking_id":true}`,
		"false":             `{"booking_id":false}`,
		"object":            `{"booking_id":{"id":"b-1"}}`,
		"array":             `{"booking_id":["b-1"]}`,
		"257-byte string":   `{"booking_id":"` + strings.Repeat("a", 257) + `"}`,
		"string w/ newline": `{"booking_id":"b-1\nX-Injected: 1"}`,
		"string w/ CR":      `{"booking_id":"b-1\r"}`,
		"string w/ tab":     `{"booking_id":"b\t1"}`,
		"string w/ NUL":     `{"booking_id":"b\u00001"}`,
		"string w/ DEL":     "{\"booking_id\":\"b\x7f1\"}",
		"string w/ C1":      `{"booking_id":"b\u00851"}`,
		"line separator":    `{"booking_id":"b\u20281"}`,
		"blank string":      `{"booking_id":"   "}`,
	} {
		cases = append(cases, contractCase{name: "booking_id " + name, body: body, wantStatus: 400, wantBody: errInvalidBooking})
	}
	b256 := strings.Repeat("a", 256)
	cases = append(cases,
		contractCase{name: "integer booking_id forwarded as a number", body: `{"booking_id":12345}`,
			wantStatus:  200,
			wantBody:    `{"success":true,"booking_id":12345,"event_type":"unknown","sync_result":` + utUpstreamOK + `}`,
			wantForward: `{"booking_id":12345,"syncMode":"single","organization_id":"org-1"}`},
		contractCase{name: "negative integer booking_id", body: `{"booking_id":-7}`,
			wantStatus:  200,
			wantBody:    `{"success":true,"booking_id":-7,"event_type":"unknown","sync_result":` + utUpstreamOK + `}`,
			wantForward: `{"booking_id":-7,"syncMode":"single","organization_id":"org-1"}`},
		contractCase{name: "integer beyond float64 precision forwarded digit for digit", body: `{"booking_id":123456789012345678901234567890}`,
			wantStatus:  200,
			wantBody:    `{"success":true,"booking_id":123456789012345678901234567890,"event_type":"unknown","sync_result":` + utUpstreamOK + `}`,
			wantForward: `{"booking_id":123456789012345678901234567890,"syncMode":"single","organization_id":"org-1"}`},
		contractCase{name: "numeric string booking_id stays a string", body: `{"booking_id":"12345"}`,
			wantStatus:  200,
			wantBody:    `{"success":true,"booking_id":"12345","event_type":"unknown","sync_result":` + utUpstreamOK + `}`,
			wantForward: `{"booking_id":"12345","syncMode":"single","organization_id":"org-1"}`},
		contractCase{name: "string 1e3 is a string", body: `{"booking_id":"1e3"}`,
			wantStatus:  200,
			wantBody:    `{"success":true,"booking_id":"1e3","event_type":"unknown","sync_result":` + utUpstreamOK + `}`,
			wantForward: `{"booking_id":"1e3","syncMode":"single","organization_id":"org-1"}`},
		contractCase{name: "256-byte booking_id", body: `{"booking_id":"` + b256 + `"}`,
			wantStatus:  200,
			wantBody:    `{"success":true,"booking_id":"` + b256 + `","event_type":"unknown","sync_result":` + utUpstreamOK + `}`,
			wantForward: `{"booking_id":"` + b256 + `","syncMode":"single","organization_id":"org-1"}`},
		contractCase{name: "HTML-ish booking_id forwarded byte for byte", body: `{"booking_id":"a&b<c>"}`,
			wantStatus:  200,
			wantBody:    `{"success":true,"booking_id":"a&b<c>","event_type":"unknown","sync_result":` + utUpstreamOK + `}`,
			wantForward: `{"booking_id":"a&b<c>","syncMode":"single","organization_id":"org-1"}`},
		contractCase{name: "unicode booking_id", body: `{"booking_id":"réservation-✓"}`,
			wantStatus:  200,
			wantBody:    `{"success":true,"booking_id":"réservation-✓","event_type":"unknown","sync_result":` + utUpstreamOK + `}`,
			wantForward: `{"booking_id":"réservation-✓","syncMode":"single","organization_id":"org-1"}`},
		contractCase{name: "organization_id and event_type forwarded, other fields not", configure: sharedKey,
			body:        `{"event_type":"booking.created","extra":{"booking_id":"nested"},"organization_id":"org-9","booking_id":"b-1","data":[1,2]}`,
			wantStatus:  200,
			wantBody:    validAnswer,
			wantForward: `{"booking_id":"b-1","syncMode":"single","organization_id":"org-9","event_type":"booking.created"}`},
		contractCase{name: "event_type answered and forwarded normalised", body: `{"booking_id":"b-1","event_type":"Booking_Created"}`,
			wantStatus:  200,
			wantBody:    `{"success":true,"booking_id":"b-1","event_type":"booking.created","sync_result":` + utUpstreamOK + `}`,
			wantForward: `{"booking_id":"b-1","syncMode":"single","organization_id":"org-1","event_type":"booking.created"}`},
		contractCase{name: "unknown event_type accepted, lower-cased", body: `{"booking_id":"b-1","event_type":"Offer.Signed"}`,
			wantStatus:  200,
			wantBody:    `{"success":true,"booking_id":"b-1","event_type":"offer.signed","sync_result":` + utUpstreamOK + `}`,
			wantForward: `{"booking_id":"b-1","syncMode":"single","organization_id":"org-1","event_type":"offer.signed"}`},
		contractCase{name: "null event_type is unknown", body: `{"booking_id":"b-1","event_type":null,"organization_id":null}`,
			wantStatus:  200,
			wantBody:    `{"success":true,"booking_id":"b-1","event_type":"unknown","sync_result":` + utUpstreamOK + `}`,
			wantForward: `{"booking_id":"b-1","syncMode":"single","organization_id":"org-1"}`},
	)

	// organization_id: a shared key needs it in the body (as the
	// platform's receive-booking did, before booking_id); a bound key
	// supplies it and may not act for another organization.
	cases = append(cases,
		contractCase{name: "shared key: organization_id missing", configure: sharedKey, body: validBody,
			wantStatus: 400, wantBody: errMissingOrg},
		contractCase{name: "shared key: organization_id null", configure: sharedKey, body: `{"booking_id":"b-1","organization_id":null}`,
			wantStatus: 400, wantBody: errMissingOrg},
		contractCase{name: "shared key: organization_id empty", configure: sharedKey, body: `{"booking_id":"b-1","organization_id":""}`,
			wantStatus: 400, wantBody: errMissingOrg},
		contractCase{name: "shared key: organization_id checked before booking_id", configure: sharedKey, body: `{}`,
			wantStatus: 400, wantBody: errMissingOrg},
		contractCase{name: "invalid organization_id checked before booking_id", body: `{"booking_id":true,"organization_id":true}`,
			wantStatus: 400, wantBody: errInvalidOrg},
		contractCase{name: "bound key: another organization", body: `{"booking_id":"b-1","organization_id":"org-2"}`,
			wantStatus: 403, wantBody: `{"error":"Forbidden"}`},
		contractCase{name: "bound key: another organization, as a number", body: `{"booking_id":"b-1","organization_id":2}`,
			wantStatus: 403, wantBody: `{"error":"Forbidden"}`},
		contractCase{name: "bound key: another organization before booking_id", body: `{"organization_id":"org-2"}`,
			wantStatus: 403, wantBody: `{"error":"Forbidden"}`},
		contractCase{name: "bound key: its own organization named", body: `{"booking_id":"b-1","organization_id":"org-1"}`,
			wantStatus:  200,
			wantBody:    `{"success":true,"booking_id":"b-1","event_type":"unknown","sync_result":` + utUpstreamOK + `}`,
			wantForward: `{"booking_id":"b-1","syncMode":"single","organization_id":"org-1"}`},
		contractCase{name: "require organization_id is accepted and changes nothing", configure: requireOrg,
			body:        `{"booking_id":"b-1","organization_id":"org-1"}`,
			wantStatus:  200,
			wantBody:    `{"success":true,"booking_id":"b-1","event_type":"unknown","sync_result":` + utUpstreamOK + `}`,
			wantForward: `{"booking_id":"b-1","syncMode":"single","organization_id":"org-1"}`},
	)
	for name, v := range map[string]string{
		"bool": `true`, "float": `1.5`, "object": `{}`, "array": `["o"]`, "newline": `"org\n1"`,
		"257 bytes": `"` + strings.Repeat("o", 257) + `"`, "line separator": `"org\u20281"`,
	} {
		cases = append(cases, contractCase{name: "organization_id " + name,
			body: `{"booking_id":"b-1","organization_id":` + v + `}`, wantStatus: 400, wantBody: errInvalidOrg})
		cases = append(cases, contractCase{name: "shared key, organization_id " + name, configure: sharedKey,
			body: `{"booking_id":"b-1","organization_id":` + v + `}`, wantStatus: 400, wantBody: errInvalidOrg})
	}
	for name, v := range map[string]string{
		"bool": `false`, "float": `2.5`, "object": `{"type":"created"}`, "array": `["created"]`,
		"newline": `"created\n"`, "NUL": `"created\u0000"`, "257 bytes": `"` + strings.Repeat("e", 257) + `"`,
		"blank": `"  "`,
	} {
		cases = append(cases, contractCase{name: "event_type " + name,
			body: `{"booking_id":"b-1","event_type":` + v + `}`, wantStatus: 400, wantBody: errInvalidEvent})
	}

	// Upstream answers.
	cases = append(cases,
		contractCase{name: "upstream 200 JSON", body: validBody, wantStatus: 200, wantBody: validAnswer, wantForward: validForward},
		contractCase{name: "upstream 201 envelope", body: validBody, upstream: testkit.JSON(201, utUpstreamOK),
			wantStatus: 200, wantBody: validAnswer, wantForward: validForward},
		contractCase{name: "upstream 201 JSON without outcome", body: validBody, upstream: testkit.JSON(201, `{"created":1}`),
			wantStatus: 502, wantBody: `{"error":"Sync failed","upstream_status":201,"details":{"created":1}}`,
			wantForward: validForward},
		contractCase{name: "upstream 200 JSON array", body: validBody, upstream: testkit.JSON(200, `[1,2]`),
			wantStatus: 502, wantBody: `{"error":"Sync failed","upstream_status":200,"details":[1,2]}`,
			wantForward: validForward},
		contractCase{name: "upstream 200 success true without outcome", body: validBody, upstream: testkit.JSON(200, `{"success":true}`),
			wantStatus: 502, wantBody: `{"error":"Sync failed","upstream_status":200,"details":{"success":true}}`,
			wantForward: validForward},
		contractCase{name: "upstream 200 envelope of another booking", body: validBody,
			upstream:   testkit.JSON(200, strings.Replace(utUpstreamOK, `"b-1"`, `"b-2"`, 1)),
			wantStatus: 502, wantForward: validForward,
			checkBody: func(t *testing.T, body map[string]any) { assert.Equal(t, "Sync failed", body["error"]) }},
		contractCase{name: "legacy contract: upstream 200 success true", body: validBody, upstream: testkit.JSON(200, `{"success":true}`),
			configure:  func(h *Handler) { h.Contract = contractLegacy },
			wantStatus: 200, wantBody: `{"success":true,"booking_id":"b-1","event_type":"booking.created","sync_result":{"success":true}}`,
			wantForward: validForward},
		contractCase{name: "legacy contract: upstream 200 success false", body: validBody, upstream: testkit.JSON(200, `{"success":false}`),
			configure:  func(h *Handler) { h.Contract = contractLegacy },
			wantStatus: 502, wantBody: `{"error":"Sync failed","upstream_status":200,"details":{"success":false}}`,
			wantForward: validForward},
		contractCase{name: "upstream 200 success false", body: validBody,
			upstream:   testkit.JSON(200, `{"success":false,"error":"booking not found"}`),
			wantStatus: 502, wantBody: `{"error":"Sync failed","upstream_status":200,"details":{"success":false,"error":"booking not found"}}`,
			wantForward: validForward},
		contractCase{name: "upstream 202 success false", body: validBody,
			upstream:   testkit.JSON(202, `{"success":false}`),
			wantStatus: 502, wantBody: `{"error":"Sync failed","upstream_status":202,"details":{"success":false}}`,
			wantForward: validForward},
		contractCase{name: "upstream 500 JSON", body: validBody, upstream: testkit.JSON(500, `{"error":"db down","code":"E42"}`),
			wantStatus: 502, wantBody: `{"error":"Sync failed","upstream_status":500,"details":{"error":"db down","code":"E42"}}`,
			wantForward: validForward},
		contractCase{name: "upstream 404 JSON", body: validBody, upstream: testkit.JSON(404, `{"error":"no such booking"}`),
			wantStatus: 502, wantBody: `{"error":"Sync failed","upstream_status":404,"details":{"error":"no such booking"}}`,
			wantForward: validForward},
		contractCase{name: "upstream 401 JSON (bad target_key)", body: validBody, upstream: testkit.JSON(401, `{"msg":"Invalid JWT"}`),
			wantStatus: 502, wantBody: `{"error":"Sync failed","upstream_status":401,"details":{"msg":"Invalid JWT"}}`,
			wantForward: validForward},
		contractCase{name: "upstream 200 HTML", body: validBody, upstream: testkit.Typed(200, "text/html", "<html>maintenance</html>"),
			wantStatus: 502, wantBody: `{"error":"Sync failed","upstream_status":200,"details":"<html>maintenance</html>"}`,
			wantForward: validForward},
		contractCase{name: "upstream 503 text", body: validBody, upstream: testkit.Typed(503, "text/plain", "upstream connect error"),
			wantStatus: 502, wantBody: `{"error":"Sync failed","upstream_status":503,"details":"upstream connect error"}`,
			wantForward: validForward},
		contractCase{name: "upstream 500 HTML of 5 KiB cut to 2 KiB", body: validBody, upstream: testkit.Typed(500, "text/html", html5k),
			wantStatus: 502, wantForward: validForward,
			checkBody: func(t *testing.T, body map[string]any) {
				assert.Equal(t, "Sync failed", body["error"])
				assert.EqualValues(t, 500, body["upstream_status"])
				details, ok := body["details"].(string)
				require.True(t, ok, "details must be the text: %v", body["details"])
				assert.LessOrEqual(t, len(details), 2048)
				assert.GreaterOrEqual(t, len(details), 2048-3, "cut at the last UTF-8 boundary before 2 KiB")
				assert.True(t, utf8.ValidString(details))
				assert.True(t, strings.HasPrefix(html5k, details), "details is the start of the upstream text")
				assert.Len(t, body, 3)
			}},
	)
	return cases
}

// bigHTML is an HTML page of at least n bytes with multi-byte characters,
// placed so that 2 KiB falls inside one.
func bigHTML(n int) string {
	var b strings.Builder
	b.WriteString("<html><body>")
	for b.Len() < n {
		b.WriteString("<p>Zürich ✓ été</p>\n")
	}
	b.WriteString("</body></html>")
	return b.String()
}

func TestServeHTTPContract(t *testing.T) {
	for _, tc := range contractCases() {
		t.Run(tc.name, func(t *testing.T) {
			up := testkit.NewStandIn(t)
			up.Respond(tc.upstream)
			h := newTestHandler(t, up.Target(), tc.configure)
			method := tc.method
			if method == "" {
				method = http.MethodPost
			}
			header := tc.header
			if header == nil {
				header = []string{"X-Api-Key", utSecret, "Content-Type", "application/json"}
			}
			r := webhookRequest(method, tc.body, header...)
			if tc.chunked {
				r.Body = io.NopCloser(io.MultiReader(strings.NewReader(tc.body)))
				r.ContentLength = -1
				r.TransferEncoding = []string{"chunked"}
			}
			w := serveTest(t, h, r)

			assert.Equal(t, tc.wantStatus, w.Code, "answer: %s", w.Body.String())
			switch {
			case tc.wantStatus == http.StatusNoContent:
				assert.Empty(t, w.Body.String())
			case tc.checkBody != nil:
				assert.Equal(t, "application/json", w.Header().Get("Content-Type"))
				tc.checkBody(t, decodeObject(t, w.Body.String()))
			default:
				assert.Equal(t, "application/json", w.Header().Get("Content-Type"))
				want := tc.wantBody
				if calls := up.Calls(); len(calls) == 1 && tc.upstream == nil {
					// The stand-in echoed this call's ids.
					want = strings.ReplaceAll(want, utUpstreamOK, testkit.Envelope(&calls[0], "applied"))
				}
				assert.JSONEq(t, want, w.Body.String())
				assert.Equal(t, fmt.Sprint(w.Body.Len()), w.Header().Get("Content-Length"))
			}
			for k, v := range tc.wantHeader {
				if v == "" {
					assert.Empty(t, w.Header().Values(k), "header %s must be absent", k)
				} else {
					assert.Equal(t, []string{v}, w.Header().Values(k), "header %s", k)
				}
			}

			calls := up.Calls()
			if tc.wantForward == "" {
				assert.Empty(t, calls, "a rejected request must never reach import-bookings")
			} else if assert.Len(t, calls, 1) {
				assert.Equal(t, tc.wantForward, calls[0].Body, "forwarded body")
				assert.Equal(t, http.MethodPost, calls[0].Method)
				assert.Equal(t, utPath, calls[0].Path)
			}
			if method == http.MethodPost {
				assert.Empty(t, r.Header.Values("X-Api-Key"), "x-api-key must be stripped from the request")
				assert.Empty(t, r.Header.Values("Authorization"), "Authorization must be stripped from the request")
			}
		})
	}
}

// TestServeHTTPUpstreamRequest checks what import-bookings receives: the
// target key in both headers, JSON, the User-Agent, Caddy's request ID, and
// never the caller's credentials.
func TestServeHTTPUpstreamRequest(t *testing.T) {
	up := testkit.NewStandIn(t)
	up.Respond(nil)
	h := newTestHandler(t, up.Target()+"?region=eu", nil)

	for _, cred := range [][]string{
		{"X-Api-Key", utSecret},
		{"Authorization", "Bearer " + utSecret},
	} {
		r := webhookRequest(http.MethodPost, `{"booking_id":"b-7","organization_id":"org-1"}`,
			cred[0], cred[1], "Content-Type", "application/json",
			"Apikey", "caller-apikey", "Cookie", "session=caller", "X-Client-Info", "supabase-js/2")
		repl := caddy.NewReplacer()
		repl.Set("http.request.uuid", "req-uuid-1234")
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
		w := serveTest(t, h, r)
		require.Equal(t, 200, w.Code, w.Body.String())
	}

	calls := up.Calls()
	require.Len(t, calls, 2)
	for _, c := range calls {
		assert.Equal(t, http.MethodPost, c.Method)
		assert.Equal(t, utPath, c.Path)
		assert.Equal(t, "region=eu", c.RawQuery, "the target's query string is kept")
		assert.Equal(t, `{"booking_id":"b-7","syncMode":"single","organization_id":"org-1"}`, c.Body)
		assert.Equal(t, []string{"application/json"}, c.Header.Values("Content-Type"))
		assert.Equal(t, []string{"Bearer " + utTargetKey}, c.Header.Values("Authorization"))
		assert.Equal(t, []string{utTargetKey}, c.Header.Values("Apikey"))
		assert.True(t, strings.HasPrefix(c.Header.Get("User-Agent"), "caddy-receive-booking/"), c.Header.Get("User-Agent"))
		assert.Equal(t, "req-uuid-1234", c.Header.Get("X-Request-Id"))
		assert.Empty(t, c.Header.Values("X-Api-Key"), "the caller's x-api-key is never forwarded")
		assert.Empty(t, c.Header.Values("Cookie"), "caller headers are not forwarded")
		assert.Empty(t, c.Header.Values("X-Client-Info"))
		for name, vals := range c.Header {
			for _, v := range vals {
				assert.NotContains(t, v, utSecret, "header %s carries the caller's secret", name)
			}
		}
	}
}

func TestServeHTTPNoTargetKeyNoUpstreamAuth(t *testing.T) {
	up := testkit.NewStandIn(t)
	up.Respond(nil)
	h := newTestHandler(t, up.Target(), func(h *Handler) { h.TargetKey = "" })
	w := serveTest(t, h, webhookRequest(http.MethodPost, validBody, "Authorization", "Bearer "+utSecret))
	require.Equal(t, 200, w.Code, w.Body.String())
	calls := up.Calls()
	require.Len(t, calls, 1)
	assert.Empty(t, calls[0].Header.Values("Authorization"), "the caller's Authorization is never forwarded")
	assert.Empty(t, calls[0].Header.Values("Apikey"))
}

// TestServeHTTPConnectionsReused checks that one handler keeps one client:
// consecutive syncs share a connection.
func TestServeHTTPConnectionsReused(t *testing.T) {
	up := testkit.NewStandIn(t)
	up.Respond(nil)
	h := newTestHandler(t, up.Target(), nil)
	for i := 0; i < 5; i++ {
		w := postAuthed(t, h, fmt.Sprintf(`{"booking_id":"b-%d"}`, i))
		require.Equal(t, 200, w.Code, w.Body.String())
	}
	conns := map[string]bool{}
	for _, c := range up.Calls() {
		conns[c.RemoteAddr] = true
	}
	assert.Len(t, conns, 1, "five sequential syncs should reuse one connection")
}

func TestServeHTTPUpstreamUnreachable(t *testing.T) {
	target := testkit.ClosedPortURL(t) + utPath + "?key=SECRETQ"
	h := newTestHandler(t, target, nil)
	w := postAuthed(t, h, validBody)
	require.Equal(t, 502, w.Code, w.Body.String())
	assert.Equal(t, "application/json", w.Header().Get("Content-Type"))
	body := decodeObject(t, w.Body.String())
	assert.Equal(t, "Sync failed", body["error"])
	assert.NotContains(t, body, "upstream_status", "no answer arrived: no upstream status")
	details, ok := body["details"].(string)
	require.True(t, ok, "details is the cause as text: %v", body["details"])
	assert.NotEmpty(t, details)
	for _, secret := range []string{"SECRETQ", "key=", utPath, "http://", utTargetKey, utSecret} {
		assert.NotContains(t, details, secret)
	}
	assert.NotContains(t, w.Body.String(), "SECRETQ")
	assert.Len(t, body, 2)
}

// TestServeHTTPTimeout: an upstream slower than timeout is answered 504 and
// its call is cancelled (the stand-in sees its request context end).
func TestServeHTTPTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	up := testkit.NewStandIn(t)
	up.Respond(testkit.BlockUntil(release))
	h := newTestHandler(t, up.Target(), func(h *Handler) { h.Timeout = "200ms" })

	start := time.Now()
	w := postAuthed(t, h, validBody)
	elapsed := time.Since(start)
	assert.Equal(t, 504, w.Code, w.Body.String())
	assert.JSONEq(t, `{"error":"Sync timed out"}`, w.Body.String())
	assert.Equal(t, "application/json", w.Header().Get("Content-Type"))
	assert.GreaterOrEqual(t, elapsed, 190*time.Millisecond)
	assert.Less(t, elapsed, time.Second, "the answer comes at the timeout")
	testkit.WaitFor(t, up.Cancelled, time.Second, "import-bookings to see its request cancelled")
	assert.Len(t, up.Calls(), 1)
	assert.True(t, eventually(time.Second, func() bool { return coalescerIdle(h.coalescer) }))
}

// TestServeHTTPTimeoutWhileReadingUpstreamBody: headers in time, body
// too late, is a timeout too.
func TestServeHTTPTimeoutWhileReadingUpstreamBody(t *testing.T) {
	up := testkit.NewStandIn(t)
	up.Respond(func(w http.ResponseWriter, r *http.Request, _ *testkit.Call) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(200)
		_, _ = io.WriteString(w, `{"success":`)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-time.After(3 * time.Second):
		}
	})
	h := newTestHandler(t, up.Target(), func(h *Handler) { h.Timeout = "200ms" })
	w := postAuthed(t, h, validBody)
	assert.Equal(t, 504, w.Code, w.Body.String())
	assert.JSONEq(t, `{"error":"Sync timed out"}`, w.Body.String())
	testkit.WaitFor(t, up.Cancelled, time.Second, "import-bookings to see its request cancelled")
}

// TestServeHTTPClientGone: when the sender goes away, the upstream call is
// cancelled, nothing is written, and nothing is left behind.
func TestServeHTTPClientGone(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	up := testkit.NewStandIn(t)
	up.Respond(testkit.BlockUntil(release))
	h := newTestHandler(t, up.Target(), func(h *Handler) { h.Timeout = "2s" })

	baseline := runtime.NumGoroutine()

	ctx, cancel := context.WithCancel(context.Background())
	r := webhookRequest(http.MethodPost, validBody, "X-Api-Key", utSecret).WithContext(ctx)
	go func() {
		select {
		case <-up.Arrived:
		case <-time.After(time.Second):
		}
		cancel()
	}()
	start := time.Now()
	w := serveTest(t, h, r)
	assert.Less(t, time.Since(start), time.Second, "ServeHTTP returns as soon as the client is gone")
	assert.Empty(t, w.Body.String(), "nothing is written to a client that went away")

	testkit.WaitFor(t, up.Cancelled, time.Second, "import-bookings to see its request cancelled")
	assert.True(t, eventually(time.Second, func() bool { return coalescerIdle(h.coalescer) }), "the coalescer forgets the booking")
	h.upstream.CloseIdleConnections()
	up.CloseClientConnections()
	n, ok := goroutinesSettle(baseline, time.Second)
	assert.True(t, ok, "goroutines: %d after, %d before", n, baseline)
}

// TestServeHTTPDefaults: an unconfigured handler has the documented
// defaults.
func TestServeHTTPDefaults(t *testing.T) {
	h := newTestHandler(t, "https://example.supabase.co/functions/v1/import-bookings", func(h *Handler) { h.Timeout = "" })
	assert.Equal(t, 12*time.Second, h.timeout)
	assert.EqualValues(t, 1<<20, h.maxBody)
	assert.Equal(t, "*", h.corsOrigin)
	assert.Equal(t, modeSync, h.mode)
}

// TestServeHTTPSecretPlaceholders: {env.*} secrets are resolved at
// provisioning, several at once, and the config keeps the placeholder.
func TestServeHTTPSecretPlaceholders(t *testing.T) {
	t.Setenv("RB_UT_SECRET_A", "from-env-A-123")
	t.Setenv("RB_UT_SECRET_B", "from-env-B-456")
	t.Setenv("RB_UT_KEY", utTargetKey)
	up := testkit.NewStandIn(t)
	up.Respond(nil)
	h := newTestHandler(t, up.Target(), func(h *Handler) {
		h.Organizations[0].Secrets = []string{"{env.RB_UT_SECRET_A}", "{env.RB_UT_SECRET_B}", "{env.RB_UT_RETIRED_UNSET}"}
		h.TargetKey = "{env.RB_UT_KEY}"
	})
	assert.Equal(t, []string{"{env.RB_UT_SECRET_A}", "{env.RB_UT_SECRET_B}", "{env.RB_UT_RETIRED_UNSET}"}, h.Organizations[0].Secrets,
		"the config keeps the placeholders")
	for _, s := range []string{"from-env-A-123", "from-env-B-456"} {
		w := serveTest(t, h, webhookRequest(http.MethodPost, validBody, "X-Api-Key", s))
		assert.Equal(t, 200, w.Code, w.Body.String())
	}
	for _, s := range []string{"{env.RB_UT_SECRET_A}", "", "{env.RB_UT_RETIRED_UNSET}"} {
		w := serveTest(t, h, webhookRequest(http.MethodPost, validBody, "X-Api-Key", s))
		assert.Equal(t, 401, w.Code, "credential %q", s)
	}
	calls := up.Calls()
	require.Len(t, calls, 2)
	assert.Equal(t, "Bearer "+utTargetKey, calls[0].Header.Get("Authorization"))
	assert.Equal(t, utTargetKey, calls[0].Header.Get("Apikey"))
}

func TestProvisionErrors(t *testing.T) {
	up := testkit.NewStandIn(t)
	up.Respond(nil)
	cases := []struct {
		name      string
		configure func(*Handler)
		field     string
		never     []string
	}{
		{"no secret", func(h *Handler) { h.Secrets = nil }, "secret", nil},
		// An empty placeholder is named (it holds no value to give away),
		// see TestUnsetPlaceholderNamed.
		{"secret empty after resolution", func(h *Handler) { h.Secrets = []string{"{env.UNSET_VAR_XYZ}"} },
			"{env.UNSET_VAR_XYZ} is not set", nil},
		{"all secrets empty after resolution", func(h *Handler) {
			h.Secrets = []string{"{env.UNSET_VAR_XYZ}", "{env.UNSET_VAR_XYZ2}"}
		}, "{env.UNSET_VAR_XYZ2} is not set", nil},
		{"secret with unknown placeholder", func(h *Handler) { h.Secrets = []string{"{http.request.header.X-Leak}"} },
			"secret", []string{"X-Leak"}},
		{"target empty", func(h *Handler) { h.Target = "" }, "target", nil},
		{"target empty after resolution", func(h *Handler) { h.Target = "{env.UNSET_TARGET_XYZ}" }, "target is empty: {env.UNSET_TARGET_XYZ}", nil},
		{"target ftp", func(h *Handler) { h.Target = "ftp://files.example.com/import?key=SECRETQ" }, "target",
			[]string{"SECRETQ", "files.example.com", "ftp://"}},
		{"target relative", func(h *Handler) { h.Target = "/functions/v1/import-bookings?key=SECRETQ" }, "target",
			[]string{"SECRETQ", "import-bookings"}},
		{"target without host", func(h *Handler) { h.Target = "https:///import?key=SECRETQ" }, "target", []string{"SECRETQ"}},
		{"target not a URL", func(h *Handler) { h.Target = "http://exa mple.com/%zz?key=SECRETQ" }, "target",
			[]string{"SECRETQ", "exa mple"}},
		{"target scheme-less host", func(h *Handler) { h.Target = "example.supabase.co/functions?key=SECRETQ" }, "target",
			[]string{"SECRETQ", "supabase"}},
		{"bad timeout", func(h *Handler) { h.Timeout = "soon" }, `timeout: not a valid duration: "soon"`, nil},
		{"negative timeout", func(h *Handler) { h.Timeout = "-1s" }, "timeout", nil},
		{"zero timeout", func(h *Handler) { h.Timeout = "0s" }, "timeout", nil},
		{"bad max_body", func(h *Handler) { h.MaxBody = "lots" }, "max_body", nil},
		{"zero max_body", func(h *Handler) { h.MaxBody = "0" }, "max_body", nil},
		{"bad require", func(h *Handler) { h.Require = []string{"event_type"} }, "require", nil},
		{"bad mode", func(h *Handler) { h.Mode = "turbo" }, "mode", nil},
		{"bad contract", func(h *Handler) { h.Contract = "lenient" }, "contract", nil},
		{"organization without id", func(h *Handler) { h.Organizations = []Organization{{Secrets: []string{"k-" + utSecret}}} },
			"organization #1", nil},
		{"organization id with a newline", func(h *Handler) {
			h.Organizations = []Organization{{ID: "org\n1", Secrets: []string{"k-" + utSecret}}}
		}, "organization #1", nil},
		{"organization twice", func(h *Handler) {
			h.Organizations = []Organization{{ID: "o", Secrets: []string{"k1"}}, {ID: "o", Secrets: []string{"k2"}}}
		}, `organization "o": configured twice`, nil},
		{"organization without keys", func(h *Handler) { h.Organizations = []Organization{{ID: "o"}} },
			`organization "o": needs a secret or a signing_secret`, nil},
		{"key shared and bound", func(h *Handler) {
			h.Organizations = []Organization{{ID: "o", Secrets: []string{utSecret}}}
		}, `organization "o": secret #1 is also a key of every organization (shared)`, nil},
		{"key of two organizations", func(h *Handler) {
			h.Secrets = []string{"other"}
			h.Organizations = []Organization{{ID: "a", Secrets: []string{"k-" + utSecret}}, {ID: "b", Secrets: []string{"x", "k-" + utSecret}}}
		}, `organization "b": secret #2 is also a key of organization "a"`, []string{"k-" + utSecret}},
		{"signing secret of two organizations", func(h *Handler) {
			h.Organizations = []Organization{{ID: "a", SigningSecrets: []string{testSigningSecret}}, {ID: "b", SigningSecrets: []string{testSigningSecret}}}
		}, `organization "b": signing_secret #1 is also a signing secret of organization "a"`, []string{testSigningSecret, "MfKQ9r8"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("RB_UT_PRESENT", "present-value")
			_, err := provisionTestHandler(t, up.Target(), func(h *Handler) { sharedKey(h); tc.configure(h) })
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.field, "the error names the field")
			for _, s := range append(tc.never, utSecret, utTargetKey) {
				assert.NotContains(t, err.Error(), s, "the error must not echo the value")
			}
		})
	}
}

// TestServeHTTPTargetQueryKeyNotLeaked: a target that carries a key in its
// query string and cannot be reached never shows the key in an answer.
func TestServeHTTPTargetQueryKeyNotLeaked(t *testing.T) {
	for _, target := range []string{
		testkit.ClosedPortURL(t) + "/import?key=SECRETQ",
		"http://user:SECRETQ@" + strings.TrimPrefix(testkit.ClosedPortURL(t), "http://") + "/import",
		"http://rb-ut-no-such-host.invalid/import?key=SECRETQ",
	} {
		h := newTestHandler(t, target, nil)
		w := postAuthed(t, h, validBody)
		assert.Equal(t, 502, w.Code, w.Body.String())
		assert.NotContains(t, w.Body.String(), "SECRETQ")
		assert.NotContains(t, w.Body.String(), "/import")
	}
}

// TestServeHTTPStripsCredentials: after any POST, the request carries
// neither credential header, whatever the outcome.
func TestServeHTTPStripsCredentials(t *testing.T) {
	up := testkit.NewStandIn(t)
	up.Respond(testkit.JSON(500, `{}`))
	h := newTestHandler(t, up.Target(), func(h *Handler) { h.MaxBody = "64" })
	for name, body := range map[string]string{
		"accepted then failed": validBody,
		"invalid JSON":         `nope`,
		"too large":            withBody(100),
	} {
		for _, cred := range [][]string{
			{"X-Api-Key", utSecret}, {"X-Api-Key", "wrong"}, {"Authorization", "Bearer " + utSecret},
			{"Authorization", "Basic Zm9vOmJhcg=="},
		} {
			r := webhookRequest(http.MethodPost, body, cred[0], cred[1], "X-Api-Key", "second", "Authorization", "Bearer x")
			serveTest(t, h, r)
			assert.Empty(t, r.Header.Values("X-Api-Key"), "%s / %s", name, cred)
			assert.Empty(t, r.Header.Values("Authorization"), "%s / %s", name, cred)
		}
	}
}

func TestServeHTTPAnswersAreJSONObjects(t *testing.T) {
	// Every answer with a body is a JSON object whose "error" (when set) is
	// one of the contract's messages.
	up := testkit.NewStandIn(t)
	up.Respond(nil)
	h := newTestHandler(t, up.Target(), nil)
	for _, r := range []*http.Request{
		webhookRequest(http.MethodGet, ""),
		webhookRequest(http.MethodPost, validBody),
		webhookRequest(http.MethodPost, `x`, "X-Api-Key", utSecret),
	} {
		w := serveTest(t, h, r)
		var m map[string]any
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &m))
		assert.Contains(t, m, "error")
		assert.Equal(t, "application/json", w.Header().Get("Content-Type"))
	}
}

// TestServeHTTPLogging: one line per webhook, with the outcome and the
// normalised identifiers, and no secret, key or credential anywhere in any
// log entry, at debug level, whatever the outcome.
func TestServeHTTPLogging(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	logger := zap.New(core)
	const queryKey = "SECRETQ"

	okUp := testkit.NewStandIn(t)
	failUp := testkit.NewStandIn(t)
	failUp.Respond(testkit.JSON(500, `{"error":"db down"}`))
	release := make(chan struct{})
	defer close(release)
	slowUp := testkit.NewStandIn(t)
	slowUp.Respond(testkit.BlockUntil(release))

	build := func(target string, configure func(*Handler)) *Handler {
		h := newTestHandler(t, target, func(h *Handler) {
			h.Organizations[0].Secrets = []string{utSecret, "{env.RB_UT_LOG_SECRET}"}
			if configure != nil {
				configure(h)
			}
		})
		h.logger = logger
		return h
	}
	t.Setenv("RB_UT_LOG_SECRET", "env-S3CRET-789")
	okH := build(okUp.Target()+"?key="+queryKey, nil)
	failH := build(failUp.Target()+"?key="+queryKey, nil)
	slowH := build(slowUp.Target()+"?key="+queryKey, func(h *Handler) { h.Timeout = "150ms" })
	deadH := build(testkit.ClosedPortURL(t)+utPath+"?key="+queryKey, nil)

	type sent struct {
		h       *Handler
		method  string
		body    string
		header  []string
		status  int
		outcome string
		reason  string
		booking string
		event   string
		level   zapcore.Level
	}
	requests := []sent{
		{okH, "POST", `{"booking_id":"b-1","event_type":"booking.created","organization_id":"org-1"}`,
			[]string{"X-Api-Key", utSecret}, 200, "synced", "", "b-1", "booking.created", zapcore.InfoLevel},
		{okH, "POST", `{"booking_id":42,"event_type":"BOOKING_CREATED"}`,
			[]string{"Authorization", "Bearer env-S3CRET-789"}, 200, "synced", "", "42", "booking.created", zapcore.InfoLevel},
		{okH, "POST", `{"booking_id":"b-3","event_type":"booking_created"}`,
			[]string{"Authorization", "bearer " + utSecret}, 200, "synced", "", "b-3", "booking.created", zapcore.InfoLevel},
		{okH, "POST", `{"booking_id":"b-4"}`,
			[]string{"X-Api-Key", utSecret}, 200, "synced", "", "b-4", "unknown", zapcore.InfoLevel},
		{okH, "POST", validBody, []string{"X-Api-Key", utSecret + "-wrong"}, 401, "rejected", "unauthorized", "", "", zapcore.WarnLevel},
		{okH, "POST", validBody, []string{"Authorization", "Bearer " + utTargetKey}, 401, "rejected", "unauthorized", "", "", zapcore.WarnLevel},
		{okH, "POST", validBody, []string{"Authorization", "Basic " + utSecret}, 401, "rejected", "unauthorized", "", "", zapcore.WarnLevel},
		{okH, "GET", "", []string{"X-Api-Key", utSecret}, 405, "rejected", "method", "", "", zapcore.WarnLevel},
		{okH, "POST", `{"booking_id":"` + utSecret + `\n"}`, []string{"X-Api-Key", utSecret}, 400, "rejected", "invalid_field", "", "", zapcore.WarnLevel},
		{okH, "POST", `not json ` + utSecret, []string{"X-Api-Key", utSecret}, 400, "rejected", "invalid_json", "", "", zapcore.WarnLevel},
		{failH, "POST", `{"booking_id":"b-5","event_type":"booking.canceled"}`,
			[]string{"X-Api-Key", utSecret}, 502, "failed", "upstream", "b-5", "booking.canceled", zapcore.ErrorLevel},
		{slowH, "POST", `{"booking_id":"b-6","event_type":"BOOKING.UPDATED"}`,
			[]string{"X-Api-Key", utSecret}, 504, "failed", "timeout", "b-6", "booking.updated", zapcore.ErrorLevel},
		{deadH, "POST", `{"booking_id":"b-7","event_type":"BOOKING_CONFIRMED"}`,
			[]string{"X-Api-Key", utSecret}, 502, "failed", "upstream", "b-7", "booking.confirmed", zapcore.ErrorLevel},
		{okH, "POST", `{"booking_id":"b-9","organization_id":"org-2"}`,
			[]string{"X-Api-Key", utSecret}, 403, "rejected", "organization", "", "", zapcore.WarnLevel},
	}
	for i, s := range requests {
		w := serveTest(t, s.h, webhookRequest(s.method, s.body, s.header...))
		require.Equal(t, s.status, w.Code, "request %d: %s", i, w.Body.String())
		assert.NotContains(t, w.Body.String(), queryKey)
		assert.NotContains(t, w.Body.String(), utTargetKey)
	}
	// A preflight is not a webhook; a client that goes away gets its line
	// too (outcome failed, reason client_gone), checked after the others.
	serveTest(t, okH, webhookRequest(http.MethodOptions, "", "X-Api-Key", utSecret))
	ctx, cancel := context.WithCancel(context.Background())
	testkit.WaitFor(t, slowUp.Arrived, time.Second, "the timed-out sync above")
	go func() {
		select {
		case <-slowUp.Arrived:
		case <-time.After(time.Second):
		}
		cancel()
	}()
	serveTest(t, slowH, webhookRequest(http.MethodPost, `{"booking_id":"b-8"}`, "X-Api-Key", utSecret).WithContext(ctx))

	entries := logs.AllUntimed()
	require.NotEmpty(t, entries)
	for _, e := range entries {
		raw, err := json.Marshal(map[string]any{"msg": e.Message, "logger": e.LoggerName, "fields": e.ContextMap()})
		require.NoError(t, err)
		line := string(raw) + fmt.Sprint(e.ContextMap())
		for _, secret := range []string{utSecret, "env-S3CRET-789", utTargetKey, queryKey} {
			assert.NotContains(t, line, secret, "log entry leaks a secret: %s", line)
		}
	}

	var lines []observer.LoggedEntry
	for _, e := range entries {
		if e.Message == "webhook" {
			lines = append(lines, e)
		}
	}
	require.Len(t, lines, len(requests)+1, "one line per webhook")
	gone := lines[len(lines)-1].ContextMap()
	assert.Equal(t, "failed", gone["outcome"])
	assert.Equal(t, "client_gone", gone["reason"])
	assert.Equal(t, "b-8", gone["booking_id"])
	for i, s := range requests {
		e, f := lines[i], lines[i].ContextMap()
		assert.Equal(t, s.level, e.Level, "request %d level", i)
		assert.Equal(t, s.outcome, f["outcome"], "request %d outcome", i)
		assert.EqualValues(t, s.status, f["status"], "request %d status", i)
		assert.Contains(t, f, "duration", "request %d", i)
		assert.Contains(t, f, "remote_addr", "request %d", i)
		assert.Contains(t, f, "request_id", "request %d", i)
		if s.reason != "" {
			assert.Equal(t, s.reason, f["reason"], "request %d reason", i)
		}
		if s.booking != "" {
			assert.Equal(t, s.booking, f["booking_id"], "request %d booking_id", i)
			assert.Equal(t, s.event, f["event_type"], "request %d event_type normalised", i)
			assert.Contains(t, f, "upstream_status", "request %d", i)
		}
	}
	assert.Equal(t, "org-1", lines[0].ContextMap()["organization_id"])
	assert.EqualValues(t, 500, lines[10].ContextMap()["upstream_status"])
	assert.EqualValues(t, 0, lines[12].ContextMap()["upstream_status"], "unreachable: no upstream status")
}

// TestQueueUnavailableAnswers503: when the webhook cannot be recorded (the
// queue's file cannot be opened) the sender is told to retry, and nothing
// is claimed as accepted.
func TestQueueUnavailableAnswers503(t *testing.T) {
	up := testkit.NewStandIn(t)
	// A directory where the file should be: the engine cannot open it.
	dir := t.TempDir()
	rq := &queue.Config{Driver: queue.SQLite, Location: dir, Settings: queue.Settings{Workers: 1, MaxAttempts: 1, WorkerTimeout: time.Second}}
	e := queue.New(rq, zaptest.NewLogger(t))
	t.Cleanup(func() { _ = e.Destruct() })
	u, _ := url.Parse(up.URL)
	h := &Handler{mode: modeAsync, timeout: time.Second, logger: zaptest.NewLogger(t), upstream: upstream.New(u, "", userAgent, nil), route: queue.DefaultRoute}
	h.queue = newEngineRef()
	h.queue.bind(e)
	a, req := h.enqueue(context.Background(), testWebhook("b9"), "", tracing.Context{}, nil)
	assert.Nil(t, req)
	assert.Equal(t, http.StatusServiceUnavailable, a.status)
	assert.Equal(t, "Queue unavailable", a.body.Error)
	assert.Equal(t, queueRetryAfter, a.retryAfter)
	w := httptest.NewRecorder()
	h.write(w, a)
	assert.Equal(t, queueRetryAfter, w.Header().Get("Retry-After"))
	assert.JSONEq(t, `{"error":"Queue unavailable"}`, w.Body.String())
}
