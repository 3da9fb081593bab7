package receivebooking

// API-key authentication: the x-api-key and "Authorization: Bearer"
// credentials, compared in constant time with every configured secret,
// and the organization the matching secret belongs to.

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
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

// secretSet holds the SHA-256 digests of the configured API keys and the
// organization each belongs to ("" for a shared key, which may act for any
// organization). Comparing fixed-size digests makes the comparison
// independent of both the secrets' and the candidate's length, so neither
// leaks through timing.
type secretSet struct {
	digests [][sha256.Size]byte
	orgs    []string
	// names say which configured key each is, for the booking timeline
	// ("organization org-a key #2"): never the key itself.
	names []string
}

func newSecretSet(secrets []string) *secretSet {
	s := new(secretSet)
	s.add("", secrets...)
	return s
}

// add appends keys that belong to org ("": shared), numbered after the
// organization's keys so far.
func (s *secretSet) add(org string, secrets ...string) {
	n := 0
	for _, o := range s.orgs {
		if o == org {
			n++
		}
	}
	for i, v := range secrets {
		s.addNth(org, n+i+1, v)
	}
}

// addNth appends the organization's nth configured key.
func (s *secretSet) addNth(org string, n int, secret string) {
	s.digests = append(s.digests, sha256.Sum256([]byte(secret)))
	s.orgs = append(s.orgs, org)
	s.names = append(s.names, credentialName(org, "key", n))
}

// credentialName names a configured credential (kind "key" or "signing
// secret", the nth of its organization's, or of the shared ones) without
// its value.
func credentialName(org, kind string, n int) string {
	if org == "" {
		return fmt.Sprintf("shared %s #%d", kind, n)
	}
	return fmt.Sprintf("organization %s %s #%d", org, kind, n)
}

func (s *secretSet) empty() bool { return s == nil || len(s.digests) == 0 }

// match reports whether any candidate equals any configured secret, the
// organization the matched secrets bind the request to, and their names.
// It compares every candidate with every secret, without an early exit, so
// the time taken says neither which secret matched nor how much of it.
func (s *secretSet) match(candidates []string) (bool, orgBinding, string) {
	hits := make([]int, len(s.digests))
	for _, c := range candidates {
		d := sha256.Sum256([]byte(c))
		for i := range s.digests {
			hits[i] |= subtle.ConstantTimeCompare(d[:], s.digests[i][:])
		}
	}
	var b orgBinding
	var names []string
	for i, hit := range hits {
		if hit == 1 {
			names = append(names, s.names[i])
			b = b.and(s.orgs[i])
		}
	}
	return len(names) > 0, b, strings.Join(names, " + ")
}

// orgBinding is the organization a request's credentials bind it to.
type orgBinding struct {
	org string
	// conflict: credentials of two different organizations.
	conflict bool
}

// join binds b to o's organization as well.
func (b orgBinding) join(o orgBinding) orgBinding {
	b.conflict = b.conflict || o.conflict
	return b.and(o.org)
}

// and binds b to org as well ("" binds to nothing more).
func (b orgBinding) and(org string) orgBinding {
	switch {
	case org == "" || b.conflict:
	case b.org == "":
		b.org = org
	case b.org != org:
		b.conflict = true
	}
	return b
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
// the organization it binds the request to and the key's name, and strips
// the credentials from the request either way.
func (s *secretSet) authenticate(h http.Header) (bool, orgBinding, string) {
	creds, ok := credentials(h)
	stripCredentials(h)
	if !ok {
		return false, orgBinding{}, ""
	}
	return s.match(creds)
}
