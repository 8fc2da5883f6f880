#!/usr/bin/env bash
# The Redis store benchmark, with its baseline in the same run.
#
#   bench/redis.sh
#
# Starts a redis-server of its own on a free loopback port. For each
# algorithm: the ceiling, redis-benchmark running the very script RedisStore
# runs (check.lua's function library, loaded with FUNCTION LOAD) as `FCALL`
# with the same KEYS and ARGV the store sends, 256 connections, 16 pipelined
# commands each,
# random keys; then the criterion bench (crates/floodgate-redis/benches/
# redis_store.rs: RedisStore decisions/s at 1, 64 and 256 tasks); then the
# ceiling again. Prints decisions/s at 256 tasks as a share of the higher of
# the two ceilings (target: at least 70%), and Redis' own time per FCALL in
# both (INFO commandstats), which shows whether both did the same work.
# Ends with bytes per key in Redis (benches/redis_bytes_per_key.rs).
#
# Environment: CARGO_TARGET_DIR as for cargo; BENCH_TIME (criterion
# measurement seconds per benchmark, default 3); BENCH_REQUESTS (requests per
# redis-benchmark run, default 200000).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

need redis-server redis-server
need redis-cli redis-tools
need redis-benchmark redis-tools
need jq jq
need cargo "cargo (https://rustup.rs)"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
measure=${BENCH_TIME:-3}
requests=${BENCH_REQUESTS:-200000}
keyspace=100000 # as KEYSPACE in redis_store.rs

bench_init
export CRITERION_HOME=$BENCH_TMP/criterion

echo "== building the benches"
cargo bench -q -p floodgate-redis --no-run 2>&1 | grep -v '^ *Executable' || true

start_redis
port=$REDIS_PORT
rcli() { redis-cli -p "$port" "$@"; }
# The store's own library, byte for byte (floodgate_redis::check_library):
# the store's calls during the criterion runs find it loaded, so both call
# the same function.
cargo bench -q -p floodgate-redis --bench redis_store -- --print-library >"$BENCH_TMP/check.lua"
function=$(sed -n '1s/^#!lua name=//p' "$BENCH_TMP/check.lua")
[[ -n $function ]] || { echo "no library name in the printed library" >&2; exit 1; }
rcli -x FUNCTION LOAD <"$BENCH_TMP/check.lua" >/dev/null

# ARGV[2..] per algorithm, as the bench sends them.
declare -A argv
while read -r algorithm rest; do
    argv[$algorithm]=$rest
done < <(cargo bench -q -p floodgate-redis --bench redis_store -- --print-argv)

# Redis' own microseconds per FCALL since the last CONFIG RESETSTAT.
server_usec() {
    rcli INFO commandstats | tr -d '\r' |
        sed -n 's/^cmdstat_fcall:.*usec_per_call=\([0-9.]*\).*/\1/p'
}

# ceiling ALGORITHM KEYSPACE: redis-benchmark's FCALL/s into CEILING,
# Redis' time per call into CEILING_USEC.
ceiling() {
    local algorithm=$1 keys=$2 rps
    rcli CONFIG RESETSTAT >/dev/null
    # shellcheck disable=SC2086 # the ARGV words are meant to split
    rps=$(redis-benchmark -p "$port" -c 256 -P 16 -n "$requests" -r "$keys" --csv \
        FCALL "$function" 2 'fgbench:{ip:__rand_int__}:bench:state' \
        'fgbench:{ip:__rand_int__}:bench:block' "" ${argv[$algorithm]} |
        tail -n 1 | cut -d, -f2 | tr -d '"')
    CEILING=${rps%.*}
    CEILING_USEC=$(server_usec)
}

# Decisions/s criterion measured for GROUP/FUNCTION in this run.
criterion_rate() {
    local estimates=$CRITERION_HOME/$1/$2/new/estimates.json
    [[ -f $estimates ]] || { echo 0; return; }
    jq -r '1e9 / .mean.point_estimate | floor' "$estimates"
}

echo "== redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on 127.0.0.1:$port"
echo "== machine: $(machine_load) at the start"
declare -A before after usec_rb usec_fg
for algorithm in fixed_window sliding_window sliding_log token_bucket; do
    echo "== $algorithm: ceiling"
    ceiling "$algorithm" "$keyspace"
    before[$algorithm]=$CEILING
    usec_rb[$algorithm]=$CEILING_USEC
    echo "   redis-benchmark -c 256 -P 16: ${before[$algorithm]} FCALL/s"
    echo "== $algorithm: RedisStore (criterion)"
    rcli CONFIG RESETSTAT >/dev/null
    if ! FLOODGATE_BENCH_REDIS_URL="redis://127.0.0.1:$port/0" \
        cargo bench -q -p floodgate-redis --bench redis_store -- \
        --warm-up-time 1 --measurement-time "$measure" "^redis_$algorithm/" \
        >"$BENCH_TMP/criterion.out" 2>"$BENCH_TMP/criterion.err"; then
        cat "$BENCH_TMP/criterion.out" "$BENCH_TMP/criterion.err" >&2
        exit 1
    fi
    grep -E '^redis_|thrpt|checks' "$BENCH_TMP/criterion.out" || true
    usec_fg[$algorithm]=$(server_usec)
    ceiling "$algorithm" "$keyspace"
    after[$algorithm]=$CEILING
    echo "   redis-benchmark -c 256 -P 16 again: ${after[$algorithm]} FCALL/s"
done
echo "== token_bucket, one hot key: ceiling"
ceiling token_bucket 1
hot_before=$CEILING
echo "== machine: $(machine_load) at the end"

echo
echo "RedisStore decisions/s (criterion means) beside the ceiling: redis-benchmark"
echo "running check.lua with -c 256 -P 16 before and after, on the same server"
printf '%-16s %9s %9s %9s %19s %10s %15s\n' "" "1 task" "64 tasks" "256 tasks" \
    "ceiling (bef/aft)" "256/ceil" "Redis µs/call"
printf '%-16s %9s %9s %9s %19s %10s %15s\n' "" "" "" "" "" "" "(fg / r-bench)"
for algorithm in fixed_window sliding_window sliding_log token_bucket; do
    g=redis_$algorithm
    t1=$(criterion_rate "$g" 1_task)
    t64=$(criterion_rate "$g" 64_tasks)
    t256=$(criterion_rate "$g" 256_tasks)
    top=$((before[$algorithm] > after[$algorithm] ? before[$algorithm] : after[$algorithm]))
    pct=$(awk -v a="$t256" -v b="$top" 'BEGIN { printf "%.0f%%", b ? 100 * a / b : 0 }')
    printf '%-16s %9d %9d %9d %19s %10s %15s\n' "$algorithm" "$t1" "$t64" "$t256" \
        "${before[$algorithm]}/${after[$algorithm]}" "$pct" \
        "${usec_fg[$algorithm]} / ${usec_rb[$algorithm]}"
done
hot=$(criterion_rate redis_token_bucket 256_tasks_hot_key)
pct=$(awk -v a="$hot" -v b="$hot_before" 'BEGIN { printf "%.0f%%", b ? 100 * a / b : 0 }')
printf '%-16s %9s %9s %9d %19s %10s\n' "token_bucket hot" "" "" "$hot" "$hot_before" "$pct"
echo "target: 256 tasks at least 70% of the ceiling"
echo "check.lua libraries in Redis: $(rcli FUNCTION LIST LIBRARYNAME 'floodgate_check_*' | awk 'prev == "library_name" { n++ } { prev = $0 } END { print n + 0 }'), scripts cached: $(rcli INFO memory | tr -d '\r' | sed -n 's/^number_of_cached_scripts://p') (1 and 0: the store called the very function redis-benchmark called)"

echo
echo "== bytes per key (a private redis-server)"
cargo bench -q -p floodgate-redis --bench redis_bytes_per_key
