#!/usr/bin/env bash
# What limiting costs floodgate, counted in instructions rather than time.
#
#   bench/instructions.sh
#
# On a machine whose speed drifts from one minute to the next (a shared VM),
# req/s and CPU time move by tens of percent between identical runs, and a
# change worth a few percent cannot be seen in them. The instructions a
# request makes floodgate execute barely move. This script runs the release
# binary under valgrind's callgrind, in the three set-ups of
# bench/gateway.sh (no rules; one sliding_window rule on the memory store;
# the same rule on a redis-server of the run's own), loads each with
# `wrk -t1 -c8` from 1000 clients (bench/wrk/clients.lua) for a warm-up, then
# counts the instructions of the next BENCH_DURATION seconds and divides by
# the requests wrk saw answered. Prints instructions per request and each as
# a share of the no-rule run's, measured in the same run.
#
# Counted: floodgate's user-space instructions, every thread. Not counted:
# the kernel (socket calls, wake-ups) and Redis' own work (bench/redis.sh
# measures that). Under callgrind floodgate runs ~50 times slower, so fewer
# requests share each Redis call than at full speed: the Redis figure is
# per-call work spread over fewer requests, an upper bound.
#
# Environment: CARGO_TARGET_DIR as for cargo; BENCH_DURATION (seconds
# counted per set-up, default 8); BENCH_KEEP_DUMPS=DIR keeps each set-up's
# callgrind dump there as DIR/NAME.cg (for callgrind_annotate or kcachegrind;
# a relative DIR is taken from the repository's root).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

need valgrind valgrind
need callgrind_control valgrind
need wrk wrk
need curl curl
need redis-server redis-server
need redis-cli redis-tools
need cargo "cargo (https://rustup.rs)"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
duration=${BENCH_DURATION:-8}
path=/api/hello

bench_init

build_floodgate

start_redis

# The set-ups' config: gateway_config (bench/lib.sh), no admin token.
token=
config() { gateway_config "$@"; }

# try_start_counted NAME: floodgate under callgrind on free ports; sets
# port[NAME] and pid[NAME] (valgrind's pid, which callgrind_control takes).
try_start_counted() {
    local name=$1 listen admin
    listen=$(free_port)
    admin=$(free_port)
    config "$name" "$listen" "$admin" >"$BENCH_TMP/$name.toml"
    FLOODGATE_LOG=warn bench_spawn "$BENCH_TMP/$name.log" valgrind --tool=callgrind \
        --callgrind-out-file="$BENCH_TMP/$name.cg" "$bin" serve --config "$BENCH_TMP/$name.toml"
    # Starting under valgrind takes a while.
    wait_until 60 curl -sf "http://127.0.0.1:$admin/healthz" || return 1
    port[$name]=$listen
    pid[$name]=$BENCH_LAST_PID
}

# The dump callgrind_control -d wrote last for NAME.
latest_dump() {
    ls -t "$BENCH_TMP/$1.cg".* | head -1
}

# The instructions of that dump.
dumped_instructions() {
    awk '/^(summary|totals):/ { print $2; exit }' "$(latest_dump "$1")"
}

declare -A per_request requests_seen
for name in none memory redis; do
    if ! retry_start try_start_counted "$name"; then
        echo "bench: floodgate ($name) did not start under valgrind; its log:" >&2
        cat "$BENCH_TMP/$name.log" >&2
        exit 1
    fi
    url="http://127.0.0.1:${port[$name]}$path"
    status=$(curl -s -o /dev/null -w '%{http_code}' -H 'X-Forwarded-For: 10.9.9.9' "$url")
    [[ $status == 200 ]] || { echo "bench: floodgate ($name) answered $status" >&2; exit 1; }
    wrk -t1 -c8 -d3s -s bench/wrk/clients.lua "$url" -- 1000 >/dev/null
    redis-cli -p "$REDIS_PORT" CONFIG RESETSTAT >/dev/null
    callgrind_control -z "${pid[$name]}" >/dev/null 2>&1
    wrk -t1 -c8 -d"${duration}s" -s bench/wrk/clients.lua "$url" -- 1000 >"$BENCH_TMP/wrk-$name.txt"
    callgrind_control -d "${pid[$name]}" >/dev/null 2>&1
    requests_seen[$name]=$(awk '/requests in/ { print $1 }' "$BENCH_TMP/wrk-$name.txt")
    if grep -q 'Non-2xx' "$BENCH_TMP/wrk-$name.txt"; then
        echo "bench: floodgate ($name) refused requests: not a clean run" >&2
        exit 1
    fi
    if [[ -n ${BENCH_KEEP_DUMPS:-} ]]; then
        mkdir -p "$BENCH_KEEP_DUMPS"
        cp "$(latest_dump "$name")" "$BENCH_KEEP_DUMPS/$name.cg"
    fi
    per_request[$name]=$(awk -v t="$(dumped_instructions "$name")" -v n="${requests_seen[$name]}" \
        'BEGIN { printf "%d", t / n }')
    kill "${pid[$name]}"
    wait "${pid[$name]}" 2>/dev/null || true
    calls=$(redis-cli -p "$REDIS_PORT" INFO commandstats |
        awk -F'[:=,]' '/^cmdstat_fcall:/ { print $3 }')
    printf '   %-8s %8d requests  %8d instructions per request' "$name" \
        "${requests_seen[$name]}" "${per_request[$name]}"
    if [[ -n $calls ]]; then
        awk -v n="${requests_seen[$name]}" -v c="$calls" \
            'BEGIN { printf "  (%.1f checks per Redis call)", n / c }'
    fi
    echo
done

echo
echo "floodgate instructions per request (user space, callgrind), GET $path from 1000 clients"
for name in none memory redis; do
    printf '%-8s %8d  %6s of none\n' "$name" "${per_request[$name]}" \
        "$(awk -v a="${per_request[$name]}" -v b="${per_request[none]}" \
            'BEGIN { printf "%.1f%%", 100 * a / b }')"
done
