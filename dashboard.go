package receivebooking

// The receive_booking_dashboard handler: the queue in a browser (River UI,
// read-only) on a site path, behind a Caddy authentication handler
// (basic_auth, or any http.handlers.authentication provider). It is not on
// the admin endpoint: Caddy's admin endpoint refuses browser navigations by
// design (a request with Sec-Fetch-Mode must carry an allowed Origin).
//
// It fails closed: a route that forgot its authentication handler shows
// nothing, where it used to show every job to anyone. Caddy's
// authentication handler sets {http.auth.user.id} once it has
// authenticated a request; the dashboard serves only requests that carry
// it, unless the operator declares it public.

import (
	"errors"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Dashboard{})
	httpcaddyfile.RegisterHandlerDirective("receive_booking_dashboard", parseDashboard)
	httpcaddyfile.RegisterDirectiveOrder("receive_booking_dashboard", httpcaddyfile.Before, "respond")
}

// Dashboard serves the queue's read-only River UI under Prefix. Writes
// (retry, cancel, delete, pause) are refused: they would bypass the
// booking rows that keep one sync per booking; use the admin API or
// `caddy receive-booking`. It shows booking and organization ids and
// upstream errors (scrubbed of secrets), so it serves only requests a
// Caddy authentication handler before it authenticated (basic_auth, or
// any provider of the authentication handler: they set
// {http.auth.user.id}); any other request is answered 403 with
// {"error": "..."} saying so. (403, not 401: a 401 must name a scheme in
// WWW-Authenticate, and the dashboard has none: the authentication
// handler in front challenges.) Job arguments are hidden in the job list
// until the viewer shows them.
type Dashboard struct {
	// Prefix is the path the dashboard is mounted at; requests under it
	// are served. Default: /receive_booking/ui.
	Prefix string `json:"prefix,omitempty"`

	// Queue is the key of the queue to show (see /receive_booking/stats),
	// when the config has several. Default: the first.
	Queue string `json:"queue,omitempty"`

	// Public serves the dashboard to every request that reaches it,
	// authenticated or not: anyone who can reach the site sees booking
	// and organization ids and upstream errors. For a site only trusted
	// people reach (a private network, a localhost-only listener). Caddy
	// logs a warning when it loads a public dashboard. Default: false
	// (only requests an authentication handler authenticated).
	Public bool `json:"public,omitempty"`

	app *App
}

// CaddyModule returns the Caddy module information.
func (Dashboard) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.receive_booking_dashboard",
		New: func() caddy.Module { return new(Dashboard) },
	}
}

// Provision finds the receive_booking app, and warns when the dashboard is
// public. It does no I/O.
func (d *Dashboard) Provision(ctx caddy.Context) error {
	if d.Prefix == "" {
		d.Prefix = "/receive_booking/ui"
	}
	d.Prefix = "/" + strings.Trim(d.Prefix, "/")
	if d.Public {
		ctx.Logger().Warn("receive_booking_dashboard is public: anyone who reaches it sees booking and organization ids and upstream errors; put basic_auth (or another authentication handler) before it instead",
			zap.String("prefix", d.Prefix))
	}
	app, err := loadApp(ctx)
	if err != nil {
		return err
	}
	d.app = app
	return nil
}

// ServeHTTP serves the dashboard, or passes requests outside Prefix on.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.URL.Path != d.Prefix && !strings.HasPrefix(r.URL.Path, d.Prefix+"/") {
		return next.ServeHTTP(w, r)
	}
	if !d.Public && !authenticated(r) {
		return writeJSON(w, http.StatusForbidden, map[string]string{"error": "the dashboard serves only authenticated requests: put basic_auth (or another authentication handler) before receive_booking_dashboard in its route, or declare it public"})
	}
	engines := d.app.engines()
	for _, e := range engines {
		if d.Queue == "" || e.ID() == d.Queue {
			// An operator an authentication handler let in finds a
			// failed booking by its ids in the list; a public dashboard
			// shows them only on demand.
			h, err := e.Dashboard(d.Prefix, d.Public)
			if err != nil {
				return caddyhttp.Error(http.StatusServiceUnavailable, err)
			}
			h.ServeHTTP(w, r)
			return nil
		}
	}
	return caddyhttp.Error(http.StatusServiceUnavailable, errors.New("no receive_booking queue is configured"))
}

// authenticated reports whether a Caddy authentication handler
// authenticated the request: it sets {http.auth.user.id} to the user's id
// once it has, and only then.
func authenticated(r *http.Request) bool {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return false
	}
	id, _ := repl.GetString("http.auth.user.id")
	return id != ""
}

// UnmarshalCaddyfile sets up the dashboard from Caddyfile tokens. Syntax:
//
//	receive_booking_dashboard [<matcher>] {
//		prefix <path>
//		queue  <key>
//		public
//	}
//
// (A first argument starting with "/" would be taken for a path matcher:
// the prefix is a subdirective.) public serves requests no authentication
// handler authenticated: see Dashboard.Public.
func (d *Dashboard) UnmarshalCaddyfile(disp *caddyfile.Dispenser) error {
	disp.Next() // directive name
	if disp.NextArg() {
		return disp.ArgErr()
	}
	for disp.NextBlock(0) {
		switch disp.Val() {
		case "prefix":
			if !disp.AllArgs(&d.Prefix) {
				return disp.ArgErr()
			}
		case "queue":
			if !disp.AllArgs(&d.Queue) {
				return disp.ArgErr()
			}
		case "public":
			if disp.NextArg() {
				return disp.ArgErr()
			}
			d.Public = true
		default:
			return disp.Errf("unknown subdirective %q", disp.Val())
		}
	}
	return nil
}

func parseDashboard(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	d := new(Dashboard)
	err := d.UnmarshalCaddyfile(h.Dispenser)
	return d, err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Dashboard)(nil)
	_ caddyhttp.MiddlewareHandler = (*Dashboard)(nil)
	_ caddyfile.Unmarshaler       = (*Dashboard)(nil)
)
