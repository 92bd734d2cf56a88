-- charge: one-off usage (sms, mms, fax, chat) drawn through the credit buckets in one step:
-- the service's plan allowance (units), then the commitment covering the service, then
-- universal money. Deduplicated by the switch's charge_id; never takes a wallet below zero.
--
-- KEYS[1] ws      hash    workspace record (must exist)
-- KEYS[2] wallet  hash    balance, reserved, plan buckets (lua/_plan.lua)
-- KEYS[3] calls   hash    live calls (their allowance is carried over when a cycle rolls)
-- KEYS[4] ledger  stream  ledger rows
-- KEYS[5] events  stream  event outbox
-- KEYS[6] refs    hash    "chg:<charge_id>" -> ledger row id (dedupe)
-- ARGV[1] now_ms     integer
-- ARGV[2] service    sms|mms|fax|chat (the row's type)
-- ARGV[3] quantity   integer  units: segments, messages or pages (> 0)
-- ARGV[4] unit       integer  micros per unit (the card's [units] price)
-- ARGV[5] desc       string   description shown in the history
-- ARGV[6] charge_id  string   a second charge with it changes nothing
-- ARGV[7..n]         extra (name, value) pairs stored on the ledger row
-- Replies:
--   {0, row_id, balance, reserved}  charged
--   {1, row_id}                     the charge_id was billed before (nothing changed)
--   {-1}                            no such workspace
--   {-2, row_id}                    the charge_id was billed before for another service or
--                                   price (nothing changed)
--   {-4, balance, reserved, money}  the money part exceeds the commitment and the available
--                                   universal money (nothing changed)
--   {-20, hold, reason}             the platform suspended or closed the workspace (nothing
--                                   changed)
-- Side effects: one ledger row (amount = the universal part; allowance_units,
-- commitment_micros, universal_micros, cost_micros (money), price_micros (before the
-- allowance), source and wallet_source name the buckets); a plan cycle that ended is rolled first (lua/_plan.lua).
local rcall = redis.call
local ws, wallet, calls, ledger, events, refs = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  KEYS[6]
local now_ms = tonumber(ARGV[1])
local svc, quantity, unit = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local desc, ref = ARGV[5], ARGV[6]
local extra = {}
for i = 7, #ARGV do extra[#extra + 1] = ARGV[i] end

--!include _post.lua
--!include _rating.lua
--!include _plan.lua

if rcall('EXISTS', ws) == 0 then return {-1} end
local price = quantity * unit
local dedupe = 'chg:' .. ref
local seen = rcall('HGET', refs, dedupe)
if seen then
  local f = ledger_row(ledger, seen)
  if f and (f['type'] ~= svc or tonumber(f['price_micros'] or -f['amount']) ~= price) then
    return {-2, seen}
  end
  return {1, seen}
end
local hold = rcall('HMGET', wallet, 'hold', 'hold_reason')
if hold[1] then return {-20, hold[1], hold[2] or ''} end

plan_roll(now_ms)
local used, cm_name, from_cm = 0, '', 0
local money = price
if plan_cycle_end() then
  used = math.min(quantity, num('al:' .. svc))
  money = (quantity - used) * unit
  cm_name = rcall('HGET', wallet, 'cms:' .. svc) or ''
  from_cm = math.min(money, commitment_free(cm_name))
end
local w = rcall('HMGET', wallet, 'balance', 'reserved')
local balance, reserved = tonumber(w[1]), tonumber(w[2])
local universal = money - from_cm
if universal > 0 and balance - reserved < universal then
  return {-4, balance, reserved, money}
end
if used > 0 then rcall('HINCRBY', wallet, 'al:' .. svc, -used) end
if from_cm > 0 then rcall('HINCRBY', wallet, 'cm:' .. cm_name, -from_cm) end
local sources
if plan_cycle_end() then
  sources = bucket_fields(svc, used, 0, '', cm_name, from_cm, universal)
else
  sources = {'source', 'universal', 'cost_micros', price}
end
for i = 1, #sources do extra[#extra + 1] = sources[i] end
extra[#extra + 1] = 'price_micros'  -- units x unit price, before any allowance
extra[#extra + 1] = price
local id
id, balance = post(wallet, ledger, events, now_ms, -universal, svc, desc, ref, extra)
rcall('HSET', refs, dedupe, id)
return {0, id, balance, reserved}
