-- Include: charge one month of a rented number, once per (number, month). Needs _post.lua
-- before it and these locals: wallet, ledger, events, refs, numbers, rent_due.
--
-- A number record is a cjson object in the `numbers` hash (field = the E.164 number):
--   number, rented_ms   the number and when it was rented (the renewal anniversary)
--   period              months paid so far (1 after the first month)
--   state               active | renewal_failed
--   next_ms             when the next month is due (or the next retry after a failure)
-- The ledger reference of month k is "rent:<number>:<rented_ms>:<k>" in `refs`, so a month is
-- charged once whatever retries or crashes come between.

-- Charge month `period` of `rec` at `price` micros unless it was charged before. Returns
-- 'charged', 'repeat' or 'insufficient'.
local function charge_month(rec, period, price, now_ms)
  local ref = string.format('rent:%s:%d:%d', rec.number, rec.rented_ms, period)
  if rcall('HEXISTS', refs, ref) == 1 then return 'repeat' end
  local w = rcall('HMGET', wallet, 'balance', 'reserved')
  if tonumber(w[1]) - tonumber(w[2]) < price then return 'insufficient' end
  local id = post(wallet, ledger, events, now_ms, -price, 'number_rental',
    'Number rental ' .. rec.number .. ', month ' .. period, ref,
    {'number', rec.number, 'period', period, 'unit_price_micros', price, 'source', 'universal'})
  rcall('HSET', refs, ref, id)
  return 'charged'
end

local function save_number(rec)
  rcall('HSET', numbers, rec.number, cjson.encode(rec))
  rcall('ZADD', rent_due, rec.next_ms, rec.number)
end
