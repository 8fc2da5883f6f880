-- floodgate common helpers, prepended to every floodgate script.
--
-- Numbers: times are integer microseconds since the Unix epoch and counts are
-- integers, all held in Lua numbers (doubles) and exact below 2^53, which
-- floodgate-core's Policy guarantees.
--
-- Every script is loaded two ways (scripts.rs): as a Redis function library
-- (FUNCTION LOAD, called with FCALL), whose top level runs once, when it is
-- loaded, and may not touch Redis' API or Lua's libraries; and as an
-- EVALSHA script, whose top level runs on every call. So the top level only
-- defines functions and declares the locals below; each call starts with
-- `enter`, then runs the script's `main`.

-- The call's KEYS and ARGV, and redis.call, as locals: each use of a global
-- is a table lookup, and a call with many checks uses them hundreds of
-- times.
local KEYS, ARGV, call

-- Lua's math and string functions as locals: a global lookup and a table
-- index fewer per use, in code that runs for every check.
local floor, ceil, fmod, min, max
local byte, pack_struct, unpack_struct

-- The memos of `int` and `num`, new for every call.
local texts, numbers

-- Starts a call with keys `keys` and arguments `argv`.
local function enter(keys, argv)
  KEYS, ARGV, call = keys, argv, redis.call
  floor, ceil, fmod, min, max = math.floor, math.ceil, math.fmod, math.min, math.max
  byte, pack_struct, unpack_struct = string.byte, struct.pack, struct.unpack
  texts, numbers = {}, {}
end

-- Decimal text of an integer: tostring() would print 16-digit times as
-- 1.7e+15. '%d' formats a C long, exact for every integer floodgate stores,
-- and costs a third of '%.0f'. Memoised for the call: the checks of one call
-- mostly write the same window starts, TTLs and small counts.
local function int(n)
  local t = texts[n]
  if t == nil then
    t = string.format('%d', n)
    texts[n] = t
  end
  return t
end

-- tonumber(s), memoised for the call: Lua parses with the C library's
-- strtod, which costs as much as a Redis command; a call's checks mostly
-- read the same policy fields, window starts and small counts.
local function num(s)
  local v = numbers[s]
  if v == nil then
    v = tonumber(s)
    if v ~= nil then
      numbers[s] = v
    end
  end
  return v
end

-- u64::saturating_sub
local function sat_sub(a, b)
  if a > b then
    return a - b
  end
  return 0
end

-- `now` from ARGV (µs), or Redis' own clock when it is empty: every instance
-- then decides on the same time whatever its local clock says.
local function read_now(arg)
  if arg == '' then
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  return tonumber(arg)
end

-- Milliseconds a key must live for a state that stops mattering at
-- `expires_at`: rounded up, plus the configured margin, at least 1.
local function ttl_ms(expires_at, now, margin_ms)
  return max(ceil(sat_sub(expires_at, now) / 1000) + margin_ms, 1)
end
