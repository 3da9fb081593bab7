package receivebooking

// Where a handler sits in the http app, for errors that name two handlers
// (two sites that disagree on one queue). A handler is not told its site;
// it finds it while it is provisioned, from what Caddy shows every module
// then: the server being set up (caddyhttp.ServerCtxKey, which Caddy's own
// route metrics read the same way), the subroutes above it
// (ctx.Modules()), and the route of each that is being provisioned.

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// place is a handler's site address and path, as a Caddyfile names them
// ("127.0.0.1:8081/hooks/*"), with the server and route indices that tell
// apart two handlers at the same address.
type place struct {
	addr   string // "" outside the http app
	server string
	routes []int // the route index at each level, outermost first
}

// placeOf describes the handler that ctx is provisioning. Caddy provisions
// a server's routes in order, and a route's matchers before its handlers,
// and clears a route's raw handlers once it has loaded them: the route
// being provisioned at each level is the first that still holds them.
func placeOf(ctx caddy.Context) place {
	srv, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil {
		return place{}
	}
	p := place{server: srv.Name()}
	var hosts, paths []string
	level := func(routes caddyhttp.RouteList) {
		i := slices.IndexFunc(routes, func(r caddyhttp.Route) bool { return r.HandlersRaw != nil })
		if i < 0 {
			return
		}
		p.routes = append(p.routes, i)
		for _, set := range routes[i].MatcherSets {
			for _, m := range set {
				switch m := m.(type) {
				case *caddyhttp.MatchHost:
					hosts = append(hosts, *m...)
				case *caddyhttp.MatchPath:
					paths = append(paths, *m...)
				}
			}
		}
	}
	level(srv.Routes)
	for _, m := range ctx.Modules() {
		if sub, ok := m.(*caddyhttp.Subroute); ok {
			level(sub.Routes)
		}
	}
	p.addr = siteAddress(hosts, listenPorts(srv.Listen)) + strings.Join(paths, ",")
	return p
}

// siteAddress joins each host with the server's port, as a Caddyfile site
// address: "example.com:443", or ":8080" for any host.
func siteAddress(hosts []string, port string) string {
	if len(hosts) == 0 {
		hosts = []string{""}
	}
	addrs := make([]string, len(hosts))
	for i, h := range hosts {
		addrs[i] = net.JoinHostPort(h, port)
		if port == "" {
			addrs[i] = h
		}
	}
	return strings.Join(addrs, ",")
}

// listenPorts is the port (or ports, "8080,8443") the server listens on.
func listenPorts(listen []string) string {
	var ports []string
	for _, l := range listen {
		na, err := caddy.ParseNetworkAddress(l)
		if err != nil {
			continue
		}
		port := strconv.FormatUint(uint64(na.StartPort), 10)
		if na.EndPort != na.StartPort {
			port += "-" + strconv.FormatUint(uint64(na.EndPort), 10)
		}
		if !slices.Contains(ports, port) {
			ports = append(ports, port)
		}
	}
	return strings.Join(ports, ",")
}

// String names the handler by its site address and path, or by its server
// and route when it has neither.
func (p place) String() string {
	switch {
	case p.server == "":
		return "a handler"
	case p.addr == "":
		return "the handler in " + p.indices()
	}
	return "the handler at " + p.addr
}

// detailed adds the server and route indices to String.
func (p place) detailed() string {
	if p.server == "" || p.addr == "" {
		return p.String()
	}
	return fmt.Sprintf("%s (%s)", p, p.indices())
}

func (p place) indices() string {
	levels := make([]string, len(p.routes))
	for i, r := range p.routes {
		levels[i] = strconv.Itoa(r)
	}
	return fmt.Sprintf("server %s, route %s", p.server, strings.Join(levels, "."))
}

// namePair names two handlers so that they can be told apart: by their
// server and route when they share an address. Two in one route differ
// only by their position among its handlers, which a handler cannot see
// while it is provisioned (Caddy's error prefix gives the second's).
func namePair(a, b place) (string, string) {
	switch {
	case a.String() != b.String():
		return a.String(), b.String()
	case a.detailed() != b.detailed():
		return a.detailed(), b.detailed()
	}
	return a.detailed(), "another one there"
}
