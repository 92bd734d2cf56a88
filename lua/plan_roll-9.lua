-- plan_roll: roll the workspace's billing cycle if it ended, and read its buckets. Run by the
-- cycle worker near each boundary (so an idle wallet's expiry row appears on time) and by
-- GET /v1/wallet/buckets; every billing script rolls on its own as well.
--
-- KEYS[1..9] ws, wallet, calls, due, cuts, ledger, events, ended, ended_at (as call_start)
-- ARGV[1] now_ms  integer
-- Replies:
--   {0, rolled, wallet}  rolled = 1 when a cycle ended now; wallet = the wallet hash as a
--                        flat field/value list (plan fields: lua/_plan.lua)
--   {-1}                 no such workspace
-- Side effects: a `plan_cycle` ledger row per cycle rolled.
local rcall = redis.call
local ws, wallet, calls, due, cuts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ledger, events, ended, ended_at = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now_ms = tonumber(ARGV[1])

--!include _post.lua
--!include _rating.lua
--!include _plan.lua

if rcall('EXISTS', ws) == 0 then return {-1} end
local rolled = plan_roll(now_ms) and 1 or 0
return {0, rolled, rcall('HGETALL', wallet)}
