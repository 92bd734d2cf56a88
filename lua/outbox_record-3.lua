-- outbox_record: record the outcome of webhook sends and move the delivery cursor.
--
-- The cursor only moves over events that are finished one after another, so an event whose
-- send was never recorded (the process died) is sent again: at least once, never lost.
--
-- KEYS[1] outbox      hash    delivery state (see lua/_outbox.lua)
-- KEYS[2] events      stream  the workspace's events
-- KEYS[3] deadletter  stream  events whose delivery gave up
-- ARGV[1] owner     string   the lease owner
-- ARGV[2] now_ms    integer
-- ARGV[3] lease_ms  integer  the lease is renewed until now_ms + lease_ms
-- ARGV[4] skip_to   a stream id: the workspace had no webhook URL when that was the newest
--                   event; finish every event up to it (they stay in the stream for SSE).
--                   Later events wait for the next round, in case a URL came with them.
--                   "" otherwise
-- ARGV[5..n]        (stream id, outcome, detail) triples:
--                     ok     ""                        delivered (a 2xx answer)
--                     retry  "<attempts>:<next_ms>"    failed; try again at next_ms
--                     dead   "<attempts> <last error>" failed past the retry budget
-- Replies:
--   {0, cursor}   recorded; cursor = the new delivery cursor
--   {-3}          this owner no longer holds the lease (nothing changed: its sends will be
--                 redone by the new owner)
-- Side effects: a dead event is copied to the dead-letter stream with fields event_id,
--   attempts, error, dead_at and the event's own fields; counters delivered and dead.
local rcall = redis.call
local outbox, events, deadletter = KEYS[1], KEYS[2], KEYS[3]
local owner = ARGV[1]
local now_ms, lease_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local skip_to = ARGV[4]

--!include _outbox.lua

local DEADLETTER_MAXLEN = 10000

if rcall('HGET', outbox, 'owner') ~= owner then return {-3} end
rcall('HSET', outbox, 'until', now_ms + lease_ms)
local cursor = rcall('HGET', outbox, 'cursor') or '0-0'

for i = 5, #ARGV, 3 do
  local id, outcome, detail = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if id_after(id, cursor) then
    if outcome == 'retry' then
      rcall('HSET', outbox, 's:' .. id, detail)
    else
      rcall('HSET', outbox, 's:' .. id, 'ok')
      if outcome == 'dead' then
        local space = string.find(detail, ' ', 1, true)
        local row = {'event_id', id, 'attempts', string.sub(detail, 1, space - 1),
          'error', string.sub(detail, space + 1), 'dead_at', now_ms}
        local entry = rcall('XRANGE', events, id, id)
        if #entry > 0 then
          for _, v in ipairs(entry[1][2]) do row[#row + 1] = v end
        end
        rcall('XADD', deadletter, 'MAXLEN', '~', DEADLETTER_MAXLEN, '*', unpack(row))
        rcall('HINCRBY', outbox, 'dead', 1)
      else
        rcall('HINCRBY', outbox, 'delivered', 1)
      end
    end
  end
end

if skip_to ~= '' and id_after(skip_to, cursor) then
  local names = rcall('HKEYS', outbox)
  for _, name in ipairs(names) do
    if string.sub(name, 1, 2) == 's:' and not id_after(string.sub(name, 3), skip_to) then
      rcall('HDEL', outbox, name)
    end
  end
  rcall('HSET', outbox, 'cursor', skip_to)
end
return {0, advance(outbox, events)}
