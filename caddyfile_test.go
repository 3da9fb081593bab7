package receivebooking

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func parseTestCaddyfile(input string) (*Handler, error) {
	h := new(Handler)
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	return h, err
}

func TestCaddyfileEverySubdirective(t *testing.T) {
	h, err := parseTestCaddyfile(`receive_booking {
		secret          s1 s2
		secret          {env.WEBHOOK_SECRET}
		signing_secret  whsec_a {env.SIGNING_SECRET}
		signing_secret  whsec_b
		organization    org-a {
			secret         {env.ORG_A_KEY} {env.ORG_A_KEY_PREVIOUS}
			signing_secret {env.ORG_A_WHSEC}
		}
		organization    org-b {
			secret {env.ORG_B_KEY}
			secret literal-b
		}
		contract        legacy
		tolerance       3m
		auth            both
		target          https://proj.supabase.co/functions/v1/import-bookings
		target_key      {env.SUPABASE_KEY}
		timeout         10s
		body_timeout    5s
		max_body        256KiB
		require         organization_id
		cors            https://app.example.com
		mode            auto
		workers         8
		queue           sqlite /var/lib/caddy/queue.db
		max_attempts    12
		worker_timeout  90s
		retention       completed 36h
		retention       discarded 14d
		coalesce_window 2s
		metrics         off
	}`)
	require.NoError(t, err)
	assert.Equal(t, &Handler{
		Secrets:        []string{"s1", "s2", "{env.WEBHOOK_SECRET}"},
		SigningSecrets: []string{"whsec_a", "{env.SIGNING_SECRET}", "whsec_b"},
		Organizations: []Organization{
			{ID: "org-a", Secrets: []string{"{env.ORG_A_KEY}", "{env.ORG_A_KEY_PREVIOUS}"}, SigningSecrets: []string{"{env.ORG_A_WHSEC}"}},
			{ID: "org-b", Secrets: []string{"{env.ORG_B_KEY}", "literal-b"}},
		},
		Contract:    "legacy",
		Tolerance:   "3m",
		Auth:        "both",
		Target:      "https://proj.supabase.co/functions/v1/import-bookings",
		TargetKey:   "{env.SUPABASE_KEY}",
		Timeout:     "10s",
		BodyTimeout: "5s",
		MaxBody:     "256KiB",
		Require:     []string{"organization_id"},
		CORS:        "https://app.example.com",
		Mode:        "auto",
		Queue: &QueueConfig{
			Driver: "sqlite", Path: "/var/lib/caddy/queue.db",
			Workers: 8, MaxAttempts: 12, WorkerTimeout: "90s",
			Retention: &QueueRetention{Completed: "36h", Discarded: "14d"},
		},
		CoalesceWindow: "2s",
		DisableMetrics: true,
	}, h)
}

func TestCaddyfileVariants(t *testing.T) {
	cases := []struct {
		name  string
		input string
		want  *Handler
	}{
		{"minimal", "receive_booking {\n secret a\n target http://x\n}",
			&Handler{Secrets: []string{"a"}, Target: "http://x"}},
		{"repeated secret lines", "receive_booking {\n secret a\n secret b\n secret c\n}",
			&Handler{Secrets: []string{"a", "b", "c"}}},
		{"multi-value secret", "receive_booking {\n secret a b c\n}",
			&Handler{Secrets: []string{"a", "b", "c"}}},
		{"cors off", "receive_booking {\n cors off\n}", &Handler{CORS: "off"}},
		{"empty block", "receive_booking {\n}", &Handler{}},
		{"no block", "receive_booking", &Handler{}},
		{"placeholders skip literal checks", "receive_booking {\n timeout {env.T}\n max_body {env.M}\n body_timeout {env.B}\n}",
			&Handler{Timeout: "{env.T}", MaxBody: "{env.M}", BodyTimeout: "{env.B}"}},
		{"quoted secret with spaces", "receive_booking {\n secret \"a b\"\n}", &Handler{Secrets: []string{"a b"}}},
		{"size as bytes", "receive_booking {\n max_body 1048576\n}", &Handler{MaxBody: "1048576"}},
		{"queue postgres", "receive_booking {\n queue postgres {env.DSN}\n}",
			&Handler{Queue: &QueueConfig{Driver: "postgres", DSN: "{env.DSN}"}}},
		{"queue sqlite default path", "receive_booking {\n queue sqlite\n}",
			&Handler{Queue: &QueueConfig{Driver: "sqlite"}}},
		{"sync mode", "receive_booking {\n mode sync\n}", &Handler{Mode: "sync"}},
		{"async mode", "receive_booking {\n mode async\n}", &Handler{Mode: "async"}},
		{"one organization", "receive_booking {\n organization acme {\n  secret k1 k0\n }\n}",
			&Handler{Organizations: []Organization{{ID: "acme", Secrets: []string{"k1", "k0"}}}}},
		{"organization with a signing secret only", "receive_booking {\n organization 42 {\n  signing_secret whsec_x\n }\n}",
			&Handler{Organizations: []Organization{{ID: "42", SigningSecrets: []string{"whsec_x"}}}}},
		{"contract envelope", "receive_booking {\n contract envelope\n}", &Handler{Contract: "envelope"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, err := parseTestCaddyfile(tc.input)
			require.NoError(t, err)
			assert.Equal(t, tc.want, h)
		})
	}
}

func TestCaddyfileErrors(t *testing.T) {
	cases := []struct {
		name  string
		input string
		line  int
		want  string
	}{
		{"unknown subdirective", "receive_booking {\n secret a\n target http://x\n secrets b\n}", 4, `unknown subdirective "secrets"`},
		{"repeated target", "receive_booking {\n target http://a\n secret s\n target http://b\n}", 4, "target: subdirective given twice"},
		{"repeated timeout", "receive_booking {\n timeout 1s\n timeout 2s\n}", 3, "timeout: subdirective given twice"},
		{"repeated cors", "receive_booking {\n cors off\n cors *\n}", 3, "cors: subdirective given twice"},
		{"repeated target_key", "receive_booking {\n target_key a\n target_key b\n}", 3, "target_key: subdirective given twice"},
		{"repeated max_body", "receive_booking {\n max_body 1KiB\n\n max_body 2KiB\n}", 4, "max_body: subdirective given twice"},
		{"repeated require", "receive_booking {\n require organization_id\n require organization_id\n}", 3, "require: subdirective given twice"},
		{"argument on the directive", "receive_booking extra {\n secret a\n}", 1, "wrong argument count"},
		{"extra target argument", "receive_booking {\n secret a\n target http://a http://b\n}", 3, "wrong argument count"},
		{"extra timeout argument", "receive_booking {\n timeout 1s 2s\n}", 2, "wrong argument count"},
		{"extra target_key argument", "receive_booking {\n target_key a b\n}", 2, "wrong argument count"},
		{"extra cors argument", "receive_booking {\n cors a b\n}", 2, "wrong argument count"},
		{"extra max_body argument", "receive_booking {\n max_body 1KiB 2KiB\n}", 2, "wrong argument count"},
		{"extra metrics argument", "receive_booking {\n metrics off now\n}", 2, "wrong argument count"},
		{"missing secret", "receive_booking {\n target http://x\n secret\n}", 3, "wrong argument count"},
		{"missing target", "receive_booking {\n target\n}", 2, "wrong argument count"},
		{"missing target_key", "receive_booking {\n\n\n target_key\n}", 4, "wrong argument count"},
		{"missing timeout", "receive_booking {\n timeout\n}", 2, "wrong argument count"},
		{"missing max_body", "receive_booking {\n max_body\n}", 2, "wrong argument count"},
		{"missing require", "receive_booking {\n require\n}", 2, "wrong argument count"},
		{"missing cors", "receive_booking {\n cors\n}", 2, "wrong argument count"},
		{"bad duration", "receive_booking {\n secret a\n timeout soon\n}", 3, `timeout: not a valid duration: "soon"`},
		{"negative duration", "receive_booking {\n timeout -5s\n}", 2, "timeout: not a valid duration"},
		{"bad body_timeout", "receive_booking {\n body_timeout 5 seconds\n}", 2, "wrong argument count"},
		{"bad body_timeout unit", "receive_booking {\n body_timeout 5parsecs\n}", 2, "body_timeout: not a valid duration"},
		{"bad size", "receive_booking {\n max_body lots\n}", 2, `max_body: not a valid size: "lots"`},
		{"bad size unit", "receive_booking {\n max_body 1ZZ\n}", 2, "max_body: not a valid size"},
		{"bad mode", "receive_booking {\n mode turbo\n}", 2, `mode: expected sync, async or auto, got "turbo"`},
		{"bad require field", "receive_booking {\n require event_type\n}", 2, `require: unsupported field "event_type"`},
		{"bad require among good", "receive_booking {\n require organization_id booking_id\n}", 2, `require: unsupported field "booking_id"`},
		{"bad metrics", "receive_booking {\n metrics on\n}", 2, `metrics: only "off" is allowed`},
		{"bad auth", "receive_booking {\n auth password\n}", 2, "auth: expected key, signature or both"},
		{"bad workers", "receive_booking {\n workers 0\n}", 2, "workers: expected a positive whole number"},
		{"bad queue", "receive_booking {\n queue redis\n}", 2, "queue: expected"},
		{"nested block", "receive_booking {\n target http://x {\n  a\n }\n}", 2, `unknown subdirective "{"`},
		{"organization without id", "receive_booking {\n organization\n}", 2, "wrong argument count"},
		{"organization with two ids", "receive_booking {\n organization a b {\n  secret k\n }\n}", 2, "wrong argument count"},
		{"organization without block", "receive_booking {\n organization a\n}", 2, `organization "a": needs a secret or a signing_secret`},
		{"organization with empty block", "receive_booking {\n organization a {\n }\n}", 3, `organization "a": needs a secret or a signing_secret`},
		{"organization unknown subdirective", "receive_booking {\n organization a {\n  target http://x\n }\n}", 3, `organization "a": unknown subdirective "target"`},
		{"organization secret without value", "receive_booking {\n organization a {\n  secret\n }\n}", 3, "wrong argument count"},
		{"bad contract", "receive_booking {\n contract lenient\n}", 2, `contract: expected envelope or legacy, got "lenient"`},
		{"repeated contract", "receive_booking {\n contract legacy\n contract envelope\n}", 3, "contract: subdirective given twice"},
		{"retention of another state", "receive_booking {\n retention running 1h\n}", 2, `retention: expected completed, cancelled or discarded, got "running"`},
		{"retention zero", "receive_booking {\n retention completed 0s\n}", 2, `retention completed: must be positive, got "0s"`},
		{"retention negative", "receive_booking {\n retention cancelled -1h\n}", 2, `retention cancelled: not a valid duration: "-1h"`},
		{"retention twice", "receive_booking {\n retention completed 1h\n retention discarded 1h\n retention completed 2h\n}", 4, "retention completed: given twice"},
		{"retention without duration", "receive_booking {\n retention completed\n}", 2, "wrong argument count"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseTestCaddyfile(tc.input)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), "Testfile:"+strconv.Itoa(tc.line), "the error names the line: %v", err)
		})
	}
}

// TestCaddyfileErrorsDoNotEchoSecrets: a Caddyfile error about a
// neighbouring subdirective does not print the secret.
func TestCaddyfileErrorsDoNotEchoSecrets(t *testing.T) {
	_, err := parseTestCaddyfile("receive_booking {\n secret " + utSecret + "\n secret\n}")
	require.Error(t, err)
	assert.NotContains(t, err.Error(), utSecret)
}

const fullCaddyfile = `{
	admin off
}

:8080 {
	receive_booking /webhooks/booking {
		secret {env.WEBHOOK_SECRET} {env.WEBHOOK_SECRET_OLD}
		secret literal-second
		organization org-a {
			secret {env.ORG_A_KEY}
			signing_secret {env.ORG_A_WHSEC}
		}
		target {env.IMPORT_BOOKINGS_URL}
		target_key {file./run/secrets/supabase_key}
		timeout 10s
		body_timeout 5s
		max_body 256KiB
		require organization_id
		cors https://app.example.com
	}
}
`

const fullCaddyfileJSON = `{
	"admin": {
		"disabled": true
	},
	"apps": {
		"http": {
			"servers": {
				"srv0": {
					"listen": [
						":8080"
					],
					"routes": [
						{
							"match": [
								{
									"path": [
										"/webhooks/booking"
									]
								}
							],
							"handle": [
								{
									"body_timeout": "5s",
									"cors": "https://app.example.com",
									"handler": "receive_booking",
									"max_body": "256KiB",
									"organizations": [
										{
											"id": "org-a",
											"secrets": [
												"{env.ORG_A_KEY}"
											],
											"signing_secrets": [
												"{env.ORG_A_WHSEC}"
											]
										}
									],
									"require": [
										"organization_id"
									],
									"secrets": [
										"{env.WEBHOOK_SECRET}",
										"{env.WEBHOOK_SECRET_OLD}",
										"literal-second"
									],
									"target": "{env.IMPORT_BOOKINGS_URL}",
									"target_key": "{file./run/secrets/supabase_key}",
									"timeout": "10s"
								}
							]
						}
					]
				}
			}
		}
	}
}`

// TestCaddyfileAdaptGolden: the adapted JSON holds only the placeholders,
// even when the environment has values for them.
func TestCaddyfileAdaptGolden(t *testing.T) {
	t.Setenv("WEBHOOK_SECRET", "leaky-env-secret-value")
	t.Setenv("IMPORT_BOOKINGS_URL", "https://leaky.example.com/import")
	caddytest.AssertAdapt(t, fullCaddyfile, "caddyfile", fullCaddyfileJSON)

	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(fullCaddyfile), nil)
	require.NoError(t, err)
	assert.NotContains(t, string(out), "leaky")
	assert.Contains(t, string(out), `"{env.WEBHOOK_SECRET}"`)
}

// TestCaddyfileAdaptDefaultOrder: no global "order" option is needed, and
// receive_booking runs before respond wherever they are written.
func TestCaddyfileAdaptDefaultOrder(t *testing.T) {
	caddytest.AssertAdapt(t, `:8080 {
	respond "fallback" 404
	receive_booking {
		secret {env.WEBHOOK_SECRET}
		target {env.IMPORT_BOOKINGS_URL}
		cors off
	}
}
`, "caddyfile", `{
	"apps": {
		"http": {
			"servers": {
				"srv0": {
					"listen": [
						":8080"
					],
					"routes": [
						{
							"handle": [
								{
									"cors": "off",
									"handler": "receive_booking",
									"secrets": [
										"{env.WEBHOOK_SECRET}"
									],
									"target": "{env.IMPORT_BOOKINGS_URL}"
								},
								{
									"body": "fallback",
									"handler": "static_response",
									"status_code": 404
								}
							]
						}
					]
				}
			}
		}
	}
}`)
}

func TestCaddyfileAdaptErrorHasLine(t *testing.T) {
	_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(":8080 {\n\treceive_booking {\n\t\tsecret a\n\t\ttarget http://x\n\t\ttarget http://y\n\t}\n}\n"), nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "target: subdirective given twice")
	assert.Contains(t, err.Error(), ":5")
}

// TestCaddyfileJSONRoundTrip: the adapted JSON is the handler's JSON
// config; provisioned with the environment set, it serves webhooks.
func TestCaddyfileJSONRoundTrip(t *testing.T) {
	up := testkit.NewStandIn(t)
	t.Setenv("RB_UT_RT_SECRET", utSecret)
	t.Setenv("RB_UT_RT_TARGET", up.Target())
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(`:8080 {
	receive_booking {
		organization org-rt {
			secret {env.RB_UT_RT_SECRET}
		}
		target {env.RB_UT_RT_TARGET}
		timeout 1s
		max_body 1KiB
		metrics off
	}
}`), nil)
	require.NoError(t, err)
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []struct {
						Handle []json.RawMessage `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	require.NoError(t, json.Unmarshal(out, &cfg))
	raw := cfg.Apps.HTTP.Servers["srv0"].Routes[0].Handle[0]
	assert.NotContains(t, string(raw), utSecret)

	h := new(Handler)
	require.NoError(t, json.Unmarshal(raw, h))
	provisioned := newTestHandler(t, "", func(x *Handler) { *x = *h })
	assert.EqualValues(t, 1024, provisioned.maxBody)
	w := postAuthed(t, provisioned, `{"booking_id":"rt-1"}`)
	assert.Equal(t, http.StatusOK, w.Code, w.Body.String())
	assert.Contains(t, up.Calls()[0].Body, `"organization_id":"org-rt"`)
	w = postAuthed(t, provisioned, withBody(1025))
	assert.Equal(t, http.StatusRequestEntityTooLarge, w.Code)
	assert.Len(t, up.Calls(), 1)
	assert.True(t, strings.HasPrefix(up.Calls()[0].Header.Get("User-Agent"), "caddy-receive-booking/"))
}
