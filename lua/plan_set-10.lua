-- plan_set: assign a plan to a workspace (or take it away), starting a new cycle now.
--
-- KEYS[1..9] ws, wallet, calls, due, cuts, ledger, events, ended, ended_at (as call_start)
-- KEYS[10] audit  stream  the workspace's audit log: one plan.set entry (lua/_audit.lua)
-- ARGV[1] now_ms     integer
-- ARGV[2] plan       string   plan name; "" takes the plan away
-- ARGV[3] anchor     integer  anchor day of month, 1..31
-- ARGV[4] cy         integer  ms the new cycle started (the last anchor day at or before now)
-- ARGV[5] cy_end     integer  ms the new cycle ends (the next anchor day after now)
-- ARGV[6] n_al       integer  how many allowance pairs follow
-- ARGV[7..9]         who: key id, person, address of the caller
-- ARGV[10..]         n_al pairs (service, units per cycle: seconds for calls), then
--                    triples (commitment name, micros per cycle, services comma-separated)
-- Replies:
--   {0}   assigned
--   {-1}  no such workspace
-- Side effects: the current cycle (if any) is closed at now as at a boundary: live calls keep
-- the allowance they used, the rest expires; one `plan_cycle` ledger row (amount 0) names
-- what expired and the new plan's buckets. Commitment holds of live calls carry over.
local rcall = redis.call
local ws, wallet, calls, due, cuts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ledger, events, ended, ended_at = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now_ms = tonumber(ARGV[1])
local name, anchor = ARGV[2], tonumber(ARGV[3])
local cy, cy_end, n_al = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local audit_log, who = KEYS[10], {ARGV[7], ARGV[8], ARGV[9]}

--!include _post.lua
--!include _rating.lua
--!include _plan.lua
--!include _audit.lua

local SERVICES = {'voice', 'ai_agent', 'sms', 'mms', 'fax', 'chat'}

if rcall('EXISTS', ws) == 0 then return {-1} end
local before = rcall('HMGET', wallet, 'plan', 'cy_anchor')
audit(audit_log, now_ms, who, 'plan.set', ARGV[2] ~= '' and ARGV[2] or 'none',
  cjson.encode({plan = before[1] or cjson.null, cycle_anchor = before[2] or cjson.null}),
  cjson.encode({plan = name ~= '' and name or cjson.null,
    cycle_anchor = name ~= '' and anchor or cjson.null}))
plan_roll(now_ms)
local extra, touched = {}, {}
if plan_cycle_end() then extra, touched = plan_close(now_ms) end
local old = rcall('HMGET', wallet, 'pl_al', 'pl_cm')
for _, svc in ipairs(SERVICES) do rcall('HDEL', wallet, 'al:' .. svc, 'alt:' .. svc, 'cms:' .. svc) end
for _, cm in ipairs(split_list(old[2])) do rcall('HDEL', wallet, 'cm:' .. cm, 'cmt:' .. cm) end
rcall('HINCRBY', wallet, 'version', 1)

if name == '' then
  rcall('HDEL', wallet, 'plan', 'cy', 'cy_end', 'cy_anchor', 'pl_al', 'pl_cm')
  for _, c in ipairs(touched) do rcall('HSET', calls, c.id, cmsgpack.pack(c)) end
  if #extra > 0 then
    extra[#extra + 1] = 'source'
    extra[#extra + 1] = 'plan'
    post(wallet, ledger, events, now_ms, 0, 'plan_cycle', 'Plan removed: unused allowances and '
      .. 'commitments expired', 'plan::' .. now_ms, extra)
  end
  return {0}
end

local al, cms = {}, {}
local i = 10
for _ = 1, n_al do
  al[#al + 1] = ARGV[i]
  rcall('HSET', wallet, 'alt:' .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  local cm = ARGV[i]
  cms[#cms + 1] = cm
  rcall('HSET', wallet, 'cmt:' .. cm, ARGV[i + 1])
  for svc in string.gmatch(ARGV[i + 2], '[^,]+') do rcall('HSET', wallet, 'cms:' .. svc, cm) end
  i = i + 3
end
rcall('HSET', wallet, 'plan', name, 'cy_anchor', anchor, 'cy', cy, 'cy_end', cy_end,
  'pl_al', table.concat(al, ','), 'pl_cm', table.concat(cms, ','))
plan_end_cache = cy_end
plan_open(now_ms, extra, touched, 'Plan set to ' .. name, 'plan:' .. name .. ':' .. now_ms)
return {0}
