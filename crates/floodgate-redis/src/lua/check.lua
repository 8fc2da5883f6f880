-- check.lua: decides batches of checks, each batch atomically (Store::check).
--
-- Runs after common.lua and limits.lua (prepended by the Rust side).
--
-- KEYS, per check i (1-based, counted across every batch):
--   KEYS[2i-1]  the counting state of (rule, key)
--   KEYS[2i]    the penalty block of (rule, key)
--   (all keys of one identity share its {hash tag})
-- ARGV:
--   ARGV[1]     now (µs since the epoch), or "" to use Redis' TIME
--   ARGV[2]     TTL margin (ms) added to every key's expiry
--   ARGV[3]     the number of checks in each batch, comma-separated ("2,1,3");
--               "*" when every check is a batch of its own (a call of many
--               one-rule requests: nothing to parse); "" when every check
--               forms one batch
--   ARGV[4]     P, the number of policies
--   then 8 per policy (each distinct one once, however many checks use it):
--     algorithm, limit, window_us, burst, emission_us, block_for_us (0:
--     none; a block ladder's steps as "step,step,..."), max_delay_us (0:
--     none), mode: "0" enforce,
--     "1" shadow, "2" probe (enforce, never charge), "3" shadow probe, "4"
--     charge (Store::charge: record the cost whatever the limit says, never
--     refuse, start no penalty; its reply is what a peek finds after), "5"
--     refund (Store::refund: give back a held request's place in a token
--     bucket; its reply is what a peek finds after), "9" lease (batched
--     consistency: take what is left of the key's quota, up to the cost
--     asked, when at least one unit fits; decided and penalised as an
--     enforcing check of one unit otherwise. When admitted, its reply's
--     retry field is how long the leased units may be used (µs: to the
--     end of the window they were counted in; a token bucket's, the time
--     they take to earn) and its block_until field how many were taken.
--     A lease stands alone: send leases as batches of one)
--   or, for a concurrency slot (Store::acquire, release, renew; its
--     check's two keys are both the slots of (rule, key), a sorted set of
--     request ids scored by the end of their lease):
--     "slots", limit, lease_us, 0, 0, 0, 0, mode: "6" take (a batch of
--     takes takes all or none), "7" give back, "8" renew; the reply's
--     allowed flag says taken (or still held, for "8") and its remaining
--     field the slots held after
--   then 2 per check: its policy's number (1..P), cost (for a slot
--   operation: the request's id)
-- Returns one string: per check, in order, 33 bytes packed with Redis'
-- struct library ('<Bdddd'): a flags byte (1: allowed, 2: blocked), then as
-- little-endian doubles remaining, reset_after_us, retry_after_us (when
-- allowed: -1, or under a max_delay the wait before the request goes
-- ahead) and block_until_us (a penalty block this call started, else 0).
-- One bulk string instead of six integers per check: less for Redis to
-- write and for the client to parse.
--
-- Several batches in one call (several requests' decisions coalesced into one
-- round trip) are decided one after the other, each on the state the ones
-- before it left: exactly as if each were a call of its own.
--
-- Within a batch, like MemoryStore::check_now: every check is decided on the
-- state as it was before the batch; costs are committed only when every
-- non-shadow check admits, and never for a probe; a non-shadow refusal on a rule with block_for
-- starts its penalty block whether or not the batch is admitted.

-- The call's state, set by `main` for the helpers below, dropped at its end.
-- `values`: the string values of the keys as this call has left them, false
-- for a key that holds none (absent, or a sliding log's list). `reply`: the
-- packed decision of each check; `admitted_check`: whether it was admitted.
-- `policies`: by the number checks name them with ("1".."P").
-- `offence_of`: the offence a check's penalty block answers. `slot_count`:
-- the live slots a take found; `slot_id`: the request id of a take.
local now, margin_ms, values, reply, admitted_check, offence_of, slot_count, slot_id, policies

-- The counting state (a, b, c) of a check's key as this call has left it.
local function state_of(key, p)
  if p.algorithm == 'sliding_log' then
    return load_state(key, p)
  end
  return decode_state(values[key], p)
end

-- Charges check i (policy `p`) `cost` whatever its limit says, at once;
-- its reply is what a peek finds after. Returned as decide_check does: it
-- never vetoes its batch, and leaves nothing to commit.
local function charge_check(i, p, cost)
  local key = KEYS[2 * i - 1]
  local a, b, c = state_of(key, p)
  if p.refund then
    local v = refund(key, p, now, cost, margin_ms, a)
    if v then
      values[key] = v
    end
  else
    values[key] = commit(key, p, now, cost, margin_ms, a, b, c)
  end
  a, b, c = state_of(key, p)
  local d = peek_decision(p, now, decode_penalty(values[KEYS[2 * i]]), a, b, c)
  reply[i] = pack_struct('<Bdddd', d[1] + 2 * d[5], d[2], d[3], d[4], 0)
  admitted_check[i] = false
  offence_of[i] = 0
  return true, p, cost, 0, a, b, c
end

-- Drops the lapsed slots of `key`; how many are left.
local function live_slots(key)
  call('ZREMRANGEBYSCORE', key, '-inf', int(now))
  return call('ZCARD', key)
end

-- Holds slot `id` of `key` for another lease; the key lives as long as
-- its newest lease (every slot of a key has its rule's lease). Returns 1
-- if the slot is new, 0 if it was held (renewed).
local function hold_slot(key, p, id)
  local until_us = now + p.lease
  local added = call('ZADD', key, int(until_us), id)
  call('PEXPIRE', key, int(ttl_ms(until_us, now, margin_ms)))
  return added
end

-- A slot operation (concurrency limits), returned as decide_check does.
-- A take is decided here and made by commit_check, so a batch of takes
-- takes all or none; a give-back and a renewal happen at once.
local function slot_check(i, p, id)
  local key = KEYS[2 * i - 1]
  local held
  if p.slots == '6' then
    local n = live_slots(key)
    local fits = n < p.limit
    slot_count[i] = n
    slot_id[i] = id
    -- When taken, commit_check writes the count after.
    reply[i] = pack_struct('<Bdddd', fits and 1 or 0, n, 0, -1, 0)
    admitted_check[i] = fits
    offence_of[i] = 0
    return fits, p, 1, 0
  elseif p.slots == '7' then
    call('ZREM', key, id)
    held = true
  else
    live_slots(key)
    held = call('ZSCORE', key, id) ~= false
    if held then
      hold_slot(key, p, id)
    end
  end
  reply[i] = pack_struct('<Bdddd', held and 1 or 0, 0, 0, -1, 0)
  admitted_check[i] = false
  offence_of[i] = 0
  return true, p, 1, 0
end

-- Decides the check at ARGV[at] and KEYS[2i-1], KEYS[2i]; its decision goes
-- to the reply, at the place of check i. Returns whether it lets its batch
-- be admitted, its policy and cost, the end of the penalty block it starts
-- (0: none), which the caller writes with start_block, and the state (a, b,
-- c) it decided on.
local function decide_check(i, at)
  local p = policies[ARGV[at]]
  if p and p.slots then
    return slot_check(i, p, ARGV[at + 1])
  end
  local cost = num(ARGV[at + 1])
  if not p or not cost then
    error('floodgate: check.lua check ' .. i .. ' names policy ' .. ARGV[at] .. ' with cost ' .. ARGV[at + 1])
  end
  if p.charge or p.refund then
    return charge_check(i, p, cost)
  end
  local a, b, c = state_of(KEYS[2 * i - 1], p)
  local until_us, offences = decode_penalty(values[KEYS[2 * i]])
  if p.batch then
    -- A lease takes what is left, up to the cost asked; when not even a
    -- unit fits, it is refused as a check of one unit is.
    local left = 0
    if until_us <= now then
      local _
      _, left = decide(p, now, 0, a, b, c)
    end
    cost = max(1, min(cost, left))
  end
  local allowed, remaining, reset, retry, blocked, block_until, offence, wait =
    evaluate(until_us, offences, p, now, cost, p.shadow, a, b, c)
  if p.batch and allowed then
    if p.algorithm == 'token_bucket' then
      wait = cost * p.emission
    else
      wait = p.window - fmod(now, p.window)
    end
    block_until = cost
  end
  -- Flags: 1 admitted, 2 blocked, and for a block started under a ladder,
  -- its offence (at most 63) from the third bit up: the block's listing
  -- names its step.
  local ladder_offence = 0
  if p.ladder and block_until > 0 then
    ladder_offence = math.min(offence, 63)
  end
  if p.batch and allowed then
    reply[i] = pack_struct('<Bdddd', 1, remaining, reset, wait, block_until)
    admitted_check[i] = true
    offence_of[i] = 0
    return true, p, cost, 0, a, b, c
  end
  reply[i] = pack_struct('<Bdddd', (allowed and 1 or 0) + (blocked and 2 or 0) + 4 * ladder_offence,
    remaining, reset, retry or wait or -1, block_until)
  admitted_check[i] = allowed
  offence_of[i] = offence
  return allowed or p.shadow, p, cost, block_until, a, b, c
end

-- Starts the penalty block of check i (policy `p`), ending at `until_us`.
-- Under a ladder the key also holds the offence, and lives until the
-- offence is forgotten.
local function start_block(i, p, until_us)
  local key, v = KEYS[2 * i], int(until_us)
  if p.ladder then
    v = v .. ':' .. int(offence_of[i])
  end
  call('SET', key, v, 'PX', int(ttl_ms(until_us + p.memory, now, margin_ms)))
  values[key] = v
end

-- KeyState::apply for check i on state (a, b, c); a probe is never charged.
-- A slot's take is made here.
local function commit_check(i, p, cost, a, b, c)
  if p.slots then
    local added = hold_slot(KEYS[2 * i - 1], p, slot_id[i])
    reply[i] = pack_struct('<Bdddd', 1, slot_count[i] + added, 0, -1, 0)
    return
  end
  if p.probe then
    return
  end
  local key = KEYS[2 * i - 1]
  values[key] = commit(key, p, now, cost, margin_ms, a, b, c)
end

-- The batch sizes ARGV[3] gives, for n checks in all.
local function batch_sizes(n)
  local sizes = { n }
  if ARGV[3] == '*' then
    for k = 1, n do
      sizes[k] = 1
    end
  elseif ARGV[3] ~= '' then
    sizes = {}
    local total = 0
    for size in string.gmatch(ARGV[3], '[^,]+') do
      local k = tonumber(size)
      if not k or k < 1 or k % 1 ~= 0 then
        error('floodgate: check.lua batch sizes must be positive integers, got ' .. ARGV[3])
      end
      sizes[#sizes + 1] = k
      total = total + k
    end
    if total ~= n then
      error('floodgate: check.lua batch sizes add up to ' .. total .. ', not ' .. n)
    end
  end
  return sizes
end

local function main()
  now = read_now(ARGV[1])
  margin_ms = tonumber(ARGV[2])
  local n = #KEYS / 2
  local np = tonumber(ARGV[4])
  if #KEYS % 2 ~= 0 or not np or np < 0 or np % 1 ~= 0 or #ARGV ~= 4 + 8 * np + 2 * n then
    error('floodgate: check.lua needs 2 keys and 2 arguments per check and 8 per policy')
  end

  policies = {}
  -- A call of slot operations only (they never mix with checks) has no
  -- string state to read.
  local slots_only = np > 0
  for j = 1, np do
    local at = 5 + 8 * (j - 1)
    local mode = ARGV[at + 7]
    local p
    if ARGV[at] == 'slots' then
      p = { slots = mode, limit = num(ARGV[at + 1]), lease = num(ARGV[at + 2]) }
      if not (p.limit and p.lease) or not (mode == '6' or mode == '7' or mode == '8') then
        error('floodgate: check.lua: malformed slot arguments at ARGV[' .. at .. ']')
      end
    else
      p = read_policy(at)
    end
    p.shadow = mode == '1' or mode == '3'
    p.probe = mode == '2' or mode == '3'
    p.charge = mode == '4'
    p.refund = mode == '5'
    p.batch = mode == '9'
    slots_only = slots_only and p.slots ~= nil
    policies[tostring(j)] = p
  end
  local sizes = batch_sizes(n)

  -- Every key read with one MGET per (up to) 512 keys before any check;
  -- later batches then read what earlier ones wrote.
  values, reply, admitted_check, offence_of, slot_count, slot_id = {}, {}, {}, {}, {}, {}
  for first = 1, slots_only and 0 or #KEYS, 512 do
    local last = min(first + 511, #KEYS)
    local got = call('MGET', unpack(KEYS, first, last))
    for i = first, last do
      local key = KEYS[i]
      if values[key] == nil then
        values[key] = got[i - first + 1]
      end
    end
  end

  local at = 5 + 8 * np
  local done = 0
  -- The policies, costs and penalty ends of the batch being decided, by
  -- place in the batch.
  local batch_policy, batch_cost, batch_block = {}, {}, {}
  for _, size in ipairs(sizes) do
    if size == 1 then
      local i = done + 1
      local admitted, p, cost, block_until, a, b, c = decide_check(i, at)
      if admitted and admitted_check[i] then
        commit_check(i, p, cost, a, b, c)
      end
      if block_until > 0 then
        start_block(i, p, block_until)
      end
    else
      -- Every check is decided on the state as it was before the batch;
      -- costs are committed only when every non-shadow check admits;
      -- penalties start either way.
      local admit = true
      for j = 1, size do
        local admitted, p, cost, block_until = decide_check(done + j, at + 2 * (j - 1))
        admit = admit and admitted
        batch_policy[j], batch_cost[j], batch_block[j] = p, cost, block_until
      end
      for j = 1, size do
        local i = done + j
        if not admit and batch_policy[j].slots == '6' then
          -- Another take of the batch found no room: none is taken.
          reply[i] = pack_struct('<Bdddd', 0, slot_count[i], 0, -1, 0)
        end
        if admit and admitted_check[i] then
          -- On the state as it is now: a check earlier in the batch may
          -- have committed to the same key.
          local p = batch_policy[j]
          commit_check(i, p, batch_cost[j], state_of(KEYS[2 * i - 1], p))
        end
        if batch_block[j] > 0 then
          start_block(i, batch_policy[j], batch_block[j])
        end
      end
    end
    at = at + 2 * size
    done = done + size
  end
  local packed = table.concat(reply)
  values, reply, admitted_check, offence_of, slot_count, slot_id, policies = nil, nil, nil, nil, nil, nil, nil
  return packed
end
