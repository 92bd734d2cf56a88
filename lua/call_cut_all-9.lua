-- call_cut_all: the platform suspended or closed the workspace with its live calls cut:
-- every live call is billed to now by the gate's clock and told to hang up.
--
-- KEYS[1..9] ws, wallet, calls, due, cuts, ledger, events, ended, ended_at (as call_start)
-- ARGV[1] now_ms  integer
-- ARGV[2] cause   string  the rows' hangup cause: suspended_by_platform | workspace_closed
-- Replies:
--   {0, ids, results}  ids of the calls ended, their MessagePack results (as call_end's)
--   {-1}               no such workspace
-- Side effects: per call a call.cut event (reason "platform"; retried until the switch takes
-- it, as a stale cut is) and one ledger row flagged platform_cut (none for a call not yet
-- answered). The switch's own end later bills the time it kept the call up after this
-- (late_end, _call.lua), never drops it.
local rcall = redis.call
local ws, wallet, calls, due, cuts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ledger, events, ended, ended_at = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now_ms, cause = tonumber(ARGV[1]), ARGV[2]

--!include _post.lua
--!include _rating.lua
--!include _plan.lua
--!include _call.lua

if rcall('EXISTS', ws) == 0 then return {-1} end
plan_roll(now_ms)  -- a cycle that ended is rolled before anything is billed
local ids, results = {}, {}
for _, id in ipairs(rcall('HKEYS', calls)) do
  local c = load_call(id)
  if c then
    send_cut(c, now_ms, 'platform')
    if c.ans == 0 then
      results[#results + 1] = finish(c, 0, now_ms, cause, 'never_started')
    else
      local e = math.max(math.floor((now_ms - c.ans) / 1000), 0)
      results[#results + 1] = finish(c, math.min(e, c.max), now_ms, cause, 'platform_cut')
    end
    ids[#ids + 1] = id
  end
end
return {0, ids, results}
