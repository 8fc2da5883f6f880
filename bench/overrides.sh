#!/usr/bin/env bash
# What per-key overrides cost a decision: no overrides, 1M overrides with
# the decided key not among them, and keys that have one; memory and Redis
# in the same run (crates/floodgate-server/benches/overrides.rs). Starts its
# own redis-server unless FLOODGATE_BENCH_REDIS_URL is set. About 3 minutes
# on 2 cores, most of it putting the million overrides into each store.
#
#   bench/overrides.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

redis_cargo_bench floodgate-server overrides
