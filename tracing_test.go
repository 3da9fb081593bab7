package receivebooking

// Trace context from EventFlow to import-bookings, through the binary: the
// sender's traceparent reaches import-bookings on the first attempt and on
// a retry from the queue; with Caddy's tracing handler on the route, the
// module's spans (record, queue wait, each attempt) join Caddy's trace and
// reach its OTLP exporter.

import (
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

const (
	senderTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	senderParent  = "00-" + senderTraceID + "-00f067aa0ba902b7-01"
	senderState   = "eventflow=t61rcWkgMzE"
)

// postTraced sends a webhook carrying the sender's trace context.
func postTraced(t *testing.T, url, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("X-Api-Key", orgAKey)
	req.Header.Set("traceparent", senderParent)
	req.Header.Set("tracestate", senderState)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, decodeObject(t, string(raw))
}

// traceIDOf is the trace-id field of a traceparent.
func traceIDOf(traceparent string) string {
	parts := strings.Split(traceparent, "-")
	if len(parts) != 4 {
		return ""
	}
	return parts[1]
}

// TestTraceContextReachesImportBookings: without Caddy's tracing handler
// the sender's traceparent and tracestate go to import-bookings as sent,
// in sync mode and from the queue, on the first attempt and on a retry
// (a queued job keeps them).
func TestTraceContextReachesImportBookings(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the Caddy binary")
	}
	stub := testkit.NewStandIn(t)
	var mu sync.Mutex
	failed := map[string]bool{}
	stub.Respond(func(w http.ResponseWriter, r *http.Request, c *testkit.Call) {
		mu.Lock()
		first := !failed[c.Booking] && strings.HasPrefix(c.Booking, "retry")
		failed[c.Booking] = true
		mu.Unlock()
		if first {
			w.Header().Set("Retry-After", "1")
			testkit.WriteJSON(w, http.StatusServiceUnavailable, `{"code":"BOOT_ERROR"}`)
			return
		}
		testkit.WriteJSON(w, http.StatusOK, testkit.Envelope(c, "applied"))
	})
	dataDir, directive := queuedDirective(t, "sqlite", stub.Target(), "timeout 5s")
	queued := startCaddy(t, dataDir, directive)
	syncOnly := startCaddy(t, t.TempDir(), fmt.Sprintf(`receive_booking {
		organization org-a {
			secret %s
		}
		target %s
	}`, orgAKey, stub.Target()))
	waitHealthy(t, queued)

	status, out := postTraced(t, syncOnly.url, `{"booking_id":"sync-1"}`)
	require.Equal(t, 200, status, "%v", out)
	status, out = postTraced(t, queued.url, `{"booking_id":"retry-1"}`)
	require.Equal(t, 202, status, "the first attempt fails: %v", out)
	require.Eventually(t, func() bool { return len(stub.CallsFor("retry-1")) == 2 }, 15*time.Second, 50*time.Millisecond)
	calls := append(stub.CallsFor("sync-1"), stub.CallsFor("retry-1")...)
	require.Len(t, calls, 3)
	for i, c := range calls {
		assert.Equal(t, senderParent, c.Header.Get("traceparent"), "call %d (%s)", i, c.Booking)
		assert.Equal(t, senderState, c.Header.Get("tracestate"), "call %d (%s)", i, c.Booking)
	}
}

// otlpReceiver is an OTLP/HTTP trace receiver: it keeps every span's
// name, trace id and span id.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []receivedSpan
}

type receivedSpan struct{ name, traceID, spanID, parentID string }

func (o *otlpReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(r.Body)
	var req coltrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(raw, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				o.spans = append(o.spans, receivedSpan{s.Name, hex.EncodeToString(s.TraceId), hex.EncodeToString(s.SpanId),
					hex.EncodeToString(s.ParentSpanId)})
			}
		}
	}
	o.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
	out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
	_, _ = w.Write(out)
}

func (o *otlpReceiver) inTrace(traceID string) map[string]receivedSpan {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := map[string]receivedSpan{}
	for _, s := range o.spans {
		if s.traceID == traceID {
			out[s.name] = s
		}
	}
	return out
}

// TestModuleSpansJoinCaddysTrace: with `tracing` on the route, Caddy
// continues the sender's trace; the module's record, queue-wait and
// attempt spans carry the same trace id, reach the OTLP collector Caddy
// exports to, and import-bookings is called as a child of the attempt.
func TestModuleSpansJoinCaddysTrace(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the Caddy binary")
	}
	recv := new(otlpReceiver)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: recv}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	t.Setenv("OTEL_TRACES_EXPORTER", "otlp")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+l.Addr().String())
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100")

	stub := testkit.NewStandIn(t)
	dataDir, directive := queuedDirective(t, "sqlite", stub.Target(), "timeout 5s")
	p := startCaddy(t, dataDir, "tracing {\n\t\tspan webhook\n\t}\n\t"+directive)
	waitHealthy(t, p)

	status, out := postTraced(t, p.url, `{"booking_id":"traced-1"}`)
	require.Equal(t, 200, status, "%v", out)
	calls := stub.CallsFor("traced-1")
	require.Len(t, calls, 1)
	sent := calls[0].Header.Get("traceparent")
	assert.Equal(t, senderTraceID, traceIDOf(sent), "import-bookings continues the sender's trace")

	want := []string{"webhook", "receive_booking.record", "receive_booking.queue_wait", "receive_booking.attempt"}
	require.Eventually(t, func() bool { return len(recv.inTrace(senderTraceID)) >= len(want) }, 15*time.Second, 50*time.Millisecond,
		"spans of the sender's trace reach the collector: %v", recv.inTrace(senderTraceID))
	spans := recv.inTrace(senderTraceID)
	for _, name := range want {
		assert.Contains(t, spans, name)
	}
	assert.Equal(t, "00f067aa0ba902b7", spans["webhook"].parentID, "Caddy's span continues the sender's")
	assert.Equal(t, spans["webhook"].spanID, spans["receive_booking.record"].parentID, "the record is a child of Caddy's span")
	assert.Equal(t, spans["receive_booking.record"].spanID, spans["receive_booking.attempt"].parentID,
		"the attempt continues the job's stored context")
	assert.Equal(t, "00-"+senderTraceID+"-"+spans["receive_booking.attempt"].spanID+"-01", sent,
		"import-bookings is called as a child of the attempt")
}
