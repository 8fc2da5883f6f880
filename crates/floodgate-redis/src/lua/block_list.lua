-- block_list.lua: every block in force (Store::blocks); drops ended ones.
--
-- Runs after common.lua and registry.lua (prepended by the Rust side).
--
-- KEYS:
--   KEYS[1]  the registry hash, <prefix>:blocks
-- ARGV:
--   ARGV[1]  now (µs since the epoch), or "" to use Redis' TIME
-- Returns a flat array: field, value, field, value, ... of the blocks in force.

local now = read_now(ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  if value_until(all[i + 1]) > now then
    live[#live + 1] = all[i]
    live[#live + 1] = all[i + 1]
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return live
