// Package payload validates EventFlow booking webhooks: one UTF-8 JSON
// object, no duplicate keys, an organization (named in the body, or the one
// the sender's credential belongs to), a booking_id (string or integer) and
// an optional event_type, each a bounded identifier without control
// characters. Rejections carry the contract's exact messages.
package payload

import (
	"bytes"
	"encoding/json"
	"strings"

	"github.com/bookingwebhook/caddy-receive-booking/internal/jsonobj"
)

const (
	FieldBookingID      = "booking_id"
	FieldOrganizationID = "organization_id"
	FieldEventType      = "event_type"

	// MaxFieldLen bounds every identifier we accept, log and forward.
	MaxFieldLen = 256
)

// Webhook is a validated EventFlow booking webhook.
type Webhook struct {
	// BookingID is the booking_id JSON literal exactly as received: a
	// string or an integer. It is forwarded unchanged.
	BookingID json.RawMessage
	// BookingKey is booking_id as text (the string's value, or the
	// integer's digits): "42" and 42 name the same booking.
	BookingKey     string
	OrganizationID string
	// OrganizationIDJSON is organization_id as received (string or
	// integer), forwarded unchanged like booking_id.
	OrganizationIDJSON json.RawMessage
	// EventType is the event_type, normalised (NormalizeEventType); empty
	// when absent.
	EventType string
}

// Key identifies the booking for coalescing.
func (w *Webhook) Key() Key {
	return Key{Org: w.OrganizationID, Booking: w.BookingKey}
}

// EventTypeOrUnknown is the event_type for answers: as sent, or "unknown".
func (w *Webhook) EventTypeOrUnknown() string {
	if w.EventType == "" {
		return "unknown"
	}
	return w.EventType
}

// Key is the coalescing key of a booking.
type Key struct{ Org, Booking string }

// InputError is a client error with the exact message of the contract.
type InputError struct {
	Status int    // the answer's status: 400, or 403 for ErrForbidden
	Msg    string // the answer's error message
	Reason string // metrics and log reason
}

func (e *InputError) Error() string { return e.Msg }

// ErrInvalidJSON is the answer to a body that is not one JSON object.
var ErrInvalidJSON = &InputError{Status: 400, Msg: "Invalid JSON body", Reason: "invalid_json"}

// ErrForbidden is the answer to a webhook that names an organization its
// sender's credential does not belong to.
var ErrForbidden = &InputError{Status: 403, Msg: "Forbidden", Reason: "organization"}

func missingField(name string) error {
	return &InputError{Status: 400, Msg: "Missing required field: " + name, Reason: "missing_field"}
}

func invalidField(name string) error {
	return &InputError{Status: 400, Msg: "Invalid field: " + name, Reason: "invalid_field"}
}

// Parse validates a webhook body and resolves its organization. boundOrg
// is the organization the sender's credential belongs to, or "" when the
// credential may act for any organization: the body must then name one.
// A body naming another organization than boundOrg is ErrForbidden; one
// naming none syncs as boundOrg.
//
// The checks run in the order of the platform's receive-booking: the
// organization before booking_id. The body must be one UTF-8 JSON object
// with no duplicate top-level keys (parsers disagree on which duplicate
// wins, so an ambiguous body is refused rather than guessed at) and
// nothing after it.
func Parse(body []byte, boundOrg string) (*Webhook, error) {
	fields, err := topLevelFields(body)
	if err != nil {
		return nil, err
	}
	wh := &Webhook{}
	var present bool
	if wh.OrganizationIDJSON, wh.OrganizationID, present, err = idField(fields[FieldOrganizationID], FieldOrganizationID, true); err != nil {
		return nil, err
	}
	switch {
	case present && boundOrg != "" && wh.OrganizationID != boundOrg:
		return nil, ErrForbidden
	case !present && boundOrg == "":
		return nil, missingField(FieldOrganizationID)
	case !present:
		wh.OrganizationID = boundOrg
		wh.OrganizationIDJSON, _ = json.Marshal(boundOrg)
	}
	wh.BookingID, wh.BookingKey, present, err = idField(fields[FieldBookingID], FieldBookingID, true)
	if err != nil {
		return nil, err
	}
	if !present {
		return nil, missingField(FieldBookingID)
	}
	if _, wh.EventType, _, err = idField(fields[FieldEventType], FieldEventType, false); err != nil {
		return nil, err
	}
	wh.EventType = NormalizeEventType(wh.EventType)
	return wh, nil
}

// topLevelFields splits a JSON object into its top-level members, keeping
// only the ones we read (jsonobj skips the rest without decoding them,
// which keeps the hot path free of allocations for everything we ignore).
func topLevelFields(body []byte) (map[string]json.RawMessage, error) {
	fields := make(map[string]json.RawMessage, 3)
	err := jsonobj.Members(body, func(name string, value []byte) {
		switch name {
		case FieldBookingID, FieldOrganizationID, FieldEventType:
			fields[name] = value
		}
	})
	if err != nil {
		return nil, ErrInvalidJSON
	}
	return fields, nil
}

// idField validates an identifier field: absent, null and "" count as
// missing; otherwise it must be a string (or, when numbers are allowed, an
// integer) of at most MaxFieldLen bytes with no control characters, which
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
	if len(text) > MaxFieldLen || hasControl(text) || strings.TrimSpace(text) == "" {
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

// NormalizeEventType spells an event type exactly as the platform's
// receive-booking does: in lower case, with every "_" a ".".
// "BOOKING_CANCELLED" and "booking.cancelled" are both
// "booking.cancelled"; "Booking-Created" is "booking-created" (not a type
// EventFlow sends: accepted, logged, and synced at the unknown types'
// urgency).
func NormalizeEventType(s string) string {
	return strings.ReplaceAll(strings.ToLower(s), "_", ".")
}

// The event types EventFlow sends, normalised: the platform's
// receive-booking's list.
const (
	EventCreated   = "booking.created"
	EventUpdated   = "booking.updated"
	EventConfirmed = "booking.confirmed"
	EventCancelled = "booking.cancelled"
	EventOffer     = "booking.offer"
)

// knownEventTypes are the event types EventFlow sends, normalised.
var knownEventTypes = map[string]bool{
	EventCreated: true, EventUpdated: true, EventConfirmed: true, EventCancelled: true, EventOffer: true,
}

// EventTypes lists the event types EventFlow sends, normalised.
func EventTypes() []string {
	return []string{EventCreated, EventUpdated, EventConfirmed, EventCancelled, EventOffer}
}

// KnownEventType reports whether a normalised event type is one EventFlow
// sends.
func KnownEventType(normalized string) bool { return knownEventTypes[normalized] }

// MetricEventType is a normalised event type as a metric label: a known
// type, "unknown" when absent, "other" for anything else, so that a sender
// cannot blow up label cardinality.
func MetricEventType(normalized string) string {
	switch {
	case normalized == "":
		return "unknown"
	case knownEventTypes[normalized]:
		return normalized
	}
	return "other"
}

// MarshalJSON encodes v without Go's HTML escaping, so that JSON passed
// through (the booking_id literal, the upstream's answer) keeps every byte
// as received: "&" stays "&", not "\u0026".
func MarshalJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
