package jsonobj

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMembers: every top-level member in order, keys exact and unescaped,
// nested values whole and unvisited; a duplicate (also one spelled with an
// escape, also past the small-set threshold) and anything but one UTF-8
// object are refused.
func TestMembers(t *testing.T) {
	var got []string
	err := Members([]byte(` {"a":1, "A":{"a":1,"a":2},"\u0062":"x,}","c":[1,{"d":null}]} `), func(k string, v []byte) {
		got = append(got, k+"="+string(v))
	})
	require.NoError(t, err)
	assert.Equal(t, []string{`a=1`, `A={"a":1,"a":2}`, `b="x,}"`, `c=[1,{"d":null}]`}, got)

	var many []string
	for i := range 40 {
		many = append(many, `"k`+strings.Repeat("x", i)+`":0`)
	}
	require.NoError(t, Members([]byte("{"+strings.Join(many, ",")+"}"), func(string, []byte) {}))
	for body, key := range map[string]string{
		`{"a":1,"a":2}`:      "a",
		`{"a":1,"\u0061":2}`: "a",
		"{" + strings.Join(many, ",") + `,"kxxx":1}`: "kxxx",
	} {
		var dup *DuplicateKeyError
		require.ErrorAs(t, Members([]byte(body), func(string, []byte) {}), &dup, body)
		assert.Equal(t, key, dup.Key)
	}
	for _, body := range []string{``, `[]`, `null`, `"a"`, `{"a":1} {}`, `{"a":}`, "{\"a\":\"\xff\"}"} {
		assert.ErrorIs(t, Members([]byte(body), func(string, []byte) {}), ErrNotObject, "%q", body)
	}
}
