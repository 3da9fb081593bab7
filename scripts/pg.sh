#!/usr/bin/env bash
# Starts or stops a throwaway PostgreSQL cluster for the tests, from
# Debian's packages, listening only on 127.0.0.1.
#
#   scripts/pg.sh start   # prints: export RB_TEST_POSTGRES_DSN=...
#   scripts/pg.sh stop
set -euo pipefail

state="${TMPDIR:-/tmp}/rb-pg.state"
password="rb-test-secret-pw"

pgbin() {
	local d
	for d in /usr/lib/postgresql/*/bin; do
		[ -x "$d/initdb" ] && { echo "$d"; return; }
	done
	return 1
}

ensure_installed() {
	if ! pgbin >/dev/null; then
		echo "pg.sh: installing PostgreSQL from Debian's packages" >&2
		apt-get update -qq >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
	fi
}

# as_pg runs a command as the unprivileged postgres user when we are root:
# initdb refuses to run as root.
as_pg() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

free_port() {
	local p
	for p in $(seq 55432 55532); do
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
	echo "pg.sh: no free port in 55432-55532" >&2
	return 1
}

start() {
	ensure_installed
	local bin dir port
	bin=$(pgbin)
	dir=$(mktemp -d "${TMPDIR:-/tmp}/rb-pg.XXXXXX")
	[ "$(id -u)" = 0 ] && chown postgres "$dir"
	port=$(free_port)
	as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 ||
		{ cat "$dir/initdb.log" >&2; exit 1; }
	as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
		-o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=200" start >/dev/null
	as_pg "$bin/psql" -h "$dir" -p "$port" -U postgres -qAt -v ON_ERROR_STOP=1 \
		-c "CREATE ROLE rb LOGIN CREATEDB PASSWORD '$password'" -c "CREATE DATABASE rb OWNER rb" >/dev/null
	printf 'dir=%s\nport=%s\nbin=%s\n' "$dir" "$port" "$bin" >"$state"
	echo "export RB_TEST_POSTGRES_DSN=postgres://rb:$password@127.0.0.1:$port/rb?sslmode=disable"
}

stop() {
	[ -f "$state" ] || return 0
	# shellcheck disable=SC1090
	. "$state"
	as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$dir" "$state"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
