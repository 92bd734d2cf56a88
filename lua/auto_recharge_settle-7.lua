-- auto_recharge_settle: credit a successful automatic charge once, by its payment id, and
-- end the attempt it paid for.
--
-- KEYS[1] ws      hash    workspace record
-- KEYS[2] wallet  hash    balance, reserved and the ar_* state (see lua/_watch.lua)
-- KEYS[3] ledger  stream  ledger rows
-- KEYS[4] events  stream  event outbox
-- KEYS[5] refs    hash    reference -> ledger row id (dedupe, shared with lua/post-8.lua)
-- KEYS[6] cuts    set     ids of limited live calls, woken by the credit
-- KEYS[7] due     zset    call id -> due ms (the ticker's schedule)
-- ARGV[1] now_ms             integer
-- ARGV[2] attempt            integer  the attempt the charge was made for
-- ARGV[3] amount             integer  micros charged, > 0
-- ARGV[4] payment_id         string   the provider's payment id: credited once
-- ARGV[5] month              string   "YYYY-MM" the charge counts toward (monthly cap)
-- ARGV[6] payment_method_id  string
-- Replies:
--   {0, row_id, balance, woken}  credited; woken = limited calls made due now
--   {1, row_id}                  this payment was credited before (the attempt is ended
--                                if it still was the one in flight)
--   {-1}                         no such workspace
-- Side effects: one `recharge` ledger row (source auto_recharge), transaction.created and
-- wallet.recharged events, ar_state back to idle (the watch then fires a new attempt if
-- available is still below the threshold), limited calls woken as by any credit.
local rcall = redis.call
local ws, wallet, ledger, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local refs, cuts, due = KEYS[5], KEYS[6], KEYS[7]
local now_ms, attempt, amount = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local payment_id, month, method = ARGV[4], ARGV[5], ARGV[6]

--!include _post.lua

if rcall('EXISTS', ws) == 0 then return {-1} end
local mine = rcall('HGET', wallet, 'ar_attempt') == attempt
  and rcall('HGET', wallet, 'ar_state') == 'charging'
local function end_attempt()
  rcall('HSET', wallet, 'ar_state', 'idle')
  rcall('HDEL', wallet, 'ar_owner', 'ar_until', 'ar_amount', 'ar_next', 'ar_fails',
    'ar_error', 'ar_capped')
  rcall('HINCRBY', wallet, 'version', 1)
end
local seen = rcall('HGET', refs, payment_id)
if seen then
  if mine then end_attempt() end
  return {1, seen}
end
-- Counted toward the month whatever the attempt: the money was charged.
if rcall('HGET', wallet, 'ar_month') ~= month then
  rcall('HSET', wallet, 'ar_month', month, 'ar_spent', 0)
end
rcall('HINCRBY', wallet, 'ar_spent', amount)
-- Idle before the credit, so the watch inside post() sees the wallet as it now is.
if mine then end_attempt() end
local id, balance = post(wallet, ledger, events, now_ms, amount, 'recharge',
  'Auto-recharge (' .. method .. ')', payment_id,
  {'source', 'auto_recharge', 'payment_method_id', method, 'attempt', attempt})
rcall('HSET', refs, payment_id, id)
emit(events, wallet, now_ms, 'wallet.recharged', {'amount_micros', fmt(amount),
  'balance_micros', fmt(balance), 'reference', payment_id, 'source', 'auto_recharge'})
local woken = wake_limited(cuts, due, wallet, now_ms)
return {0, id, balance, woken}
