#!/usr/bin/env bash
# The whole test suite: starts a throwaway PostgreSQL (scripts/pg.sh) unless
# RB_TEST_POSTGRES_DSN is already set, runs every test with the race
# detector, stops PostgreSQL on the way out (also on Ctrl-C or SIGTERM) and
# exits with go test's status. Never -short: caddytest skips its real-Caddy
# tests under it.
#
# Extra arguments go to go test, e.g. scripts/test.sh -run TestE2E -v
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)

# The dashboard's browser test drives Debian's headless Chromium: install it
# as scripts/pg.sh installs PostgreSQL (the package index updated first, as
# root or through sudo), unless RB_CHROMIUM names one.
if [ -z "${RB_CHROMIUM:-}" ] && ! command -v chromium >/dev/null; then
	echo "test.sh: chromium not found: installing Debian's chromium for the dashboard's browser test" >&2
	sudo=""
	if [ "$(id -u)" != 0 ]; then
		if ! command -v sudo >/dev/null || ! sudo -n true 2>/dev/null; then
			echo "test.sh: chromium is not installed and we are neither root nor allowed sudo:" \
				"run apt-get install chromium as root, or set RB_CHROMIUM to a Chromium binary" >&2
			exit 1
		fi
		sudo="sudo -n"
	fi
	$sudo apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >&2
	command -v chromium >/dev/null || { echo "test.sh: chromium installed, but still not on PATH" >&2; exit 1; }
fi

trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
if [ -z "${RB_TEST_POSTGRES_DSN:-}" ]; then
	# A state file of this run's own, so that concurrent runs never stop
	# each other's server; the owner pid lets a later run remove this
	# server if this one is killed with SIGKILL.
	export RB_PG_STATE="${TMPDIR:-/tmp}/rb-pg.$$.state" RB_PG_OWNER=$$
	trap 'bash "$here/scripts/pg.sh" stop' EXIT
	line=$(bash scripts/pg.sh start)
	eval "$line"
	export RB_TEST_POSTGRES_DSN
fi

# go test runs in a session of its own, in the background, so that a
# signal to this script is handled at once: SIGTERM goes to go test and its
# test binaries (the whole session: a background job ignores SIGINT), and
# the EXIT trap then stops PostgreSQL once they have ended.
setsid=()
command -v setsid >/dev/null && setsid=(setsid)
"${setsid[@]}" go test -race -count=1 -timeout 15m "$@" ./... &
pid=$!
signalled=""
forward() {
	signalled=$1
	kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
}
trap 'forward 130' INT
trap 'forward 143' TERM
trap 'forward 129' HUP

status=0
while :; do
	wait "$pid" && status=0 || status=$?
	kill -0 "$pid" 2>/dev/null || break # else wait was cut short by a signal
done
if [ -n "$signalled" ] && [ "$status" = 0 ]; then status=$signalled; fi
exit "$status"
