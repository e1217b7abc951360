-- fraudpipe online features, one EVALSHA per micro-batch. Semantics are mirrored by features/memory.py and held
-- equal to it by a parity test. Keys travel in the plans (features/plan.py): standalone Redis, see features/store.py.
--
--   ARGV[1] 'txns'   ARGV[2] JSON plans   ARGV[3] marker TTL s   ARGV[4] recent items kept   ARGV[5] entity TTL s
--     apply each transaction once (marker SET NX) and return its snapshot (32 values per plan, snapshot.py decodes)
--   ARGV[1] 'labels' ARGV[2] JSON label plans   ARGV[3] label-state TTL s
--     apply each label whose version is newer than the last applied for its transaction; return how many
--
-- A ring is one hash field holding a MessagePack array, flat and sorted by bucket: idx, counter, counter, ...
-- (card m5 / h / d: idx, count, cents, cents²; terminal and merchant d: idx, count; f: idx, frauds). The newest
-- bucket of a payment ring is its last entry; buckets at or below newest - kept are dropped and never re-added.

local mode = ARGV[1]
local plans = cjson.decode(ARGV[2])
local ttl = tonumber(ARGV[3])
local out = {}

local function load(key, field)
  local blob = redis.call('HGET', key, field)
  if blob then return cmsgpack.unpack(blob) end
  return {}
end

local function newest(ring, width)
  local n = #ring
  if n == 0 then return nil end
  return ring[n - width + 1]
end

-- Add `deltas` to bucket `idx` of a ring; `limit` is the newest bucket retention counts from (nil: the ring's own,
-- which then advances). Returns the ring, changed or not.
local function add(ring, width, idx, kept, deltas, advances, limit)
  local top = limit
  if advances then top = newest(ring, width) end
  if top and idx <= top - kept then return ring, false end
  local n = #ring / width
  local at = n
  for i = 0, n - 1 do
    if ring[i * width + 1] >= idx then at = i; break end
  end
  if at < n and ring[at * width + 1] == idx then
    for d = 1, width - 1 do ring[at * width + 1 + d] = ring[at * width + 1 + d] + deltas[d] end
  else
    local entry = {idx}
    for d = 1, width - 1 do entry[d + 1] = deltas[d] end
    for d = width, 1, -1 do table.insert(ring, at * width + 1, entry[d]) end
  end
  if advances and ((not top) or idx > top) then
    local keep = {}
    for i = 0, #ring / width - 1 do
      if ring[i * width + 1] > idx - kept then
        for d = 1, width do keep[#keep + 1] = ring[i * width + d] end
      end
    end
    ring = keep
  end
  return ring, true
end

-- Sums of the counters of buckets first..last, those at or below top - kept excluded.
local function sum(ring, width, first, last, kept, top)
  local sums = {}
  for d = 1, width - 1 do sums[d] = 0 end
  if not top then return sums end
  local low = math.max(first, top - kept + 1)
  for i = 0, #ring / width - 1 do
    local idx = ring[i * width + 1]
    if idx >= low and idx <= last then
      for d = 1, width - 1 do sums[d] = sums[d] + ring[i * width + 1 + d] end
    end
  end
  return sums
end

-- Drop the entries at or below top - kept (a fraud ring follows its payment ring's newest bucket).
local function prune(ring, width, top, kept)
  if (not top) or #ring == 0 or ring[1] > top - kept then return ring, false end
  local keep = {}
  for i = 0, #ring / width - 1 do
    if ring[i * width + 1] > top - kept then
      for d = 1, width do keep[#keep + 1] = ring[i * width + d] end
    end
  end
  return keep, true
end

local function save(key, field, ring)
  redis.call('HSET', key, field, cmsgpack.pack(ring))
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
        for _, e in ipairs(entities) do
          local key, width = e[1], e[2]
          local top = newest(load(key, 'd'), width)
          local ring, changed = add(load(key, 'f'), 2, day, kept, {delta}, false, top)
          if changed then save(key, 'f', ring) end
        end
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
  local rings = {}
  for _, b in ipairs(buckets) do rings[b[1]] = load(card, b[1]) end
  if applied == 1 then
    for _, b in ipairs(buckets) do
      local ring, changed = add(rings[b[1]], 4, b[2], b[3], {1, amount, square}, true, nil)
      rings[b[1]] = ring
      if changed then save(card, b[1], ring) end
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
      redis.call('EXPIRE', r[1], entity_ttl)
    end
    redis.call('EXPIRE', card, entity_ttl)
  end
  out[#out + 1] = applied
  for _, w in ipairs(windows) do
    local ring = rings[w[1]]
    local sums = sum(ring, 4, w[2], w[3], w[4], newest(ring, 4))
    out[#out + 1] = sums[1]; out[#out + 1] = sums[2]; out[#out + 1] = sums[3]
  end
  local top = newest(rings['d'], 4)
  out[#out + 1] = (top and own[1] > top - own[2]) and 1 or 0
  local card_frauds, pruned = prune(load(card, 'f'), 2, top, own[2])
  if pruned then save(card, 'f', card_frauds) end
  out[#out + 1] = sum(card_frauds, 2, frauds30[1], frauds30[2], own[2], top)[1]
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
      local key, day, kept = place[1], place[2], place[3]
      local ring = load(key, 'd')
      if applied == 1 then
        local changed
        ring, changed = add(ring, 2, day, kept, {1}, true, nil)
        if changed then save(key, 'd', ring) end
        redis.call('EXPIRE', key, entity_ttl)
      end
      local place_top = newest(ring, 2)
      for _, range in ipairs(place[4]) do
        out[#out + 1] = sum(ring, 2, range[1], range[2], kept, place_top)[1]
      end
      local frauds, dropped = prune(load(key, 'f'), 2, place_top, kept)
      if dropped then save(key, 'f', frauds) end
      for _, range in ipairs(place[5]) do
        out[#out + 1] = sum(frauds, 2, range[1], range[2], kept, place_top)[1]
      end
    end
  end
end
return out
