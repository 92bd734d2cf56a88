-- call_abort: undo a start Gate answered 503 gate_timeout to. The start's script may have run
-- in time while its reply came back too late (a stalled process, a loaded machine): the
-- switch failed the call, so a live record of it would be a phantom. It goes, holding
-- nothing, leaving no ledger row and no ended result, so a switch that failed the call
-- open still gets its real end billed (as an unseen call), and the zero end of one that
-- failed it closed still writes nothing.
--
-- KEYS[1..9] ws, wallet, calls, due, cuts, ledger, events, ended, ended_at (as call_start)
-- ARGV[1] now_ms    integer
-- ARGV[2] call_id   string
-- ARGV[3] t0_ms     integer  the start time of the attempt Gate gave up on
-- Replies:
--   {0, woken}   the phantom was removed; woken = limited calls made due by its released hold
--   {1}          nothing to undo: no such live call, another start of it, or the switch has
--                used it since (answered later or sent a heartbeat)
local rcall = redis.call
local ws, wallet, calls, due, cuts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ledger, events, ended, ended_at = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now_ms = tonumber(ARGV[1])
local call_id, t0_ms = ARGV[2], tonumber(ARGV[3])

--!include _post.lua
--!include _rating.lua
--!include _plan.lua
--!include _call.lua

local c = load_call(call_id)
if not c or c.t0 ~= t0_ms or c.hseq > 0 or (c.ans ~= 0 and c.ans ~= c.t0) then return {1} end
local had_hold = c.held > 0
hold(c, 0)
track_exposure(c, 0)
if c.aw and c.aw > 0 then rcall('HINCRBY', wallet, 'al:' .. c.svc, c.aw) end
rcall('HDEL', calls, call_id)
rcall('ZREM', due, call_id)
rcall('SREM', cuts, call_id)
local woken = 0
if had_hold then woken = wake_limited(cuts, due, wallet, now_ms) end
return {0, woken}
