-- call_heartbeat: the switch reports talk time; bill up to it and extend the horizon.
--
-- KEYS[1..9] ws, wallet, calls, due, cuts, ledger, events, ended, ended_at (as call_start)
-- ARGV[1] now_ms     integer
-- ARGV[2] call_id    string
-- ARGV[3] elapsed_s  integer  talk time so far by the switch's clock
-- ARGV[4] seq        integer  monotonic per call; a stale or repeated seq changes nothing
-- ARGV[5] tolerance_s integer  how far the switch's clock may run ahead of the gate's
-- Replies:
--   {0, record, balance, hangup, clamped}  billed and extended; hangup = 1 when the call
--                                          must end now; clamped = 1 when elapsed_s was
--                                          cut to the gate's clock (since answer +
--                                          tolerance, at most max_call_s)
--   {1, record, balance, hangup, 0}        stale or repeated seq (nothing changed)
--   {2, result}                   the call ended already
--   {-5}                          no such call
-- Side effects: as a tick (hold grows, call.limit when limited); an unanswered call counts
-- as answered elapsed_s ago. A heartbeat is evidence the call is up (its silence for
-- stale_after_s later ends the call) and its answer's hangup_at is what the switch holds.
local rcall = redis.call
local ws, wallet, calls, due, cuts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ledger, events, ended, ended_at = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now_ms = tonumber(ARGV[1])
local call_id = ARGV[2]
local elapsed, seq, tolerance_s = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])

--!include _post.lua
--!include _rating.lua
--!include _plan.lua
--!include _call.lua

prime_wallet()  -- one wallet read for the plan's cycle end, the money and the reply
plan_roll(now_ms)  -- a cycle that ended is rolled before anything is billed

local c = load_call(call_id)
if not c then return not_live(call_id) end
local code, clamped = 1, 0
if seq > c.hseq then
  code = 0
  local bound = clock_bound(c, now_ms, tolerance_s)
  if elapsed > bound then elapsed, clamped, c.clp = bound, 1, 1 end
  if c.ans == 0 then c.ans = math.max(now_ms - elapsed * 1000, c.t0) end
  c.hseq, c.hms, c.evm, c.rep = seq, now_ms, now_ms, 1
  if elapsed > (c.hb or 0) then c.hb = elapsed end
  grow(c, elapsed, now_ms)
  c.ha = hangup_ms(c)
  save_call(c)
  schedule(c, now_ms)
end
local hangup = 0
local md = max_duration(c)
if c.cut ~= 0 and (now_ms >= c.cut or (md >= 0 and elapsed >= md)) then hangup = 1 end
return {code, cmsgpack.pack(c), balance_now(), hangup, clamped}
