-- block_remove.lua: lifts every block of one target (Store::remove_block).
--
-- Runs after common.lua and registry.lua (prepended by the Rust side).
--
-- KEYS:
--   KEYS[1]  the registry hash, <prefix>:blocks
-- ARGV:
--   ARGV[1]  now (µs since the epoch), or "" to use Redis' TIME
--   ARGV[2]  target
-- Returns { lifted, source, source, ... }: lifted is "1" when a block of the
-- target was still in force, and the sources are the rules whose penalty
-- blocks of the target were lifted, so the caller can clear those rules'
-- penalty keys (which live in the target's hash slot, not the registry's).
--
-- As MemoryStore does: the manual block is removed whether or not it has
-- ended; a penalty is lifted only while in force. An ended penalty stays as
-- it is (unlisted): after a clock step back it is in force again in both
-- stores.

local function main()
  local now = read_now(ARGV[1])
  local target = ARGV[2]
  local all = redis.call('HGETALL', KEYS[1])
  local reply = { '0' }
  for i = 1, #all, 2 do
    local t, source = split_field(all[i])
    if t == target then
      local in_force = value_until(all[i + 1]) > now
      if in_force then
        reply[1] = '1'
      end
      if source == 'manual' then
        redis.call('HDEL', KEYS[1], all[i])
      elseif in_force then
        redis.call('HDEL', KEYS[1], all[i])
        reply[#reply + 1] = source
      end
    end
  end
  return reply
end
