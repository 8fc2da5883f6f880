-- top.lua: top-clients summaries, one per instance (Store::put_top,
-- top_summaries; MemoryStore keeps them in a map).
--
-- Runs after common.lua (prepended by the Rust side).
--
-- KEYS (one hash slot, the {top} tag):
--   KEYS[1]  the summaries, a hash: field the instance's name, value its
--            summary (floodgate_core::TopSummary::encode, opaque here)
--   KEYS[2]  the expiry index, a sorted set: instance, scored by when its
--            summary expires (µs)
-- ARGV:
--   ARGV[1]  now (µs since the epoch), or "" to use Redis' TIME
--   ARGV[2]  the operation:
--     "put"   ARGV[3] instance, ARGV[4] summary, ARGV[5] time to live
--             (µs, at least 1) → 1
--     "list"  → the summaries that have not expired, by instance name;
--             writes nothing
-- A put drops the summaries expired by now, and gives both keys the time
-- to live of the latest expiry: once every instance has stopped
-- publishing, nothing is left.

local function main()
  local now = read_now(ARGV[1])
  local op = ARGV[2]
  if op == 'put' then
    local instance, summary, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5])
    if not ttl or ttl < 1 then
      error('floodgate: top.lua put: bad time to live ' .. tostring(ARGV[5]))
    end
    local expired = call('ZRANGEBYSCORE', KEYS[2], '-inf', int(now))
    for _, gone in ipairs(expired) do
      call('HDEL', KEYS[1], gone)
      call('ZREM', KEYS[2], gone)
    end
    call('HSET', KEYS[1], instance, summary)
    call('ZADD', KEYS[2], int(now + ttl), instance)
    -- The latest expiry (ZRANGEBYSCORE, one of the commands floodgate's
    -- ACL already allows: an index of one member per instance).
    local live = call('ZRANGEBYSCORE', KEYS[2], '-inf', '+inf', 'WITHSCORES')
    local live_ms = ceil((tonumber(live[#live]) - now) / 1000) + 1
    call('PEXPIRE', KEYS[1], int(live_ms))
    call('PEXPIRE', KEYS[2], int(live_ms))
    return 1
  elseif op == 'list' then
    local live = call('ZRANGEBYSCORE', KEYS[2], '(' .. int(now), '+inf')
    table.sort(live)
    local reply = {}
    for first = 1, #live, 1000 do
      local last = min(first + 999, #live)
      local values = call('HMGET', KEYS[1], unpack(live, first, last))
      for i = 1, last - first + 1 do
        if values[i] then
          reply[#reply + 1] = values[i]
        end
      end
    end
    return reply
  end
  error('floodgate: top.lua: unknown operation ' .. tostring(op))
end
