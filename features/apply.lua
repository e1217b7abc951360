-- fraudpipe online features, one EVALSHA per micro-batch. Semantics are mirrored by features/memory.py and held
-- equal to it by a parity test. Keys are built here from the prefix and ids in the plans (features/plan.py):
-- standalone Redis, see features/store.py.
--
--   ARGV[1] 'txns'    ARGV[2] JSON plans   ARGV[3] JSON layout (features/plan.py: layout())   ARGV[4] prefix
--     apply each transaction once (marker SET NX) and return its snapshot (40 values per plan, snapshot.py decodes)
--   ARGV[1] 'labels'  ARGV[2] JSON label plans   ARGV[3] JSON layout   ARGV[4] prefix
--     apply each label whose version is newer than the last applied for its transaction; return how many
--   ARGV[1] 'show'    ARGV[2] JSON [card token]   ARGV[3] JSON layout   ARGV[4] prefix
--     the card's state as JSON (nil when the card has none), for `fraudpipe features show`
--
-- Each card, terminal and merchant is one string key holding a MessagePack map, read and written once per
-- transaction. Rings are flat arrays sorted by bucket: idx, counters... (card m5 / h / d: count, cents, cents²;
-- place d: count; f: frauds). A payment ring's newest bucket is its last entry; buckets at or below
-- newest - kept are dropped and never re-added; a fraud ring follows its payment ring 'd'.

local mode = ARGV[1]
local plans = cjson.decode(ARGV[2])
local layout = cjson.decode(ARGV[3])
local prefix = ARGV[4]
local out = {}

local function load(key)
  local blob = redis.call('GET', key)
  if blob then return cmsgpack.unpack(blob) end
  return {}
end

local function newest(ring, width)
  if (not ring) or #ring == 0 then return nil end
  return ring[#ring - width + 1]
end

-- Drop the entries at or below top - kept.
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

-- Add `deltas` to bucket `idx`; a payment ring (advances) moves its newest and drops what falls out, a fraud ring
-- counts retention from `limit`. Returns the ring and whether it changed.
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
  if advances and ((not top) or idx > top) then ring = select(1, prune(ring, width, idx, kept)) end
  return ring, true
end

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

local function bucket(micros, res)
  return math.floor(micros / layout.size[res])
end

local function save(key, state, ttl)
  redis.call('SET', key, cmsgpack.pack(state), 'EX', ttl)
end

local DAY = 'd'
local kept_day = layout.kept[DAY]

if mode == 'show' then
  local blob = redis.call('GET', prefix .. 'card:' .. plans[1])
  if not blob then return false end
  return cjson.encode(cmsgpack.unpack(blob))
end

if mode == 'labels' then
  local applied = 0
  for _, p in ipairs(plans) do
    local txn, version, fraud, micros, entities = p[1], p[2], p[3], tonumber(p[4]), p[5]
    local state_key = prefix .. 'label:' .. txn
    local current = redis.call('GET', state_key)
    local last_version, last_fraud = 0, 0
    if current then
      local v, f = string.match(current, '^(%d+),(%d+)$')
      last_version, last_fraud = tonumber(v), tonumber(f)
    end
    if version > last_version then
      local delta = fraud - last_fraud
      if delta ~= 0 then
        local day = bucket(micros, DAY)
        for _, e in ipairs(entities) do
          local key = prefix .. e[1]
          local state = load(key)
          local ring, changed = add(state.f or {}, 2, day, e[3], {delta}, false, newest(state.d, e[2]))
          if changed then
            state.f = ring
            local ttl = redis.call('TTL', key)
            save(key, state, ttl > 0 and ttl or layout.entity_ttl)
          end
        end
      end
      redis.call('SET', state_key, version .. ',' .. fraud, 'EX', layout.label_ttl)
      applied = applied + 1
    end
  end
  return applied
end

local KINDS = {'terminal', 'merchant', 'country', 'device'}

for _, p in ipairs(plans) do
  local txn, card_id, micros_text, amount, square, geo = p[1], p[2], p[3], p[4], p[5], p[6]
  local items = {terminal = p[7], merchant = p[8], country = p[9], device = p[10]}
  local t = tonumber(micros_text)
  local since = t - layout.size[DAY]
  local card_key = prefix .. 'card:' .. card_id
  local applied = redis.call('SET', prefix .. 'seen:' .. txn, '1', 'NX', 'EX', layout.marker_ttl) and 1 or 0
  local card = load(card_key)
  local previous_time = card.pt and string.format('%d', card.pt) or ''
  local previous_present = card.pcp and string.format('%d,%.17g,%.17g', card.pcp[1], card.pcp[2], card.pcp[3]) or ''
  local recent = card.r or {}
  local seen = {}
  for _, kind in ipairs(KINDS) do
    if items[kind] ~= '' then seen[kind] = (recent[kind] and recent[kind][items[kind]]) and 1 or 0 end
  end
  if applied == 1 then
    for _, res in ipairs(layout.card_rings) do
      card[res] = add(card[res] or {}, 4, bucket(t, res), layout.kept[res], {1, amount, square}, true, nil)
    end
    if card.f then card.f = prune(card.f, 2, newest(card[DAY], 4), kept_day) end
    if (not card.pt) or t > card.pt then card.pt = t end
    if #geo == 2 and ((not card.pcp) or t >= card.pcp[1]) then card.pcp = {t, geo[1], geo[2]} end
    for _, kind in ipairs(KINDS) do
      local item = items[kind]
      if item ~= '' then
        recent[kind] = recent[kind] or {}
        local members = recent[kind]
        if (not members[item]) or t > members[item] then members[item] = t end
        local size, oldest, oldest_t = 0, nil, nil
        for name, when in pairs(members) do
          size = size + 1
          if (not oldest) or when < oldest_t or (when == oldest_t and name < oldest) then oldest, oldest_t = name, when end
        end
        if size > layout.recent_items then members[oldest] = nil end
      end
    end
    if next(recent) then card.r = recent end
    save(card_key, card, layout.entity_ttl)
  end
  out[#out + 1] = applied
  for _, w in ipairs(layout.card_windows) do
    local res, length = w[1], w[2]
    local ring = card[res] or {}
    local last = bucket(t, res)
    local sums = sum(ring, 4, last - length + 1, last, layout.kept[res], newest(ring, 4))
    out[#out + 1] = sums[1]; out[#out + 1] = sums[2]; out[#out + 1] = sums[3]
  end
  local top = newest(card[DAY], 4)
  local day = bucket(t, DAY)
  out[#out + 1] = (top and day > top - kept_day) and 1 or 0
  out[#out + 1] = sum(card.f or {}, 2, day - layout.card_frauds + 1, day, kept_day, top)[1]
  out[#out + 1] = previous_time
  out[#out + 1] = previous_present
  for _, kind in ipairs({'terminal', 'merchant', 'country'}) do
    if items[kind] == '' then
      out[#out + 1] = -1
    else
      local count = 0
      for _, when in pairs(recent[kind] or {}) do
        if when > since then count = count + 1 end
      end
      out[#out + 1] = count
    end
  end
  out[#out + 1] = seen.device or -1
  out[#out + 1] = seen.terminal or -1
  for _, kind in ipairs({'terminal', 'merchant'}) do
    if items[kind] == '' then
      for _ = 1, #layout.place_windows + 2 * #layout.fraud_windows do out[#out + 1] = -1 end
    else
      local key = prefix .. kind .. ':' .. items[kind]
      local place = load(key)
      local kept = layout.place_kept
      if applied == 1 then
        place.d = add(place.d or {}, 2, day, kept, {1}, true, nil)
        if place.f then place.f = prune(place.f, 2, newest(place.d, 2), kept) end
        save(key, place, layout.entity_ttl)
      end
      local place_top = newest(place.d, 2)
      for _, length in ipairs(layout.place_windows) do
        out[#out + 1] = sum(place.d or {}, 2, day - length + 1, day, kept, place_top)[1]
      end
      -- Label-derived: payments of the window ending label_delay days before this one's day, and their frauds.
      local last = day - layout.label_delay
      for _, length in ipairs(layout.fraud_windows) do
        out[#out + 1] = sum(place.f or {}, 2, last - length + 1, last, kept, place_top)[1]
        out[#out + 1] = sum(place.d or {}, 2, last - length + 1, last, kept, place_top)[1]
      end
    end
  end
end
return out
