package receivebooking

// Standard Webhooks signatures at the handler: which of key, signature or
// both a webhook must present, and where webhook-ids are remembered (in
// memory, or in the PostgreSQL queue shared by every instance).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
	"github.com/bookingwebhook/caddy-receive-booking/internal/standardwebhooks"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

const (
	authKey       = "key"
	authSignature = "signature"
	authBoth      = "both"

	headerWebhookID        = "Webhook-Id"
	headerWebhookTimestamp = "Webhook-Timestamp"
	headerWebhookSignature = "Webhook-Signature"
)

// provisionSigning resolves the signing secrets and chooses what a webhook
// must present: the API key, a Standard Webhooks signature, or both.
func (h *Handler) provisionSigning(repl *caddy.Replacer) error {
	var keys []standardwebhooks.Key
	add := func(org, field string, vals []string) error {
		raw, err := resolveNumbered(repl, field, vals)
		if err != nil {
			return err
		}
		for _, v := range raw {
			s := v.val
			h.secretValues = append(h.secretValues, s, strings.TrimPrefix(strings.TrimSpace(s), standardwebhooks.SecretPrefix))
			k, err := standardwebhooks.ParseSecret(s)
			if err != nil {
				// err names what is wrong, never the value.
				return fmt.Errorf("%s #%d: %w", field, v.n, err)
			}
			for j, other := range keys {
				if string(other) == string(k) && h.sigOrgs[j] != org {
					return fmt.Errorf("%s #%d is also a signing secret of %s: a signing secret belongs to one organization, or is shared", field, v.n, describeOrg(h.sigOrgs[j]))
				}
			}
			keys = append(keys, k)
			h.sigOrgs = append(h.sigOrgs, org)
			h.sigNames = append(h.sigNames, credentialName(org, "signing secret", v.n))
		}
		return nil
	}
	if err := add("", "signing_secret", h.SigningSecrets); err != nil {
		return err
	}
	for _, o := range h.Organizations {
		id, _ := resolve(repl, "organization id", o.ID) // checked by provisionAuth
		if err := add(id, fmt.Sprintf("organization %q: signing_secret", id), o.SigningSecrets); err != nil {
			return err
		}
	}
	tolerance, err := resolveDuration(repl, "tolerance", h.Tolerance, standardwebhooks.DefaultTolerance)
	if err != nil {
		return err
	}
	mode, err := resolve(repl, "auth", h.Auth)
	if err != nil {
		return err
	}
	defaulted := mode == ""
	if defaulted {
		mode = defaultAuthMode(!h.secrets.empty(), len(keys) > 0)
	}
	if err := checkField("auth", mode); err != nil {
		return err
	}
	h.authKey = mode == authKey || mode == authBoth
	h.authSig = mode == authSignature || mode == authBoth
	if h.authKey && h.secrets.empty() {
		// Chosen by default, key means no signing secret is left either.
		fields := []string{"secret"}
		if defaulted {
			fields = append(fields, "signing_secret")
		}
		return h.missingKeys(repl, fields, "secret: at least one non-empty secret (shared, or an organization's) is required")
	}
	if h.authSig && len(keys) == 0 {
		return h.missingKeys(repl, []string{"signing_secret"}, "signing_secret: at least one signing secret is required")
	}
	if h.authSig {
		h.verifier = &standardwebhooks.Verifier{Keys: keys, Tolerance: tolerance}
	}
	return nil
}

// missingKeys is the error for an auth mode left without the keys it
// needs: the placeholders of fields that resolved to empty, or else the
// required message.
func (h *Handler) missingKeys(repl *caddy.Replacer, fields []string, required string) error {
	var named, unset []string
	for _, field := range fields {
		if names := unsetPlaceholders(repl, h.configuredKeys(field)...); len(names) > 0 {
			named, unset = append(named, field), append(unset, names...)
		}
	}
	if len(unset) == 0 {
		return errors.New(required)
	}
	return emptyError(unset, named...)
}

// configuredKeys are the values configured for field, secret or
// signing_secret: the shared ones, then each organization's.
func (h *Handler) configuredKeys(field string) []string {
	pick := func(secrets, signing []string) []string {
		if field == "secret" {
			return secrets
		}
		return signing
	}
	vals := slices.Clone(pick(h.Secrets, h.SigningSecrets))
	for _, o := range h.Organizations {
		vals = append(vals, pick(o.Secrets, o.SigningSecrets)...)
	}
	return vals
}

func defaultAuthMode(haveKeys, haveSigning bool) string {
	switch {
	case haveKeys && haveSigning:
		return authBoth
	case haveSigning:
		return authSignature
	default:
		return authKey
	}
}

// checkSignature verifies a webhook's Standard Webhooks signature over the
// raw body, then that its id was not delivered before. It returns the
// rejection reason, or "", the webhook id, the organization the signing
// secrets bind the webhook to and their names on success.
func (h *Handler) checkSignature(ctx context.Context, r *http.Request, body []byte) (reason, id string, bind orgBinding, via string) {
	id = r.Header.Get(headerWebhookID)
	signed, err := h.verifier.VerifyKeys(id, r.Header.Get(headerWebhookTimestamp), r.Header.Get(headerWebhookSignature), body)
	switch {
	case errors.Is(err, standardwebhooks.ErrMissingSignature):
		return "missing_signature", "", bind, ""
	case errors.Is(err, standardwebhooks.ErrStaleTimestamp):
		return "stale_timestamp", "", bind, ""
	case err != nil:
		return "bad_signature", "", bind, ""
	}
	var names []string
	for i, ok := range signed {
		if ok {
			bind = bind.and(h.sigOrgs[i])
			names = append(names, h.sigNames[i])
		}
	}
	via = strings.Join(names, " + ")
	seen, err := h.replay.seen(ctx, id, time.Now())
	if err != nil {
		// Fail closed would turn a database hiccup into lost webhooks:
		// the signature and timestamp already bound the exposure.
		h.logger.Warn("checking webhook-id for replay", zap.String("error", h.scrub.String(err.Error())))
		return "", id, bind, via
	}
	if seen {
		return "replay", "", bind, ""
	}
	return "", id, bind, via
}

// replayStore remembers the webhook-ids delivered within the tolerance
// window.
type replayStore interface {
	seen(ctx context.Context, id string, now time.Time) (bool, error)
	forget(ctx context.Context, id string)
}

// memoryReplay is the in-process store, shared by every config with the
// same tolerance so that a reload does not forget the ids seen so far.
type memoryReplay struct{ c *standardwebhooks.ReplayCache }

var memoryReplays sync.Map // tolerance -> *standardwebhooks.ReplayCache

func newMemoryReplay(tolerance time.Duration) memoryReplay {
	c, _ := memoryReplays.LoadOrStore(tolerance, standardwebhooks.NewReplayCache(tolerance, standardwebhooks.DefaultReplayEntries))
	return memoryReplay{c.(*standardwebhooks.ReplayCache)}
}

func (m memoryReplay) seen(_ context.Context, id string, now time.Time) (bool, error) {
	return m.c.Seen(id, now), nil
}

func (m memoryReplay) forget(_ context.Context, id string) { m.c.Forget(id) }

// queueReplay keeps the ids in the PostgreSQL queue's database, so that a
// replay sent to another instance is caught too.
type queueReplay struct {
	q   *engineRef
	ttl time.Duration
}

func (s queueReplay) seen(ctx context.Context, id string, now time.Time) (bool, error) {
	b, err := s.backend(ctx)
	if err != nil {
		return false, err
	}
	return b.ReplaySeen(ctx, replayKey(id), now, now.Add(s.ttl))
}

func (s queueReplay) forget(ctx context.Context, id string) {
	if b, err := s.backend(ctx); err == nil {
		_ = b.ReplayForget(ctx, replayKey(id))
	}
}

func (s queueReplay) backend(ctx context.Context) (queue.ReplayMemory, error) {
	e, err := s.q.wait(ctx)
	if err != nil {
		return nil, err
	}
	return e.Replays()
}

func replayKey(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:])
}

// provisionReplay picks where webhook-ids are remembered.
func (h *Handler) provisionReplay() {
	if !h.authSig {
		return
	}
	if h.queue != nil && h.queueDriver == queue.Postgres {
		h.replay = queueReplay{q: h.queue, ttl: 2 * h.verifier.Tolerance}
		return
	}
	h.replay = newMemoryReplay(h.verifier.Tolerance)
}
