-- call_start: decide whether a call may start and hold its one-minute buffer, in one step.
--
-- KEYS[1] ws        hash    workspace record: max_concurrent_calls,
--                           inbound_limit_threshold_micros, inbound_grace_s,
--                           negative_limit_micros (the platform's override)
-- KEYS[2] wallet    hash    balance, reserved, status, zero_since, hold, hold_reason,
--                           exposure (the sum of the live calls' grace money beyond their
--                           holds, _call.lua xp)
-- KEYS[3] calls     hash    call id -> MessagePack call record (see _call.lua)
-- KEYS[4] due       zset    call id -> due ms for the ticker
-- KEYS[5] cuts      set     ids of limited calls
-- KEYS[6] ledger    stream  (not written here; shared key list of the call scripts)
-- KEYS[7] events    stream  event outbox
-- KEYS[8] ended     hash    call id -> MessagePack result of finished calls
-- KEYS[9] ended_at  zset    call id -> end ms (trims `ended`)
-- ARGV[1]  now_ms        integer
-- ARGV[2]  call_id       string
-- ARGV[3]  direction     outbound|inbound
-- ARGV[4]  service       voice|ai_agent
-- ARGV[5]  from          E.164
-- ARGV[6]  to            E.164
-- ARGV[7]  user          string, "" when none
-- ARGV[8]  group         string, "" when none
-- ARGV[9]  number_type   string
-- ARGV[10] rate          micros per minute
-- ARGV[11] fee           connect fee micros
-- ARGV[12] first         billing increment, seconds
-- ARGV[13] next          billing increment, seconds
-- ARGV[14] buffer_s      seconds held ahead
-- ARGV[15] tick_s        seconds between ticks
-- ARGV[16] grace_s       service default inbound grace (the workspace may override it)
-- ARGV[17] max_call_s    longest call
-- ARGV[18] answered      1: billing starts now; 0: at call_answer
-- ARGV[19] deadline_ms   wall-clock unix ms after which this start must not commit (the
--                        switch's timeout, less the reply's way back); 0 = none. Checked
--                        against Redis TIME, so a start that waited out a paused Redis
--                        is refused when it finally runs: no phantom calls.
-- ARGV[20] grace_max_s   the platform's ceiling on inbound grace
-- ARGV[21] live_max      the platform's ceiling on live calls per workspace (0 = none)
-- ARGV[22] ring_s        seconds an unanswered call may ring before it expires unbilled
-- ARGV[23] components    the rate's parts, "name=micros per minute;..." in card order, so
--                        the call's row splits its cost by them ("" = the rate is one part)
-- ARGV[24] reports       1: the switch promises heartbeats for this call, so their silence
--                        (from the answer on) ends it as stale; 0: none promised
-- ARGV[25] node          the switch node carrying the call ("" = not named): a sync naming
--                        a node ends only that node's calls (call_sync)
-- ARGV[26] negative_limit  micros: the service's ceiling on money at risk below zero (the
--                        workspace's negative_limit_micros overrides it): any debt already
--                        there plus every live call's exposure plus this call's grace money
--                        stays within it; a call gets the grace that fits
-- Replies:
--   {0, record, balance, reserved, fired}
--                                    allowed; record is the new call (MessagePack); fired
--                                    1 when the hold crossed a wallet threshold (_watch.lua)
--   {1, record, balance, reserved}   the call started before: the first answer, nothing held
--   {2}                              the call ended already
--   {-1}                             no such workspace
--   {-4, balance, reserved, needed}  outbound and available < buffer cost, or an inbound
--                                    call the money and the grace would give 0 seconds
--   {-6, live, max}                  max_concurrent_calls reached, nothing held
--   {-7, balance, reserved}          workspace suspended (balance <= 0 past the grace, or
--                                    nothing available and no room left under the
--                                    negative limit: suspended at once)
--   {-10, late_ms}                   the deadline passed before the script ran; nothing done
--   {-20, hold, reason}              the platform suspended or closed the workspace
--                                    (lua/workspace_hold-5.lua); nothing held
-- Side effects: wallet.reserved grows by the hold; call.limit for a limited inbound call;
-- wallet.suspended when the suspension is first seen.
local rcall = redis.call
local ws, wallet, calls, due, cuts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ledger, events, ended, ended_at = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local now_ms = tonumber(ARGV[1])
local call_id, dir, svc = ARGV[2], ARGV[3], ARGV[4]
local rate, fee = tonumber(ARGV[10]), tonumber(ARGV[11])
local first, nxt = tonumber(ARGV[12]), tonumber(ARGV[13])
local buffer_s, tick_s = tonumber(ARGV[14]), tonumber(ARGV[15])
local default_grace, max_call_s = tonumber(ARGV[16]), tonumber(ARGV[17])
local answered = ARGV[18] == '1'
local deadline_ms, grace_max = tonumber(ARGV[19]), tonumber(ARGV[20])
local live_max, ring_s = tonumber(ARGV[21]), tonumber(ARGV[22])
local components = ARGV[23] or ''
local promised = ARGV[24] == '1'
local negative_limit = tonumber(ARGV[26]) or 0

--!include _post.lua
--!include _rating.lua
--!include _plan.lua
--!include _call.lua

-- One read of the wallet serves the whole decision, the plan's cycle end included (nothing
-- below writes the wallet before it is used); a cycle that ended is rolled first.
local WALLET_READ = {'balance', 'reserved', 'status', 'zero_since', 'cy_end', 'hold',
  'exposure'}
local w0 = rcall('HMGET', wallet, unpack(WALLET_READ))
plan_end_cache = tonumber(w0[5])
if plan_roll(now_ms) then w0 = rcall('HMGET', wallet, unpack(WALLET_READ)) end
local balance, reserved = tonumber(w0[1]), tonumber(w0[2])

local existing = rcall('HGET', calls, call_id)
if existing then return {1, existing, balance, reserved} end
if rcall('HEXISTS', ended, call_id) == 1 then return {2} end
if w0[6] then return {-20, w0[6], rcall('HGET', wallet, 'hold_reason') or ''} end
if deadline_ms > 0 then
  local t = rcall('TIME')
  local wall_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if wall_ms > deadline_ms then return {-10, wall_ms - deadline_ms} end
end
local s = rcall('HMGET', ws, 'id', 'max_concurrent_calls', 'inbound_limit_threshold_micros',
  'inbound_grace_s', 'negative_limit_micros')
if not s[1] then return {-1} end
local max_live = tonumber(s[2])
if live_max > 0 and (not max_live or max_live > live_max) then max_live = live_max end
if max_live and rcall('HLEN', calls) >= max_live then
  return {-6, rcall('HLEN', calls), max_live}
end
local grace = math.min(tonumber(s[4]) or default_grace, grace_max)
negative_limit = tonumber(s[5]) or negative_limit

local c = {id = call_id, dir = dir, svc = svc, from = ARGV[5], to = ARGV[6], user = ARGV[7],
  grp = ARGV[8], nt = ARGV[9], rate = rate, fee = fee, f = first, n = nxt, buf = buffer_s,
  tk = tick_s, grace = grace, max = max_call_s, t0 = now_ms, ans = 0, bs = 0, hz = 0,
  held = 0, cut = 0, lim = 0, cs = 0, hseq = 0, hms = 0, ring = ring_s, evm = 0,
  ha = 0, clp = 0, cmp = components, rep = promised and 1 or 0}
if answered then c.ans, c.evm = now_ms, now_ms end
if (ARGV[25] or '') ~= '' then c.node = ARGV[25] end
local target = math.min(buffer_s, max_call_s)
plan_attach(c)
-- The plan allowance covers the first seconds (written below, once the call is allowed).
if c.aw and rate > 0 then c.aw = math.min(num('al:' .. svc), billable(c, target)) end
local needed = cost(c, target)

local function suspend(balance)
  rcall('HSET', wallet, 'status', 'suspended')
  emit(events, wallet, now_ms, 'wallet.suspended', {'balance_micros', balance})
end

local avail = balance - reserved + commitment_free(c.cmn)
if needed > 0 then
  if dir == 'outbound' and avail < needed then return {-4, balance, reserved, needed} end
  local status = w0[3]
  if status ~= 'suspended' and w0[4] and balance <= 0
      and now_ms - tonumber(w0[4]) > grace * 1000 then
    status = 'suspended'
    suspend(balance)
  end
  if status == 'suspended' then return {-7, balance, reserved} end
end

local threshold = tonumber(s[3]) or needed
if avail >= needed and (dir == 'outbound' or avail >= threshold) then
  c.hz = target
  hold(c, needed)
else
  -- inbound below the threshold: hold what there is, limit the call to it plus the grace
  c.hz = paid_seconds(c, math.max(avail, 0), max_call_s)
  -- The grace is money at risk below zero: with any debt already there and the other live
  -- calls' grace (wallet.exposure), it stays within the negative limit. A call gets the
  -- grace that fits; none fitting when the money pays no second suspends the wallet now,
  -- not at the next end that posts below zero.
  local paid = cost(c, c.hz)
  local room = negative_limit - math.max(-avail, 0) - (tonumber(w0[7]) or 0)
  local reach = math.min(c.hz + grace, max_call_s)
  if grace > 0 and cost(c, reach) - paid > room then
    c.grace = math.max(paid_seconds(c, paid + math.max(room, 0), reach) - c.hz, 0)
    if c.hz + c.grace <= 0 then
      suspend(balance)
      return {-7, balance, reserved}
    end
  end
  -- an allow for 0 seconds is no allow: the switch could only hang up at once
  if c.hz + c.grace <= 0 then return {-4, balance, reserved, needed} end
  hold(c, cost(c, c.hz))
  set_cut(c, now_ms, true)
end
if c.aw and c.aw > 0 then rcall('HINCRBY', wallet, 'al:' .. svc, -c.aw) end
c.r0, c.g0, c.m0, c.b0 = money_held(c), c.hz, max_duration(c), balance
c.a0 = avail - money_held(c)
c.an0 = answered and 1 or 0
c.h0 = (c.ans ~= 0 and c.ans or c.t0) + (c.m0 >= 0 and c.m0 or c.g0) * 1000
c.ha = c.h0
save_call(c)
schedule(c, now_ms)
return {0, cmsgpack.pack(c), balance, reserved + c.held, watch_fired}
