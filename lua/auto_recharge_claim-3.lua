-- auto_recharge_claim: take the wallet's auto-recharge attempt for one worker, fixing the
-- amount to charge, or say when there is something to do next.
--
-- KEYS[1] ws      hash    workspace settings: ar_enabled, ar_threshold_micros,
--                         ar_topup_micros, ar_cap_micros, payment_method_id
-- KEYS[2] wallet  hash    balance, reserved and the ar_* state (see lua/_watch.lua)
-- KEYS[3] events  stream  event outbox
-- ARGV[1] now_ms         integer
-- ARGV[2] owner          string   the worker taking the attempt
-- ARGV[3] lease_ms       integer  how long the attempt is its own (a crashed worker's
--                                 attempt is taken over after it, with the same amount and
--                                 idempotency key, so the provider never charges twice)
-- ARGV[4] month          string   "YYYY-MM" of now: the monthly cap counts per month
-- ARGV[5] next_month_ms  integer  when the month ends (a capped wallet waits until then)
-- ARGV[6] default_cap    integer  micros, when the workspace has no ar_cap_micros
-- Replies:
--   {0, 'charge', attempt, amount, payment_method_id, fails}  charge `amount` micros now;
--                            fails = declines in a row before this attempt
--   {0, 'wait', next_ms}     nothing to do before next_ms (-1: nothing at all)
--   {0, 'capped', next_ms}   the monthly cap stops this charge: ar_state failed until
--                            next_ms or a raised cap
--   {-1}                     no such workspace
-- Side effects: ar_state/ar_attempt/ar_amount/ar_owner/ar_until/ar_last; on the cap,
-- wallet.auto_recharge_capped (once per capped month) and a mail job.
local rcall = redis.call
local ws, wallet, events = KEYS[1], KEYS[2], KEYS[3]
local now_ms, owner, lease_ms = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local month, next_month_ms, default_cap = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])

--!include _post.lua

local s = rcall('HMGET', ws, 'id', 'ar_enabled', 'ar_threshold_micros', 'ar_topup_micros',
  'ar_cap_micros', 'payment_method_id')
if not s[1] then return {-1} end
local w = rcall('HMGET', wallet, 'balance', 'reserved', 'ar_state', 'ar_owner', 'ar_until',
  'ar_next', 'ar_amount', 'ar_attempt', 'ar_month', 'ar_spent', 'ar_capped', 'ar_fails')
local avail = tonumber(w[1]) - tonumber(w[2])
local state = w[3] or 'idle'
local threshold, topup = tonumber(s[3]), tonumber(s[4])
if s[2] ~= '1' or not threshold or not topup or not s[6] then
  -- Turned off (or no card) while an attempt waited: nothing to charge, nothing in flight.
  if state ~= 'idle' then
    rcall('HSET', wallet, 'ar_state', 'idle')
    rcall('HDEL', wallet, 'ar_owner', 'ar_until', 'ar_amount', 'ar_next', 'ar_capped')
    rcall('HINCRBY', wallet, 'version', 1)
  end
  return {0, 'wait', -1}
end

-- Past here the wallet needs money, unless it has enough again.
local fresh = false  -- start a new attempt once the cap allows it
if state == 'charging' then
  local until_ms = tonumber(w[5]) or 0
  if w[4] and w[4] ~= owner and until_ms > now_ms then return {0, 'wait', until_ms} end
else
  if avail >= threshold then
    if state ~= 'idle' then
      rcall('HSET', wallet, 'ar_state', 'idle')
      rcall('HDEL', wallet, 'ar_next', 'ar_capped', 'ar_amount')
      rcall('HINCRBY', wallet, 'version', 1)
    end
    return {0, 'wait', -1}
  end
  -- A wallet capped this month is looked at again when its cap may have been raised;
  -- a declined one waits out its back-off.
  local next_ms = tonumber(w[6]) or 0
  if state == 'failed' and w[11] ~= month and next_ms > now_ms then
    return {0, 'wait', next_ms}
  end
  fresh = true
end

local attempt = tonumber(w[8]) or 0
local amount = tonumber(w[7])
if fresh or not amount then
  -- Enough to bring available back to the threshold, at least the configured top-up,
  -- in whole cents (a card cannot be charged a fraction of a cent).
  amount = math.max(topup, threshold - avail)
  amount = math.ceil(amount / 10000) * 10000
end
local spent = 0
if w[9] == month then spent = tonumber(w[10]) or 0 end
local cap = tonumber(s[5]) or default_cap
if spent + amount > cap then
  local first = w[11] ~= month
  rcall('HSET', wallet, 'ar_state', 'failed', 'ar_next', next_month_ms, 'ar_capped', month,
    'ar_error', 'monthly cap reached')
  rcall('HDEL', wallet, 'ar_owner', 'ar_until', 'ar_amount')
  rcall('HINCRBY', wallet, 'version', 1)
  if first then
    emit(events, wallet, now_ms, 'wallet.auto_recharge_capped', {'attempt', attempt,
      'spent_micros', fmt(spent), 'cap_micros', fmt(cap), 'amount_micros', fmt(amount),
      'next_attempt_at_ms', fmt(next_month_ms)})
    queue_mail(ws, wallet, now_ms, 'capped', avail, tonumber(w[1]), fmt(cap))
  end
  return {0, 'capped', next_month_ms}
end
if fresh then
  start_recharge(wallet, events, now_ms, avail, threshold)
  attempt = tonumber(rcall('HGET', wallet, 'ar_attempt'))
end
rcall('HSET', wallet, 'ar_owner', owner, 'ar_until', now_ms + lease_ms, 'ar_amount', amount,
  'ar_last', now_ms)
rcall('HDEL', wallet, 'ar_capped')
return {0, 'charge', attempt, amount, s[6], tonumber(w[12]) or 0}
