package receivebooking

// The rules for config values, each written once. The Caddyfile adapter
// applies a field's rule to a literal value as it parses and adds the file
// and line; Provision applies the same rule once placeholders are resolved,
// so a value refused in a Caddyfile, in JSON or behind a placeholder is
// refused with the same message. Rules that relate settings to each other
// are Validate's (see conflicts.go): they need every value resolved.
//
// Messages name the field and quote the value: every field here holds a
// setting, never a secret (secrets, the target and the DSN are checked in
// Provision, whose errors never quote them).

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"
)

// maxMaxBody is the largest max_body accepted.
const maxMaxBody = 1 << 30

// fieldRules are the rules of the fields that hold one value, by the
// field's name in the Caddyfile (which is also its JSON name, and how
// errors name it). Each is given a value that is not empty: an empty
// value means the default.
var fieldRules = map[string]func(field, v string) error{
	"tolerance":           positiveDuration,
	"timeout":             positiveDuration,
	"body_timeout":        positiveDuration,
	"coalesce_window":     duration, // 0 turns the wait off
	"worker_timeout":      positiveDuration,
	"hold_budget":         positiveDuration,
	"retention completed": positiveDuration,
	"retention cancelled": positiveDuration,
	"retention discarded": positiveDuration,
	"max_body":            size,
	"auth":                oneOf(authKey, authSignature, authBoth),
	"contract":            oneOf(contractEnvelope, contractLegacy),
	"mode":                oneOf(modeSync, modeAsync, modeAuto),
	"queue":               oneOf(queue.SQLite, queue.Postgres),
	"workers":             count,
	"max_in_flight":       count,
	"max_attempts":        count,
}

// checkField applies field's rule to v, a resolved value; an empty value
// (the default) passes.
func checkField(field, v string) error {
	if v == "" {
		return nil
	}
	return fieldRules[field](field, v)
}

// checkLiteral is checkField for the Caddyfile adapter, which reports a
// mistake at its line. A value holding a placeholder is checked by
// Provision, once resolved.
func checkLiteral(d *caddyfile.Dispenser, field, v string) error {
	if isPlaceholder(v) {
		return nil
	}
	if err := checkField(field, v); err != nil {
		return d.WrapErr(err)
	}
	return nil
}

func isPlaceholder(v string) bool { return strings.Contains(v, "{") }

func duration(field, v string) error {
	if d, err := caddy.ParseDuration(v); err != nil || d < 0 {
		return fmt.Errorf("%s: not a valid duration: %q", field, v)
	}
	return nil
}

func positiveDuration(field, v string) error {
	if err := duration(field, v); err != nil {
		return err
	}
	if d, _ := caddy.ParseDuration(v); d == 0 {
		return fmt.Errorf("%s: must be positive, got %q", field, v)
	}
	return nil
}

func size(field, v string) error {
	if n, err := humanize.ParseBytes(v); err != nil || n == 0 || n > maxMaxBody {
		return fmt.Errorf("%s: not a valid size: %q (from 1 byte to 1GiB)", field, v)
	}
	return nil
}

// count is the rule of the whole-number settings. JSON gives them as
// numbers; QueueConfig.UnmarshalJSON hands this rule their text.
func count(field, v string) error {
	if n, err := strconv.Atoi(v); err != nil || n < 1 {
		return fmt.Errorf("%s: expected a positive whole number, got %q", field, v)
	}
	return nil
}

// oneOf is the rule of a field that takes one of the given words.
func oneOf(choices ...string) func(field, v string) error {
	list := strings.Join(choices[:len(choices)-1], ", ") + " or " + choices[len(choices)-1]
	return func(field, v string) error {
		for _, c := range choices {
			if v == c {
				return nil
			}
		}
		return fmt.Errorf("%s: expected %s, got %q", field, list, v)
	}
}

// checkRequire is the rule of require, kept for configs written for
// earlier versions.
func checkRequire(fields []string) error {
	for _, f := range fields {
		if f != payload.FieldOrganizationID {
			return fmt.Errorf("require: unsupported field %q (only %s, which is always required now; bind a key to "+
				"an organization to sync webhooks that do not name one)", f, payload.FieldOrganizationID)
		}
	}
	return nil
}

// parseOutcome is the rule of one outcome line: how an outcome name that
// import-bookings answers is judged.
func parseOutcome(name, verdict string) (upstream.Verdict, error) {
	if name == "" {
		return 0, errors.New("outcome: the name must not be empty")
	}
	v, ok := upstream.ParseVerdict(verdict)
	if !ok {
		return 0, fmt.Errorf("outcome %s: expected ok, retry, final or hold, got %q", name, verdict)
	}
	return v, nil
}

// urgencyUnknownName names, in urgency lines, the webhooks without an
// event type or with one EventFlow does not send.
const urgencyUnknownName = "unknown"

// parseUrgency is the rule of one urgency line: an event type (spelled
// as webhooks may spell it: it is normalised) and an urgency from 0 to
// 100. It returns the normalised type.
func parseUrgency(eventType string, urgency int) (string, error) {
	event := payload.NormalizeEventType(eventType)
	switch {
	case event == "":
		return "", errors.New("urgency: the event type must not be empty")
	case urgency < 0 || urgency > queue.UrgencyMax:
		return "", fmt.Errorf("urgency %s: expected a whole number from 0 to %d, got %d", eventType, queue.UrgencyMax, urgency)
	case event != urgencyUnknownName && !payload.KnownEventType(event):
		return "", fmt.Errorf("urgency %s: not an event type EventFlow sends (%s, or %s for the rest)",
			eventType, strings.Join(payload.EventTypes(), ", "), urgencyUnknownName)
	}
	return event, nil
}

// checkOrganizationKeys: an organization is there for its keys.
func checkOrganizationKeys(id string, o Organization) error {
	if len(o.Secrets)+len(o.SigningSecrets) == 0 {
		return fmt.Errorf("organization %q: needs a secret or a signing_secret", id)
	}
	return nil
}

// UnmarshalJSON decodes the queue settings as Caddy does (unknown fields
// refused), and holds the whole-number settings to their rule: JSON cannot
// otherwise tell 0 from absent, nor give the Caddyfile's message for "x".
func (c *QueueConfig) UnmarshalJSON(b []byte) error {
	type plain QueueConfig // without this method
	var raw struct {
		*plain
		Workers     json.RawMessage `json:"workers,omitempty"`
		MaxAttempts json.RawMessage `json:"max_attempts,omitempty"`
		MaxInFlight json.RawMessage `json:"max_in_flight,omitempty"`
	}
	raw.plain = (*plain)(c)
	if err := caddy.StrictUnmarshalJSON(b, &raw); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		raw  json.RawMessage
		dst  *int
	}{{"workers", raw.Workers, &c.Workers}, {"max_attempts", raw.MaxAttempts, &c.MaxAttempts}, {"max_in_flight", raw.MaxInFlight, &c.MaxInFlight}} {
		if f.raw == nil || string(f.raw) == "null" {
			continue
		}
		v := string(f.raw)
		var s string
		if json.Unmarshal(f.raw, &s) == nil {
			v = s
		}
		if err := checkField(f.name, v); err != nil {
			return err
		}
		*f.dst, _ = strconv.Atoi(v)
	}
	return nil
}
