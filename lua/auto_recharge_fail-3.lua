-- auto_recharge_fail: an automatic charge did not go through; back off before the next.
--
-- KEYS[1] ws      hash    workspace record (alert email)
-- KEYS[2] wallet  hash    the ar_* state (see lua/_watch.lua)
-- KEYS[3] events  stream  event outbox
-- ARGV[1] now_ms    integer
-- ARGV[2] attempt   integer  the attempt that failed
-- ARGV[3] owner     string   the worker that held it
-- ARGV[4] declined  0|1      1: the provider refused the card (a new attempt after the
--                            back-off); 0: an error with an unknown outcome (the same
--                            attempt, same idempotency key, is tried again at next_ms)
-- ARGV[5] next_ms   integer  when to try again (the caller's back-off schedule)
-- ARGV[6] message   string   the provider's reason, shown to the customer
-- Replies:
--   {0, fails}  recorded; fails = consecutive declines so far
--   {1}         the attempt is not this owner's any more (nothing changed)
-- Side effects: on a decline, ar_state failed, wallet.auto_recharge_failed and a mail job.
local rcall = redis.call
local ws, wallet, events = KEYS[1], KEYS[2], KEYS[3]
local now_ms, attempt, owner = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local declined, next_ms, message = ARGV[4] == '1', tonumber(ARGV[5]), ARGV[6]

--!include _post.lua

local w = rcall('HMGET', wallet, 'ar_state', 'ar_attempt', 'ar_owner', 'balance', 'reserved')
if w[1] ~= 'charging' or w[2] ~= attempt or w[3] ~= owner then return {1} end
if not declined then
  rcall('HSET', wallet, 'ar_until', next_ms, 'ar_error', message)
  rcall('HDEL', wallet, 'ar_owner')
  return {0, tonumber(rcall('HGET', wallet, 'ar_fails')) or 0}
end
local fails = rcall('HINCRBY', wallet, 'ar_fails', 1)
rcall('HSET', wallet, 'ar_state', 'failed', 'ar_next', next_ms, 'ar_error', message)
rcall('HDEL', wallet, 'ar_owner', 'ar_until', 'ar_amount')
rcall('HINCRBY', wallet, 'version', 1)
local balance = tonumber(w[4])
local avail = balance - tonumber(w[5])
emit(events, wallet, now_ms, 'wallet.auto_recharge_failed', {'attempt', attempt,
  'reason', message, 'failures', fails, 'next_attempt_at_ms', fmt(next_ms),
  'available_micros', fmt(avail)})
queue_mail(ws, wallet, now_ms, 'recharge_failed', avail, balance, message)
return {0, fails}
