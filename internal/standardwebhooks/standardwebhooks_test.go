package standardwebhooks

// Signature verification against the spec's vector, rotation, tolerance,
// tampering and replay memory; fuzz targets for the header parser.

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Published test vector from the Standard Webhooks reference Go library
// (libraries/go/webhook_test.go, TestWebhookSign).
const (
	specSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	specMsgID     = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	specTimestamp = "1614265330"
	specPayload   = `{"test": 2432232314}`
	specSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
	// specOtherSig is the reference tests' "invalid signature" value.
	specOtherSig = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
)

var specTime = time.Unix(1614265330, 0)

// otherSecret is a second, unrelated 32-byte key for rotation tests.
var otherSecret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("another-test-key-32-bytes-long!!"))

func mustKey(t testing.TB, s string) Key {
	t.Helper()
	k, err := ParseSecret(s)
	require.NoError(t, err)
	return k
}

// sign builds a "v1,<base64>" header entry the way a sender would.
func sign(k Key, id, ts string, body []byte) string {
	return "v1," + base64.StdEncoding.EncodeToString(k.Sign(id, ts, body))
}

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

func specVerifier(t testing.TB, secrets ...string) *Verifier {
	t.Helper()
	v := &Verifier{Tolerance: 5 * time.Minute, Now: fixedClock(specTime)}
	for _, s := range secrets {
		v.Keys = append(v.Keys, mustKey(t, s))
	}
	return v
}

func TestSignatureSpecVector(t *testing.T) {
	k := mustKey(t, specSecret)
	assert.Equal(t, specSignature, sign(k, specMsgID, specTimestamp, []byte(specPayload)))

	v := specVerifier(t, specSecret)
	assert.NoError(t, v.Verify(specMsgID, specTimestamp, specSignature, []byte(specPayload)))
}

func TestSignatureParseSecret(t *testing.T) {
	prefixed := mustKey(t, specSecret)
	bare := mustKey(t, strings.TrimPrefix(specSecret, "whsec_"))
	assert.Equal(t, prefixed, bare, "bare base64 must decode like whsec_")
	assert.Len(t, prefixed, 24)
	assert.Equal(t, prefixed, mustKey(t, " "+specSecret+"\n"), "surrounding whitespace is trimmed")

	short := "whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 23))
	secretLooking := "whsec_Mf!Q9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	for name, in := range map[string]string{
		"empty":        "",
		"prefix only":  "whsec_",
		"blank":        "   ",
		"not base64":   secretLooking,
		"url base64":   "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2La-_Sw",
		"unpadded":     "whsec_" + base64.RawStdEncoding.EncodeToString(make([]byte, 25)),
		"too short":    short,
		"asym public":  "whpk_" + base64.StdEncoding.EncodeToString(make([]byte, 32)),
		"asym private": "whsk_" + base64.StdEncoding.EncodeToString(make([]byte, 64)),
	} {
		t.Run(name, func(t *testing.T) {
			k, err := ParseSecret(in)
			require.Error(t, err)
			assert.Nil(t, k)
			assert.ErrorIs(t, err, ErrInvalidSecret)
			body := strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(in), "whsec_"), "whpk_")
			if len(body) > 4 {
				assert.NotContains(t, err.Error(), body, "error must not echo the secret")
			}
		})
	}
}

func TestSignatureKeyRedacted(t *testing.T) {
	k := mustKey(t, specSecret)
	raw := string(k)
	for _, verb := range []string{"%v", "%s", "%x", "%X", "%q", "%#v", "%+v"} {
		out := fmt.Sprintf(verb, k)
		assert.NotContains(t, out, raw, verb)
		assert.NotContains(t, out, fmt.Sprintf("%x", []byte(k)), verb)
		assert.NotContains(t, out, strings.TrimPrefix(specSecret, "whsec_"), verb)
	}
	out := fmt.Sprintf("%v", []Key{k})
	assert.NotContains(t, out, fmt.Sprintf("%x", []byte(k)))
}

func TestVerifySignatureHeaderVariants(t *testing.T) {
	v := specVerifier(t, specSecret)
	body := []byte(specPayload)
	validB64 := strings.TrimPrefix(specSignature, "v1,")
	cases := []struct {
		name   string
		header string
		want   error
	}{
		{"single valid", specSignature, nil},
		{"valid among others", strings.Join([]string{specOtherSig, "v2," + validB64, specSignature, specOtherSig}, " "), nil},
		{"valid last after junk", "garbage v1, v1,!!! ,v1 " + specSignature, nil},
		{"extra spaces", "  " + specOtherSig + "   " + specSignature + "  ", nil},
		{"tab is not a separator", specOtherSig + "\t" + specSignature, ErrBadSignature},
		{"v1a ignored even with matching bytes", "v1a," + validB64, ErrBadSignature},
		{"V1 uppercase ignored", "V1," + validB64, ErrBadSignature},
		{"only wrong sigs", specOtherSig + " " + specOtherSig, ErrBadSignature},
		{"no comma", "v1" + validB64, ErrBadSignature},
		{"trailing field", specSignature + ",x", ErrBadSignature},
		{"unpadded", strings.TrimSuffix(specSignature, "="), ErrBadSignature},
		{"url alphabet", strings.NewReplacer("+", "-", "/", "_").Replace(specSignature), ErrBadSignature},
		{"truncated", specSignature[:20], ErrBadSignature},
		{"whitespace only", "   ", ErrBadSignature},
		{"hex instead of base64", "v1," + fmt.Sprintf("%x", mustKey(t, specSecret).Sign(specMsgID, specTimestamp, body)), ErrBadSignature},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := v.Verify(specMsgID, specTimestamp, tc.header, body)
			if tc.want == nil {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, tc.want)
			}
		})
	}
}

func TestVerifySignatureTampering(t *testing.T) {
	v := specVerifier(t, specSecret)
	body := []byte(specPayload)
	flip := func(s string, i int) string { b := []byte(s); b[i] ^= 1; return string(b) }

	for i := range body {
		b := bytes.Clone(body)
		b[i] ^= 0x01
		assert.ErrorIs(t, v.Verify(specMsgID, specTimestamp, specSignature, b), ErrBadSignature, "body byte %d", i)
	}
	for i := range specMsgID {
		assert.ErrorIs(t, v.Verify(flip(specMsgID, i), specTimestamp, specSignature, body), ErrBadSignature, "id byte %d", i)
	}
	// Changing the timestamp by a second stays inside the window, so only
	// the signature can catch it.
	for _, ts := range []string{"1614265331", "1614265329"} {
		assert.ErrorIs(t, v.Verify(specMsgID, ts, specSignature, body), ErrBadSignature, ts)
	}
	assert.ErrorIs(t, v.Verify(specMsgID, specTimestamp, specSignature, append(bytes.Clone(body), '\n')), ErrBadSignature)
	assert.ErrorIs(t, v.Verify(specMsgID, specTimestamp, specSignature, body[:len(body)-1]), ErrBadSignature)
	assert.ErrorIs(t, v.Verify(specMsgID, specTimestamp, specSignature, nil), ErrBadSignature)
}

func TestVerifySignatureWrongKey(t *testing.T) {
	v := specVerifier(t, otherSecret)
	assert.ErrorIs(t, v.Verify(specMsgID, specTimestamp, specSignature, []byte(specPayload)), ErrBadSignature)

	none := &Verifier{Now: fixedClock(specTime)}
	assert.ErrorIs(t, none.Verify(specMsgID, specTimestamp, specSignature, []byte(specPayload)), ErrBadSignature,
		"a verifier without keys accepts nothing")
}

func TestVerifySignatureRotation(t *testing.T) {
	oldKey, newKey := mustKey(t, specSecret), mustKey(t, otherSecret)
	body := []byte(specPayload)
	byOld := sign(oldKey, specMsgID, specTimestamp, body)
	byNew := sign(newKey, specMsgID, specTimestamp, body)
	third := mustKey(t, "whsec_"+base64.StdEncoding.EncodeToString([]byte("a-third-key-that-nobody-has-32b!")))
	byThird := sign(third, specMsgID, specTimestamp, body)

	both := specVerifier(t, specSecret, otherSecret)
	reversed := specVerifier(t, otherSecret, specSecret)
	for _, v := range []*Verifier{both, reversed} {
		assert.NoError(t, v.Verify(specMsgID, specTimestamp, byOld, body))
		assert.NoError(t, v.Verify(specMsgID, specTimestamp, byNew, body))
		assert.NoError(t, v.Verify(specMsgID, specTimestamp, byNew+" "+byOld, body))
		assert.NoError(t, v.Verify(specMsgID, specTimestamp, byThird+" "+byNew, body))
		assert.ErrorIs(t, v.Verify(specMsgID, specTimestamp, byThird, body), ErrBadSignature)
	}
	// Sender signs with both keys during rotation; a receiver that has
	// only one of them still accepts.
	assert.NoError(t, specVerifier(t, otherSecret).Verify(specMsgID, specTimestamp, byOld+" "+byNew, body))
}

func TestVerifySignatureMissingHeaders(t *testing.T) {
	v := specVerifier(t, specSecret)
	body := []byte(specPayload)
	for name, h := range map[string][3]string{
		"id":        {"", specTimestamp, specSignature},
		"timestamp": {specMsgID, "", specSignature},
		"signature": {specMsgID, specTimestamp, ""},
		"all":       {"", "", ""},
	} {
		assert.ErrorIs(t, v.Verify(h[0], h[1], h[2], body), ErrMissingSignature, name)
	}
	// Missing headers are reported even when the timestamp would be stale.
	assert.ErrorIs(t, v.Verify(specMsgID, "1", "", body), ErrMissingSignature)
}

func TestVerifySignatureTimestampFormat(t *testing.T) {
	v := specVerifier(t, specSecret)
	body := []byte(specPayload)
	for _, ts := range []string{
		"abc", "1614265330.0", "1614265330.5", "+1614265330", "01614265330",
		" 1614265330", "1614265330 ", "-1614265330", "1614265330000", // milliseconds
		"1.6e9", "0x6036", "99999999999999999999", "٣", "1614265330\x00",
	} {
		k := mustKey(t, specSecret)
		// Even a signature made over the odd timestamp string must fail.
		hdr := sign(k, specMsgID, ts, body) + " " + specSignature
		assert.ErrorIs(t, v.Verify(specMsgID, ts, hdr, body), ErrStaleTimestamp, "%q", ts)
	}
}

func TestVerifySignatureTolerance(t *testing.T) {
	k := mustKey(t, specSecret)
	body := []byte(specPayload)
	now := time.Unix(1_700_000_000, 0)
	v := &Verifier{Keys: []Key{k}, Tolerance: 5 * time.Minute, Now: fixedClock(now)}
	check := func(offset time.Duration) error {
		ts := strconv.FormatInt(now.Add(offset).Unix(), 10)
		return v.Verify(specMsgID, ts, sign(k, specMsgID, ts, body), body)
	}
	assert.NoError(t, check(0))
	assert.NoError(t, check(-5*time.Minute), "exactly at the past edge")
	assert.NoError(t, check(5*time.Minute), "exactly at the future edge")
	assert.ErrorIs(t, check(-5*time.Minute-time.Second), ErrStaleTimestamp)
	assert.ErrorIs(t, check(5*time.Minute+time.Second), ErrStaleTimestamp)
	assert.ErrorIs(t, check(-24*time.Hour), ErrStaleTimestamp)
	assert.ErrorIs(t, check(24*time.Hour), ErrStaleTimestamp)
	assert.ErrorIs(t, v.Verify(specMsgID, "0", specSignature, body), ErrStaleTimestamp)
	assert.ErrorIs(t, v.Verify(specMsgID, strconv.FormatInt(1<<62, 10), specSignature, body), ErrStaleTimestamp)

	// The clock is consulted on every call.
	current := now
	v.Now = func() time.Time { return current }
	ts := strconv.FormatInt(now.Unix(), 10)
	sig := sign(k, specMsgID, ts, body)
	require.NoError(t, v.Verify(specMsgID, ts, sig, body))
	current = now.Add(6 * time.Minute)
	assert.ErrorIs(t, v.Verify(specMsgID, ts, sig, body), ErrStaleTimestamp)
}

func TestVerifySignatureDefaults(t *testing.T) {
	k := mustKey(t, specSecret)
	body := []byte(specPayload)
	v := &Verifier{Keys: []Key{k}, Now: fixedClock(specTime.Add(4 * time.Minute))}
	assert.NoError(t, v.Verify(specMsgID, specTimestamp, specSignature, body), "zero tolerance means the 5 minute default")
	v.Now = fixedClock(specTime.Add(6 * time.Minute))
	assert.ErrorIs(t, v.Verify(specMsgID, specTimestamp, specSignature, body), ErrStaleTimestamp)

	// nil clock means wall time.
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	live := &Verifier{Keys: []Key{k}}
	assert.NoError(t, live.Verify(specMsgID, ts, sign(k, specMsgID, ts, body), body))
	assert.ErrorIs(t, live.Verify(specMsgID, specTimestamp, specSignature, body), ErrStaleTimestamp)
}

func TestParseSignatureHeader(t *testing.T) {
	want, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(specSignature, "v1,"))
	other, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(specOtherSig, "v1,"))

	assert.Empty(t, parseSignatureHeader(""))
	assert.Equal(t, [][]byte{want}, parseSignatureHeader(specSignature))
	assert.Equal(t, [][]byte{other, want}, parseSignatureHeader("v1a,AAAA "+specOtherSig+" x,y "+specSignature))

	// Non-canonical padding bits decode to the same bytes under lenient
	// base64; strict decoding refuses them.
	lenient := strings.TrimSuffix(specSignature, "E=") + "F="
	assert.Empty(t, parseSignatureHeader(lenient))

	// Wrong decoded length is skipped.
	assert.Empty(t, parseSignatureHeader("v1,"+base64.StdEncoding.EncodeToString(make([]byte, 31))))
	assert.Empty(t, parseSignatureHeader("v1,"+base64.StdEncoding.EncodeToString(make([]byte, 33))))

	many := strings.Repeat(specOtherSig+" ", 40) + specSignature
	got := parseSignatureHeader(many)
	assert.Len(t, got, maxSignatureEntries, "entry count is capped")

	long := strings.Repeat(" ", maxSignatureHeaderLen) + specSignature
	assert.Empty(t, parseSignatureHeader(long), "over-long header is ignored")
	v := specVerifier(t, specSecret)
	assert.ErrorIs(t, v.Verify(specMsgID, specTimestamp, long, []byte(specPayload)), ErrBadSignature)
	assert.ErrorIs(t, v.Verify(specMsgID, specTimestamp, many, []byte(specPayload)), ErrBadSignature,
		"a valid entry past the cap is not considered")
}

func TestReplayCacheDuplicate(t *testing.T) {
	c := NewReplayCache(5*time.Minute, 10)
	now := time.Unix(1_700_000_000, 0)
	assert.False(t, c.Seen("msg_1", now))
	assert.True(t, c.Seen("msg_1", now))
	assert.True(t, c.Seen("msg_1", now.Add(time.Minute)))
	assert.False(t, c.Seen("msg_2", now))
	assert.False(t, c.Seen("MSG_1", now), "ids are case-sensitive")
	assert.Equal(t, 3, c.Len())
}

func TestReplayCacheExpiry(t *testing.T) {
	c := NewReplayCache(time.Minute, 10) // remembers for 2 minutes
	t0 := time.Unix(1_700_000_000, 0)
	require.False(t, c.Seen("a", t0))
	require.False(t, c.Seen("b", t0.Add(30*time.Second)))
	assert.True(t, c.Seen("a", t0.Add(2*time.Minute-time.Nanosecond)), "still inside 2*tolerance")
	assert.False(t, c.Seen("a", t0.Add(2*time.Minute)), "forgotten after 2*tolerance")
	assert.True(t, c.Seen("a", t0.Add(2*time.Minute+time.Second)), "and re-recorded")
	assert.Equal(t, 2, c.Len())

	// A later call sweeps everything that has expired.
	assert.False(t, c.Seen("c", t0.Add(time.Hour)))
	assert.Equal(t, 1, c.Len())

	d := NewReplayCache(0, 0)
	assert.Equal(t, 2*DefaultTolerance, d.ttl)
	assert.Equal(t, DefaultReplayEntries, d.maxEntries)
}

func TestReplayCacheBoundEvictsOldest(t *testing.T) {
	c := NewReplayCache(time.Hour, 3)
	now := time.Unix(1_700_000_000, 0)
	for i, id := range []string{"a", "b", "c", "d"} {
		require.False(t, c.Seen(id, now.Add(time.Duration(i)*time.Second)))
	}
	assert.Equal(t, 3, c.Len())
	assert.True(t, c.Seen("d", now))
	assert.True(t, c.Seen("b", now), "b survives, a was oldest")
	assert.False(t, c.Seen("a", now), "a was evicted; re-recording evicts b")
	assert.False(t, c.Seen("b", now))
	assert.Equal(t, 3, c.Len())

	for i := range 1000 {
		c.Seen(strconv.Itoa(i), now)
	}
	assert.Equal(t, 3, c.Len())
	assert.Len(t, c.byKey, 3, "map and list stay in step")
}

func TestReplayCacheLongIDsAreHashed(t *testing.T) {
	c := NewReplayCache(time.Minute, 10)
	now := time.Unix(1_700_000_000, 0)
	long := strings.Repeat("x", 1<<20)
	assert.False(t, c.Seen(long+"1", now))
	assert.False(t, c.Seen(long+"2", now))
	assert.True(t, c.Seen(long+"1", now))
	assert.False(t, c.Seen("", now), "empty id is just another key")
	assert.True(t, c.Seen("", now))
}

func TestReplayCacheForget(t *testing.T) {
	c := NewReplayCache(time.Minute, 10)
	now := time.Unix(1_700_000_000, 0)
	require.False(t, c.Seen("a", now))
	c.Forget("a")
	c.Forget("never-seen")
	assert.Equal(t, 0, c.Len())
	assert.False(t, c.Seen("a", now), "a retry after forget is accepted")
	assert.True(t, c.Seen("a", now))
}

func TestReplayCacheClockSkew(t *testing.T) {
	c := NewReplayCache(time.Minute, 10)
	t0 := time.Unix(1_700_000_000, 0)
	require.False(t, c.Seen("late", t0.Add(time.Minute)))
	require.False(t, c.Seen("early", t0)) // concurrent caller read the clock earlier
	assert.True(t, c.Seen("early", t0.Add(time.Minute)))
	assert.False(t, c.Seen("early", t0.Add(2*time.Minute)), "expired entry behind a newer one is replaced")
	assert.Equal(t, 2, c.Len())
	assert.False(t, c.Seen("late", t0.Add(3*time.Minute)), "late expires on its own schedule")
	assert.Equal(t, 2, c.Len(), "no duplicate entries for one id")
	assert.Len(t, c.byKey, 2)
}

func TestReplayCacheConcurrent(t *testing.T) {
	const workers, ids = 8, 500
	c := NewReplayCache(time.Minute, ids*2)
	now := time.Now()
	var fresh atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range ids {
				id := "msg_" + strconv.Itoa((i+w*37)%ids)
				if !c.Seen(id, now.Add(time.Duration(i)*time.Millisecond)) {
					fresh.Add(1)
				}
				if i%50 == 0 {
					_ = c.Len()
				}
			}
		})
	}
	wg.Wait()
	assert.EqualValues(t, ids, fresh.Load(), "each id is fresh exactly once across goroutines")
	assert.Equal(t, ids, c.Len())
}

func TestVerifySignatureConcurrent(t *testing.T) {
	v := specVerifier(t, specSecret, otherSecret)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 200 {
				assert.NoError(t, v.Verify(specMsgID, specTimestamp, specSignature, []byte(specPayload)))
			}
		})
	}
	wg.Wait()
}

// FuzzParseSignatureHeader checks the parser never panics and keeps its
// bounds: at most maxSignatureEntries SHA-256-sized signatures, which
// survive a re-encode round trip.
func FuzzParseSignatureHeader(f *testing.F) {
	for _, s := range []string{
		"", specSignature, specSignature + " " + specOtherSig, "v1a," + strings.Repeat("A", 88),
		"v1,", ",", "v1,,", "v1,=", " \t\n", strings.Repeat("v1,x ", 30), "v1,\r\n" + specSignature[3:],
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		sigs := parseSignatureHeader(h)
		if len(sigs) > maxSignatureEntries {
			t.Fatalf("%d entries exceeds cap", len(sigs))
		}
		if len(h) > maxSignatureHeaderLen && sigs != nil {
			t.Fatal("over-long header was parsed")
		}
		parts := make([]string, len(sigs))
		for i, s := range sigs {
			if len(s) != 32 {
				t.Fatalf("entry %d has %d bytes", i, len(s))
			}
			parts[i] = "v1," + base64.StdEncoding.EncodeToString(s)
		}
		again := parseSignatureHeader(strings.Join(parts, " "))
		if len(again) != len(sigs) {
			t.Fatalf("round trip changed count %d -> %d", len(sigs), len(again))
		}
		for i := range sigs {
			if !bytes.Equal(sigs[i], again[i]) {
				t.Fatalf("round trip changed entry %d", i)
			}
		}
	})
}

// FuzzVerify checks verify never panics, only returns its sentinels, only
// succeeds when the header really carries the MAC, and always accepts a
// correctly signed message with a valid timestamp.
func FuzzVerify(f *testing.F) {
	f.Add(specMsgID, specTimestamp, specSignature, []byte(specPayload))
	f.Add(specMsgID, specTimestamp, specOtherSig+" v1a,xyz "+specSignature, []byte(specPayload))
	f.Add("", "", "", []byte(nil))
	f.Add("id.with.dots", "1614265000", "v1,AAAA", []byte("."))
	f.Add(specMsgID, "+1614265330", specSignature, []byte{0, 0xff})
	k := mustKey(f, specSecret)
	v := specVerifier(f, specSecret)
	f.Fuzz(func(t *testing.T, id, ts, header string, body []byte) {
		err := v.Verify(id, ts, header, body)
		switch {
		case err == nil:
			if !containsSig(parseSignatureHeader(header), k.Sign(id, ts, body)) {
				t.Fatal("accepted without a matching signature")
			}
		case errors.Is(err, ErrMissingSignature), errors.Is(err, ErrStaleTimestamp), errors.Is(err, ErrBadSignature):
		default:
			t.Fatalf("unexpected error %v", err)
		}
		if id == "" || !v.timestampOK(ts) {
			return
		}
		good := sign(k, id, ts, body)
		withGood := header + " " + good
		fits := len(withGood) <= maxSignatureHeaderLen && len(parseSignatureHeader(header)) < maxSignatureEntries
		if err := v.Verify(id, ts, withGood, body); fits && err != nil {
			t.Fatalf("valid signature rejected: %v", err)
		}
		if err := v.Verify(id, ts, good, append(bytes.Clone(body), 'x')); !errors.Is(err, ErrBadSignature) {
			t.Fatalf("tampered body gave %v", err)
		}
	})
}

func containsSig(sigs [][]byte, want []byte) bool {
	for _, s := range sigs {
		if bytes.Equal(s, want) {
			return true
		}
	}
	return false
}
