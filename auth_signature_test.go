package receivebooking

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"

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
	up.Respond(testkit.JSON(http.StatusOK, e2eSynced))
	h := &Handler{SigningSecrets: []string{testSigningSecret, testSigningSecret2}, Target: up.URL, DisableMetrics: true}
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
	up.Respond(testkit.JSON(http.StatusInternalServerError, e2eSynced))
	body := `{"booking_id":"s2"}`
	assert.Equal(t, 502, serve(h, signedRequest(t, testSigningSecret, "msg_r", time.Now(), body)).Code)
	up.Respond(testkit.JSON(http.StatusOK, e2eSynced))
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
