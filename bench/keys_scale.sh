#!/usr/bin/env bash
# Scale of keys: 10,000,000 distinct client keys through the decision API,
# each checked once, against the memory store and against Redis. Memory
# must stay bounded however many keys go through.
#
#   bench/keys_scale.sh
#
# Builds the release binary and the load generator
# (crates/floodgate-server/examples/keys_load.rs: KEYS_CONNECTIONS
# keep-alive connections, keys k0, k1, ... each checked once by
# POST /v1/check), then:
#
#   memory  backend = "memory", max_keys = 1,000,000; rule `keys`:
#           token_bucket, 1 per hour, so no key expires during the run and
#           the store evicts to stay within its bound. Every 5 s: decisions
#           so far (/metrics) and floodgate's RSS. After the run, the keys
#           still held are estimated by reading the counters of every 500th
#           key through the admin API (`GET /admin/rules/keys/keys/<key>`;
#           still held = nothing remaining). Checked: every key admitted,
#           held keys <= max_keys, RSS plateaus once the store is full
#           (the largest RSS after 2 x max_keys decisions is within 25% of the
#           RSS at that point).
#   redis   backend = "redis" on a redis-server of the run's own; rule
#           `keys`: token_bucket, 1 per second, so each key's state expires
#           about 2 s after its check (window plus the store's 1 s TTL
#           margin). Every 5 s: decisions, DBSIZE, used_memory, floodgate's
#           RSS; after the run, every second until DBSIZE is 0. Bytes per
#           key: (used_memory - used_memory before the run) / DBSIZE, over the
#           samples taken during the run. Checked: every key admitted,
#           DBSIZE stays bounded by expiry (below 10 s worth of keys at the
#           run's rate, against 2 s of life per key), and falls to 0 within
#           30 s of the end.
#
# Environment: CARGO_TARGET_DIR as for cargo; KEYS_TOTAL (default
# 10000000); KEYS_MAX (the memory store's max_keys, default 1000000);
# KEYS_CONNECTIONS (default 64).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

need curl curl
need redis-server redis-server
need redis-cli redis-tools
need cargo "cargo (https://rustup.rs)"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
keys=${KEYS_TOTAL:-10000000}
max_keys=${KEYS_MAX:-1000000}
connections=${KEYS_CONNECTIONS:-64}
stride=500
token=bench-admin-token

bench_init

echo "== building floodgate and the load generator (release)"
cargo build -q --release -p floodgate-server --bin floodgate --example keys_load
bin=$CARGO_TARGET_DIR/release/floodgate
load=$CARGO_TARGET_DIR/release/examples/keys_load

start_redis

# config NAME LISTEN ADMIN: the config of instance NAME (memory or redis).
config() {
    local name=$1 listen=$2 admin=$3
    cat <<TOML
[server]
listen = "127.0.0.1:$listen"

[admin]
listen = "127.0.0.1:$admin"
token = "$token"

[store]
TOML
    if [[ $name == redis ]]; then
        # A generous timeout, so that a loaded machine does not turn slow
        # calls into failures; deny, so that any failure shows as one.
        cat <<TOML
backend = "redis"
url = "redis://127.0.0.1:$REDIS_PORT/0"
timeout = "1s"
on_error = "deny"

[[rule]]
name = "keys"
key = "ip"
algorithm = "token_bucket"
limit = 1
window = "1s"
TOML
    else
        cat <<TOML
backend = "memory"
max_keys = $max_keys

[[rule]]
name = "keys"
key = "ip"
algorithm = "token_bucket"
limit = 1
window = "1h"
TOML
    fi
}

rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
decisions() {
    curl -sf "http://127.0.0.1:${admin_port[$1]}/metrics" |
        awk 'index($0, "floodgate_decisions_total{rule=\"keys\"") == 1 { s += $NF } END { printf "%d", s }'
}
redis_field() { redis-cli -p "$REDIS_PORT" INFO "$1" | tr -d '\r' | awk -F: -v f="$2" '$1 == f { print $2 }'; }
dbsize() { redis-cli -p "$REDIS_PORT" DBSIZE | tr -d '\r'; }
failures=0
expect() { # expect LABEL AWK-CONDITION
    local v
    v=$(verdict "$2")
    echo "$1: $v"
    [[ $v == met ]] || failures=$((failures + 1))
}

# run NAME: the load against instance NAME, sampling every 5 s into
# $BENCH_TMP/NAME.samples while it runs; the load's output in NAME.load.
run() {
    local name=$1 started t verify_args=()
    if [[ $name == memory ]]; then
        verify_args=(--verify "127.0.0.1:${admin_port[$name]}" --token "$token" --stride "$stride")
    fi
    started=$SECONDS
    "$load" --addr "127.0.0.1:${port[$name]}" --rule keys --keys "$keys" \
        --connections "$connections" --progress 30 "${verify_args[@]}" \
        >"$BENCH_TMP/$name.load" 2>&1 &
    local load_pid=$!
    : >"$BENCH_TMP/$name.samples"
    while kill -0 "$load_pid" 2>/dev/null; do
        t=$((SECONDS - started))
        if [[ $name == memory ]]; then
            echo "$t $(decisions "$name") $(rss_mib "${pid[$name]}")" >>"$BENCH_TMP/$name.samples"
            awk 'END { printf "   memory: t=%ss decisions=%s rss=%s MiB\n", $1, $2, $3 }' "$BENCH_TMP/$name.samples"
        else
            echo "$t $(decisions "$name") $(dbsize) $(redis_field memory used_memory) $(rss_mib "${pid[$name]}")" \
                >>"$BENCH_TMP/$name.samples"
            awk 'END { printf "   redis: t=%ss decisions=%s dbsize=%s used_memory=%.1f MiB floodgate_rss=%s MiB\n", $1, $2, $3, $4 / 1048576, $5 }' \
                "$BENCH_TMP/$name.samples"
        fi
        sleep 5
    done
    wait "$load_pid" || { cat "$BENCH_TMP/$name.load" >&2; exit 1; }
    grep -v '^keys_load: t=' "$BENCH_TMP/$name.load" | sed 's/^/   /'
    elapsed[$name]=$((SECONDS - started))
}
# load_field NAME FIELD: a field of the load's summary line.
load_field() { grep '^keys_load: done\|^keys_load: verify' "$BENCH_TMP/$1.load" | tr ' ' '\n' | awk -F= -v f="$2" '$1 == f { print $2 }'; }

declare -A elapsed
echo "== machine: $(machine_load) at the start; $keys keys, $connections connections"

echo "== memory store, max_keys = $max_keys"
start_floodgate memory
echo "   rss at start: $(rss_mib "${pid[memory]}") MiB"
run memory
mem_allowed=$(load_field memory allowed)
held=$(load_field memory held_estimate)
# The RSS once 2 x max_keys decisions were made, and the largest after it.
read -r rss_full rss_max < <(awk -v n=$((2 * max_keys)) '$2 >= n { if (!f) { f = $3 }; if ($3 > m) m = $3 } END { print f + 0, m + 0 }' "$BENCH_TMP/memory.samples")
rss_end=$(rss_mib "${pid[memory]}")
kill "${pid[memory]}"

echo "== redis store, 1 s windows"
start_floodgate redis
base_used=$(redis_field memory used_memory)
echo "   used_memory before: $((base_used / 1024)) KiB, dbsize $(dbsize)"
run redis
redis_allowed=$(load_field redis allowed)
# After the run: every second until nothing is left.
drained=-1
for t in $(seq 1 30); do
    sleep 1
    n=$(dbsize)
    echo "   redis after the run: t=+${t}s dbsize=$n used_memory=$(($(redis_field memory used_memory) / 1024)) KiB"
    if [[ $n == 0 ]]; then
        drained=$t
        break
    fi
done
read -r max_dbsize max_used bytes_per_key < <(awk -v base="$base_used" '
    $3 > 1000 { if ($3 > md) md = $3; if ($4 > mu) mu = $4; s += ($4 - base) / $3; n++ }
    END { printf "%d %d %.0f\n", md, mu, n ? s / n : 0 }' "$BENCH_TMP/redis.samples")
end_used=$(redis_field memory used_memory)

echo
echo "Scale of keys: $keys distinct keys, each checked once through POST /v1/check"
echo "memory: ${elapsed[memory]} s ($(load_field memory rate)); allowed $mem_allowed; failed $(load_field memory failed);"
echo "        held after the run ~$held (every ${stride}th key read); RSS $rss_full MiB at $((2 * max_keys)) decisions, max $rss_max MiB after, $rss_end MiB at the end"
echo "redis:  ${elapsed[redis]} s ($(load_field redis rate)); allowed $redis_allowed; failed $(load_field redis failed);"
echo "        dbsize max $max_dbsize; used_memory max $(awk -v b="$max_used" 'BEGIN { printf "%.1f", b / 1048576 }') MiB (before: $((base_used / 1024)) KiB); ~$bytes_per_key bytes per live key;"
echo "        dbsize 0 ${drained}s after the end; used_memory then $((end_used / 1024)) KiB"
echo "== machine: $(machine_load) at the end"
echo
expect "memory: every key admitted" "$mem_allowed == $keys"
expect "memory: keys held <= max_keys" "$held <= $max_keys + $stride"
expect "memory: RSS plateaus once full (max within 25%)" "$rss_full > 0 && $rss_max <= 1.25 * $rss_full"
expect "redis: every key admitted" "$redis_allowed == $keys"
redis_rate=$(load_field redis rate)
expect "redis: dbsize bounded by expiry (max < 10 s of keys at the run's rate)" "$max_dbsize < 10 * ${redis_rate%/s}"
expect "redis: dbsize back to 0 within 30 s" "$drained >= 0"
exit $((failures > 0))
