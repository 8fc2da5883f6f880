-- peek.lua: what a check of (rule, key) would find now, recording nothing
-- (Store::peek; MemoryStore's peek_state).
--
-- Runs after common.lua and limits.lua (prepended by the Rust side).
--
-- KEYS:
--   KEYS[1]  the counting state of (rule, key)
--   KEYS[2]  the penalty block of (rule, key)
-- ARGV:
--   ARGV[1]  now (µs since the epoch), or "" to use Redis' TIME
--   ARGV[2]  unused (the TTL margin of check.lua; nothing is written here)
--   ARGV[3..9]  algorithm, limit, window_us, burst, emission_us, block_for_us,
--               max_delay_us
-- Returns 6 integers, as check.lua does for one check:
--   allowed (1 when quota is left), remaining, reset_after_us,
--   retry_after_us (-1 for none; when nothing is left, when one unit fits
--   again), blocked (1/0), 0

local function main()
  local now = read_now(ARGV[1])
  local p = read_policy(3)
  local a, b, c = load_state(KEYS[1], p)
  return peek_decision(p, now, blocked_until(KEYS[2]), a, b, c)
end
