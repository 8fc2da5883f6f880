#!/usr/bin/env bash
# What rules charged on the answer (count_status, cost_header) cost per
# request against a plain rule of the same algorithm, memory and Redis, in
# the same run (crates/floodgate-redis/benches/answers.rs). Starts its own
# redis-server unless FLOODGATE_BENCH_REDIS_URL is set.
#
#   bench/answers.sh
#
# Prints the machine and its load average before and after: other processes
# on the same cores skew every figure, the paired ratios least.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

redis_cargo_bench floodgate-redis answers
