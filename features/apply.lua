-- fraudpipe online features: every entity is a base plus the records appended since; this script only appends,
-- marks and compares bytes. Semantics are those of features/memory.py (held equal to it by parity tests); key names
-- are those of fraudpipe/keys.py, record formats those of features/plan.py, base formats those of features/blobs.py (never parsed here: the
-- client reads and folds). Keys are built here from the prefix and ids in the arguments: standalone Redis, see
-- features/store.py.
--
-- ARGV[1] mode, ARGV[2] prefix, ARGV[3] entity TTL (s), ARGV[4] marker hash TTL (s), ARGV[5] label TTL (s),
-- ARGV[6] event days per marker hash, then per mode:
--   'txns'    ARGV[7] the request (plan.py), ARGV[8..] entities whose expiry to renew ('card:<token>' renews its
--             base and log; 'terminal:<id>', 'merchant:<id>')
--     apply each transaction once (memory.py: mark, against its card's markers of its event day's block,
--     'applied:<token>:<block>') by appending its record to 'cardlog:<token>' and its day to its terminal and
--     merchant, one APPEND per key; answer (plan.py) with a byte per transaction (1: applied) and the length of
--     each card's log and each place's value before the batch (u32 each)
--   'rebase'  ARGV[7..] 3 per entity: 'card:<token>', its log folded (head and records), the new base; or
--             'terminal:<id>' / 'merchant:<id>', the value's bytes folded, the new base
--     a compare-and-set: replace a card's base only if its log still starts with exactly the log folded (the same
--     generation: no other fold since, so the base folded is the base), keeping the records after them under the
--     next generation; a place's value only if it still starts with exactly the bytes folded (keeping the rest,
--     and its expiry); return how many were replaced
--   'labels'  ARGV[7..] 7 per label: txn id, version, fraud 0/1, day, 'card:<token>', 'terminal:<id>' or '',
--             'merchant:<id>' or ''
--     apply each label whose version is newer than the last applied for its transaction, by appending a label
--     record to each entity it moves, and keep its card's block: 'blocked:<token>' lists the transactions whose
--     last label is a fraud, space-separated (a fraud label adds its id, a revision to genuine removes it; the key
--     goes with the last); return how many

local mode, prefix = ARGV[1], ARGV[2]
local entity_ttl, marker_ttl, label_ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local marker_days = tonumber(ARGV[6])
local EMPTY_CARD = string.rep('\0', 9)   -- blobs.py: EMPTY_CARD
local EMPTY_PLACE = string.rep('\0', 2)  -- blobs.py: EMPTY_PLACE
local CREATED = '~'                      -- plan.py: CREATED
local LOG_HEAD = '<I4'                   -- blobs.py: LOG_HEAD, the log's fold generation


-- Append `data` to a place's value (a new place: its empty base first); returns its length before.
local function append_place(key, data)
  local length = redis.call('APPEND', key, data)
  if length == #data then
    redis.call('SET', key, EMPTY_PLACE .. data, 'EX', entity_ttl)
    return #EMPTY_PLACE
  end
  return length - #data
end

-- Add (fraud) or remove (genuine) `txn` in the card's block list; the key expires with the labels, goes when empty.
local function block(token, txn, fraud)
  local key = prefix .. 'blocked:' .. token
  local kept, listed = {}, false
  for id in string.gmatch(redis.call('GET', key) or '', '%S+') do
    if id == txn then listed = true end
    if id ~= txn or fraud then kept[#kept + 1] = id end
  end
  if fraud and not listed then kept[#kept + 1] = txn end
  if #kept == 0 then
    redis.call('DEL', key)
  else
    redis.call('SET', key, table.concat(kept, ' '), 'EX', label_ttl)
  end
end

-- Append records to a card's log; a new log gets its head (generation 0) and its expiry, and its card a base (empty)
-- if it has none: a card with a log has a 'card:' key. Returns the log's length before.
local function append_log(token, data)
  local key = prefix .. 'cardlog:' .. token
  local length = redis.call('APPEND', key, data)
  if length == #data then
    local head = struct.pack(LOG_HEAD, 0)
    redis.call('SET', key, head .. data, 'EX', entity_ttl)
    redis.call('SET', prefix .. 'card:' .. token, EMPTY_CARD, 'EX', entity_ttl, 'NX')
    return #head
  end
  return length - #data
end

if mode == 'rebase' then
  local rebased = 0
  for i = 7, #ARGV, 3 do
    local name, from, base = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if string.sub(name, 1, 5) == 'card:' then
      local token = string.sub(name, 6)
      local log_key = prefix .. 'cardlog:' .. token
      local log = redis.call('GET', log_key)
      if log and string.sub(log, 1, #from) == from then  -- the same generation: the same base, no fold since
        local head = struct.pack(LOG_HEAD, (struct.unpack(LOG_HEAD, log) + 1) % 4294967296)
        redis.call('SET', prefix .. 'card:' .. token, base, 'EX', entity_ttl)
        redis.call('SET', log_key, head .. string.sub(log, #from + 1), 'KEEPTTL')
        rebased = rebased + 1
      end
    else
      local key = prefix .. name
      local value = redis.call('GET', key)
      if value and string.sub(value, 1, #from) == from then
        redis.call('SET', key, base .. string.sub(value, #from + 1), 'KEEPTTL')
        rebased = rebased + 1
      end
    end
  end
  return rebased
end

if mode == 'labels' then
  local applied = 0
  for i = 7, #ARGV, 7 do
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
        local token = string.sub(ARGV[i + 4], 6)
        append_log(token, struct.pack('<Bi4', delta < 0 and 0x81 or 0x80, day))
        block(token, txn, delta > 0)
        for e = 5, 6 do
          if ARGV[i + e] ~= '' then append_place(prefix .. ARGV[i + e], struct.pack('<i4b', -1 - day, delta)) end
        end
      end
      redis.call('SET', state_key, version .. ',' .. fraud, 'EX', label_ttl)
      applied = applied + 1
    end
  end
  return applied
end

-- 'txns'. The request (plan.py), grouped by card then by place. Each transaction is applied once (memory.py: mark):
-- its marker lives in its card's hash of its event day's block, set with the field CREATED in one HSET, which answers
-- how many fields it added (0: a redelivery, also within the batch; 2: it created the hash). Each key is appended to
-- once, with the records the client joined when every transaction of the batch applies.
local blob = ARGV[7]
local n, n_cards, n_places, pos = struct.unpack('<I4I4I4', blob)
local applied, every = {}, true
local tokens, entries, records = {}, {}, {}
for c = 1, n_cards do
  local size, count
  size, pos = struct.unpack('B', blob, pos)
  local token = string.sub(blob, pos, pos + size - 1)
  count, pos = struct.unpack('<I4', blob, pos + size)
  tokens[c], entries[c] = token, {pos, count}
  local head = prefix .. 'applied:' .. token .. ':'
  for _ = 1, count do
    local i, len_id, day
    i, len_id, pos = struct.unpack('<I4B', blob, pos)
    local id = string.sub(blob, pos, pos + len_id - 1)
    day, pos = struct.unpack('<i4', blob, pos + len_id)
    pos = pos + 1  -- the record's size
    local key = head .. math.floor(day / marker_days)
    local added = redis.call('HSET', key, CREATED, '', id, '')
    if added == 0 then
      applied[i + 1], every = 0, false
    else
      applied[i + 1] = 1
      if added == 2 then redis.call('EXPIRE', key, marker_ttl) end
    end
  end
  size, pos = struct.unpack('<I4', blob, pos)
  records[c] = string.sub(blob, pos, pos + size - 1)
  pos = pos + size
end

-- The appends: each card's applied records, then each place's applied days; the answer.
local out = {}
for i = 1, n, 4000 do out[#out + 1] = string.char(unpack(applied, i, math.min(i + 3999, n))) end
for c = 1, n_cards do
  local data = records[c]
  if not every then  -- only the records of the transactions applied
    local parts, at, from = {}, entries[c][1], 1
    for _ = 1, entries[c][2] do
      local i, len_id, size
      i, len_id, at = struct.unpack('<I4B', blob, at)
      size = struct.unpack('B', blob, at + len_id + 4)
      at = at + len_id + 5
      if applied[i + 1] == 1 then parts[#parts + 1] = string.sub(data, from, from + size - 1) end
      from = from + size
    end
    data = table.concat(parts)
  end
  local before
  if #data > 0 then
    before = append_log(tokens[c], data)
  else
    before = redis.call('STRLEN', prefix .. 'cardlog:' .. tokens[c])
  end
  out[#out + 1] = struct.pack('<I4', before)
end
for _ = 1, n_places do
  local size, count
  size, pos = struct.unpack('B', blob, pos)
  local key = prefix .. string.sub(blob, pos, pos + size - 1)
  count, pos = struct.unpack('<I4', blob, pos + size)
  local numbers = pos
  pos = pos + 4 * count
  local data = string.sub(blob, pos, pos + 4 * count - 1)
  pos = pos + 4 * count
  if not every then
    local parts = {}
    for k = 1, count do
      if applied[struct.unpack('<I4', blob, numbers + 4 * (k - 1)) + 1] == 1 then
        parts[#parts + 1] = string.sub(data, 4 * k - 3, 4 * k)
      end
    end
    data = table.concat(parts)
  end
  local before
  if #data > 0 then before = append_place(key, data) else before = redis.call('STRLEN', key) end
  out[#out + 1] = struct.pack('<I4', before)
end

for i = 8, #ARGV do
  local name = ARGV[i]
  if string.sub(name, 1, 5) == 'card:' then
    local token = string.sub(name, 6)
    redis.call('EXPIRE', prefix .. 'card:' .. token, entity_ttl)
    redis.call('EXPIRE', prefix .. 'cardlog:' .. token, entity_ttl)
  else
    redis.call('EXPIRE', prefix .. name, entity_ttl)
  end
end
return table.concat(out)
