// Package jsonobj reads a JSON object's top-level members exactly: a key
// is matched byte for byte (after unescaping), never case-insensitively as
// encoding/json matches struct fields, and a key given twice is an error,
// because parsers disagree on which of two duplicates wins. Both the
// inbound webhook and import-bookings' answer are read this way, so that
// what this module reads is what every other reader of the same bytes
// reads.
package jsonobj

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// ErrNotObject: the text is not one UTF-8 JSON object.
var ErrNotObject = errors.New("not one JSON object")

// DuplicateKeyError names a key the object gives more than once.
type DuplicateKeyError struct{ Key string }

func (e *DuplicateKeyError) Error() string { return fmt.Sprintf("duplicate key %q", e.Key) }

// Members calls fn with each top-level member of the JSON object in body,
// in order: its key, unescaped, and its value as raw JSON. body must be
// one UTF-8 JSON object, with nothing after it (white space aside), and no
// key twice; otherwise Members returns ErrNotObject or a
// *DuplicateKeyError. fn is called for the members before the error only.
//
// The whole text is validated first by the standard library (which also
// bounds nesting depth), so the scan only walks well-formed JSON: it skips
// nested values without decoding them, and allocates nothing for a key
// without escapes beyond the key itself.
func Members(body []byte, fn func(key string, value []byte)) error {
	if !utf8.Valid(body) || !json.Valid(body) {
		return ErrNotObject
	}
	i := skipSpace(body, 0)
	if body[i] != '{' {
		return ErrNotObject
	}
	var seen keySet
	for i = skipSpace(body, i+1); body[i] != '}'; i = skipSpace(body, i) {
		if body[i] == ',' {
			i = skipSpace(body, i+1)
		}
		keyEnd := skipValue(body, i)
		name, err := decodeKey(body[i:keyEnd])
		if err != nil {
			return ErrNotObject
		}
		if !seen.add(name) {
			return &DuplicateKeyError{Key: name}
		}
		valStart := skipSpace(body, skipSpace(body, keyEnd)+1) // past ':'
		valEnd := skipValue(body, valStart)
		fn(name, body[valStart:valEnd])
		i = valEnd
	}
	return nil
}

// keySet finds duplicate keys: a slice while the object is small (the
// usual webhook, no allocation for a map), a map once it is large, so that
// an object with many keys costs linear time, not quadratic.
type keySet struct {
	small []string
	large map[string]struct{}
}

// add records a key and reports whether it was new.
func (k *keySet) add(name string) bool {
	if k.large != nil {
		if _, dup := k.large[name]; dup {
			return false
		}
		k.large[name] = struct{}{}
		return true
	}
	if slices.Contains(k.small, name) {
		return false
	}
	k.small = append(k.small, name)
	if len(k.small) > 16 {
		k.large = make(map[string]struct{}, 64)
		for _, s := range k.small {
			k.large[s] = struct{}{}
		}
	}
	return true
}

// decodeKey returns an object key; only keys with escapes need decoding.
func decodeKey(raw []byte) (string, error) {
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1 : len(raw)-1]), nil
	}
	var s string
	err := json.Unmarshal(raw, &s)
	return s, err
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the index just past the valid JSON value at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = skipString(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
		return i
	default: // number, true, false, null
		for i < len(b) && !strings.ContainsRune(",}] \t\n\r", rune(b[i])) {
			i++
		}
		return i
	}
}

// skipString returns the index just past the string starting at b[i].
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}
