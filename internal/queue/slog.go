package queue

// River's log lines (the client's, River UI's) through the engine's
// scrubber, to the module's logger.

import (
	"context"
	"log/slog"

	"github.com/bookingwebhook/caddy-receive-booking/internal/scrub"
	"go.uber.org/zap/exp/zapslog"
)

// slogger is a log/slog logger for River's code (the client, River UI):
// its lines go through the engine's scrubber to the module's logger, under
// the sub-logger name.
func (e *Engine) slogger(name string) *slog.Logger {
	return slog.New(scrubHandler{zapslog.NewHandler(e.logger.Core(), zapslog.WithName(e.logger.Name()+"."+name)), &e.scrub})
}

// scrubHandler passes River's log records through the engine's scrubber:
// an error River logs may quote an upstream answer or a connection string.
type scrubHandler struct {
	slog.Handler
	s *scrub.Scrubber
}

func (h scrubHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, h.s.String(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(h.scrubAttr(a))
		return true
	})
	return h.Handler.Handle(ctx, out)
}

func (h scrubHandler) scrubAttr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, h.s.String(v.String()))
	case slog.KindGroup:
		attrs := v.Group()
		out := make([]any, len(attrs))
		for i, g := range attrs {
			out[i] = h.scrubAttr(g)
		}
		return slog.Group(a.Key, out...)
	case slog.KindAny:
		if err, ok := v.Any().(error); ok {
			return slog.String(a.Key, h.s.String(err.Error()))
		}
		return slog.String(a.Key, h.s.String(v.String()))
	}
	return a
}

func (h scrubHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	out := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		out[i] = h.scrubAttr(a)
	}
	return scrubHandler{h.Handler.WithAttrs(out), h.s}
}

func (h scrubHandler) WithGroup(name string) slog.Handler {
	return scrubHandler{h.Handler.WithGroup(name), h.s}
}
