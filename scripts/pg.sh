#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests, from Debian's packages.
#
#   scripts/pg.sh start   # starts one; prints: export RB_TEST_POSTGRES_DSN='...'
#   scripts/pg.sh env     # prints the same line for the running cluster
#   scripts/pg.sh stop    # stops it and removes its directory
#
# Typical use: eval "$(scripts/pg.sh start)"; ...; scripts/pg.sh stop
#
# The cluster lives in a temporary directory (${TMPDIR:-/tmp}/rb-pg.XXXXXX),
# listens only on 127.0.0.1 at a free port from 55432 up, keeps its unix
# socket inside that directory, trusts local (socket) connections and asks
# for a password over TCP. Role and database `rb` (password
# rb-test-secret-pw) are created, so the tests use a DSN with a password.
#
# It installs Debian's `postgresql` package when initdb/pg_ctl are missing
# (root needed), and runs the server as the `postgres` user when called as
# root (initdb refuses root).
#
# Environment:
#   RB_PG_STATE  where the cluster's dir and port are kept
#                (default ${TMPDIR:-/tmp}/rb-pg.state); scripts/test.sh
#                gives each run its own, so concurrent runs don't collide.
#   RB_PG_OWNER  pid of the process the cluster belongs to (scripts/test.sh
#                sets it). A later `start` removes clusters whose owner has
#                died without stopping them (e.g. killed with SIGKILL).
#   RB_PG_DURABLE=1  keep PostgreSQL's durable defaults (fsync,
#                synchronous_commit, full_page_writes on): for measuring
#                durable acknowledgements (make bench); the tests turn
#                them off for speed.
set -euo pipefail

tmp="${TMPDIR:-/tmp}"
tmp="${tmp%/}"
state="${RB_PG_STATE:-$tmp/rb-pg.state}"
password="rb-test-secret-pw"
first_port=55432
last_port=55632

log() { echo "pg.sh: $*" >&2; }
die() { log "$*"; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }

# pgbin prints the directory holding initdb, pg_ctl and psql: the newest
# /usr/lib/postgresql/*/bin, else the one of initdb on PATH.
pgbin() {
	local d
	d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
	if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
		echo "$d"
		return 0
	fi
	if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
		dirname "$(readlink -f "$(command -v initdb)")"
		return 0
	fi
	return 1
}

ensure_installed() {
	pgbin >/dev/null && return 0
	log "initdb/pg_ctl not found: installing Debian's postgresql package"
	local sudo=""
	if ! is_root; then
		command -v sudo >/dev/null || die "PostgreSQL is not installed and we are not root: apt-get install postgresql"
		sudo="sudo -n"
	fi
	$sudo apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
	pgbin >/dev/null || die "postgresql installed, but initdb/pg_ctl still not found"
}

# pguser is the account that runs the server: ourselves, or when root the
# `postgres` user (Debian's package creates it; else we create one).
pguser() {
	if ! is_root; then
		id -un
		return
	fi
	if ! id postgres >/dev/null 2>&1; then
		log "creating system user postgres"
		useradd --system --user-group --no-create-home --home-dir /nonexistent \
			--shell /usr/sbin/nologin postgres >&2 ||
			id postgres >/dev/null 2>&1 || die "cannot create user postgres"
	fi
	echo postgres
}

# as_pg runs a command as the server's user, from / (the caller's working
# directory may not be readable by it).
as_pg() {
	if ! is_root; then
		(cd / && "$@")
	elif command -v runuser >/dev/null; then
		(cd / && runuser -u postgres -- "$@")
	else
		(cd / && su -s /bin/sh postgres -c "$(printf '%q ' "$@")")
	fi
}

port_free() {
	! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# alive tells whether process $1 exists.
alive() {
	case "$1" in '' | *[!0-9]*) return 1 ;; esac
	kill -0 "$1" 2>/dev/null || [ -d "/proc/$1" ]
}

# read_state sets dir, port and bin from the state file (key=value lines).
read_state() {
	dir="" port="" bin=""
	[ -f "$state" ] || return 1
	local k v
	while IFS='=' read -r k v; do
		case "$k" in
		dir) dir=$v ;;
		port) port=$v ;;
		bin) bin=$v ;;
		esac
	done <"$state"
	[ -n "$dir" ] && [ -n "$port" ] && [ -n "$bin" ]
}

# running tells whether the cluster in dir $1 (binaries in $2, port $3)
# is up and accepts connections.
running() {
	[ -d "$1/data" ] && as_pg "$2/pg_ctl" -D "$1/data" status >/dev/null 2>&1 || return 1
	[ -x "$2/pg_isready" ] || return 0
	as_pg "$2/pg_isready" -q -h "$1" -p "$3" -t 5
}

dsn() { echo "postgres://rb:$password@127.0.0.1:$1/rb?sslmode=disable"; }

# stop_dir stops the cluster in dir $1 (binaries in $2) and removes the dir.
stop_dir() {
	local d=$1 b=$2 pid
	case "$(basename "$d")" in
	rb-pg.??????) ;;
	*)
		log "not removing $d: not a cluster directory of ours"
		return 1
		;;
	esac
	[ -d "$d" ] || return 0
	if [ -f "$d/data/postmaster.pid" ]; then
		as_pg "$b/pg_ctl" -D "$d/data" -m fast -t 30 -w stop >/dev/null 2>&1 ||
			as_pg "$b/pg_ctl" -D "$d/data" -m immediate -t 30 -w stop >/dev/null 2>&1 || true
		# Last resort: our postmaster is still there (checked by its
		# command line, in case the pid has been reused).
		pid=$(head -n 1 "$d/data/postmaster.pid" 2>/dev/null || true)
		if alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$d/data"; then
			kill -KILL "$pid" 2>/dev/null || true
			sleep 1
		fi
	fi
	rm -rf "$d"
	log "stopped and removed $d"
}

# reap removes clusters left by scripts/test.sh runs that died without
# stopping them (their owner pid is gone). Clusters without an owner file
# (started by hand) are left alone.
reap() {
	local d owner b sf
	for d in "$tmp"/rb-pg.??????/ /tmp/rb-pg.??????/; do
		d=${d%/}
		[ -d "$d" ] && [ -f "$d/owner" ] || continue
		owner=$(cat "$d/owner" 2>/dev/null || true)
		alive "$owner" && continue
		b=$(cat "$d/bin" 2>/dev/null || true)
		[ -n "$b" ] || b=$(pgbin) || continue
		sf=$(cat "$d/statefile" 2>/dev/null || true)
		log "found $d, left by dead process $owner"
		stop_dir "$d" "$b" || true
		[ -n "$sf" ] && rm -f "$sf"
	done
}

# make_dir creates the cluster directory, usable by the server's user and
# with a short enough path for a unix socket (at most 107 bytes).
make_dir() {
	local base d
	for base in "$tmp" /tmp; do
		d=$(mktemp -d "$base/rb-pg.XXXXXX") || continue
		if is_root; then chown "$(pguser)" "$d"; fi
		if [ "${#d}" -le 80 ] && as_pg test -w "$d" -a -x "$d"; then
			echo "$d"
			return 0
		fi
		rm -rf "$d"
	done
	die "cannot make a cluster directory usable by $(pguser)"
}

start() {
	if read_state; then
		if running "$dir" "$bin" "$port"; then
			log "already running in $dir on port $port"
			echo "export RB_TEST_POSTGRES_DSN='$(dsn "$port")'"
			return 0
		fi
		log "stale state $state (cluster not running): cleaning up"
		stop_dir "$dir" "$bin" || true
		rm -f "$state"
	fi
	ensure_installed
	reap
	bin=$(pgbin)
	dir=$(make_dir)
	# Until the state file is written, a failure removes the directory.
	trap 'stop_dir "$dir" "$bin" >/dev/null 2>&1 || true' EXIT
	[ -n "${RB_PG_OWNER:-}" ] && echo "$RB_PG_OWNER" >"$dir/owner"
	echo "$bin" >"$dir/bin"
	echo "$state" >"$dir/statefile"

	as_pg "$bin/initdb" -D "$dir/data" -U postgres --no-locale -E UTF8 \
		-A trust --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 ||
		{ cat "$dir/initdb.log" >&2; die "initdb failed"; }
	# Only local sockets (trust) and 127.0.0.1 with a password.
	as_pg sh -c "cat >'$dir/data/pg_hba.conf'" <<-HBA
		local all all trust
		host  all all 127.0.0.1/32 scram-sha-256
	HBA
	as_pg sh -c "cat >>'$dir/data/postgresql.conf'" <<-CONF
		# scripts/pg.sh: a throwaway test server.
		listen_addresses = '127.0.0.1'
		unix_socket_directories = '$dir'
		password_encryption = 'scram-sha-256'
		max_connections = 200
	CONF
	if [ "${RB_PG_DURABLE:-}" != 1 ]; then
		as_pg sh -c "cat >>'$dir/data/postgresql.conf'" <<-CONF
			fsync = off
			synchronous_commit = off
			full_page_writes = off
		CONF
	fi

	# Free ports are taken from 55432 up; a start that loses a race for
	# one (another server binds it first) tries the next.
	local p tries=0
	port=""
	for p in $(seq "$first_port" "$last_port"); do
		port_free "$p" || continue
		if as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "-p $p" -w -t 60 start >/dev/null 2>&1; then
			port=$p
			break
		fi
		tries=$((tries + 1))
		if [ "$tries" -ge 10 ]; then
			tail -n 20 "$dir/server.log" >&2 || true
			die "PostgreSQL did not start"
		fi
		log "PostgreSQL did not start on port $p, trying another"
	done
	[ -n "$port" ] || die "no free port in $first_port-$last_port"

	local psql="$bin/psql"
	[ -x "$psql" ] || psql=$(command -v psql) || die "psql not found"
	as_pg "$psql" -h "$dir" -p "$port" -U postgres -d postgres -qAtX -v ON_ERROR_STOP=1 \
		-c "CREATE ROLE rb LOGIN CREATEDB PASSWORD '$password'" \
		-c "CREATE DATABASE rb OWNER rb" >/dev/null ||
		die "creating role and database rb failed"

	printf 'dir=%s\nport=%s\nbin=%s\n' "$dir" "$port" "$bin" >"$state.tmp"
	mv "$state.tmp" "$state"
	trap - EXIT
	log "PostgreSQL $("$bin/pg_ctl" --version | awk '{print $3}') in $dir on 127.0.0.1:$port"
	echo "export RB_TEST_POSTGRES_DSN='$(dsn "$port")'"
}

env_cmd() {
	read_state || die "no cluster (no $state): run $0 start"
	running "$dir" "$bin" "$port" || die "the cluster in $dir is not running"
	echo "export RB_TEST_POSTGRES_DSN='$(dsn "$port")'"
}

stop() {
	if read_state; then
		stop_dir "$dir" "$bin" || true
	fi
	rm -f "$state"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
env) env_cmd ;;
*)
	echo "usage: $0 start|stop|env" >&2
	exit 2
	;;
esac
