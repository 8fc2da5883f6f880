# Shared by the scripts under bench/: tool checks, ports chosen at run time,
# throwaway redis-server processes, and cleanup of everything started.
#
# Source it, then call `bench_init`. Every process started through
# `bench_spawn` is killed (by its own pid) when the script exits.

# Processes to stop on exit, and the run's scratch directory.
BENCH_PIDS=()
BENCH_TMP=""

bench_init() {
    BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/floodgate-bench.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_cleanup() {
    local pid
    for pid in "${BENCH_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${BENCH_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    [[ -n $BENCH_TMP ]] && rm -rf "$BENCH_TMP"
}

# CPU pinning: BENCH_FLOODGATE_CPUS pins floodgate, BENCH_LOAD_CPUS the load
# generator and redis-server, each to the CPUs listed (taskset's syntax,
# "2,3" or "2-3"); unset, the kernel places them. On a machine with cores
# to spare, floodgate then has its own. A command is pinned by putting
# ${BENCH_LOAD_CPUS:+taskset -c "$BENCH_LOAD_CPUS"} before it (taskset
# execs it: the pid stays the command's).

# need TOOL PACKAGE: stop with install instructions when TOOL is missing.
need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "bench: '$1' not found. Install it with: sudo apt-get install $2" >&2
        exit 1
    fi
}

# A loopback TCP port nothing answers on right now. Another process may take
# it first: callers retry with a new port when binding fails.
free_port() {
    local port _
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    echo "bench: no free port found" >&2
    return 1
}

# bench_spawn LOG CMD...: starts CMD in the background, output to LOG;
# sets BENCH_LAST_PID.
bench_spawn() {
    local log=$1
    shift
    "$@" >"$log" 2>&1 &
    BENCH_LAST_PID=$!
    BENCH_PIDS+=("$BENCH_LAST_PID")
}

# wait_until SECONDS CMD...: polls CMD every 50 ms until it succeeds.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.05
    done
}

# retry_start FUNCTION ARGS...: runs FUNCTION (which picks free ports,
# starts a process with bench_spawn and waits until it answers) up to five
# times, killing what a failed attempt started: another process may have
# taken a port between free_port and the bind.
retry_start() {
    local attempt
    for attempt in 1 2 3 4 5; do
        "$@" && return 0
        kill "$BENCH_LAST_PID" 2>/dev/null || true
    done
    return 1
}

# start_redis: a redis-server of the run's own on a free loopback port, no
# persistence. Sets REDIS_PORT and REDIS_PID.
start_redis() {
    if ! retry_start try_start_redis; then
        echo "bench: redis-server did not start; its log:" >&2
        cat "$BENCH_TMP"/redis-*.log >&2
        return 1
    fi
}

try_start_redis() {
    local port
    port=$(free_port)
    bench_spawn "$BENCH_TMP/redis-$port.log" ${BENCH_LOAD_CPUS:+taskset -c "$BENCH_LOAD_CPUS"} redis-server --bind 127.0.0.1 \
        --port "$port" --save "" --appendonly no --dir "$BENCH_TMP"
    wait_until 5 redis_ping "$port" || return 1
    REDIS_PORT=$port
    REDIS_PID=$BENCH_LAST_PID
}

redis_ping() {
    [[ $(redis-cli -p "$1" PING 2>/dev/null) == PONG ]]
}

# The load average over the last minute, and the number of CPUs.
machine_load() {
    echo "$(cut -d' ' -f1 /proc/loadavg) (1-min load average) on $(nproc) CPUs"
}

# build_floodgate: builds the release binary (into $CARGO_TARGET_DIR) and
# sets $bin to it.
build_floodgate() {
    echo "== building floodgate (release)"
    cargo build -q --release -p floodgate-server
    bin=$CARGO_TARGET_DIR/release/floodgate
}

# gateway_config NAME LISTEN ADMIN: the config of the gateway benchmarks'
# set-up NAME: "none" (no rules), "memory" (one sliding_window rule keyed by
# ip, a limit no run reaches, on the memory store), "redis" (the same rule
# on the redis-server at $REDIS_PORT) or "batched" (the same on Redis with
# consistency = "batched"); the admin token is $token, if any.
gateway_config() {
    local name=$1 listen=$2 admin=$3
    cat <<TOML
[server]
listen = "127.0.0.1:$listen"
trusted_proxies = ["127.0.0.1/32"]

[admin]
listen = "127.0.0.1:$admin"
TOML
    if [[ -n ${token:-} ]]; then
        echo "token = \"$token\""
    fi
    cat <<TOML

[store]
TOML
    if [[ $name == redis || $name == batched ]]; then
        echo "backend = \"redis\""
        echo "url = \"redis://127.0.0.1:$REDIS_PORT/0\""
    else
        echo "backend = \"memory\""
    fi
    if [[ $name != none ]]; then
        cat <<TOML

[[rule]]
name = "bench"
key = "ip"
algorithm = "sliding_window"
limit = 1000000000
window = "1m"
TOML
    fi
    if [[ $name == batched ]]; then
        echo 'consistency = "batched"'
    fi
}

# Floodgate instances. The calling script defines `config NAME LISTEN ADMIN`
# (prints the instance's TOML) and sets $bin to the binary.
declare -A port admin_port pid
# start_floodgate NAME: an instance on free ports; sets port[NAME],
# admin_port[NAME] and pid[NAME].
start_floodgate() {
    if ! retry_start try_start_floodgate "$1"; then
        echo "bench: floodgate ($1) did not start; its log:" >&2
        cat "$BENCH_TMP/$1.log" >&2
        exit 1
    fi
}

try_start_floodgate() {
    local name=$1 listen admin
    listen=$(free_port)
    admin=$(free_port)
    config "$name" "$listen" "$admin" >"$BENCH_TMP/$name.toml"
    FLOODGATE_LOG=warn bench_spawn "$BENCH_TMP/$name.log" \
        ${BENCH_FLOODGATE_CPUS:+taskset -c "$BENCH_FLOODGATE_CPUS"} "$bin" serve --config "$BENCH_TMP/$name.toml"
    wait_until 10 curl -sf "http://127.0.0.1:$admin/healthz" || return 1
    port[$name]=$listen
    admin_port[$name]=$admin
    pid[$name]=$BENCH_LAST_PID
}

# verdict CONDITION: "met" when the awk condition holds, else "MISSED".
verdict() { if awk "BEGIN { exit !($1) }"; then echo met; else echo MISSED; fi; }

# The machine and its load average: other processes on the same cores skew
# every figure, the paired ratios least.
machine() {
  printf 'machine: %s cores, %s, load average %s\n' "$(nproc)" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
}

# redis_cargo_bench PACKAGE BENCH: `cargo bench -p PACKAGE --bench BENCH`,
# a bench that starts its own redis-server (unless
# FLOODGATE_BENCH_REDIS_URL is set), between two readings of the machine's
# load.
redis_cargo_bench() {
    need redis-server redis-server
    need cargo "cargo (https://rustup.rs)"
    machine
    cargo bench -p "$1" --bench "$2"
    machine
}
