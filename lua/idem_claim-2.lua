-- idem_claim: claim an Idempotency-Key before doing work outside Redis (charging a card).
--
-- KEYS[1] idem  hash  the key's record: state (pending|done|failed), body, lease, result
-- KEYS[2] ws    hash  workspace record (must exist)
-- ARGV[1] now_ms     integer
-- ARGV[2] body_hash  string   sha256 of the request body, to tell a replay from a reuse
-- ARGV[3] lease_ms   integer  how long a claim holds before another request may take over
-- ARGV[4] ttl_ms     integer  how long the record is kept
-- Replies:
--   {0}                    claimed: do the work, then finish with post (done) or idem_fail
--   {1, state, result}     finished before: state done (result = ledger row id) or failed
--                          (result = the error code and message, JSON)
--   {-1}                   no such workspace
--   {-2}                   the key was used with another body
--   {-3, lease_until_ms}   another request holds the claim right now
local rcall = redis.call
local idem, ws = KEYS[1], KEYS[2]
local now_ms = tonumber(ARGV[1])
local body_hash = ARGV[2]
local lease_ms, ttl_ms = tonumber(ARGV[3]), tonumber(ARGV[4])

if rcall('EXISTS', ws) == 0 then return {-1} end
local rec = rcall('HMGET', idem, 'state', 'body', 'lease', 'result')
local state, body, lease, result = rec[1], rec[2], tonumber(rec[3]), rec[4]
if state then
  if body ~= body_hash then return {-2} end
  if state ~= 'pending' then return {1, state, result} end
  if lease > now_ms then return {-3, lease} end
end
rcall('HSET', idem, 'state', 'pending', 'body', body_hash, 'lease', now_ms + lease_ms)
rcall('PEXPIRE', idem, ttl_ms)
return {0}
