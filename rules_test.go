package receivebooking

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestOneValidation: each mistake is refused with the same message whether
// it comes in a Caddyfile (adapted as `caddy run --adapter caddyfile`
// does, then provisioned) or as the handler's JSON, provisioned as Caddy
// does. A literal value's mistake is refused while the Caddyfile is
// adapted, at its line (early); one that needs a placeholder resolved or
// the settings together, when the adapted config is provisioned. Removing
// a rule from either path fails a case: the adapter no longer refuses it
// early, or the JSON is accepted or refused otherwise.
func TestOneValidation(t *testing.T) {
	t.Setenv("RB_UT_MODE", "turbo")
	const conflict = "timeout (30s) must be shorter than worker_timeout (30s) in mode auto: a sender would be kept " +
		"waiting for a sync that a worker has given up on; lower timeout, or raise worker_timeout above import-bookings' own limit"
	cases := []struct {
		name      string
		caddyfile string // lines of the receive_booking block, after a secret and a target
		json      string // the same settings, as members of the handler's JSON
		early     bool   // refused by the adapter, at its line
		want      string
	}{
		{"bad duration", "timeout soon", `"timeout":"soon"`, true, `timeout: not a valid duration: "soon"`},
		{"negative duration", "body_timeout -5s", `"body_timeout":"-5s"`, true, `body_timeout: not a valid duration: "-5s"`},
		{"zero timeout", "timeout 0s", `"timeout":"0s"`, true, `timeout: must be positive, got "0s"`},
		{"zero body_timeout", "body_timeout 0", `"body_timeout":"0"`, true, `body_timeout: must be positive, got "0"`},
		{"zero tolerance", "tolerance 0s", `"tolerance":"0s"`, true, `tolerance: must be positive, got "0s"`},
		{"negative coalesce_window", "coalesce_window -1s", `"coalesce_window":"-1s"`, true, `coalesce_window: not a valid duration: "-1s"`},
		{"zero worker_timeout", "queue sqlite DB\nworker_timeout 0s", `"queue":{"driver":"sqlite","path":"DB","worker_timeout":"0s"}`,
			true, `worker_timeout: must be positive, got "0s"`},
		{"bad size", "max_body lots", `"max_body":"lots"`, true, `max_body: not a valid size: "lots" (from 1 byte to 1GiB)`},
		{"zero size", "max_body 0", `"max_body":"0"`, true, `max_body: not a valid size: "0" (from 1 byte to 1GiB)`},
		{"size above 1GiB", "max_body 2GiB", `"max_body":"2GiB"`, true, `max_body: not a valid size: "2GiB" (from 1 byte to 1GiB)`},
		{"bad mode", "mode turbo", `"mode":"turbo"`, true, `mode: expected sync, async or auto, got "turbo"`},
		{"bad mode behind a placeholder", "mode {env.RB_UT_MODE}", `"mode":"{env.RB_UT_MODE}"`, false,
			`mode: expected sync, async or auto, got "turbo"`},
		{"bad auth", "auth password", `"auth":"password"`, true, `auth: expected key, signature or both, got "password"`},
		{"bad contract", "contract lenient", `"contract":"lenient"`, true, `contract: expected envelope or legacy, got "lenient"`},
		{"bad queue driver", "queue redis", `"queue":{"driver":"redis"}`, true, `queue: expected sqlite or postgres, got "redis"`},
		{"workers 0", "queue sqlite DB\nworkers 0", `"queue":{"driver":"sqlite","path":"DB","workers":0}`, true,
			`workers: expected a positive whole number, got "0"`},
		{"workers -1", "queue sqlite DB\nworkers -1", `"queue":{"driver":"sqlite","path":"DB","workers":-1}`, true,
			`workers: expected a positive whole number, got "-1"`},
		{"workers x", "queue sqlite DB\nworkers x", `"queue":{"driver":"sqlite","path":"DB","workers":"x"}`, true,
			`workers: expected a positive whole number, got "x"`},
		{"workers 1.5", "queue sqlite DB\nworkers 1.5", `"queue":{"driver":"sqlite","path":"DB","workers":1.5}`, true,
			`workers: expected a positive whole number, got "1.5"`},
		{"max_attempts 0", "queue sqlite DB\nmax_attempts 0", `"queue":{"driver":"sqlite","path":"DB","max_attempts":0}`, true,
			`max_attempts: expected a positive whole number, got "0"`},
		{"max_in_flight -2", "queue sqlite DB\nmax_in_flight -2", `"queue":{"driver":"sqlite","path":"DB","max_in_flight":-2}`, true,
			`max_in_flight: expected a positive whole number, got "-2"`},
		{"bad outcome verdict", "outcome applied maybe", `"outcomes":{"applied":"maybe"}`, true,
			`outcome applied: expected ok, retry, final or hold, got "maybe"`},
		{"zero retention", "queue sqlite DB\nretention completed 0s", `"queue":{"driver":"sqlite","path":"DB","retention":{"completed":"0s"}}`,
			true, `retention completed: must be positive, got "0s"`},
		{"bad retention", "queue sqlite DB\nretention discarded soon", `"queue":{"driver":"sqlite","path":"DB","retention":{"discarded":"soon"}}`,
			true, `retention discarded: not a valid duration: "soon"`},
		{"unknown field in require", "require organization_id event_type", `"require":["organization_id","event_type"]`, true,
			`require: unsupported field "event_type" (only organization_id, which is always required now; ` +
				`bind a key to an organization to sync webhooks that do not name one)`},
		{"organization without keys", "organization acme", `"organizations":[{"id":"acme"}]`, true,
			`organization "acme": needs a secret or a signing_secret`},
		{"organization with an empty block", "organization acme {\n}", `"organizations":[{"id":"acme"}]`, true,
			`organization "acme": needs a secret or a signing_secret`},
		{"organization twice", "organization acme {\n\tsecret k1\n}\norganization acme {\n\tsecret k2\n}",
			`"organizations":[{"id":"acme","secrets":["k1"]},{"id":"acme","secrets":["k2"]}]`, false, `organization "acme": configured twice`},
		{"mode sync with a queue", "mode sync\nqueue sqlite DB", `"mode":"sync","queue":{"driver":"sqlite","path":"DB"}`, false,
			"mode sync: takes no queue (with a queue, mode auto syncs while the sender waits, through the queue)"},
		{"mode async without a queue", "mode async", `"mode":"async"`, false, "mode async: needs a queue"},
		{"timeout reaches worker_timeout", "queue sqlite DB\ntimeout 30s\nworker_timeout 30s",
			`"queue":{"driver":"sqlite","path":"DB","worker_timeout":"30s"},"timeout":"30s"`, false, conflict},
		{"coalesce_window reaches timeout", "queue sqlite DB\ncoalesce_window 12s",
			`"queue":{"driver":"sqlite","path":"DB"},"coalesce_window":"12s"`, false,
			"coalesce_window (12s) must be shorter than timeout (12s) in mode auto: no sync could start before the sender " +
				"stops waiting, so every webhook would wait the whole timeout for a 202; shorten coalesce_window, or use mode async"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			db := filepath.Join(t.TempDir(), "q.sqlite3")
			msg, early := caddyfileRefusal(t, strings.ReplaceAll(tc.caddyfile, "DB", db))
			assert.Equal(t, tc.want, msg, "the Caddyfile's message")
			assert.Equal(t, tc.early, early, "refused by the adapter, at its line")
			members := `"secrets":["k"],"target":"http://127.0.0.1:1/import","disable_metrics":true,` + tc.json
			assert.Equal(t, tc.want, jsonRefusal(t, strings.ReplaceAll(members, "DB", db)), "the JSON's message")
		})
	}
}

// TestUnsetPlaceholderNamed: a required value that comes out empty
// because of its placeholders is refused with the placeholders' names and
// why each is empty (never a value), from a Caddyfile and from JSON alike.
func TestUnsetPlaceholderNamed(t *testing.T) {
	for _, name := range []string{"RB_UT_UNSET_A", "RB_UT_UNSET_B", "RB_UT_UNSET_W", "RB_UT_UNSET_T", "RB_UT_UNSET_O", "RB_UT_UNSET_D"} {
		_, set := os.LookupEnv(name)
		require.False(t, set, "%s must not be set", name)
	}
	t.Setenv("RB_UT_EMPTY", "")
	t.Setenv("RB_UT_SET", "a-set-secret-value")
	const target = "target http://127.0.0.1:1/import\n"
	const targetJSON = `"target":"http://127.0.0.1:1/import",`
	missing := filepath.Join(t.TempDir(), "no-such-file")
	cases := []struct {
		name, caddyfile, json, want string
	}{
		{"shared secret", target + "secret {env.RB_UT_UNSET_A}", targetJSON + `"secrets":["{env.RB_UT_UNSET_A}"]`,
			"secret is empty: {env.RB_UT_UNSET_A} is not set"},
		{"secrets in rotation", target + "secret {env.RB_UT_UNSET_A} {env.RB_UT_EMPTY}",
			targetJSON + `"secrets":["{env.RB_UT_UNSET_A}","{env.RB_UT_EMPTY}"]`,
			"secret is empty: {env.RB_UT_UNSET_A} is not set, {env.RB_UT_EMPTY} is set but empty"},
		{"organization's secret", target + "organization acme {\n\tsecret {env.RB_UT_UNSET_B}\n}",
			targetJSON + `"organizations":[{"id":"acme","secrets":["{env.RB_UT_UNSET_B}"]}]`,
			"secret is empty: {env.RB_UT_UNSET_B} is not set"},
		{"secret from a file", target + "secret {file." + missing + "}", targetJSON + `"secrets":["{file.` + missing + `}"]`,
			"secret is empty: {file." + missing + "} is empty or cannot be read"},
		{"signing secret alone", target + "signing_secret {env.RB_UT_UNSET_W}", targetJSON + `"signing_secrets":["{env.RB_UT_UNSET_W}"]`,
			"signing_secret is empty: {env.RB_UT_UNSET_W} is not set"},
		{"secret and signing secret", target + "secret {env.RB_UT_UNSET_A}\nsigning_secret {env.RB_UT_UNSET_W}",
			targetJSON + `"secrets":["{env.RB_UT_UNSET_A}"],"signing_secrets":["{env.RB_UT_UNSET_W}"]`,
			"secret and signing_secret are empty: {env.RB_UT_UNSET_A} is not set, {env.RB_UT_UNSET_W} is not set"},
		{"auth signature", target + "secret {env.RB_UT_SET}\nauth signature\nsigning_secret {env.RB_UT_UNSET_W}",
			targetJSON + `"secrets":["{env.RB_UT_SET}"],"auth":"signature","signing_secrets":["{env.RB_UT_UNSET_W}"]`,
			"signing_secret is empty: {env.RB_UT_UNSET_W} is not set"},
		{"target", "secret {env.RB_UT_SET}\ntarget {env.RB_UT_UNSET_T}", `"secrets":["{env.RB_UT_SET}"],"target":"{env.RB_UT_UNSET_T}",`,
			"target is empty: {env.RB_UT_UNSET_T} is not set"},
		{"target's host", "secret {env.RB_UT_SET}\ntarget http://{env.RB_UT_UNSET_T}/import",
			`"secrets":["{env.RB_UT_SET}"],"target":"http://{env.RB_UT_UNSET_T}/import",`,
			"target: must name a host ({env.RB_UT_UNSET_T} is not set)"},
		{"organization id", target + "organization {env.RB_UT_UNSET_O} {\n\tsecret {env.RB_UT_SET}\n}",
			targetJSON + `"organizations":[{"id":"{env.RB_UT_UNSET_O}","secrets":["{env.RB_UT_SET}"]}]`,
			"organization #1 id is empty: {env.RB_UT_UNSET_O} is not set"},
		{"queue dsn", target + "secret {env.RB_UT_SET}\nqueue postgres {env.RB_UT_UNSET_D}",
			targetJSON + `"secrets":["{env.RB_UT_SET}"],"queue":{"driver":"postgres","dsn":"{env.RB_UT_UNSET_D}"}`,
			"queue postgres DSN is empty: {env.RB_UT_UNSET_D} is not set"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			msg, early := caddyfileBlockRefusal(t, "metrics off\n"+tc.caddyfile)
			assert.False(t, early, "placeholders are resolved when the config is provisioned")
			assert.Equal(t, tc.want, msg, "the Caddyfile's message")
			json := jsonRefusal(t, `"disable_metrics":true,`+strings.TrimSuffix(tc.json, ","))
			assert.Equal(t, tc.want, json, "the JSON's message")
			assert.NotContains(t, msg+json, "a-set-secret-value")
		})
	}
}

// adapterLine is how the Caddyfile adapter wraps a directive's error: the
// directive before, the file and line after.
var adapterLine = regexp.MustCompile(`^parsing caddyfile tokens for 'receive_booking': (.*), at Caddyfile:\d+$`)

// caddyfileRefusal adapts a site with a receive_booking block holding the
// given lines, then validates the config it adapted to as `caddy validate`
// does. It returns the refusal's message and whether the adapter gave it.
func caddyfileRefusal(t *testing.T, lines string) (string, bool) {
	t.Helper()
	return caddyfileBlockRefusal(t, "secret k\ntarget http://127.0.0.1:1/import\nmetrics off\n"+lines)
}

// caddyfileBlockRefusal is caddyfileRefusal with the whole block given.
func caddyfileBlockRefusal(t *testing.T, lines string) (string, bool) {
	t.Helper()
	input := fmt.Sprintf("{\n\tadmin off\n}\n:8080 {\n\treceive_booking {\n\t\t%s\n\t}\n}\n",
		strings.ReplaceAll(lines, "\n", "\n\t\t"))
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err != nil {
		m := adapterLine.FindStringSubmatch(err.Error())
		require.NotNil(t, m, "the adapter names the directive and the line: %v", err)
		return m[1], true
	}
	return configRefusal(t, out), false
}

// jsonRefusal validates, as `caddy validate` does, a JSON config whose
// one route is a receive_booking handler with the given members.
func jsonRefusal(t *testing.T, members string) string {
	t.Helper()
	return configRefusal(t, []byte(`{"admin":{"disabled":true},"apps":{"http":{"servers":{"srv0":{"listen":[":8080"],`+
		`"routes":[{"handle":[{"handler":"receive_booking",`+members+`}]}]}}}}}`))
}

// configRefusal loads a config as Caddy does (strict decoding, Provision,
// Validate; nothing started) and returns the message the handler refused
// it with, without the module's name that Caddy puts before it.
func configRefusal(t *testing.T, config []byte) string {
	t.Helper()
	var cfg caddy.Config
	require.NoError(t, json.Unmarshal(config, &cfg))
	err := caddy.Validate(&cfg)
	if err == nil {
		return "(accepted)"
	}
	_, msg, found := strings.Cut(err.Error(), "http.handlers.receive_booking: ")
	require.True(t, found, "refused by the handler: %v", err)
	return strings.TrimPrefix(msg, "invalid configuration: ")
}
