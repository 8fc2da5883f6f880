#!/usr/bin/env bash
# Memory-store benchmarks: decisions/s of every algorithm beside governor's
# keyed limiter in the same run (criterion; the table at the end holds the
# figures and the token_bucket / governor ratios), then bytes per key.
#
#   bench/memory_store.sh                  # 1 s warm-up, 3 s per benchmark
#   WARM_UP=3 MEASURE=10 bench/memory_store.sh
#   bench/memory_store.sh 1Mkeys           # extra arguments filter benchmarks
#
# Prints the machine and its load average before and after: other processes
# on the same cores skew every figure, the paired ratios least.
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh

machine
cargo bench -p floodgate-core --bench memory_store -- \
  --warm-up-time "${WARM_UP:-1}" --measurement-time "${MEASURE:-3}" "$@"
cargo run --release -q -p floodgate-core --example bytes_per_key
machine
