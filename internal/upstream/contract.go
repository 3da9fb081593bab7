package upstream

// import-bookings' contract for single-booking syncs: which answers mean
// the booking is synced, which are worth another attempt, and which are
// final (no retry will change them, or the answer breaks the contract).

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/bookingwebhook/caddy-receive-booking/internal/jsonobj"
)

// Verdict is what an answer means for the sync.
type Verdict uint8

const (
	// Retry: the sync did not happen and another attempt may succeed.
	Retry Verdict = iota
	// Synced: the booking is synced.
	Synced
	// Final: the sync did not happen and no retry will change that.
	Final
	// Held: the sync did not happen because import-bookings has paused
	// mutating syncs (its kill switch): a queued sync is held, tried
	// again without spending an attempt, for the queue's hold budget.
	// Without a queue it is a Retry (nothing was recorded).
	Held
)

// String names the verdict as the Caddyfile's outcome lines do.
func (v Verdict) String() string {
	switch v {
	case Synced:
		return "ok"
	case Final:
		return "final"
	case Held:
		return "hold"
	}
	return "retry"
}

// ParseVerdict reads "ok", "retry", "final" or "hold".
func ParseVerdict(s string) (Verdict, bool) {
	switch s {
	case "ok":
		return Synced, true
	case "retry":
		return Retry, true
	case "final":
		return Final, true
	case "hold":
		return Held, true
	}
	return Retry, false
}

// DefaultOutcomes is how import-bookings' outcomes are judged.
var DefaultOutcomes = map[string]Verdict{
	"applied":                              Synced,
	"already_current":                      Synced,
	"not_found":                            Final,
	"cancellation_requires_explicit_apply": Final,
	"partial":                              Retry,
	"local_fallback":                       Retry,
	"mutating_sync_paused":                 Held,
	"failed":                               Retry, // unless its error names a final cause
}

// finalFailures are the causes that make a "failed" outcome final: no
// retry can get past a revision guard or a disabled destructive sync.
var finalFailures = []string{
	"stale_source_revision", "conflicting_source_status_for_revision", "incomparable_source_revision",
	"mixed_incomparable_revision_history", "stored_revision_created_at_invalid", "revision_history_truncated",
	"automatic_destructive_sync_disabled", "cancellation_requires_explicit_apply",
}

// Contract judges answers. The zero value judges by DefaultOutcomes and
// accepts only the envelope as a sync.
type Contract struct {
	outcomes map[string]Verdict
	// legacy accepts a 2xx JSON answer without "outcome" as a sync unless
	// it says "success": false (an import-bookings older than the
	// envelope). Weaker: {"error":"boom"} is then a sync.
	legacy bool
}

// SetLegacy makes c accept, beside the envelope, a 2xx JSON answer
// without "outcome" as a sync unless it says "success": false.
func (c *Contract) SetLegacy(on bool) { c.legacy = on }

func (c *Contract) isLegacy() bool { return c != nil && c.legacy }

// NewContract returns the default contract with extra outcomes added (a
// later import-bookings may answer outcomes this module does not know: an
// unknown one is final).
func NewContract(extra map[string]Verdict) *Contract {
	c := &Contract{outcomes: make(map[string]Verdict, len(DefaultOutcomes)+len(extra))}
	for k, v := range DefaultOutcomes {
		c.outcomes[k] = v
	}
	for k, v := range extra {
		c.outcomes[k] = v
	}
	return c
}

func (c *Contract) outcome(name string) (Verdict, bool) {
	if c == nil || c.outcomes == nil {
		v, ok := DefaultOutcomes[name]
		return v, ok
	}
	v, ok := c.outcomes[name]
	return v, ok
}

// envelope is import-bookings' answer to a single-booking call.
type envelope struct {
	Success        *bool
	Queued         *bool
	Completed      *bool
	SyncMode       *string
	BookingID      json.RawMessage
	OrganizationID json.RawMessage
	Outcome        *string
	Error          any
	Results        *results
}

type results struct {
	Failed int
	Errors json.RawMessage
}

// errWrongType: a member of the envelope is not of its type.
var errWrongType = errors.New("a field of the envelope has the wrong type")

// decodeEnvelope reads the envelope with exact keys, as import-bookings
// (JavaScript) writes them and any JavaScript reader reads them:
// "Outcome" is not "outcome" (encoding/json would match it), and a key
// given twice is a *jsonobj.DuplicateKeyError, never a guess at which one
// counts. A member of the wrong type is errWrongType.
func decodeEnvelope(body []byte) (envelope, error) {
	var env envelope
	var bad error
	into := func(value []byte, v any) {
		if bad == nil && json.Unmarshal(value, v) != nil {
			bad = errWrongType
		}
	}
	err := jsonobj.Members(body, func(key string, value []byte) {
		switch key {
		case "success":
			into(value, &env.Success)
		case "queued":
			into(value, &env.Queued)
		case "completed":
			into(value, &env.Completed)
		case "sync_mode":
			into(value, &env.SyncMode)
		case "booking_id":
			env.BookingID = value
		case "organization_id":
			env.OrganizationID = value
		case "outcome":
			into(value, &env.Outcome)
		case "error":
			into(value, &env.Error)
		case "results":
			if firstByte(value) != '{' {
				into(value, &struct{}{}) // null is no results; anything else is the wrong type
				return
			}
			env.Results = &results{}
			if err := jsonobj.Members(value, func(key string, value []byte) {
				switch key {
				case "failed":
					into(value, &env.Results.Failed)
				case "errors":
					env.Results.Errors = value
				}
			}); err != nil && bad == nil {
				bad = err
			}
		}
	})
	if err == nil {
		err = bad
	}
	return env, err
}

// judge sets the result's verdict, outcome and reason.
func (c *Contract) judge(req Request, res *Result, location string) {
	res.Verdict, res.Reason = Retry, ""
	switch {
	case res.Err != nil && res.TimedOut:
		res.Reason = "timed out"
	case res.Err != nil:
		res.Reason = "unreachable"
	case res.Status >= 300 && res.Status < 400:
		// Redirects are never followed: the key would go with them.
		res.Verdict, res.Reason = Final, fmt.Sprintf("redirect: status %d to %s (configure the final URL as target)", res.Status, locationHost(location))
	case res.Status == http.StatusTooManyRequests || res.Status >= 500:
		// Retried; the status says it all.
	case res.Status < 200 || res.Status >= 300:
		res.Verdict = Final
	case res.Body == nil:
		res.Reason = "non-JSON answer"
	default:
		c.judgeEnvelope(req, res)
	}
}

func (c *Contract) judgeEnvelope(req Request, res *Result) {
	violation := func(why string) { res.Verdict, res.Reason = Final, "contract violation: "+why }
	switch t := firstByte(res.Body); t {
	case '{':
	case '[':
		if c.isLegacy() {
			res.Verdict = Synced
			return
		}
		violation("an array, not the envelope")
		return
	default:
		// null or a scalar: not an answer import-bookings gives; its
		// gateway or a proxy in between may, and another attempt may not.
		if c.isLegacy() {
			res.Verdict = Synced
			return
		}
		res.Reason = "not a JSON object"
		return
	}
	env, err := decodeEnvelope(res.Body)
	if dup := (*jsonobj.DuplicateKeyError)(nil); errors.As(err, &dup) {
		violation(fmt.Sprintf("key %q given twice (which one counts is a guess)", dup.Key))
		return
	}
	if err != nil {
		if c.isLegacy() {
			// As before the envelope: nothing says it failed.
			res.Verdict = Synced
			return
		}
		violation(err.Error())
		return
	}
	if env.Outcome == nil {
		if !c.isLegacy() {
			violation(`no "outcome"`)
			return
		}
		// An older import-bookings: 2xx unless it says "success": false.
		if env.Success != nil && !*env.Success {
			res.Reason = `"success": false`
			return
		}
		res.Verdict = Synced
		return
	}
	res.Outcome = *env.Outcome
	v, known := c.outcome(res.Outcome)
	// A success outcome that is not a sync must not be reported as the
	// outcome: it would read as a success.
	res.OutcomeMisleads = known && v == Synced
	switch {
	case env.Queued != nil && *env.Queued:
		violation(`"queued": true`)
		return
	case env.SyncMode == nil || *env.SyncMode != "single":
		violation(`"sync_mode" is not "single"`)
		return
	case !sameID(env.BookingID, req.BookingID):
		violation("booking_id in the answer differs from the one sent")
		return
	case !sameID(env.OrganizationID, req.OrganizationID):
		violation("organization_id in the answer differs from the one sent")
		return
	}
	switch {
	case !known:
		violation(fmt.Sprintf("unknown outcome %q", res.Outcome))
	case v == Synced:
		if why := incomplete(&env); why != "" {
			violation(fmt.Sprintf("outcome %q with %s", res.Outcome, why))
			return
		}
		res.Verdict, res.OutcomeMisleads = Synced, false
	case res.Outcome == "failed" && finalFailure(env.Error):
		res.Verdict, res.Reason = Final, "outcome failed: "+finalCause(env.Error)
	default:
		res.Verdict, res.Reason = v, "outcome "+res.Outcome
	}
}

// incomplete says why a success outcome is not a whole success, or "".
func incomplete(env *envelope) string {
	switch {
	case env.Success == nil || !*env.Success:
		return `"success" not true`
	case env.Completed == nil || !*env.Completed:
		return `"completed" not true`
	case env.Error != nil && env.Error != "":
		return "an error"
	case env.Results != nil && env.Results.Failed != 0:
		return "failed results"
	case env.Results != nil && len(env.Results.Errors) > 0 && !emptyJSON(env.Results.Errors):
		return "result errors"
	}
	return ""
}

// firstByte is the first byte of a JSON text that is not white space.
func firstByte(raw json.RawMessage) byte {
	if t := bytes.TrimSpace(raw); len(t) > 0 {
		return t[0]
	}
	return 0
}

func emptyJSON(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return bytes.Equal(t, []byte("null")) || bytes.Equal(t, []byte("[]")) || len(t) == 0
}

func finalFailure(e any) bool { return finalCause(e) != "" }

func finalCause(e any) string {
	s, _ := e.(string)
	if s == "" && e != nil {
		b, _ := json.Marshal(e)
		s = string(b)
	}
	if i := slices.IndexFunc(finalFailures, func(f string) bool { return strings.Contains(s, f) }); i >= 0 {
		return finalFailures[i]
	}
	return ""
}

// sameID compares an echoed id with the one sent, as strings: 42 and "42"
// are equal. Nothing sent matches an absent, null or empty echo.
func sameID(echo, sent json.RawMessage) bool {
	return idText(echo) == idText(sent)
}

func idText(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

// locationHost names where a redirect pointed, without path or query (they
// may carry a key).
func locationHost(loc string) string {
	if loc == "" {
		return "no Location"
	}
	u, err := url.Parse(loc)
	if err != nil {
		return "an unparsable Location"
	}
	if u.Host == "" {
		return "the same host"
	}
	return u.Host
}
