package receivebooking

// The receive_booking_dashboard handler: the queue in a browser (River UI,
// read-only) on a site path, behind whatever Caddy puts in front of it
// (basic_auth, forward_auth, a localhost-only site). It is not on the admin
// endpoint: Caddy's admin endpoint refuses browser navigations by design
// (a request with Sec-Fetch-Mode must carry an allowed Origin).

import (
	"errors"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Dashboard{})
	httpcaddyfile.RegisterHandlerDirective("receive_booking_dashboard", parseDashboard)
	httpcaddyfile.RegisterDirectiveOrder("receive_booking_dashboard", httpcaddyfile.Before, "respond")
}

// Dashboard serves the queue's read-only River UI under Prefix. Writes
// (retry, cancel, delete, pause) are refused: they would bypass the
// booking rows that keep one sync per booking; use the admin API or
// `caddy receive-booking`. Protect it as any Caddy route: it shows
// booking and organization ids and upstream errors (scrubbed of secrets).
type Dashboard struct {
	// Prefix is the path the dashboard is mounted at; requests under it
	// are served. Default: /receive_booking/ui.
	Prefix string `json:"prefix,omitempty"`

	// Queue is the key of the queue to show (see /receive_booking/stats),
	// when the config has several. Default: the first.
	Queue string `json:"queue,omitempty"`

	app *App
}

// CaddyModule returns the Caddy module information.
func (Dashboard) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.receive_booking_dashboard",
		New: func() caddy.Module { return new(Dashboard) },
	}
}

// Provision finds the receive_booking app. It does no I/O.
func (d *Dashboard) Provision(ctx caddy.Context) error {
	if d.Prefix == "" {
		d.Prefix = "/receive_booking/ui"
	}
	d.Prefix = "/" + strings.Trim(d.Prefix, "/")
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
	engines := d.app.engines()
	for _, e := range engines {
		if d.Queue == "" || e.ID() == d.Queue {
			h, err := e.Dashboard(d.Prefix)
			if err != nil {
				return caddyhttp.Error(http.StatusServiceUnavailable, err)
			}
			h.ServeHTTP(w, r)
			return nil
		}
	}
	return caddyhttp.Error(http.StatusServiceUnavailable, errors.New("no receive_booking queue is configured"))
}

// UnmarshalCaddyfile sets up the dashboard from Caddyfile tokens. Syntax:
//
//	receive_booking_dashboard [<matcher>] {
//		prefix <path>
//		queue  <key>
//	}
//
// (A first argument starting with "/" would be taken for a path matcher:
// the prefix is a subdirective.)
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
