-- fraudpipe online features, one EVALSHA per micro-batch. Semantics are mirrored by features/memory.py and held
-- equal to it by a parity test; the binary formats are those of features/blobs.py, which decodes what this returns.
-- Keys are built here from the prefix and ids in the arguments: standalone Redis, see features/store.py.
--
--   ARGV[1] 'txns'    ARGV[2] JSON layout (features/plan.py: layout())   ARGV[3] prefix
--                     then 5 per transaction: txn id, card token, terminal id, merchant id, record (plan.py: RECORD)
--     apply each transaction once (marker SET NX) and return 12 strings for the whole batch: per-transaction heads
--     (blobs.py: REPLY_HEAD), then, concatenated over the batch, the card's m5, h, d and fraud rings after the
--     payment, the last-seen times of its terminals, merchants and countries, the terminal's d and fraud rings and
--     the merchant's d and fraud rings
--   ARGV[1] 'labels'  ARGV[2] JSON layout   ARGV[3] prefix   then 7 per label: txn id, version, fraud 0/1, day,
--                     and the entities it moves: 'card:<token>', 'terminal:<id>' or '', 'merchant:<id>' or ''
--     apply each label whose version is newer than the last applied for its transaction; return how many
--   ARGV[1] 'show'    ARGV[2] JSON layout   ARGV[3] prefix   ARGV[4] card token
--     the card's blob (nil when it has none), for `fraudpipe features show`
--
-- Rings are binary strings of entries sorted by bucket (bucket first, as a 4-byte integer). A payment ring's
-- newest bucket is its last entry; buckets at or below newest - kept are dropped and never re-added; a fraud ring
-- follows its payment ring 'd'. Each key is read once and written once per call (a batch cache).

local mode = ARGV[1]
local layout = cjson.decode(ARGV[2])
local prefix = ARGV[3]

local CARD_HEAD = '<HHHHHHHHHi8i8dd'  -- flags, entries m5 h d f, items t m c v, pt, pcp (µs, lat, lon)
local PLACE_HEAD = '<HH'               -- entries d f
local CARD_ENTRY, CARD_WIDTH = '<i4i4i8i8', 24   -- bucket, count, cents, cents²
local PAIR, PAIR_WIDTH = '<i4i4', 8              -- bucket, count (place d) or frauds (f)
local KINDS = {'t', 'm', 'c', 'v'}              -- terminal, merchant, country, device

local cache, dirty, ttls = {}, {}, {}

local function fetch(key)
  local blob = cache[key]
  if blob == nil then
    blob = redis.call('GET', key) or false
    cache[key] = blob
  end
  return blob
end

local function store(key, blob, ttl)
  cache[key] = blob
  dirty[key] = true
  ttls[key] = ttl
end

local function flush()
  for key in pairs(dirty) do redis.call('SET', key, cache[key], 'EX', ttls[key]) end
end

local function newest(ring, width)
  if #ring == 0 then return nil end
  return (struct.unpack('<i4', ring, #ring - width + 1))
end

-- Drop the entries at or below top - kept.
local function prune(ring, width, top, kept)
  if (not top) or #ring == 0 then return ring end
  local pos = 1
  while pos <= #ring and struct.unpack('<i4', ring, pos) <= top - kept do pos = pos + width end
  if pos == 1 then return ring end
  return string.sub(ring, pos)
end

-- Add `deltas` to bucket `idx`; a payment ring (advances) moves its newest and drops what falls out, a fraud ring
-- counts retention from `limit`. Returns the ring and whether it changed.
local function add(ring, width, format, idx, kept, deltas, advances, limit)
  local top = limit
  if advances then top = newest(ring, width) end
  if top and idx <= top - kept then return ring, false end
  local at = #ring + 1  -- where the entry goes, scanning from the newest (the usual place)
  while at > 1 do
    local previous = struct.unpack('<i4', ring, at - width)
    if previous < idx then break end
    if previous == idx then
      local entry = {struct.unpack(format, ring, at - width)}
      for d = 1, #deltas do entry[d + 1] = entry[d + 1] + deltas[d] end
      ring = string.sub(ring, 1, at - width - 1) .. struct.pack(format, unpack(entry, 1, #deltas + 1))
        .. string.sub(ring, at)
      return ring, true
    end
    at = at - width
  end
  ring = string.sub(ring, 1, at - 1) .. struct.pack(format, idx, unpack(deltas)) .. string.sub(ring, at)
  if advances and ((not top) or idx > top) then ring = prune(ring, width, idx, kept) end
  return ring, true
end

local function card_parse(blob)
  local card = {flags = 0, items = {}}
  if not blob then
    card.m5, card.h, card.d, card.f = '', '', '', ''
    for _, kind in ipairs(KINDS) do card.items[kind] = {ids = '', times = ''} end
    return card
  end
  local counts = {}
  local pos
  card.flags, counts.m5, counts.h, counts.d, counts.f, counts.t, counts.m, counts.c, counts.v,
    card.pt, card.pcp_t, card.lat, card.lon, pos = struct.unpack(CARD_HEAD, blob)
  for _, ring in ipairs({'m5', 'h', 'd'}) do
    card[ring] = string.sub(blob, pos, pos + counts[ring] * CARD_WIDTH - 1)
    pos = pos + counts[ring] * CARD_WIDTH
  end
  card.f = string.sub(blob, pos, pos + counts.f * PAIR_WIDTH - 1)
  pos = pos + counts.f * PAIR_WIDTH
  for _, kind in ipairs(KINDS) do
    local size = counts[kind] * 8
    card.items[kind] = {ids = string.sub(blob, pos, pos + size - 1), times = string.sub(blob, pos + size, pos + 2 * size - 1)}
    pos = pos + 2 * size
  end
  return card
end

local function card_blob(card)
  local parts = {struct.pack(CARD_HEAD, card.flags, #card.m5 / CARD_WIDTH, #card.h / CARD_WIDTH,
    #card.d / CARD_WIDTH, #card.f / PAIR_WIDTH, #card.items.t.ids / 8, #card.items.m.ids / 8, #card.items.c.ids / 8,
    #card.items.v.ids / 8, card.pt or 0, card.pcp_t or 0, card.lat or 0, card.lon or 0),
    card.m5, card.h, card.d, card.f}
  for _, kind in ipairs(KINDS) do
    parts[#parts + 1] = card.items[kind].ids
    parts[#parts + 1] = card.items[kind].times
  end
  return table.concat(parts)
end

local function place_parse(blob)
  if not blob then return {d = '', f = ''} end
  local nd, nf, pos = struct.unpack(PLACE_HEAD, blob)
  return {d = string.sub(blob, pos, pos + nd * PAIR_WIDTH - 1), f = string.sub(blob, pos + nd * PAIR_WIDTH,
    pos + (nd + nf) * PAIR_WIDTH - 1)}
end

local function place_blob(place)
  return struct.pack(PLACE_HEAD, #place.d / PAIR_WIDTH, #place.f / PAIR_WIDTH) .. place.d .. place.f
end

-- Where the 8-byte item id sits in `ids` (1-based entry number), or nil.
local function find(ids, id)
  local from = 1
  while true do
    local at = string.find(ids, id, from, true)
    if not at then return nil end
    if (at - 1) % 8 == 0 then return (at - 1) / 8 + 1 end
    from = at + 1
  end
end

-- Record that the card used item `id` at `t`; past `cap` items, forget the least recent (ties: smallest id).
local function touch(items, id, t, cap)
  local k = find(items.ids, id)
  if k then
    local off = (k - 1) * 8 + 1
    if t > struct.unpack('<i8', items.times, off) then
      items.times = string.sub(items.times, 1, off - 1) .. struct.pack('<i8', t) .. string.sub(items.times, off + 8)
    end
    return
  end
  items.ids = items.ids .. id
  items.times = items.times .. struct.pack('<i8', t)
  local n = #items.ids / 8
  if n <= cap then return end
  local oldest, oldest_t, oldest_id = nil, nil, nil
  for i = 1, n do
    local when = struct.unpack('<i8', items.times, (i - 1) * 8 + 1)
    local ident = struct.unpack('<i8', items.ids, (i - 1) * 8 + 1)
    if (not oldest) or when < oldest_t or (when == oldest_t and ident < oldest_id) then
      oldest, oldest_t, oldest_id = i, when, ident
    end
  end
  local off = (oldest - 1) * 8
  items.ids = string.sub(items.ids, 1, off) .. string.sub(items.ids, off + 9)
  items.times = string.sub(items.times, 1, off) .. string.sub(items.times, off + 9)
end

local DAY_US = layout.size.d
local kept_day = layout.kept.d

if mode == 'show' then
  return redis.call('GET', prefix .. 'card:' .. ARGV[4])
end

if mode == 'labels' then
  local applied = 0
  for i = 4, #ARGV, 7 do
    local txn, version, fraud, day = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
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
        for e = 0, 2 do
          local ident = ARGV[i + 4 + e]
          if ident ~= '' then
            local key = prefix .. ident
            local blob = fetch(key)
            local state, width, kept
            if e == 0 then state, width, kept = card_parse(blob), CARD_WIDTH, kept_day
            else state, width, kept = place_parse(blob), PAIR_WIDTH, layout.place_kept end
            local ring, changed = add(state.f, PAIR_WIDTH, PAIR, day, kept, {delta}, false, newest(state.d, width))
            if changed then
              state.f = ring
              local ttl = ttls[key]
              if not ttl then
                ttl = redis.call('TTL', key)
                if ttl <= 0 then ttl = layout.entity_ttl end
              end
              store(key, e == 0 and card_blob(state) or place_blob(state), ttl)
            end
          end
        end
      end
      redis.call('SET', state_key, version .. ',' .. fraud, 'EX', layout.label_ttl)
      applied = applied + 1
    end
  end
  flush()
  return applied
end

local heads, card_m5, card_h, card_d, card_f, seen_t, seen_m, seen_c = {}, {}, {}, {}, {}, {}, {}, {}
local term_d, term_f, merch_d, merch_f = {}, {}, {}, {}
local SIZE_M5, SIZE_H = layout.size.m5, layout.size.h
local NONE = 65535  -- the payment has no such item / place
local REPLY_HEAD = '<HHHHHHHHHHHHHHHi8i8dd'

for i = 4, #ARGV, 5 do
  local t, amount, square, has_geo, lat, lon, present, id_t, id_m, id_c, id_v =
    struct.unpack('<i8i8i8BddBc8c8c8c8', ARGV[i + 4])
  local ids = {t = id_t, m = id_m, c = id_c, v = id_v}
  local has = {t = present % 2 >= 1, m = present % 4 >= 2, c = present % 8 >= 4, v = present % 16 >= 8}
  local card_key = prefix .. 'card:' .. ARGV[i + 1]
  local applied = redis.call('SET', prefix .. 'seen:' .. ARGV[i], '1', 'NX', 'EX', layout.marker_ttl) and 1 or 0
  local card = card_parse(fetch(card_key))
  local has_pt, has_pcp = card.flags % 2, math.floor(card.flags / 2) % 2
  local head_flags, head_pt, head_pcp_t, head_lat, head_lon = card.flags, card.pt, card.pcp_t, card.lat, card.lon
  local seen_device = has.v and (find(card.items.v.ids, id_v) and 1 or 0) or NONE
  local seen_terminal = has.t and (find(card.items.t.ids, id_t) and 1 or 0) or NONE
  local day = math.floor(t / DAY_US)
  if applied == 1 then
    local deltas = {1, amount, square}
    card.m5 = add(card.m5, CARD_WIDTH, CARD_ENTRY, math.floor(t / SIZE_M5), layout.kept.m5, deltas, true, nil)
    card.h = add(card.h, CARD_WIDTH, CARD_ENTRY, math.floor(t / SIZE_H), layout.kept.h, deltas, true, nil)
    card.d = add(card.d, CARD_WIDTH, CARD_ENTRY, day, kept_day, deltas, true, nil)
    card.f = prune(card.f, PAIR_WIDTH, newest(card.d, CARD_WIDTH), kept_day)
    if has_pt == 0 or t > card.pt then card.pt = t; has_pt = 1 end
    if has_geo == 1 and (has_pcp == 0 or t >= card.pcp_t) then
      card.pcp_t, card.lat, card.lon, has_pcp = t, lat, lon, 1
    end
    card.flags = has_pt + 2 * has_pcp
    for _, kind in ipairs(KINDS) do
      if has[kind] then touch(card.items[kind], ids[kind], t, layout.recent_items) end
    end
    store(card_key, card_blob(card), layout.entity_ttl)
  end
  local places = {}
  for _, kind in ipairs({'terminal', 'merchant'}) do
    local ident = ARGV[i + (kind == 'terminal' and 2 or 3)]
    if ident ~= '' then
      local key = prefix .. kind .. ':' .. ident
      local place = place_parse(fetch(key))
      if applied == 1 then
        place.d = add(place.d, PAIR_WIDTH, PAIR, day, layout.place_kept, {1}, true, nil)
        place.f = prune(place.f, PAIR_WIDTH, newest(place.d, PAIR_WIDTH), layout.place_kept)
        store(key, place_blob(place), layout.entity_ttl)
      end
      places[kind] = place
    end
  end
  local term, merch = places.terminal, places.merchant
  heads[#heads + 1] = struct.pack(REPLY_HEAD, applied, seen_device, seen_terminal, head_flags,
    #card.m5 / CARD_WIDTH, #card.h / CARD_WIDTH, #card.d / CARD_WIDTH, #card.f / PAIR_WIDTH,
    has.t and #card.items.t.times / 8 or NONE, has.m and #card.items.m.times / 8 or NONE,
    has.c and #card.items.c.times / 8 or NONE, term and #term.d / PAIR_WIDTH or NONE, term and #term.f / PAIR_WIDTH or 0,
    merch and #merch.d / PAIR_WIDTH or NONE, merch and #merch.f / PAIR_WIDTH or 0,
    head_pt or 0, head_pcp_t or 0, head_lat or 0, head_lon or 0)
  card_m5[#card_m5 + 1] = card.m5
  card_h[#card_h + 1] = card.h
  card_d[#card_d + 1] = card.d
  card_f[#card_f + 1] = card.f
  if has.t then seen_t[#seen_t + 1] = card.items.t.times end
  if has.m then seen_m[#seen_m + 1] = card.items.m.times end
  if has.c then seen_c[#seen_c + 1] = card.items.c.times end
  if term then term_d[#term_d + 1] = term.d; term_f[#term_f + 1] = term.f end
  if merch then merch_d[#merch_d + 1] = merch.d; merch_f[#merch_f + 1] = merch.f end
end
flush()
return {table.concat(heads), table.concat(card_m5), table.concat(card_h), table.concat(card_d), table.concat(card_f),
  table.concat(seen_t), table.concat(seen_m), table.concat(seen_c), table.concat(term_d), table.concat(term_f),
  table.concat(merch_d), table.concat(merch_f)}
