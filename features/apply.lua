-- fraudpipe online features, one EVALSHA per micro-batch. Semantics are mirrored by features/memory.py and held
-- equal to it by a parity test. Keys travel in the plans (features/plan.py): standalone Redis, see features/store.py.
--
--   ARGV[1] 'txns'   ARGV[2] JSON plans   ARGV[3] marker TTL s   ARGV[4] recent items kept   ARGV[5] entity TTL s
--     apply each transaction once (marker SET NX) and return its snapshot (32 values per plan, store.py decodes)
--   ARGV[1] 'labels' ARGV[2] JSON label plans   ARGV[3] label-state TTL s
--     apply each label whose version is newer than the last applied for its transaction; return how many

local mode = ARGV[1]
local plans = cjson.decode(ARGV[2])
local ttl = tonumber(ARGV[3])
local out = {}

local function newest(key, res)
  local value = redis.call('HGET', key, res .. ':new')
  if value then return tonumber(value) end
  return nil
end

-- Add to bucket `idx` of `res` unless the store has dropped it; advance `res:new` and drop what falls out.
local function bump(key, res, idx, kept, fields)
  local top = newest(key, res)
  if top and idx <= top - kept then return end
  for suffix, amount in pairs(fields) do
    redis.call('HINCRBY', key, res .. idx .. ':' .. suffix, amount)
  end
  if (not top) or idx > top then
    redis.call('HSET', key, res .. ':new', idx)
    if top then
      for j = top - kept + 1, math.min(top, idx - kept) do
        redis.call('HDEL', key, res .. j .. ':n', res .. j .. ':s', res .. j .. ':q', res .. j .. ':f')
      end
    end
  end
end

-- Add a fraud delta to the day bucket of a payment; labels never move `d:new` (only payments do).
local function add_fraud(key, day, kept, delta)
  local top = newest(key, 'd')
  if top and day <= top - kept then return end
  redis.call('HINCRBY', key, 'd' .. day .. ':f', delta)
end

if mode == 'labels' then
  local applied = 0
  for _, p in ipairs(plans) do
    local state, version, fraud, day, kept, entities = p[1], p[2], p[3], p[4], p[5], p[6]
    local current = redis.call('HMGET', state, 'v', 'f')
    local last_version = current[1] and tonumber(current[1]) or 0
    if version > last_version then
      local delta = fraud - (current[2] and tonumber(current[2]) or 0)
      if delta ~= 0 then
        for _, key in ipairs(entities) do add_fraud(key, day, kept, delta) end
      end
      redis.call('HSET', state, 'v', version, 'f', fraud)
      redis.call('EXPIRE', state, ttl)
      applied = applied + 1
    end
  end
  return applied
end

local recent_items = tonumber(ARGV[4])
local entity_ttl = tonumber(ARGV[5])

-- Sums of the given counters over buckets first..last of `res`, dropped buckets excluded.
local function total(key, res, first, last, kept, suffixes)
  local sums = {}
  for i = 1, #suffixes do sums[i] = 0 end
  local top = newest(key, res)
  if not top then return sums end
  local low = math.max(first, top - kept + 1)
  if low > last then return sums end
  local fields = {}
  for j = low, last do
    for i = 1, #suffixes do fields[#fields + 1] = res .. j .. ':' .. suffixes[i] end
  end
  local values = redis.call('HMGET', key, unpack(fields))
  for k = 1, #values do
    if values[k] then
      local i = ((k - 1) % #suffixes) + 1
      sums[i] = sums[i] + tonumber(values[k])
    end
  end
  return sums
end

for _, p in ipairs(plans) do
  local marker, card, micros, since = p[1], p[2], p[3], p[4]
  local buckets, amount, square, windows = p[5], p[6], p[7], p[8]
  local own, frauds30, geo, recents, places = p[9], p[10], p[11], p[12], p[13]
  local t = tonumber(micros)
  local applied = redis.call('SET', marker, '1', 'NX', 'EX', ttl) and 1 or 0
  local previous_time = redis.call('HGET', card, 'pt') or ''
  local previous_present = redis.call('HGET', card, 'pcp') or ''
  local seen = {}
  for i, r in ipairs(recents) do
    seen[i] = redis.call('ZSCORE', r[1], r[2]) and 1 or 0
  end
  if applied == 1 then
    for _, b in ipairs(buckets) do
      bump(card, b[1], b[2], b[3], {n = 1, s = amount, q = square})
    end
    if previous_time == '' or t > tonumber(previous_time) then redis.call('HSET', card, 'pt', micros) end
    if geo ~= '' then
      local stored = previous_present ~= '' and tonumber(string.match(previous_present, '^([^,]+)')) or nil
      if (not stored) or t >= stored then redis.call('HSET', card, 'pcp', micros .. ',' .. geo) end
    end
    for _, r in ipairs(recents) do
      redis.call('ZADD', r[1], 'GT', t, r[2])
      local size = redis.call('ZCARD', r[1])
      if size > recent_items then redis.call('ZREMRANGEBYRANK', r[1], 0, size - recent_items - 1) end
    end
    for _, place in ipairs(places) do
      if place ~= '' then
        bump(place[1], 'd', place[2], place[3], {n = 1})
        redis.call('EXPIRE', place[1], entity_ttl)
      end
    end
    redis.call('EXPIRE', card, entity_ttl)
    for _, r in ipairs(recents) do redis.call('EXPIRE', r[1], entity_ttl) end
  end
  out[#out + 1] = applied
  for _, w in ipairs(windows) do
    local sums = total(card, w[1], w[2], w[3], w[4], {'n', 's', 'q'})
    out[#out + 1] = sums[1]; out[#out + 1] = sums[2]; out[#out + 1] = sums[3]
  end
  local top = newest(card, 'd')
  out[#out + 1] = (top and own[1] > top - own[2]) and 1 or 0
  out[#out + 1] = total(card, 'd', frauds30[1], frauds30[2], own[2], {'f'})[1]
  out[#out + 1] = previous_time
  out[#out + 1] = previous_present
  local distinct = {terminal = -1, merchant = -1, country = -1}
  local flags = {device = -1, terminal = -1}
  for i, r in ipairs(recents) do
    local kind = string.match(r[1], ':([^:]+)$')
    if r[3] == 1 then distinct[kind] = redis.call('ZCOUNT', r[1], '(' .. since, '+inf') end
    if r[4] == 1 then flags[kind] = seen[i] end
  end
  out[#out + 1] = distinct.terminal; out[#out + 1] = distinct.merchant; out[#out + 1] = distinct.country
  out[#out + 1] = flags.device; out[#out + 1] = flags.terminal
  for _, place in ipairs(places) do
    if place == '' then
      for _ = 1, 5 do out[#out + 1] = -1 end
    else
      for _, range in ipairs(place[4]) do
        out[#out + 1] = total(place[1], 'd', range[1], range[2], place[3], {'n'})[1]
      end
      for _, range in ipairs(place[5]) do
        out[#out + 1] = total(place[1], 'd', range[1], range[2], place[3], {'f'})[1]
      end
    end
  end
end
return out
