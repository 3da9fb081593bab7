package receivebooking

// The receive_booking Caddyfile directive and its subdirectives.

import (
	"strconv"
	"strings"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("receive_booking", parseCaddyfile)
	// A webhook receiver answers the request itself, like respond does;
	// ordering it there means users need no global "order" option.
	httpcaddyfile.RegisterDirectiveOrder("receive_booking", httpcaddyfile.Before, "respond")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	receive_booking [<matcher>] {
//		secret          <secret...>
//		signing_secret  <whsec_...>
//		organization    <id> {
//			secret         <secret...>
//			signing_secret <whsec_...>
//		}
//		tolerance       <duration>
//		auth            key|signature|both
//		target          <url>
//		target_key      <key>
//		timeout         <duration>
//		body_timeout    <duration>
//		max_body        <size>
//		contract        envelope|legacy
//		cors            <origin>|off
//		mode            sync|async|auto
//		queue           sqlite [<path>] | postgres <dsn>
//		workers         <n>
//		max_in_flight   <n>
//		max_attempts    <n>
//		worker_timeout  <duration>
//		retention       completed|cancelled|discarded <duration>
//		coalesce_window <duration>
//		route           <name>
//		outcome         <name> ok|retry|final
//		metrics         off
//	}
//
// secret and signing_secret may repeat or take several values: all of them
// are accepted, which is how a key is rotated. At the top they are shared
// (a webhook they authenticate must name its organization_id); inside an
// organization block they belong to that organization, which a webhook
// they authenticate then syncs as. organization may repeat, once per id;
// retention once per state.
// Every value accepts placeholders such as {env.WEBHOOK_SECRET} or
// {file./run/secrets/webhook}. "require organization_id" is still accepted
// and changes nothing: organization_id is always required.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		name := d.Val()
		if seen[name] && name != "secret" && name != "signing_secret" && name != "outcome" && name != "organization" && name != "retention" {
			return d.Errf("%s: subdirective given twice", name)
		}
		seen[name] = true
		parse, ok := subdirectives[name]
		if !ok {
			return d.Errf("unknown subdirective %q", name)
		}
		if err := parse(h, d); err != nil {
			return err
		}
	}
	return nil
}

var subdirectives = map[string]func(*Handler, *caddyfile.Dispenser) error{
	"secret":          multiArg(func(h *Handler) *[]string { return &h.Secrets }),
	"signing_secret":  multiArg(func(h *Handler) *[]string { return &h.SigningSecrets }),
	"tolerance":       stringArg(func(h *Handler) *string { return &h.Tolerance }, checkDuration),
	"auth":            stringArg(func(h *Handler) *string { return &h.Auth }, checkAuth),
	"target":          stringArg(func(h *Handler) *string { return &h.Target }, nil),
	"target_key":      stringArg(func(h *Handler) *string { return &h.TargetKey }, nil),
	"timeout":         stringArg(func(h *Handler) *string { return &h.Timeout }, checkDuration),
	"body_timeout":    stringArg(func(h *Handler) *string { return &h.BodyTimeout }, checkDuration),
	"max_body":        stringArg(func(h *Handler) *string { return &h.MaxBody }, checkSize),
	"cors":            stringArg(func(h *Handler) *string { return &h.CORS }, nil),
	"mode":            stringArg(func(h *Handler) *string { return &h.Mode }, checkMode),
	"coalesce_window": stringArg(func(h *Handler) *string { return &h.CoalesceWindow }, checkDuration),
	"route":           stringArg(func(h *Handler) *string { return &h.Route }, nil),
	"require": func(h *Handler, d *caddyfile.Dispenser) error {
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		for _, a := range args {
			if a != payload.FieldOrganizationID {
				return d.Errf("require: unsupported field %q (only %q)", a, payload.FieldOrganizationID)
			}
		}
		h.Require = args
		return nil
	},
	"contract": stringArg(func(h *Handler) *string { return &h.Contract }, checkContract),
	"organization": func(h *Handler, d *caddyfile.Dispenser) error {
		var o Organization
		if !d.NextArg() {
			return d.ArgErr()
		}
		o.ID = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		for nesting := d.Nesting(); d.NextBlock(nesting); {
			name := d.Val()
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			switch name {
			case "secret":
				o.Secrets = append(o.Secrets, args...)
			case "signing_secret":
				o.SigningSecrets = append(o.SigningSecrets, args...)
			default:
				return d.Errf("organization %s: unknown subdirective %q (expected secret or signing_secret)", o.ID, name)
			}
		}
		if len(o.Secrets)+len(o.SigningSecrets) == 0 {
			return d.Errf("organization %s: needs a block with a secret or a signing_secret", o.ID)
		}
		h.Organizations = append(h.Organizations, o)
		return nil
	},
	"metrics": func(h *Handler, d *caddyfile.Dispenser) error {
		var v string
		if !d.AllArgs(&v) {
			return d.ArgErr()
		}
		if v != "off" {
			return d.Errf("metrics: only \"off\" is allowed")
		}
		h.DisableMetrics = true
		return nil
	},
	"queue": func(h *Handler, d *caddyfile.Dispenser) error {
		args := d.RemainingArgs()
		q := h.queueConfig()
		switch {
		case len(args) == 1 && args[0] == queue.SQLite, len(args) == 2 && args[0] == queue.SQLite:
			q.Driver = queue.SQLite
			if len(args) == 2 {
				q.Path = args[1]
			}
		case len(args) == 2 && args[0] == queue.Postgres:
			q.Driver, q.DSN = queue.Postgres, args[1]
		default:
			return d.Errf("queue: expected \"sqlite [<path>]\" or \"postgres <dsn>\"")
		}
		return nil
	},
	"workers":       intArg(func(q *QueueConfig) *int { return &q.Workers }),
	"max_in_flight": intArg(func(q *QueueConfig) *int { return &q.MaxInFlight }),
	"outcome": func(h *Handler, d *caddyfile.Dispenser) error {
		var name, verdict string
		if !d.AllArgs(&name, &verdict) {
			return d.ArgErr()
		}
		if _, ok := upstream.ParseVerdict(verdict); !ok {
			return d.Errf("outcome %s: expected ok, retry or final, got %q", name, verdict)
		}
		if h.Outcomes == nil {
			h.Outcomes = map[string]string{}
		}
		h.Outcomes[name] = verdict
		return nil
	},
	"max_attempts": intArg(func(q *QueueConfig) *int { return &q.MaxAttempts }),
	"retention":    parseRetention,
	"worker_timeout": func(h *Handler, d *caddyfile.Dispenser) error {
		name := d.Val()
		var v string
		if !d.AllArgs(&v) {
			return d.ArgErr()
		}
		h.queueConfig().WorkerTimeout = v
		return checkDuration(d, name, v)
	},
}

// queueConfig returns the queue settings, creating them on first use so
// that "workers" may come before "queue".
func (h *Handler) queueConfig() *QueueConfig {
	if h.Queue == nil {
		h.Queue = new(QueueConfig)
	}
	return h.Queue
}

// multiArg parses a subdirective that may repeat and take several values,
// all of which are kept.
func multiArg(field func(*Handler) *[]string) func(*Handler, *caddyfile.Dispenser) error {
	return func(h *Handler, d *caddyfile.Dispenser) error {
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		*field(h) = append(*field(h), args...)
		return nil
	}
}

// stringArg parses a subdirective that takes exactly one value, checking
// literal values early (placeholders are checked at provisioning).
func stringArg(field func(*Handler) *string, check func(d *caddyfile.Dispenser, name, v string) error) func(*Handler, *caddyfile.Dispenser) error {
	return func(h *Handler, d *caddyfile.Dispenser) error {
		name := d.Val()
		var v string
		if !d.AllArgs(&v) {
			return d.ArgErr()
		}
		*field(h) = v
		if check != nil {
			return check(d, name, v)
		}
		return nil
	}
}

func intArg(field func(*QueueConfig) *int) func(*Handler, *caddyfile.Dispenser) error {
	return func(h *Handler, d *caddyfile.Dispenser) error {
		name := d.Val()
		var v string
		if !d.AllArgs(&v) {
			return d.ArgErr()
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return d.Errf("%s: expected a positive whole number, got %q", name, v)
		}
		*field(h.queueConfig()) = n
		return nil
	}
}

func isPlaceholder(v string) bool { return strings.Contains(v, "{") }

func checkDuration(d *caddyfile.Dispenser, name, v string) error {
	if isPlaceholder(v) {
		return nil
	}
	if dur, err := caddy.ParseDuration(v); err != nil || dur < 0 {
		return d.Errf("%s: not a valid duration: %q", name, v)
	}
	return nil
}

func checkSize(d *caddyfile.Dispenser, _, v string) error {
	if isPlaceholder(v) {
		return nil
	}
	if _, err := humanize.ParseBytes(v); err != nil {
		return d.Errf("max_body: not a valid size: %q", v)
	}
	return nil
}

func checkAuth(d *caddyfile.Dispenser, _, v string) error {
	switch v {
	case authKey, authSignature, authBoth:
		return nil
	}
	return d.Errf("auth: expected key, signature or both, got %q", v)
}

func checkContract(d *caddyfile.Dispenser, _, v string) error {
	switch v {
	case contractEnvelope, contractLegacy:
		return nil
	}
	return d.Errf("contract: expected envelope or legacy, got %q", v)
}

func checkMode(d *caddyfile.Dispenser, _, v string) error {
	switch v {
	case modeSync, modeAsync, modeAuto:
		return nil
	}
	return d.Errf("mode: expected sync, async or auto, got %q", v)
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
