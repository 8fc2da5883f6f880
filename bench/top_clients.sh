#!/usr/bin/env bash
# What counting top clients (/admin/top) adds per decision: the memory
# store's check alone and followed by the rule's summary record, in the same
# run (crates/floodgate-core/benches/top_clients.rs). Ends with a table of
# ns added per decision and the ratio with / without, as paired medians.
#
#   bench/top_clients.sh                 # 1 s warm-up, 3 s per benchmark
#   WARM_UP=3 MEASURE=10 bench/top_clients.sh
#
# Prints the machine and its load average before and after: other processes
# on the same cores skew every figure, the paired ratios least.
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh

machine
cargo bench -p floodgate-core --bench top_clients -- \
  --warm-up-time "${WARM_UP:-1}" --measurement-time "${MEASURE:-3}" "$@"
machine
