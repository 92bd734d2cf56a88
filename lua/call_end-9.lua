-- call_end: bill the whole call exactly cost(duration_s) at its start rate, release the
-- rest of its hold, and record one ledger row. Idempotent by call id.
--
-- KEYS[1..9] ws, wallet, calls, due, cuts, ledger, events, ended, ended_at (as call_start)
-- ARGV[1]  now_ms       integer
-- ARGV[2]  call_id      string
-- ARGV[3]  duration_s   integer  billable talk time from the switch's CDR
-- ARGV[4]  cause        string   hangup cause, "" when none
-- ARGV[5..15] optional: how to rate a call the gate never saw (billed as unauthorized_call),
--   sent only after a {-5} reply, so a normal end carries no rating: direction,
--   service, from, to, user, group, rate, fee, first, next, number_type
-- Replies:
--   {0, result, woken}  billed now; result = MessagePack {cost, row, balance, duration, leak,
--                       flag}; woken = limited calls made due now by the released hold
--   {1, result}   ended before: the same result, nothing billed again
--   {-5}          the gate never saw this call and ARGV[5..15] were not sent: send them
--   {-1}          no such workspace
-- Side effects: one ledger row (call or ai_agent, flag unauthorized_call for unknown calls;
-- may take the balance below zero: usage is never lost); limited calls woken by the
-- released hold; transaction.created event.
local rcall = redis.call
local ws, wallet, calls, due, cuts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ledger, events, ended, ended_at = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now_ms = tonumber(ARGV[1])
local call_id, duration, cause = ARGV[2], tonumber(ARGV[3]), ARGV[4]

--!include _post.lua
--!include _rating.lua
--!include _call.lua

local result = rcall('HGET', ended, call_id)
if result then return {1, result} end
if rcall('EXISTS', ws) == 0 then return {-1} end
local c = load_call(call_id)
local flag = ''
if not c then
  if #ARGV < 15 then return {-5} end
  flag = 'unauthorized_call'
  c = {id = call_id, dir = ARGV[5], svc = ARGV[6], from = ARGV[7], to = ARGV[8],
    user = ARGV[9], grp = ARGV[10], rate = tonumber(ARGV[11]), fee = tonumber(ARGV[12]),
    f = tonumber(ARGV[13]), n = tonumber(ARGV[14]), nt = ARGV[15], held = 0, hz = 0, cut = 0,
    grace = 0}
end
local had_hold = c.held > 0
result = finish(c, duration, now_ms, cause, flag)
local woken = 0
if had_hold then woken = wake_limited(cuts, due, wallet, now_ms) end
return {0, result, woken}
