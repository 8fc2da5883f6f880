-- floodgate limits: the arithmetic of floodgate-core's `src/algorithm/*.rs`,
-- line for line, so the Redis and memory stores decide identically.
--
-- Not a script on its own: prepended (after common.lua) to check.lua and
-- peek.lua.
--
-- The sliding window weighting is done in doubles in the same order of
-- operations as the Rust code, so it rounds the same way.
--
-- Policy table `p` (parsed from ARGV by read_policy):
--   algorithm  fixed_window | sliding_window | sliding_log | token_bucket
--   limit      cost units per window
--   window     window length (µs)
--   burst      token_bucket capacity
--   emission   token_bucket: µs per cost unit (window / limit, rounded up)
--   block_for  penalty block length (µs), 0 for none; a ladder's first step
--   ladder     a block ladder's steps (µs), nil for none or a single step;
--              sent as "step,step,..."
--   memory     how long an offence is remembered after its block ends (µs):
--              a ladder's last step, else 0
--   max_delay  token_bucket: how far in the future a request may take its
--              place, held until then (µs); 0 for none
--
-- State encodings (one key per (rule, key)): a tag byte, then the state's
-- numbers as little-endian doubles (Redis' `struct` library), exact for
-- every integer floodgate stores (below 2^53). Read without parsing text:
-- unpacking costs Lua a fraction of matching and converting decimal text,
-- which made a sixth of Redis' work per check.
--   fixed_window    string  'F' window_start count           (17 bytes)
--   sliding_window  string  'S' window_start previous current (25 bytes)
--   token_bucket    string  'T' tat                           (9 bytes)
--   sliding_log     list    one timestamp per admitted cost unit, oldest first
-- The decimal text states of earlier versions (f<start>:<count>,
-- s<start>:<previous>:<current>, t<tat>) are still read, and replaced by the
-- packed form on their next commit.
-- A state of another algorithm than the policy's (a reload changed the rule)
-- counts as empty and is replaced on the next commit.
-- Penalty key: string <blocked_until>, or <blocked_until>:<offences> under a
-- block ladder (Penalty in algorithm/mod.rs: how many offences in a row the
-- block answers, up to 255).
--
-- A decoded state travels as three values `a, b, c` (no table: the checks of
-- a call would each allocate one), `a == nil` meaning none:
--   fixed_window    start, count
--   sliding_window  start, previous, current
--   token_bucket    tat
--   sliding_log     number of entries, the list's key

-- The tag bytes of the packed states: 'F', 'S', 'T'.
local TAG_FIXED, TAG_SLIDING, TAG_TOKEN = 70, 83, 84

-- Integer division, exact for operands below 2^53.
local function floor_div(a, b)
  local q = floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

-- The policy whose seven fields start at ARGV[at].
local function read_policy(at)
  local p = {
    algorithm = ARGV[at],
    limit = num(ARGV[at + 1]),
    window = num(ARGV[at + 2]),
    burst = num(ARGV[at + 3]),
    emission = num(ARGV[at + 4]),
    block_for = num(ARGV[at + 5]),
    memory = 0,
    max_delay = num(ARGV[at + 6]),
  }
  if not p.block_for then
    local ladder = {}
    for step in string.gmatch(ARGV[at + 5], '[^,]+') do
      ladder[#ladder + 1] = num(step) or -1
    end
    if #ladder > 1 and min(unpack(ladder)) > 0 then
      p.ladder, p.block_for, p.memory = ladder, ladder[1], ladder[#ladder]
    end
  end
  if not (p.limit and p.window and p.burst and p.emission and p.block_for and p.max_delay) then
    error('floodgate: malformed policy arguments at ARGV[' .. at .. ']')
  end
  return p
end

-- The counting state (a, b, c) a string value `v` encodes for policy `p`
-- (not sliding_log); nil when `v` is not a string (absent: false) or encodes
-- another algorithm's state.
local function decode_state(v, p)
  if type(v) ~= 'string' then
    return nil
  end
  local tag, len = byte(v), #v
  if p.algorithm == 'sliding_window' then
    if tag == TAG_SLIDING and len == 25 then
      local _, start, previous, current = unpack_struct('<Bddd', v)
      return start, previous, current
    end
    local start, previous, current = string.match(v, '^s(%d+):(%d+):(%d+)$')
    if start then
      return num(start), num(previous), num(current)
    end
  elseif p.algorithm == 'fixed_window' then
    if tag == TAG_FIXED and len == 17 then
      local _, start, count = unpack_struct('<Bdd', v)
      return start, count
    end
    local start, count = string.match(v, '^f(%d+):(%d+)$')
    if start then
      return num(start), num(count)
    end
  elseif p.algorithm == 'token_bucket' then
    if tag == TAG_TOKEN and len == 9 then
      local _, tat = unpack_struct('<Bd', v)
      return tat
    end
    local tat = string.match(v, '^t(%d+)$')
    if tat then
      return num(tat)
    end
  end
  return nil
end

-- The counting state (a, b, c) of `key` for policy `p`; nil when there is
-- none or it belongs to another algorithm.
local function load_state(key, p)
  if p.algorithm == 'sliding_log' then
    local n = redis.pcall('LLEN', key)
    if type(n) ~= 'number' then
      return nil -- WRONGTYPE: a string of another algorithm
    end
    return n, key
  end
  -- A sliding log's list answers WRONGTYPE, an error table: no state.
  return decode_state(redis.pcall('GET', key), p)
end

-- fixed_window.rs -----------------------------------------------------------

local function fixed_window_current(p, now, a, b)
  local start = now - fmod(now, p.window)
  if a and a >= start then
    return a, b
  end
  return start, 0
end

local function fixed_window_decide(p, now, cost, a, b)
  local start, count = fixed_window_current(p, now, a, b)
  local reset_after = sat_sub(start + p.window, now)
  local allowed = count + cost <= p.limit
  local used = count
  if allowed then
    used = count + cost
  end
  local reset = reset_after
  if used == 0 then
    reset = 0
  end
  return allowed, sat_sub(p.limit, used), reset, reset_after
end

-- sliding_window.rs ---------------------------------------------------------

local function sliding_window_roll(p, now, a, b, c)
  local w = p.window
  local start = now - fmod(now, w)
  if a then
    if a >= start then
      return a, b, c
    elseif a + w == start then
      return start, c, 0
    end
  end
  return start, 0, 0
end

local function weighted(previous, w, elapsed)
  local weight = (w - min(elapsed, w)) / w
  return floor(previous * weight)
end

local function decay_point(previous, w, budget)
  if weighted(previous, w, 0) <= budget then
    return 0
  end
  local point = w - (budget + 1) * w / previous
  local c = ceil(point)
  if c < 0 then
    c = 0 -- Rust's `as u64` saturates
  end
  return min(c + 1, w)
end

-- sliding_window_roll, sat_sub and weighted are written out inline here: a
-- Lua function call costs more than the arithmetic it wraps, and this runs
-- for every check of the most used algorithm.
local function sliding_window_decide(p, now, cost, a, b, c)
  local w, limit = p.window, p.limit
  local start, previous, current = now - fmod(now, w), 0, 0
  if a then
    if a >= start then
      start, previous, current = a, b, c
    elseif a + w == start then
      previous = c
    end
  end
  local elapsed = 0
  if now > start then
    elapsed = min(now - start, w)
  end
  local count = floor(previous * ((w - elapsed) / w)) + current
  local allowed = count + cost <= limit
  local used, cur = count, current
  if allowed then
    used, cur = count + cost, current + cost
  end
  local to_boundary = 0
  if start + w > now then
    to_boundary = start + w - now
  end
  local reset_after = 0
  if cur > 0 then
    reset_after = to_boundary + w
  elseif previous > 0 then
    reset_after = to_boundary
  end
  local remaining = 0
  if limit > used then
    remaining = limit - used
  end
  if allowed then
    return true, remaining, reset_after, 1
  end
  local retry_after
  if current + cost <= limit then
    -- From the window's start, not from `now`: after the clock stepped
    -- back, `now` can lie before the window's start, where nothing decays.
    retry_after = sat_sub(start + decay_point(previous, w, limit - current - cost), now)
  else
    retry_after = to_boundary + decay_point(current, w, limit - cost)
  end
  return false, remaining, reset_after, max(retry_after, 1)
end

-- sliding_log.rs ------------------------------------------------------------

-- Index of the first entry still inside the window at `now` (binary search:
-- entries never decrease).
local function log_first_live(key, n, w, now)
  local lo, hi = 0, n
  while lo < hi do
    local mid = floor((lo + hi) / 2)
    if tonumber(redis.call('LINDEX', key, mid)) + w <= now then
      lo = mid + 1
    else
      hi = mid
    end
  end
  return lo
end

local function sliding_log_decide(p, now, cost, n, key)
  local w, limit = p.window, p.limit
  n = n or 0
  local first, back = 0, nil
  if n > 0 then
    first = log_first_live(key, n, w, now)
    back = tonumber(redis.call('LINDEX', key, -1))
  end
  local count = n - first
  local allowed = count + cost <= limit
  local used, reset_after, retry_after
  if allowed then
    local newest = 0
    if back then
      newest = max(back, now)
    end
    used, reset_after, retry_after = count + cost, max(newest, now) + w - now, 0
  else
    -- The (count + cost - limit)-th live entry must expire first.
    local k = count + cost - limit
    local t = tonumber(redis.call('LINDEX', key, first + k - 1))
    used, reset_after, retry_after = count, sat_sub(back + w, now), sat_sub(t + w, now)
  end
  if used == 0 then
    reset_after = 0
  end
  return allowed, sat_sub(limit, used), reset_after, retry_after
end

-- gcra.rs -------------------------------------------------------------------

-- Also returns, when admitted, the wait before the request goes ahead
-- (Decision::delay; 0 without a max_delay).
local function token_bucket_decide(p, now, cost, a)
  local t = p.emission
  local tau = t * p.burst
  local slack = p.max_delay
  local tat = now
  if a then
    tat = max(a, now)
  end
  local new_tat = tat + t * cost
  local allow_at = sat_sub(new_tat, tau)
  local allowed = allow_at <= now + slack
  local horizon, retry = tat, allow_at - now - slack
  if allowed then
    horizon, retry = new_tat, 0
  end
  local remaining = floor_div(sat_sub(now + tau, horizon), t)
  return allowed, remaining, horizon - now, retry, sat_sub(allow_at, now)
end

-- algorithm/mod.rs ----------------------------------------------------------

-- LimitState::decide on state (a, b, c): allowed, remaining, reset_after,
-- retry_after (µs; only meaningful when refused), and for a token bucket the
-- wait of an admitted request (nil for the other algorithms).
local function decide(p, now, cost, a, b, c)
  local algorithm = p.algorithm
  if algorithm == 'sliding_window' then
    return sliding_window_decide(p, now, cost, a, b, c)
  elseif algorithm == 'fixed_window' then
    return fixed_window_decide(p, now, cost, a, b)
  elseif algorithm == 'token_bucket' then
    return token_bucket_decide(p, now, cost, a)
  elseif algorithm == 'sliding_log' then
    return sliding_log_decide(p, now, cost, a, b)
  end
  error('floodgate: unknown algorithm ' .. tostring(p.algorithm))
end

-- LimitState::commit on state (a, b, c) (as `key` holds it now), then a TTL
-- at the state's expires_at (plus margin), in the same script call: no key
-- ever lives without a TTL. Returns the string now stored at `key`, or false
-- for a sliding log (a list).
--
-- A window state's expiry depends only on its window's start: when the key
-- already holds a state of the same start, it already has that expiry, and
-- the write keeps it (KEEPTTL), which costs Redis a fifth less than setting
-- it again.
local function commit(key, p, now, cost, margin_ms, a, b, c)
  if p.algorithm == 'fixed_window' then
    local start, count = fixed_window_current(p, now, a, b)
    local v = pack_struct('<Bdd', TAG_FIXED, start, min(count + cost, 2 * p.limit))
    if start == a then
      call('SET', key, v, 'KEEPTTL')
    else
      call('SET', key, v, 'PX', int(ttl_ms(start + p.window, now, margin_ms)))
    end
    return v
  elseif p.algorithm == 'sliding_window' then
    local start, previous, current = sliding_window_roll(p, now, a, b, c)
    local v = pack_struct('<Bddd', TAG_SLIDING, start, previous, min(current + cost, 2 * p.limit))
    if start == a then
      call('SET', key, v, 'KEEPTTL')
    else
      call('SET', key, v, 'PX', int(ttl_ms(start + 2 * p.window, now, margin_ms)))
    end
    return v
  elseif p.algorithm == 'token_bucket' then
    local tat = now
    if a then
      tat = max(a, now)
    end
    -- gcra::commit: at most MAX_DEBT_US of debt.
    tat = min(tat + p.emission * cost, now + p.emission * p.burst + p.max_delay + 31622400000000)
    local v = pack_struct('<Bd', TAG_TOKEN, tat)
    call('SET', key, v, 'PX', int(ttl_ms(tat, now, margin_ms)))
    return v
  elseif p.algorithm == 'sliding_log' then
    local back = nil
    if a == nil then
      redis.call('DEL', key) -- a string of another algorithm
    elseif a > 0 then
      local first = log_first_live(key, a, p.window, now)
      if first > 0 then
        redis.call('LTRIM', key, first, -1)
      end
      if first < a then
        back = tonumber(redis.call('LINDEX', key, -1))
      end
    end
    -- Never let the log go backwards in time (see sliding_log.rs).
    local stamp = now
    if back then
      stamp = max(back, now)
    end
    local text = int(stamp)
    local left = cost
    while left > 0 do
      local chunk = min(left, 1000)
      local batch = {}
      for i = 1, chunk do
        batch[i] = text
      end
      redis.call('RPUSH', key, unpack(batch))
      left = left - chunk
    end
    -- sliding_log::commit: at most twice the limit, the newest.
    redis.call('LTRIM', key, -2 * p.limit, -1)
    redis.call('PEXPIRE', key, int(ttl_ms(stamp + p.window, now, margin_ms)))
    return false
  end
  error('floodgate: unknown algorithm ' .. tostring(p.algorithm))
end

-- The penalty a penalty key's value `v` holds: its block's end (µs) and
-- the offences in a row it answers; 0, 0 for none (`v` absent: false).
local function decode_penalty(v)
  if not v then
    return 0, 0
  end
  local until_us = num(v)
  if until_us then
    return until_us, 0
  end
  local u, n = string.match(v, '^(%d+):(%d+)$')
  if u then
    return num(u), num(n)
  end
  return 0, 0
end

-- The penalty block end stored at `block_key` (µs), 0 for none.
local function blocked_until(block_key)
  local until_us = decode_penalty(redis.call('GET', block_key))
  return until_us
end

-- Penalty::next_offence: which offence in a row going over the limit at
-- `now` is, after a block ending at `until_us` that answered `offences`.
local function next_offence(p, now, until_us, offences)
  if offences > 0 and now < until_us + p.memory then
    return min(offences + 1, 255)
  end
  return 1
end

-- Policy::block_step_us
local function block_step(p, offence)
  if p.ladder then
    return p.ladder[min(offence, #p.ladder)]
  end
  return p.block_for
end

-- KeyState::evaluate: the decision for `cost` at `now` on counting state
-- (a, b, c) under a penalty block ending at `until_us` that answered
-- `offences` offences in a row:
--   allowed, remaining, reset, retry (µs; nil when allowed), blocked,
--   block_until (a penalty block this check starts, else 0), the offence
--   that block answers, and under a max_delay the wait of an admitted
--   request (else nil)
-- Under a block the refusal's retry and reset also wait for the counter, so
-- a client is not sent back early only to be refused and blocked anew.
local function evaluate(until_us, offences, p, now, cost, shadow, a, b, c)
  local allowed, remaining, reset, retry, wait = decide(p, now, cost, a, b, c)
  if allowed then
    retry = nil -- only a refusal has one
  end
  if until_us > now then
    local left = until_us - now
    local counter_reset = reset
    if allowed then
      local _, _, reset_if_nothing_taken = decide(p, now, 0, a, b, c)
      counter_reset = reset_if_nothing_taken
    end
    return false, 0, max(left, counter_reset), max(left, retry or 0), true, 0, 0
  end
  if p.block_for > 0 and not allowed and not shadow then
    local offence = next_offence(p, now, until_us, offences)
    local block = block_step(p, offence)
    return false, 0, max(reset, block), max(retry, block), true, now + block, offence
  end
  if allowed and p.max_delay > 0 then
    return allowed, remaining, reset, nil, false, 0, 0, wait
  end
  return allowed, remaining, reset, retry, false, 0, 0
end

-- gcra::refund (LimitState::refund): a token bucket's place moves back by
-- `cost` units, never before `now`; the other algorithms hold no places in
-- the future. Returns the string now stored at `key`, or nil if unchanged.
local function refund(key, p, now, cost, margin_ms, a)
  if p.algorithm ~= 'token_bucket' or not a then
    return nil
  end
  local tat = max(sat_sub(a, p.emission * cost), now)
  local v = pack_struct('<Bd', TAG_TOKEN, tat)
  call('SET', key, v, 'PX', int(ttl_ms(tat, now, margin_ms)))
  return v
end

-- peek_state in memory.rs: what a zero-cost check finds on state (a, b, c)
-- under a penalty block ending at `until_us`, as 6 integers (peek.lua's
-- reply): allowed (1 when quota is left), remaining, reset_after_us,
-- retry_after_us (-1 for none; when nothing is left, when one unit fits
-- again), blocked (1/0), 0.
local function peek_decision(p, now, until_us, a, b, c)
  if until_us > now then
    -- What a one-unit shadow check would be told.
    local _, _, reset, retry = evaluate(until_us, 0, p, now, 1, true, a, b, c)
    return { 0, 0, reset, retry, 1, 0 }
  end
  local allowed, remaining, reset, retry = decide(p, now, 0, a, b, c)
  if allowed then
    retry = -1
  end
  if remaining == 0 then
    -- Nothing left: say so, and when a single unit fits again.
    local one_allowed, _, _, one_retry = decide(p, now, 1, a, b, c)
    allowed = false
    retry = one_retry
    if one_allowed then
      retry = -1
    end
  end
  return { allowed and 1 or 0, remaining, reset, retry, 0, 0 }
end
