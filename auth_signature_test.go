package receivebooking

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"

	"github.com/caddyserver/caddy/v2"
	reference "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
)

const (
	testSigningSecret  = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	testSigningSecret2 = "whsec_c2Vjb25kLXNpZ25pbmcta2V5LWZvci1yb3RhdGlvbg=="
)

// signedHandler provisions a handler that requires signatures, in front
// of a real loopback upstream.
func signedHandler(t *testing.T, extra func(*Handler)) (*Handler, *testkit.StandIn) {
	t.Helper()
	up := testkit.NewStandIn(t)
	h := &Handler{Organizations: []Organization{{ID: "org-1", SigningSecrets: []string{testSigningSecret, testSigningSecret2}}},
		Target: up.URL, DisableMetrics: true}
	if extra != nil {
		extra(h)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	require.NoError(t, h.Provision(ctx))
	require.NoError(t, h.Validate())
	h.logger = zap.NewNop()
	return h, up
}

func signedRequest(t *testing.T, secret, id string, ts time.Time, body string) *http.Request {
	t.Helper()
	wh := referenceWebhook(t, secret)
	sig, err := wh.Sign(id, ts, []byte(body))
	require.NoError(t, err)
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set(headerWebhookID, id)
	r.Header.Set(headerWebhookTimestamp, strconv.FormatInt(ts.Unix(), 10))
	r.Header.Set(headerWebhookSignature, sig)
	return r
}

func serve(h *Handler, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	_ = h.ServeHTTP(w, r, nil)
	return w
}

func TestSignedWebhooks(t *testing.T) {
	h, up := signedHandler(t, nil)
	assert.False(t, h.authKey)
	assert.True(t, h.authSig, "signature mode is the default when only signing secrets are set")
	now := time.Now()
	body := `{"booking_id":"s1","event_type":"booking.confirmed"}`

	w := serve(h, signedRequest(t, testSigningSecret, "msg_1", now, body))
	assert.Equal(t, 200, w.Code, w.Body.String())
	w = serve(h, signedRequest(t, testSigningSecret2, "msg_2", now, body))
	assert.Equal(t, 200, w.Code, "any active signing secret verifies (rotation)")

	replay := serve(h, signedRequest(t, testSigningSecret, "msg_1", now, body))
	assert.Equal(t, 401, replay.Code, "a second delivery of one webhook-id is a replay")
	assert.JSONEq(t, `{"error":"Unauthorized"}`, replay.Body.String())

	for name, r := range map[string]*http.Request{
		"stale":        signedRequest(t, testSigningSecret, "msg_3", now.Add(-6*time.Minute), body),
		"future":       signedRequest(t, testSigningSecret, "msg_4", now.Add(6*time.Minute), body),
		"wrong secret": signedRequest(t, "whsec_"+strings.Repeat("QUJD", 8), "msg_5", now, body),
	} {
		assert.Equal(t, 401, serve(h, r).Code, name)
	}
	tampered := signedRequest(t, testSigningSecret, "msg_6", now, body)
	tampered.Header.Set(headerWebhookID, "msg_7")
	assert.Equal(t, 401, serve(h, tampered).Code, "the id is signed")
	tampered = signedRequest(t, testSigningSecret, "msg_8", now, body)
	tampered.Body = httptestBody(strings.Replace(body, "s1", "s9", 1))
	assert.Equal(t, 401, serve(h, tampered).Code, "the body is signed")
	unsigned := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
	assert.Equal(t, 401, serve(h, unsigned).Code)
	assert.Len(t, up.Calls(), 2, "only the two valid deliveries reached import-bookings")
}

// TestSignedRetryIsNotAReplay: a delivery that was not accepted (here the
// upstream failed) can be retried with the same webhook-id.
func TestSignedRetryIsNotAReplay(t *testing.T) {
	h, up := signedHandler(t, nil)
	up.Respond(testkit.JSON(http.StatusInternalServerError, `{}`))
	body := `{"booking_id":"s2"}`
	assert.Equal(t, 502, serve(h, signedRequest(t, testSigningSecret, "msg_r", time.Now(), body)).Code)
	up.Respond(nil)
	assert.Equal(t, 200, serve(h, signedRequest(t, testSigningSecret, "msg_r", time.Now(), body)).Code)
}

func TestSignedAndKeyBoth(t *testing.T) {
	h, _ := signedHandler(t, func(h *Handler) { h.Secrets = []string{"api-key-1"} })
	assert.True(t, h.authKey && h.authSig, "both when both kinds of secret are set")
	body := `{"booking_id":"s3"}`
	r := signedRequest(t, testSigningSecret, "msg_b1", time.Now(), body)
	assert.Equal(t, 401, serve(h, r).Code, "the key is required too")
	r = signedRequest(t, testSigningSecret, "msg_b2", time.Now(), body)
	r.Header.Set("X-Api-Key", "api-key-1")
	assert.Equal(t, 200, serve(h, r).Code)
}

// TestSigningSecretsBelongToOrganizations: a signature by an
// organization's signing secret syncs as that organization and may not act
// for another; a shared signing secret needs the body to name one; a key
// and a signing secret of two different organizations act for neither.
func TestSigningSecretsBelongToOrganizations(t *testing.T) {
	const sharedSigning = "whsec_c2hhcmVkLXNpZ25pbmcta2V5LWZvci1ldmVyeW9uZQ=="
	h, up := signedHandler(t, func(h *Handler) {
		h.SigningSecrets = []string{sharedSigning}
		h.Organizations = append(h.Organizations, Organization{ID: "org-2", Secrets: []string{"org-2-key"}})
		h.Auth = authSignature
	})
	now := time.Now()
	cases := []struct {
		name, secret, body string
		status             int
		org                string
	}{
		{"own organization, named", testSigningSecret, `{"booking_id":"o1","organization_id":"org-1"}`, 200, "org-1"},
		{"own organization, not named", testSigningSecret2, `{"booking_id":"o2"}`, 200, "org-1"},
		{"another organization", testSigningSecret, `{"booking_id":"o3","organization_id":"org-2"}`, 403, ""},
		{"shared, named", sharedSigning, `{"booking_id":"o4","organization_id":"org-2"}`, 200, "org-2"},
		{"shared, not named", sharedSigning, `{"booking_id":"o5"}`, 400, ""},
	}
	for i, tc := range cases {
		w := serve(h, signedRequest(t, tc.secret, fmt.Sprintf("msg_org_%d", i), now, tc.body))
		assert.Equal(t, tc.status, w.Code, "%s: %s", tc.name, w.Body)
		booking := decodeObject(t, tc.body)["booking_id"].(string)
		calls := up.CallsFor(booking)
		if tc.status != 200 {
			assert.Empty(t, calls, tc.name)
			continue
		}
		require.Len(t, calls, 1, tc.name)
		assert.Equal(t, tc.org, decodeObject(t, calls[0].Body)["organization_id"], tc.name)
	}
	// A retry of a refused delivery is not taken for a replay.
	w := serve(h, signedRequest(t, sharedSigning, "msg_org_4", now, `{"booking_id":"o5","organization_id":"org-2"}`))
	assert.Equal(t, 200, w.Code, w.Body.String())

	both, _ := signedHandler(t, func(h *Handler) {
		h.Organizations = append(h.Organizations, Organization{ID: "org-2", Secrets: []string{"org-2-key"}})
		h.Auth = authBoth
	})
	r := signedRequest(t, testSigningSecret, "msg_both", now, `{"booking_id":"o6"}`)
	r.Header.Set("X-Api-Key", "org-2-key")
	w = serve(both, r)
	assert.Equal(t, 403, w.Code, "org-1's signature with org-2's key acts for neither")
	assert.JSONEq(t, `{"error":"Forbidden"}`, w.Body.String())
}

func TestSigningSecretErrorsNameTheFieldNotTheValue(t *testing.T) {
	for _, bad := range []string{"whsec_not*base64!", "whsec_c2hvcnQ=", "whpk_abc"} {
		h := &Handler{SigningSecrets: []string{bad}, Target: "http://127.0.0.1:1/"}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		err := h.Provision(ctx)
		cancel()
		require.Error(t, err, bad)
		assert.Contains(t, err.Error(), "signing_secret")
		assert.NotContains(t, err.Error(), strings.TrimPrefix(strings.TrimPrefix(bad, "whsec_"), "whpk_"))
	}
}

// TestReplayMemorySharedOnPostgres: two instances on one PostgreSQL
// database share the webhook-ids they have seen.
func TestReplayMemorySharedOnPostgres(t *testing.T) {
	dsn := testkit.FreshPostgresDSN(t)
	open := func(name string) *engineRef {
		rq := &queue.Config{Driver: queue.Postgres, Location: dsn, Settings: queue.Settings{Workers: 1, MaxAttempts: 1, WorkerTimeout: time.Second}}
		ref := newEngineRef()
		ref.bind(openTestQueue(t, rq, nil))
		return ref
	}
	a := queueReplay{q: open("a"), ttl: time.Minute}
	b := queueReplay{q: open("b"), ttl: time.Minute}
	ctx := context.Background()
	now := time.Now()
	id := fmt.Sprintf("msg_%d", now.UnixNano())
	seen, err := a.seen(ctx, id, now)
	require.NoError(t, err)
	assert.False(t, seen)
	seen, err = b.seen(ctx, id, now)
	require.NoError(t, err)
	assert.True(t, seen, "a replay sent to the other instance is caught")
	b.forget(ctx, id)
	seen, err = a.seen(ctx, id, now)
	require.NoError(t, err)
	assert.False(t, seen, "a forgotten id may be delivered again")
	seen, err = b.seen(ctx, id, now.Add(2*time.Minute))
	require.NoError(t, err)
	assert.False(t, seen, "ids expire after the window")
}

func httptestBody(s string) io.ReadCloser { return io.NopCloser(strings.NewReader(s)) }

// referenceWebhook is the Standard Webhooks reference library's signer.
func referenceWebhook(t testing.TB, secret string) *reference.Webhook {
	t.Helper()
	wh, err := reference.NewWebhook(secret)
	require.NoError(t, err)
	return wh
}

// TestCredentialsNamedInTheTimeline: a recorded webhook's timeline event
// names the credentials that authenticated it by their place in the
// config (an unset {env.*} value keeps its number), never by value; a
// webhook answered when recorded (async) has its answer in the event.
func TestCredentialsNamedInTheTimeline(t *testing.T) {
	h, up := signedHandler(t, func(h *Handler) {
		h.Secrets = []string{"{env.RB_UT_UNSET_KEY}", "shared-key-2"}
		h.Organizations[0].Secrets = []string{"org-1-key-1", "org-1-key-2"}
		h.Auth = authBoth
	})
	u, err := url.Parse(up.URL)
	require.NoError(t, err)
	e := openTestQueue(t, &queue.Config{Driver: queue.SQLite, Settings: queue.Settings{Workers: 1, MaxAttempts: 1, WorkerTimeout: 5 * time.Second}},
		map[string]*upstream.Client{queue.DefaultRoute: upstream.New(u, "", userAgent, nil)})
	h.mode, h.route, h.queue = modeAsync, queue.DefaultRoute, newEngineRef()
	h.queue.bind(e)
	now := time.Now()
	for i, tc := range []struct {
		key, secret, body, want string
	}{
		{"org-1-key-2", testSigningSecret2, `{"booking_id":"c1"}`, "organization org-1 key #2 + organization org-1 signing secret #2"},
		{"shared-key-2", testSigningSecret, `{"booking_id":"c2","organization_id":"org-1"}`, "shared key #2 + organization org-1 signing secret #1"},
	} {
		r := signedRequest(t, tc.secret, fmt.Sprintf("msg_cred_%d", i), now, tc.body)
		r.Header.Set("X-Api-Key", tc.key)
		w := serve(h, r)
		require.Equal(t, http.StatusAccepted, w.Code, w.Body.String())
		jobs, err := e.Jobs()
		require.NoError(t, err)
		booking := decodeObject(t, tc.body)["booking_id"].(string)
		evs, err := jobs.BookingEvents(t.Context(), "org-1", booking, 10)
		require.NoError(t, err)
		require.NotEmpty(t, evs)
		wh := evs[len(evs)-1]
		assert.Equal(t, queue.EventWebhook, wh.Kind)
		assert.Equal(t, tc.want, wh.Credential)
		assert.Equal(t, http.StatusAccepted, wh.Status, "answered when recorded")
		assert.Equal(t, "queued", wh.Answer)
		assert.NotContains(t, fmt.Sprint(evs), tc.key)
	}
}
