-- overrides.lua: per-key overrides (Store::put_override, remove_override,
-- override_changes; MemoryStore's OverrideBook).
--
-- Runs after common.lua (prepended by the Rust side).
--
-- KEYS (one hash slot):
--   KEYS[1]  the overrides, a hash: field <key length>:<key><rule>, value
--            <limit>:<window_us>:<burst>:<expires_us> (0: the rule's / none)
--   KEYS[2]  the change log, a sorted set: field, scored by the number of
--            its last change
--   KEYS[3]  the number of the last change
--   KEYS[4]  the expiry index, a sorted set: field, scored by its expiry
--   KEYS[5]  the epoch: the time (µs) of the first change this log
--            recorded; a reader that sees it change reads everything again
-- ARGV:
--   ARGV[1]  now (µs since the epoch), or "" to use Redis' TIME
--   ARGV[2]  the operation:
--     "put"      ARGV[3] field, ARGV[4] <limit>:<window_us>:<burst>:,
--                ARGV[5] time to live (µs, 0: none)
--                → the expiry stored (µs, 0: none)
--     "remove"   ARGV[3] field → 1 if there was an override, else 0
--     "changes"  ARGV[3] since, ARGV[4] max
--                → { version, reset (1/0), more (1/0), epoch (0 before any
--                change), then field, value (false when removed) per
--                change, oldest first }
-- A put or a removal then drops up to 100 overrides expired by now, each a
-- change of its own (as MemoryStore does). Nothing here has a TTL: the
-- overrides live until removed or expired, and the log keeps one member
-- per (rule, key) ever overridden.

local function record(field)
  local seq = call('INCR', KEYS[3])
  call('ZADD', KEYS[2], seq, field)
  return seq
end

local function purge(now)
  local expired = call('ZRANGEBYSCORE', KEYS[4], '-inf', int(now), 'LIMIT', 0, 100)
  for _, field in ipairs(expired) do
    call('HDEL', KEYS[1], field)
    call('ZREM', KEYS[4], field)
    record(field)
  end
end

-- Sets the epoch at the first write (OverrideBook::start_epoch).
local function start_epoch(now)
  if call('EXISTS', KEYS[5]) == 0 then
    call('SET', KEYS[5], int(max(now, 1)))
  end
end

local function main()
  local now = read_now(ARGV[1])
  local op = ARGV[2]
  if op == 'put' or op == 'remove' then
    start_epoch(now)
  end
  if op == 'put' then
    local field, ttl = ARGV[3], tonumber(ARGV[5])
    if not ttl or ttl < 0 then
      error('floodgate: overrides.lua put: bad time to live ' .. tostring(ARGV[5]))
    end
    local expires = 0
    if ttl > 0 then
      expires = now + ttl
    end
    -- A previous expiry goes with the previous value.
    call('ZREM', KEYS[4], field)
    record(field)
    call('HSET', KEYS[1], field, ARGV[4] .. int(expires))
    if expires > 0 then
      call('ZADD', KEYS[4], int(expires), field)
    end
    purge(now)
    return expires
  elseif op == 'remove' then
    local field = ARGV[3]
    local existed = call('HDEL', KEYS[1], field)
    if existed == 1 then
      call('ZREM', KEYS[4], field)
      record(field)
    end
    purge(now)
    return existed
  elseif op == 'changes' then
    local since, page_max = tonumber(ARGV[3]), tonumber(ARGV[4])
    local seq = tonumber(call('GET', KEYS[3]) or '0')
    local epoch = tonumber(call('GET', KEYS[5]) or '0')
    if since > seq then
      return { 0, 1, 1, epoch }
    end
    local page = call('ZRANGEBYSCORE', KEYS[2], '(' .. int(since), '+inf', 'WITHSCORES', 'LIMIT', 0, page_max)
    local reply = { since, 0, 0, epoch }
    if #page == 0 then
      return reply
    end
    local fields = {}
    for i = 1, #page, 2 do
      fields[#fields + 1] = page[i]
    end
    -- HMGET in slices: Lua's unpack takes a few thousand values at most.
    for first = 1, #fields, 1000 do
      local last = min(first + 999, #fields)
      local values = call('HMGET', KEYS[1], unpack(fields, first, last))
      for i = first, last do
        reply[#reply + 1] = fields[i]
        reply[#reply + 1] = values[i - first + 1]
      end
    end
    local version = tonumber(page[#page])
    reply[1] = version
    if version < seq then
      reply[3] = 1
    end
    return reply
  end
  error('floodgate: overrides.lua: unknown operation ' .. tostring(op))
end
