-- check.lua: decides batches of checks, each batch atomically (Store::check).
--
-- Runs after common.lua and limits.lua (prepended by the Rust side).
--
-- KEYS, per check i (1-based, counted across every batch):
--   KEYS[2i-1]  the counting state of (rule, key)
--   KEYS[2i]    the penalty block of (rule, key)
--   (all keys of one identity share its {hash tag})
-- ARGV:
--   ARGV[1]     now (µs since the epoch), or "" to use Redis' TIME
--   ARGV[2]     TTL margin (ms) added to every key's expiry
--   ARGV[3]     optional: the number of checks in each batch, comma-separated
--               ("2,1,3"); absent, every check forms one batch
--   then 8 per check:
--     algorithm, limit, window_us, burst, emission_us, block_for_us (0: none),
--     cost, shadow ("1" or "0")
-- Returns a flat array of 6 integers per check:
--   allowed (1/0), remaining, reset_after_us, retry_after_us (-1 when
--   allowed), blocked (1/0), block_until_us (a penalty block this call
--   started, else 0)
--
-- Several batches in one call (several requests' decisions coalesced into one
-- round trip) are decided one after the other, each on the state the ones
-- before it left: exactly as if each were a call of its own.
--
-- Within a batch, like MemoryStore::check_now: every check is decided on the
-- state as it was before the batch; costs are committed only when every
-- non-shadow check admits; a non-shadow refusal on a rule with block_for
-- starts its penalty block whether or not the batch is admitted.

local now = read_now(ARGV[1])
local margin_ms = tonumber(ARGV[2])
local n = #KEYS / 2
local sizes, at
if #KEYS % 2 == 0 and #ARGV == 2 + 8 * n then
  sizes, at = { n }, 3
elseif #KEYS % 2 == 0 and #ARGV == 3 + 8 * n then
  sizes, at = {}, 4
  local total = 0
  for size in string.gmatch(ARGV[3], '[^,]+') do
    local k = tonumber(size)
    if not k or k < 1 or k % 1 ~= 0 then
      error('floodgate: check.lua batch sizes must be positive integers, got ' .. ARGV[3])
    end
    sizes[#sizes + 1] = k
    total = total + k
  end
  if total ~= n then
    error('floodgate: check.lua batch sizes add up to ' .. total .. ', not ' .. n)
  end
else
  error('floodgate: check.lua needs 2 keys and 8 arguments per check')
end

-- The string values this call has read or written, by key: false for a key
-- that holds none (absent, or a sliding log's list); nil when not read yet.
-- Later batches read what earlier ones wrote without asking Redis again.
local values = {}

-- Reads a check's two keys with one MGET, unless known already.
local function read_pair(state_key, block_key)
  if values[state_key] == nil or values[block_key] == nil then
    local v = redis.call('MGET', state_key, block_key)
    if values[state_key] == nil then
      values[state_key] = v[1]
    end
    if values[block_key] == nil then
      values[block_key] = v[2]
    end
  end
end

-- The counting state of a check's key as this call has left it.
local function state_of(key, p)
  if p.algorithm == 'sliding_log' then
    return load_state(key, p)
  end
  return decode_state(values[key], p)
end

local reply = {}
local done = 0
for _, size in ipairs(sizes) do
  local batch = {}
  local admit = true
  for j = 1, size do
    local i = done + j
    local c = {
      state_key = KEYS[2 * i - 1],
      block_key = KEYS[2 * i],
      policy = read_policy(at),
      cost = tonumber(ARGV[at + 6]),
      shadow = ARGV[at + 7] == '1',
    }
    at = at + 8
    local p = c.policy
    read_pair(c.state_key, c.block_key)
    local until_us = tonumber(values[c.block_key]) or 0
    c.eval = evaluate(state_of(c.state_key, p), until_us, p, now, c.cost, c.shadow)
    if not (c.shadow or c.eval.allowed) then
      admit = false
    end
    batch[j] = c
  end

  for j, c in ipairs(batch) do
    local d = c.eval
    -- KeyState::apply, on the state as it is now (a check earlier in the
    -- batch may have committed to the same key).
    if admit and d.allowed then
      values[c.state_key] = commit(c.state_key, state_of(c.state_key, c.policy), c.policy, now, c.cost, margin_ms)
    end
    if d.block_until > 0 then
      local v = int(d.block_until)
      redis.call('SET', c.block_key, v, 'PX', int(ttl_ms(d.block_until, now, margin_ms)))
      values[c.block_key] = v
    end
    local base = 6 * (done + j - 1)
    reply[base + 1] = d.allowed and 1 or 0
    reply[base + 2] = d.remaining
    reply[base + 3] = d.reset
    reply[base + 4] = d.retry or -1
    reply[base + 5] = d.blocked and 1 or 0
    reply[base + 6] = d.block_until
  end
  done = done + size
end
return reply
