// Package scrub removes secrets from text before it leaves the process: log
// lines, stored job errors, admin answers. One Scrubber knows every secret
// configured for a queue (webhook keys, signing secrets, the upstream key,
// the database password), so that no path has to remember which secrets it
// might meet.
package scrub

import (
	"net/url"
	"slices"
	"strings"
	"sync"
)

// Redacted replaces every secret found.
const Redacted = "[redacted]"

// minLen is the shortest value treated as a secret: shorter ones would
// redact ordinary words and digits (configuration refuses them as keys
// anyway).
const minLen = 4

// Scrubber replaces known secrets in text. Secrets are added by owner (a
// config, a database) and removed with it, so that a reload that drops a
// key stops scrubbing it once no owner holds it. The zero value is ready to
// use and scrubs nothing; a nil *Scrubber is a no-op too.
type Scrubber struct {
	mu     sync.RWMutex
	owners map[any][]string
	r      *strings.Replacer
}

// Set makes owner's secrets exactly these (replacing any it set before).
func (s *Scrubber) Set(owner any, secrets ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.owners == nil {
		s.owners = make(map[any][]string)
	}
	s.owners[owner] = secrets
	s.rebuild()
}

// Remove forgets owner's secrets.
func (s *Scrubber) Remove(owner any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.owners, owner)
	s.rebuild()
}

func (s *Scrubber) rebuild() {
	var all []string
	for _, secrets := range s.owners {
		for _, v := range secrets {
			all = append(all, variants(v)...)
		}
	}
	// Longest first, so that a secret containing another is replaced
	// whole (strings.Replacer tries the old strings in argument order).
	slices.SortFunc(all, func(a, b string) int { return len(b) - len(a) })
	all = slices.Compact(all)
	if len(all) == 0 {
		s.r = nil
		return
	}
	pairs := make([]string, 0, 2*len(all))
	for _, v := range all {
		pairs = append(pairs, v, Redacted)
	}
	s.r = strings.NewReplacer(pairs...)
}

// variants are the forms a secret takes in text: as is, and escaped the
// ways a URL or a query string carries it.
func variants(v string) []string {
	if len(v) < minLen {
		return nil
	}
	out := []string{v}
	for _, e := range []string{url.QueryEscape(v), url.PathEscape(v)} {
		if e != v {
			out = append(out, e)
		}
	}
	return out
}

// String returns text with every known secret replaced by [redacted].
func (s *Scrubber) String(text string) string {
	if s == nil {
		return text
	}
	s.mu.RLock()
	r := s.r
	s.mu.RUnlock()
	if r == nil {
		return text
	}
	return r.Replace(text)
}
