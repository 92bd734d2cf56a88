-- due_claim: lease the workspaces whose work is due, so one gate process handles each.
--
-- KEYS[1] index  zset  workspace id -> due ms (gate:due:tick or gate:due:outbox; global,
--                      a hint: each workspace's own keys hold the truth)
-- ARGV[1] now_ms    integer
-- ARGV[2] lease_ms  integer  a claimed workspace is due again after this, in case its
--                           claimer dies before settling it
-- ARGV[3] limit     integer  most workspaces per claim
-- Replies:
--   {0, workspace_id...}  the claimed workspaces, most overdue first; each with its old due
--                         ms after it: {0, id1, due1, id2, due2, ...}
local rcall = redis.call
local index = KEYS[1]
local now_ms, lease_ms, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local items = rcall('ZRANGEBYSCORE', index, '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, limit)
local reply = {0}
for i = 1, #items, 2 do
  rcall('ZADD', index, now_ms + lease_ms, items[i])
  reply[#reply + 1] = items[i]
  reply[#reply + 1] = items[i + 1]
end
return reply
