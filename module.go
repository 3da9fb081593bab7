// Package receivebooking is a Caddy v2 HTTP handler that receives booking
// webhooks from EventFlow, authenticates and validates them, and turns each
// one into a single-booking sync call to the Supabase import-bookings
// function: synchronously, or through a durable queue that never loses an
// accepted webhook.
package receivebooking

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
	"github.com/bookingwebhook/caddy-receive-booking/internal/standardwebhooks"
	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
	"go.uber.org/zap"

	"github.com/bookingwebhook/caddy-receive-booking/internal/scrub"
)

// modulePath is this module's path, to find its version in the build.
const modulePath = "github.com/bookingwebhook/caddy-receive-booking"

// userAgent is what every call to import-bookings sends as User-Agent:
// caddy-receive-booking/<the module version this Caddy was built with>.
var userAgent = "caddy-receive-booking/" + moduleVersion()

// moduleVersion is this module's version as recorded in the binary's build
// information (xcaddy builds it as a dependency), or "devel".
func moduleVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if bi.Main.Path == modulePath && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	for _, d := range bi.Deps {
		if d.Path == modulePath {
			return d.Version
		}
	}
	return "devel"
}

const (
	defaultTimeout     = 12 * time.Second
	defaultMaxBody     = 1 << 20
	defaultBodyTimeout = 10 * time.Second
	defaultCORSOrigin  = "*"

	contractEnvelope = "envelope"
	contractLegacy   = "legacy"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler receives booking webhooks and syncs the booking they name by
// calling import-bookings with {"booking_id": …, "syncMode": "single"}.
//
// Every string field accepts Caddy placeholders. The global ones ({env.*},
// {file.*}) are resolved once at provisioning, so the config that Caddy
// stores and serves on its admin API holds only the placeholder, never the
// secret itself.
type Handler struct {
	// Secrets are shared API keys a sender may present, in the x-api-key
	// header or as "Authorization: Bearer <secret>": they may act for any
	// organization, so a webhook authenticated by one must name its
	// organization_id. Several may be active at once so that a key can be
	// rotated without downtime. A key that belongs to one organization goes
	// under Organizations instead. At least one key (shared or an
	// organization's) is required unless signing secrets are configured.
	Secrets []string `json:"secrets,omitempty"`

	// Organizations binds API keys and signing secrets to the one
	// organization each may act for. A webhook authenticated by an
	// organization's key (or signing secret) syncs as that organization:
	// without organization_id in its body, it is sent upstream with the
	// organization's id; naming another organization, it is answered 403.
	// One leaked key then syncs only its own organization's bookings.
	Organizations []Organization `json:"organizations,omitempty"`

	// Contract is what import-bookings' answers are held to. "envelope":
	// only the single-booking envelope with outcome applied or
	// already_current (success and completed true, ids echoed) is a sync.
	// "legacy", for an import-bookings older than the envelope and weaker:
	// a 2xx JSON answer without "outcome" is also a sync unless it says
	// "success": false. Default: envelope.
	Contract string `json:"contract,omitempty"`

	// Target is the absolute http(s) URL of the import-bookings function.
	// Required.
	Target string `json:"target,omitempty"`

	// TargetKey is the key sent upstream, both as "Authorization: Bearer
	// <key>" (legacy JWT service-role keys) and as "apikey: <key>" (the new
	// sb_secret_… keys). Optional.
	TargetKey string `json:"target_key,omitempty"`

	// Timeout bounds the whole upstream sync made while the sender waits,
	// connection and response body included. EventFlow gives up after
	// about 16 s, so the default leaves it room to get an answer.
	// Default: 12s.
	Timeout string `json:"timeout,omitempty"`

	// MaxBody is the largest request body accepted, as a size such as
	// "1MiB" or a number of bytes. Larger bodies are answered 413 and never
	// parsed. Default: 1MiB.
	MaxBody string `json:"max_body,omitempty"`

	// BodyTimeout bounds how long a sender may take to send its body; a
	// slower one is answered 408. Default: 10s.
	BodyTimeout string `json:"body_timeout,omitempty"`

	// Require is accepted for configs written for earlier versions. Only
	// "organization_id" may be named, and it changes nothing: every webhook
	// must now resolve to an organization (named in its body, or the one
	// its key belongs to, see Organizations).
	Require []string `json:"require,omitempty"`

	// CORS is the Access-Control-Allow-Origin value sent with every answer
	// and with the 204 preflight answer, as the Edge Function did, or "off"
	// to send no CORS headers and pass OPTIONS on like any other method.
	// Default: "*".
	CORS string `json:"cors,omitempty"`

	// Mode chooses how a webhook is answered: "sync" calls import-bookings
	// while the sender waits (no queue); "async" records the webhook
	// durably and answers 202; "auto" records it, then waits up to Timeout
	// for its sync's first attempt and answers with its outcome (202 when
	// the queue carries on). Default: "sync" without a queue, "auto" with
	// one.
	Mode string `json:"mode,omitempty"`

	// Queue configures the durable queue. Without it, webhooks are only
	// ever synced while the sender waits.
	Queue *QueueConfig `json:"queue,omitempty"`

	// Route names this handler's target in the jobs it queues, so that a
	// pending job goes to the target configured when it runs (a changed
	// target URL takes effect for the backlog too). Handlers that share a
	// queue but call different targets need different route names.
	// Default: "default".
	Route string `json:"route,omitempty"`

	// CoalesceWindow is how long a new queued sync waits before it may
	// run, so that a burst of webhooks for one booking merges into one
	// sync. "0" turns the wait off (webhooks still merge into a sync that
	// has not started). Default: 1s in async mode, 0 otherwise.
	CoalesceWindow string `json:"coalesce_window,omitempty"`

	// SigningSecrets are Standard Webhooks signing secrets ("whsec_…").
	// When set, webhooks must carry webhook-id, webhook-timestamp and
	// webhook-signature headers signed with one of them. Several may be
	// active at once, for rotation.
	SigningSecrets []string `json:"signing_secrets,omitempty"`

	// Tolerance is how far a signed webhook's timestamp may be from now,
	// in the past or the future; ids are remembered for twice as long to
	// reject replays. Default: 5m.
	Tolerance string `json:"tolerance,omitempty"`

	// Auth is what a webhook must present: "key" (the API key), "signature"
	// (a Standard Webhooks signature) or "both". Default: key when only
	// secrets are set, signature when only signing secrets are set, both
	// when both are.
	Auth string `json:"auth,omitempty"`

	// Outcomes adds or overrides how import-bookings' "outcome" values are
	// judged: "ok" (synced), "retry", "final" (not synced, no retry) or
	// "hold" (not synced: import-bookings paused syncing; a queued sync is
	// held, retried without spending attempts for the queue's
	// hold_budget). For an outcome a later import-bookings adds; unknown
	// outcomes are final. Default: applied and already_current ok;
	// mutating_sync_paused hold; partial, local_fallback and failed retry
	// (failed is final when its error names a revision guard); not_found
	// and cancellation_requires_explicit_apply final.
	Outcomes map[string]string `json:"outcomes,omitempty"`

	// Urgency sets how urgent a webhook's sync is, from 0 to 100, by its
	// event_type as normalised (lower case, every "_" a "."); "unknown"
	// stands for a webhook without one or with a type EventFlow does not
	// send. An urgent sync (100) goes before an organization's backlog of
	// others and makes its booking's sync that waits for a retry due at
	// once; 40 to 99 is normal; below 40 low. An organization's backlog
	// still sinks its own syncs, so no organization starves another.
	// Default: booking.confirmed and booking.cancelled 100,
	// booking.updated 60, booking.created 40, booking.offer and unknown 20.
	Urgency map[string]int `json:"urgency,omitempty"`

	// DisableMetrics turns off the Prometheus metrics of this handler.
	DisableMetrics bool `json:"disable_metrics,omitempty"`

	secrets *secretSet
	// sigOrgs[i] is the organization of the verifier's Keys[i] ("" when
	// shared), sigNames[i] its name in booking timelines.
	sigOrgs        []string
	sigNames       []string
	authKey        bool
	authSig        bool
	verifier       *standardwebhooks.Verifier
	replay         replayStore
	target         *url.URL
	targetKey      string
	timeout        time.Duration
	maxBody        int64
	bodyTimeout    time.Duration
	corsOrigin     string
	mode           string
	coalesceWindow time.Duration
	route          string
	queueDriver    string
	queueSettings  queue.Settings
	// secretValues are every secret this handler knows (API keys, signing
	// secrets, the target key, the target URL and its query values), for
	// the queue's scrubber.
	secretValues []string
	scrub        *scrub.Scrubber

	// urgency is Urgency over the defaults; urgencyUnknown its "unknown".
	urgency        map[string]int
	urgencyUnknown int

	upstream *upstream.Client
	// coalescer shares syncs between waiting senders when there is no
	// queue (sync mode); with a queue every sync goes through the engine.
	coalescer *coalescer
	queue     *engineRef
	metrics   *metrics
	logger    *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.receive_booking",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision resolves placeholders, fills defaults, prepares the upstream
// client and declares its queue to the receive_booking app, which opens it
// when it starts. It does no I/O.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	repl := caddy.NewReplacer()
	if err := h.provisionAuth(repl); err != nil {
		return err
	}
	if err := h.provisionSigning(repl); err != nil {
		return err
	}
	if err := h.provisionTarget(repl); err != nil {
		return err
	}
	if err := h.provisionLimits(repl); err != nil {
		return err
	}
	h.metrics = provisionMetrics(ctx, h.DisableMetrics, h.logger)
	h.upstream = upstream.New(h.target, h.targetKey, userAgent, h.metrics.observeUpstream)
	contract, err := h.provisionContract(repl)
	if err != nil {
		return err
	}
	h.upstream.SetContract(contract)
	if err := h.provisionUrgency(); err != nil {
		return err
	}
	if err := h.provisionQueue(ctx, repl); err != nil {
		return err
	}
	h.scrub = new(scrub.Scrubber)
	h.scrub.Set(h, h.secretValues...)
	h.provisionReplay()
	return nil
}

// Organization binds keys and signing secrets to the organization they
// may act for.
type Organization struct {
	// ID is the organization's id, as import-bookings knows it (sent
	// upstream as organization_id). Required.
	ID string `json:"id"`
	// Secrets are the organization's API keys; several for rotation.
	Secrets []string `json:"secrets,omitempty"`
	// SigningSecrets are the organization's Standard Webhooks signing
	// secrets ("whsec_…"); several for rotation.
	SigningSecrets []string `json:"signing_secrets,omitempty"`
}

func (h *Handler) provisionAuth(repl *caddy.Replacer) error {
	h.secrets = new(secretSet)
	seen := map[string]string{} // secret -> its organization, to refuse one bound twice
	add := func(org, field string, vals []string) error {
		secrets, err := resolveNumbered(repl, field, vals)
		if err != nil {
			return err
		}
		for _, v := range secrets {
			// A secret no request can present would leave Caddy answering 401
			// to everyone: refuse it (credentials are trimmed and bounded).
			if v.val != strings.TrimSpace(v.val) || len(v.val) > maxCredentialLen {
				return fmt.Errorf("%s #%d: must not start or end with white space or exceed %d bytes", field, v.n, maxCredentialLen)
			}
			if other, dup := seen[v.val]; dup && other != org {
				return fmt.Errorf("%s #%d is also a key of %s: a key belongs to one organization, or is shared", field, v.n, describeOrg(other))
			}
			seen[v.val] = org
			h.secrets.addNth(org, v.n, v.val)
			h.secretValues = append(h.secretValues, v.val)
		}
		return nil
	}
	if err := add("", "secret", h.Secrets); err != nil {
		return err
	}
	ids := map[string]bool{}
	for i, o := range h.Organizations {
		id, err := resolve(repl, "organization id", o.ID)
		if err != nil {
			return err
		}
		if unset := unsetPlaceholders(repl, o.ID); id == "" && len(unset) > 0 {
			return emptyError(unset, fmt.Sprintf("organization #%d id", i+1))
		}
		if _, err := payload.Parse(fmt.Appendf(nil, `{"organization_id":%q,"booking_id":"b"}`, id), ""); err != nil || id == "" {
			return fmt.Errorf("organization #%d: the id must be a non-empty identifier of at most %d bytes without control characters", i+1, payload.MaxFieldLen)
		}
		if ids[id] {
			return fmt.Errorf("organization %q: configured twice", id)
		}
		ids[id] = true
		if err := checkOrganizationKeys(id, o); err != nil {
			return err
		}
		before := len(h.secrets.digests)
		if err := add(id, fmt.Sprintf("organization %q: secret", id), o.Secrets); err != nil {
			return err
		}
		if len(h.secrets.digests) == before && len(o.SigningSecrets) == 0 {
			// Every {env.*} value unset: the organization's senders get
			// 401 until one is set.
			h.logger.Warn("organization has no key: every secret is empty after its placeholders", zap.String("organization", id),
				zap.String("unset", unsetReasons(unsetPlaceholders(repl, o.Secrets...))))
		}
	}
	return nil
}

func describeOrg(org string) string {
	if org == "" {
		return "every organization (shared)"
	}
	return fmt.Sprintf("organization %q", org)
}

func (h *Handler) provisionTarget(repl *caddy.Replacer) error {
	raw, err := resolve(repl, "target", h.Target)
	if err != nil {
		return err
	}
	unset := unsetPlaceholders(repl, h.Target)
	if raw == "" && len(unset) > 0 {
		return emptyError(unset, "target")
	}
	if raw == "" {
		return errors.New("target: the import-bookings URL is required")
	}
	u, err := parseTarget(raw)
	if err != nil && len(unset) > 0 {
		return fmt.Errorf("%w (%s)", err, unsetReasons(unset))
	}
	if err != nil {
		return err
	}
	h.target = u
	h.targetKey, err = resolve(repl, "target_key", h.TargetKey)
	h.secretValues = append(h.secretValues, h.targetKey, raw)
	for _, vs := range u.Query() {
		h.secretValues = append(h.secretValues, vs...)
	}
	return err
}

// provisionContract adds the configured outcomes to import-bookings'
// contract and chooses which answers count as a sync.
func (h *Handler) provisionContract(repl *caddy.Replacer) (*upstream.Contract, error) {
	kind, err := resolve(repl, "contract", h.Contract)
	if err != nil {
		return nil, err
	}
	if err := checkField("contract", kind); err != nil {
		return nil, err
	}
	extra := make(map[string]upstream.Verdict, len(h.Outcomes))
	for name, v := range h.Outcomes {
		verdict, err := parseOutcome(name, v)
		if err != nil {
			return nil, err
		}
		extra[name] = verdict
	}
	c := upstream.NewContract(extra)
	c.SetLegacy(kind == contractLegacy)
	return c, nil
}

// provisionUrgency lays Urgency over the defaults.
func (h *Handler) provisionUrgency() error {
	h.urgency = maps.Clone(queue.DefaultUrgency)
	h.urgencyUnknown = queue.UrgencyUnknown
	for name, v := range h.Urgency {
		event, err := parseUrgency(name, v)
		if err != nil {
			return err
		}
		if event == urgencyUnknownName {
			h.urgencyUnknown = v
			continue
		}
		h.urgency[event] = v
	}
	return nil
}

// urgencyOf is a webhook's urgency, from its (normalised) event type.
func (h *Handler) urgencyOf(eventType string) int {
	if u, ok := h.urgency[eventType]; ok {
		return u
	}
	return h.urgencyUnknown
}

// parseTarget accepts only absolute http(s) URLs. Its errors never echo the
// URL, which may carry a key in its query string.
func parseTarget(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errors.New("target: not a valid URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, errors.New("target: must be an absolute http or https URL")
	}
	if u.Host == "" {
		return nil, errors.New("target: must name a host")
	}
	return u, nil
}

func (h *Handler) provisionLimits(repl *caddy.Replacer) error {
	var err error
	if h.timeout, err = resolveDuration(repl, "timeout", h.Timeout, defaultTimeout); err != nil {
		return err
	}
	if h.bodyTimeout, err = resolveDuration(repl, "body_timeout", h.BodyTimeout, defaultBodyTimeout); err != nil {
		return err
	}
	if h.maxBody, err = resolveSize(repl, "max_body", h.MaxBody, defaultMaxBody); err != nil {
		return err
	}
	if err := checkRequire(h.Require); err != nil {
		return err
	}
	if len(h.Require) > 0 {
		h.logger.Info("require organization_id is the default now: the line can go")
	}
	cors, err := resolve(repl, "cors", h.CORS)
	if err != nil {
		return err
	}
	h.corsOrigin = cors
	if cors == "" {
		h.corsOrigin = defaultCORSOrigin
	}
	return nil
}

// resolve replaces the global placeholders in a config value. An unknown
// placeholder is an error; the error names the field, never the value.
func resolve(repl *caddy.Replacer, field, val string) (string, error) {
	out, err := repl.ReplaceOrErr(val, false, true)
	if err != nil {
		return "", fmt.Errorf("%s: unknown placeholder", field)
	}
	return out, nil
}

// unsetPlaceholders names the placeholders in vals that resolve to empty
// (each once, in order): why a required value came out empty. Names only:
// a placeholder that resolved to empty has no value to give away.
func unsetPlaceholders(repl *caddy.Replacer, vals ...string) []string {
	var names []string
	for _, v := range vals {
		_, _ = repl.ReplaceFunc(v, func(key string, val any) (any, error) {
			if caddy.ToString(val) == "" && !slices.Contains(names, key) {
				names = append(names, key)
			}
			return val, nil
		})
	}
	return names
}

// emptyError says that fields came out empty, and which placeholders made
// them so: "secret is empty: {env.WEBHOOK_SECRET} is not set".
func emptyError(names []string, fields ...string) error {
	verb := "is"
	if len(fields) > 1 {
		verb = "are"
	}
	return fmt.Errorf("%s %s empty: %s", strings.Join(fields, " and "), verb, unsetReasons(names))
}

// unsetReasons says of each placeholder why it resolved to empty.
func unsetReasons(names []string) string {
	reasons := make([]string, len(names))
	for i, name := range names {
		reasons[i] = "{" + name + "} " + unsetReason(name)
	}
	return strings.Join(reasons, ", ")
}

func unsetReason(name string) string {
	if v, ok := strings.CutPrefix(name, "env."); ok {
		if _, set := os.LookupEnv(v); set {
			return "is set but empty"
		}
		return "is not set"
	}
	if strings.HasPrefix(name, "file.") {
		return "is empty or cannot be read"
	}
	return "is empty"
}

// numbered is a resolved value and its place among the configured ones
// (from 1), which names it in errors and booking timelines.
type numbered struct {
	val string
	n   int
}

// resolveNumbered resolves every value and drops the ones that are empty
// after resolution, so that "{env.OLD_SECRET}" can be left in place once
// the old secret is retired (Provision then requires at least one value
// left); each keeps its configured place.
func resolveNumbered(repl *caddy.Replacer, field string, vals []string) ([]numbered, error) {
	out := make([]numbered, 0, len(vals))
	for i, v := range vals {
		r, err := resolve(repl, field, v)
		if err != nil {
			return nil, err
		}
		if r != "" {
			out = append(out, numbered{r, i + 1})
		}
	}
	return out, nil
}

// resolveChecked resolves a config value and holds it to its field's
// rule (see fieldRules); "" is the default.
func resolveChecked(repl *caddy.Replacer, field, val string) (string, error) {
	s, err := resolve(repl, field, val)
	if err != nil {
		return "", err
	}
	return s, checkField(field, s)
}

// resolveDuration resolves a duration field, def when it is empty.
func resolveDuration(repl *caddy.Replacer, field, val string, def time.Duration) (time.Duration, error) {
	s, err := resolveChecked(repl, field, val)
	if err != nil || s == "" {
		return def, err
	}
	return caddy.ParseDuration(s)
}

// resolveSize resolves a size field, def when it is empty.
func resolveSize(repl *caddy.Replacer, field, val string, def int64) (int64, error) {
	s, err := resolveChecked(repl, field, val)
	if err != nil || s == "" {
		return def, err
	}
	n, err := humanize.ParseBytes(s)
	return int64(n), err
}

// Validate checks how the provisioned settings go together (each value was
// held to its own rule when Provision resolved it, see rules.go). It only
// reads, and logs the settings that another one makes ineffective (see
// conflicts).
func (h *Handler) Validate() error {
	switch {
	case h.mode == modeSync && h.queue != nil:
		return errors.New("mode sync: takes no queue (with a queue, mode auto syncs while the sender waits, through the queue)")
	case h.mode != modeSync && h.queue == nil:
		return fmt.Errorf("mode %s: needs a queue", h.mode)
	}
	return h.checkConflicts()
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
