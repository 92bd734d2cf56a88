-- ledger_trim: drop ledger rows that are safe in the SQL archive and outside the recent window.
--
-- Called by the archiver right after the SQL transaction holding the rows has committed, so
-- a row leaves Redis only once it is durable elsewhere; a row not yet archived never leaves.
--
-- KEYS[1] ledger  stream  the workspace's ledger rows, id "<at ms>-<n>"
-- ARGV[1] archived_id  string   id of the newest row committed to the archive
-- ARGV[2] keep_from_ms integer  archived rows at or after this time stay (the time window)
-- ARGV[3] keep_rows    integer  at most this many archived rows stay (the row window)
-- Replies:
--   {0, removed, left}  rows removed now, rows left in the stream
-- Side effects: XTRIM of the ledger stream only.
local rcall = redis.call
local ledger = KEYS[1]
local archived_id, keep_from_ms, keep_rows = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local at, n = string.match(archived_id, '^(%d+)-(%d+)$')
if not at then return redis.error_reply('archived_id must look like <ms>-<n>') end
-- Rows with an id up to archived_id are archived: the first one that is not is <at>-<n+1>.
local safe_below = at .. '-' .. (tonumber(n) + 1)
local time_below = keep_from_ms .. '-0'
local removed = 0
-- The time window: MINID keeps ids >= the smaller of the two bounds.
if tonumber(at) < keep_from_ms then
  removed = removed + rcall('XTRIM', ledger, 'MINID', safe_below)
else
  removed = removed + rcall('XTRIM', ledger, 'MINID', time_below)
end
-- The row window: MAXLEN drops the oldest rows, safe only when every row it drops is
-- archived, i.e. when at most keep_rows rows are newer than archived_id.
local len = rcall('XLEN', ledger)
if len > keep_rows then
  local newer = rcall('XRANGE', ledger, '(' .. archived_id, '+', 'COUNT', keep_rows + 1)
  if #newer <= keep_rows then
    removed = removed + rcall('XTRIM', ledger, 'MAXLEN', keep_rows)
  else
    -- More unarchived rows than the window: drop every archived one, keep the rest.
    removed = removed + rcall('XTRIM', ledger, 'MINID', safe_below)
  end
end
return {0, removed, rcall('XLEN', ledger)}
