-- call_end: bill the whole call exactly cost(duration_s) at its start rate, release the
-- rest of its hold, and record one ledger row. Idempotent by call id.
--
-- KEYS[1..9] ws, wallet, calls, due, cuts, ledger, events, ended, ended_at (as call_start)
-- ARGV[1]  now_ms       integer
-- ARGV[2]  call_id      string
-- ARGV[3]  duration_s   integer  billable talk time from the switch's CDR
-- ARGV[4]  cause        string   hangup cause, "" when none
-- ARGV[5]  tolerance_s  integer  how far the switch's clock may run ahead of the gate's:
--                                duration_s beyond the gate's time since answer plus this
--                                (or beyond max_call_s) is clamped and flagged
-- ARGV[6]  max_call_s   integer  the longest call, for calls the gate never saw
-- ARGV[7]  facts        string   what the switch said of the call, for its row: field and
--                                value pairs separated by tabs ("quality_mos\t4.2"), "" none
-- ARGV[8..20] optional: how to rate a call the gate never saw (billed as unauthorized_call),
--   sent only after a {-5} reply, so a normal end carries no rating: direction,
--   service, from, to, user, group, rate, fee, first, next, number_type, no_rate
--   (1 when no rate matched: recorded at zero for review, never dropped), components
-- Replies:
--   {0, result, woken, fired, url}  billed now; result = MessagePack {cost, row, balance,
--                       duration, leak, flag, clamped, rz (1: duration_s was below what
--                       the call's heartbeats reported, billed that instead)}; woken = limited calls made due now by
--                       the released hold; fired = 1 when the wallet's watch (lua/_watch.lua)
--                       gave the automation worker work (a recharge attempt or a mail job);
--                       url = 1/0 the workspace has a webhook URL of its own or not, -1 unknown
--   {1, result}   ended before: the same result, nothing billed again
--   {-5}          the gate never saw this call and ARGV[8..20] were not sent: send them
--   {-1}          no such workspace
-- Side effects: one ledger row (call or ai_agent, flag unauthorized_call for unknown calls;
-- may take the balance below zero: usage is never lost); limited calls woken by the
-- released hold; transaction.created event. An unknown call ended with duration 0 (the
-- switch's cleanup after a start it saw fail) writes no row but is remembered, so a start
-- that arrives after it is refused.
local rcall = redis.call
local ws, wallet, calls, due, cuts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ledger, events, ended, ended_at = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now_ms = tonumber(ARGV[1])
local call_id, duration, cause = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local tolerance_s, max_call_s = tonumber(ARGV[5]), tonumber(ARGV[6])

--!include _post.lua
--!include _rating.lua
--!include _plan.lua
--!include _call.lua

for part in string.gmatch(ARGV[7] or '', '[^\t]+') do end_facts[#end_facts + 1] = part end
if #end_facts % 2 == 1 then end_facts[#end_facts] = nil end  -- a field without its value

prime_wallet()  -- one wallet read for the plan's cycle end and post()'s fields
plan_roll(now_ms)  -- a cycle that ended is rolled before anything is billed

local result = rcall('HGET', ended, call_id)
if result then return late_end(result, duration, now_ms, cause, tolerance_s) end
if rcall('EXISTS', ws) == 0 then return {-1} end
local c = load_call(call_id)
local flag, clamped = '', false
if c then
  local bound = clock_bound(c, now_ms, tolerance_s)
  if duration > bound then duration, clamped = bound, true end
  -- the switch's own heartbeats showed the call up this long: an end claiming less bills
  -- what they showed, flagged, never less (a bad CDR must not erase billed time)
  if c.hb and duration < c.hb then c.rzs, duration = duration, c.hb end
else
  if #ARGV < 20 then return {-5} end
  flag = duration == 0 and 'never_started' or 'unauthorized_call'
  c = {id = call_id, dir = ARGV[8], svc = ARGV[9], from = ARGV[10], to = ARGV[11],
    user = ARGV[12], grp = ARGV[13], rate = tonumber(ARGV[14]), fee = tonumber(ARGV[15]),
    f = tonumber(ARGV[16]), n = tonumber(ARGV[17]), nt = ARGV[18], held = 0, hz = 0, cut = 0,
    grace = 0, nr = tonumber(ARGV[19]), cmp = ARGV[20] or ''}
  if duration > max_call_s then duration, clamped = max_call_s, true end
  plan_attach(c)  -- under a plan, the allowance and commitment come first here too
  reserve_allowance(c, duration)
end
local had_hold = c.held > 0
result = finish(c, duration, now_ms, cause, flag, clamped)
local woken = 0
if had_hold then woken = wake_limited(cuts, due, wallet, now_ms) end
return {0, result, woken, watch_fired, watch_url()}
