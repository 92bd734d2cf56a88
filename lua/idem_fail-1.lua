-- idem_fail: record that the work behind a claimed Idempotency-Key failed for good
-- (a declined card), so a replay gets the same answer and nothing is charged again.
--
-- KEYS[1] idem  hash  the key's record, claimed by idem_claim
-- ARGV[1] result  string  the error answer (JSON) to replay
-- Replies:
--   {0}   recorded
--   {-1}  the record is gone or finished already (nothing changed)
local rcall = redis.call
local idem = KEYS[1]
local result = ARGV[1]

if rcall('HGET', idem, 'state') ~= 'pending' then return {-1} end
rcall('HSET', idem, 'state', 'failed', 'result', result)
return {0}
