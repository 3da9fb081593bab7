package scrub

// Scrubber: every form of a secret is replaced, owners come and go.

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestScrubber(t *testing.T) {
	var s Scrubber
	assert.Equal(t, "nothing known", s.String("nothing known"))
	s.Set("cfg1", "s3cret-key", "p@ss word", "ab")
	s.Set("db", "s3cret-key-longer")
	cases := map[string]string{
		"key s3cret-key here":        "key [redacted] here",
		"longer s3cret-key-longer.":  "longer [redacted].",
		"escaped p%40ss+word in url": "escaped [redacted] in url",
		"path p@ss%20word":           "path [redacted]",
		"plain p@ss word":            "plain [redacted]",
		"short ab stays":             "short ab stays",
	}
	for in, want := range cases {
		assert.Equal(t, want, s.String(in), in)
	}
	s.Remove("cfg1")
	assert.Equal(t, "s3cret-key stays", s.String("s3cret-key stays"))
	assert.Equal(t, "[redacted]", s.String("s3cret-key-longer"))
	var nilS *Scrubber
	assert.Equal(t, "x", nilS.String("x"))
}
