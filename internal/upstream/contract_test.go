package upstream

// The contract table: every outcome import-bookings answers, every
// contract violation, every status class, and redirects that are never
// followed (through real HTTP servers).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

func envelopeJSON(outcome string, mod func(m map[string]any)) string {
	m := map[string]any{"success": true, "queued": false, "completed": true, "sync_mode": "single",
		"booking_id": "b-1", "organization_id": "org-1", "outcome": outcome}
	if outcome != "applied" && outcome != "already_current" {
		m["success"], m["completed"] = false, false
	}
	if mod != nil {
		mod(m)
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func TestContractJudgesEveryAnswer(t *testing.T) {
	req := Request{BookingID: []byte(`"b-1"`), OrganizationID: []byte(`"org-1"`)}
	cases := []struct {
		name    string
		res     Result
		want    Verdict
		outcome string
		reason  string
	}{
		{"applied", Result{Status: 200, Body: []byte(envelopeJSON("applied", nil))}, Synced, "applied", ""},
		{"already_current", Result{Status: 200, Body: []byte(envelopeJSON("already_current", nil))}, Synced, "already_current", ""},
		{"not_found", Result{Status: 200, Body: []byte(envelopeJSON("not_found", nil))}, Final, "not_found", "outcome not_found"},
		{"cancellation", Result{Status: 200, Body: []byte(envelopeJSON("cancellation_requires_explicit_apply", nil))}, Final, "cancellation_requires_explicit_apply", "outcome cancellation_requires_explicit_apply"},
		{"partial", Result{Status: 200, Body: []byte(envelopeJSON("partial", nil))}, Retry, "partial", "outcome partial"},
		{"local_fallback", Result{Status: 200, Body: []byte(envelopeJSON("local_fallback", nil))}, Retry, "local_fallback", "outcome local_fallback"},
		{"paused", Result{Status: 200, Body: []byte(envelopeJSON("mutating_sync_paused", nil))}, Held, "mutating_sync_paused", "outcome mutating_sync_paused"},
		{"failed", Result{Status: 200, Body: []byte(envelopeJSON("failed", func(m map[string]any) { m["error"] = "EventFlow 502" }))}, Retry, "failed", "outcome failed"},
		{"unknown outcome", Result{Status: 200, Body: []byte(envelopeJSON("teleported", nil))}, Final, "teleported", `contract violation: unknown outcome "teleported"`},
		{"queued true", Result{Status: 200, Body: []byte(envelopeJSON("applied", func(m map[string]any) { m["queued"] = true }))}, Final, "applied", `contract violation: "queued": true`},
		{"sync_mode batch", Result{Status: 200, Body: []byte(envelopeJSON("applied", func(m map[string]any) { m["sync_mode"] = "batch" }))}, Final, "applied", `contract violation: "sync_mode" is not "single"`},
		{"other booking", Result{Status: 200, Body: []byte(envelopeJSON("applied", func(m map[string]any) { m["booking_id"] = "b-2" }))}, Final, "applied", "contract violation: booking_id in the answer differs from the one sent"},
		{"other organization", Result{Status: 200, Body: []byte(envelopeJSON("applied", func(m map[string]any) { m["organization_id"] = "org-2" }))}, Final, "applied", "contract violation: organization_id in the answer differs from the one sent"},
		{"applied not success", Result{Status: 200, Body: []byte(envelopeJSON("applied", func(m map[string]any) { m["success"] = false }))}, Final, "applied", `contract violation: outcome "applied" with "success" not true`},
		{"applied not completed", Result{Status: 200, Body: []byte(envelopeJSON("applied", func(m map[string]any) { m["completed"] = false }))}, Final, "applied", `contract violation: outcome "applied" with "completed" not true`},
		{"applied with error", Result{Status: 200, Body: []byte(envelopeJSON("applied", func(m map[string]any) { m["error"] = "x" }))}, Final, "applied", `contract violation: outcome "applied" with an error`},
		{"applied with failed results", Result{Status: 200, Body: []byte(envelopeJSON("applied", func(m map[string]any) { m["results"] = map[string]any{"failed": 1} }))}, Final, "applied", `contract violation: outcome "applied" with failed results`},
		{"applied with result errors", Result{Status: 200, Body: []byte(envelopeJSON("applied", func(m map[string]any) { m["results"] = map[string]any{"errors": []string{"e"}} }))}, Final, "applied", `contract violation: outcome "applied" with result errors`},
		{"applied, empty results", Result{Status: 200, Body: []byte(envelopeJSON("applied", func(m map[string]any) { m["results"] = map[string]any{"failed": 0, "errors": []string{}} }))}, Synced, "applied", ""},
		{"no outcome", Result{Status: 200, Body: []byte(`{"success":true}`)}, Final, "", `contract violation: no "outcome"`},
		{"no outcome, success false", Result{Status: 200, Body: []byte(`{"success":false}`)}, Final, "", `contract violation: no "outcome"`},
		{"non-JSON 2xx", Result{Status: 200, Text: "<html>"}, Retry, "", "non-JSON answer"},
		{"301", Result{Status: 301}, Final, "", "redirect: status 301 to no Location (configure the final URL as target)"},
		{"400", Result{Status: 400, Body: []byte(`{}`)}, Final, "", ""},
		{"401", Result{Status: 401, Body: []byte(`{"msg":"Invalid JWT"}`)}, Final, "", ""},
		{"404", Result{Status: 404}, Final, "", ""},
		{"408", Result{Status: 408}, Final, "", ""},
		{"429", Result{Status: 429}, Retry, "", ""},
		{"500 (no organization_id)", Result{Status: 500}, Retry, "", ""},
		{"503 boot error", Result{Status: 503}, Retry, "", ""},
		{"504 idle limit", Result{Status: 504}, Retry, "", ""},
		{"546 resource limit", Result{Status: 546}, Retry, "", ""},
	}
	for _, f := range finalFailures {
		cases = append(cases, struct {
			name    string
			res     Result
			want    Verdict
			outcome string
			reason  string
		}{"failed: " + f, Result{Status: 200, Body: []byte(envelopeJSON("failed", func(m map[string]any) { m["error"] = "guard: " + f + " (rev 7)" }))}, Final, "failed", "outcome failed: " + f})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := tc.res
			(&Contract{}).judge(req, &res, "")
			assert.Equal(t, tc.want.String(), res.Verdict.String())
			assert.Equal(t, tc.outcome, res.Outcome)
			assert.Equal(t, tc.reason, res.Reason)
			success := tc.outcome == "applied" || tc.outcome == "already_current"
			assert.Equal(t, success && tc.want != Synced, res.OutcomeMisleads, "a success outcome that is not a sync is flagged")
		})
	}
}

// TestContractOnlyTheEnvelopeIsASync: every 2xx answer that is not the
// envelope is judged as the platform's worker judges it, never as a sync:
// an object without "outcome" or an array is a final contract violation;
// null or a scalar is retried. Under the legacy contract (an
// import-bookings older than the envelope) a 2xx JSON answer without
// "success": false is a sync, as before.
func TestContractOnlyTheEnvelopeIsASync(t *testing.T) {
	req := Request{BookingID: []byte(`"b-1"`), OrganizationID: []byte(`"org-1"`)}
	cases := []struct {
		body           string
		strict, legacy Verdict
	}{
		{`{"error":"boom"}`, Final, Synced},
		{`null`, Retry, Synced},
		{`[]`, Final, Synced},
		{`{}`, Final, Synced},
		{`"ok"`, Retry, Synced},
		{`123`, Retry, Synced},
		{`true`, Retry, Synced},
		{`{"success":"false"}`, Final, Synced},
		{`{"success":1}`, Final, Synced},
		{`{"success":null}`, Final, Synced},
		{`{"success":true}`, Final, Synced},
		{`{"success":false}`, Final, Retry},
		{` [1,2] `, Final, Synced},
	}
	legacy := NewContract(nil)
	legacy.SetLegacy(true)
	for _, tc := range cases {
		for _, status := range []int{200, 201, 299} {
			res := Result{Status: status, Body: []byte(tc.body)}
			(&Contract{}).judge(req, &res, "")
			assert.Equal(t, tc.strict.String(), res.Verdict.String(), "%d %s: %s", status, tc.body, res.Reason)
			assert.NotEmpty(t, res.Reason, "%d %s: a failure says why", status, tc.body)
			res = Result{Status: status, Body: []byte(tc.body)}
			legacy.judge(req, &res, "")
			assert.Equal(t, tc.legacy.String(), res.Verdict.String(), "legacy %d %s: %s", status, tc.body, res.Reason)
		}
	}
	// The legacy contract still judges an envelope by its outcome.
	res := Result{Status: 200, Body: []byte(envelopeJSON("not_found", nil))}
	legacy.judge(req, &res, "")
	assert.Equal(t, Final, res.Verdict)
}

// TestContractReadsExactKeys: the envelope is read as import-bookings
// writes it, key for key: a key in another case is not the key (Go's
// decoder would match it), and a key given twice is a contract violation
// (Go's decoder keeps the last one, another reader may keep the first).
func TestContractReadsExactKeys(t *testing.T) {
	req := Request{BookingID: []byte(`"b-1"`), OrganizationID: []byte(`"org-1"`)}
	const rest = `"queued":false,"completed":true,"sync_mode":"single","booking_id":"b-1","organization_id":"org-1"`
	cases := []struct {
		name, body string
		want       Verdict
		reason     string
	}{
		{"exact", `{"success":true,` + rest + `,"outcome":"applied"}`, Synced, ""},
		{"Outcome, no outcome", `{"success":true,` + rest + `,"Outcome":"applied"}`, Final, `contract violation: no "outcome"`},
		{"OUTCOME after outcome", `{"success":false,` + rest + `,"outcome":"failed","OUTCOME":"applied"}`, Retry, "outcome failed"},
		{"Success, no success", `{"Success":true,` + rest + `,"outcome":"applied"}`, Final, `contract violation: outcome "applied" with "success" not true`},
		{"Booking_ID", `{"success":true,"queued":false,"completed":true,"sync_mode":"single","Booking_ID":"b-1","organization_id":"org-1","outcome":"applied"}`, Final, "contract violation: booking_id in the answer differs from the one sent"},
		{"results.Failed", `{"success":true,` + rest + `,"outcome":"applied","results":{"failed":0,"Failed":3}}`, Synced, ""},
		{"outcome twice", `{"success":true,` + rest + `,"outcome":"failed","outcome":"applied"}`, Final, `contract violation: key "outcome" given twice (which one counts is a guess)`},
		{"success twice", `{"success":false,"success":true,` + rest + `,"outcome":"applied"}`, Final, `contract violation: key "success" given twice (which one counts is a guess)`},
		{"booking_id twice", `{"success":true,` + rest + `,"booking_id":"b-2","outcome":"applied"}`, Final, `contract violation: key "booking_id" given twice (which one counts is a guess)`},
		{"escaped duplicate", `{"success":true,` + rest + `,"outcome":"failed","\u006futcome":"applied"}`, Final, `contract violation: key "outcome" given twice (which one counts is a guess)`},
		{"results.failed twice", `{"success":true,` + rest + `,"outcome":"applied","results":{"failed":1,"failed":0}}`, Final, `contract violation: key "failed" given twice (which one counts is a guess)`},
		{"an unread key twice", `{"success":true,` + rest + `,"outcome":"applied","note":1,"note":2}`, Final, `contract violation: key "note" given twice (which one counts is a guess)`},
		{"results an array", `{"success":true,` + rest + `,"outcome":"applied","results":[]}`, Final, "contract violation: a field of the envelope has the wrong type"},
	}
	legacy := NewContract(nil)
	legacy.SetLegacy(true)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := Result{Status: 200, Body: []byte(tc.body)}
			(&Contract{}).judge(req, &res, "")
			assert.Equal(t, tc.want.String(), res.Verdict.String(), res.Reason)
			assert.Equal(t, tc.reason, res.Reason)
			if strings.Contains(tc.reason, "given twice") {
				res = Result{Status: 200, Body: []byte(tc.body)}
				legacy.judge(req, &res, "")
				assert.Equal(t, Final.String(), res.Verdict.String(), "legacy too: %s", res.Reason)
			}
		})
	}
}

func TestContractIDsCompareAsStrings(t *testing.T) {
	body := `{"success":true,"queued":false,"completed":true,"sync_mode":"single","booking_id":"42","organization_id":7,"outcome":"applied"}`
	res := Result{Status: 200, Body: []byte(body)}
	(&Contract{}).judge(Request{BookingID: []byte(`42`), OrganizationID: []byte(`"7"`)}, &res, "")
	assert.Equal(t, Synced, res.Verdict, res.Reason)
	res = Result{Status: 200, Body: []byte(`{"success":true,"queued":false,"completed":true,"sync_mode":"single","booking_id":"42","organization_id":null,"outcome":"applied"}`)}
	(&Contract{}).judge(Request{BookingID: []byte(`"42"`)}, &res, "")
	assert.Equal(t, Synced, res.Verdict, "no organization_id sent: a null echo matches")
}

func TestContractExtension(t *testing.T) {
	c := NewContract(map[string]Verdict{"queued_for_review": Retry, "merged": Synced, "partial": Final})
	req := Request{BookingID: []byte(`"b-1"`), OrganizationID: []byte(`"org-1"`)}
	for outcome, want := range map[string]Verdict{"queued_for_review": Retry, "partial": Final, "not_found": Final} {
		res := Result{Status: 200, Body: []byte(envelopeJSON(outcome, nil))}
		c.judge(req, &res, "")
		assert.Equal(t, want, res.Verdict, outcome)
	}
	res := Result{Status: 200, Body: []byte(envelopeJSON("merged", func(m map[string]any) { m["success"], m["completed"] = true, true }))}
	c.judge(req, &res, "")
	assert.Equal(t, Synced, res.Verdict, res.Reason)
}

// TestRedirectsAreNeverFollowed: a target that redirects (301, 302, 307,
// 308) to another host, another port or the same host: nothing reaches
// the redirect's location, the key goes nowhere else, and the answer is a
// final failure naming the status and the Location's host.
func TestRedirectsAreNeverFollowed(t *testing.T) {
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		w.WriteHeader(200)
		_, _ = w.Write([]byte(`{"success":true}`))
	}))
	t.Cleanup(other.Close)
	otherURL, _ := url.Parse(other.URL)
	target := testkit.NewStandIn(t)
	targetURL, _ := url.Parse(target.URL)
	locations := map[string]string{
		"another host": "http://localhost:" + otherURL.Port() + "/functions/v1/import-bookings",
		"another port": other.URL + "/functions/v1/import-bookings",
		"same host":    "/functions/v1/other",
	}
	for _, code := range []int{301, 302, 307, 308} {
		for where, loc := range locations {
			t.Run(fmt.Sprintf("%d %s", code, where), func(t *testing.T) {
				target.Respond(func(w http.ResponseWriter, _ *http.Request, _ *testkit.Call) {
					w.Header().Set("Location", loc)
					w.WriteHeader(code)
				})
				c := New(targetURL.JoinPath(testkit.Path), "sb_secret_never-elsewhere", "test", nil)
				res := c.Sync(context.Background(), Request{BookingID: []byte(`"b-1"`)}, "")
				require.NoError(t, res.Err)
				assert.Equal(t, code, res.Status)
				assert.Equal(t, Final, res.Verdict)
				assert.Contains(t, res.Reason, fmt.Sprintf("redirect: status %d to ", code))
				assert.NotContains(t, res.Reason, "/functions", "the Location's path is not repeated")
			})
		}
	}
	assert.Zero(t, elsewhere.Load(), "no request reached a redirect's location")
	for _, c := range target.Calls() {
		assert.Equal(t, testkit.Path, c.Path, "the same-host location was not requested either")
	}
}
