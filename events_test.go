package receivebooking

// Caddy events through a real (in-process) Caddy: a final failure, an
// exhausted job, and a queue that is unavailable and then available again
// reach a subscribed event handler, with their data and no secret.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

func init() {
	caddy.RegisterModule(eventRecorder{})
}

// eventRecorder is an events handler module for the tests: it keeps every
// event it is given.
type eventRecorder struct{}

var recorded struct {
	sync.Mutex
	events []recordedEvent
}

type recordedEvent struct {
	name   string
	origin string
	data   map[string]any
}

func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.rb_test_recorder", New: func() caddy.Module { return eventRecorder{} }}
}

func (eventRecorder) Handle(_ context.Context, e caddy.Event) error {
	origin := ""
	if o := e.Origin(); o != nil {
		origin = string(o.CaddyModule().ID)
	}
	recorded.Lock()
	defer recorded.Unlock()
	recorded.events = append(recorded.events, recordedEvent{name: e.Name(), origin: origin, data: e.Data})
	return nil
}

func eventsNamed(name string) []recordedEvent {
	recorded.Lock()
	defer recorded.Unlock()
	var out []recordedEvent
	for _, e := range recorded.events {
		if e.name == name {
			out = append(out, e)
		}
	}
	return out
}

func TestEventsReachCaddyHandlers(t *testing.T) {
	stand := testkit.NewStandIn(t)
	stand.Answer(func(c *testkit.Call) (int, string) {
		if c.Booking == "ev-final" {
			return 200, testkit.Envelope(c, "not_found")
		}
		return 503, `{"code":"BOOT_ERROR","key":"` + e2eTargetKey + `"}`
	})
	good := filepath.Join(t.TempDir(), "good.sqlite3")
	// The second queue's path is a directory: it cannot open until the
	// directory goes.
	bad := filepath.Join(t.TempDir(), "bad.sqlite3")
	require.NoError(t, os.Mkdir(bad, 0o700))
	handler := func(path, route string) map[string]any {
		return map[string]any{"handler": "receive_booking", "secrets": []string{e2eSecret}, "target": stand.Target(),
			"target_key": e2eTargetKey, "mode": "async", "coalesce_window": "0", "route": route,
			"queue": map[string]any{"driver": "sqlite", "path": path, "max_attempts": 1}}
	}
	config := map[string]any{
		"admin": map[string]any{"listen": "localhost:2999"},
		"apps": map[string]any{
			"http": map[string]any{"http_port": 9080, "servers": map[string]any{"srv": map[string]any{
				"listen": []string{":9080"},
				"routes": []any{
					map[string]any{"match": []any{map[string]any{"path": []string{"/bad"}}}, "handle": []any{handler(bad, "bad")}},
					map[string]any{"handle": []any{handler(good, "good")}},
				},
			}}},
			"events": map[string]any{"subscriptions": []any{map[string]any{
				"events":   []string{EventSyncFailed, EventSyncExhausted, EventQueueUnavailable, EventQueueAvailable},
				"handlers": []any{map[string]any{"handler": "rb_test_recorder"}},
			}}},
		},
	}
	raw, err := json.Marshal(config)
	require.NoError(t, err)
	tester := caddytest.NewTester(t)
	tester.InitServer(string(raw), "json")
	t.Cleanup(func() {
		resp, err := http.Post("http://localhost:2999/load", "application/json", strings.NewReader(`{"admin":{"listen":"localhost:2999"}}`))
		if err == nil {
			resp.Body.Close()
		}
	})

	require.Eventually(t, func() bool { return len(eventsNamed(EventQueueUnavailable)) > 0 }, 10*time.Second, 20*time.Millisecond)
	for _, b := range []string{"ev-final", "ev-exhausted"} {
		require.Eventually(t, func() bool {
			status, _, _ := sendOne(http.DefaultClient, e2eSite+"/", b)
			return status == 202
		}, 10*time.Second, 50*time.Millisecond, "the good queue records")
	}
	require.Eventually(t, func() bool {
		return len(eventsNamed(EventSyncFailed)) == 1 && len(eventsNamed(EventSyncExhausted)) == 1
	}, 20*time.Second, 20*time.Millisecond)
	require.NoError(t, os.Remove(bad))
	require.Eventually(t, func() bool { return len(eventsNamed(EventQueueAvailable)) > 0 }, 30*time.Second, 50*time.Millisecond,
		"the bad queue opens once its path is free")

	final, exhausted := eventsNamed(EventSyncFailed)[0], eventsNamed(EventSyncExhausted)[0]
	assert.Equal(t, "receive_booking", final.origin)
	assert.Equal(t, "ev-final", final.data["booking_id"])
	assert.Equal(t, "org-1", final.data["organization_id"])
	assert.Equal(t, "not_found", final.data["outcome"])
	assert.Contains(t, final.data["reason"], "outcome not_found")
	assert.NotZero(t, final.data["job_id"])
	assert.Equal(t, "ev-exhausted", exhausted.data["booking_id"])
	assert.Contains(t, exhausted.data["reason"], "upstream status 503")
	unavailable := eventsNamed(EventQueueUnavailable)[0]
	assert.Contains(t, unavailable.data["reason"], "queue")
	all := fmt.Sprint(eventsNamed(EventSyncFailed), eventsNamed(EventSyncExhausted), eventsNamed(EventQueueUnavailable), eventsNamed(EventQueueAvailable))
	assert.NotContains(t, all, e2eTargetKey)
	assert.NotContains(t, all, e2eSecret)
	t.Logf("EVENTS: %s %v; %s %v; %s %v; %s %v", EventSyncFailed, final.data, EventSyncExhausted, exhausted.data,
		EventQueueUnavailable, unavailable.data, EventQueueAvailable, eventsNamed(EventQueueAvailable)[0].data)
}
