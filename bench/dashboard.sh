#!/usr/bin/env bash
# What 10 open dashboards cost the gateway: req/s and floodgate's CPU per
# request through the gateway with no dashboard and with 10 polling the
# admin API as the page does, alternating turns of one run
# (crates/floodgate-server/benches/dashboard.rs). About 90 s after the build.
#
#   bench/dashboard.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

need cargo "cargo (https://rustup.rs)"

machine
cargo bench -p floodgate-server --bench dashboard
machine
