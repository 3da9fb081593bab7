# The two commands of the README: `make run` and `make test`.
#
#   make test                  every test, -race, with a throwaway PostgreSQL
#   make test TESTFLAGS='-run TestX -v'
#   make run                   build Caddy with this module and run Caddyfile.example
#   make build                 only build ./caddy (xcaddy)
#   make bench                 the benchmark driver (./bench), writes BENCHMARKS.md
#   make fuzz [FUZZTIME=10m]   each Fuzz target for FUZZTIME, one after another
#   make lint                  go vet and staticcheck

# The one place the Caddy and xcaddy versions are pinned: the tests and the
# bench build Caddy at them (internal/testkit reads these two lines), and
# scripts/recipes.sh holds the Dockerfile to them. Keep the form NAME := v.
XCADDY_VERSION := v0.4.5
CADDY_VERSION  := v2.11.9
MODULE         := github.com/bookingwebhook/caddy-receive-booking
FUZZTIME       ?= 10m
TESTFLAGS      ?=

# xcaddy from PATH, else where `go install` puts it (GOBIN, or the first
# GOPATH entry's bin), installed on first use.
GOBIN_DIR := $(or $(shell go env GOBIN),$(firstword $(subst :, ,$(shell go env GOPATH)))/bin)
XCADDY    := $(or $(shell command -v xcaddy 2>/dev/null),$(GOBIN_DIR)/xcaddy)

STATICCHECK_VERSION := v0.8.2

.PHONY: run test build bench fuzz lint

# Build Caddy with this module and run Caddyfile.example (no Supabase and
# no database server needed: a local stand-in and an embedded queue).
run: build
	./caddy run --config Caddyfile.example --adapter caddyfile

# The whole test suite, with a throwaway PostgreSQL.
test:
	bash scripts/test.sh $(TESTFLAGS)

$(XCADDY):
	go install github.com/caddyserver/xcaddy/cmd/xcaddy@$(XCADDY_VERSION)

# The module is unpublished, so the local checkout is given a version that
# cannot clash with a real one and is replaced by this directory.
build: | $(XCADDY)
	$(XCADDY) build $(CADDY_VERSION) --output ./caddy \
		--with $(MODULE)@v0.0.0-00010101000000-000000000000=.

bench:
	go run ./bench -out BENCHMARKS.md $(BENCHFLAGS)

lint:
	go vet ./...
	go run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# Fuzz targets are listed by go test, package by package (a package that
# does not compile fails here, rather than fuzzing nothing).
fuzz:
	@set -e; found=0; \
	for pkg in $$(go list ./...); do \
		list=$$(go test -list '^Fuzz' $$pkg); \
		for t in $$(printf '%s\n' "$$list" | grep '^Fuzz' || true); do \
			found=1; echo "== $$pkg $$t for $(FUZZTIME)"; \
			go test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done; \
	if [ $$found = 0 ]; then echo "no Fuzz targets found" >&2; exit 1; fi
