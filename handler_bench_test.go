package receivebooking

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// BenchmarkServeHTTPSync measures one synced webhook through the handler
// against a loopback upstream: parse, authenticate, forward, answer.
func BenchmarkServeHTTPSync(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		var req struct {
			BookingID      json.RawMessage `json:"booking_id"`
			OrganizationID json.RawMessage `json:"organization_id"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		_, _ = fmt.Fprintf(w, `{"success":true,"queued":false,"completed":true,"sync_mode":"single","booking_id":%s,"organization_id":%s,"outcome":"applied"}`,
			req.BookingID, req.OrganizationID)
	}))
	defer up.Close()
	h := &Handler{Secrets: []string{"bench-secret"}, Target: up.URL, DisableMetrics: true}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	h.logger = zap.NewNop()
	var n atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			body := fmt.Sprintf(`{"booking_id":"%d","event_type":"booking.updated","organization_id":"org-1"}`, n.Add(1))
			r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
			r.Header.Set("X-Api-Key", "bench-secret")
			r.Header.Set("Content-Type", "application/json")
			w := httptest.NewRecorder()
			_ = h.ServeHTTP(w, r, nil)
			if w.Code != http.StatusOK {
				b.Fatalf("status %d: %s", w.Code, w.Body)
			}
		}
	})
}

// BenchmarkParseWebhook measures body validation alone.
func BenchmarkParseWebhook(b *testing.B) {
	body := []byte(`{"booking_id":"123456","event_type":"booking.updated","organization_id":"org-1","data":{"a":[1,2,3],"b":"x"}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := payload.Parse(body, ""); err != nil {
			b.Fatal(err)
		}
	}
}
