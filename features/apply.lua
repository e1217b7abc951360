-- fraudpipe online features: each entity is a journal, folded lazily. Semantics are those of features/memory.py,
-- held equal to it by a parity test; binary formats are those of features/blobs.py. Keys are built here from the
-- prefix and ids in the arguments: standalone Redis, see features/store.py.
--
-- An entity's value is its base (the state as of its last fold) followed by the records appended since, oldest
-- first: a card's records are transaction records (plan.py: RECORD), a terminal's or merchant's the payment's day
-- (DAY). Applying a payment is an APPEND per entity, a few bytes written in place; the fold (applying the records
-- to the base, exactly as one at a time) happens in the client (features/fold.py), written back with 'rebase', or
-- here before a label moves the entity. Readers (features/blobs.py, features/reader.py) read a base and its records
-- the same way.
--
--   ARGV[1] 'txns'    ARGV[2] JSON layout (plan.py: layout())   ARGV[3] prefix
--                     then 5 per transaction: txn id, card token, terminal id, merchant id ('' if none), record
--     apply each transaction once (marker: field txn id of hash 'seen:<event day>', set in this call) and return
--     one head per transaction (blobs.py: HEAD): applied, and the byte length of its card, terminal and merchant
--     values right after it (0: the payment has no such place)
--   ARGV[1] 'rebase'  ARGV[2] JSON layout   ARGV[3] prefix   then 3 per entity: name ('card:<token>', 'terminal:<id>',
--                     ...), the value it was folded from, its folded base
--     replace each entity's value by its folded base followed by the records appended since, only if the value still
--     starts with exactly the bytes folded (a compare-and-set; else another fold or a label rewrote it first), keeping
--     its expiry; return how many were replaced
--   ARGV[1] 'labels'  ARGV[2] JSON layout   ARGV[3] prefix   then 7 per label: txn id, version, fraud 0/1, day,
--                     and the entities it moves: 'card:<token>', 'terminal:<id>' or '', 'merchant:<id>' or ''
--     apply each label whose version is newer than the last applied for its transaction; return how many
--   ARGV[1] 'show'    ARGV[2] JSON layout   ARGV[3] prefix   ARGV[4] entity name ('card:<token>', ...)
--     the entity's folded value (nil when it has none), for `fraudpipe features show`; nothing is written
--
-- Rings are binary strings of entries sorted by bucket (bucket first, as a 4-byte integer). A payment ring's
-- newest bucket is its last entry; buckets at or below newest - kept are dropped and never re-added; a fraud ring
-- follows its payment ring 'd'.

local mode = ARGV[1]
local layout = cjson.decode(ARGV[2])
local prefix = ARGV[3]

local CARD_HEAD = '<HHHHHHHHHi8i8dd'  -- flags, entries m5 h d f, items t m c v, pt, pcp (µs, lat, lon)
local CARD_HEAD_SIZE = 50
local PLACE_HEAD, PLACE_HEAD_SIZE = '<HH', 4  -- entries d f
local CARD_ENTRY, CARD_WIDTH = '<i4i4i8i8', 24   -- bucket, count, cents, cents²
local PAIR, PAIR_WIDTH = '<i4i4', 8              -- bucket, count (place d) or frauds (f)
local RECORD, RECORD_WIDTH = '<i8i8i8BddBc8c8c8c8', 74
local DAY, DAY_WIDTH = '<i4', 4
local KINDS = {'t', 'm', 'c', 'v'}              -- terminal, merchant, country, device
local RINGS = {'m5', 'h', 'd'}
local EMPTY_CARD = struct.pack(CARD_HEAD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
local EMPTY_PLACE = struct.pack(PLACE_HEAD, 0, 0)
local DAY_US = layout.size.d
local kept_day = layout.kept.d

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

-- Add `deltas` to bucket `idx` of a fraud ring kept from `limit` (its payment ring's newest). Returns the ring
-- and whether it changed.
local function add_fraud(ring, idx, kept, delta, limit)
  if limit and idx <= limit - kept then return ring, false end
  local at = #ring + 1  -- where the entry goes, scanning from the newest
  while at > 1 do
    local previous, count = struct.unpack(PAIR, ring, at - PAIR_WIDTH)
    if previous < idx then break end
    if previous == idx then
      return string.sub(ring, 1, at - PAIR_WIDTH - 1) .. struct.pack(PAIR, idx, count + delta) .. string.sub(ring, at),
        true
    end
    at = at - PAIR_WIDTH
  end
  return string.sub(ring, 1, at - 1) .. struct.pack(PAIR, idx, delta) .. string.sub(ring, at), true
end

-- Payments folded into a payment ring, exactly as added one at a time: a bucket at or below newest - kept when it
-- comes is dropped (ring_add), and the ring keeps what is above its final newest - kept (ring_merge). `acc` holds
-- the running newest, the lowest bucket added and the sums per bucket ({bucket, deltas...}).
local function ring_acc(ring, width, kept)
  return {top = newest(ring, width), kept = kept, sums = {}, low = nil}
end

local function ring_add(acc, idx, a, b, c)
  local top = acc.top
  if top and idx <= top - acc.kept then return end
  local entry = acc.sums[idx]
  if entry then
    entry[2] = entry[2] + a
    if b then entry[3], entry[4] = entry[3] + b, entry[4] + c end
  else
    acc.sums[idx] = b and {idx, a, b, c} or {idx, a}
    if (not acc.low) or idx < acc.low then acc.low = idx end
  end
  if (not top) or idx > top then acc.top = idx end
end

-- The ring with `acc` merged in. Entries older than every bucket added stay as they are (bytes, not parsed).
local function ring_merge(ring, width, format, acc)
  local low, top, sums = acc.low, acc.top, acc.sums
  if not low then return ring end
  local cut = #ring + 1
  while cut > 1 and struct.unpack('<i4', ring, cut - width) >= low do
    local entry = {struct.unpack(format, ring, cut - width)}
    entry[#entry] = nil  -- struct.unpack's next position
    local sum = sums[entry[1]]
    if sum then
      for d = 2, #sum do sum[d] = sum[d] + entry[d] end
    else
      sums[entry[1]] = entry
    end
    cut = cut - width
  end
  local order = {}
  for idx in pairs(sums) do if idx > top - acc.kept then order[#order + 1] = idx end end
  table.sort(order)
  local parts = {prune(string.sub(ring, 1, cut - 1), width, top, acc.kept)}
  for _, idx in ipairs(order) do parts[#parts + 1] = struct.pack(format, unpack(sums[idx])) end
  return table.concat(parts)
end

local function card_parse(blob)
  local card = {items = {}}
  local counts = {}
  local pos
  card.flags, counts.m5, counts.h, counts.d, counts.f, counts.t, counts.m, counts.c, counts.v,
    card.pt, card.pcp_t, card.lat, card.lon, pos = struct.unpack(CARD_HEAD, blob)
  for _, ring in ipairs(RINGS) do
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
  card.size = pos - 1  -- the base's length: records follow
  return card
end

local function card_blob(card)
  local parts = {struct.pack(CARD_HEAD, card.flags, #card.m5 / CARD_WIDTH, #card.h / CARD_WIDTH,
    #card.d / CARD_WIDTH, #card.f / PAIR_WIDTH, #card.items.t.ids / 8, #card.items.m.ids / 8, #card.items.c.ids / 8,
    #card.items.v.ids / 8, card.pt, card.pcp_t, card.lat, card.lon), card.m5, card.h, card.d, card.f}
  for _, kind in ipairs(KINDS) do
    parts[#parts + 1] = card.items[kind].ids
    parts[#parts + 1] = card.items[kind].times
  end
  return table.concat(parts)
end

local function place_parse(blob)
  local nd, nf, pos = struct.unpack(PLACE_HEAD, blob)
  local place = {d = string.sub(blob, pos, pos + nd * PAIR_WIDTH - 1)}
  place.f = string.sub(blob, pos + nd * PAIR_WIDTH, pos + (nd + nf) * PAIR_WIDTH - 1)
  place.size = PLACE_HEAD_SIZE + (nd + nf) * PAIR_WIDTH
  return place
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

-- Touch items of one kind: `latest` (id -> latest use) and `order` (ids in order of first use) are the uses, as one
-- touch() each when no item has to be forgotten; otherwise `replay` touches them one at a time.
local function touch_all(items, latest, order, cap, replay)
  local stored, added = {}, {}
  for _, id in ipairs(order) do
    local k = find(items.ids, id)
    if k then stored[k] = id else added[#added + 1] = id end
  end
  if #items.ids / 8 + #added > cap then return replay() end
  local moved = {}
  for k, id in pairs(stored) do
    if latest[id] > struct.unpack('<i8', items.times, (k - 1) * 8 + 1) then moved[#moved + 1] = k end
  end
  local times, from = {}, 1
  table.sort(moved)
  for _, k in ipairs(moved) do
    times[#times + 1] = string.sub(items.times, from, (k - 1) * 8)
    times[#times + 1] = struct.pack('<i8', latest[stored[k]])
    from = k * 8 + 1
  end
  times[#times + 1] = string.sub(items.times, from)
  local ids = {items.ids}
  for _, id in ipairs(added) do
    ids[#ids + 1] = id
    times[#times + 1] = struct.pack('<i8', latest[id])
  end
  items.ids, items.times = table.concat(ids), table.concat(times)
end

-- A card's value with its records folded into its base (nil if it has no records).
local function fold_card(blob)
  local card = card_parse(blob)
  if card.size == #blob then return nil end
  local size_m5, size_h = layout.size.m5, layout.size.h
  local m5 = ring_acc(card.m5, CARD_WIDTH, layout.kept.m5)
  local h = ring_acc(card.h, CARD_WIDTH, layout.kept.h)
  local d = ring_acc(card.d, CARD_WIDTH, kept_day)
  local latest = {t = {}, m = {}, c = {}, v = {}}
  local order = {t = {}, m = {}, c = {}, v = {}}
  local has_pt, has_pcp = card.flags % 2, math.floor(card.flags / 2) % 2
  local function use(kind, id, t)
    local seen = latest[kind]
    local last = seen[id]
    if last == nil then
      local list = order[kind]
      list[#list + 1] = id
      seen[id] = t
    elseif t > last then
      seen[id] = t
    end
  end
  for pos = card.size + 1, #blob, RECORD_WIDTH do
    local t, amount, square, has_geo, lat, lon, present, id_t, id_m, id_c, id_v = struct.unpack(RECORD, blob, pos)
    ring_add(m5, math.floor(t / size_m5), 1, amount, square)
    ring_add(h, math.floor(t / size_h), 1, amount, square)
    ring_add(d, math.floor(t / DAY_US), 1, amount, square)
    if has_pt == 0 or t > card.pt then card.pt = t; has_pt = 1 end
    if has_geo == 1 and (has_pcp == 0 or t >= card.pcp_t) then
      card.pcp_t, card.lat, card.lon, has_pcp = t, lat, lon, 1
    end
    if present % 2 == 1 then use('t', id_t, t) end
    if present % 4 >= 2 then use('m', id_m, t) end
    if present % 8 >= 4 then use('c', id_c, t) end
    if present >= 8 then use('v', id_v, t) end
  end
  card.m5 = ring_merge(card.m5, CARD_WIDTH, CARD_ENTRY, m5)
  card.h = ring_merge(card.h, CARD_WIDTH, CARD_ENTRY, h)
  card.d = ring_merge(card.d, CARD_WIDTH, CARD_ENTRY, d)
  card.f = prune(card.f, PAIR_WIDTH, newest(card.d, CARD_WIDTH), kept_day)
  card.flags = has_pt + 2 * has_pcp
  for bit, kind in ipairs(KINDS) do
    if #order[kind] > 0 then
      touch_all(card.items[kind], latest[kind], order[kind], layout.recent_items, function()
        for pos = card.size + 1, #blob, RECORD_WIDTH do
          local record = {struct.unpack(RECORD, blob, pos)}
          if math.floor(record[7] / 2 ^ (bit - 1)) % 2 == 1 then
            touch(card.items[kind], record[7 + bit], record[1], layout.recent_items)
          end
        end
      end)
    end
  end
  return card_blob(card)
end

-- A terminal's or merchant's value with its records folded into its base (nil if it has no records).
local function fold_place(blob)
  local place = place_parse(blob)
  if place.size == #blob then return nil end
  local days = ring_acc(place.d, PAIR_WIDTH, layout.place_kept)
  for pos = place.size + 1, #blob, DAY_WIDTH do ring_add(days, (struct.unpack(DAY, blob, pos)), 1) end
  place.d = ring_merge(place.d, PAIR_WIDTH, PAIR, days)
  place.f = prune(place.f, PAIR_WIDTH, newest(place.d, PAIR_WIDTH), layout.place_kept)
  return place_blob(place)
end

local function fold(name, blob)
  if string.sub(name, 1, 5) == 'card:' then return fold_card(blob) end
  return fold_place(blob)
end

-- Fold the entity `name` in place, keeping its expiry; return its folded value (false if it has none).
local function fold_key(name)
  local key = prefix .. name
  local blob = redis.call('GET', key)
  if not blob then return false end
  local folded = fold(name, blob)
  if not folded then return blob end
  local ttl = redis.call('PTTL', key)
  if ttl > 0 then redis.call('SET', key, folded, 'PX', ttl) else redis.call('SET', key, folded) end
  return folded
end

if mode == 'show' then
  local name = ARGV[4]
  local blob = redis.call('GET', prefix .. name)
  if not blob then return nil end
  return fold(name, blob) or blob
end

if mode == 'rebase' then
  local rebased = 0
  for i = 4, #ARGV, 3 do
    local key, folded_from = prefix .. ARGV[i], ARGV[i + 1]
    local value = redis.call('GET', key)
    if value and string.sub(value, 1, #folded_from) == folded_from then
      redis.call('SET', key, ARGV[i + 2] .. string.sub(value, #folded_from + 1), 'KEEPTTL')
      rebased = rebased + 1
    end
  end
  return rebased
end

if mode == 'labels' then
  local applied = 0
  local states, dirty = {}, {}
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
          local name = ARGV[i + 4 + e]
          if name ~= '' then
            local state = states[name]
            if state == nil then
              local blob = fold_key(name)
              if e == 0 then state = card_parse(blob or EMPTY_CARD) else state = place_parse(blob or EMPTY_PLACE) end
              states[name] = state
            end
            local width, kept = PAIR_WIDTH, layout.place_kept
            if e == 0 then width, kept = CARD_WIDTH, kept_day end
            local ring, changed = add_fraud(state.f, day, kept, delta, newest(state.d, width))
            if changed then
              state.f = ring
              dirty[name] = e == 0
            end
          end
        end
      end
      redis.call('SET', state_key, version .. ',' .. fraud, 'EX', layout.label_ttl)
      applied = applied + 1
    end
  end
  for name, is_card in pairs(dirty) do
    local key = prefix .. name
    local ttl = redis.call('PTTL', key)
    if ttl <= 0 then ttl = layout.entity_ttl * 1000 end
    local state = states[name]
    redis.call('SET', key, is_card and card_blob(state) or place_blob(state), 'PX', ttl)
  end
  return applied
end

-- 'txns': first which transactions were applied before (one HMGET per event day), then the appends.
local days, by_day = {}, {}
for i = 4, #ARGV, 5 do
  local day = math.floor(struct.unpack('<i8', ARGV[i + 4]) / DAY_US)
  local group = by_day[day]
  if not group then
    group = {}
    by_day[day] = group
    days[#days + 1] = day
  end
  group[#group + 1] = ARGV[i]
end
local seen = {}
for _, day in ipairs(days) do
  local ids = by_day[day]
  local found = redis.call('HMGET', prefix .. 'seen:' .. day, unpack(ids))
  for k = 1, #ids do
    if found[k] then seen[ids[k]] = true end
  end
end

local lengths = {}  -- key -> its value's length now
local renewed = {}  -- keys whose expiry this call has set

local function append(key, record, empty)
  local length = redis.call('APPEND', key, record)
  if length == #record then  -- a new entity: its empty base first
    redis.call('SET', key, empty .. record, 'EX', layout.entity_ttl)
    length = #empty + #record
    renewed[key] = true
  elseif not renewed[key] then  -- its expiry renewed once per call
    redis.call('EXPIRE', key, layout.entity_ttl)
    renewed[key] = true
  end
  lengths[key] = length
  return length
end

local function length_of(key)
  local length = lengths[key]
  if length == nil then
    length = redis.call('STRLEN', key)
    lengths[key] = length
  end
  return length
end

local heads, marks = {}, {}
for i = 4, #ARGV, 5 do
  local txn, record = ARGV[i], ARGV[i + 4]
  local card_key = prefix .. 'card:' .. ARGV[i + 1]
  local terminal_key = ARGV[i + 2] ~= '' and (prefix .. 'terminal:' .. ARGV[i + 2]) or nil
  local merchant_key = ARGV[i + 3] ~= '' and (prefix .. 'merchant:' .. ARGV[i + 3]) or nil
  local applied, card, terminal, merchant = 0, 0, 0, 0
  if seen[txn] then  -- a redelivery: read where its entities stand
    card = length_of(card_key)
    if terminal_key then terminal = length_of(terminal_key) end
    if merchant_key then merchant = length_of(merchant_key) end
  else
    seen[txn] = true
    applied = 1
    local day = math.floor(struct.unpack('<i8', record) / DAY_US)
    local day_record = struct.pack(DAY, day)
    card = append(card_key, record, EMPTY_CARD)
    if terminal_key then terminal = append(terminal_key, day_record, EMPTY_PLACE) end
    if merchant_key then merchant = append(merchant_key, day_record, EMPTY_PLACE) end
    local list = marks[day]
    if not list then
      list = {}
      marks[day] = list
    end
    list[#list + 1] = txn
    list[#list + 1] = '1'
  end
  heads[#heads + 1] = struct.pack('<BI4I4I4', applied, card, terminal, merchant)
end
for day, list in pairs(marks) do
  local key = prefix .. 'seen:' .. day
  redis.call('HSET', key, unpack(list))
  redis.call('EXPIRE', key, layout.marker_ttl)
end
return table.concat(heads)
