-- floodgate common helpers, prepended to every floodgate script.
--
-- Numbers: times are integer microseconds since the Unix epoch and counts are
-- integers, all held in Lua numbers (doubles) and exact below 2^53, which
-- floodgate-core's Policy guarantees.

-- Decimal text of an integer: tostring() would print 16-digit times as 1.7e+15.
local function int(n)
  return string.format('%.0f', n)
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
  return math.max(math.ceil(sat_sub(expires_at, now) / 1000) + margin_ms, 1)
end
