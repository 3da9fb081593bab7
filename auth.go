package receivebooking

// API-key authentication: the x-api-key and "Authorization: Bearer"
// credentials, compared in constant time with every configured secret.

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

const (
	headerAPIKey        = "X-Api-Key"
	headerAuthorization = "Authorization"

	// maxCredentials bounds the work one request can cause: a sender has
	// no reason to present more than a couple of keys.
	maxCredentials = 8
	// maxCredentialLen bounds one credential; no configured secret is
	// anywhere near it, and longer ones are simply not a match.
	maxCredentialLen = 4096
)

// secretSet holds the SHA-256 digests of the configured API keys. Comparing
// fixed-size digests makes the comparison independent of both the secrets'
// and the candidate's length, so neither leaks through timing.
type secretSet struct {
	digests [][sha256.Size]byte
}

func newSecretSet(secrets []string) *secretSet {
	s := &secretSet{digests: make([][sha256.Size]byte, len(secrets))}
	for i, v := range secrets {
		s.digests[i] = sha256.Sum256([]byte(v))
	}
	return s
}

// match reports whether any candidate equals any configured secret. It
// compares every candidate with every secret, without an early exit, so the
// time taken says neither which secret matched nor how much of it.
func (s *secretSet) match(candidates []string) bool {
	var found int
	for _, c := range candidates {
		d := sha256.Sum256([]byte(c))
		for i := range s.digests {
			found |= subtle.ConstantTimeCompare(d[:], s.digests[i][:])
		}
	}
	return found == 1
}

// credentials collects the API keys a request presents: every x-api-key
// value and every Authorization value that is "Bearer <key>" (scheme
// case-insensitive) or a bare key.
// ok is false when the request presents too many or oversized credentials,
// which no honest sender does.
func credentials(h http.Header) (creds []string, ok bool) {
	// An empty value presents nothing; it neither matches nor spoils
	// another credential of the same request.
	for _, v := range h.Values(headerAPIKey) {
		if v = strings.TrimSpace(v); v != "" {
			creds = append(creds, v)
		}
	}
	for _, v := range h.Values(headerAuthorization) {
		if tok, ok := authorizationToken(v); ok && tok != "" {
			creds = append(creds, tok)
		}
	}
	if len(creds) > maxCredentials {
		return nil, false
	}
	for _, c := range creds {
		if len(c) > maxCredentialLen {
			return nil, false
		}
	}
	return creds, len(creds) > 0
}

// authorizationToken extracts the key of an Authorization header value:
// "Bearer <key>" (scheme case-insensitive), or a bare "<key>" without a
// scheme, which the Edge Function accepted too. Another scheme ("Basic
// …") presents no key.
func authorizationToken(v string) (string, bool) {
	v = strings.TrimSpace(v)
	scheme, rest, spaced := strings.Cut(v, " ")
	if !spaced {
		// A bare key; a lone scheme name is no key.
		if v == "" || strings.EqualFold(v, "bearer") {
			return "", false
		}
		return v, true
	}
	if !strings.EqualFold(scheme, "bearer") {
		return "", false
	}
	return strings.TrimSpace(rest), true
}

// stripCredentials removes the sender's credentials from the request, so
// that nothing after this handler can log or forward them. Caddy's access
// log is not covered: Caddy copies the request for it before any handler
// runs, so the README's log filter drops X-Api-Key there (Caddy redacts
// Authorization itself).
func stripCredentials(h http.Header) {
	h.Del(headerAPIKey)
	h.Del(headerAuthorization)
}

// authenticate reports whether the request carries a configured API key,
// and strips the credentials from it either way.
func (s *secretSet) authenticate(h http.Header) bool {
	creds, ok := credentials(h)
	stripCredentials(h)
	return ok && s.match(creds)
}
