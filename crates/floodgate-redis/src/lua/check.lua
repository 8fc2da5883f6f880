-- check.lua: decides one request's batch of checks atomically (Store::check).
--
-- Runs after common.lua and limits.lua (prepended by the Rust side).
--
-- KEYS, per check i (1-based):
--   KEYS[2i-1]  the counting state of (rule, key)
--   KEYS[2i]    the penalty block of (rule, key)
--   (all keys of one identity share its {hash tag})
-- ARGV:
--   ARGV[1]     now (µs since the epoch), or "" to use Redis' TIME
--   ARGV[2]     TTL margin (ms) added to every key's expiry
--   then 8 per check, starting at ARGV[3 + 8(i-1)]:
--     algorithm, limit, window_us, burst, emission_us, block_for_us (0: none),
--     cost, shadow ("1" or "0")
-- Returns a flat array of 6 integers per check:
--   allowed (1/0), remaining, reset_after_us, retry_after_us (-1 when
--   allowed), blocked (1/0), block_until_us (a penalty block this call
--   started, else 0)
--
-- Like MemoryStore::check_now: every check is decided on the state as it was
-- before the call; costs are committed only when every non-shadow check
-- admits; a non-shadow refusal on a rule with block_for starts its penalty
-- block whether or not the batch is admitted.

local now = read_now(ARGV[1])
local margin_ms = tonumber(ARGV[2])
local n = #KEYS / 2
if #KEYS % 2 ~= 0 or #ARGV ~= 2 + 8 * n then
  error('floodgate: check.lua needs 2 keys and 8 arguments per check')
end

local checks = {}
local admit = true
for i = 1, n do
  local at = 3 + 8 * (i - 1)
  local c = {
    state_key = KEYS[2 * i - 1],
    block_key = KEYS[2 * i],
    policy = read_policy(at),
    cost = tonumber(ARGV[at + 6]),
    shadow = ARGV[at + 7] == '1',
  }
  local p = c.policy
  c.eval = evaluate(load_state(c.state_key, p), blocked_until(c.block_key), p, now, c.cost, c.shadow)
  if not (c.shadow or c.eval.allowed) then
    admit = false
  end
  checks[i] = c
end

local reply = {}
for i, c in ipairs(checks) do
  local d = c.eval
  -- KeyState::apply
  if admit and d.allowed then
    commit(c.state_key, c.policy, now, c.cost, margin_ms)
  end
  if d.block_until > 0 then
    redis.call('SET', c.block_key, int(d.block_until), 'PX', int(ttl_ms(d.block_until, now, margin_ms)))
  end
  local base = 6 * (i - 1)
  reply[base + 1] = d.allowed and 1 or 0
  reply[base + 2] = d.remaining
  reply[base + 3] = d.reset
  reply[base + 4] = d.retry or -1
  reply[base + 5] = d.blocked and 1 or 0
  reply[base + 6] = d.block_until
end
return reply
