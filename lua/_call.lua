-- Include: the life of one call record, shared by call_start, call_answer, call_heartbeat,
-- call_tick and call_end. Needs _post.lua, _rating.lua and _plan.lua before it, and these locals:
-- ws, wallet, calls, due, cuts, ledger, events, ended, ended_at (the KEYS of those scripts).
--
-- A call record is a MessagePack map in the `calls` hash (field = call id), with fields:
--   id, dir (inbound|outbound), svc (voice|ai_agent), from, to, user, grp, nt
--   rate, fee, f, n      its rate, fixed at start
--   buf, tk, grace, max  buffer, tick, inbound grace and max call length, seconds
--   t0, ans              start and answer time, ms (ans = 0 while not answered)
--   bs                   seconds billed so far (elapsed talk time seen by ticks/heartbeats)
--   hz                   horizon: seconds paid for (billed + reserved)
--   held                 universal micros held for the call; wallet.reserved = sum of held;
--                        held + ch (the commitment's part, lua/_plan.lua) = cost(hz)
--   aw, ao, bs0, cmn, ch the call's plan buckets (lua/_plan.lua; absent without a plan)
--   cut                  ms at which the call must hang up (0 = not limited)
--   lim, cs              inbound limit announced / cut event sent (0|1)
--   hseq, hms            last heartbeat seq and time (0 = the switch sends none)
--   r0, g0, m0, b0, a0   the first answer: reserved, granted_s, max_duration_s (-1 = null),
--   an0, h0              balance and available at start, answered (0|1), hangup_at ms
--   ring                 seconds an unanswered call may ring before it expires unbilled
--   evm, rep             evidence: last ms the switch showed the call up (answer, heartbeat,
--                        a sync listing it); rep = 1 once the switch reports liveness
--                        (heartbeats or syncs), so its silence can mean the call is gone
--   ha                   hangup_at ms the switch was last told (start, answer, heartbeat
--                        answers, call.extended/call.limit events): it hangs up there
--   clp                  1 when a heartbeat's elapsed_s was clamped to the gate's clock
--   node                 the switch node that started it (absent when not named): a sync
--                        naming a node ends only that node's calls
--   hb                   the most talk time a heartbeat reported (elapsed_s, clamped): an end
--                        claiming less is billed this much (flag duration_raised)
--   rzs                  set by call_end on such an end: the duration_s it claimed
--   xp                   exposure: micros the call may still cost beyond its hold (a limited
--                        inbound call's grace); wallet.exposure = sum of xp over live calls
-- Money never moves out of the balance while a call lives: ticks grow its hold, so
-- `available` drops in real time, and call_end posts one ledger row for the whole call.

local ENDED_KEEP_MS = 24 * 3600 * 1000  -- and until the call's ledger row is archived
-- What the switch or agent runtime said of a call at its end (call quality, an AI agent's
-- mode, skills, actions, sessions): field/value pairs for its ledger row. call_end sets them;
-- the ends Gate makes itself (cuts, lost ends) have none.
local end_facts = {}

-- Seconds of talk time the gate's own clock allows: since answer (or start, for a call not
-- yet answered), rounded up, plus the tolerance for the switch's clock; never past max.
local function clock_bound(c, now_ms, tolerance_s)
  local since = c.ans > 0 and c.ans or c.t0
  local bound = math.floor((now_ms - since + 999) / 1000) + tolerance_s
  if bound > c.max then bound = c.max end
  if bound < 0 then bound = 0 end
  return bound
end

-- Whether the switch reports this call's liveness (heartbeats or syncs), and the last
-- moment it showed the call up (records from before evidence was kept: the last heartbeat).
local function reports(c)
  return c.rep == 1 or c.hms > 0
end

local function evidence_ms(c)
  return math.max(c.evm or 0, c.hms, c.ans)
end

-- Seconds of talk time the last evidence shows (0 when the answer is all there is).
local function evidence_s(c)
  if c.ans == 0 then return 0 end
  return math.floor((evidence_ms(c) - c.ans) / 1000)
end

local function load_call(id)
  local raw = rcall('HGET', calls, id)
  if not raw then return nil end
  return cmsgpack.unpack(raw)
end

-- The reply for a call id that is not live: {2, result} when it ended, else {-5}.
local function not_live(id)
  local result = rcall('HGET', ended, id)
  if result then return {2, result} end
  return {-5}
end

-- Money a live call may still cost beyond what is held for it: a limited inbound call's
-- grace, billed below zero (its cut is hz + grace). 0 for every other call: an outbound or
-- unlimited call is cut where its hold ends.
local function exposure_of(c)
  if c.cut == 0 or c.dir ~= 'inbound' or c.grace == 0 then return 0 end
  return math.max(cost(c, math.min(c.hz + c.grace, c.max)) - c.held - (c.ch or 0), 0)
end

-- Keep wallet.exposure (the sum of its live calls' xp, checked by call_start against the
-- workspace's negative limit) in step with the call's; a command only when it changes.
local function track_exposure(c, x)
  local d = x - (c.xp or 0)
  if d ~= 0 then
    rcall('HINCRBY', wallet, 'exposure', d)
    c.xp = x
  end
end

local function save_call(c)
  track_exposure(c, exposure_of(c))
  rcall('HSET', calls, c.id, cmsgpack.pack(c))
end

-- A call script's first wallet read: the plan's cy_end (plan_roll), the money (available)
-- and post()'s fields in one HMGET, kept current by the script's own writes (`known` and
-- `known_post`, lua/_post.lua), so none of them is read again. Call it before plan_roll.
local function prime_wallet()
  local w = rcall('HMGET', wallet, 'cy_end', 'balance', 'reserved', 'event_seq', 'ledger_ms',
    'status', 'zero_since')
  plan_end_cache = tonumber(w[1])
  local balance, reserved = tonumber(w[2]), tonumber(w[3])
  if balance and reserved then
    known = {balance = balance, reserved = reserved, event_seq = tonumber(w[4]) or 0}
    known_post = {ledger_ms = tonumber(w[5]) or 0, status = w[6], zero_since = w[7]}
  end
end

local function available()
  if known then return known.balance - known.reserved, known.balance, known.reserved end
  local w = rcall('HMGET', wallet, 'balance', 'reserved')
  return tonumber(w[1]) - tonumber(w[2]), tonumber(w[1]), tonumber(w[2])
end

-- The wallet's balance now.
local function balance_now()
  if known then return known.balance end
  return tonumber(rcall('HGET', wallet, 'balance'))
end

local function grace_of(c)
  if c.dir == 'inbound' then return c.grace end
  return 0
end

local function max_duration(c)
  if c.cut == 0 then return -1 end
  return c.hz + grace_of(c)
end

-- Seconds of talk the call was granted: its horizon, plus the grace of a limited inbound call.
local function granted_s(c)
  if c.cut == 0 then return c.hz end
  return c.hz + grace_of(c)
end

-- The moment the money granted so far lasts: the cut when limited, else the horizon.
local function hangup_ms(c)
  if c.cut ~= 0 then return c.cut end
  return (c.ans > 0 and c.ans or c.t0) + c.hz * 1000
end

-- A call with no evidence for this long (ms, GATE_EVIDENCE_MAX_S) is ended as lost_end; set
-- by the scripts that take it (call_tick), 0 = no ceiling. No call.extended moves a call's
-- hangup_at past its last evidence plus this: nobody vouches for the call beyond it.
local evidence_max_ms = 0

-- Keep the switch's own timer (armed at hangup_at) ahead of a healthy call: a call.extended
-- event once less than half the buffer (and at least two ticks, so a tick's lateness and a
-- switch timer rounded to the second never meet it) is left before what the switch was last
-- told, or at once when a limit moves it (an inbound limit says so in its call.limit). At
-- most one event per call per half buffer; heartbeat answers carry hangup_at, so they reset
-- `ha` instead.
local function announce(c, now_ms)
  if c.ans == 0 then return end
  local h = hangup_ms(c)
  if evidence_max_ms > 0 then h = math.min(h, evidence_ms(c) + evidence_max_ms) end
  local told = c.ha or 0
  if h <= told then return end
  if c.cut ~= 0 or told - now_ms <= math.max(c.buf * 500, c.tk * 2000) then
    c.ha = h
    if not (c.cut ~= 0 and c.dir == 'inbound') then
      emit(events, wallet, now_ms, 'call.extended', {'call_id', c.id, 'hangup_at_ms', h,
        'granted_s', c.hz, 'max_duration_s', c.cut ~= 0 and (c.hz + grace_of(c)) or ''})
    end
  end
end

-- Money held for the call: the commitment's part and the universal part.
local function money_held(c)
  return c.held + (c.ch or 0)
end

-- Hold `held` micros for the call in all: from its commitment first (lua/_plan.lua), the
-- rest from universal money (wallet.reserved).
local function hold(c, held)
  if c.cmn and c.cmn ~= '' then
    local ch = math.min(held, c.ch + commitment_free(c.cmn))
    if ch ~= c.ch then
      rcall('HINCRBY', wallet, 'cmr:' .. c.cmn, ch - c.ch)
      c.ch = ch
    end
    held = held - ch
  end
  if held ~= c.held then
    local reserved = rcall('HINCRBY', wallet, 'reserved', held - c.held)
    if known then known.reserved = reserved end
    if held > c.held then watch(ws, wallet, events, now_ms) end
    c.held = held
  end
end

-- Fix a cut time from the horizon, or lift it; tell the switch about inbound limits.
local function set_cut(c, now_ms, limited)
  local old = c.cut
  if limited then
    c.cut = (c.ans > 0 and c.ans or now_ms) + (c.hz + grace_of(c)) * 1000
    if c.cut ~= old then c.cs = 0 end  -- money came after a cut: the new cut time is sent too
    rcall('SADD', cuts, c.id)
    if c.dir == 'inbound' and c.cut ~= old then
      c.lim = 1
      emit(events, wallet, now_ms, 'call.limit', {'call_id', c.id,
        'max_duration_s', c.hz + grace_of(c), 'hangup_at_ms', c.cut})
    end
  elseif old ~= 0 then
    c.cut, c.cs = 0, 0
    rcall('SREM', cuts, c.id)
    if c.lim == 1 then
      c.lim = 0
      c.ha = hangup_ms(c)
      emit(events, wallet, now_ms, 'call.limit', {'call_id', c.id, 'max_duration_s', '',
        'hangup_at_ms', c.ha})
    end
  end
end

-- What available money must reach before an inbound call's limit is lifted.
local function threshold(c)
  return tonumber(rcall('HGET', ws, 'inbound_limit_threshold_micros')) or cost(c, c.buf)
end

-- Bill up to `e` seconds and keep the horizon `buf` seconds ahead as far as money goes.
-- A limited call keeps its limit until money is back: for inbound calls, above the
-- threshold a new inbound call would need to start unlimited.
local function grow(c, e, now_ms)
  if e > c.bs then c.bs = e end
  local target = c.bs + c.buf
  if target > c.max then target = c.max end
  if target <= c.hz and c.cut == 0 then return end
  reserve_allowance(c, target)
  local avail = available() + commitment_free(c.cmn)
  local want = cost(c, target) - money_held(c)
  local need = want
  if c.cut ~= 0 and c.dir == 'inbound' then need = math.max(want, threshold(c)) end
  if need <= avail then
    if target > c.hz then
      hold(c, money_held(c) + math.max(want, 0))
      c.hz = target
    end
    set_cut(c, now_ms, false)
    return
  end
  -- A limited call may use all the money there is, as it did at start.
  local cap = target
  if c.cut ~= 0 or c.dir == 'inbound' then cap = c.max end
  local hz = paid_seconds(c, money_held(c) + math.max(avail, 0), cap)
  if hz > c.hz then
    c.hz = hz
    hold(c, math.max(cost(c, hz), money_held(c)))
  end
  if rcall('HSETNX', wallet, 'depleted', 1) == 1 then
    emit(events, wallet, now_ms, 'wallet.depleted', {'call_id', c.id})
  end
  set_cut(c, now_ms, true)
end

-- grow(), then tell the switch if the hangup_at it holds must move (see announce).
local function extend(c, e, now_ms)
  grow(c, e, now_ms)
  announce(c, now_ms)
end

local function next_due(c, now_ms)
  if c.ans == 0 then return c.t0 + (c.ring or c.max) * 1000 end
  local due = now_ms + c.tk * 1000
  if c.cut ~= 0 and c.cs == 0 and c.cut < due then due = c.cut end
  local last = c.ans + c.max * 1000
  if last < due then due = last end
  return due
end

local function schedule(c, now_ms)
  rcall('ZADD', due, next_due(c, now_ms), c.id)
end

local function send_cut(c, now_ms, reason)
  c.cs = 1
  emit(events, wallet, now_ms, 'call.cut', {'call_id', c.id, 'reason', reason,
    'cut_at_ms', c.cut ~= 0 and c.cut or now_ms, 'direction', c.dir})
end

-- Whether ledger row `id` ("<ms>-<n>") sorts before `first` (the oldest row in Redis).
local function row_before(id, first)
  local a, n = string.match(id, '^(%d+)-(%d+)$')
  local fa, fn = string.match(first, '^(%d+)-(%d+)$')
  a, n, fa, fn = tonumber(a), tonumber(n), tonumber(fa), tonumber(fn)
  return a < fa or (a == fa and n < fn)
end

-- Forget ended results kept 24 h, but never one whose ledger row is still in Redis: rows
-- leave Redis only once archived (lua/ledger_trim-1.lua), so until then the archive may
-- not have the row a replayed end is checked against, and forgetting it would bill the
-- call again however far the archiver lags. Results end in ledger order, so the first one
-- still needed stops the trim.
local function trim_ended(now_ms)
  local old = rcall('ZRANGEBYSCORE', ended_at, '-inf', now_ms - ENDED_KEEP_MS, 'WITHSCORES',
    'LIMIT', 0, 20)
  if #old == 0 then return end
  local head = rcall('XRANGE', ledger, '-', '+', 'COUNT', 1)[1]
  local first = head and head[1]
  local first_ms = first and tonumber(string.match(first, '^(%d+)-'))
  local gone = {}
  for i = 1, #old, 2 do
    local id = old[i]
    if first then
      -- its row was written at or after its end: a row not older than the oldest in Redis
      if tonumber(old[i + 1]) >= first_ms then break end
      local r = cmsgpack.unpack(rcall('HGET', ended, id) or cmsgpack.pack({}))
      local row = r.late_row or r.row or ''  -- a late end's row is the newer of its two
      if row ~= '' and not row_before(row, first) then break end
    end
    gone[#gone + 1] = id
  end
  if #gone > 0 then
    rcall('HDEL', ended, unpack(gone))
    rcall('ZREM', ended_at, unpack(gone))
  end
end

-- The cost split by the rate's components (c.cmp = "name=micros per minute;..."): each part
-- is floor(part rate x billable / 60), and what rounding leaves (the cost is rounded up once,
-- the parts down) goes to the largest part, the first listed on a tie, so the parts and the
-- connect fee add up to the cost exactly. Appends (name, micros) pairs to `out`.
local function split_cost(c, duration, amount, out)
  if not c.cmp or c.cmp == '' or amount == 0 then return end
  local b = billable(c, duration)
  b = b - allowance_covers(c, b)  -- the parts split the money; the allowance is no money
  local parts, left, big = {}, amount - c.fee, 1
  for name, rate in string.gmatch(c.cmp, '([%w_]+)=(%d+)') do
    local share = idiv(tonumber(rate) * b, 60)
    parts[#parts + 1] = {name, share, tonumber(rate)}
    left = left - share
    if tonumber(rate) > parts[big][3] then big = #parts end
  end
  if #parts == 0 then return end
  parts[big][2] = parts[big][2] + left
  for _, p in ipairs(parts) do
    out[#out + 1] = 'component_' .. p[1] .. '_micros'
    out[#out + 1] = p[2]
  end
end

-- Flags of a call that never connected: nothing to bill, so no ledger row either.
local UNBILLED = {ring_timeout = true, never_started = true}

-- Flags of a call Gate ended without the switch's end: a later end may bill more
-- (platform_cut: the platform suspended or closed the workspace, lua/call_cut_all-9.lua).
local SWEPT = {stale = true, lost_end = true, platform_cut = true}

-- Seconds a cut call was kept up past what it was granted (leakage; 0 when none).
local function leak_of(c, duration)
  local granted = granted_s(c)
  if c.cut ~= 0 and duration > granted then return duration - granted end
  return 0
end

-- A call's ledger row: its type, its description and the fields every call row starts with.
local function call_row(c, duration, billable_s, cause)
  local ai = c.svc == 'ai_agent'
  local desc = (ai and 'AI agent ' or 'Call ') .. c.dir .. ' ' ..
    (c.dir == 'inbound' and c.from or c.to)
  return ai and 'ai_agent' or 'call', desc, {'user', c.user, 'group', c.grp, 'from', c.from,
    'to', c.to, 'direction', c.dir, 'duration_s', duration, 'billable_s', billable_s,
    'rate_micros', c.rate, 'increment', c.f .. '/' .. c.n, 'connect_fee_micros', c.fee,
    'hangup_cause', cause}
end

-- Post the whole call as one ledger row, release its hold, forget it.
-- `flag` is '', 'unauthorized_call', 'stale', 'lost_end', 'platform_cut', 'no_rate',
-- 'ring_timeout' or 'never_started'; `clamped` is true when the switch's figure was cut to the gate's clock.
-- Returns the MessagePack result kept for repeats.
local function finish(c, duration, now_ms, cause, flag, clamped)
  reserve_allowance(c, duration)  -- allowance still left covers the call before money does
  local amount = cost(c, duration)
  local b = billable(c, duration)
  local used, prior = 0, 0
  if c.aw then  -- the allowance not used goes back to this cycle's bucket
    prior = math.min(b, c.ao)
    used = allowance_covers(c, b) - prior
    if c.aw > used then rcall('HINCRBY', wallet, 'al:' .. c.svc, c.aw - used) end
  end
  hold(c, 0)
  track_exposure(c, 0)
  local from_cm = 0
  if c.cmn and c.cmn ~= '' and amount > 0 then
    from_cm = math.min(amount, commitment_free(c.cmn))
    if from_cm > 0 then rcall('HINCRBY', wallet, 'cm:' .. c.cmn, -from_cm) end
  end
  local leak = leak_of(c, duration)
  local rtype, desc, extra = call_row(c, duration, b, cause)
  local sources = {'source', 'universal'}
  if c.aw then
    sources = bucket_fields(c.svc, used, prior, 's', c.cmn, from_cm, amount - from_cm)
  end
  for i = 1, #sources do extra[#extra + 1] = sources[i] end
  for i = 1, #end_facts do extra[#extra + 1] = end_facts[i] end
  if leak > 0 then extra[#extra + 1] = 'leak_s'; extra[#extra + 1] = leak end
  if flag ~= '' then extra[#extra + 1] = 'flag'; extra[#extra + 1] = flag end
  if c.nr == 1 then extra[#extra + 1] = 'no_rate'; extra[#extra + 1] = 'true' end
  local split = {}
  split_cost(c, duration, amount, split)
  for i = 1, #split do extra[#extra + 1] = split[i] end
  clamped = clamped or c.clp == 1
  if clamped then extra[#extra + 1] = 'duration_clamped'; extra[#extra + 1] = 'true' end
  if c.rzs then
    for _, v in ipairs({'duration_raised', 'true', 'claimed_duration_s', c.rzs}) do
      extra[#extra + 1] = v
    end
  end
  local id, balance = '', nil
  if UNBILLED[flag] and amount == 0 then
    balance = balance_now()
  else
    id, balance = post(wallet, ledger, events, now_ms, from_cm - amount, rtype, desc, c.id,
      extra)
  end
  rcall('HDEL', calls, c.id)
  rcall('ZREM', due, c.id)
  rcall('SREM', cuts, c.id)
  local r = {cost = amount, row = id, balance = balance,
    duration = duration, leak = leak, flag = flag, clamped = clamped and 1 or 0,
    parts = split, pl = c.aw and 1 or 0, al = used, alp = prior, cm = from_cm,
    rz = c.rzs and 1 or 0}
  -- A call Gate ended on its own may still get the switch's end: keep what rates it, so
  -- time the switch kept it up after that is billed then (late_end), never dropped.
  if SWEPT[flag] then
    if c.aw then c.aw = used end
    r.rec = c
  end
  local result = cmsgpack.pack(r)
  rcall('HSET', ended, c.id, result)
  rcall('ZADD', ended_at, now_ms, c.id)
  trim_ended(now_ms)
  return result
end

-- The switch's end for a call Gate already ended on its own (`SWEPT`: stale, lost_end):
-- the time it reports beyond what was billed (clamped to Gate's clock like any end) is
-- billed now with a second row flagged late_end, so the two rows add up to cost(duration)
-- (its billable_s and component parts are the difference too, so sums stay true; `gate
-- check` reads it as cost(duration_s) - cost(billed_before_s)).
-- Applied once per call; any later end repeats the updated result. Returns the reply.
local function late_end(packed, duration, now_ms, cause, tolerance_s)
  local r = cmsgpack.unpack(packed)
  local c = r.rec
  if not c then return {1, packed} end
  local clamped = false
  local bound = clock_bound(c, now_ms, tolerance_s)
  if duration > bound then duration, clamped = bound, true end
  if duration <= r.duration then return {1, packed} end
  local amount = cost(c, duration)
  local delta = amount - r.cost
  local leak = leak_of(c, duration)
  local split = {}
  split_cost(c, duration, amount, split)
  local rtype, desc, extra = call_row(c, duration,
    billable(c, duration) - billable(c, r.duration), cause)
  for _, v in ipairs({'billed_before_s', r.duration, 'source', 'universal', 'flag', 'late_end',
      'first_row', r.row, 'first_flag', r.flag}) do
    extra[#extra + 1] = v
  end
  if leak > 0 then extra[#extra + 1] = 'leak_s'; extra[#extra + 1] = leak end
  if clamped then extra[#extra + 1] = 'duration_clamped'; extra[#extra + 1] = 'true' end
  if (r.al or 0) + (r.alp or 0) > 0 then  -- what the plan covered: the first row's figures
    for _, v in ipairs({'allowance_units', r.al, 'allowance_prior_units', r.alp}) do
      extra[#extra + 1] = v
    end
  end
  -- the late row's parts are the whole call's parts less the first row's
  local before = {}
  for i = 1, #r.parts, 2 do before[r.parts[i]] = r.parts[i + 1] end
  for i = 1, #split, 2 do
    extra[#extra + 1] = split[i]
    extra[#extra + 1] = split[i + 1] - (before[split[i]] or 0)
  end
  local id, balance = post(wallet, ledger, events, now_ms, -delta, rtype,
    desc .. ' (time after Gate ended it)', c.id .. ':late', extra)
  r.rec = nil
  r.cost, r.duration, r.leak, r.balance, r.parts = r.cost + delta, duration, leak, balance, split
  r.late_row, r.clamped = id, (clamped or r.clamped == 1) and 1 or 0
  local result = cmsgpack.pack(r)
  rcall('HSET', ended, c.id, result)
  return {0, result, 0, watch_fired, watch_url()}
end

-- How long a call Gate ends without the switch's end is billed (a stale sweep, an ignored
-- cut, a sync that did not list it, no evidence for GATE_EVIDENCE_MAX_S): to the last
-- evidence that it was up (answer, heartbeat, sync listing) plus one tick, never its whole
-- horizon nor the money it held: for a switch that reports nothing the answer is all the
-- evidence there is, and its late end bills the rest. Never past what was granted, the
-- gate's own clock (`e`, seconds since answer) or max_call_s.
local function lost_duration(c, e)
  return math.max(math.min(evidence_s(c) + c.tk, e, granted_s(c), c.max), 0)
end
