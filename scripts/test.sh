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

# Debian packages the tests drive, installed as scripts/pg.sh installs
# PostgreSQL (the package index updated first, as root or through sudo):
# headless Chromium for the dashboard's browser test (unless RB_CHROMIUM
# names one), and Prometheus with promtool for the shipped alert rules.
need=()
if [ -z "${RB_CHROMIUM:-}" ] && ! command -v chromium >/dev/null; then
	need+=(chromium)
fi
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
	need+=(prometheus)
fi
if [ ${#need[@]} -gt 0 ]; then
	echo "test.sh: installing Debian's ${need[*]} for the tests" >&2
	sudo=""
	if [ "$(id -u)" != 0 ]; then
		if ! command -v sudo >/dev/null || ! sudo -n true 2>/dev/null; then
			echo "test.sh: ${need[*]} not installed and we are neither root nor allowed sudo:" \
				"run apt-get install ${need[*]} as root (or set RB_CHROMIUM to a Chromium binary)" >&2
			exit 1
		fi
		sudo="sudo -n"
	fi
	$sudo apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
	for tool in ${need[*]/prometheus/prometheus promtool}; do
		command -v "$tool" >/dev/null || { echo "test.sh: $tool installed, but still not on PATH" >&2; exit 1; }
	done
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
