-- number_rent: rent a number for the workspace and charge its first month at once.
--
-- KEYS[1] ws        hash    workspace record (must exist)
-- KEYS[2] wallet    hash    balance, reserved
-- KEYS[3] ledger    stream  ledger rows
-- KEYS[4] events    stream  event outbox
-- KEYS[5] refs      hash    reference -> ledger row id (one charge per number and month)
-- KEYS[6] numbers   hash    number -> JSON record (see _rent.lua)
-- KEYS[7] rent_due  zset    number -> next renewal ms
-- ARGV[1] now_ms    integer
-- ARGV[2] number    string   E.164
-- ARGV[3] price     integer  micros per month
-- ARGV[4] next_ms   integer  the first anniversary (one calendar month after now)
-- Replies:
--   {0, record}                rented; record is the JSON record
--   {-1}                       no such workspace
--   {-4, balance, reserved}    the first month is not covered by available money
--   {-8, record}               the workspace rents this number already
-- Side effects: one number_rental ledger row (and its events); the renewal is scheduled.
local rcall = redis.call
local ws, wallet, ledger, events, refs = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local numbers, rent_due = KEYS[6], KEYS[7]
local now_ms, number = tonumber(ARGV[1]), ARGV[2]
local price, next_ms = tonumber(ARGV[3]), tonumber(ARGV[4])

--!include _post.lua
--!include _rent.lua

if rcall('EXISTS', ws) == 0 then return {-1} end
local existing = rcall('HGET', numbers, number)
if existing then return {-8, existing} end
local rec = {number = number, rented_ms = now_ms, period = 1, state = 'active',
  next_ms = next_ms, price = price}
if charge_month(rec, 1, price, now_ms) == 'insufficient' then
  local w = rcall('HMGET', wallet, 'balance', 'reserved')
  return {-4, tonumber(w[1]), tonumber(w[2])}
end
save_number(rec)
return {0, cjson.encode(rec)}
