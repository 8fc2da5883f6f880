#!/usr/bin/env bash
# Runs every floodgate test: formatting, lints, unit, property and integration
# tests against real servers. Installs what the tests need when it is missing
# (redis-server, redis-cli and nginx from Debian, openssl and curl for the
# deploy walk, which runs DEPLOY.md's commands, a C compiler for ring, pm2
# from npm, Python grpcio from PyPI into a virtualenv, chromium and
# chromium-driver for the dashboard's browser test), starts a shared
# redis-server on a free port for the tests that only need "a Redis", and
# stops it on exit. The Node client's tests (clients/node) run after cargo
# test, with express installed by npm ci. Tests that kill or restart Redis start their own instances
# on their own free ports, as do the Redis Cluster, Sentinel and TLS tests; the deploy end-to-end tests start their own nginx
# and PM2 daemon (FLOODGATE_TEST_NGINX, FLOODGATE_TEST_PM2). The deploy walk
# (tests/server/deploy_walk.rs) follows docs/DEPLOY.md §3 in namespaces of its own
# (unshare, ip), as root, installing pm2@7 from npm's cache.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# nginx lives in /usr/sbin, which is not on every user's PATH.
find_nginx() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true; }

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
[ -n "$(find_nginx)" ] || need_apt+=(nginx)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
# The dashboard's browser test (tests/server/dashboard.rs): Debian's chromium
# driven over WebDriver by chromedriver.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
# promtool (Debian's prometheus package) validates deploy/prometheus/alerts.yml
# (tests/server/metrics.rs).
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
apt_updated=""
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  apt_updated=1
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o Acquire::Retries=3 "${need_apt[@]}" >/dev/null
fi
# The deploy walk runs DEPLOY.md §3's `apt-get install -y ...` lines without
# network: they must find nothing to do. A package installed but older than
# the candidate apt knows of (openssl on a machine whose image predates a
# security update) would be upgraded there, and fail; bring such packages
# to their candidates here, with network.
mapfile -t walk_apt < <(sed -n 's/^apt-get install -y //p' docs/DEPLOY.md | tr ' ' '\n' | sed '/^$/d')
if [ "$(id -u)" -eq 0 ] && [ ${#walk_apt[@]} -gt 0 ] \
  && ! LC_ALL=C apt-get -s install "${walk_apt[@]}" | grep -q '^0 upgraded, 0 newly installed'; then
  log "bringing ${walk_apt[*]} up to date for the deploy walk"
  [ -n "$apt_updated" ] || apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Acquire::Retries=3 "${walk_apt[@]}" >/dev/null
fi
command -v redis-server >/dev/null || { echo "redis-server could not be installed" >&2; exit 1; }

FLOODGATE_TEST_NGINX=$(find_nginx)
[ -n "$FLOODGATE_TEST_NGINX" ] || { echo "nginx could not be installed" >&2; exit 1; }
export FLOODGATE_TEST_NGINX
FLOODGATE_TEST_PROMTOOL=$(command -v promtool) || { echo "promtool could not be installed" >&2; exit 1; }
export FLOODGATE_TEST_PROMTOOL

# pm2: the one on PATH, else a private copy (npm install, kept between runs).
if command -v pm2 >/dev/null 2>&1; then
  FLOODGATE_TEST_PM2=$(command -v pm2)
else
  pm2_prefix="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/floodgate-test/pm2"
  FLOODGATE_TEST_PM2="$pm2_prefix/node_modules/.bin/pm2"
  if [ ! -x "$FLOODGATE_TEST_PM2" ]; then
    log "installing pm2 into $pm2_prefix"
    mkdir -p "$pm2_prefix"
    npm install --prefix "$pm2_prefix" --no-audit --no-fund --update-notifier=false --loglevel=error pm2@7 >/dev/null
  fi
fi
[ -x "$FLOODGATE_TEST_PM2" ] || { echo "pm2 could not be installed" >&2; exit 1; }
# The deploy walk runs DEPLOY.md's `npm install -g pm2@7` without network:
# put pm2@7 and its dependencies in npm's cache (offline when they are).
walk_npm=$(mktemp -d)
npm install --prefix "$walk_npm" --prefer-offline --no-audit --no-fund --update-notifier=false \
  --loglevel=error pm2@7 >/dev/null || { echo "pm2@7 could not be cached for the deploy walk" >&2; exit 1; }
rm -rf "$walk_npm"
export FLOODGATE_TEST_PM2
# Python grpcio for the Envoy rate limit service tests (tests/server/rls.rs):
# a private virtualenv, kept between runs, from PyPI.
command -v python3 >/dev/null 2>&1 || { echo "python3 is needed (apt-get install python3 python3-venv)" >&2; exit 1; }
grpc_venv="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/floodgate-test/grpcio"
grpc_pins=(grpcio==1.85.3 grpcio-reflection==1.81.1 grpcio-health-checking==1.81.1 protobuf==6.33.6 pyyaml==6.0.3)
if ! "$grpc_venv/bin/python" -c 'import grpc, grpc_reflection, grpc_health, yaml' >/dev/null 2>&1; then
  log "installing ${grpc_pins[*]} into $grpc_venv"
  if ! python3 -m venv "$grpc_venv" >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$grpc_venv"
  fi
  "$grpc_venv/bin/pip" install -q --disable-pip-version-check "${grpc_pins[@]}"
fi
FLOODGATE_TEST_PYTHON="$grpc_venv/bin/python"
"$FLOODGATE_TEST_PYTHON" -c 'import grpc, grpc_reflection, grpc_health, yaml' || { echo "grpcio could not be installed into $grpc_venv" >&2; exit 1; }
export FLOODGATE_TEST_PYTHON

log "nginx: $FLOODGATE_TEST_NGINX ($("$FLOODGATE_TEST_NGINX" -v 2>&1)); pm2: $FLOODGATE_TEST_PM2"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

workdir=$(mktemp -d)
redis_pid=""
cleanup() {
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
  rm -rf "$workdir"
}
trap cleanup EXIT

port=$(free_port)
log "starting redis-server on 127.0.0.1:$port"
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$workdir" --logfile "$workdir/redis.log" &
redis_pid=$!
for _ in $(seq 1 100); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.05
done
redis-cli -p "$port" ping >/dev/null || { echo "redis-server did not start" >&2; cat "$workdir/redis.log" >&2; exit 1; }
export FLOODGATE_TEST_REDIS_URL="redis://127.0.0.1:$port/0"

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo test"
cargo test --workspace --all-targets --locked --no-fail-fast
cargo test --workspace --doc --locked
# The crates' documentation builds without a warning (broken or private
# links included), as docs.rs would build it.
log "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
# And the private items' comments link to what they name, for whoever
# reads the code.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --document-private-items
# The Node client's tests run the binary the integration tests above built
# and a real express app, installed from npm as package-lock.json pins it.
log "Node client (clients/node): npm ci, node --test"
floodgate_bin="$PWD/target/debug/floodgate"
[ -x "$floodgate_bin" ] || cargo build -p floodgate-server --locked
(cd clients/node && npm ci --no-audit --no-fund --update-notifier=false --loglevel=error >/dev/null &&
  FLOODGATE_BIN="$floodgate_bin" node --test)
# Publishability: every published crate packages (testkit and fuzz are
# `publish = false`). The working tree is what is tested, committed or not.
log "cargo package (floodgate-core, -redis, -tower, -config, -server)"
# --no-verify: the manifests, the files and the versions of the floodgate
# dependencies are checked; building each .crate again from scratch (a
# minute on two cores) would only repeat the build above.
cargo package --workspace --exclude floodgate-testkit --exclude floodgate-fuzz --locked --allow-dirty --no-verify
