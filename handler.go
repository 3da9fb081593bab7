package receivebooking

// ServeHTTP: the request path. A webhook is authenticated, read, validated
// and then synced while the sender waits (no queue), recorded and answered
// 202 (async), or recorded and waited for (auto); one JSON answer and one
// log line each.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
	"github.com/bookingwebhook/caddy-receive-booking/internal/tracing"
	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

const (
	modeSync  = "sync"
	modeAsync = "async"
	modeAuto  = "auto"

	corsOff          = "off"
	corsAllowHeaders = "authorization, x-client-info, apikey, content-type, x-api-key"
	corsAllowMethods = "POST, OPTIONS"

	// queueRetryAfter is what a sender is told to wait when the queue
	// cannot record its webhook.
	queueRetryAfter = "5"
	// forgetTimeout bounds forgetting a webhook-id that was not accepted.
	forgetTimeout = 5 * time.Second
)

// Outcomes, as logged and counted.
const (
	outcomeSynced    = "synced"
	outcomeQueued    = "queued"
	outcomeCoalesced = "coalesced"
	outcomeRejected  = "rejected"
	outcomeFailed    = "failed"
)

// answer is one response of the contract, and what the log line says of it.
type answer struct {
	status     int
	body       response
	outcome    string
	reason     string
	retryAfter string
	// silent answers are logged and counted but not written: the client
	// is gone.
	silent bool
	wh     *payload.Webhook
	res    *upstream.Result
}

// response is the JSON body of every answer; fields are omitted when unset.
type response struct {
	Error      string          `json:"error,omitempty"`
	Success    bool            `json:"success,omitempty"`
	Accepted   bool            `json:"accepted,omitempty"`
	Queued     bool            `json:"queued,omitempty"`
	Coalesced  *bool           `json:"coalesced,omitempty"`
	JobID      int64           `json:"job_id,omitempty"`
	BookingID  json.RawMessage `json:"booking_id,omitempty"`
	EventType  string          `json:"event_type,omitempty"`
	Outcome    string          `json:"outcome,omitempty"`
	SyncResult json.RawMessage `json:"sync_result,omitempty"`
	SyncError  string          `json:"sync_error,omitempty"`
	// Paused: an operator's pause covers the booking; it syncs on resume.
	Paused         bool `json:"paused,omitempty"`
	UpstreamStatus int  `json:"upstream_status,omitempty"`
	Details        any  `json:"details,omitempty"`
}

func reject(status int, msg, reason string) *answer {
	return &answer{status: status, body: response{Error: msg}, outcome: outcomeRejected, reason: reason}
}

// ServeHTTP answers a webhook. The handler is terminal: it never calls next.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	start := time.Now()
	// With Caddy's tracing handler in front, the module's spans join its.
	tracing.Learn(r.Context())
	if h.corsOrigin != corsOff {
		setCORS(w.Header(), h.corsOrigin)
	}
	a := h.handle(w, r)
	if a == nil {
		return nil // preflight answered, or the client went away
	}
	if !a.silent {
		h.write(w, a)
	}
	h.log(r, a, time.Since(start))
	h.metrics.observeAnswer(a)
	if a.outcome == outcomeSynced && a.body.JobID == 0 {
		// One sample per sync: a call this sender led (others that shared
		// it arrived later). A queued sync, awaited in auto mode or not,
		// is the worker's sample.
		h.metrics.observeSyncLag(start)
	}
	return nil
}

func setCORS(hdr http.Header, origin string) {
	hdr.Set("Access-Control-Allow-Origin", origin)
	hdr.Set("Access-Control-Allow-Headers", corsAllowHeaders)
	hdr.Set("Access-Control-Allow-Methods", corsAllowMethods)
}

func (h *Handler) handle(w http.ResponseWriter, r *http.Request) *answer {
	switch {
	case r.Method == http.MethodOptions && h.corsOrigin != corsOff:
		w.WriteHeader(http.StatusNoContent)
		return nil
	case r.Method != http.MethodPost:
		w.Header().Set("Allow", corsAllowMethods)
		return reject(http.StatusMethodNotAllowed, "Method not allowed", "method")
	}
	// bind is the organization the sender's credentials belong to; via
	// names them (never their values) for the booking's timeline.
	var bind orgBinding
	var via []string
	if h.authKey {
		ok, b, name := h.secrets.authenticate(r.Header)
		if !ok {
			return reject(http.StatusUnauthorized, "Unauthorized", "unauthorized")
		}
		bind, via = b, append(via, name)
	}
	stripCredentials(r.Header)
	// Any Content-Type: the Edge Function parsed every body as JSON, and
	// senders that worked with it must keep working (the body must still
	// be one JSON object).
	buf, rej := h.readBody(w, r)
	if rej != nil {
		return rej
	}
	var webhookID string
	if h.authSig {
		reason, id, b, name := h.checkSignature(r.Context(), r, buf.Bytes())
		if reason != "" {
			putBuffer(buf)
			return reject(http.StatusUnauthorized, "Unauthorized", reason)
		}
		webhookID, bind, via = id, bind.join(b), append(via, name)
	}
	var wh *payload.Webhook
	var err error = payload.ErrForbidden
	if !bind.conflict {
		// Credentials of two organizations (a key and a signing secret)
		// act for neither.
		wh, err = payload.Parse(buf.Bytes(), bind.org)
	}
	putBuffer(buf)
	var a *answer
	if err != nil {
		var ie *payload.InputError
		errors.As(err, &ie)
		a = reject(ie.Status, ie.Msg, ie.Reason)
	} else {
		a = h.dispatch(r, wh, strings.Join(via, " + "))
	}
	if webhookID != "" && (a == nil || a.status >= 300 || a.status == 0) {
		// Not accepted (status 0: the sender left before its sync, which
		// was cancelled): its retry carries the same id and must not be
		// taken for a replay.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), forgetTimeout)
		h.replay.forget(ctx, webhookID)
		cancel()
	}
	return a
}

var bufferPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func putBuffer(b *bytes.Buffer) {
	if b.Cap() <= 64<<10 {
		b.Reset()
		bufferPool.Put(b)
	}
}

// readBody reads the whole body or answers why it cannot: too large
// (declared or sent), or too slow. A body is never truncated and parsed.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request) (*bytes.Buffer, *answer) {
	if r.ContentLength > h.maxBody {
		return nil, reject(http.StatusRequestEntityTooLarge, "Request body too large", "too_large")
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(h.bodyTimeout))
	defer func() { _ = rc.SetReadDeadline(time.Time{}) }()
	buf := bufferPool.Get().(*bytes.Buffer)
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, h.maxBody))
	if err == nil {
		return buf, nil
	}
	putBuffer(buf)
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return nil, reject(http.StatusRequestEntityTooLarge, "Request body too large", "too_large")
	case errors.Is(err, os.ErrDeadlineExceeded):
		return nil, reject(http.StatusRequestTimeout, "Request body timeout", "body_timeout")
	default:
		return nil, reject(http.StatusBadRequest, "Invalid JSON body", "invalid_json")
	}
}

// dispatch syncs or queues a valid webhook, by mode: without a queue it
// syncs while the sender waits (sync); with one, every sync goes through
// the queue's engine, which runs at most one per booking: the webhook is
// recorded first, then the sender is answered at once (async) or waits for
// the sync's first attempt (auto). via names the credentials that
// authenticated it, for the booking's timeline.
func (h *Handler) dispatch(r *http.Request, wh *payload.Webhook, via string) *answer {
	switch {
	case h.queue == nil:
		return h.syncNow(r, wh)
	case h.mode == modeAsync:
		a, _ := h.enqueue(r.Context(), wh, via, tracing.FromHeader(r.Header), nil)
		return a
	default:
		return h.recordThenWait(r, wh, via)
	}
}

// syncNow calls import-bookings while the sender waits, sharing the call
// with other senders of the booking in this instance (the coalescer).
func (h *Handler) syncNow(r *http.Request, wh *payload.Webhook) *answer {
	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	defer cancel()
	sr := syncRequestOf(wh)
	sr.Trace = tracing.FromHeader(r.Header)
	res, shared, err := h.coalescer.do(ctx, wh.Key(), sr, requestID(r), h.timeout, h.upstream.Sync)
	if err != nil && r.Context().Err() != nil {
		// The sender hung up: nothing to answer, the sync was cancelled
		// (unless other requests wait for it), and the sender retries.
		return &answer{outcome: outcomeFailed, reason: "client_gone", wh: wh, silent: true}
	}
	if err != nil {
		res = &upstream.Result{TimedOut: true, Err: errors.New("timed out")}
	}
	return h.syncAnswer(wh, res, shared)
}

// stillRunning is the sync_error of a sender that stopped waiting.
const stillRunning = "the sync did not finish within the timeout; it goes on in the queue"

// syncPaused is the sync_error of a webhook an operator's pause covers.
const syncPaused = "syncing is paused by an operator; the webhook is recorded and syncs once syncing is resumed"

// recordThenWait records the webhook, then waits up to timeout for the
// first attempt of its sync that starts after the record. A recorded
// webhook is always answered 2xx (a 5xx asks the sender to send it again,
// which cannot help): 200 when it synced; 200 without "success" and with
// the outcome when the sync ended for good (a resend would end the same way);
// 202 with sync_error when it failed and will be retried, or is still
// running at the timeout (it is never cancelled for that: it runs to its
// end, or to worker_timeout). The answer joins the booking's timeline.
func (h *Handler) recordThenWait(r *http.Request, wh *payload.Webhook, via string) *answer {
	deadline := time.Now().Add(h.timeout)
	if e := h.queue.get(); e != nil && e.Paused(h.route, wh.OrganizationID) {
		// No sync will start: recorded, answered 202 at once.
		a, _ := h.enqueue(r.Context(), wh, via, tracing.FromHeader(r.Header), nil)
		return a
	}
	wait := make(chan *queue.Outcome, 1)
	a, req := h.enqueue(r.Context(), wh, via, tracing.FromHeader(r.Header), wait)
	if req == nil {
		return a
	}
	e := h.queue.get()
	defer e.StopWaiting(req.JobID, wait)
	a = h.await(r, wh, req, a, wait, deadline)
	e.Answered(req, queue.Answer{Status: a.answeredStatus(), Answer: a.outcome, Reason: a.reason,
		Outcome: a.body.Outcome, Error: a.body.SyncError})
	return a
}

// answeredStatus is the status the sender got: none if it had left.
func (a *answer) answeredStatus() int {
	if a.silent {
		return 0
	}
	return a.status
}

// await waits for the outcome of req's next attempt until deadline, and
// answers with it; a, the 202 of the record, if it does not come.
func (h *Handler) await(r *http.Request, wh *payload.Webhook, req *queue.Entry, a *answer, wait chan *queue.Outcome, deadline time.Time) *answer {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case out := <-wait:
		switch {
		case out.Err == "":
			sa := h.syncAnswer(wh, out.Result, req.Coalesced)
			sa.body.JobID = req.JobID
			return sa
		case out.Final:
			return h.finalAnswer(wh, req, out)
		}
		a.body.SyncError = out.Err
	case <-timer.C:
		a.body.SyncError = stillRunning
	case <-r.Context().Done():
		// The webhook is recorded and its sync goes on.
		a.silent, a.reason = true, "client_gone"
	}
	return a
}

// finalAnswer answers a recorded webhook whose sync ended for good without
// syncing (not_found, a cancellation import-bookings will not apply, a
// revision guard, a contract violation, the last attempt): 200, so that the
// sender does not resend what would end the same way, without "success"
// (the JSON has no "success": true), with the outcome that decided it and
// why. The job keeps the failure for the operator.
func (h *Handler) finalAnswer(wh *payload.Webhook, req *queue.Entry, out *queue.Outcome) *answer {
	res := out.Result
	a := &answer{status: http.StatusOK, wh: wh, res: res, outcome: outcomeFailed, reason: "final"}
	a.body = response{
		Accepted: true, Coalesced: &req.Coalesced, JobID: req.JobID, BookingID: wh.BookingID,
		EventType: wh.EventTypeOrUnknown(), SyncError: out.Err,
		UpstreamStatus: res.Status, SyncResult: scrubJSON(h.scrubText, res.Body),
	}
	if !res.OutcomeMisleads {
		// A violation's outcome ("applied" with "completed": false) did
		// not decide anything: naming it would read as a success.
		a.body.Outcome = res.Outcome
	}
	return a
}

// syncRequestOf is the import-bookings call for a webhook.
func syncRequestOf(w *payload.Webhook) upstream.Request {
	return upstream.Request{BookingID: w.BookingID, OrganizationID: w.OrganizationIDJSON, EventType: w.EventType}
}

// syncAnswer answers a sender with a sync's result. What the upstream
// said passes the handler's scrubber: an upstream that echoes a key must
// not hand it to the sender.
func (h *Handler) syncAnswer(wh *payload.Webhook, res *upstream.Result, shared bool) *answer {
	a := &answer{wh: wh, res: res}
	switch {
	case res.OK():
		a.status, a.outcome = http.StatusOK, outcomeSynced
		if shared {
			a.outcome = outcomeCoalesced
		}
		a.body = response{Success: true, BookingID: wh.BookingID, EventType: wh.EventTypeOrUnknown(), SyncResult: scrubJSON(h.scrubText, res.Body)}
	case res.TimedOut:
		a.status, a.outcome, a.reason = http.StatusGatewayTimeout, outcomeFailed, "timeout"
		a.body = response{Error: "Sync timed out"}
	default:
		a.status, a.outcome, a.reason = http.StatusBadGateway, outcomeFailed, "upstream"
		a.body = response{Error: "Sync failed", UpstreamStatus: res.Status, Details: scrubDetails(h.scrubText, res.Details())}
	}
	return a
}

// enqueue records the webhook durably and answers 202, or 503 when it
// cannot be recorded: then the sender keeps it and retries. wait, if set,
// is registered for the outcome of the job's next attempt. The returned
// request is nil when nothing was recorded. A new job continues the
// webhook's trace (tc, or the record's span when Caddy traces). via names
// the credentials that authenticated it.
func (h *Handler) enqueue(ctx context.Context, wh *payload.Webhook, via string, tc tracing.Context, wait chan *queue.Outcome) (*answer, *queue.Entry) {
	ctx, span := tracing.Start(ctx, tc, "receive_booking.record", trace.WithAttributes(
		attribute.String("booking_id", wh.BookingKey), attribute.String("organization_id", wh.OrganizationID)))
	defer span.End()
	// The record must not be abandoned half-way because the sender hung
	// up: it is either committed or not, and the answer follows from that.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.timeout)
	defer cancel()
	now := time.Now()
	req := &queue.Entry{Webhook: wh, Route: h.route, AcceptedAt: now, NotBefore: now.Add(h.coalesceWindow), Wait: wait,
		Urgency: h.urgencyOf(wh.EventType), Trace: span.Context, Credential: via}
	if wait == nil {
		req.AnswerOnRecord = http.StatusAccepted // the answer below, once recorded
	}
	e, err := h.queue.wait(ctx)
	if err == nil {
		err = e.Record(ctx, req)
	}
	if err != nil {
		span.SetStatus(codes.Error, "queue unavailable")
		h.logger.Error("recording webhook", zap.String("booking_id", wh.BookingKey), zap.Error(err))
		a := reject(http.StatusServiceUnavailable, "Queue unavailable", "queue_unavailable")
		a.wh, a.retryAfter, a.outcome = wh, queueRetryAfter, outcomeFailed
		return a, nil
	}
	span.SetAttributes(attribute.Int64("job_id", req.JobID), attribute.Bool("coalesced", req.Coalesced))
	a := &answer{status: http.StatusAccepted, wh: wh, outcome: outcomeQueued}
	if req.Coalesced {
		a.outcome = outcomeCoalesced
	}
	a.body = response{
		Success: true, Accepted: true, Queued: true, Coalesced: &req.Coalesced, JobID: req.JobID,
		BookingID: wh.BookingID, EventType: wh.EventTypeOrUnknown(),
	}
	if e.Paused(h.route, wh.OrganizationID) {
		a.body.Paused, a.body.SyncError = true, syncPaused
	}
	return a, req
}

// scrubJSON scrubs a JSON text; it stays JSON (the replacement needs no
// escaping), or becomes a JSON string if a cut made it invalid.
func scrubJSON(s func(string) string, raw json.RawMessage) json.RawMessage {
	if raw == nil {
		return nil
	}
	out := s(string(raw))
	if out == string(raw) {
		return raw
	}
	if json.Valid([]byte(out)) {
		return json.RawMessage(out)
	}
	b, _ := json.Marshal(out)
	return b
}

func scrubDetails(s func(string) string, d any) any {
	switch v := d.(type) {
	case json.RawMessage:
		return scrubJSON(s, v)
	case string:
		return s(v)
	}
	return d
}

// scrubText removes every secret of this handler, and of every handler
// sharing its queue (after a reload rotated a key, a sync that started
// under the old config may echo it), from text for the sender.
func (h *Handler) scrubText(s string) string {
	s = h.scrub.String(s)
	if h.queue != nil {
		if e := h.queue.get(); e != nil {
			s = e.Scrub(s)
		}
	}
	return s
}

func (h *Handler) write(w http.ResponseWriter, a *answer) {
	body, err := payload.MarshalJSON(a.body)
	if err != nil {
		body = []byte(`{"error":"Internal error"}`)
		a.status = http.StatusInternalServerError
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	if a.retryAfter != "" {
		hdr.Set("Retry-After", a.retryAfter)
	}
	w.WriteHeader(a.status)
	_, _ = w.Write(body)
}

// requestID is Caddy's ID of the request ({http.request.uuid}), sent
// upstream and logged so that one sync can be followed from log to log.
func requestID(r *http.Request) string {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return ""
	}
	id, _ := repl.GetString("http.request.uuid")
	return id
}

// log writes the one line per webhook. It never logs a credential header,
// and the fields it logs were validated (no control characters) first.
func (h *Handler) log(r *http.Request, a *answer, d time.Duration) {
	level := zapcore.InfoLevel
	switch a.outcome {
	case outcomeRejected:
		level = zapcore.WarnLevel
	case outcomeFailed:
		level = zapcore.ErrorLevel
	}
	ce := h.logger.Check(level, "webhook")
	if ce == nil {
		return
	}
	fields := []zap.Field{
		zap.String("outcome", a.outcome),
		zap.Int("status", a.status),
		zap.Duration("duration", d),
		zap.String("remote_addr", r.RemoteAddr),
		zap.String("request_id", requestID(r)),
	}
	if a.reason != "" {
		fields = append(fields, zap.String("reason", a.reason))
	}
	if a.wh != nil {
		fields = append(fields,
			zap.String("booking_id", a.wh.BookingKey),
			zap.String("organization_id", a.wh.OrganizationID),
			zap.String("event_type", a.wh.EventTypeOrUnknown()))
		if a.wh.EventType != "" && !payload.KnownEventType(a.wh.EventType) {
			fields = append(fields, zap.Bool("unknown_event_type", true))
		}
	}
	if a.res != nil {
		fields = append(fields, zap.Int("upstream_status", a.res.Status), zap.Duration("upstream_duration", a.res.Duration))
		if !a.res.OK() {
			fields = append(fields, zap.String("error", a.res.Describe()))
		}
	}
	if a.body.JobID != 0 {
		fields = append(fields, zap.Int64("job_id", a.body.JobID))
	}
	ce.Write(fields...)
}
