#!/usr/bin/env bash
# The deployment recipes, checked as far as a machine without a Docker
# engine can (CI runs this from .ci/run):
#
#  1. No recipe runs caddy with --environ, which prints every secret in
#     Caddy's environment at start: the code blocks of README.md and
#     docs/, the Dockerfile, Caddyfile.example and deploy/.
#  2. Dockerfile: its builder stage's WORKDIR, COPY and RUN lines run as
#     written, in a temporary directory that stands for the image's root,
#     with the checkout copied in as COPY copies the build context (less
#     .dockerignore) and the builder image's environment; the binary they
#     build is the one the final stage copies, and it is smoke-run. Its
#     Caddy version is the Makefile's. Not checked: the images themselves
#     (CI reaches no container registry, so caddy:*-builder cannot be
#     pulled, by a Docker engine or by a daemonless tool).
#  3. deploy/systemd/receive-booking.conf, against the caddy.service of
#     Debian's caddy package: ExecStart is the package's without
#     --environ, ExecReload the package's, and `systemd-analyze verify`
#     accepts the unit with the drop-in.
#
# Outside CI, step 3 is skipped where apt-get or systemd-analyze is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
exec </dev/null

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() {
	echo "recipes.sh: $*" >&2
	exit 1
}
section() { echo "--- $*"; }

caddy_version=$(sed -n 's/^CADDY_VERSION *:= *//p' Makefile)
xcaddy_version=$(sed -n 's/^XCADDY_VERSION *:= *//p' Makefile)
[ -n "$caddy_version" ] && [ -n "$xcaddy_version" ] || fail "no CADDY_VERSION or XCADDY_VERSION in the Makefile"

# The Dockerfile's instructions, one a line: comments and blank lines
# dropped, continuation lines joined as Docker joins them.
instructions() {
	awk '
		cont == "" && /^[ \t]*(#|$)/ { next }
		{ line = cont $0 }
		/\\$/ { cont = substr(line, 1, length(line) - 1); next }
		{ print line; cont = "" }
	' Dockerfile
}

# copy_context copies the checkout to $1 as `COPY . <dest>` copies the
# build context: everything, less what .dockerignore names (patterns from
# the context's root, as Docker reads them).
copy_context() {
	local dest=$1 pattern
	mkdir -p "$dest"
	cp -a "$repo/." "$dest/"
	while IFS= read -r pattern; do
		case $pattern in '' | '#'*) continue ;; esac
		case $pattern in *'**'* | '!'*) fail ".dockerignore: $pattern: ** and ! are not applied here" ;; esac
		pattern=${pattern#/}
		# shellcheck disable=SC2086 # the pattern is a glob on purpose
		(cd "$dest" && rm -rf -- $pattern)
	done <.dockerignore
}

section "no recipe runs caddy with --environ"
# The code blocks of the Markdown files and the recipe files, line by line
# as file:line: text, less comment lines (which may say why).
recipes() {
	local f
	for f in README.md docs/*.md; do
		awk -v f="$f" '/^[ \t]*```/ { inblock = !inblock; next } inblock { print f ":" FNR ": " $0 }' "$f"
	done
	while IFS= read -r f; do
		awk -v f="$f" '{ print f ":" FNR ": " $0 }' "$f"
	done < <(find Dockerfile Caddyfile.example deploy -type f | sort)
}
if hits=$(recipes | grep -e '--environ' | grep -vE '^[^:]+:[0-9]+: [[:space:]]*[#;]'); then
	fail "a recipe runs caddy with --environ, which prints every secret in Caddy's environment:
$hits"
fi
echo "none"

section "Dockerfile: the builder stage's lines, run as written"
root=$tmp/root
mkdir -p "$root"
# xcaddy at the Makefile's version, as the builder image has it on PATH.
GOBIN=$tmp/bin go install "github.com/caddyserver/xcaddy/cmd/xcaddy@$xcaddy_version"
stage="" workdir=/ binary=""
while IFS= read -r ins; do
	keyword=${ins%%[[:space:]]*}
	args=$(echo "${ins#"$keyword"}" | sed 's/^[[:space:]]*//')
	echo "$stage> $ins"
	case ${keyword^^}:$stage in
	FROM:)
		[ "$args" = "caddy:${caddy_version#v}-builder AS builder" ] ||
			fail "the first stage is not FROM caddy:${caddy_version#v}-builder AS builder (the Makefile's Caddy)"
		stage=builder
		;;
	WORKDIR:builder)
		case $args in /*) ;; *) fail "WORKDIR $args: give an absolute path" ;; esac
		workdir=$args
		mkdir -p "$root$workdir"
		;;
	COPY:builder)
		# shellcheck disable=SC2086 # split into words on purpose
		set -- $args
		[ $# = 2 ] && [ "$1" = . ] || fail "COPY $args: only COPY . <dest> (the checkout) is run here"
		case $2 in /*) dest=$root$2 ;; *) dest=$root$workdir/$2 ;; esac
		copy_context "$dest"
		;;
	RUN:builder)
		# Paths outside the working directory would be this machine's.
		if [[ $args =~ (^|[[:space:]=])/ ]]; then
			fail "RUN $args: use paths relative to WORKDIR, so that the line can run outside the image"
		fi
		[[ $args == *"xcaddy build $caddy_version "* ]] || fail "RUN $args: not xcaddy build $caddy_version (the Makefile's)"
		# The builder image's environment (golang:alpine: a Go toolchain
		# of its own and no C compiler; caddy:builder: CADDY_VERSION,
		# XCADDY_SKIP_CLEANUP). Its XCADDY_SETCAP is left out: setcap on
		# the binary needs root and libcap, and changes nothing built.
		(cd "$root$workdir" &&
			env PATH="$tmp/bin:$PATH" TMPDIR="$tmp" GOTOOLCHAIN=local CGO_ENABLED=0 \
				CADDY_VERSION="$caddy_version" XCADDY_SKIP_CLEANUP=1 sh -c "$args")
		;;
	FROM:builder)
		[ "$args" = "caddy:${caddy_version#v}" ] || fail "the final stage is not FROM caddy:${caddy_version#v} (the Makefile's Caddy)"
		stage=final
		;;
	COPY:final)
		# shellcheck disable=SC2086 # split into words on purpose
		set -- $args
		[ $# = 3 ] && [ "$1" = --from=builder ] && [ "$3" = /usr/bin/caddy ] ||
			fail "COPY $args: the final stage only copies the builder's binary to /usr/bin/caddy here"
		binary=$root$2
		;;
	*)
		fail "$keyword in the ${stage:-first} stage is not run by scripts/recipes.sh: add it there, or leave it out"
		;;
	esac
done < <(instructions)
[ -n "$binary" ] || fail "the final stage copies no binary from the builder"
[ -x "$binary" ] || fail "the builder stage did not build ${binary#"$root"}"
"$binary" version
# The list is read whole first: grep -q would close the pipe at its first
# match, and under pipefail caddy's SIGPIPE would fail the check.
modules=$("$binary" list-modules)
for module in receive_booking http.handlers.receive_booking http.handlers.receive_booking_dashboard admin.api.receive_booking; do
	grep -qx "$module" <<<"$modules" || fail "the Dockerfile's binary lacks $module"
done
XDG_DATA_HOME=$tmp/data XDG_CONFIG_HOME=$tmp/config "$binary" validate --config Caddyfile.example --adapter caddyfile 2>/dev/null ||
	fail "the Dockerfile's binary does not validate Caddyfile.example"
echo "the Dockerfile's binary has the module's four Caddy modules and validates Caddyfile.example"

section "systemd: deploy/systemd/receive-booking.conf on Debian's caddy.service"
dropin=deploy/systemd/receive-booking.conf
if ! command -v apt-get >/dev/null || ! command -v systemd-analyze >/dev/null; then
	[ -z "${CI:-}" ] || fail "CI needs apt-get and systemd-analyze"
	echo "skipped: no apt-get or no systemd-analyze here"
else
	deb=$tmp/deb
	mkdir -p "$deb"
	if ! (cd "$deb" && apt-get download caddy >/dev/null 2>&1); then
		apt-get update >/dev/null
		(cd "$deb" && apt-get download caddy >/dev/null)
	fi
	dpkg-deb -x "$deb"/caddy_*.deb "$deb/x"
	unit=$(find "$deb/x" -path '*/systemd/system/caddy.service' | head -n 1)
	[ -n "$unit" ] || fail "Debian's caddy package has no caddy.service"
	echo "$(basename "$deb"/caddy_*.deb): $(grep -E '^Exec(Start|Reload)=' "$unit" | tr '\n' ' ')"
	pkg_start=$(sed -n 's/^ExecStart=//p' "$unit")
	pkg_reload=$(sed -n 's/^ExecReload=//p' "$unit")
	want_start=${pkg_start/ --environ/}
	got_start=$(sed -n 's/^ExecStart=//p' "$dropin" | paste -sd '|')
	got_reload=$(sed -n 's/^ExecReload=//p' "$dropin" | paste -sd '|')
	[ "$got_start" = "|$want_start" ] ||
		fail "$dropin: want ExecStart= (empty), then ExecStart=$want_start (the package's without --environ); got ${got_start//|/ then }"
	[ "$got_reload" = "|$pkg_reload" ] ||
		fail "$dropin: want ExecReload= (empty), then ExecReload=$pkg_reload (the package's); got ${got_reload//|/ then }"
	# A root of its own: the system's units (the targets the unit names),
	# the package's unit, the drop-in, and the binary it runs.
	sysroot=$tmp/sysroot
	mkdir -p "$sysroot/usr/lib/systemd" "$sysroot/etc/systemd/system/caddy.service.d" "$sysroot/usr/bin"
	cp -a /usr/lib/systemd/system "$sysroot/usr/lib/systemd/"
	cp "$unit" "$sysroot/usr/lib/systemd/system/caddy.service"
	cp "$dropin" "$sysroot/etc/systemd/system/caddy.service.d/"
	cp "$binary" "$sysroot/usr/bin/caddy"
	# verify exits 0 on some findings (an unknown key): any output fails.
	if ! out=$(systemd-analyze --root="$sysroot" verify caddy.service 2>&1) || [ -n "$out" ]; then
		fail "systemd-analyze verify: ${out:-failed}"
	fi
	echo "systemd-analyze verify: the package's unit with the drop-in is accepted"
fi

echo "recipes.sh: all passed"
