-- Include: a workspace's plan and its credit buckets (docs/design.md §8), drawn in this order: the
-- service's plan allowance (units per cycle) -> the matching commitment (micros per cycle,
-- scoped to services) -> universal credits (the wallet balance, never expires).
-- Needs _post.lua and _rating.lua before it, and the locals `rcall`, `wallet`, `ledger`,
-- `events`, `calls` (the live calls hash; false when the script has none).
--
-- Wallet hash fields (all absent for a workspace without a plan; `cy_end` is the one field
-- a script reads to find that out):
--   plan, cy_anchor      plan name; the anchor day of month (1..31, clamped to short months)
--   cy, cy_end           current cycle start and end, unix ms (00:00 UTC of anchor days)
--   pl_al, pl_cm         comma lists: services with an allowance; commitment names
--   al:<svc>, alt:<svc>  allowance left unreserved / per cycle, in the service's unit
--                        (seconds for voice and ai_agent; segments, messages, pages)
--   cm:<n>, cmt:<n>      commitment left (reserved included) / per cycle, micros
--   cmr:<n>              commitment micros held by live calls
--   cms:<svc>            the commitment that covers a service
-- Call record fields (lua/_call.lua), present when the call started under a plan:
--   aw    allowance seconds (billable) reserved from the current cycle
--   ao    allowance seconds of earlier cycles the call used (fixed at each boundary)
--   bs0   elapsed talk seconds at the last boundary (0 when none)
--   cmn   the commitment covering the call's service ("" = none); ch micros held from it
-- A cycle ends at cy_end exactly: the first script that runs at or after it rolls it (a
-- `plan_cycle` ledger row with amount 0 naming what expired unused), whatever it came for.

local DAY_MS = 86400000

-- Days since 1970-01-01 of a civil date, and back (H. Hinnant's algorithms).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

-- The anchor day of the month after the one `end_ms` falls in, 00:00 UTC.
local function next_cycle_end(end_ms, anchor)
  local y, m = civil_from_days(math.floor(end_ms / DAY_MS))
  m = m + 1
  if m > 12 then m, y = 1, y + 1 end
  local ny, nm = y, m + 1
  if nm > 12 then nm, ny = 1, y + 1 end
  local days = days_from_civil(ny, nm, 1) - days_from_civil(y, m, 1)
  return days_from_civil(y, m, math.min(anchor, days)) * DAY_MS
end

local function split_list(s)
  local out = {}
  if s then for item in string.gmatch(s, '[^,]+') do out[#out + 1] = item end end
  return out
end

local plan_end_cache = false

-- The current cycle's end, or nil without a plan (one HGET per script run).
local function plan_cycle_end()
  if plan_end_cache == false then plan_end_cache = tonumber(rcall('HGET', wallet, 'cy_end')) end
  return plan_end_cache
end

local function num(field)
  return tonumber(rcall('HGET', wallet, field)) or 0
end

-- Commitment micros free for new holds or charges.
local function commitment_free(name)
  if not name or name == '' then return 0 end
  local w = rcall('HMGET', wallet, 'cm:' .. name, 'cmr:' .. name)
  return math.max((tonumber(w[1]) or 0) - (tonumber(w[2]) or 0), 0)
end

-- Put a call under the plan: fields set, commitment named. Nothing reserved yet.
local function plan_attach(c)
  if not plan_cycle_end() then return end
  c.aw, c.ao, c.bs0, c.ch = 0, 0, 0, 0
  c.cmn = rcall('HGET', wallet, 'cms:' .. c.svc) or ''
end

-- Reserve allowance so that it covers the call up to `t` seconds, as far as it goes. A free
-- call (rate 0, a local call) costs nothing per minute and takes no allowance.
local function reserve_allowance(c, t)
  if not c.aw or c.rate == 0 then return end
  local need = math.max(billable(c, t) - c.bs0, 0) - c.aw
  if need <= 0 then return end
  local left = num('al:' .. c.svc)
  local take = math.min(need, left)
  if take > 0 then
    rcall('HINCRBY', wallet, 'al:' .. c.svc, -take)
    c.aw = c.aw + take
  end
end

-- Close the current cycle at `boundary_ms`: live calls keep the allowance they used before
-- it (billable(elapsed at the boundary), at most what they held), the rest expires. Returns
-- the ledger row's fields for what expired and what live calls carried.
local function plan_close(boundary_ms)
  local p = rcall('HMGET', wallet, 'pl_al', 'pl_cm', 'plan', 'cy', 'cy_end')
  local extra = {'closed_plan', p[3] or '', 'closed_cycle_start_ms', p[4] or '',
    'closed_cycle_end_ms', boundary_ms}
  local carried, unused, touched = {}, {}, {}
  if calls then
    for _, raw in ipairs(rcall('HVALS', calls)) do
      local c = cmsgpack.unpack(raw)
      if c.aw then
        local e = 0
        if c.ans > 0 and boundary_ms > c.ans then e = math.floor((boundary_ms - c.ans) / 1000) end
        local used = math.min(c.aw, math.max(billable(c, e) - c.bs0, 0))
        carried[c.svc] = (carried[c.svc] or 0) + used
        unused[c.svc] = (unused[c.svc] or 0) + c.aw - used
        c.ao, c.aw, c.bs0 = c.ao + used, 0, e
        touched[#touched + 1] = c
      end
    end
  end
  local kinds = {}
  for _, svc in ipairs(split_list(p[1])) do
    kinds[#kinds + 1] = 'plan_allowance:' .. svc
    extra[#extra + 1] = 'expired_allowance_' .. svc
    extra[#extra + 1] = num('al:' .. svc) + (unused[svc] or 0)
    extra[#extra + 1] = 'carried_allowance_' .. svc
    extra[#extra + 1] = carried[svc] or 0
  end
  for _, name in ipairs(split_list(p[2])) do
    kinds[#kinds + 1] = 'commitment:' .. name
    extra[#extra + 1] = 'expired_commitment_' .. name .. '_micros'
    extra[#extra + 1] = commitment_free(name)
  end
  extra[#extra + 1] = 'wallet_source'
  extra[#extra + 1] = table.concat(kinds, ',')
  return extra, touched
end

-- Open a cycle: every bucket back to its per-cycle size, live calls' allowance re-reserved
-- from it for their horizon, and the plan_cycle row written (amount 0).
local function plan_open(now_ms, extra, touched, desc, ref)
  local p = rcall('HMGET', wallet, 'pl_al', 'pl_cm', 'plan', 'cy', 'cy_end')
  for _, svc in ipairs(split_list(p[1])) do
    local total = num('alt:' .. svc)
    rcall('HSET', wallet, 'al:' .. svc, total)
    extra[#extra + 1] = 'allowance_' .. svc
    extra[#extra + 1] = total
  end
  for _, name in ipairs(split_list(p[2])) do
    local total = num('cmt:' .. name)
    rcall('HSET', wallet, 'cm:' .. name, total)
    extra[#extra + 1] = 'commitment_' .. name .. '_micros'
    extra[#extra + 1] = total
  end
  for _, c in ipairs(touched) do
    reserve_allowance(c, c.hz)
    rcall('HSET', calls, c.id, cmsgpack.pack(c))
  end
  for _, v in ipairs({'plan', p[3] or '', 'cycle_start_ms', p[4] or '', 'cycle_end_ms',
      p[5] or ''}) do
    extra[#extra + 1] = v
  end
  extra[#extra + 1] = 'source'
  extra[#extra + 1] = 'plan'
  post(wallet, ledger, events, now_ms, 0, 'plan_cycle', desc, ref, extra)
end

-- Roll every cycle that ended by now_ms (an idle wallet may have missed several). Returns
-- true when one rolled. Without a plan: one HGET, nothing else.
local function plan_roll(now_ms)
  local cy_end = plan_cycle_end()
  if not cy_end or now_ms < cy_end then return false end
  local anchor = num('cy_anchor')
  while now_ms >= cy_end do
    local extra, touched = plan_close(cy_end)
    local nxt = next_cycle_end(cy_end, anchor)
    rcall('HSET', wallet, 'cy', cy_end, 'cy_end', nxt)
    plan_open(now_ms, extra, touched, 'Plan cycle renewed: unused allowances and commitments '
      .. 'expired', 'cycle:' .. cy_end)
    cy_end = nxt
  end
  plan_end_cache = cy_end
  return true
end

-- How a usage row drew from the buckets: extra fields (source, wallet_source and amounts).
-- units = allowance units used (new cycle), prior = allowance units of earlier cycles,
-- unit = "s" or the charge's unit noun, cm_micros / universal micros from the money.
local function bucket_fields(svc, units, prior, unit, cm_name, cm_micros, universal)
  local kinds, detail = {}, {}
  if units + prior > 0 then
    kinds[#kinds + 1] = 'plan_allowance'
    detail[#detail + 1] = 'plan_allowance:' .. svc .. '=' .. (units + prior) .. unit
  end
  if cm_micros > 0 then
    kinds[#kinds + 1] = 'commitment'
    detail[#detail + 1] = 'commitment:' .. cm_name .. '=' .. fmt(cm_micros)
  end
  if universal ~= 0 or #kinds == 0 then
    kinds[#kinds + 1] = 'universal'
    detail[#detail + 1] = 'universal=' .. fmt(universal)
  end
  local out = {'source', table.concat(kinds, '+'), 'wallet_source', table.concat(detail, ','),
    'allowance_units', units, 'universal_micros', universal,
    'cost_micros', cm_micros + universal}
  if prior > 0 then out[#out + 1] = 'allowance_prior_units'; out[#out + 1] = prior end
  if cm_name and cm_name ~= '' then
    out[#out + 1] = 'commitment'; out[#out + 1] = cm_name
    out[#out + 1] = 'commitment_micros'; out[#out + 1] = cm_micros
  end
  return out
end
