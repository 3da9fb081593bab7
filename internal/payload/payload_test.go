package payload

// Table tests of webhook validation: every contract message, limits,
// linear-time duplicate detection.

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseWebhook(t *testing.T) {
	const (
		invalidJSON = "Invalid JSON body"
		missingB    = "Missing required field: booking_id"
		invalidB    = "Invalid field: booking_id"
		missingO    = "Missing required field: organization_id"
		invalidO    = "Invalid field: organization_id"
		invalidE    = "Invalid field: event_type"
	)
	type want struct {
		err     string
		literal string // booking_id JSON literal
		key     string
		org     string
		event   string
	}
	cases := []struct {
		name string
		body string
		// unbound: the sender's key is shared, so the body must name the
		// organization; otherwise the key belongs to "org-bound".
		unbound bool
		want    want
	}{
		{"string id", `{"booking_id":"b-1"}`, false, want{literal: `"b-1"`, key: "b-1"}},
		{"integer id", `{"booking_id":123}`, false, want{literal: `123`, key: "123"}},
		{"negative integer", `{"booking_id":-42}`, false, want{literal: `-42`, key: "-42"}},
		{"zero", `{"booking_id":0}`, false, want{literal: `0`, key: "0"}},
		{"escaped string kept as literal", `{"booking_id":"b\u002d1"}`, false, want{literal: `"b\u002d1"`, key: "b-1"}},
		{"whitespace everywhere", " \n{ \"booking_id\" :\t\"b-1\" ,\r\n\"x\": [ 1 , {\"y\":\"}\"} ] } \n", false, want{literal: `"b-1"`, key: "b-1"}},
		{"all fields", `{"booking_id":"b-1","organization_id":"org-1","event_type":"booking.created"}`, true,
			want{literal: `"b-1"`, key: "b-1", org: "org-1", event: "booking.created"}},
		{"integer organization_id", `{"booking_id":"b-1","organization_id":77}`, true, want{literal: `"b-1"`, key: "b-1", org: "77"}},
		{"nested duplicates are fine", `{"booking_id":"b-1","data":{"a":1,"a":2}}`, false, want{literal: `"b-1"`, key: "b-1"}},
		{"string with escaped quote and brace", `{"note":"\"}{\"booking_id\":\"evil\"","booking_id":"b-1"}`, false, want{literal: `"b-1"`, key: "b-1"}},
		{"unicode id", `{"booking_id":"réservation ✓"}`, false, want{literal: `"réservation ✓"`, key: "réservation ✓"}},
		{"string 1e3", `{"booking_id":"1e3"}`, false, want{literal: `"1e3"`, key: "1e3"}},
		{"many other keys", `{` + manyKeys(200) + `,"booking_id":"b-1"}`, false, want{literal: `"b-1"`, key: "b-1"}},

		{"empty", ``, false, want{err: invalidJSON}},
		{"not JSON", `hello`, false, want{err: invalidJSON}},
		{"array", `[{"booking_id":"b-1"}]`, false, want{err: invalidJSON}},
		{"string", `"b-1"`, false, want{err: invalidJSON}},
		{"number", `1`, false, want{err: invalidJSON}},
		{"null", `null`, false, want{err: invalidJSON}},
		{"trailing garbage", `{"booking_id":"b-1"}garbage`, false, want{err: invalidJSON}},
		{"trailing object", `{"booking_id":"b-1"} {}`, false, want{err: invalidJSON}},
		{"trailing NUL", "{\"booking_id\":\"b-1\"}\x00", false, want{err: invalidJSON}},
		{"duplicate booking_id", `{"booking_id":"b-1","booking_id":"b-2"}`, false, want{err: invalidJSON}},
		{"duplicate booking_id, same value", `{"booking_id":"b-1","booking_id":"b-1"}`, false, want{err: invalidJSON}},
		{"duplicate via escape", `{"booking_id":"b-1","\u0062ooking_id":"b-2"}`, false, want{err: invalidJSON}},
		{"duplicate other key", `{"booking_id":"b-1","x":1,"x":2}`, false, want{err: invalidJSON}},
		{"duplicate among many keys", `{` + manyKeys(100) + `,"k50":1,"booking_id":"b-1"}`, false, want{err: invalidJSON}},
		{"duplicate event_type", `{"booking_id":"b-1","event_type":"a","event_type":"b"}`, false, want{err: invalidJSON}},
		{"invalid UTF-8 in value", "{\"booking_id\":\"b\xff\"}", false, want{err: invalidJSON}},
		{"invalid UTF-8 in other field", "{\"booking_id\":\"b-1\",\"x\":\"\xc3\x28\"}", false, want{err: invalidJSON}},
		{"invalid UTF-8 in key", "{\"booking_id\":\"b-1\",\"\xfe\":1}", false, want{err: invalidJSON}},
		{"raw newline in string", "{\"booking_id\":\"b\n1\"}", false, want{err: invalidJSON}},
		{"unterminated", `{"booking_id":"b-1"`, false, want{err: invalidJSON}},
		{"BOM", "\ufeff{\"booking_id\":\"b-1\"}", false, want{err: invalidJSON}},

		{"missing", `{"x":1}`, false, want{err: missingB}},
		{"empty object", `{}`, false, want{err: missingB}},
		{"null id", `{"booking_id":null}`, false, want{err: missingB}},
		{"empty id", `{"booking_id":""}`, false, want{err: missingB}},
		{"organization checked before booking_id", `{}`, true, want{err: missingO}},
		{"invalid organization checked before booking_id", `{"organization_id":1.5}`, false, want{err: invalidO}},
		{"bound key, other organization", `{"booking_id":"b-1","organization_id":"org-other"}`, false, want{err: "Forbidden"}},
		{"bound key, other organization before booking_id", `{"organization_id":"org-other"}`, false, want{err: "Forbidden"}},
		{"bound key, its own organization", `{"booking_id":"b-1","organization_id":"org-bound"}`, false, want{literal: `"b-1"`, key: "b-1", org: "org-bound"}},
		{"bound key, null organization", `{"booking_id":"b-1","organization_id":null}`, false, want{literal: `"b-1"`, key: "b-1", org: "org-bound"}},
		{"event_type normalised", `{"booking_id":"b-1","event_type":"BOOKING_CREATED"}`, false, want{literal: `"b-1"`, key: "b-1", event: "booking.created"}},

		{"float", `{"booking_id":1.5}`, false, want{err: invalidB}},
		{"number 1e3", `{"booking_id":1e3}`, false, want{err: invalidB}},
		{"number 1E3", `{"booking_id":1E3}`, false, want{err: invalidB}},
		{"negative float", `{"booking_id":-1.0}`, false, want{err: invalidB}},
		{"bool", `{"booking_id":true}`, false, want{err: invalidB}},
		{"object", `{"booking_id":{}}`, false, want{err: invalidB}},
		{"array", `{"booking_id":[]}`, false, want{err: invalidB}},
		{"257 bytes", `{"booking_id":"` + strings.Repeat("b", 257) + `"}`, false, want{err: invalidB}},
		{"129 two-byte runes", `{"booking_id":"` + strings.Repeat("é", 129) + `"}`, false, want{err: invalidB}},
		{"257-digit integer", `{"booking_id":` + strings.Repeat("9", 257) + `}`, false, want{err: invalidB}},
		{"escaped newline", `{"booking_id":"b\n1"}`, false, want{err: invalidB}},
		{"escaped NUL", `{"booking_id":"b\u00001"}`, false, want{err: invalidB}},
		{"escaped ESC", `{"booking_id":"b\u001b[31m"}`, false, want{err: invalidB}},
		{"DEL", "{\"booking_id\":\"b\x7f\"}", false, want{err: invalidB}},
		{"C1 control NEL", `{"booking_id":"b\u0085"}`, false, want{err: invalidB}},
		{"unicode line separator", `{"booking_id":"b\u20281"}`, false, want{err: invalidB}},
		{"unicode paragraph separator raw", "{\"booking_id\":\"b\u2029\"}", false, want{err: invalidB}},
		{"only spaces", `{"booking_id":" "}`, false, want{err: invalidB}},

		{"require org: missing", `{"booking_id":"b-1"}`, true, want{err: missingO}},
		{"require org: null", `{"booking_id":"b-1","organization_id":null}`, true, want{err: missingO}},
		{"require org: empty", `{"booking_id":"b-1","organization_id":""}`, true, want{err: missingO}},
		{"org bool", `{"booking_id":"b-1","organization_id":false}`, false, want{err: invalidO}},
		{"org control", `{"booking_id":"b-1","organization_id":"o\r"}`, false, want{err: invalidO}},
		{"org too long", `{"booking_id":"b-1","organization_id":"` + strings.Repeat("o", 257) + `"}`, false, want{err: invalidO}},
		{"org invalid though not required, booking fine", `{"booking_id":"b-1","organization_id":[]}`, false, want{err: invalidO}},
		{"event_type integer", `{"booking_id":"b-1","event_type":1}`, false, want{err: invalidE}},
		{"event_type control", `{"booking_id":"b-1","event_type":"created\t"}`, false, want{err: invalidE}},
		{"event_type too long", `{"booking_id":"b-1","event_type":"` + strings.Repeat("e", 257) + `"}`, false, want{err: invalidE}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bound, org := "org-bound", tc.want.org
			if tc.unbound {
				bound = ""
			} else if org == "" {
				org = bound
			}
			wh, err := Parse([]byte(tc.body), bound)
			if tc.want.err != "" {
				require.Error(t, err)
				var ie *InputError
				require.ErrorAs(t, err, &ie)
				assert.Equal(t, tc.want.err, ie.Msg)
				if ie == ErrForbidden {
					assert.Equal(t, 403, ie.Status)
				} else {
					assert.Equal(t, 400, ie.Status)
				}
				assert.NotEmpty(t, ie.Reason)
				assert.Nil(t, wh)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want.literal, string(wh.BookingID))
			assert.Equal(t, tc.want.key, wh.BookingKey)
			assert.Equal(t, org, wh.OrganizationID)
			if !strings.Contains(tc.body, `"organization_id"`) || strings.Contains(tc.body, `"organization_id":null`) {
				assert.JSONEq(t, `"`+org+`"`, string(wh.OrganizationIDJSON), "the bound organization is sent upstream")
			}
			assert.Equal(t, tc.want.event, wh.EventType)
		})
	}
}

func manyKeys(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"k`)
		b.WriteString(itoa(i))
		b.WriteString(`":1`)
	}
	return b.String()
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var d []byte
	for ; i > 0; i /= 10 {
		d = append([]byte{byte('0' + i%10)}, d...)
	}
	return string(d)
}

// TestParseWebhookDeepNesting: a 100,000-level nested body is refused as
// invalid JSON, quickly and without exhausting the stack.
func TestParseWebhookDeepNesting(t *testing.T) {
	for _, open := range []string{"[", "{\"a\":"} {
		closer := map[string]string{"[": "]", "{\"a\":": "}"}[open]
		deep := `{"booking_id":"b-1","x":` + strings.Repeat(open, 100000) + `1` + strings.Repeat(closer, 100000) + `}`
		start := time.Now()
		_, err := Parse([]byte(deep), "org-bound")
		assert.EqualError(t, err, "Invalid JSON body")
		assert.Less(t, time.Since(start), 500*time.Millisecond)
	}
	// Unbalanced: only openings.
	start := time.Now()
	_, err := Parse([]byte(`{"booking_id":"b-1","x":`+strings.Repeat("[", 100000)), "org-bound")
	assert.EqualError(t, err, "Invalid JSON body")
	assert.Less(t, time.Since(start), 500*time.Millisecond)
}

// TestParseWebhookManyKeysIsLinear: duplicate detection over a large
// object stays fast.
func TestParseWebhookManyKeysIsLinear(t *testing.T) {
	body := `{` + manyKeys(50000) + `,"booking_id":"b-1"}`
	start := time.Now()
	wh, err := Parse([]byte(body), "org-bound")
	require.NoError(t, err)
	assert.Equal(t, "b-1", wh.BookingKey)
	assert.Less(t, time.Since(start), time.Second)
}

func TestWebhookHelpers(t *testing.T) {
	wh, err := Parse([]byte(`{"booking_id":7,"organization_id":"o"}`), "")
	require.NoError(t, err)
	assert.Equal(t, Key{Org: "o", Booking: "7"}, wh.Key())
	assert.Equal(t, "unknown", wh.EventTypeOrUnknown())
	wh.EventType = "booking.created"
	assert.Equal(t, "booking.created", wh.EventTypeOrUnknown())
}

func TestNormalizeEventType(t *testing.T) {
	// As the platform's receive-booking: lower case, every "_" a ".",
	// nothing else.
	cases := map[string]string{
		"booking_created":       "booking.created",
		"booking.created":       "booking.created",
		"BOOKING_CANCELLED":     "booking.cancelled",
		"Booking.Confirmed":     "booking.confirmed",
		"booking_offer":         "booking.offer",
		"Booking-Created":       "booking-created",
		"booking:created":       "booking:created",
		"booking updated":       "booking updated",
		"booking_offer_created": "booking.offer.created",
		"__x_":                  "..x.",
		"created":               "created",
		"":                      "",
		"Something_Else":        "something.else",
		"booking":               "booking",
	}
	for in, want := range cases {
		assert.Equal(t, want, NormalizeEventType(in), "%q", in)
		assert.Equal(t, want, NormalizeEventType(NormalizeEventType(in)), "idempotent: %q", in)
	}
}

func TestMetricEventType(t *testing.T) {
	for _, known := range []string{"booking.created", "booking.updated", "booking.confirmed", "booking.cancelled", "booking.offer"} {
		assert.Equal(t, known, MetricEventType(known))
		assert.True(t, KnownEventType(known))
	}
	for _, in := range []string{"something_else", "booking", "x", strings.Repeat("a", 256), "created", "Booking.created"} {
		assert.Equal(t, "other", MetricEventType(in), "%q", in)
	}
	assert.Equal(t, "unknown", MetricEventType(""))
	// Through normalisation, every spelling of a known event is bounded
	// to its name, and anything else to "other".
	assert.Equal(t, "booking.created", MetricEventType(NormalizeEventType("BOOKING_CREATED")))
	assert.Equal(t, "other", MetricEventType(NormalizeEventType("Booking-Created")))
	assert.Equal(t, "other", MetricEventType(NormalizeEventType("booking.exploded")))
}

func TestHasControl(t *testing.T) {
	for _, s := range []string{"\x00", "a\nb", "\t", "\x1f", "\x7f", "\u0080", "\u009f", "\u2028", "\u2029"} {
		assert.True(t, hasControl(s), "%q", s)
	}
	for _, s := range []string{"", "abc", "\u00a0", "é", "✓", "\u2027", "\u202a", " "} {
		assert.False(t, hasControl(s), "%q", s)
	}
}
