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

	err := validateCaddyfile(t, global+site(18081, "http://127.0.0.1:1/a", "workers 4\nroute a")+site(18082, "http://127.0.0.1:1/b", "workers 2\nroute b"))
	require.Error(t, err)
	// Caddy provisions the two sites in either order.
	assert.Regexp(t, `set different workers \((4, 2|2, 4)\)`, err.Error())
	assert.Contains(t, err.Error(), "sqlite "+db)

	err = validateCaddyfile(t, global+site(18081, "http://127.0.0.1:1/a", "retention completed 1h\nroute a")+site(18082, "http://127.0.0.1:1/b", "route b"))
	require.Error(t, err)
	assert.Regexp(t, `set different retention completed \((1h0m0s, 24h0m0s|24h0m0s, 1h0m0s)\)`, err.Error())

	err = validateCaddyfile(t, global+site(18081, "http://127.0.0.1:1/a", "")+site(18082, "http://127.0.0.1:1/b", ""))
	require.Error(t, err)
	assert.Contains(t, err.Error(), `route "default": two handlers on queue`)
	assert.NotContains(t, err.Error(), "sb_secret_never-shown")

	assert.NoError(t, validateCaddyfile(t, global+site(18081, "http://127.0.0.1:1/a", "route a")+site(18082, "http://127.0.0.1:1/b", "route b")),
		"two targets on one queue under their own route names")
	assert.NoError(t, validateCaddyfile(t, global+site(18081, "http://127.0.0.1:1/a", "")+site(18082, "http://127.0.0.1:1/a", "")),
		"two handlers with the same target share the default route")
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
	for v, want := range map[string]string{"0s": "retention discarded: must be positive", "-1h": "retention discarded: not a valid duration",
		"soon": "retention discarded: not a valid duration"} {
		t.Setenv("RB_UT_RETENTION", v)
		_, err := resolveQueueConfig(repl, &QueueConfig{Retention: &QueueRetention{Discarded: "{env.RB_UT_RETENTION}"}})
		assert.EqualError(t, err, want, v)
	}
}
