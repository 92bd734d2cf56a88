-- post: one balance change outside calls (top-up, adjustment, refund, one-off charge),
-- deduplicated by its external reference, with its ledger row.
--
-- KEYS[1] ws      hash    workspace record (must exist)
-- KEYS[2] wallet  hash    balance, reserved, version, status
-- KEYS[3] ledger  stream  ledger rows
-- KEYS[4] events  stream  event outbox
-- KEYS[5] refs    hash    reference -> ledger row id (dedupe)
-- KEYS[6] idem    hash    Idempotency-Key record to mark done; any unused key name when none
-- KEYS[7] cuts    set     ids of limited live calls, woken when money arrives
-- KEYS[8] due     zset    call id -> due ms (the ticker's schedule)
-- ARGV[1] now_ms     integer
-- ARGV[2] amount     integer  signed micros: credits > 0, debits < 0
-- ARGV[3] type       string   recharge|adjustment|refund|sms|mms|fax|chat|number_rental|...
-- ARGV[4] desc       string   description shown in the history
-- ARGV[5] reference  string   payment/charge id; a second post with it changes nothing
-- ARGV[6] floor      string   "available": a debit may not exceed available money;
--                             "none": it may take the balance below zero
-- ARGV[7..n]         extra (name, value) pairs stored on the ledger row
-- Replies:
--   {0, row_id, balance, reserved, woken}  posted; woken = limited calls made due now
--   {1, row_id}                      the reference was posted before (nothing changed but
--                                    a pending idem record, now pointing at that row)
--   {-1}                             no such workspace
--   {-2, row_id}                     the reference was posted before with another type or
--                                    amount (nothing changed); adjustments and refunds keep
--                                    their references apart from payment ids
--   {-4, balance, reserved}          insufficient available money (nothing changed)
--   {-9, balance, reserved}          an adjustment or refund would take the balance past
--                                    $1,000,000,000 (nothing changed)
-- Side effects: ledger row, transaction.created event, wallet.recharged event for recharges;
-- a credit makes the limited live calls due now (their limit is lifted at the next tick);
-- a recharge ends a declined auto-recharge's back-off; the wallet's watch (lua/_watch.lua).
local rcall = redis.call
local ws, wallet, ledger, events, refs, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local cuts, due = KEYS[7], KEYS[8]
local now_ms = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local rtype, desc, ref, floor = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local extra = {}
for i = 7, #ARGV do extra[#extra + 1] = ARGV[i] end

--!include _post.lua

local CHARGES = {sms = true, mms = true, fax = true, chat = true}

if rcall('EXISTS', ws) == 0 then return {-1} end
-- Operators' references live apart from payment ids: a refund may quote the top-up's id;
-- so do the switch's charge ids.
local dedupe = ref
if rtype == 'adjustment' or rtype == 'refund' then dedupe = 'adj:' .. ref end
if CHARGES[rtype] then dedupe = 'chg:' .. ref end  -- a switch's charge_id is its own namespace
local seen = rcall('HGET', refs, dedupe)
if seen then
  local f = ledger_row(ledger, seen)
  if f and (f['type'] ~= rtype or tonumber(f['amount']) ~= amount) then return {-2, seen} end
  -- The same payment posted before (an Idempotency-Key record that expired while the
  -- provider's charge id stayed the same): the claim is answered by that row, not left pending.
  if rcall('HGET', idem, 'state') == 'pending' then
    rcall('HSET', idem, 'state', 'done', 'result', seen)
  end
  return {1, seen}
end
local w = rcall('HMGET', wallet, 'balance', 'reserved')
local balance, reserved = tonumber(w[1]), tonumber(w[2])
if amount < 0 and floor == 'available' and balance - reserved + amount < 0 then
  return {-4, balance, reserved}
end
-- Lua counts in doubles, exact to 2^53 micros (~$9 billion): operators may not credit a
-- wallet past $1 billion, which leaves top-ups (at most $1,000 each) a wide margin.
if amount > 0 and (rtype == 'adjustment' or rtype == 'refund') and balance + amount > 1e15 then
  return {-9, balance, reserved}
end

-- A manual top-up ends a declined card's back-off (not a monthly cap): if money is still
-- short, the watch in post() starts a new automatic attempt at once.
if rtype == 'recharge' and amount > 0 and rcall('HGET', wallet, 'ar_state') == 'failed'
    and not rcall('HGET', wallet, 'ar_capped') then
  rcall('HSET', wallet, 'ar_state', 'idle')
  rcall('HDEL', wallet, 'ar_next', 'ar_fails', 'ar_error')
end
local id
id, balance = post(wallet, ledger, events, now_ms, amount, rtype, desc, ref, extra)
rcall('HSET', refs, dedupe, id)
if rcall('HGET', idem, 'state') == 'pending' then
  rcall('HSET', idem, 'state', 'done', 'result', id)
end
if rtype == 'recharge' then
  emit(events, wallet, now_ms, 'wallet.recharged',
    {'amount_micros', amount, 'balance_micros', balance, 'reference', ref})
end
local woken = 0
if amount > 0 then woken = wake_limited(cuts, due, wallet, now_ms) end
return {0, id, balance, reserved, woken}
