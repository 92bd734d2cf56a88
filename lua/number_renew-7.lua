-- number_renew: charge the next month of each due rented number of one workspace.
--
-- KEYS[1..7] ws, wallet, ledger, events, refs, numbers, rent_due (as number_rent)
-- ARGV[1] now_ms     integer
-- ARGV[2] retry_ms   integer  when a failed renewal is tried again (now + a day)
-- ARGV[3..] triples (number, period, next_ms): the month to charge and, once it is paid,
--           when the month after it is due (the caller does the calendar)
-- Replies:
--   {0, charged, failed, next_due_ms}  next_due_ms = -1 when no number is rented
-- Side effects: a number_rental row per month charged (never twice: the month's reference
-- is remembered); a number.renewal_failed event (and state renewal_failed) when available
-- money does not cover it, retried at retry_ms; a number whose record says it was paid
-- further already (a repeat) only moves on.
local rcall = redis.call
local ws, wallet, ledger, events, refs = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local numbers, rent_due = KEYS[6], KEYS[7]
local now_ms, retry_ms = tonumber(ARGV[1]), tonumber(ARGV[2])

--!include _post.lua
--!include _rent.lua

local charged, failed = 0, 0
for i = 3, #ARGV, 3 do
  local raw = rcall('HGET', numbers, ARGV[i])
  local period, next_ms = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  if raw then
    local rec = cjson.decode(raw)
    if rec.period + 1 == period and rec.next_ms <= now_ms then
      local outcome = charge_month(rec, period, rec.price, now_ms)
      if outcome == 'insufficient' then
        failed = failed + 1
        if rec.state ~= 'renewal_failed' then
          emit(events, wallet, now_ms, 'number.renewal_failed', {'number', rec.number,
            'period', period, 'price_micros', rec.price, 'retry_at_ms', retry_ms})
        end
        rec.state, rec.next_ms = 'renewal_failed', retry_ms
      else
        if outcome == 'charged' then charged = charged + 1 end
        rec.period, rec.state, rec.next_ms = period, 'active', next_ms
      end
      save_number(rec)
    end
  end
end
local head = rcall('ZRANGE', rent_due, 0, 0, 'WITHSCORES')
local next_due = -1
if #head > 0 then next_due = tonumber(head[2]) end
return {0, charged, failed, next_due}
