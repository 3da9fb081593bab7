package receivebooking

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestOperationsWalkthrough replays docs/operations.md's walk-through
// against the built binary and compares every command's output with the
// document's, so that the document cannot drift from what the binary
// prints. A newcomer runs the same commands in one shell, from a checkout
// after `make build`; so does this test, in a temporary directory holding
// Caddyfile.example and ./caddy.
//
// The document's ```console blocks are the script: a line starting with
// "$ " is a command (a line ending in a backslash continues it), the lines
// up to the next command are its output. What differs from run to run is
// masked on both sides (maskWalkthrough). A command must exit 0 (the
// document shows a non-zero exit with `; echo "exit $?"`). A command that
// only reads (isWalkthroughRead) is run again until its output matches,
// for a while: the queue records an attempt a moment after the sender's
// answer, and a replayed job runs a moment after the replay, where a
// person typing the next command would see it done.
//
// The one change from the document: Caddyfile.example's admin address. A
// Caddy of the machine's own (a system service) may hold localhost:2019,
// which caddytest avoids for the same reason, and the commands would then
// talk to it: the example's copy gets a free port instead, and CADDY_ADMIN
// (Caddy's default admin address) names it for the commands run without
// --config. Ports 8080-8082 must be free.
func TestOperationsWalkthrough(t *testing.T) {
	doc, err := os.ReadFile("docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	steps := walkthroughSteps(t, string(doc))
	if len(steps) < 10 {
		t.Fatalf("found %d commands in the walk-through's console blocks, want the whole walk-through", len(steps))
	}
	for _, port := range []int{8080, 8081, 8082} {
		if !portFree(port) {
			t.Fatalf("port %d is in use: the walk-through runs Caddyfile.example, which listens on 8080-8082", port)
		}
	}

	dir := t.TempDir()
	admin := fmt.Sprintf("localhost:%d", freePort(t))
	example, err := os.ReadFile("Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(example), "\tadmin localhost:2019\n"); n != 1 {
		t.Fatalf("Caddyfile.example names its admin address %d times, want once (admin localhost:2019)", n)
	}
	example = []byte(strings.Replace(string(example), "\tadmin localhost:2019\n", "\tadmin "+admin+"\n", 1))
	if err := os.WriteFile(filepath.Join(dir, "Caddyfile.example"), example, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(caddyBinary(t), filepath.Join(dir, "caddy")); err != nil {
		t.Fatal(err)
	}

	sh := startWalkthroughShell(t, dir, "CADDY_ADMIN="+admin, "TMPDIR="+dir)
	for i, step := range steps {
		want := maskWalkthrough(step.output)
		deadline := time.Now().Add(20 * time.Second)
		for {
			got, code := sh.run(t, step.command)
			if code != 0 {
				t.Fatalf("step %d: `%s` exited %d:\n%s%s", i+1, step.command, code, got, sh.logTail())
			}
			if maskWalkthrough(got) == want {
				break
			}
			if !isWalkthroughRead(step.command) || time.Now().After(deadline) {
				t.Fatalf("step %d: `%s` printed\n%s\nthe document says\n%s\nmasked, got\n%s\nwant\n%s%s",
					i+1, step.command, got, step.output, maskWalkthrough(got), want, sh.logTail())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// walkthroughStep is one command of the walk-through and the output the
// document gives for it.
type walkthroughStep struct {
	command string
	output  string
}

// walkthroughSteps reads the ```console blocks of the section
// "## Walk-through" of docs/operations.md.
func walkthroughSteps(t *testing.T, doc string) []walkthroughStep {
	t.Helper()
	start := strings.Index(doc, "\n## Walk-through")
	if start < 0 {
		t.Fatal(`docs/operations.md has no section "## Walk-through"`)
	}
	section := doc[start+1:]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	var steps []walkthroughStep
	for _, block := range fencedBlocks(t, "docs/operations.md", section, "console") {
		continued := false
		for _, line := range strings.Split(strings.TrimSuffix(block.text, "\n"), "\n") {
			switch {
			case continued:
				steps[len(steps)-1].command += "\n" + line
				continued = strings.HasSuffix(line, `\`)
			case strings.HasPrefix(line, "$ "):
				steps = append(steps, walkthroughStep{command: strings.TrimPrefix(line, "$ ")})
				continued = strings.HasSuffix(line, `\`)
			case len(steps) == 0:
				t.Fatalf("walk-through: output before the first command: %q", line)
			default:
				steps[len(steps)-1].output += line + "\n"
			}
		}
	}
	return steps
}

// isWalkthroughRead says whether a command only reads, so that it may be
// run again until the queue has settled.
func isWalkthroughRead(command string) bool {
	for _, p := range []string{"./caddy receive-booking jobs", "./caddy receive-booking job ",
		"./caddy receive-booking stats", "./caddy receive-booking health", "grep "} {
		if strings.HasPrefix(command, p) {
			return true
		}
	}
	return false
}

// walkthroughMasks replace what differs from run to run.
var walkthroughMasks = []struct {
	re   *regexp.Regexp
	with string
}{
	// Times: RFC 3339, the NEXT RUN column, Unix seconds in log lines.
	{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`), "<time>"},
	{regexp.MustCompile(`\b\d\d:\d\d:\d\d UTC\b`), "<time>"},
	{regexp.MustCompile(`"ts":[0-9.e+-]+`), `"ts":<time>`},
	// Durations: in log lines, and the table's ages.
	{regexp.MustCompile(`("[a-z_]*duration"):[0-9.e+-]+`), `$1:<duration>`},
	{regexp.MustCompile(`(_seconds[ \t]+)[0-9.e+-]+`), `${1}<duration>`},
	// The queue's key is a hash of its database's path.
	{regexp.MustCompile(`(receive_booking:[a-z]+:)[0-9a-f]+`), `${1}<key>`},
	{regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`), "<uuid>"},
	// Tables are aligned to their widest cell, which masking changes.
	{regexp.MustCompile(`[ \t]+`), " "},
}

func maskWalkthrough(s string) string {
	for _, m := range walkthroughMasks {
		s = m.re.ReplaceAllString(s, m.with)
	}
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	return strings.Join(lines, "\n")
}

// walkthroughShell is one bash that runs the walk-through's commands in
// order, so that an export holds for the commands after it, as in a
// person's terminal.
type walkthroughShell struct {
	dir   string
	stdin io.WriteCloser
	out   *bufio.Reader
}

// walkthroughMark ends each command's output, with its exit code.
const walkthroughMark = "@@walkthrough-step-done@@"

func startWalkthroughShell(t *testing.T, dir string, env ...string) *walkthroughShell {
	t.Helper()
	cmd := exec.Command("bash", "--noprofile", "--norc")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	// Its own process group: everything the walk-through starts (caddy
	// start's server) is ended with it, also when a step fails.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		pgid := cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		_ = cmd.Wait()
		// caddy start's server is no child of this test: wait until the
		// group is gone, so that t.TempDir's removal finds no writer.
		for i := 0; i < 100 && syscall.Kill(-pgid, 0) == nil; i++ {
			time.Sleep(50 * time.Millisecond)
		}
	})
	sh := &walkthroughShell{dir: dir, stdin: stdin, out: bufio.NewReader(stdout)}
	if _, err := io.WriteString(stdin, "exec 2>&1\n"); err != nil {
		t.Fatal(err)
	}
	return sh
}

// run runs one command and returns its output (stdout and stderr) and
// exit code.
func (sh *walkthroughShell) run(t *testing.T, command string) (string, int) {
	t.Helper()
	script := fmt.Sprintf("{\n%s\n}\nprintf '\\n%s %%d\\n' $?\n", command, walkthroughMark)
	if _, err := io.WriteString(sh.stdin, script); err != nil {
		t.Fatalf("writing to the shell: %v", err)
	}
	type result struct {
		out  string
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		var b strings.Builder
		for {
			line, err := sh.out.ReadString('\n')
			if err != nil {
				done <- result{b.String() + line, -1, err}
				return
			}
			if rest, ok := strings.CutPrefix(line, walkthroughMark+" "); ok {
				var code int
				_, err := fmt.Sscanf(rest, "%d", &code)
				done <- result{strings.TrimSuffix(b.String(), "\n"), code, err}
				return
			}
			b.WriteString(line)
		}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("`%s`: reading its output: %v\n%s", command, r.err, r.out)
		}
		return r.out, r.code
	case <-time.After(time.Minute):
		t.Fatalf("`%s` did not end within a minute%s", command, sh.logTail())
	}
	return "", -1
}

// logTail is the end of the walk-through's caddy.log, for a failure.
func (sh *walkthroughShell) logTail() string {
	b, err := os.ReadFile(filepath.Join(sh.dir, "caddy.log"))
	if err != nil {
		return ""
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if !strings.Contains(l, `"logger":"admin.api"`) { // the commands' own requests
			lines = append(lines, l)
		}
	}
	return "\n--- caddy.log, less the admin API's request lines (last 30):\n" +
		strings.Join(lines[max(0, len(lines)-30):], "\n")
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}
