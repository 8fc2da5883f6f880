#!/usr/bin/env bash
# Runs every floodgate fuzz target (crates/floodgate-fuzz) for a million
# inputs each, in release mode, and prints per target the inputs run, the
# failures (panics or broken invariants: must be 0) and the seconds taken.
# Exits non-zero when any target failed or crashed.
#
#   fuzz/run.sh                      # 1,000,000 inputs per target, fresh seed
#   ITERATIONS=50000 fuzz/run.sh     # a shorter run
#   SEED=0x1234 fuzz/run.sh lua      # one target, a given seed (repeatable)
#
# The lua target starts its own redis-server (it must be installed:
# apt-get install redis-server). Each target runs in its own process, so an
# abort (a stack overflow, say) ends only that target's run and is reported.
set -uo pipefail
cd "$(dirname "$0")/.."

iterations=${ITERATIONS:-1000000}
seed=${SEED:-$(( $(date +%s%N) & 0x7fffffffffffffff ))}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config identity api lua)

cargo build --release --locked -p floodgate-fuzz || exit 1
bin="${CARGO_TARGET_DIR:-target}/release/floodgate-fuzz"

echo "floodgate fuzz: ${iterations} inputs per target, seed ${seed}, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
summary=()
status=0
for target in "${targets[@]}"; do
  out=$(mktemp)
  RUST_BACKTRACE=0 "$bin" "$target" --iterations "$iterations" --seed "$seed" 2> >(tail -n 200 >&2) | tee "$out"
  code=${PIPESTATUS[0]}
  row=$(grep -E "^${target} " "$out" || true)
  if [ -z "$row" ]; then
    row=$(printf '%-9s crashed (exit %s) before reporting; rerun with SEED=%s' "$target" "$code" "$seed")
    status=1
  elif [ "$code" -ne 0 ]; then
    status=1
  fi
  summary+=("$row")
  rm -f "$out"
done

echo
echo "summary (seed ${seed}):"
printf '%-9s %11s %9s %7s %9s\n' target iterations cases panics seconds
printf '%s\n' "${summary[@]}"
exit $status
