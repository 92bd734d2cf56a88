-- call_sync: the switch lists the calls it has up right now (as CGRateS' channel sync); every
-- live call of the workspace it does not list, and that is older than min_age_s, is over:
-- billed to the last evidence the gate has that it was up plus one tick (never past the
-- gate's own clock), flagged lost_end, hold released.
--
-- KEYS[1..9] ws, wallet, calls, due, cuts, ledger, events, ended, ended_at (as call_start)
-- ARGV[1]  now_ms     integer
-- ARGV[2]  min_age_s  integer  calls started less than this long ago are left alone (the
--                              switch may have listed its calls just before they started)
-- ARGV[3]  node       string   the switch node syncing: only calls started on it (c.node)
--                              are candidates; "" = every call (one switch)
-- ARGV[4..] call ids the switch has up
-- Replies:
--   {0, ended, results, not_live, woken}
--     ended     ids of the calls ended now as lost
--     results   their MessagePack results, in the same order (as call_end's)
--     not_live  listed ids the gate has no live call for (never started, or already ended):
--               the switch should hang these up
--     woken     limited calls made due now by the released holds
--   {-1}        no such workspace
-- Side effects: each listed live call is evidence (evm = now, rep = 1: from now on its
-- silence past stale_after_s ends it); each ended call writes one ledger row (flag lost_end;
-- none for a call that was never answered) and its result, as call_end does.
local rcall = redis.call
local ws, wallet, calls, due, cuts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ledger, events, ended, ended_at = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now_ms, min_age_ms = tonumber(ARGV[1]), tonumber(ARGV[2]) * 1000
local node = ARGV[3]

--!include _post.lua
--!include _rating.lua
--!include _plan.lua
--!include _call.lua

plan_roll(now_ms)  -- a cycle that ended is rolled before anything is billed

if rcall('EXISTS', ws) == 0 then return {-1} end
local listed, not_live = {}, {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if not listed[id] then
    listed[id] = true
    local c = load_call(id)
    if c then
      c.evm, c.rep = now_ms, 1
      save_call(c)
    else
      not_live[#not_live + 1] = id
    end
  end
end

local lost, results, released = {}, {}, false
for _, id in ipairs(rcall('HKEYS', calls)) do
  if not listed[id] then
    local c = load_call(id)
    if now_ms - c.t0 >= min_age_ms and (node == '' or c.node == node) then
      local duration, flag = 0, 'never_started'
      if c.ans > 0 then
        local e = math.max(math.floor((now_ms - c.ans) / 1000), 0)
        duration, flag = lost_duration(c, e), 'lost_end'
      end
      released = released or c.held > 0
      lost[#lost + 1] = id
      results[#results + 1] = finish(c, duration, now_ms, 'lost_end', flag)
    end
  end
end
local woken = 0
if released then woken = wake_limited(cuts, due, wallet, now_ms) end
return {0, lost, results, not_live, woken}
