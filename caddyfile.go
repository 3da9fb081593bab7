package receivebooking

// The receive_booking Caddyfile directive and its subdirectives.

import (
	"strconv"

	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
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
//		hold_budget     <duration>
//		retention       completed|cancelled|discarded <duration>
//		coalesce_window <duration>
//		route           <name>
//		outcome         <name> ok|retry|final|hold
//		urgency         <event_type> <0-100>
//		metrics         off
//	}
//
// secret and signing_secret may repeat or take several values: all of them
// are accepted, which is how a key is rotated. At the top they are shared
// (a webhook they authenticate must name its organization_id); inside an
// organization block they belong to that organization, which a webhook
// they authenticate then syncs as. organization may repeat, once per id;
// retention once per state; outcome and urgency once per name.
// Every value accepts placeholders such as {env.WEBHOOK_SECRET} or
// {file./run/secrets/webhook}. "require organization_id" is still accepted
// and changes nothing: organization_id is always required.
//
// A literal value is held here to the rule Provision holds JSON values and
// resolved placeholders to (see fieldRules), so a mistake gives the same
// message either way, here with the file and line.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		name := d.Val()
		if seen[name] && name != "secret" && name != "signing_secret" && name != "outcome" && name != "urgency" && name != "organization" && name != "retention" {
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
	"tolerance":       stringArg(func(h *Handler) *string { return &h.Tolerance }),
	"auth":            stringArg(func(h *Handler) *string { return &h.Auth }),
	"target":          stringArg(func(h *Handler) *string { return &h.Target }),
	"target_key":      stringArg(func(h *Handler) *string { return &h.TargetKey }),
	"timeout":         stringArg(func(h *Handler) *string { return &h.Timeout }),
	"body_timeout":    stringArg(func(h *Handler) *string { return &h.BodyTimeout }),
	"max_body":        stringArg(func(h *Handler) *string { return &h.MaxBody }),
	"cors":            stringArg(func(h *Handler) *string { return &h.CORS }),
	"mode":            stringArg(func(h *Handler) *string { return &h.Mode }),
	"coalesce_window": stringArg(func(h *Handler) *string { return &h.CoalesceWindow }),
	"route":           stringArg(func(h *Handler) *string { return &h.Route }),
	"contract":        stringArg(func(h *Handler) *string { return &h.Contract }),
	"worker_timeout":  stringArg(func(h *Handler) *string { return &h.queueConfig().WorkerTimeout }),
	"hold_budget":     stringArg(func(h *Handler) *string { return &h.queueConfig().HoldBudget }),
	"workers":         intArg(func(q *QueueConfig) *int { return &q.Workers }),
	"max_in_flight":   intArg(func(q *QueueConfig) *int { return &q.MaxInFlight }),
	"max_attempts":    intArg(func(q *QueueConfig) *int { return &q.MaxAttempts }),
	"retention":       parseRetention,
	"require": func(h *Handler, d *caddyfile.Dispenser) error {
		h.Require = d.RemainingArgs()
		if len(h.Require) == 0 {
			return d.ArgErr()
		}
		if err := checkRequire(h.Require); err != nil {
			return d.WrapErr(err)
		}
		return nil
	},
	"organization": parseOrganization,
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
		if len(args) > 0 {
			if err := checkLiteral(d, "queue", args[0]); err != nil {
				return err
			}
		}
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
	"urgency": func(h *Handler, d *caddyfile.Dispenser) error {
		var event, value string
		if !d.AllArgs(&event, &value) {
			return d.ArgErr()
		}
		n, err := strconv.Atoi(value)
		if err != nil {
			return d.Errf("urgency %s: expected a whole number from 0 to %d, got %q", event, queue.UrgencyMax, value)
		}
		name, err := parseUrgency(event, n)
		if err != nil {
			return d.WrapErr(err)
		}
		if h.Urgency == nil {
			h.Urgency = map[string]int{}
		}
		h.Urgency[name] = n
		return nil
	},
	"outcome": func(h *Handler, d *caddyfile.Dispenser) error {
		var name, verdict string
		if !d.AllArgs(&name, &verdict) {
			return d.ArgErr()
		}
		if _, err := parseOutcome(name, verdict); err != nil {
			return d.WrapErr(err)
		}
		if h.Outcomes == nil {
			h.Outcomes = map[string]string{}
		}
		h.Outcomes[name] = verdict
		return nil
	},
}

// parseOrganization parses an organization block: its id, then its
// secrets and signing secrets.
func parseOrganization(h *Handler, d *caddyfile.Dispenser) error {
	var o Organization
	if !d.AllArgs(&o.ID) {
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
			return d.Errf("organization %q: unknown subdirective %q (expected secret or signing_secret)", o.ID, name)
		}
	}
	if err := checkOrganizationKeys(o.ID, o); err != nil {
		return d.WrapErr(err)
	}
	h.Organizations = append(h.Organizations, o)
	return nil
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

// stringArg parses a subdirective that takes exactly one value, checking a
// literal value by its rule (see fieldRules) at once.
func stringArg(field func(*Handler) *string) func(*Handler, *caddyfile.Dispenser) error {
	return func(h *Handler, d *caddyfile.Dispenser) error {
		name := d.Val()
		var v string
		if !d.AllArgs(&v) {
			return d.ArgErr()
		}
		*field(h) = v
		if fieldRules[name] == nil {
			return nil
		}
		return checkLiteral(d, name, v)
	}
}

// intArg parses a whole-number queue setting (no placeholders: JSON holds
// it as a number).
func intArg(field func(*QueueConfig) *int) func(*Handler, *caddyfile.Dispenser) error {
	return func(h *Handler, d *caddyfile.Dispenser) error {
		name := d.Val()
		var v string
		if !d.AllArgs(&v) {
			return d.ArgErr()
		}
		if err := checkField(name, v); err != nil {
			return d.WrapErr(err)
		}
		*field(h.queueConfig()), _ = strconv.Atoi(v)
		return nil
	}
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
