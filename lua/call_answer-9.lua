-- call_answer: billing of a call started with answered=false starts now.
--
-- KEYS[1..9] ws, wallet, calls, due, cuts, ledger, events, ended, ended_at (as call_start)
-- ARGV[1] now_ms   integer
-- ARGV[2] call_id  string
-- Replies:
--   {0, record, balance}   answered now
--   {1, record, balance}   answered before (nothing changed)
--   {2, result}            the call ended already (MessagePack result of call_end)
--   {-5}                   no such call
-- Side effects: the call is scheduled for its first tick; a limited call's cut moves to
-- answer time + paid seconds + grace. The answer is evidence the call is up, and the
-- hangup_at it carries is what the switch now holds.
local rcall = redis.call
local ws, wallet, calls, due, cuts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ledger, events, ended, ended_at = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now_ms = tonumber(ARGV[1])
local call_id = ARGV[2]

--!include _post.lua
--!include _rating.lua
--!include _plan.lua
--!include _call.lua

local c = load_call(call_id)
if not c then return not_live(call_id) end
local balance = tonumber(rcall('HGET', wallet, 'balance'))
if c.ans ~= 0 then return {1, cmsgpack.pack(c), balance} end
c.ans = math.max(now_ms, c.t0)
c.evm = c.ans
if c.cut ~= 0 then set_cut(c, now_ms, true) end
c.ha = hangup_ms(c)
save_call(c)
schedule(c, now_ms)
return {0, cmsgpack.pack(c), balance}
