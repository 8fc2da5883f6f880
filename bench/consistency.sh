#!/usr/bin/env bash
# What consistency = "batched" buys on Redis: the gateway's req/s,
# floodgate's CPU per request and redis-server's, with one rule on the
# memory store, on Redis exact and on Redis batched, three processes in
# alternating turns of one run (crates/floodgate-server/benches/consistency.rs).
# Starts its own redis-server unless FLOODGATE_BENCH_REDIS_URL is set.
# About a minute and a half on 2 cores after the build.
#
#   bench/consistency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

redis_cargo_bench floodgate-server consistency
