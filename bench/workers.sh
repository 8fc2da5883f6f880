#!/usr/bin/env bash
# One floodgate process against `--workers 2` on this host: the gateway's
# req/s and floodgate's CPU per request (supervisor and workers summed),
# memory store and Redis, alternating turns of one run
# (crates/floodgate-server/benches/workers.rs). Starts its own
# redis-server unless FLOODGATE_BENCH_REDIS_URL is set.
#
#   bench/workers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

redis_cargo_bench floodgate-server workers
