#!/usr/bin/env bash
# The speed targets, side by side in one run: nginx answering `return 200`,
# floodgate with no rule, with one rule on the memory store, on Redis
# (exact) and on Redis batched, and the classic design floodgate replaces
# (bench/seed: express + ioredis INCR/EXPIRE under PM2 cluster, two
# instances) on the same Redis.
#
#   bench/speed.sh
#
# Load: `wrk -t2 -c64` as 1 000 clients named by X-Forwarded-For
# (bench/wrk/clients.lua), GET /api/hello, BENCH_DURATION seconds (default
# 5) per target after a 1 s warm-up, in BENCH_ROUNDS rounds (default 5),
# each round in another order so a drifting machine hits every target
# alike. Every rule is a sliding window keyed by ip that never refuses.
# Ratios are taken within each round, then the median over rounds.
# floodgate's CPU per request is read from /proc: it does not depend on
# who else shares the cores, which wrk, nginx, Redis and node all do here.
#
# Targets: no rule >= 0.8x nginx; memory >= 0.9x no rule; Redis exact
# CPU per request <= 1.2x memory's; Redis exact >= 5x the seed design;
# Redis batched >= 0.9x memory.
#
# Needs wrk, nginx, redis-server, node and npm (the seed's packages are
# installed from bench/seed/package-lock.json on first use), and pm2
# ($PM2, default `pm2` on PATH; `npm install -g pm2`).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

need wrk wrk
need curl curl
need nginx nginx-light
need redis-server redis-server
need redis-cli redis-tools
need node nodejs
need npm npm
need cargo "cargo (https://rustup.rs)"
PM2=${PM2:-pm2}
if ! command -v "$PM2" >/dev/null 2>&1; then
    echo "bench: pm2 not found (set PM2, or: npm install -g pm2)" >&2
    exit 1
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
duration=${BENCH_DURATION:-5}
rounds=${BENCH_ROUNDS:-5}
clients=1000
path=/api/hello

bench_init
export PM2_HOME=$BENCH_TMP/pm2
trap '"$PM2" kill >/dev/null 2>&1 || true; bench_cleanup' EXIT

build_floodgate
start_redis
config() { gateway_config "$@"; }
for name in none memory redis batched; do
    start_floodgate "$name"
done

# nginx: two workers answering 200 with a short body, no logs.
try_start_nginx() {
    local p
    p=$(free_port)
    mkdir -p "$BENCH_TMP/nginx"
    cat >"$BENCH_TMP/nginx/nginx.conf" <<CONF
worker_processes 2;
pid $BENCH_TMP/nginx/nginx.pid;
error_log $BENCH_TMP/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $BENCH_TMP/nginx/body;
    proxy_temp_path $BENCH_TMP/nginx/proxy;
    fastcgi_temp_path $BENCH_TMP/nginx/fastcgi;
    uwsgi_temp_path $BENCH_TMP/nginx/uwsgi;
    scgi_temp_path $BENCH_TMP/nginx/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$p;
        location / { return 200 '{"message":"hello"}'; }
    }
}
CONF
    bench_spawn "$BENCH_TMP/nginx.log" nginx -c "$BENCH_TMP/nginx/nginx.conf" -g 'daemon off;'
    wait_until 5 curl -sf "http://127.0.0.1:$p$path" || return 1
    port[nginx]=$p
}
retry_start try_start_nginx || { echo "bench: nginx did not start" >&2; exit 1; }

# The seed design under PM2, on the run's Redis.
if [[ ! -d bench/seed/node_modules ]]; then
    (cd bench/seed && npm ci --no-audit --no-fund --silent)
fi
port[seed]=$(free_port)
PORT=${port[seed]} REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" \
    "$PM2" start bench/seed/ecosystem.config.js >/dev/null
wait_until 20 curl -sf "http://127.0.0.1:${port[seed]}$path" ||
    { echo "bench: the seed app did not answer" >&2; "$PM2" logs --nostream >&2 || true; exit 1; }

# Every target answers 200, and the limited ones with their headers.
for name in nginx none memory redis batched seed; do
    headers=$(curl -s -D - -o /dev/null -H "X-Forwarded-For: 10.9.9.9" "http://127.0.0.1:${port[$name]}$path")
    grep -q '^HTTP/1.1 200' <<<"$headers" || { echo "bench: $name did not answer 200: $headers" >&2; exit 1; }
done

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

declare -A rate cpu
# load NAME ROUND: wrk against NAME; its req/s, and floodgate's CPU per
# request (µs) when NAME is a floodgate.
load() {
    local name=$1 round=$2 out t0 requests
    out=$BENCH_TMP/wrk-$name-$round.txt
    wrk -t2 -c64 -d1s -s bench/wrk/clients.lua "http://127.0.0.1:${port[$name]}$path" -- "$clients" >/dev/null
    [[ -n ${pid[$name]:-} ]] && t0=$(ticks "${pid[$name]}")
    wrk -t2 -c64 -d"${duration}s" -s bench/wrk/clients.lua \
        "http://127.0.0.1:${port[$name]}$path" -- "$clients" >"$out"
    requests=$(awk '/requests in/ { print $1 }' "$out")
    rate[$name,$round]=$(awk '/^Requests\/sec:/ { printf "%d", $2 }' "$out")
    if [[ -n ${pid[$name]:-} ]]; then
        cpu[$name,$round]=$(awk -v t="$(($(ticks "${pid[$name]}") - t0))" -v hz="$hz" -v n="$requests" \
            'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
    else
        cpu[$name,$round]=-
    fi
    if grep -q 'Non-2xx' "$out"; then
        echo "bench: $name answered non-2xx: $(grep Non-2xx "$out")" >&2
        exit 1
    fi
}

targets=(nginx none memory redis batched seed)
machine
echo "load: wrk -t2 -c64 -d${duration}s, $clients clients by X-Forwarded-For, GET $path; $rounds rounds"
for round in $(seq "$rounds"); do
    order=("${targets[@]:$((round % ${#targets[@]}))}" "${targets[@]:0:$((round % ${#targets[@]}))}")
    for name in "${order[@]}"; do
        load "$name" "$round"
    done
    printf 'round %d:' "$round"
    for name in "${targets[@]}"; do
        printf ' %s %s req/s (%s us)' "$name" "${rate[$name,$round]}" "${cpu[$name,$round]}"
    done
    echo
done

# median VALUES...: the median of numbers.
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# ratio EXPR: per round, EXPR over a[] / b[] of that round; prints the median and the range.
per_round() {
    local expr=$1 round values=()
    for round in $(seq "$rounds"); do
        values+=("$(eval "$expr")")
    done
    printf '%.2fx (rounds %s to %s)' "$(median "${values[@]}")" \
        "$(printf '%s\n' "${values[@]}" | sort -g | head -1)" "$(printf '%s\n' "${values[@]}" | sort -g | tail -1)"
}
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

echo "medians over rounds:"
for name in "${targets[@]}"; do
    vals=() cpus=()
    for round in $(seq "$rounds"); do
        vals+=("${rate[$name,$round]}")
        [[ ${cpu[$name,$round]} != - ]] && cpus+=("${cpu[$name,$round]}")
    done
    if ((${#cpus[@]})); then
        printf '  %-8s %8.0f req/s  floodgate %5.2f us CPU/req\n' "$name" "$(median "${vals[@]}")" "$(median "${cpus[@]}")"
    else
        printf '  %-8s %8.0f req/s\n' "$name" "$(median "${vals[@]}")"
    fi
done
r=$(per_round 'div "${rate[none,$round]}" "${rate[nginx,$round]}"'); echo "no rule / nginx:                      $r  target >= 0.8"
r=$(per_round 'div "${rate[memory,$round]}" "${rate[none,$round]}"'); echo "memory / no rule:                     $r  target >= 0.9"
r=$(per_round 'div "${cpu[redis,$round]}" "${cpu[memory,$round]}"'); echo "Redis exact / memory, CPU per request: $r  target <= 1.2"
r=$(per_round 'div "${rate[redis,$round]}" "${rate[seed,$round]}"'); echo "Redis exact / seed design:            $r  target >= 5"
r=$(per_round 'div "${rate[batched,$round]}" "${rate[memory,$round]}"'); echo "Redis batched / memory:               $r  target >= 0.9"
machine
