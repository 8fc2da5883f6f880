-- block_list.lua: every block in force (Store::blocks); drops ended ones
-- that can no longer come back.
--
-- Runs after common.lua and registry.lua (prepended by the Rust side).
--
-- KEYS:
--   KEYS[1]  the registry hash, <prefix>:blocks
-- ARGV:
--   ARGV[1]  now (µs since the epoch), or "" to use Redis' TIME
--   ARGV[2]  TTL margin (ms), as every key gets
-- Returns a flat array: field, value, field, value, ... of the blocks in force.
--
-- Like MemoryStore: an ended manual block is dropped when a listing finds
-- it ended. A penalty block lives in its rule's key, which keeps refusing
-- while `now` is before its end: after the clock steps back, an ended
-- penalty is in force again. Its entry therefore stays (unlisted) as long
-- as that key can: until its end plus the margin.

local function main()
  local now = read_now(ARGV[1])
  local margin_us = tonumber(ARGV[2]) * 1000
  local all = redis.call('HGETALL', KEYS[1])
  local live = {}
  for i = 1, #all, 2 do
    local until_us = value_until(all[i + 1])
    if until_us > now then
      live[#live + 1] = all[i]
      live[#live + 1] = all[i + 1]
    else
      local _, source = split_field(all[i])
      if source == 'manual' or until_us + margin_us <= now then
        redis.call('HDEL', KEYS[1], all[i])
      end
    end
  end
  return live
end
