-- Include: the delivery state of one workspace's event stream, kept in its outbox hash.
--
-- Outbox hash fields:
--   cursor         stream id: every event up to it is finished (delivered, dead-lettered or
--                  dropped); absent: none yet ("0-0")
--   owner, until   the gate process delivering this workspace now, and its lease end (ms)
--   s:<stream id>  an event after the cursor: "ok" finished, or "<attempts>:<next_ms>" after
--                  failed attempts (next_ms: when to try again)
--   delivered, dead, dropped   counters, for operators
-- Needs `rcall` defined before the include.

-- Is stream id a after stream id b?
local function id_after(a, b)
  local da, db = string.find(a, '-', 1, true), string.find(b, '-', 1, true)
  local am, bm = tonumber(string.sub(a, 1, da - 1)), tonumber(string.sub(b, 1, db - 1))
  if am ~= bm then return am > bm end
  return tonumber(string.sub(a, da + 1)) > tonumber(string.sub(b, db + 1))
end

-- Move the cursor over the finished events right after it; returns the cursor.
local function advance(outbox, events)
  local cursor = rcall('HGET', outbox, 'cursor') or '0-0'
  local start = cursor
  while true do
    local batch = rcall('XRANGE', events, '(' .. cursor, '+', 'COUNT', 100)
    local stop = #batch == 0
    for i = 1, #batch do
      local id = batch[i][1]
      if rcall('HGET', outbox, 's:' .. id) ~= 'ok' then
        stop = true
        break
      end
      rcall('HDEL', outbox, 's:' .. id)
      cursor = id
    end
    if stop then break end
  end
  if cursor ~= start then rcall('HSET', outbox, 'cursor', cursor) end
  return cursor
end

-- The value of field `name` in a flat stream entry {name1, value1, name2, value2, ...}.
local function field(entry, name)
  for i = 1, #entry, 2 do
    if entry[i] == name then return entry[i + 1] end
  end
  return nil
end
