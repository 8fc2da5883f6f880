-- slots.lua: concurrency limits (Store::acquire, release, renew;
-- MemoryStore's SlotBook).
--
-- Runs after common.lua (prepended by the Rust side).
--
-- KEYS, per slot i: the held slots of (rule, key), a sorted set: the
--   requests' ids, scored by the end of their lease (µs). Every key of a
--   call shares its client key's hash slot.
-- ARGV:
--   ARGV[1]  now (µs since the epoch), or "" to use Redis' TIME
--   ARGV[2]  TTL margin (ms) added to every key's expiry
--   ARGV[3]  the operation: "acquire", "release" or "renew"
--   then 3 per slot: limit, lease (µs), the request's id
-- Returns, per slot, for "acquire": allowed (1/0), in flight after the
-- call; for "renew": 1 if the slot was still held, else 0; for "release":
-- nothing.
--
-- Lapsed slots are dropped before anything is counted. A key lives until
-- its newest lease ends (plus the margin): never a slot without a TTL.

-- Drops the lapsed slots of `key`; how many are left.
local function live(key, now)
  call('ZREMRANGEBYSCORE', key, '-inf', int(now))
  return call('ZCARD', key)
end

-- Takes (or renews) slot `id` of `key` until `until_us`, and keeps the
-- key until then: every slot of a key has the same lease (its rule's), so
-- the slot taken now ends last.
local function hold(key, id, until_us, now, margin_ms)
  call('ZADD', key, int(until_us), id)
  call('PEXPIRE', key, int(ttl_ms(until_us, now, margin_ms)))
end

local function main()
  local now = read_now(ARGV[1])
  local margin_ms = tonumber(ARGV[2])
  local op = ARGV[3]
  if #ARGV ~= 3 + 3 * #KEYS then
    error('floodgate: slots.lua needs 3 arguments per slot')
  end
  local reply = {}
  if op == 'acquire' then
    local counts, admit = {}, true
    for i = 1, #KEYS do
      counts[i] = live(KEYS[i], now)
      if counts[i] >= tonumber(ARGV[1 + 3 * i]) then
        admit = false
      end
    end
    for i = 1, #KEYS do
      local n = counts[i]
      if admit then
        local id = ARGV[3 + 3 * i]
        n = n + call('ZADD', KEYS[i], int(now + tonumber(ARGV[2 + 3 * i])), id)
        call('PEXPIRE', KEYS[i], int(ttl_ms(now + tonumber(ARGV[2 + 3 * i]), now, margin_ms)))
      end
      reply[#reply + 1] = admit and 1 or 0
      reply[#reply + 1] = n
    end
  elseif op == 'release' then
    for i = 1, #KEYS do
      call('ZREM', KEYS[i], ARGV[3 + 3 * i])
    end
  elseif op == 'renew' then
    for i = 1, #KEYS do
      live(KEYS[i], now)
      local id = ARGV[3 + 3 * i]
      local held = call('ZSCORE', KEYS[i], id)
      if held then
        hold(KEYS[i], id, now + tonumber(ARGV[2 + 3 * i]), now, margin_ms)
        reply[#reply + 1] = 1
      else
        reply[#reply + 1] = 0
      end
    end
  else
    error('floodgate: slots.lua: unknown operation ' .. tostring(op))
  end
  return reply
end
