#!/usr/bin/env bash
# The gateway benchmark: what limiting costs a floodgate instance, measured
# against the same instance without rules in the same run.
#
#   bench/gateway.sh
#
# Builds the release binary and starts three upstream-less floodgate
# processes (the built-in demo API answers GET /api/hello), each with its own
# ports chosen at run time:
#   none    no rules;
#   memory  one rule (sliding_window, keyed by ip, a limit no run reaches) on
#           the memory store;
#   redis   the same rule on a redis-server of the run's own.
# Every instance trusts 127.0.0.1 as a proxy, and wrk (bench/wrk/clients.lua)
# sends each request as one of 1000 clients named by X-Forwarded-For, so
# the rules count 1000 keys. Load: `wrk -t2 -c64 -d10s --latency`, after a 2 s
# warm-up, in rounds: none, memory, redis, then the abuse runs against the
# memory and the Redis instance, in which a client blocked through the admin
# API sends 9 of every 10 requests (403 from the local block cache, no
# store call). Two rounds, so a drifting machine load hits every run alike;
# ratios are given per round too. Then the paced runs: the same 64
# connections, each pausing BENCH_PACE_MS (default 10) after every answer,
# so the load stays below saturation and p99 is the requests' own latency,
# not a queue's (at saturation, 64 connections over fewer req/s is a longer
# queue by arithmetic). Last, one connection for 3 s against each instance.
#
# Targets: memory >= 85% of none, redis >= 60% of none, p99 added by
# limiting < 1 ms, abuse >= memory. wrk shares the machine's CPUs with
# floodgate (and Redis): on a small machine the figures are those of the
# whole box. So each run also reports the CPU time floodgate, redis-server
# and wrk used per request, and how idle the machine stayed: per-request
# CPU tells what limiting costs floodgate itself, whoever else ran.
#
# Two figures tell what the machine itself allows: the latency of a bare
# Redis round trip (redis-benchmark PING, one connection), under any store
# call's; and the redis/none ceiling, the ratio the Redis runs would reach
# if floodgate's Redis path cost it no more CPU than its no-rule path, with
# redis-server and wrk using the CPU they did.
#
# Environment: CARGO_TARGET_DIR as for cargo; BENCH_DURATION (seconds per
# measured run, default 10); BENCH_ROUNDS (default 2); BENCH_PACE_MS
# (default 10); BENCH_FLOODGATE_CPUS and BENCH_LOAD_CPUS (CPU lists for
# taskset, as "0-1" and "2-3": floodgate on the first, wrk and Redis on the
# second; unset, the kernel places them). On a machine whose
# speed drifts from one minute to the next, more and shorter rounds
# (BENCH_ROUNDS=6 BENCH_DURATION=5) and the median of the per-round ratios,
# printed after the means, say more than the means do.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

need wrk wrk
need curl curl
need redis-server redis-server
need redis-cli redis-tools
need redis-benchmark redis-tools
if [[ -n ${BENCH_FLOODGATE_CPUS:-}${BENCH_LOAD_CPUS:-} ]]; then
    need taskset util-linux
fi
need cargo "cargo (https://rustup.rs)"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
duration=${BENCH_DURATION:-10}
rounds=${BENCH_ROUNDS:-2}
clients=1000
token=bench-admin-token
blocked_ip=203.0.113.7
path=/api/hello

bench_init

build_floodgate

start_redis

# The instances' config: gateway_config (bench/lib.sh), with an admin token.
config() { gateway_config "$@"; }

# ms VALUE: a wrk duration (us, ms, s) in milliseconds.
ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) printf "%.3f", v / 1000
        else if (v ~ /ms$/) printf "%.3f", v + 0
        else if (v ~ /s$/) printf "%.3f", v * 1000
        else print "nan" }'
}

# CPU time (user + system) process PID has used, in clock ticks.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# Idle and total ticks of all CPUs together.
machine_ticks() { awk '/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
hz=$(getconf CLK_TCK)
# per_request TICKS REQUESTS: µs of CPU per request.
per_request() { awk -v t="$1" -v hz="$hz" -v n="$2" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }'; }

declare -A rps p50 p99 non2xx cpu redis_cpu wrk_cpu idle
# load LABEL NAME THREADS CONNECTIONS SECONDS [BLOCKED_IP]: wrk against
# instance NAME; results under LABEL, with the CPU that floodgate, Redis
# and wrk used per request, and how idle the machine stayed.
load() {
    local label=$1 name=$2 threads=$3 conns=$4 secs=$5 out fg0 r0 m0 m1 requests
    out=$BENCH_TMP/wrk-$label.txt
    fg0=$(ticks "${pid[$name]}")
    r0=$(ticks "$REDIS_PID")
    m0=$(machine_ticks)
    local TIMEFORMAT='%U %S'
    { time ${BENCH_LOAD_CPUS:+taskset -c "$BENCH_LOAD_CPUS"} wrk -t"$threads" -c"$conns" \
        -d"${secs}s" --latency -s bench/wrk/clients.lua "http://127.0.0.1:${port[$name]}$path" \
        -- "$clients" ${6:-} >"$out"; } 2>"$out.time"
    m1=$(machine_ticks)
    requests=$(awk '/requests in/ { print $1 }' "$out")
    cpu[$label]=$(per_request "$(($(ticks "${pid[$name]}") - fg0))" "$requests")
    redis_cpu[$label]=$(per_request "$(($(ticks "$REDIS_PID") - r0))" "$requests")
    wrk_cpu[$label]=$(awk -v n="$requests" 'END { printf "%.1f", ($1 + $2) * 1e6 / n }' "$out.time")
    idle[$label]=$(awk -v a="$m0" -v b="$m1" 'BEGIN {
        split(a, x, " "); split(b, y, " "); printf "%.0f%%", 100 * (y[1] - x[1]) / (y[2] - x[2]) }')
    rps[$label]=$(awk '/^Requests\/sec:/ { printf "%d", $2 }' "$out")
    p50[$label]=$(ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99[$label]=$(ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    non2xx[$label]=$(awk '/Non-2xx/ { print $NF }' "$out")
    non2xx[$label]=${non2xx[$label]:-0}
    printf '   %-10s %7d req/s  p50 %6.3f ms  p99 %7.3f ms  µs CPU/req: floodgate %5.1f, redis %4.1f, wrk %4.1f  idle %4s  non-2xx %s\n' \
        "$label" "${rps[$label]}" "${p50[$label]}" "${p99[$label]}" "${cpu[$label]}" \
        "${redis_cpu[$label]}" "${wrk_cpu[$label]}" "${idle[$label]}" "${non2xx[$label]}"
}

# metric NAME PATTERN: the sum of the samples of /metrics lines matching PATTERN.
metric() {
    curl -sf "http://127.0.0.1:${admin_port[$1]}/metrics" |
        awk -v pat="$2" 'index($0, pat) == 1 { s += $NF } END { printf "%d", s }'
}

names=(none memory redis)
for name in "${names[@]}"; do
    start_floodgate "$name"
done
# Each instance answers the demo API, and the rule applies where there is one.
for name in "${names[@]}"; do
    headers=$(curl -s -D - -o /dev/null -H "X-Forwarded-For: 10.9.9.9" \
        "http://127.0.0.1:${port[$name]}$path")
    if ! grep -q '^HTTP/1.1 200' <<<"$headers"; then
        echo "bench: floodgate ($name) did not answer 200:" >&2
        echo "$headers" >&2
        exit 1
    fi
    if [[ $name != none ]] && ! grep -qi '^ratelimit-policy:' <<<"$headers"; then
        echo "bench: floodgate ($name) answered without RateLimit headers" >&2
        exit 1
    fi
done

# The abuse runs' client is blocked from the start: the other runs never
# send from it, and every instance looks the block cache up either way.
for name in memory redis; do
    status=$(curl -s -o /dev/null -w '%{http_code}' -X POST \
        -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d "{\"target\": \"ip:$blocked_ip\", \"ttl\": \"1h\", \"reason\": \"bench abuse run\"}" \
        "http://127.0.0.1:${admin_port[$name]}/admin/blocks")
    [[ $status == 201 ]] || { echo "bench: the block was refused ($status)" >&2; exit 1; }
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Forwarded-For: $blocked_ip" \
        "http://127.0.0.1:${port[$name]}$path")
    [[ $status == 403 ]] || { echo "bench: the blocked client got $status, not 403" >&2; exit 1; }
done

# A run: the instance it loads, and the blocked client for the abuse runs.
runs=(none memory redis abuse-memory abuse-redis)
instance() { echo "${1#abuse-}"; }
abuser() { [[ $1 == abuse-* ]] && echo "$blocked_ip" || true; }
check_calls() { metric "$1" 'floodgate_store_call_duration_seconds_count{call="check"}'; }

echo "== machine: $(machine_load) at the start; floodgate $("$bin" --version | awk '{print $2}'), redis-server on :$REDIS_PORT"
echo "== load: wrk -t2 -c64 -d${duration}s --latency, $clients clients by X-Forwarded-For, GET $path;"
echo "   abuse-*: $blocked_ip (blocked through the admin API) sends 9 of every 10 requests"
declare -A checks requests
for round in $(seq "$rounds"); do
    for run in "${runs[@]}"; do
        name=$(instance "$run")
        # shellcheck disable=SC2046 # no blocked client: no argument
        ${BENCH_LOAD_CPUS:+taskset -c "$BENCH_LOAD_CPUS"} wrk -t2 -c64 -d2s -s bench/wrk/clients.lua \
            "http://127.0.0.1:${port[$name]}$path" -- "$clients" $(abuser "$run") >/dev/null
        before=$(check_calls "$name")
        # shellcheck disable=SC2046
        load "$run#$round" "$name" 2 64 "$duration" $(abuser "$run")
        checks[$run]=$((${checks[$run]:-0} + $(check_calls "$name") - before))
        requests[$run]=$((${requests[$run]:-0} + $(awk '/requests in/ { print $1 }' "$BENCH_TMP/wrk-$run#$round.txt")))
    done
done
# Paced: every connection pauses after each answer, so the load stays at
# about 64 * 1000 / (pace + latency) req/s, below what any instance serves
# at saturation; the latency is then the request's own, not a queue's.
pace_ms=${BENCH_PACE_MS:-10}
echo "== paced: 64 connections, each pausing ${pace_ms} ms after every answer"
export BENCH_PACE_MS=$pace_ms
for round in $(seq "$rounds"); do
    for name in "${names[@]}"; do
        load "$name~$round" "$name" 2 64 "$duration"
    done
done
unset BENCH_PACE_MS
echo "== one connection, 3 s each (latency without queueing)"
for name in "${names[@]}"; do
    load "$name@1" "$name" 1 1 3
done
# The floor under any store call's latency on this machine: a bare Redis
# round trip, one connection, nothing else running.
echo "== Redis round trip: redis-benchmark PING, one connection, 10000 requests"
read -r rtt_p50 rtt_p99 < <(${BENCH_LOAD_CPUS:+taskset -c "$BENCH_LOAD_CPUS"} \
    redis-benchmark -p "$REDIS_PORT" -c 1 -n 10000 -t ping_mbulk 2>&1 | tr '\r' '\n' |
    awk '/latency summary/ { getline; getline; print $3, $5 }') || true
echo "== machine: $(machine_load) at the end"

# The mean over rounds of a figure.
mean() {
    local -n figure=$1
    local name=$2 r
    for r in $(seq "$rounds"); do echo "${figure[$name#$r]}"; done |
        awk '{ s += $1 } END { printf "%.3f", s / NR }'
}
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f%%", b ? 100 * a / b : 0 }'; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

declare -A mrps mp50 mp99 mcpu mrcpu mwcpu
for run in "${runs[@]}"; do
    mrps[$run]=$(mean rps "$run")
    mp50[$run]=$(mean p50 "$run")
    mp99[$run]=$(mean p99 "$run")
    mcpu[$run]=$(mean cpu "$run")
    mrcpu[$run]=$(mean redis_cpu "$run")
    mwcpu[$run]=$(mean wrk_cpu "$run")
done

echo
echo "Gateway: GET $path from $clients clients, wrk -t2 -c64, mean of $rounds x ${duration}s"
printf '%-12s %8s %8s %8s %8s %10s %8s %8s %8s %11s\n' "" "req/s" "vs none" "p50 ms" "p99 ms" \
    "p99 added" "fg µs" "redis µs" "wrk µs" "1-conn p99"
for run in "${runs[@]}"; do
    printf '%-12s %8.0f %8s %8.3f %8.3f %10s %8.1f %8.1f %8.1f %11s\n' "$run" "${mrps[$run]}" \
        "$(pct "${mrps[$run]}" "${mrps[none]}")" "${mp50[$run]}" "${mp99[$run]}" \
        "$(minus "${mp99[$run]}" "${mp99[none]}")" "${mcpu[$run]}" "${mrcpu[$run]}" \
        "${mwcpu[$run]}" "${p99[$run@1]:--}"
done
echo "(fg, redis, wrk µs: CPU time each used per request; 1-conn p99: ms, one"
echo " connection for 3 s, no queueing)"
echo "Redis round trip (PING, one connection): p50 ${rtt_p50:-?} ms, p99 ${rtt_p99:-?} ms"
for run in abuse-memory abuse-redis; do
    refused=0
    for r in $(seq "$rounds"); do refused=$((refused + ${non2xx[$run#$r]})); done
    echo "$run: $refused of ${requests[$run]} requests refused by the block cache; ${checks[$run]} store checks"
done
echo
# ratio RUN BASE: RUN's throughput over BASE's in each round.
ratio() {
    local r
    for r in $(seq "$rounds"); do
        echo -n "$(pct "${rps[$1#$r]}" "${rps[$2#$r]}") "
    done
}
# median_ratio RUN BASE: the median over rounds of RUN's throughput over
# BASE's in the same round. Each round's runs follow each other within a
# minute, so a median of per-round ratios shrugs off a round the machine
# slowed down in, where the mean of req/s over rounds does not.
median_ratio() {
    local r
    for r in $(seq "$rounds"); do
        awk -v a="${rps[$1#$r]}" -v b="${rps[$2#$r]}" 'BEGIN { printf "%.4f\n", b ? a / b : 0 }'
    done | sort -n | awk '{ v[NR] = $1 } END {
        m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%.1f%%", 100 * m }'
}
# median_of FIGURE RUN SEP: the median over rounds of FIGURE for RUN, its
# labels RUN<SEP><round>.
median_of() {
    local -n figure=$1
    local r
    for r in $(seq "$rounds"); do echo "${figure[$2$3$r]}"; done | sort -g |
        awk '{ v[NR] = $1 } END { printf "%.3f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
echo "paced (64 connections, ${pace_ms} ms pause), medians over rounds:"
for name in "${names[@]}"; do
    printf '   %-8s %7.0f req/s  p50 %6.3f ms  p99 %7.3f ms  p99 added %7.3f ms\n' "$name" \
        "$(median_of rps "$name" "~")" "$(median_of p50 "$name" "~")" "$(median_of p99 "$name" "~")" \
        "$(minus "$(median_of p99 "$name" "~")" "$(median_of p99 none "~")")"
done
echo
# The ceiling that the machine puts on redis/none: the ratio if floodgate's
# Redis path cost it no more CPU per request than its no-rule path, with
# redis-server and wrk using what they did in the Redis runs. Every CPU
# the machine has runs floodgate, wrk and Redis alike, so throughput is
# the busy CPU time over the CPU time per request. First with the machine
# as busy as in the no-rule runs, then as idle as in the Redis runs. Not
# when pinned: then floodgate does not share its CPUs.
mean_idle() {
    local r
    for r in $(seq "$rounds"); do echo "${idle[$1#$r]%\%}"; done | awk '{ s += $1 } END { printf "%.3f", s / NR }'
}
if [[ -z ${BENCH_FLOODGATE_CPUS:-}${BENCH_LOAD_CPUS:-} ]]; then
    ceiling=$(awk -v fg="${mcpu[none]}" -v rn="${mrcpu[none]}" -v wn="${mwcpu[none]}" \
        -v rr="${mrcpu[redis]}" -v wr="${mwcpu[redis]}" \
        -v idle_n="$(mean_idle none)" -v idle_r="$(mean_idle redis)" 'BEGIN {
            t_none = fg + rn + wn; t_best = fg + rr + wr
            printf "%.1f%% (%.1f%% at the Redis runs'"'"' idle time)", 100 * t_none / t_best,
                100 * t_none / t_best * (100 - idle_r) / (100 - idle_n) }')
    echo "redis/none ceiling on this machine: $ceiling: the ratio if floodgate's"
    echo "   Redis path cost it no more CPU than its no-rule path, redis-server and wrk"
    printf "   costing what they did (%.1f and %.1f µs per request)\n" "${mrcpu[redis]}" "${mwcpu[redis]}"
fi
echo
echo "per round: memory/none $(ratio memory none)| redis/none $(ratio redis none)|"
echo "           abuse-memory/memory $(ratio abuse-memory memory)| abuse-redis/memory $(ratio abuse-redis memory)"
echo "median of the rounds: memory/none $(median_ratio memory none) | redis/none $(median_ratio redis none) |"
echo "           abuse-memory/memory $(median_ratio abuse-memory memory) | abuse-redis/memory $(median_ratio abuse-redis memory)"
echo
add_mem=$(minus "${mp99[memory]}" "${mp99[none]}")
add_redis=$(minus "${mp99[redis]}" "${mp99[none]}")
echo "memory >= 85% of none:        $(pct "${mrps[memory]}" "${mrps[none]}")  $(verdict "${mrps[memory]} >= 0.85 * ${mrps[none]}")"
echo "redis  >= 60% of none:        $(pct "${mrps[redis]}" "${mrps[none]}")  $(verdict "${mrps[redis]} >= 0.60 * ${mrps[none]}")"
echo "p99 added, memory < 1 ms:     $add_mem ms  $(verdict "$add_mem < 1")"
echo "p99 added, redis  < 1 ms:     $add_redis ms  $(verdict "$add_redis < 1")"
for run in abuse-memory abuse-redis; do
    echo "$run >= memory:   $(pct "${mrps[$run]}" "${mrps[memory]}")  $(verdict "${mrps[$run]} >= ${mrps[memory]}")"
done
for label in "${!non2xx[@]}"; do
    if [[ $label != abuse-* && ${non2xx[$label]} != 0 ]]; then
        echo "warning: $label had ${non2xx[$label]} non-2xx answers: not a clean run" >&2
    fi
done
