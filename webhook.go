package receivebooking

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"unicode/utf8"
)

const (
	fieldBookingID      = "booking_id"
	fieldOrganizationID = "organization_id"
	fieldEventType      = "event_type"

	// maxFieldLen bounds every identifier we accept, log and forward.
	maxFieldLen = 256
)

// webhook is a validated EventFlow booking webhook.
type webhook struct {
	// bookingID is the booking_id JSON literal exactly as received: a
	// string or an integer. It is forwarded unchanged.
	bookingID json.RawMessage
	// bookingKey is booking_id as text (the string's value, or the
	// integer's digits): "42" and 42 name the same booking.
	bookingKey     string
	organizationID string
	// eventType is the event_type as sent; empty when absent.
	eventType string
}

// key identifies the booking for coalescing.
func (w *webhook) key() bookingKey {
	return bookingKey{org: w.organizationID, booking: w.bookingKey}
}

// eventTypeOrUnknown is the event_type for answers: as sent, or "unknown".
func (w *webhook) eventTypeOrUnknown() string {
	if w.eventType == "" {
		return "unknown"
	}
	return w.eventType
}

// bookingKey is the coalescing key of a booking.
type bookingKey struct{ org, booking string }

// inputError is a client error with the exact message of the contract.
type inputError struct {
	msg    string
	reason string // metrics and log reason
}

func (e *inputError) Error() string { return e.msg }

var errInvalidJSON = &inputError{msg: "Invalid JSON body", reason: "invalid_json"}

func missingField(name string) error {
	return &inputError{msg: "Missing required field: " + name, reason: "missing_field"}
}

func invalidField(name string) error {
	return &inputError{msg: "Invalid field: " + name, reason: "invalid_field"}
}

// parseWebhook validates a webhook body. The body must be one UTF-8 JSON
// object with no duplicate top-level keys (parsers disagree on which
// duplicate wins, so an ambiguous body is refused rather than guessed at)
// and nothing after it.
func parseWebhook(body []byte, requireOrg bool) (*webhook, error) {
	fields, err := topLevelFields(body)
	if err != nil {
		return nil, err
	}
	wh := &webhook{}
	var present bool
	wh.bookingID, wh.bookingKey, present, err = idField(fields[fieldBookingID], fieldBookingID, true)
	if err != nil {
		return nil, err
	}
	if !present {
		return nil, missingField(fieldBookingID)
	}
	if _, wh.organizationID, present, err = idField(fields[fieldOrganizationID], fieldOrganizationID, true); err != nil {
		return nil, err
	}
	if requireOrg && !present {
		return nil, missingField(fieldOrganizationID)
	}
	if _, wh.eventType, _, err = idField(fields[fieldEventType], fieldEventType, false); err != nil {
		return nil, err
	}
	return wh, nil
}

// topLevelFields splits a JSON object into its top-level members, keeping
// only the ones we read. Nested values are checked for validity but not
// kept; the decoder's nesting limit stops deeply nested bodies.
func topLevelFields(body []byte) (map[string]json.RawMessage, error) {
	if !utf8.Valid(body) {
		return nil, errInvalidJSON
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errInvalidJSON
	}
	fields := make(map[string]json.RawMessage, 3)
	seen := make(map[string]struct{}, 8)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, errInvalidJSON
		}
		name, _ := tok.(string)
		if _, dup := seen[name]; dup {
			return nil, errInvalidJSON
		}
		seen[name] = struct{}{}
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return nil, errInvalidJSON
		}
		switch name {
		case fieldBookingID, fieldOrganizationID, fieldEventType:
			fields[name] = val
		}
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, errInvalidJSON
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errInvalidJSON
	}
	return fields, nil
}

// idField validates an identifier field: absent, null and "" count as
// missing; otherwise it must be a string (or, when numbers are allowed, an
// integer) of at most maxFieldLen bytes with no control characters, which
// keeps it safe to log and to forward.
func idField(raw json.RawMessage, name string, allowInt bool) (literal json.RawMessage, text string, present bool, err error) {
	if len(raw) == 0 || string(raw) == "null" || string(raw) == `""` {
		return nil, "", false, nil
	}
	switch {
	case raw[0] == '"':
		if err := json.Unmarshal(raw, &text); err != nil {
			return nil, "", false, invalidField(name)
		}
	case allowInt && isIntegerLiteral(raw):
		text = string(raw)
	default:
		return nil, "", false, invalidField(name)
	}
	if len(text) > maxFieldLen || hasControl(text) || strings.TrimSpace(text) == "" {
		return nil, "", false, invalidField(name)
	}
	return bytes.Clone(raw), text, true, nil
}

// isIntegerLiteral reports whether a JSON number is an integer written
// without fraction or exponent (1.0 and 1e3 are refused: ids are exact).
func isIntegerLiteral(raw []byte) bool {
	s := raw
	if len(s) > 0 && s[0] == '-' {
		s = s[1:]
	}
	if len(s) == 0 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u2028' || r == '\u2029' {
			return true
		}
	}
	return false
}

// normalizeEventType maps the spellings EventFlow and others use for one
// event onto one name: "created", "booking_created", "booking.created" and
// "Booking-Created" are all "created". Unknown types keep their normalised
// form; metricEventType bounds them for labels.
func normalizeEventType(s string) string {
	if s == "" {
		return "unknown"
	}
	s = strings.ToLower(s)
	for _, prefix := range []string{"booking.", "booking_", "booking-", "booking:"} {
		s = strings.TrimPrefix(s, prefix)
	}
	s = strings.NewReplacer(".", "_", "-", "_", ":", "_", " ", "_").Replace(s)
	if s == "canceled" {
		s = "cancelled"
	}
	return s
}

// knownEventTypes are the event types EventFlow sends; anything else is
// counted as "other" so that a sender cannot blow up label cardinality.
var knownEventTypes = map[string]bool{
	"created": true, "updated": true, "confirmed": true, "cancelled": true,
	"offer": true, "offer_created": true, "deleted": true, "unknown": true,
}

func metricEventType(normalized string) string {
	if knownEventTypes[normalized] {
		return normalized
	}
	return "other"
}
