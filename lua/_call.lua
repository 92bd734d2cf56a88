-- Include: the life of one call record, shared by call_start, call_answer, call_heartbeat,
-- call_tick and call_end. Needs _post.lua and _rating.lua before it, and these locals:
-- ws, wallet, calls, due, cuts, ledger, events, ended, ended_at (the KEYS of those scripts).
--
-- A call record is a MessagePack map in the `calls` hash (field = call id), with fields:
--   id, dir (inbound|outbound), svc (voice|ai_agent), from, to, user, grp, nt
--   rate, fee, f, n      its rate, fixed at start
--   buf, tk, grace, max  buffer, tick, inbound grace and max call length, seconds
--   t0, ans              start and answer time, ms (ans = 0 while not answered)
--   bs                   seconds billed so far (elapsed talk time seen by ticks/heartbeats)
--   hz                   horizon: seconds paid for (billed + reserved)
--   held                 micros held for the call = cost(hz); wallet.reserved = sum of held
--   cut                  ms at which the call must hang up (0 = not limited)
--   lim, cs              inbound limit announced / cut event sent (0|1)
--   hseq, hms            last heartbeat seq and time (0 = the switch sends none)
--   r0, g0, m0, b0, a0   the first answer: reserved, granted_s, max_duration_s (-1 = null),
--   an0, h0              balance and available at start, answered (0|1), hangup_at ms
-- Money never moves out of the balance while a call lives: ticks grow its hold, so
-- `available` drops in real time, and call_end posts one ledger row for the whole call.

local ENDED_KEEP_MS = 24 * 3600 * 1000

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

local function save_call(c)
  rcall('HSET', calls, c.id, cmsgpack.pack(c))
end

local function available()
  local w = rcall('HMGET', wallet, 'balance', 'reserved')
  return tonumber(w[1]) - tonumber(w[2]), tonumber(w[1]), tonumber(w[2])
end

local function grace_of(c)
  if c.dir == 'inbound' then return c.grace end
  return 0
end

local function max_duration(c)
  if c.cut == 0 then return -1 end
  return c.hz + grace_of(c)
end

local function hold(c, held)
  if held ~= c.held then
    rcall('HINCRBY', wallet, 'reserved', held - c.held)
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
      emit(events, wallet, now_ms, 'call.limit', {'call_id', c.id, 'max_duration_s', '',
        'hangup_at_ms', ''})
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
local function extend(c, e, now_ms)
  if e > c.bs then c.bs = e end
  local target = c.bs + c.buf
  if target > c.max then target = c.max end
  if target <= c.hz and c.cut == 0 then return end
  local avail = available()
  local want = cost(c, target) - c.held
  local need = want
  if c.cut ~= 0 and c.dir == 'inbound' then need = math.max(want, threshold(c)) end
  if need <= avail then
    if target > c.hz then
      hold(c, c.held + math.max(want, 0))
      c.hz = target
    end
    set_cut(c, now_ms, false)
    return
  end
  -- A limited call may use all the money there is, as it did at start.
  local cap = target
  if c.cut ~= 0 or c.dir == 'inbound' then cap = c.max end
  local hz = paid_seconds(c, c.held + math.max(avail, 0), cap)
  if hz > c.hz then
    c.hz = hz
    hold(c, math.max(cost(c, hz), c.held))
  end
  if rcall('HSETNX', wallet, 'depleted', 1) == 1 then
    emit(events, wallet, now_ms, 'wallet.depleted', {'call_id', c.id})
  end
  set_cut(c, now_ms, true)
end

local function next_due(c, now_ms)
  if c.ans == 0 then return c.t0 + c.max * 1000 end
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

local function trim_ended(now_ms)
  local old = rcall('ZRANGEBYSCORE', ended_at, '-inf', now_ms - ENDED_KEEP_MS, 'LIMIT', 0, 20)
  if #old > 0 then
    rcall('HDEL', ended, unpack(old))
    rcall('ZREM', ended_at, unpack(old))
  end
end

-- Post the whole call as one ledger row, release its hold, forget it.
-- `flag` is '' or 'unauthorized_call' / 'stale'. Returns the row id and the balance after.
local function finish(c, duration, now_ms, cause, flag)
  local amount = cost(c, duration)
  hold(c, 0)
  local granted = c.hz + (c.cut ~= 0 and grace_of(c) or 0)
  local leak = 0
  if c.cut ~= 0 and duration > granted then leak = duration - granted end
  local rtype = c.svc == 'ai_agent' and 'ai_agent' or 'call'
  local desc = (c.svc == 'ai_agent' and 'AI agent ' or 'Call ') .. c.dir .. ' ' ..
    (c.dir == 'inbound' and c.from or c.to)
  local extra = {'user', c.user, 'group', c.grp, 'from', c.from, 'to', c.to,
    'direction', c.dir, 'duration_s', duration, 'billable_s', billable(c, duration),
    'rate_micros', c.rate, 'increment', c.f .. '/' .. c.n, 'connect_fee_micros', c.fee,
    'source', 'universal', 'hangup_cause', cause}
  if leak > 0 then extra[#extra + 1] = 'leak_s'; extra[#extra + 1] = leak end
  if flag ~= '' then extra[#extra + 1] = 'flag'; extra[#extra + 1] = flag end
  local id, balance = post(wallet, ledger, events, now_ms, -amount, rtype, desc, c.id, extra)
  rcall('HDEL', calls, c.id)
  rcall('ZREM', due, c.id)
  rcall('SREM', cuts, c.id)
  local result = cmsgpack.pack({cost = amount, row = id, balance = balance,
    duration = duration, leak = leak, flag = flag})
  rcall('HSET', ended, c.id, result)
  rcall('ZADD', ended_at, now_ms, c.id)
  trim_ended(now_ms)
  return result
end
