package receivebooking

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestDocsCaddyfilesFormatted: every ```caddyfile block of the README and
// docs/ is as `caddy fmt` writes it, so that a reader who pastes one into
// a Caddyfile and runs `caddy fmt` (or `caddy run`, which warns of an
// unformatted file) sees no difference. A fragment (a directive's lines,
// a route) is formatted as it stands: Format works on fragments.
func TestDocsCaddyfilesFormatted(t *testing.T) {
	files, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, file := range append([]string{"README.md"}, files...) {
		doc, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range fencedBlocks(t, file, string(doc), "caddyfile") {
			found++
			if got := string(caddyfile.Format([]byte(b.text))); got != b.text {
				t.Errorf("%s:%d: the caddyfile block is not as `caddy fmt` writes it; formatted, it reads:\n%s", file, b.line, got)
			}
		}
	}
	if found == 0 {
		t.Fatal("no ```caddyfile block in README.md or docs/*.md")
	}
}

// docBlock is a fenced block's text (with a final newline, as Format
// writes it) and the line of its opening fence.
type docBlock struct {
	line int
	text string
}

// fencedBlocks reads the blocks fenced as ```lang in a Markdown text
// (from file, named in errors). A block indented under a list item is
// taken without the fence's indent.
func fencedBlocks(t *testing.T, file, doc, lang string) []docBlock {
	t.Helper()
	var blocks []docBlock
	var cur *docBlock
	var indent string
	for i, line := range strings.Split(doc, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case cur == nil && trimmed == "```"+lang:
			cur, indent = &docBlock{line: i + 1}, line[:strings.Index(line, "`")]
		case cur != nil && trimmed == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.text += strings.TrimPrefix(line, indent) + "\n"
		}
	}
	if cur != nil {
		t.Fatalf("%s:%d: the %s block is not closed", file, cur.line, lang)
	}
	return blocks
}
