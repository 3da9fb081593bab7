#!/usr/bin/env bash
# The whole test suite: starts a throwaway PostgreSQL (unless
# RB_TEST_POSTGRES_DSN is set), then runs every test with the race
# detector. Never -short: caddytest skips its real-Caddy tests under it.
# Extra arguments go to go test, e.g. scripts/test.sh -run TestE2E -v
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${RB_TEST_POSTGRES_DSN:-}" ]; then
	trap 'scripts/pg.sh stop' EXIT
	eval "$(scripts/pg.sh start)"
	export RB_TEST_POSTGRES_DSN
fi
go test -race -count=1 -timeout 20m "$@" ./...
