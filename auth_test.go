package receivebooking

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestAuthorizationToken: "Bearer <key>" and a bare "<key>" present a key
// (the Edge Function took both); another scheme presents none.
func TestAuthorizationToken(t *testing.T) {
	cases := []struct {
		in     string
		token  string
		bearer bool
	}{
		{"Bearer abc", "abc", true},
		{"bearer abc", "abc", true},
		{"BEARER abc", "abc", true},
		{"BeArEr abc", "abc", true},
		{"  Bearer   abc  ", "abc", true},
		{"Bearer a b", "a b", true},
		{"Bearer " + utSecret, utSecret, true},
		{"Bearer ", "", false},
		{"Bearer", "", false},
		{"Bearerabc", "Bearerabc", true},
		{"Bearer\tabc", "Bearer\tabc", true},
		{"Basic abc", "", false},
		{"Token abc", "", false},
		{"abc", "abc", true},
		{"", "", false},
		{"Bear abc", "", false},
		{"Bearer  ", "", false},
		{"Bearer \u00e9t\u00e9", "\u00e9t\u00e9", true},
	}
	for _, tc := range cases {
		token, ok := authorizationToken(tc.in)
		assert.Equal(t, tc.bearer, ok, "%q", tc.in)
		assert.Equal(t, tc.token, token, "%q", tc.in)
	}
}

func header(pairs ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(pairs); i += 2 {
		h.Add(pairs[i], pairs[i+1])
	}
	return h
}

func TestCredentials(t *testing.T) {
	many := func(n int) http.Header {
		h := http.Header{}
		for i := 0; i < n; i++ {
			h.Add("X-Api-Key", "k"+strings.Repeat("x", i))
		}
		return h
	}
	cases := []struct {
		name  string
		h     http.Header
		creds []string
		ok    bool
	}{
		{"none", http.Header{}, nil, false},
		{"x-api-key", header("X-Api-Key", "a"), []string{"a"}, true},
		{"x-api-key trimmed", header("X-Api-Key", "  a \t"), []string{"a"}, true},
		{"bearer", header("Authorization", "Bearer b"), []string{"b"}, true},
		{"both, x-api-key first", header("Authorization", "bearer b", "X-Api-Key", "a"), []string{"a", "b"}, true},
		{"repeated x-api-key", header("X-Api-Key", "a", "X-Api-Key", "c"), []string{"a", "c"}, true},
		{"non-bearer authorization ignored", header("Authorization", "Basic Zm9v"), nil, false},
		{"non-bearer authorization beside x-api-key", header("Authorization", "Basic Zm9v", "X-Api-Key", "a"), []string{"a"}, true},
		{"empty x-api-key", header("X-Api-Key", ""), nil, false},
		{"blank x-api-key", header("X-Api-Key", "   "), nil, false},
		{"empty x-api-key beside a bearer: the bearer counts", header("X-Api-Key", "", "Authorization", "Bearer b"), []string{"b"}, true},
		{"eight credentials", many(8), nil, true},
		{"nine credentials: too many", many(9), nil, false},
		{"8 x-api-key + 1 bearer: too many", func() http.Header {
			h := many(8)
			h.Add("Authorization", "Bearer b")
			return h
		}(), nil, false},
		{"credential of 4096 bytes", header("X-Api-Key", strings.Repeat("k", 4096)), []string{strings.Repeat("k", 4096)}, true},
		{"credential of 4097 bytes: oversized", header("X-Api-Key", strings.Repeat("k", 4097)), nil, false},
		{"oversized bearer", header("Authorization", "Bearer "+strings.Repeat("k", 4097)), nil, false},
		{"oversized beside a valid one", header("X-Api-Key", "a", "Authorization", "Bearer "+strings.Repeat("k", 5000)), nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			creds, ok := credentials(tc.h)
			assert.Equal(t, tc.ok, ok)
			if tc.creds != nil || !tc.ok {
				assert.Equal(t, tc.creds, creds)
			} else {
				assert.Len(t, creds, 8)
			}
		})
	}
}

func TestSecretSetMatch(t *testing.T) {
	s := newSecretSet([]string{"alpha", "beta", "gamma-" + utSecret})
	cases := []struct {
		cands []string
		want  bool
	}{
		{[]string{"alpha"}, true},
		{[]string{"beta"}, true},
		{[]string{"gamma-" + utSecret}, true},
		{[]string{"wrong", "beta"}, true},
		{[]string{"beta", "wrong"}, true},
		{[]string{"alpha", "beta"}, true}, // two matches are still one yes
		{[]string{"alpha", "beta", "gamma-" + utSecret}, true},
		{[]string{"Alpha"}, false},
		{[]string{"alph"}, false},
		{[]string{"alphaa"}, false},
		{[]string{"alpha "}, false},
		{[]string{""}, false},
		{[]string{utSecret}, false},
		{[]string{"wrong", "also wrong"}, false},
		{nil, false},
	}
	for _, tc := range cases {
		got, bind, _ := s.match(tc.cands)
		assert.Equal(t, tc.want, got, "%q", tc.cands)
		assert.Equal(t, orgBinding{}, bind, "shared keys bind to no organization")
	}

	matches := func(s *secretSet, c ...string) bool { ok, _, _ := s.match(c); return ok }
	one := newSecretSet([]string{"only"})
	assert.True(t, matches(one, "only"))
	assert.False(t, matches(one, "on"))
	empty := newSecretSet(nil)
	assert.False(t, matches(empty, ""), "no configured secret matches nothing")
	assert.False(t, matches(empty, "x"))

	// The set keeps only digests: the secrets themselves are not held.
	for _, d := range s.digests {
		assert.NotContains(t, string(d[:]), "alpha")
	}
}

// TestSecretSetOrganizations: a key bound to an organization binds the
// request to it; keys of two organizations presented together conflict; a
// shared key beside a bound one binds to the bound one's organization.
func TestSecretSetOrganizations(t *testing.T) {
	s := newSecretSet([]string{"shared"})
	s.add("org-a", "key-a", "key-a-previous")
	s.add("org-b", "key-b")
	cases := []struct {
		cands []string
		ok    bool
		want  orgBinding
	}{
		{[]string{"shared"}, true, orgBinding{}},
		{[]string{"key-a"}, true, orgBinding{org: "org-a"}},
		{[]string{"key-a-previous"}, true, orgBinding{org: "org-a"}},
		{[]string{"key-b"}, true, orgBinding{org: "org-b"}},
		{[]string{"key-a", "key-a-previous"}, true, orgBinding{org: "org-a"}},
		{[]string{"shared", "key-b"}, true, orgBinding{org: "org-b"}},
		{[]string{"key-a", "key-b"}, true, orgBinding{org: "org-a", conflict: true}},
		{[]string{"wrong", "key-b"}, true, orgBinding{org: "org-b"}},
		{[]string{"key-c"}, false, orgBinding{}},
	}
	for _, tc := range cases {
		ok, bind, _ := s.match(tc.cands)
		assert.Equal(t, tc.ok, ok, "%q", tc.cands)
		assert.Equal(t, tc.want, bind, "%q", tc.cands)
	}
	assert.Equal(t, orgBinding{org: "org-a", conflict: true}, orgBinding{org: "org-a"}.join(orgBinding{org: "org-b"}))
	assert.Equal(t, orgBinding{org: "org-a"}, orgBinding{}.join(orgBinding{org: "org-a"}))
}

func TestAuthenticateStripsEitherWay(t *testing.T) {
	s := newSecretSet([]string{utSecret})
	for _, tc := range []struct {
		h    http.Header
		want bool
	}{
		{header("X-Api-Key", utSecret), true},
		{header("Authorization", "Bearer "+utSecret), true},
		{header("X-Api-Key", "wrong"), false},
		{header("Authorization", "Basic "+utSecret, "X-Api-Key", "wrong"), false},
		{header("X-Api-Key", strings.Repeat("k", 5000)), false},
		{http.Header{}, false},
	} {
		h := tc.h
		h.Set("Apikey", "kept")
		got, _, _ := s.authenticate(h)
		assert.Equal(t, tc.want, got)
		assert.Empty(t, h.Values("X-Api-Key"))
		assert.Empty(t, h.Values("Authorization"))
		assert.Equal(t, "kept", h.Get("Apikey"), "only the credential headers are stripped")
	}
}
