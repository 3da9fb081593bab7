package receivebooking

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
)

// Fuzz targets for what an unauthenticated sender controls: the webhook
// body and the credential headers. Their seed corpora live under
// testdata/fuzz/<Target>/ and are replayed by every plain `go test` run;
// `go test -run '^$' -fuzz '^FuzzParseWebhook$' -fuzztime 10m .` explores.

// contractMessages are the only errors payload.Parse may answer with.
var contractMessages = map[string]bool{
	"Invalid JSON body":                       true,
	"Missing required field: booking_id":      true,
	"Missing required field: organization_id": true,
	"Invalid field: booking_id":               true,
	"Invalid field: organization_id":          true,
	"Invalid field: event_type":               true,
	"Forbidden":                               true,
}

// safeIdentifier is an independent statement of what may be logged and
// forwarded: valid UTF-8, at most payload.MaxFieldLen bytes, not blank, and free of
// C0/C1 controls, DEL and the JavaScript line separators.
func safeIdentifier(t *testing.T, name, s string, mayBeEmpty bool) {
	t.Helper()
	if s == "" {
		if !mayBeEmpty {
			t.Fatalf("%s accepted empty", name)
		}
		return
	}
	if len(s) > payload.MaxFieldLen {
		t.Fatalf("%s accepted with %d bytes", name, len(s))
	}
	if !utf8.ValidString(s) {
		t.Fatalf("%s accepted with invalid UTF-8: %q", name, s)
	}
	if strings.TrimSpace(s) == "" {
		t.Fatalf("%s accepted blank: %q", name, s)
	}
	for _, r := range s {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			t.Fatalf("%s accepted with control character %U: %q", name, r, s)
		}
	}
}

func FuzzParseWebhook(f *testing.F) {
	for _, s := range []string{
		`{"booking_id":"b1"}`,
		`{"booking_id":42,"organization_id":"org-1","event_type":"booking.created"}`,
		`{"booking_id":"a\nb"}`,
		`{"booking_id":"b1","booking_id":"b2"}`,
		`{"booking_id":1e3}`,
		`[{"booking_id":"b1"}]`,
		`{"booking_id":"b1"} {}`,
		"{\"booking_id\":\"\xff\"}",
	} {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, body []byte, requireOrg bool) {
		bound := "org-bound"
		if requireOrg {
			bound = "" // a shared key: the body must name the organization
		}
		wh, err := payload.Parse(body, bound)
		if err != nil {
			var ie *payload.InputError
			if !errors.As(err, &ie) {
				t.Fatalf("error is not an inputError: %T %v", err, err)
			}
			if !contractMessages[ie.Msg] || ie.Reason == "" {
				t.Fatalf("error outside the contract: %q (%q)", ie.Msg, ie.Reason)
			}
			return
		}
		// Accepted: the body is one valid JSON object.
		if !json.Valid(body) {
			t.Fatalf("accepted invalid JSON: %q", body)
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(body, &obj); err != nil {
			t.Fatalf("accepted a body that is not a JSON object: %v", err)
		}
		if wh.BookingKey == "" || len(wh.BookingID) == 0 {
			t.Fatal("accepted without a booking_id")
		}
		// The literal forwarded upstream re-validates to the same key.
		again, err := payload.Parse([]byte(`{"booking_id":`+string(wh.BookingID)+`}`), "o")
		if err != nil || again.BookingKey != wh.BookingKey || !bytes.Equal(again.BookingID, wh.BookingID) {
			t.Fatalf("booking_id literal %q does not re-validate: %v", wh.BookingID, err)
		}
		// And it is what the body said, as a string or an integer.
		switch wh.BookingID[0] {
		case '"':
			var s string
			if err := json.Unmarshal(wh.BookingID, &s); err != nil || s != wh.BookingKey {
				t.Fatalf("string booking_id %q gives key %q", wh.BookingID, wh.BookingKey)
			}
		default:
			if strings.Trim(string(wh.BookingID), "-0123456789") != "" || string(wh.BookingID) != wh.BookingKey {
				t.Fatalf("numeric booking_id %q gives key %q", wh.BookingID, wh.BookingKey)
			}
		}
		if !bytes.Equal(bytes.TrimSpace(obj[payload.FieldBookingID]), wh.BookingID) {
			t.Fatalf("booking_id %q is not the body's %q", wh.BookingID, obj[payload.FieldBookingID])
		}
		safeIdentifier(t, "booking_id", wh.BookingKey, false)
		safeIdentifier(t, "organization_id", wh.OrganizationID, false)
		if bound != "" && wh.OrganizationID != bound {
			t.Fatalf("a key bound to %q synced as %q", bound, wh.OrganizationID)
		}
		safeIdentifier(t, "event_type", wh.EventType, true)

		// What is forwarded marshals to valid JSON carrying the same values.
		sr := syncRequestOf(wh)
		sr.SyncMode = "single"
		out, err := json.Marshal(sr)
		if err != nil {
			t.Fatalf("upstream.Request does not marshal: %v", err)
		}
		if !json.Valid(out) {
			t.Fatalf("upstream.Request marshals to invalid JSON: %q", out)
		}
		var back struct {
			BookingID      json.RawMessage `json:"booking_id"`
			SyncMode       string          `json:"syncMode"`
			OrganizationID string          `json:"organization_id"`
			EventType      string          `json:"event_type"`
		}
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("forwarded body does not parse: %v", err)
		}
		if back.OrganizationID != wh.OrganizationID || back.EventType != wh.EventType || back.SyncMode != "single" {
			t.Fatalf("forwarded body changed fields: %s", out)
		}
		// encoding/json re-escapes <, > and & inside the literal ("&" is
		// forwarded as "\u0026"), so compare what it means, not its bytes.
		fwd, err := payload.Parse([]byte(`{"booking_id":`+string(back.BookingID)+`}`), "o")
		if err != nil || fwd.BookingKey != wh.BookingKey || (fwd.BookingID[0] == '"') != (wh.BookingID[0] == '"') {
			t.Fatalf("forwarded booking_id %q differs from %q", back.BookingID, wh.BookingID)
		}
		// The answer body marshals too.
		if _, err := json.Marshal(response{Success: true, BookingID: wh.BookingID, EventType: wh.EventTypeOrUnknown()}); err != nil {
			t.Fatalf("answer does not marshal: %v", err)
		}
		if payload.NormalizeEventType(wh.EventType) != wh.EventType {
			t.Fatalf("event_type %q is not normalised", wh.EventType)
		}
		_ = payload.MetricEventType(wh.EventType)
	})
}

// splitValues turns one fuzzed string into several header values.
func splitValues(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// refAuthorization is an independent reading of the contract: RFC 6750's
// "Bearer <token>" with a case-insensitive scheme, or a bare key without
// any space (the lone word "Bearer" is no key).
func refAuthorization(v string) (string, bool) {
	v = strings.TrimSpace(v)
	if v == "" || strings.EqualFold(v, "Bearer") {
		return "", false
	}
	if !strings.Contains(v, " ") {
		return v, true
	}
	scheme, rest, _ := strings.Cut(v, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimSpace(rest), true
}

// presentable reports whether a configured secret can be sent as a header
// credential at all: header values are trimmed and bounded, so a secret
// with surrounding white space or over maxCredentialLen can never match.
func presentable(secret string) bool {
	return secret != "" && secret == strings.TrimSpace(secret) && len(secret) <= maxCredentialLen
}

func FuzzCredentials(f *testing.F) {
	// secret, x-api-key values, Authorization values (both "\n"-separated),
	// and how to present the secret (0: not, 1: x-api-key, 2: Bearer).
	f.Add("s3cret", "s3cret", "", uint8(0))
	f.Add("s3cret", "", "Bearer s3cret", uint8(0))
	f.Add("s3cret", "wrong", "bearer   s3cret  ", uint8(2))
	f.Add("s3cret", "", "Bearer", uint8(2))
	f.Add("s3cret", "a\nb\nc\nd\ne\nf\ng\nh", "", uint8(1))
	f.Add("s3cret", "", "Basic s3cret\nToken s3cret", uint8(0))
	f.Add("s3cret", "s3cre", "Bearer s3crett", uint8(0))
	f.Add("s3cret", strings.Repeat("k", 8192), "", uint8(1))
	f.Add("S3CRET", " \t", "BEARER\ts3cret", uint8(2))
	f.Fuzz(func(t *testing.T, secret, keys, auths string, present uint8) {
		keyVals, authVals := splitValues(keys), splitValues(auths)
		h := http.Header{}
		for _, v := range keyVals {
			h.Add(headerAPIKey, v)
		}
		for _, v := range authVals {
			h.Add(headerAuthorization, v)
		}
		switch present % 3 {
		case 1:
			keyVals = append(keyVals, secret)
			h.Add(headerAPIKey, secret)
		case 2:
			authVals = append(authVals, "Bearer "+secret)
			h.Add(headerAuthorization, "Bearer "+secret)
		}

		// authorizationToken agrees with the reference on every value.
		for _, v := range authVals {
			tok, ok := authorizationToken(v)
			rtok, rok := refAuthorization(v)
			if ok != rok || tok != rtok {
				t.Fatalf("authorizationToken(%q) = %q, %v; want %q, %v", v, tok, ok, rtok, rok)
			}
			if ok && tok != strings.TrimSpace(tok) {
				t.Fatalf("bearer token %q keeps white space", tok)
			}
		}

		// credentials agrees with the reference and respects its bounds.
		// Empty values present nothing and are skipped.
		var want []string
		for _, v := range keyVals {
			if v = strings.TrimSpace(v); v != "" {
				want = append(want, v)
			}
		}
		for _, v := range authVals {
			if tok, ok := refAuthorization(v); ok && tok != "" {
				want = append(want, tok)
			}
		}
		wantOK := len(want) > 0 && len(want) <= maxCredentials
		for _, c := range want {
			if len(c) > maxCredentialLen {
				wantOK = false
			}
		}
		creds, ok := credentials(h.Clone())
		if ok != wantOK {
			t.Fatalf("credentials ok = %v, want %v for %q", ok, wantOK, want)
		}
		if len(creds) > maxCredentials {
			t.Fatalf("%d credentials exceed the cap of %d", len(creds), maxCredentials)
		}
		if ok {
			if strings.Join(creds, "\x00") != strings.Join(want, "\x00") {
				t.Fatalf("credentials = %q, want %q", creds, want)
			}
		} else if creds != nil {
			t.Fatalf("rejected credentials returned %q", creds)
		}

		// authenticate: accepted exactly when a well-formed set of at most
		// maxCredentials credentials contains the secret, and the headers
		// are stripped either way.
		set := newSecretSet([]string{"other-secret", secret})
		hdr := h.Clone()
		got, _, _ := set.authenticate(hdr)
		contains := false
		for _, c := range want {
			contains = contains || c == secret || c == "other-secret"
		}
		if got != (wantOK && contains) {
			t.Fatalf("authenticate = %v, want %v (creds %q, secret %q)", got, wantOK && contains, want, secret)
		}
		if present%3 != 0 && wantOK && presentable(secret) && !got {
			t.Fatalf("the configured secret %q was presented and not accepted", secret)
		}
		if len(hdr.Values(headerAPIKey)) != 0 || len(hdr.Values(headerAuthorization)) != 0 {
			t.Fatal("credentials were not stripped")
		}
	})
}
