-- outbox_window: the events of one workspace to send now, and when the rest fall due.
--
-- Reads the events after the delivery cursor, in stream order. An event never tried is due
-- now; a failed one at its next try time, or now when `flush` says the receiver answers
-- again. With an owner it first moves the cursor over finished events and drops a retried
-- call.* event (cut, limit, extended) whose call has ended (the switch hung up already:
-- nothing left to cut or re-arm, so it is not retried for hours). Without one (owner "") it
-- only reads: the due-index uses that to learn the workspace's earliest due time.
--
-- KEYS[1] outbox  hash    delivery state (see lua/_outbox.lua)
-- KEYS[2] events  stream  the workspace's events
-- KEYS[3] ended   hash    call id -> result of ended calls
-- ARGV[1] owner   string   the lease owner, or "" to only read
-- ARGV[2] now_ms  integer
-- ARGV[3] limit   integer  most events returned (0: only the due time)
-- ARGV[4] scan    integer  most events after the cursor looked at
-- ARGV[5] flush   "1": failed events are due now (the receiver came back); optional
-- Replies:
--   {0, due_ms, cursor, id1, attempts1, fields1, id2, ...}
--       the events due now (at most `limit`, oldest first; fields as a flat list) after
--       `cursor`; due_ms = the earliest due time of the other unfinished events looked at
--       (now_ms as soon as one more is due now), -1 when there are none
--   {-3}  an owner was given and does not hold the lease (nothing changed)
-- Side effects (owner given): cursor moved; dropped call.* events marked finished.
local rcall = redis.call
local outbox, events, ended = KEYS[1], KEYS[2], KEYS[3]
local owner = ARGV[1]
local now_ms, limit, scan = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local flush = ARGV[5] == '1'

--!include _outbox.lua

local cursor
if owner ~= '' then
  if rcall('HGET', outbox, 'owner') ~= owner then return {-3} end
  cursor = advance(outbox, events)
else
  cursor = rcall('HGET', outbox, 'cursor') or '0-0'
end

local reply = {0, -1, cursor}
local due, taken, dropped_any = -1, 0, false
local batch = rcall('XRANGE', events, '(' .. cursor, '+', 'COUNT', scan)
for i = 1, #batch do
  local id, entry = batch[i][1], batch[i][2]
  local state = rcall('HGET', outbox, 's:' .. id)
  if state ~= 'ok' then
    local attempts, next_ms = 0, now_ms
    if state then
      local colon = string.find(state, ':', 1, true)
      attempts = tonumber(string.sub(state, 1, colon - 1))
      next_ms = tonumber(string.sub(state, colon + 1))
      if flush then next_ms = now_ms end
    end
    local dropped = false
    -- A stale, lost_end or platform cut is sent as Gate ends the call: it must still be
    -- retried.
    local kind = field(entry, 'type') or ''
    local reason = kind == 'call.cut' and field(entry, 'd:reason') or ''
    local swept = reason == 'stale' or reason == 'lost_end' or reason == 'platform'
    if owner ~= '' and attempts > 0 and string.sub(kind, 1, 5) == 'call.' and not swept then
      local call_id = field(entry, 'd:call_id')
      if call_id and rcall('HEXISTS', ended, call_id) == 1 then
        rcall('HSET', outbox, 's:' .. id, 'ok')
        rcall('HINCRBY', outbox, 'dropped', 1)
        dropped, dropped_any = true, true
      end
    end
    if not dropped then
      if next_ms <= now_ms and taken < limit then
        taken = taken + 1
        reply[#reply + 1] = id
        reply[#reply + 1] = attempts
        reply[#reply + 1] = entry
      elseif next_ms <= now_ms then
        due = now_ms  -- more is due now: no need to look further
        break
      elseif due < 0 or next_ms < due then
        due = next_ms
      end
    end
  end
end
reply[2] = due
if dropped_any then reply[3] = advance(outbox, events) end
return reply
