-- floodgate block registry helpers, prepended (after common.lua) to the
-- block_*.lua scripts.
--
-- The registry is one hash, `<prefix>:blocks`, listing every block in force:
--   field  <byte length of target>:<target><source>
--          (source is "manual" or the rule name of a penalty block)
--   value  <until_us>:<reason>
-- Redis 7.0 has no per-field expiry, so the hash keeps a TTL at least as long
-- as its latest block, and readers drop fields whose block has ended.

-- target, source of a registry field.
local function split_field(field)
  local len, rest = string.match(field, '^(%d+):(.*)$')
  if not len then
    return nil, nil
  end
  len = tonumber(len)
  return string.sub(rest, 1, len), string.sub(rest, len + 1)
end

-- The end (µs) of the block a registry value describes.
local function value_until(value)
  return tonumber(string.match(value, '^(%d+):')) or 0
end
