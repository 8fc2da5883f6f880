#!/usr/bin/env bash
# Decisions per second through the Envoy rate limit service (gRPC) against
# the JSON decision API (POST /v1/check), one floodgate process, same rule,
# 64 callers each way, memory store then Redis, in the same run
# (crates/floodgate-server/benches/rls.rs). Starts its own redis-server
# unless FLOODGATE_BENCH_REDIS_URL is set. About a minute on 2 cores after
# the build. The callers are thin clients both ways (h2's for RLS, hyper's
# HTTP/1.1 connections for JSON); FLOODGATE_BENCH_CLIENTS=stock uses
# tonic's generated client and hyper-util's pooled client instead.
#
#   bench/rls.sh
#   FLOODGATE_BENCH_CLIENTS=stock bench/rls.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

redis_cargo_bench floodgate-server rls
