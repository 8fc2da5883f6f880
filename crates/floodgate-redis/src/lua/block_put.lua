-- block_put.lua: records a block in the registry (Store::add_block, and the
-- listing of a penalty block that check.lua started).
--
-- Runs after common.lua and registry.lua (prepended by the Rust side).
--
-- KEYS:
--   KEYS[1]  the registry hash, <prefix>:blocks
-- ARGV:
--   ARGV[1]  now (µs since the epoch), or "" to use Redis' TIME
--   ARGV[2]  TTL margin (ms)
--   ARGV[3]  field: <byte length of target>:<target><source>
--   ARGV[4]  until (µs); "" for now + ARGV[5]
--   ARGV[5]  ttl (µs), used when ARGV[4] is ""
--   ARGV[6]  reason
-- Returns until (µs). A block that has already ended is recorded too, as
-- MemoryStore keeps it: unlisted, and dropped by the next listing (after a
-- clock step back it is in force again in both stores).

local function main()
  local now = read_now(ARGV[1])
  local margin_ms = tonumber(ARGV[2])
  local until_us = tonumber(ARGV[4])
  if ARGV[4] == '' then
    until_us = now + tonumber(ARGV[5])
  end
  redis.call('HSET', KEYS[1], ARGV[3], int(until_us) .. ':' .. ARGV[6])
  local want = ttl_ms(until_us, now, margin_ms)
  if redis.call('PTTL', KEYS[1]) < want then
    redis.call('PEXPIRE', KEYS[1], int(want))
  end
  return until_us
end
