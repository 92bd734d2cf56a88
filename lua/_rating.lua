-- Include: call pricing, the same integer arithmetic as gate/rating.py (tests compare them).
-- A call record `c` carries rate (micros per minute), fee (connect fee micros), f and n
-- (billing increments first/next, seconds). Lua numbers are doubles: every value here stays
-- far below 2^53 because horizons are capped at max_call_s and budgets at its cost.

local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end

local function billable(c, t)
  if t <= 0 then return 0 end
  if t <= c.f then return c.f end
  return c.f + idiv(t - c.f + c.n - 1, c.n) * c.n
end

-- A call under a plan (lua/_plan.lua) has its first billable seconds covered by the
-- allowance: aw seconds reserved in this cycle from bs0 on, ao seconds of earlier cycles.
-- Without a plan (no aw) this is 0 and cost() is the card's cost exactly.
local function allowance_covers(c, b)
  if not c.aw then return 0 end
  return math.min(b, c.ao + math.min(c.aw, math.max(b - c.bs0, 0)))
end

-- The money a call of t seconds costs: 0 for t = 0, else
-- fee + ceil(rate * (billable(t) - allowance covered) / 60); the connect fee is money always.
local function cost(c, t)
  if t <= 0 then return 0 end
  local b = billable(c, t)
  return c.fee + idiv(c.rate * (b - allowance_covers(c, b)) + 59, 60)
end

-- The longest time t <= cap (seconds) with cost(t) <= budget.
local function paid_seconds(c, budget, cap)
  if budget < 0 then return 0 end
  if cost(c, cap) <= budget then return cap end
  local spendable = budget - c.fee
  if spendable < 0 or c.rate == 0 then return 0 end
  local max_billable = idiv(spendable * 60, c.rate)
  if c.aw then
    -- money-paid seconds -> billable seconds: the allowance is a flat stretch of the cost
    if max_billable < c.bs0 - c.ao then max_billable = c.ao + max_billable
    else max_billable = max_billable + c.ao + c.aw end
  end
  if max_billable < c.f then return 0 end
  return c.f + idiv(max_billable - c.f, c.n) * c.n
end
