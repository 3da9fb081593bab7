# Caddy with receive_booking, built from this checkout (the build context):
#
#   docker build -t caddy-receive-booking .
#
# The official caddy:builder pattern. The module is not published yet, so
# the copied checkout is given a version that cannot clash with a real one
# and replaces it (as `make build` does). The versions are the Makefile's
# CADDY_VERSION.
#
# CI has no Docker engine: scripts/recipes.sh runs the builder stage's
# WORKDIR, COPY and RUN lines as written, in a temporary directory, and
# checks the binary. Keep that stage to those instructions, with paths
# relative to WORKDIR.
FROM caddy:2.11.9-builder AS builder
WORKDIR /build
COPY . ./src
RUN xcaddy build v2.11.9 --output ./caddy \
    --with github.com/bookingwebhook/caddy-receive-booking@v0.0.0-00010101000000-000000000000=./src

# The official image: Caddy's data directory is /data (keep it on a volume:
# it holds the SQLite queue), its command `caddy run --config
# /etc/caddy/Caddyfile --adapter caddyfile`. Mount your Caddyfile there.
FROM caddy:2.11.9
COPY --from=builder /build/caddy /usr/bin/caddy
