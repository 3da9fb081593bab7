package receivebooking

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// validateCaddyfile adapts a Caddyfile and runs caddy.Validate on it, as
// `caddy validate` does: every module is provisioned, nothing is started.
func validateCaddyfile(t *testing.T, body string) error {
	t.Helper()
	adapted, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(body), nil)
	require.NoError(t, err)
	_ = warnings // formatting only
	var cfg caddy.Config
	require.NoError(t, json.Unmarshal(adapted, &cfg))
	return caddy.Validate(&cfg)
}

// TestAppConflictingSettingsAreAProvisioningError: handlers that share a
// database must agree on its worker settings, and one route name means one
// target; the error names what differs, never a secret.
func TestAppConflictingSettingsAreAProvisioningError(t *testing.T) {
	db := filepath.Join(t.TempDir(), "shared.sqlite3")
	site := func(port int, target, extra string) string {
		return fmt.Sprintf(`http://127.0.0.1:%d {
	receive_booking {
		secret s3cret-one-%d
		target %s
		target_key sb_secret_never-shown
		queue sqlite %s
		%s
	}
}
`, port, port, target, db, extra)
	}
	global := "{\n\tadmin off\n}\n"

	// Caddy provisions the two sites in either order; the error names
	// both by their site address.
	err := validateCaddyfile(t, global+site(18081, "http://127.0.0.1:1/a", "workers 4\nroute a")+site(18082, "http://127.0.0.1:1/b", "workers 2\nroute b"))
	require.Error(t, err)
	assert.Regexp(t, `the handler at 127\.0\.0\.1:1808[12] and the handler at 127\.0\.0\.1:1808[12] share it but set different workers \((4, 2|2, 4)\)`, err.Error())
	assert.Contains(t, err.Error(), "sqlite "+db)

	err = validateCaddyfile(t, global+site(18081, "http://127.0.0.1:1/a", "retention completed 1h\nroute a")+site(18082, "http://127.0.0.1:1/b", "route b"))
	require.Error(t, err)
	assert.Regexp(t, `set different retention completed \((1h0m0s, 24h0m0s|24h0m0s, 1h0m0s)\)`, err.Error())

	err = validateCaddyfile(t, global+site(18081, "http://127.0.0.1:1/a", "")+site(18082, "http://127.0.0.1:1/b", ""))
	require.Error(t, err)
	assert.Regexp(t, `route "default": the handler at 127\.0\.0\.1:1808[12] and the handler at 127\.0\.0\.1:1808[12] use it on queue`, err.Error())
	assert.NotContains(t, err.Error(), "sb_secret_never-shown")

	assert.NoError(t, validateCaddyfile(t, global+site(18081, "http://127.0.0.1:1/a", "route a")+site(18082, "http://127.0.0.1:1/b", "route b")),
		"two targets on one queue under their own route names")
	assert.NoError(t, validateCaddyfile(t, global+site(18081, "http://127.0.0.1:1/a", "")+site(18082, "http://127.0.0.1:1/a", "")),
		"two handlers with the same target share the default route")
}

// TestConflictNamesHandlersBySiteAndPath: two handlers of one site, on
// their own paths, are named by site address and path; two at one address
// by their server and route (route indices, outermost first); two in one
// route by that route.
func TestConflictNamesHandlersBySiteAndPath(t *testing.T) {
	db := filepath.Join(t.TempDir(), "shared.sqlite3")
	handler := func(workers int) string {
		return fmt.Sprintf(`receive_booking {
			secret s3cret-%d
			target http://127.0.0.1:1/t
			queue sqlite %s
			workers %d
		}`, workers, db, workers)
	}
	err := validateCaddyfile(t, fmt.Sprintf(`{
	admin off
}
example.com:18443, www.example.com:18443 {
	handle /eventflow/* {
		%s
	}
	handle /other/* {
		%s
	}
}
`, handler(4), handler(2)))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "the handler at example.com:18443,www.example.com:18443/eventflow/* and "+
		"the handler at example.com:18443,www.example.com:18443/other/* share it")

	err = validateCaddyfile(t, fmt.Sprintf(`{
	admin off
}
:18083 {
	route {
		%s
		%s
	}
}
`, handler(4), handler(2)))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "the handler at :18083 (server srv0, route 0.0) and another one there share it")

	err = validateCaddyfile(t, fmt.Sprintf(`{
	admin off
}
:18083 {
	@a header X-Sender a
	route @a {
		%s
	}
	route {
		%s
	}
}
`, handler(4), handler(2)))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "the handler at :18083 (server srv0, route 0.0) and the handler at :18083 (server srv0, route 1.0) share it")
}

// TestRetentionProvisioning: retention periods resolve with their
// defaults, and one that resolves to zero or less (a placeholder) is a
// provisioning error naming the state.
func TestRetentionProvisioning(t *testing.T) {
	repl := caddy.NewReplacer()
	rq, err := resolveQueueConfig(repl, &QueueConfig{Retention: &QueueRetention{Cancelled: "2d"}})
	require.NoError(t, err)
	assert.Equal(t, 24*time.Hour, rq.RetentionCompleted)
	assert.Equal(t, 48*time.Hour, rq.RetentionCancelled)
	assert.Equal(t, 720*time.Hour, rq.RetentionDiscarded)
	for v, want := range map[string]string{"0s": `retention discarded: must be positive, got "0s"`,
		"-1h": `retention discarded: not a valid duration: "-1h"`, "soon": `retention discarded: not a valid duration: "soon"`} {
		t.Setenv("RB_UT_RETENTION", v)
		_, err := resolveQueueConfig(repl, &QueueConfig{Retention: &QueueRetention{Discarded: "{env.RB_UT_RETENTION}"}})
		assert.EqualError(t, err, want, v)
	}
}
