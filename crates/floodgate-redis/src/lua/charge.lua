-- charge.lua: records costs whatever the limits say (Store::charge;
-- MemoryStore::charge_now), for answers that count after a probe let
-- their request through.
--
-- Runs after common.lua and limits.lua (prepended by the Rust side).
--
-- KEYS, per charge i (1-based):
--   KEYS[2i-1]  the counting state of (rule, key)
--   KEYS[2i]    the penalty block of (rule, key) (read, never written)
-- ARGV:
--   ARGV[1]     now (µs since the epoch), or "" to use Redis' TIME
--   ARGV[2]     TTL margin (ms) added to every key's expiry
--   ARGV[3]     P, the number of policies
--   then 6 per policy: algorithm, limit, window_us, burst, emission_us,
--     block_for_us (unused)
--   then 2 per charge: its policy's number (1..P), cost
-- Returns 6 integers per charge, as peek.lua: what a peek finds right
-- after the charge.
--
-- Each charge is committed on the state as the ones before it left it (one
-- (rule, key) charged twice pays twice); none is refused and none starts a
-- penalty, so a counter may pass its limit.

local function main()
  local now = read_now(ARGV[1])
  local margin_ms = tonumber(ARGV[2])
  local np = tonumber(ARGV[3])
  local n = #KEYS / 2
  if #KEYS % 2 ~= 0 or not np or np < 0 or np % 1 ~= 0 or #ARGV ~= 3 + 6 * np + 2 * n then
    error('floodgate: charge.lua needs 2 keys and 2 arguments per charge and 6 per policy')
  end
  local policies = {}
  for j = 1, np do
    policies[tostring(j)] = read_policy(4 + 6 * (j - 1))
  end
  local reply = {}
  local at = 4 + 6 * np
  for i = 1, n do
    local p = policies[ARGV[at]]
    local cost = num(ARGV[at + 1])
    if not p or not cost or cost < 1 or cost % 1 ~= 0 then
      error('floodgate: charge.lua charge ' .. i .. ' names policy ' .. ARGV[at] .. ' with cost ' .. ARGV[at + 1])
    end
    local key = KEYS[2 * i - 1]
    local a, b, c = load_state(key, p)
    commit(key, p, now, cost, margin_ms, a, b, c)
    a, b, c = load_state(key, p)
    local decision = peek_decision(p, now, blocked_until(KEYS[2 * i]), a, b, c)
    for k = 1, 6 do
      reply[#reply + 1] = decision[k]
    end
    at = at + 2
  end
  return reply
end
