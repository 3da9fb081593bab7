package receivebooking

// Operators' pauses on the admin API and the command line: syncing
// stopped for a route, an organization, both, or everything (the queue's
// pause.go has the invariant), while webhooks are still recorded and
// answered 202.
//
//	GET  /receive_booking/pauses
//	POST /receive_booking/pause?route=&organization_id=&reason=
//	POST /receive_booking/resume?route=&organization_id=

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"

	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
)

// msgNoSuchPause is the 404 of a resume that names no pause.
const msgNoSuchPause = "no pause with that route and organization_id (pauses lists them)"

// pauseScope reads a pause's route and organization_id: absent or empty
// is every one.
func pauseScope(r *http.Request) queue.Pause {
	q := r.URL.Query()
	return queue.Pause{Route: q.Get("route"), OrganizationID: q.Get("organization_id"), Reason: q.Get("reason")}
}

func (a *AdminAPI) listPauses(ctx context.Context, q *adminQueue, _ *http.Request) (any, error) {
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	ps, err := q.e.Pauses(ctx)
	if err != nil {
		return nil, err
	}
	return struct {
		Queue  string        `json:"queue"`
		Pauses []queue.Pause `json:"pauses"`
	}{q.e.ID(), ps}, nil
}

func (a *AdminAPI) pause(ctx context.Context, q *adminQueue, r *http.Request) (any, error) {
	p := pauseScope(r)
	if err := queue.CheckPause(p); err != nil {
		return nil, apiError(http.StatusBadRequest, err.Error())
	}
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	created, err := q.e.Pause(ctx, p)
	if err != nil {
		return nil, err
	}
	return struct {
		Paused  bool   `json:"paused"`
		Created bool   `json:"created"`
		Route   string `json:"route"`
		Org     string `json:"organization_id"`
	}{true, created, cmp.Or(p.Route, "*"), cmp.Or(p.OrganizationID, "*")}, nil
}

func (a *AdminAPI) resume(ctx context.Context, q *adminQueue, r *http.Request) (any, error) {
	p := pauseScope(r)
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	n, err := q.e.Resume(ctx, p.Route, p.OrganizationID)
	if errors.Is(err, queue.ErrNotPaused) {
		return nil, apiError(http.StatusNotFound, msgNoSuchPause)
	}
	if err != nil {
		return nil, err
	}
	return struct {
		Resumed bool   `json:"resumed"`
		JobsDue int64  `json:"jobs_due"`
		Route   string `json:"route"`
		Org     string `json:"organization_id"`
	}{true, n, cmp.Or(p.Route, "*"), cmp.Or(p.OrganizationID, "*")}, nil
}

// pauseRequest makes the request of pause and resume.
func (r *request) pauseRequest(fl caddycmd.Flags, rest []string) error {
	r.method, r.path = http.MethodPost, "/receive_booking/"+r.verb
	for flag, param := range map[string]string{"route": "route", "organization": "organization_id", "reason": "reason"} {
		if v := fl.String(flag); v != "" {
			r.query.Set(param, v)
		}
	}
	if r.verb == "pause" {
		if err := queue.CheckPause(queue.Pause{Reason: fl.String("reason")}); err != nil {
			return err
		}
	}
	return noArgs(r.verb, rest)
}

// printPauses prints the answers of pause, resume and pauses.
func printPauses(out io.Writer, verb string, v map[string]any) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	if verb != "pauses" {
		for _, k := range []string{"paused", "created", "resumed", "jobs_due", "route", "organization_id"} {
			if val, ok := v[k]; ok {
				fmt.Fprintf(tw, "%s\t%v\n", k, num(val))
			}
		}
		return
	}
	ps, _ := v["pauses"].([]any)
	fmt.Fprintln(tw, "ROUTE\tORGANIZATION\tPAUSED AT\tREASON")
	for _, p := range ps {
		m := p.(map[string]any)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", cmp.Or(str(m["route"]), "*"), cmp.Or(str(m["organization_id"]), "*"), inSeconds(m["paused_at"]), str(m["reason"]))
	}
	if len(ps) == 0 {
		fmt.Fprintln(tw, "(none: syncing runs)")
	}
}
