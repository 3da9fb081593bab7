// Package tracing carries a webhook's W3C trace context (traceparent,
// tracestate) from its sender to import-bookings, through the queue, and
// makes the module's spans (record, queue wait, each attempt) with the
// tracer provider of Caddy's own `tracing` handler, learned from the
// requests it traced: the module's spans then join Caddy's request span
// and go wherever Caddy exports its traces.
package tracing

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Context is a W3C trace context: the traceparent and tracestate headers.
type Context struct {
	Parent string `json:"traceparent,omitempty"`
	State  string `json:"tracestate,omitempty"`
}

// w3c reads and writes the W3C headers only: the context travels as the
// sender sent it (or as Caddy's tracing handler set it), whatever other
// propagators Caddy is configured with.
var w3c = propagation.TraceContext{}

// FromHeader is the trace context of a request: the sender's, or, with
// Caddy's tracing handler in front, its span's (it injects it into the
// request's headers). Empty when the request has none, or an invalid one.
func FromHeader(h http.Header) Context {
	sc := trace.SpanContextFromContext(w3c.Extract(context.Background(), propagation.HeaderCarrier(h)))
	if !sc.IsValid() {
		return Context{}
	}
	return fromSpanContext(sc)
}

func fromSpanContext(sc trace.SpanContext) Context {
	h := http.Header{}
	w3c.Inject(trace.ContextWithSpanContext(context.Background(), sc), propagation.HeaderCarrier(h))
	return Context{Parent: h.Get("traceparent"), State: h.Get("tracestate")}
}

// Empty reports whether c carries no trace.
func (c Context) Empty() bool { return c.Parent == "" }

// SetHeader writes c into an outgoing request's headers.
func (c Context) SetHeader(h http.Header) {
	if c.Parent == "" {
		return
	}
	h.Set("traceparent", c.Parent)
	if c.State != "" {
		h.Set("tracestate", c.State)
	}
}

// remote is c as a parent for a new span.
func (c Context) remote(ctx context.Context) context.Context {
	if c.Parent == "" {
		return ctx
	}
	h := http.Header{}
	c.SetHeader(h)
	return w3c.Extract(ctx, propagation.HeaderCarrier(h))
}

// provider is Caddy's tracer provider, learned from a traced request.
var provider atomic.Pointer[trace.TracerProvider]

// Learn remembers the tracer provider of the span ctx carries, when Caddy's
// tracing handler made it (a recording span).
func Learn(ctx context.Context) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	tp := span.TracerProvider()
	if cur := provider.Load(); cur == nil || *cur != tp {
		provider.Store(&tp)
	}
}

const tracerName = "github.com/bookingwebhook/caddy-receive-booking"

func tracer() trace.Tracer {
	if tp := provider.Load(); tp != nil {
		return (*tp).Tracer(tracerName)
	}
	return noop.NewTracerProvider().Tracer(tracerName)
}

// Span is one of the module's spans, or a no-op one when Caddy traces
// nothing.
type Span struct {
	trace.Span
	// Context is what the next hop continues: this span's context when it
	// records, else the context it was started under.
	Context Context
}

// Start begins a span named name as a child of the span ctx carries (a
// request's), or else of parent (a queued job's stored context).
func Start(ctx context.Context, parent Context, name string, opts ...trace.SpanStartOption) (context.Context, *Span) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		ctx = parent.remote(ctx)
	}
	ctx, s := tracer().Start(ctx, name, opts...)
	out := &Span{Span: s, Context: parent}
	if sc := s.SpanContext(); sc.IsValid() && s.IsRecording() {
		out.Context = fromSpanContext(sc)
	}
	return ctx, out
}

// At is a span start option for a span that began at t.
func At(t time.Time) trace.SpanStartOption { return trace.WithTimestamp(t) }
