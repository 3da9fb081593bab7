// Cross-checks signature.go against the Standard Webhooks reference Go
// library (github.com/standard-webhooks/standard-webhooks/libraries, a
// test-only dependency): signatures it makes verify here, and the other
// way round.

package standardwebhooks

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	reference "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func referenceWebhook(t testing.TB, secret string) *reference.Webhook {
	t.Helper()
	wh, err := reference.NewWebhook(secret)
	require.NoError(t, err)
	return wh
}

func referenceHeaders(id, ts, sig string) http.Header {
	h := http.Header{}
	h.Set(reference.HeaderWebhookID, id)
	h.Set(reference.HeaderWebhookTimestamp, ts)
	h.Set(reference.HeaderWebhookSignature, sig)
	return h
}

// interopBodies covers JSON, empty, binary, non-ASCII, dot-laden and
// large payloads.
func interopBodies() [][]byte {
	big := bytes.Repeat([]byte(`{"k":"v"},`), 100_000)
	bin := make([]byte, 256)
	for i := range bin {
		bin[i] = byte(i)
	}
	return [][]byte{[]byte(specPayload), nil, {}, bin, []byte("héllo ✓ 日本"), []byte("...1614265330..."), big}
}

func TestInteropSignMatchesReference(t *testing.T) {
	ids := []string{specMsgID, "a", "msg.with.dots", "id with spaces", strings.Repeat("z", 4096)}
	times := []int64{0, 1614265330, 1_700_000_000, 4_102_444_800}
	for _, secret := range []string{specSecret, otherSecret, strings.TrimPrefix(specSecret, "whsec_")} {
		ours, theirs := mustKey(t, secret), referenceWebhook(t, secret)
		for _, id := range ids {
			for _, unix := range times {
				for _, body := range interopBodies() {
					want, err := theirs.Sign(id, time.Unix(unix, 0), body)
					require.NoError(t, err)
					ts := strconv.FormatInt(unix, 10)
					require.Equal(t, want, sign(ours, id, ts, body), "id=%.20q ts=%s len=%d", id, ts, len(body))
				}
			}
		}
	}
}

func TestInteropVerifyBothWays(t *testing.T) {
	ours := &Verifier{Keys: []Key{mustKey(t, specSecret)}, Tolerance: 5 * time.Minute}
	theirs := referenceWebhook(t, specSecret)
	for i, body := range interopBodies() {
		id := fmt.Sprintf("msg_interop_%d", i)
		now := time.Now()
		ts := strconv.FormatInt(now.Unix(), 10)

		refSig, err := theirs.Sign(id, now, body)
		require.NoError(t, err)
		assert.NoError(t, ours.Verify(id, ts, refSig, body), "ours rejects reference signature")

		ourSig := sign(ours.Keys[0], id, ts, body)
		assert.NoError(t, theirs.Verify(body, referenceHeaders(id, ts, ourSig)), "reference rejects our signature")

		tampered := append(bytes.Clone(body), '!')
		assert.ErrorIs(t, ours.Verify(id, ts, refSig, tampered), ErrBadSignature)
		assert.Error(t, theirs.Verify(tampered, referenceHeaders(id, ts, ourSig)))
	}
}

// FuzzInteropVerify is a differential check: we are deliberately stricter
// than the reference (canonical timestamps, strict base64, bounded
// headers), so anything we accept the reference must accept too. The
// reference always uses the wall clock, so its timestamp check is skipped.
func FuzzInteropVerify(f *testing.F) {
	f.Add(specMsgID, specTimestamp, specSignature, []byte(specPayload))
	f.Add(specMsgID, specTimestamp, specOtherSig+" "+specSignature+",x", []byte(specPayload))
	f.Add(specMsgID, "01614265330", specSignature, []byte(specPayload))
	k := mustKey(f, specSecret)
	ours := &Verifier{Keys: []Key{k}, Tolerance: 5 * time.Minute, Now: fixedClock(specTime)}
	theirs := referenceWebhook(f, specSecret)
	f.Fuzz(func(t *testing.T, id, ts, header string, body []byte) {
		if ours.Verify(id, ts, header, body) == nil {
			if err := theirs.VerifyIgnoringTimestamp(body, referenceHeaders(id, ts, header)); err != nil {
				t.Fatalf("we accept, reference rejects: %v", err)
			}
		}
		if !ours.timestampOK(ts) {
			return
		}
		unix, _ := strconv.ParseInt(ts, 10, 64)
		want, _ := theirs.Sign(id, time.Unix(unix, 0), body)
		if got := sign(k, id, ts, body); got != want {
			t.Fatalf("signature mismatch: ours %s, reference %s", got, want)
		}
	})
}
