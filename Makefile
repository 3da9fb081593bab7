# The two commands of the README: `make run` and `make test`.
XCADDY_VERSION := v0.4.5
CADDY_VERSION  := v2.11.9
MODULE         := github.com/bookingwebhook/caddy-receive-booking
XCADDY         := $(shell go env GOPATH)/bin/xcaddy
FUZZTIME       ?= 10m

.PHONY: run test build bench fuzz

# Build Caddy with this module and run Caddyfile.example (no Supabase and
# no database server needed: a local stand-in and an embedded queue).
run: build
	./caddy run --config Caddyfile.example --adapter caddyfile

# The whole test suite, with a throwaway PostgreSQL.
test:
	scripts/test.sh

$(XCADDY):
	go install github.com/caddyserver/xcaddy/cmd/xcaddy@$(XCADDY_VERSION)

# The module is unpublished, so the local checkout is given a version.
build: $(XCADDY)
	$(XCADDY) build $(CADDY_VERSION) --output ./caddy \
		--with $(MODULE)@v0.0.0-00010101000000-000000000000=.

bench:
	go run ./bench

fuzz:
	@for t in $$(go test -list '^Fuzz' . | grep '^Fuzz'); do \
		echo "== $$t"; go test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) . || exit 1; \
	done
