#!/usr/bin/env bash
# A coverage-guided run of one floodgate fuzz target (crates/floodgate-fuzz)
# under AFL++, through afl.rs; see fuzz/README.md.
#
#   fuzz/run.sh config            # one hour
#   fuzz/run.sh identity 600      # ten minutes
#   fuzz/run.sh lua 3600          # starts a redis-server of its own
#
# Needs cargo-afl (`cargo install cargo-afl`, which builds AFL++ from the
# source in the crate: a C compiler and make). Builds the instrumented
# harness into target/afl, keeps the run in target/fuzz/<target>/ (a later
# run of the same target resumes it), and prints AFL++'s figures at the end:
# inputs run and per second, corpus entries, edges covered, crashes. Exits
# 1 when the run saved a crash; `floodgate-fuzz replay <target> <file>`
# explains one.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:?usage: fuzz/run.sh <config|identity|api|lua> [seconds]}
seconds=${2:-3600}
case $target in config|identity|api|lua) ;; *) echo "unknown target $target" >&2; exit 2 ;; esac

# An explicit --target keeps AFL++'s flags (instrumentation, opt-level 3,
# one codegen unit) off build scripts and proc macros, which then build as
# they always do.
host=$(rustc -vV | sed -n 's/^host: //p')
cargo afl build --release --locked -p floodgate-fuzz --features afl \
  --bin floodgate-fuzz-afl --target-dir target/afl --target "$host"
harness=target/afl/$host/release/floodgate-fuzz-afl

dir=target/fuzz/$target
mkdir -p "$dir/in"
# The engine's input is the grammar's choices: any bytes make an input.
# A few random strings start it; it keeps what reaches new code.
if [ -z "$(ls -A "$dir/in")" ]; then
  for i in 1 2 3 4 5 6 7 8; do head -c 512 /dev/urandom > "$dir/in/random-$i"; done
fi

args=()
if [ "$target" = lua ]; then
  # The harness empties this server before every case; started here so
  # that no crash or timeout of the fuzzed process orphans it.
  port=$(( 20000 + RANDOM % 20000 ))
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --pidfile "$PWD/$dir/redis.pid" --dir "$PWD/$dir" >/dev/null
  trap 'kill "$(cat "$dir/redis.pid")" 2>/dev/null || true' EXIT
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  args=(--redis-url "redis://127.0.0.1:$port/0")
fi

# AFL_AUTORESUME: a second run continues the first's corpus. The machine
# is shared: no CPU binding, no CPU-governor or core-pattern demands.
status=0
AFL_AUTORESUME=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 \
AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 \
  cargo afl fuzz -i "$dir/in" -o "$dir/out" -V "$seconds" -t 2000 \
  -- "$harness" "$target" "${args[@]}" > "$dir/afl.log" 2>&1 || status=$?

stats=$dir/out/default/fuzzer_stats
if [ ! -f "$stats" ]; then
  tail -n 40 "$dir/afl.log" >&2
  exit 1
fi
echo "floodgate fuzz $target: AFL++ for ${seconds}s (exit $status), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
grep -E '^(run_time|execs_done|execs_per_sec|corpus_count|corpus_found|edges_found|total_edges|bitmap_cvg|stability|saved_crashes|saved_hangs) ' "$stats"
crashes=$(find "$dir/out/default/crashes" -type f -name 'id:*' 2>/dev/null | sort)
if [ -n "$crashes" ]; then
  echo "crashes (explain one with: cargo run -p floodgate-fuzz -- replay $target <file>):"
  echo "$crashes"
  exit 1
fi
