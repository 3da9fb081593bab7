// Package standardwebhooks verifies Standard Webhooks signatures
// (https://www.standardwebhooks.com, the scheme Svix uses) and remembers
// recently seen webhook-ids to refuse replays. It is pure standard-library
// code with no Caddy dependency, tested against the reference library and
// fuzzed on its own.
package standardwebhooks

import (
	"container/list"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// SecretPrefix marks a symmetric Standard Webhooks secret.
	SecretPrefix = "whsec_"

	// minSigningKeyLen is the spec's minimum for symmetric secrets ("at
	// least 24 bytes"). The reference libraries accept any length, but a
	// shorter key is a misconfiguration worth failing loudly at startup.
	// The spec's own test secret is exactly 24 bytes.
	minSigningKeyLen = 24

	// DefaultTolerance is the spec libraries' default clock window; it is
	// used when a verifier is built without one, because a zero window
	// would reject every real request.
	DefaultTolerance = 5 * time.Minute

	// maxSignatureHeaderLen bounds the parsing work an unauthenticated
	// client can cause. Real headers hold one or two ~48-byte entries.
	maxSignatureHeaderLen = 4096

	// maxSignatureEntries caps how many v1 signatures are compared. With
	// one HMAC per key computed up front, each extra entry only costs a
	// 32-byte constant-time compare, so this is a belt-and-braces bound.
	maxSignatureEntries = 16

	// DefaultReplayEntries bounds replay memory when no size is given:
	// roughly 200 bytes per entry, so about 20 MB at most.
	DefaultReplayEntries = 100_000
)

// Sentinel errors returned by verify. They are safe to log: none carries
// header values or key material.
var (
	ErrMissingSignature = errors.New("missing webhook-id, webhook-timestamp or webhook-signature header")
	ErrStaleTimestamp   = errors.New("webhook timestamp is invalid or outside the allowed window")
	ErrBadSignature     = errors.New("no matching webhook signature")
	ErrInvalidSecret    = errors.New("invalid signing secret")
)

// Key is a decoded symmetric secret. Its String method redacts the
// value so that an accidental %v in a log line cannot leak it.
type Key []byte

// String redacts the key for fmt verbs such as %v, %s and %x.
func (Key) String() string { return "Key(redacted)" }

// GoString redacts the key for %#v.
func (k Key) GoString() string { return k.String() }

// ParseSecret decodes a "whsec_<base64>" secret. A bare base64
// string is accepted too, as the reference libraries do. Errors describe
// what is wrong without echoing any part of the secret.
func ParseSecret(s string) (Key, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "whpk_") || strings.HasPrefix(s, "whsk_") {
		return nil, fmt.Errorf("%w: asymmetric (ed25519) keys are not supported", ErrInvalidSecret)
	}
	s = strings.TrimPrefix(s, SecretPrefix)
	if s == "" {
		return nil, fmt.Errorf("%w: signing secret is empty", ErrInvalidSecret)
	}
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: signing secret is not valid base64", ErrInvalidSecret)
	}
	if len(key) < minSigningKeyLen {
		return nil, fmt.Errorf("%w: signing secret decodes to %d bytes, need at least %d",
			ErrInvalidSecret, len(key), minSigningKeyLen)
	}
	return key, nil
}

// mac returns HMAC-SHA256 over "id.timestamp.body". It streams the parts
// into the hash so the body is never copied.
func (k Key) Sign(id, timestamp string, body []byte) []byte {
	h := hmac.New(sha256.New, k)
	h.Write([]byte(id))
	h.Write([]byte{'.'})
	h.Write([]byte(timestamp))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// Verifier checks Standard Webhooks signatures. Several keys may
// be configured so a secret can be rotated without downtime: a request
// signed by any one of them is accepted.
type Verifier struct {
	// Keys are the accepted signing keys; a signature by any one passes.
	Keys []Key
	// Tolerance is the allowed clock skew either way. Default:
	// DefaultTolerance.
	Tolerance time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// verify authenticates a webhook from its three headers and raw body.
// The timestamp is checked before any HMAC so stale requests cost nothing.
func (v *Verifier) Verify(id, timestamp, sigHeader string, body []byte) error {
	_, err := v.VerifyKeys(id, timestamp, sigHeader, body)
	return err
}

// VerifyKeys is Verify that also says which keys signed the webhook:
// signed[i] is true when Keys[i] made one of its signatures.
func (v *Verifier) VerifyKeys(id, timestamp, sigHeader string, body []byte) (signed []bool, err error) {
	if id == "" || timestamp == "" || sigHeader == "" {
		return nil, ErrMissingSignature
	}
	if !v.timestampOK(timestamp) {
		return nil, ErrStaleTimestamp
	}
	signed, ok := v.signatureOK(id, timestamp, sigHeader, body)
	if !ok {
		return nil, ErrBadSignature
	}
	return signed, nil
}

// timestampOK accepts only canonical non-negative decimal unix seconds
// (no sign, no leading zeros, no spaces) within the tolerance window.
// Canonical form matters because the header string itself is signed:
// it keeps us byte-compatible with libraries that re-format the integer.
func (v *Verifier) timestampOK(ts string) bool {
	secs, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || secs < 0 || strconv.FormatInt(secs, 10) != ts {
		return false
	}
	// time.Time.Sub saturates instead of overflowing on absurd values.
	skew := v.clock().Sub(time.Unix(secs, 0))
	tol := v.window()
	return skew <= tol && skew >= -tol
}

// signatureOK compares every v1 entry against every key's MAC. It never
// exits early and ORs the results, so timing depends only on the number
// of entries and keys, not on which (if any) matched. Each key's HMAC is
// computed once, so a long header costs compares, not HMACs.
func (v *Verifier) signatureOK(id, ts, sigHeader string, body []byte) ([]bool, bool) {
	sigs := parseSignatureHeader(sigHeader)
	match := 0
	hits := make([]int, len(v.Keys))
	for i, k := range v.Keys {
		want := k.Sign(id, ts, body)
		for _, sig := range sigs {
			// subtle.ConstantTimeCompare is what hmac.Equal wraps; its int
			// result lets us accumulate without a data-dependent branch.
			hits[i] |= subtle.ConstantTimeCompare(sig, want)
		}
		match |= hits[i]
	}
	signed := make([]bool, len(hits))
	for i, h := range hits {
		signed[i] = h == 1
	}
	return signed, match == 1
}

func (v *Verifier) clock() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

func (v *Verifier) window() time.Duration {
	if v.Tolerance > 0 {
		return v.Tolerance
	}
	return DefaultTolerance
}

// parseSignatureHeader returns the decoded v1 signatures from a
// space-separated "v1,<base64> v1a,<base64> ..." header. Entries with
// another version (such as asymmetric v1a), malformed base64 or a length
// other than SHA-256's are skipped: they can never match. An over-long
// header yields nothing, and at most maxSignatureEntries are returned.
func parseSignatureHeader(h string) [][]byte {
	if len(h) > maxSignatureHeaderLen {
		return nil
	}
	var sigs [][]byte
	// Split on single spaces exactly as the spec and reference libraries
	// do (empty fields from repeated spaces are skipped by decodeV1).
	for entry := range strings.SplitSeq(h, " ") {
		if len(sigs) == maxSignatureEntries {
			break
		}
		if sig, ok := decodeV1(entry); ok {
			sigs = append(sigs, sig)
		}
	}
	return sigs
}

// decodeV1 decodes one "v1,<base64>" entry. The length check avoids
// decoding junk; strict base64 rejects non-canonical padding bits so one
// signature has exactly one spelling, as with the reference libraries'
// string comparison.
func decodeV1(entry string) ([]byte, bool) {
	version, b64, ok := strings.Cut(entry, ",")
	if !ok || version != "v1" || len(b64) != base64.StdEncoding.EncodedLen(sha256.Size) {
		return nil, false
	}
	sig, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil || len(sig) != sha256.Size {
		return nil, false
	}
	return sig, true
}

// ReplayCache remembers recently accepted webhook-ids so a captured,
// validly signed request cannot be replayed inside the timestamp window.
// Ids are stored as SHA-256 digests so each entry has a fixed size however
// long the id is. Memory is bounded by maxEntries; when full, the oldest
// id is dropped first. Callers should record an id only after its
// signature verified, so unauthenticated traffic cannot flush the cache.
type ReplayCache struct {
	mu         sync.Mutex
	ttl        time.Duration
	maxEntries int
	order      *list.List // of *replayEntry, oldest at the front
	byKey      map[[sha256.Size]byte]*list.Element
}

type replayEntry struct {
	key  [sha256.Size]byte
	seen time.Time
}

// NewReplayCache returns a cache that remembers ids for 2*tolerance: a
// request is accepted while its timestamp is within ±tolerance of now,
// so the same signed request can arrive anywhere in a 2*tolerance span.
// maxEntries <= 0 selects DefaultReplayEntries; tolerance <= 0 selects
// DefaultTolerance, matching Verifier.
func NewReplayCache(tolerance time.Duration, maxEntries int) *ReplayCache {
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	if maxEntries <= 0 {
		maxEntries = DefaultReplayEntries
	}
	return &ReplayCache{
		ttl:        2 * tolerance,
		maxEntries: maxEntries,
		order:      list.New(),
		byKey:      make(map[[sha256.Size]byte]*list.Element),
	}
}

// seen reports whether id was recorded within the last ttl, and records
// it if not. Expired entries are evicted from the front first, so the
// cost is O(1) amortised.
func (c *ReplayCache) Seen(id string, now time.Time) bool {
	key := sha256.Sum256([]byte(id))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.evictExpired(now)
	if el, ok := c.byKey[key]; ok {
		if !c.expired(el, now) {
			return true
		}
		c.remove(el) // out-of-order clock left a stale entry behind
	}
	c.byKey[key] = c.order.PushBack(&replayEntry{key: key, seen: now})
	if c.order.Len() > c.maxEntries {
		c.remove(c.order.Front())
	}
	return false
}

// forget drops id so a later delivery with the same id is accepted. Use
// it when processing failed after seen recorded the id, so the sender's
// retry (same id, new timestamp) is not mistaken for a replay.
func (c *ReplayCache) Forget(id string) {
	key := sha256.Sum256([]byte(id))
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byKey[key]; ok {
		c.remove(el)
	}
}

// size reports the number of remembered ids (for tests and metrics).
func (c *ReplayCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

func (c *ReplayCache) evictExpired(now time.Time) {
	for el := c.order.Front(); el != nil && c.expired(el, now); el = c.order.Front() {
		c.remove(el)
	}
}

func (c *ReplayCache) expired(el *list.Element, now time.Time) bool {
	return now.Sub(el.Value.(*replayEntry).seen) >= c.ttl
}

func (c *ReplayCache) remove(el *list.Element) {
	delete(c.byKey, el.Value.(*replayEntry).key)
	c.order.Remove(el)
}
